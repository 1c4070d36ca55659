"""Stage place_in_scene (backend composite): the scene moves around the subject, never the reverse."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from pipeline.config import Config
from pipeline.errors import PermanentError
from pipeline.pixels import to_dtype
from pipeline.schema import build
from pipeline.stages.base import Asset, StageContext, stage_class
from pipeline.stages.framing import Box, subject_box
from pipeline.stages.place_in_scene import CompositePlace, PlaceOptions, light_gains


def cutout(w: int = 300, h: int = 400, dtype: type = np.uint8) -> np.ndarray:
    """RGBA: a textured bottle (antialiased edge) on transparency, with a little room around it."""
    rng = np.random.default_rng(3)
    rgb = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    big = np.zeros((h * 4, w * 4), np.uint8)
    cv2.ellipse(big, (w * 2, h * 2), (int(w * 1.2), int(h * 1.6)), 0, 0, 360, 255, -1)
    alpha = cv2.resize(big, (w, h), interpolation=cv2.INTER_AREA)
    rgba = np.dstack([rgb, alpha])
    rgba[alpha == 0, :3] = 0
    if dtype == np.uint16:
        rgba = rgba.astype(np.uint16) * 257
        rgba[..., :3] += rng.integers(0, 200, (h, w, 3), dtype=np.uint16)
    return rgba


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    rng = np.random.default_rng(5)
    scene = np.clip(rng.normal(150, 12, (480, 640, 3)), 0, 255).astype(np.uint8)
    scene[:, :, 2] = 90
    Image.fromarray(scene).save(tmp_path / "scene.png")
    return tmp_path


def make_stage(root: Path, **options: object) -> CompositePlace:
    errors: list[str] = []
    opts = build(PlaceOptions, options, "place_in_scene", errors, base=root)
    assert errors == []
    config = Config(source=root / "config.yaml")
    assert CompositePlace.validate(opts, "place_in_scene", config) == []
    return CompositePlace(opts, StageContext(config=config))


def placed(out: Asset, rgba: np.ndarray) -> tuple[int, int]:
    """Offset (dx, dy) from cut-out coordinates to output coordinates."""
    x0, y0, _, _ = out.notes["place_in_scene"]["subject_box"]
    box = subject_box(rgba[..., 3], int(0.1 * (65535 if rgba.dtype == np.uint16 else 255)))
    return x0 - box.x0, y0 - box.y0


def test_registered_as_default_backend() -> None:
    assert stage_class("place_in_scene", None) is CompositePlace


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_opaque_subject_pixels_are_bit_identical(workspace: Path, dtype: type) -> None:
    rgba = cutout(dtype=dtype)
    out = make_stage(workspace, scene="scene.png").run(Asset(rgba))[0]
    assert out.pixels.shape[2] == 3 and out.pixels.dtype == dtype
    dx, dy = placed(out, rgba)
    top = 65535 if dtype == np.uint16 else 255
    ys, xs = np.nonzero(rgba[..., 3] == top)
    assert len(ys) > 10000
    assert np.array_equal(out.pixels[ys + dy, xs + dx], rgba[ys, xs, :3])
    # the matte is the cut-out's alpha, moved to where the subject landed
    assert out.matte.dtype == np.uint8 and out.matte.shape == out.pixels.shape[:2]
    assert (out.matte[ys + dy, xs + dx] == 255).all()
    alpha8 = to_dtype(rgba[..., 3], np.uint8)
    ys, xs = np.nonzero(alpha8)
    assert np.array_equal(out.matte[ys + dy, xs + dx], alpha8[ys, xs])
    assert out.matte.sum(dtype=np.int64) == alpha8.sum(dtype=np.int64)


def test_output_takes_the_scenes_aspect_and_subject_fills_scale(workspace: Path) -> None:
    rgba = cutout()
    out = make_stage(workspace, scene="scene.png", scale=0.5).run(Asset(rgba))[0]
    assert abs(out.width / out.height - 640 / 480) < 1 / out.height + 1e-9
    note = out.notes["place_in_scene"]
    box = subject_box(rgba[..., 3], 25)
    assert abs(box.height / out.height - 0.5) < 0.01  # tall subject: height is the limiting side
    assert note["scene"] == "scene.png" and note["scene_scale"] == pytest.approx(out.width / 640, rel=1e-3)


def test_anchor_bottom_puts_the_base_on_the_bottom_margin(workspace: Path) -> None:
    rgba = cutout()
    out = make_stage(workspace, scene="scene.png", anchor="bottom", margin=0.05).run(Asset(rgba))[0]
    base = subject_box(out.matte, 25).y1
    assert abs(base - (out.height - 0.05 * out.height)) <= 2
    centre = make_stage(workspace, scene="scene.png", anchor="center").run(Asset(rgba))[0]
    box = subject_box(centre.matte, 25)
    assert abs((box.y0 + box.y1) / 2 - centre.height / 2) <= 2
    assert abs((box.x0 + box.x1) / 2 - centre.width / 2) <= 2


def test_soft_shadow_darkens_below_the_subject_only(workspace: Path) -> None:
    rgba = cutout()
    lit = make_stage(workspace, colour="#c8c8c8", shadow="none").run(Asset(rgba))[0].pixels.astype(np.int32)
    shaded_asset = make_stage(workspace, colour="#c8c8c8", shadow="soft", shadow_opacity=0.5).run(Asset(rgba))[0]
    shaded = shaded_asset.pixels.astype(np.int32)
    box = subject_box(shaded_asset.matte, 25)
    below = (slice(box.y1 + 1, box.y1 + 4), slice((box.x0 + box.x1) // 2 - 5, (box.x0 + box.x1) // 2 + 5))
    assert (shaded[below] < lit[below] - 10).all(), "no contact shadow under the base"
    diff = np.abs(shaded - lit).sum(axis=2) > 0
    assert not diff[: (box.y0 + box.y1) // 2].any(), "the shadow reaches the upper half of the picture"
    assert not diff[:, : box.x0].any() and not diff[:, box.x1:].any(), "the shadow spreads beyond the subject"
    assert (shaded <= lit).all(), "a shadow only darkens"


def test_colour_and_gradient_backgrounds(workspace: Path) -> None:
    rgba = cutout()
    flat = make_stage(workspace, colour="#336699", shadow="none").run(Asset(rgba))[0]
    assert (flat.pixels[0, 0] == (0x33, 0x66, 0x99)).all() and (flat.pixels[-1, -1] == (0x33, 0x66, 0x99)).all()
    assert abs(flat.width / flat.height - 300 / 400) < 1 / flat.height + 1e-9  # the cut-out's aspect
    grad = make_stage(workspace, gradient=["#000000", "#ffffff"], shadow="none").run(Asset(rgba))[0]
    column = grad.pixels[:, 0, 0].astype(np.int32)
    assert column[0] == 0 and column[-1] == 255 and (np.diff(column) >= 0).all()
    assert grad.notes["place_in_scene"]["gradient"] == ["#000000", "#ffffff"]


def test_match_light_is_opt_in_and_recorded(workspace: Path) -> None:
    rgba = cutout()
    out = make_stage(workspace, scene="scene.png", match_light=1.0).run(Asset(rgba))[0]
    note = out.notes["place_in_scene"]["match_light"]
    gains = np.array(note["gains"])
    assert gains[2] < 0.9 < 1.0 < gains[0], "the scene is yellowish (blue at 90): the subject warms up"
    assert float(gains @ [0.2126, 0.7152, 0.0722]) == pytest.approx(1.0, abs=1e-3)
    dx, dy = placed(out, rgba)
    ys, xs = np.nonzero(rgba[..., 3] == 255)
    assert not np.array_equal(out.pixels[ys + dy, xs + dx], rgba[ys, xs, :3])
    assert np.allclose(light_gains(np.full((10, 10, 3), 80, np.uint8), 1.0), 1.0)


def test_scene_is_decoded_once_with_exif_orientation(workspace: Path) -> None:
    img = Image.fromarray(np.full((200, 400, 3), 120, np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° on display: 400×200 becomes 200×400
    img.save(workspace / "rotated.jpg", exif=exif)
    stage = make_stage(workspace, scene="rotated.jpg")
    out = stage.run(Asset(cutout()))[0]
    assert out.height > out.width and abs(out.width / out.height - 0.5) < 0.01
    first = stage.scene_pixels()
    stage.run(Asset(cutout()))
    assert stage.scene_pixels() is first


@pytest.mark.parametrize("options, problem", [
    ({"scene": "missing.jpg"}, "place_in_scene.scene: file "),
    ({}, "set exactly one of scene, scenes, colour or gradient, got none"),
    ({"colour": "#ffffff", "gradient": ["#000000", "#ffffff"]}, "got colour, gradient"),
])
def test_validate_problems(workspace: Path, options: dict, problem: str) -> None:
    opts = build(PlaceOptions, options, "place_in_scene", [], base=workspace)
    problems = CompositePlace.validate(opts, "place_in_scene", Config(source=workspace / "config.yaml"))
    assert len(problems) == 1 and problem in problems[0]
    if "scene" in options:
        assert str(workspace / "missing.jpg") in problems[0]


@pytest.mark.parametrize("options, problem", [
    ({"scale": 0}, "0 < scale ≤ 1"),
    ({"scale": 1.5}, "0 < scale ≤ 1"),
    ({"gradient": ["#000000"]}, "two colours"),
    ({"gradient": ["#000000", "red"]}, "expected a colour"),
    ({"anchor": "left"}, "expected one of"),
])
def test_option_problems(options: dict, problem: str) -> None:
    errors: list[str] = []
    build(PlaceOptions, options, "place_in_scene", errors)
    assert len(errors) == 1 and problem in errors[0]


def test_rgb_input_is_a_permanent_error(workspace: Path) -> None:
    stage = make_stage(workspace, colour="#ffffff")
    with pytest.raises(PermanentError, match="needs a cut-out: add remove_background"):
        stage.run(Asset(np.zeros((50, 50, 3), np.uint8)))
    with pytest.raises(PermanentError, match="fully transparent"):
        stage.run(Asset(np.zeros((50, 50, 4), np.uint8)))


def _crops(**options: object):
    from pipeline.stages.crops import CropsOptions, GeometryCrops

    errors: list[str] = []
    opts = build(CropsOptions, {"ratios": ["1:1", "4:5", "9:16", "16:9"], **options}, "crops", errors)
    assert errors == []
    return GeometryCrops(opts, StageContext(config=Config()))


def test_each_ratio_is_composed_on_the_scene_with_the_subject_exact(workspace: Path) -> None:
    """A crop reaching past the composite gets more of the same scene (grown about the subject's base when it
    must), never an outpainted smear; the subject's opaque pixels are the cut-out's in every ratio."""
    rgba = cutout()
    composite = make_stage(workspace, scene="scene.png", scale=0.95, margin=0.02, shadow="none").run(Asset(rgba))[0]
    assert composite.backdrop is not None
    outs = _crops().run(composite)
    ys, xs = np.nonzero(rgba[..., 3] == 255)
    composed = 0
    for out in outs:
        note = out.notes["crops"]
        w, h = (int(v) for v in note["ratio"].split(":"))
        assert abs(out.width * h - out.height * w) <= max(w, h)
        box = subject_box(out.matte, 25)
        sub = subject_box(rgba[..., 3], 25)
        dx, dy = box.x0 - sub.x0, box.y0 - sub.y0
        assert np.array_equal(out.pixels[ys + dy, xs + dx], rgba[ys, xs, :3])
        assert out.backdrop is None
        if note["extended"]:
            composed += 1
            assert note["fill"] == "scene" and note["scene_grown"] >= 1.0
            # the new canvas is scene texture (blue channel 90 everywhere in this scene), not a smear or a pad
            outside = out.matte == 0
            assert np.abs(out.pixels[..., 2][outside].astype(int) - 90).max() <= 2
            assert out.pixels[..., 0][outside].std() > 5
    assert composed >= 2  # the 4:3 scene composite needs more canvas at 9:16 and 16:9 at least


def test_on_a_scene_every_ratio_frames_the_subject_at_the_same_fill(workspace: Path) -> None:
    """Canvas past a scene composite is more of the scene, not invented: max_new_canvas does not tighten it."""
    composite = make_stage(workspace, scene="scene.png", scale=0.95, margin=0.02, shadow="none").run(Asset(cutout()))[0]
    notes = [out.notes["crops"] for out in _crops(max_new_canvas=0.0).run(composite)]
    assert [n["framing"] for n in notes] == ["framed"] * 4
    assert all(n["subject_fill"] == pytest.approx(0.8, abs=0.01) for n in notes), notes
    assert any(n["new_canvas"] > 0 and n["fill"] == "scene" for n in notes)


def test_a_subject_cut_by_its_photo_enters_from_that_edge_without_a_floor_shadow(workspace: Path) -> None:
    rgba = cutout()
    bust = rgba[:300].copy()  # the photo's frame cut the bottle: solid subject along the bottom edge
    out = make_stage(workspace, scene="scene.png", anchor="bottom", margin=0.05).run(Asset(bust))[0]
    note = out.notes["place_in_scene"]
    assert note["cut_edges"] == ["bottom"] and "shadow" not in note
    assert subject_box(out.matte, 25).y1 == out.height  # it enters from the output's bottom edge
    whole = make_stage(workspace, scene="scene.png", anchor="bottom", margin=0.05).run(Asset(rgba))[0]
    assert "cut_edges" not in whole.notes["place_in_scene"] and "shadow" in whole.notes["place_in_scene"]


def test_a_scene_enlarged_past_the_limit_is_reported(workspace: Path, caplog: pytest.LogCaptureFixture) -> None:
    big = np.zeros((2000, 1500, 4), np.uint8)
    big[200:1800, 300:1200] = cutout(900, 1600)
    with caplog.at_level("WARNING", logger="assetd.stage"):
        out = make_stage(workspace, scene="scene.png", scale=0.6).run(Asset(big))[0]
    note = out.notes["place_in_scene"]
    assert note["scene_enlarged"] == note["scene_scale"] > 1.25
    assert "enlarged" in caplog.text and "scene.png" in caplog.text
    small = make_stage(workspace, scene="scene.png", scale=0.6).run(Asset(cutout()))[0]
    assert "scene_enlarged" not in small.notes["place_in_scene"]


def test_a_crop_whose_scene_grows_up_to_the_limit_is_not_reported(tmp_path: Path,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    """Crops grow the scene up to max_scene_enlarge (1.25) and no further: one grown exactly that much is not "more
    than max_scene_enlarge" (1.108 × (1.25 / 1.108) is 1.2500000000000002 in floating point), one that must grow
    more to be covered at all still is, in the log and the manifest."""
    rng = np.random.default_rng(5)
    Image.fromarray(np.clip(rng.normal(150, 12, (160, 240, 3)), 0, 255).astype(np.uint8)).save(tmp_path / "scene.png")
    composite = make_stage(tmp_path, scene="scene.png", scale=0.6, anchor="bottom", shadow="none").run(
        Asset(cutout(184, 132)))[0]
    assert "scene_enlarged" not in composite.notes["place_in_scene"]
    with caplog.at_level("WARNING", logger="assetd.stage"):
        outs = _crops(ratios=["1:1", "4:5", "9:16"], anchor="bottom", fill="outpaint").run(composite)
    notes = {o.ratio: o.notes["crops"] for o in outs}
    for ratio in ("1:1", "4:5"):  # grown to the limit itself
        assert notes[ratio]["scene_scale"] == 1.25 and "scene_enlarged" not in notes[ratio], notes[ratio]
        assert f"image {ratio}: the scene scene.png is enlarged" not in caplog.text
    assert notes["9:16"]["scene_enlarged"] == notes["9:16"]["scene_scale"] > 1.5  # more than the limit: said
    assert ("image 9:16: the scene scene.png is enlarged 1.55× to cover this frame (more than max_scene_enlarge)"
            in caplog.text)


def test_each_enlarged_scene_is_named_once_per_ratio_in_the_crops_warning(tmp_path: Path,
                                                                           caplog: pytest.LogCaptureFixture) -> None:
    """The trial's rule: two colourways on two scenes, one scene much smaller. The crops warning said only the first
    scene's factor per ratio (1.34×) and hid the worse one (3.56×); each scene is named with its own factor, once
    per job, ratio and scene (not once per colourway)."""
    from pipeline.stages.crops import CropsOptions, GeometryCrops

    rng = np.random.default_rng(5)
    for name, size in (("Morning Kitchen.png", (160, 240)), ("small wood.png", (120, 160))):
        Image.fromarray(np.clip(rng.normal(150, 12, (*size, 3)), 0, 255).astype(np.uint8)).save(tmp_path / name)
    errors: list[str] = []
    place = build(PlaceOptions, {"scenes": ["Morning Kitchen.png", "small wood.png"], "scale": 0.6,
                                 "anchor": "bottom", "shadow": "none"}, "place_in_scene", errors, base=tmp_path)
    crops = build(CropsOptions, {"ratios": ["1:1", "9:16"], "anchor": "bottom", "fill": "outpaint"}, "crops", errors)
    assert errors == []
    ctx = StageContext(config=Config(source=tmp_path / "config.yaml"))
    placing, cropping = CompositePlace(place, ctx), GeometryCrops(crops, ctx)
    with caplog.at_level("WARNING", logger="assetd.stage"):
        for colourway in ("green", "navy"):
            for composite in placing.run(Asset(cutout(184, 132), variant=colourway)):
                cropping.run(composite)
    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("crops:")]
    for scene in ("Morning Kitchen.png", "small wood.png"):
        lines = [line for line in said if f"9:16: the scene {scene} is enlarged" in line]
        assert len(lines) == 1, said  # named, and once for both colourways
    assert len(said) == len(set(said)), said


def test_a_scene_sidecar_says_where_the_subject_stands(workspace: Path) -> None:
    (workspace / "scene.yaml").write_text("floor: 0.8\narea: [0.5, 0.2, 1.0, 1.0]\nsubject_height: [0.4, 0.5]\n"
                                          "light: left\n")
    rgba = cutout()
    out = make_stage(workspace, scene="scene.png", scale=0.9).run(Asset(rgba))[0]
    note = out.notes["place_in_scene"]
    assert note["scene_sidecar"] == "scene.yaml"
    box = subject_box(out.matte, 25)
    assert abs(box.y1 - 0.8 * out.height) <= 2  # the base on the floor line
    assert abs(box.height / out.height - 0.5) <= 0.01  # scale 0.9 kept inside subject_height
    assert box.x0 >= 0.5 * out.width - 1  # inside the placement area
    x0, x1, _ = note["shadow"]["base"]
    shade = out.pixels.astype(np.float32).sum(axis=2)
    row = box.y1 + 1
    left, right = shade[row, :(x0 + x1) // 2].mean(), shade[row, (x0 + x1) // 2:].mean()
    assert right < left  # light from the left: the shadow falls to the right


def test_a_bad_scene_sidecar_is_refused_when_the_rule_loads(workspace: Path) -> None:
    (workspace / "scene.yaml").write_text("floor: 1.5\nlight: behind\n")
    opts = build(PlaceOptions, {"scene": "scene.png"}, "place_in_scene", [], base=workspace)
    problems = CompositePlace.validate(opts, "steps[1].place_in_scene", Config(source=workspace / "config.yaml"))
    assert len(problems) == 2 and all(p.startswith(f"steps[1].place_in_scene.scene: scene sidecar "
                                                   f"{workspace / 'scene.yaml'}: ") for p in problems)
    assert "floor: expected at most 1.0" in problems[0] and "light: expected one of" in problems[1]


def test_a_step_between_the_scene_and_crops_keeps_its_work(workspace: Path) -> None:
    """Only place_in_scene's own output carries its backdrop: after any other step crops extends what that step
    made instead of composing the scene anew over it."""
    rgba = cutout()
    composite = make_stage(workspace, scene="scene.png", scale=0.95, margin=0.02, shadow="none").run(Asset(rgba))[0]
    tinted = composite.derive(composite.pixels // 2, composite.matte)  # what a step in between would do
    assert tinted.backdrop is None
    for out in _crops().run(tinted):
        note = out.notes["crops"]
        assert note["fill"] != "scene"
        box = Box(*note["box"])
        inside = box.intersect(Box(0, 0, tinted.width, tinted.height))
        known = inside.shift(-box.x0, -box.y0)
        assert np.array_equal(out.pixels[known.y0:known.y1, known.x0:known.x1],
                              tinted.pixels[inside.y0:inside.y1, inside.x0:inside.x1])


def test_a_scene_is_decoded_like_an_input_its_profile_converted_to_srgb(workspace: Path) -> None:
    from fixtures_images import adobe_rgb_profile, encode_pil

    from pipeline import imageio
    from pipeline.config import InputConfig

    green = np.zeros((48, 64, 3), np.uint8)
    green[...] = (40, 180, 60)
    data = encode_pil(green, "PNG", icc_profile=adobe_rgb_profile())
    (workspace / "adobe.png").write_bytes(data)
    stage = make_stage(workspace, scene="adobe.png")
    expected = imageio.decode(data, "adobe.png", InputConfig(min_signal=0.0)).pixels
    assert not np.array_equal(expected, green)  # Adobe RGB green is more saturated in sRGB
    assert np.array_equal(stage.scene_pixels(), expected)


def test_on_a_scene_every_ratio_puts_the_subject_at_the_optical_centre(workspace: Path) -> None:
    """Past the composite the canvas is more of the scene, so the frame is placed by fill and optical centre alone
    (not slid to stay inside the composite, which put wide products on the bottom edge)."""
    rgba = np.zeros((200, 400, 4), np.uint8)  # a wide product
    rgba[20:180, 20:380] = cutout(360, 160)
    composite = make_stage(workspace, scene="scene.png", scale=0.6, anchor="bottom").run(Asset(rgba))[0]
    for out in _crops(anchor="bottom").run(composite):
        box = subject_box(out.matte, 25)
        assert abs((box.y0 + box.y1) / 2 / out.height - 0.47) <= 2 / out.height, out.notes["crops"]["ratio"]
        assert abs((box.x0 + box.x1) / 2 - out.width / 2) <= 2
        assert out.notes["crops"]["subject_fill"] == pytest.approx(0.8, abs=2 / max(out.width, out.height))
