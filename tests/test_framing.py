"""Crop and placement geometry, table-driven: boxes in, boxes out, no pixels."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pytest

from pipeline.stages.framing import (
    Box,
    cover_transform,
    frame_for_ratio,
    largest_size,
    parse_ratio,
    place_on_floor,
    place_subject,
    ratio_error,
    smallest_size,
    subject_box,
    wanted_box,
)

@dataclass
class Case:
    name: str
    image: tuple[int, int]
    subject: Box | None
    ratio: tuple[int, int]
    margin: float = 0.1
    fill: str = "outpaint"
    anchor: str = "center"
    box: Box | None = None  # exact expected frame, when worked out by hand
    extended: bool | None = None
    cuts_margin: bool | None = None
    cuts_subject: bool | None = None


BOTTLE = Box(1200, 400, 1800, 3600)  # 600×3200 in a 3000×4000 portrait
PLANK = Box(400, 1200, 3600, 1800)  # 3200×600 in a 4000×3000 landscape
CENTRED = Box(2500, 1500, 3500, 2500)  # 1000×1000 in the middle of 6000×4000

CASES = [
    # tall into wide: the frame must grow sideways, centred on the bottle
    Case("tall bottle into 16:9", (3000, 4000), BOTTLE, (16, 9),
         box=Box(-1913, 80, 4914, 3920), extended=True, cuts_margin=False, cuts_subject=False),
    Case("tall bottle into 16:9, crop", (3000, 4000), BOTTLE, (16, 9), fill="crop",
         box=Box(1, 1157, 3000, 2844), extended=False, cuts_margin=True, cuts_subject=True),
    Case("tall bottle into 16:9, pad", (3000, 4000), BOTTLE, (16, 9), fill="pad",
         box=Box(-1913, 80, 4914, 3920), extended=True),
    Case("tall bottle into 9:16 fits", (3000, 4000), BOTTLE, (9, 16),
         box=Box(375, 0, 2625, 4000), extended=False, cuts_margin=False),
    # wide into tall: the frame must grow vertically
    Case("wide plank into 9:16", (4000, 3000), PLANK, (9, 16),
         box=Box(80, -1913, 3920, 4914), extended=True, cuts_subject=False),
    Case("wide plank into 9:16, crop", (4000, 3000), PLANK, (9, 16), fill="crop",
         extended=False, cuts_subject=True),
    # subject touching an edge: no margin is invented past that edge
    Case("subject touching the left edge", (4000, 3000), Box(0, 1000, 800, 2000), (1, 1),
         box=Box(0, 0, 3000, 3000), extended=False, cuts_margin=False),
    Case("subject near the left edge: margin needs canvas", (4000, 3000), Box(20, 1000, 820, 2000), (1, 1),
         box=Box(-80, 0, 2920, 3000), extended=True, cuts_margin=False),
    Case("subject near the left edge, crop cuts the margin", (4000, 3000), Box(20, 1000, 820, 2000), (1, 1),
         fill="crop", box=Box(0, 0, 3000, 3000), extended=False, cuts_margin=True, cuts_subject=False),
    # subject filling the image (or unknown: None means the whole image)
    Case("whole image into 1:1", (4000, 3000), None, (1, 1), box=Box(0, -500, 4000, 3500), extended=True),
    Case("whole image into 1:1, anchor bottom", (4000, 3000), None, (1, 1), anchor="bottom",
         box=Box(0, -1000, 4000, 3000)),
    Case("whole image into 1:1, anchor top", (4000, 3000), None, (1, 1), anchor="top",
         box=Box(0, 0, 4000, 4000)),
    Case("subject box equal to the image", (4000, 3000), Box(0, 0, 4000, 3000), (4, 5),
         box=Box(0, -1000, 4000, 4000), extended=True),
    Case("whole image into 4:5, crop", (4000, 3000), None, (4, 5), fill="crop",
         box=Box(800, 0, 3200, 3000), cuts_subject=True),
    # tiny subject: the frame stays as large as the image allows
    Case("tiny subject in a corner", (6000, 4000), Box(100, 100, 120, 130), (16, 9),
         box=Box(0, 0, 6000, 3375), extended=False, cuts_margin=False),
    Case("tiny subject, 9:16", (6000, 4000), Box(100, 100, 120, 130), (9, 16),
         box=Box(0, 0, 2250, 4000), extended=False),
    # all four ratios on a centred subject
    Case("centred 1:1", (6000, 4000), CENTRED, (1, 1), box=Box(1000, 0, 5000, 4000)),
    Case("centred 4:5", (6000, 4000), CENTRED, (4, 5), box=Box(1400, 0, 4600, 4000)),
    Case("centred 9:16", (6000, 4000), CENTRED, (9, 16), box=Box(1875, 0, 4125, 4000)),
    Case("centred 16:9", (6000, 4000), CENTRED, (16, 9), box=Box(0, 313, 6000, 3688)),
    # odd sizes and odd positions: only invariants, checked for every case below
    Case("odd image 1001×777, 4:5", (1001, 777), Box(300, 200, 701, 577), (4, 5)),
    Case("odd image 1001×777, 16:9", (1001, 777), Box(3, 5, 998, 770), (16, 9), extended=True),
    Case("odd image 1001×777, 9:16, crop", (1001, 777), Box(3, 5, 998, 770), (9, 16), fill="crop"),
    Case("odd image 333×999, 16:9, no margin", (333, 999), Box(100, 0, 233, 999), (16, 9), margin=0.0),
    Case("1×1 image", (1, 1), None, (16, 9)),
    Case("zero margin fits exactly", (1600, 900), Box(0, 0, 1600, 900), (16, 9), margin=0.0,
         box=Box(0, 0, 1600, 900), extended=False),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_frame_for_ratio(case: Case) -> None:
    w, h = case.image
    frame = frame_for_ratio(w, h, case.subject, case.ratio, margin=case.margin, fill=case.fill, anchor=case.anchor)
    box = frame.box
    # invariants
    assert box.width >= 1 and box.height >= 1
    assert ratio_error(box.width, box.height, case.ratio) < 1.0
    assert frame.inside is not None  # always overlaps the image
    if case.fill == "crop":
        assert frame.image.contains(box) and not frame.extended
    else:
        assert box.contains(frame.wanted), "fills that add canvas always keep subject and margins"
        assert not frame.cuts_subject and not frame.cuts_margin
        sizes = (largest_size(w, h, case.ratio), smallest_size(*frame.wanted.size, case.ratio))
        assert box.size in sizes, "as large as the image allows, or only as large as the subject needs"
        if frame.extended and box.width <= w and box.height <= h:
            assert not frame.image.contains(frame.wanted), \
                "a frame fitting in the image only leaves it for margins that lie outside"
    # worked-out expectations
    if case.box is not None:
        assert box == case.box
    if case.extended is not None:
        assert frame.extended is case.extended
    if case.cuts_margin is not None:
        assert frame.cuts_margin is case.cuts_margin
    if case.cuts_subject is not None:
        assert frame.cuts_subject is case.cuts_subject


def test_frame_outside_and_known_agree() -> None:
    frame = frame_for_ratio(3000, 4000, BOTTLE, (16, 9), margin=0.1)
    left, top, right, bottom = frame.outside
    assert (left, top, right, bottom) == (1913, 0, 1914, 0)
    assert frame.known == Box(1913, 0, 4913, 3840)
    assert frame.inside == Box(0, 80, 3000, 3920)
    assert frame.known.size == frame.inside.size


SIZE_CASES = [
    # (max or min w, h, ratio, largest, smallest)
    (6000, 4000, (16, 9), (6000, 3375), (7111, 4000)),
    (6000, 4000, (1, 1), (4000, 4000), (6000, 6000)),
    (6000, 4000, (4, 5), (3200, 4000), (6000, 7500)),
    (6000, 4000, (9, 16), (2250, 4000), (6000, 10667)),
    (1001, 777, (16, 9), (1001, 563), (1381, 777)),
    (7, 3, (3, 1), (6, 2), (9, 3)),
    (1, 1, (16, 9), (2, 1), (2, 1)),
]


@pytest.mark.parametrize("w, h, ratio, largest, smallest", SIZE_CASES)
def test_sizes(w: int, h: int, ratio: tuple[int, int], largest: tuple[int, int], smallest: tuple[int, int]) -> None:
    big = largest_size(w, h, ratio)
    small = smallest_size(w, h, ratio)
    if big != (2, 1):  # a 1×1 image has no room for 16:9; the 1-pixel short side is the floor
        assert big[0] <= w and big[1] <= h
    assert small[0] >= w and small[1] >= h
    assert ratio_error(*big, ratio) < 1 and ratio_error(*small, ratio) < 1
    assert big == largest
    assert small == smallest


@pytest.mark.parametrize("text, expected", [("1:1", (1, 1)), ("4:5", (4, 5)), ("16:9", (16, 9)),
                                            ("32:18", (16, 9)), ("9:16", (9, 16))])
def test_parse_ratio(text: str, expected: tuple[int, int]) -> None:
    assert parse_ratio(text) == expected


@pytest.mark.parametrize("text", ["0:1", "1:0", "16x9", "a:b", "-1:2", "1:2:3", "", "1.5:1"])
def test_parse_ratio_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="ratio"):
        parse_ratio(text)


def test_wanted_box_margin_is_fraction_of_larger_side_and_stops_at_touched_edges() -> None:
    assert wanted_box(Box(100, 100, 200, 500), 1000, 1000, 0.1) == Box(60, 60, 240, 540)
    assert wanted_box(Box(0, 100, 200, 1000), 1000, 1000, 0.1) == Box(0, 10, 290, 1000)


def test_subject_box() -> None:
    matte = np.zeros((50, 80), dtype=np.uint8)
    assert subject_box(matte) is None
    matte[10:20, 30:45] = 200
    matte[5, 70] = 3  # faint haze, below the threshold
    assert subject_box(matte, threshold=10) == Box(30, 10, 45, 20)
    assert subject_box(matte) == Box(30, 5, 71, 20)
    deep = np.zeros((10, 10), dtype=np.uint16)
    deep[2:4, 3:9] = 60000
    assert subject_box(deep, threshold=1000) == Box(3, 2, 9, 4)


PLACE_CASES = [
    # subject w, h, aspect, scale, margin, anchor → out_w, out_h, x, y
    (600, 900, 1.5, 0.6, 0.05, "bottom", (2250, 1500, 825, 525)),
    (600, 900, 1.5, 0.6, 0.05, "top", (2250, 1500, 825, 75)),
    (600, 900, 1.5, 0.6, 0.05, "center", (2250, 1500, 825, 300)),
    (2000, 500, 1.0, 0.6, 0.05, "bottom", (3334, 3334, 667, 2667)),
]


@pytest.mark.parametrize("sw, sh, aspect, scale, margin, anchor, expected", PLACE_CASES)
def test_place_subject(sw: int, sh: int, aspect: float, scale: float, margin: float, anchor: str,
                       expected: tuple[int, int, int, int]) -> None:
    p = place_subject(sw, sh, aspect, scale, margin, anchor)
    assert (p.out_w, p.out_h, p.x, p.y) == expected
    assert abs(p.out_w / p.out_h - aspect) < 1 / p.out_h + 1e-9
    assert p.scale == pytest.approx(scale, abs=1e-3)
    assert p.x >= margin * p.out_w - 1 and p.x + sw <= p.out_w


def test_place_subject_lowers_scale_to_keep_margins() -> None:
    p = place_subject(800, 800, 1.0, 1.0, 0.1)
    assert p.scale == pytest.approx(0.8, abs=1e-3)
    assert p.y + 800 == p.out_h - round(0.1 * p.out_h)


@pytest.mark.parametrize("extent, point, frame, expected", [
    (Box(0, 0, 100, 80), (50, 70), Box(10, 10, 90, 70), (1.0, 0.0, 0.0)),  # inside: as it is
    (Box(-20, -10, 120, 90), (50, 70), Box(0, -5, 100, 85), (1.0, 0.0, 0.0)),  # the scene's cropped-off parts
    (Box(0, 0, 100, 80), (50, 70), Box(10, 0, 110, 80), (1.0, 10.0, 0.0)),  # 10 px past the right: shift sideways
    (Box(0, 0, 100, 80), (50, 70), Box(0, 5, 100, 85), (1.5, 0.0, 0.0)),  # past the bottom: grow about the base
    (Box(0, 0, 100, 80), (50, 70), Box(0, -80, 100, 80), (150 / 70, 0.0, 0.0)),  # taller: the horizon moves up
    (Box(0, 0, 100, 80), (50, 70), Box(-25, 0, 125, 80), (1.5, 0.0, 0.0)),  # wider, centred: grows, no shift
])
def test_cover_transform(extent, point, frame, expected) -> None:
    scale, dx, dy = cover_transform(extent, point, frame)
    _covers(extent, point, frame, scale, dx, dy)
    assert (scale, dx, dy) == pytest.approx(expected)


def test_cover_transform_grows_no_more_than_allowed_then_shifts() -> None:
    extent, point = Box(0, 0, 100, 80), (50, 70)
    scale, dx, dy = cover_transform(extent, point, Box(0, 5, 100, 85), max_grow=1.2)
    assert (scale, dx, dy) == pytest.approx((1.2, 0.0, 3.0))  # 1.5 wished, 1.2 allowed: the rest is a shift
    _covers(extent, point, Box(0, 5, 100, 85), scale, dx, dy)
    # a frame larger than the scene makes it grow as much as it must, whatever is allowed
    assert cover_transform(extent, point, Box(0, 0, 200, 160), max_grow=1.0)[0] == pytest.approx(2.0)


def _covers(extent, point, frame, scale, dx, dy) -> None:
    px, py = point
    grown = Box(math.floor(px + scale * (extent.x0 - px) + dx), math.floor(py + scale * (extent.y0 - py) + dy),
                math.ceil(px + scale * (extent.x1 - px) + dx), math.ceil(py + scale * (extent.y1 - py) + dy))
    assert grown.contains(frame)


@pytest.mark.parametrize("cut, anchor, where", [
    ((), "bottom", (150, 760)),  # as before: on the bottom margin, centred
    (("bottom",), "bottom", (150, 800)),  # a bust enters from the bottom edge
    (("bottom",), "top", (150, 800)),  # whatever the anchor
    (("left", "bottom"), "center", (0, 800)),
    (("top",), "bottom", (150, 0)),
])
def test_a_cut_subject_enters_from_its_cut_edge(cut, anchor, where) -> None:
    p = place_subject(300, 400, 0.75, 0.5, 0.05, anchor, cut)
    assert (p.out_w, p.out_h) == (600, 800)
    assert (p.x, p.y + (400 if where[1] else 0)) == where


@pytest.mark.parametrize("rows, cols, expected", [
    ((20, 60), (20, 60), []),  # floating inside the photo
    ((0, 60), (20, 60), ["top"]),
    ((20, 80), (20, 60), ["bottom"]),
    ((20, 80), (0, 100), ["left", "right", "bottom"]),
    ((79, 80), (50, 51), []),  # one pixel touching is not a cut
])
def test_cut_edges(rows, cols, expected) -> None:
    from pipeline.stages.subject import cut_edges

    matte = np.zeros((80, 100), np.uint8)
    matte[rows[0]:rows[1], cols[0]:cols[1]] = 255
    assert cut_edges(matte) == expected


@pytest.mark.parametrize("cut, height, area, expected", [
    ((), 0.5, (0.0, 0.0, 1.0, 1.0), (800, 800, 250, 320)),  # 400 px subject = half the scene: scene at 0.8
    ((), 0.5, (0.5, 0.0, 1.0, 1.0), (800, 800, 450, 320)),  # centred in the right half
    ((), 0.25, (0.5, 0.0, 0.6, 1.0), (3000, 3000, 1500, 2300)),  # 300 px wide must fit a tenth: the scene grows
    (("bottom",), 0.5, (0.0, 0.0, 1.0, 1.0), (800, 800, 250, 400)),  # a bust enters from the bottom edge
])
def test_place_on_floor(cut, height, area, expected) -> None:
    """A 300×400 subject on a 1000×1000 scene whose floor is at 0.9 of its height."""
    place, k = place_on_floor(300, 400, 1000, 1000, height=height, floor=0.9, area=area, cut=cut)
    assert (place.out_w, place.out_h, place.x, place.y) == expected
    assert k == pytest.approx(place.out_w / 1000, abs=1e-3)
    if "bottom" not in cut:
        assert place.y + 400 == round(0.9 * place.out_h)  # the base stands on the floor line
# --- framing by subject fill --------------------------------------------------------------------

from pipeline.stages.framing import Frame, Zones, fill_of, frame_by_fill  # noqa: E402

ALL_RATIOS = [(1, 1), (4, 5), (9, 16), (16, 9)]
STORY = Zones(top=0.14, bottom=0.2)


@dataclass
class FillCase:
    name: str
    image: tuple[int, int]
    subject: Box | None
    ratio: tuple[int, int]
    fill: float = 0.8
    fill_range: tuple[float, float] = (0.6, 0.9)
    max_new_canvas: float = 0.25
    optical_center: float = 0.47
    copy_space: tuple[str, float] | None = None
    safe_zone: Zones | None = None
    keep_inside: bool = False
    when_capped: str = "extend"
    anchor: str = "center"
    framing: str | None = "framed"
    box: Box | None = None  # exact expected frame, when worked out by hand
    achieved: float | None = None  # the fill, when not the asked one (2 decimals)


SMALL = Box(2500, 1500, 3100, 2500)  # 600×1000 in the middle of 6000×4000: every ratio fits inside
FILL_CASES = [
    # the fill of the limiting side, every ratio, the subject well inside a large image: no new canvas
    *[FillCase(f"centred {r[0]}:{r[1]}", (6000, 4000), SMALL, r) for r in ALL_RATIOS],
    *[FillCase(f"centred {r[0]}:{r[1]}, fill 0.6", (6000, 4000), SMALL, r, fill=0.6) for r in ALL_RATIOS],
    # worked out: 1000 high / 0.8 = 1250; the centre (2000) at 0.47 of 1250 → y0 = 2000 - 587.5
    FillCase("1:1 by hand", (6000, 4000), SMALL, (1, 1), box=Box(2175, 1413, 3425, 2663)),
    FillCase("1:1 geometric centre", (6000, 4000), SMALL, (1, 1), optical_center=0.5, box=Box(2175, 1375, 3425, 2625)),
    # copy space: the fill is measured against the rest, the subject centred in it
    FillCase("16:9 banner, copy space right", (6000, 4000), SMALL, (16, 9), copy_space=("right", 0.35),
             box=Box(2078, 1413, 4300, 2663)),
    FillCase("16:9 banner, copy space left", (6000, 4000), SMALL, (16, 9), copy_space=("left", 0.35)),
    FillCase("4:5, copy space top", (6000, 4000), SMALL, (4, 5), copy_space=("top", 0.3)),
    FillCase("9:16, copy space bottom", (6000, 4000), SMALL, (9, 16), copy_space=("bottom", 0.25)),
    # safe zones: the subject stays out; a tall subject at 9:16 is fitted between them
    FillCase("story zones, wide subject", (6000, 4000), Box(2500, 1800, 3500, 2200), (9, 16), safe_zone=STORY),
    FillCase("story zones, tall subject: fitted", (6000, 4000), Box(2900, 1000, 3100, 3000), (9, 16),
             safe_zone=STORY, framing="fitted", achieved=0.66),
    FillCase("zones and copy space on one side: the larger wins", (6000, 4000), SMALL, (16, 9),
             copy_space=("left", 0.3), safe_zone=Zones(left=0.1, right=0.1)),
    # the frame shifts to stay inside the image before it reaches past it
    FillCase("near the left edge: shifted, not extended", (6000, 4000), Box(100, 1500, 700, 2500), (1, 1),
             box=Box(0, 1413, 1250, 2663)),
    FillCase("near the top: shifted", (6000, 4000), Box(2500, 84, 3100, 1084), (4, 5), box=Box(2300, 0, 3300, 1250)),
    FillCase("nearer than the margin: a little canvas", (6000, 4000), Box(2500, 60, 3100, 1060), (4, 5),
             box=Box(2300, -20, 3300, 1230)),
    # too close to an edge: margin needs canvas (a little, under the limit)
    FillCase("2 px from the left edge", (6000, 4000), Box(2, 1500, 602, 2500), (1, 1)),
    # new canvas over the limit: tighter first
    FillCase("tall bottle into 16:9: tightened", (4000, 2250), Box(1800, 75, 2200, 2175), (16, 9),
             framing="tightened"),
    FillCase("tall bottle into 16:9: capped, extends", (3000, 4000), Box(1200, 400, 1800, 3600), (16, 9),
             framing="capped", achieved=0.9),
    FillCase("tall bottle into 16:9: capped, crop", (3000, 4000), Box(1200, 400, 1800, 3600), (16, 9),
             when_capped="crop", framing="capped"),
    FillCase("fill: crop never adds canvas", (3000, 4000), Box(1200, 400, 1800, 3600), (16, 9),
             keep_inside=True, framing="capped"),
    FillCase("fill: crop, fits at a tighter fill", (4000, 2250), Box(1800, 150, 2200, 2100), (16, 9),
             keep_inside=True, framing="tightened"),
    FillCase("no limit: framed with canvas", (3000, 4000), Box(1200, 400, 1800, 3600), (16, 9),
             max_new_canvas=1.0),
    # looser helps when the overhang is fixed: a subject 2 px from the edge of a small image
    FillCase("looser: fixed overhang, larger frame", (640, 640), Box(2, 200, 102, 400), (1, 1),
             max_new_canvas=0.05, framing="loosened"),
    # subjects cut by the photo stay cut: anchored to that edge, no canvas past it
    FillCase("bust cut at the bottom", (3000, 4000), Box(900, 1500, 2100, 4000), (4, 5)),
    FillCase("bust cut at the bottom, 9:16", (3000, 4000), Box(900, 1500, 2100, 4000), (9, 16)),
    FillCase("bust cut at the bottom, story zones", (3000, 4000), Box(900, 1500, 2100, 4000), (9, 16),
             safe_zone=STORY, framing=None),
    FillCase("cut at the left", (4000, 3000), Box(0, 1000, 800, 2000), (1, 1), box=Box(0, 913, 1250, 2163)),
    FillCase("cut top and bottom: edge", (4000, 3000), Box(1500, 0, 2500, 3000), (16, 9), framing="edge",
             box=Box(-666, 0, 4667, 3000)),
    FillCase("whole image", (4000, 3000), None, (1, 1), framing=None),
    FillCase("whole image, crop", (4000, 3000), None, (4, 5), keep_inside=True, framing=None),
    # tiny images and odd sizes
    FillCase("1×1 image", (1, 1), None, (16, 9), framing=None),
    FillCase("3×2 image, 1 px subject", (3, 2), Box(1, 0, 2, 1), (9, 16), framing=None),
    FillCase("odd 1001×777, 4:5", (1001, 777), Box(300, 200, 701, 577), (4, 5), framing=None),
    FillCase("odd 333×999, 16:9", (333, 999), Box(100, 3, 233, 990), (16, 9), framing=None),
    FillCase("small subject, big image, 9:16", (6000, 4000), Box(3000, 2000, 3013, 2021), (9, 16)),
    FillCase("anchor bottom keeps the floor", (2000, 1000), Box(800, 300, 1200, 900), (9, 16), anchor="bottom",
             framing=None),
]


def _limiting(frame: Frame) -> tuple[int, int]:
    """(subject side, reference side) along the side that limits the fill."""
    s, ref = frame.subject, frame.reference
    return (s.width, ref.width) if s.width / ref.width >= s.height / ref.height else (s.height, ref.height)


@pytest.mark.parametrize("case", FILL_CASES, ids=[c.name for c in FILL_CASES])
def test_frame_by_fill(case: FillCase) -> None:
    w, h = case.image
    frame = frame_by_fill(w, h, case.subject, case.ratio, case.fill, fill_range=case.fill_range,
                          max_new_canvas=case.max_new_canvas, optical_center=case.optical_center,
                          copy_space=case.copy_space, safe_zone=case.safe_zone, keep_inside=case.keep_inside,
                          when_capped=case.when_capped, anchor=case.anchor)
    box, subject = frame.box, frame.subject
    # invariants
    assert box.width >= 1 and box.height >= 1
    assert ratio_error(box.width, box.height, case.ratio) < 1.0
    assert frame.inside is not None
    assert frame.target_fill == case.fill and frame.framing in ("framed", "fitted", "edge", "tightened",
                                                                  "loosened", "capped")
    cut = {s for s, t in zip(("left", "top", "right", "bottom"),
                             (subject.x0 <= 0, subject.y0 <= 0, subject.x1 >= w, subject.y1 >= h)) if t}
    capped_inside = case.keep_inside or (frame.framing == "capped" and case.when_capped == "crop")
    if capped_inside:
        assert frame.image.contains(box) and frame.new_canvas == 0.0
    else:
        assert box.contains(subject), "fills that add canvas never cut the subject"
        assert not frame.in_zones, "the subject stays out of the copy space and the safe zones"
        if frame.framing != "capped":
            assert frame.new_canvas <= case.max_new_canvas + 1e-9
        # a cut subject stays cut: no canvas past the edges it touches (unless the ratio forces it)
        left, top, right, bottom = frame.outside
        if frame.framing != "edge" and not {"left", "right"} <= cut and not {"top", "bottom"} <= cut:
            assert not (("left" in cut and left) or ("right" in cut and right) or ("top" in cut and top)
                        or ("bottom" in cut and bottom))
            assert ("left" not in cut or box.x0 == 0) and ("right" not in cut or box.x1 == w)
            assert ("top" not in cut or box.y0 == 0) and ("bottom" not in cut or box.y1 == h)
    if frame.framing == "framed":
        side, ref = _limiting(frame)
        assert abs(case.fill * ref - side) <= 1.0, f"fill {side}/{ref} is not {case.fill} within 1 px"
        if not frame.extended and not cut and box.contains(frame.subject):
            # nothing moved it: the subject's centre at the optical centre of its part, centred across
            allowed = frame.allowed
            cx, cy = subject.center
            if allowed.x0 - box.x0 < subject.x0 - box.x0 and box.x0 not in (0, w - box.width):
                assert abs(cx - (allowed.x0 + allowed.x1) / 2) <= 1
            if box.y0 not in (0, h - box.height):
                assert abs(cy - (allowed.y0 + case.optical_center * allowed.height)) <= 1
    # worked-out expectations
    if case.framing is not None:
        assert frame.framing == case.framing, frame.why
    if case.box is not None:
        assert box == case.box
    if case.achieved is not None:
        assert frame.subject_fill == pytest.approx(case.achieved, abs=0.01)
    if frame.framing in ("tightened", "loosened"):
        assert case.fill_range[0] - 1e-9 <= frame.subject_fill <= case.fill_range[1] + 1e-9
        assert (frame.subject_fill > case.fill) is (frame.framing == "tightened")


def test_copy_space_puts_the_subject_in_the_rest() -> None:
    frame = frame_by_fill(6000, 4000, SMALL, (16, 9), copy_space=("right", 0.35))
    assert frame.reference == Box(frame.box.x0, frame.box.y0, frame.box.x0 + round(0.65 * frame.box.width),
                                  frame.box.y1)
    assert frame.subject.x1 <= frame.box.x0 + 0.65 * frame.box.width
    assert frame.subject_fill == pytest.approx(0.8, abs=1 / 1250)


def test_safe_zones_keep_the_subject_out_and_fill_stays_put() -> None:
    frame = frame_by_fill(6000, 4000, Box(2500, 1800, 3500, 2200), (9, 16), safe_zone=STORY)
    top, bottom = frame.subject.y0 - frame.box.y0, frame.box.y1 - frame.subject.y1
    assert top >= 0.14 * frame.box.height and bottom >= 0.2 * frame.box.height
    plain = frame_by_fill(6000, 4000, Box(2500, 1800, 3500, 2200), (9, 16))
    assert frame.box.size == plain.box.size, "a wide subject's fill is set by the width: zones only move it"


def test_same_presence_in_every_ratio() -> None:
    """The point of framing by fill: the subject's fill of the limiting side is the same in every ratio."""
    for subject in (SMALL, Box(2000, 1800, 4000, 2400), Box(2900, 1000, 3100, 3000)):
        fills = [frame_by_fill(6000, 4000, subject, r).subject_fill for r in ALL_RATIOS]
        assert max(fills) - min(fills) < 0.005, fills


def test_impossible_zones_are_refused() -> None:
    with pytest.raises(ValueError, match="no room"):
        frame_by_fill(1000, 1000, Box(400, 400, 600, 600), (1, 1), safe_zone=Zones(top=0.5, bottom=0.5))
    with pytest.raises(ValueError, match="no room"):
        frame_by_fill(1000, 1000, Box(400, 400, 600, 600), (1, 1), copy_space=("left", 0.6),
                      safe_zone=Zones(right=0.4))
    with pytest.raises(ValueError, match="fill"):
        frame_by_fill(1000, 1000, Box(400, 400, 600, 600), (1, 1), 1.2)


def test_zones_on_a_cut_side_are_ignored_and_said() -> None:
    frame = frame_by_fill(3000, 4000, Box(900, 1500, 2100, 4000), (9, 16), safe_zone=STORY)
    assert frame.box.y1 == 4000 and "cut by the photo at bottom" in frame.why
    assert frame.subject.y0 - frame.box.y0 >= 0.14 * frame.box.height


def test_fill_of() -> None:
    assert fill_of(Box(0, 0, 80, 40), Box(0, 0, 100, 100)) == 0.8
    assert fill_of(Box(0, 0, 40, 90), Box(0, 0, 100, 100)) == 0.9
