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
    (Box(0, 0, 100, 80), (50, 70), Box(0, 5, 100, 85), (1.0, 0.0, 5.0)),  # 5 px past the bottom: shift, no growth
    (Box(0, 0, 100, 80), (50, 70), Box(0, -80, 100, 80), (2.0, 0.0, -10.0)),  # twice as tall: grow about the base, then shift
    (Box(0, 0, 100, 80), (50, 70), Box(-25, 0, 125, 80), (1.5, 0.0, 0.0)),  # wider, centred: grows, no shift
])
def test_cover_transform(extent, point, frame, expected) -> None:
    scale, dx, dy = cover_transform(extent, point, frame)
    assert (scale, dx, dy) == pytest.approx(expected)
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
