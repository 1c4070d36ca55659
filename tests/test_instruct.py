"""place_in_scene backend instruct: a tiny random FLUX Kontext pipeline, saved and loaded through the real path
(CPU, offline)."""
from __future__ import annotations

import numpy as np
import pytest

from pipeline.stages.base import Asset, StageContext, stage_class
from pipeline.stages.instruct import (InstructScene, InstructSceneOptions, edit_input, feathered_seam,
                                      instruct_pipeline, subject_difference)
from scenecases import placed
from tinymodels import make_config, netguard, tiny_flux_fill, tiny_flux_kontext  # noqa: F401

pytestmark = pytest.mark.usefixtures("netguard")


def cutout(h: int = 96, w: int = 80, dtype: type = np.uint8) -> np.ndarray:
    """A textured product with a soft top edge on a transparent canvas (black under alpha 0, as cut-outs are)."""
    img = np.zeros((h, w, 4), np.uint8)
    yy, xx = np.mgrid[0:h, 0:w]
    img[30:62, 20:52, :3] = np.stack([(xx * 3) % 90, (yy * 5) % 70, (xx + yy) % 50], -1)[30:62, 20:52]
    img[30:62, 20:52, 3] = 255
    img[29, 20:52, 3] = 128
    img[29, 20:52, :3] = 60
    return img.astype(np.uint16) * 257 if dtype == np.uint16 else img


def stage(tmp_path, **opts) -> InstructScene:
    config = make_config(tmp_path, instruct=str(tiny_flux_kontext()))
    options = InstructSceneOptions(**{"prompt": "put it on the sand", "steps": 2, "seed": 7, **opts})
    s = InstructScene(options, StageContext(config))
    s.prepare()
    # FluxKontextPipeline fixes its native size at 128 latent pixels, 128² with the tiny VAE (no downsampling):
    # 2 × 4096 tokens. Working at 64² keeps each call under a second; the geometry code is the same.
    instruct_pipeline(s.ctx, None).default_sample_size = 64
    return s


def test_the_backend_is_registered_for_place_in_scene():
    assert stage_class("place_in_scene", "instruct") is InstructScene


def test_edit_regenerates_the_frame_and_keeps_subject_pixels_exactly(tmp_path):
    src = cutout()
    (out,) = stage(tmp_path, scale=0.8, anchor="center").run(Asset(src))
    region, subject, opaque = placed(out, src)
    np.testing.assert_array_equal(region[opaque], subject[opaque])
    assert not np.array_equal(region[~opaque], subject[~opaque])  # the soft edge is composited on the new scene
    x0, y0, x1, y1 = out.notes["place_in_scene"]["subject_box"]
    around = np.ones(out.pixels.shape[:2], bool)
    around[y0:y1, x0:x1] = False
    assert (out.pixels[around] != 255).any() and out.pixels[around].std() > 1  # not the white sweep it was shown
    assert out.matte.max() == 255 and (out.matte > 0).sum() == (src[..., 3] > 0).sum()
    note = out.notes["place_in_scene"]
    assert note["backend"] == "instruct" and note["pipeline"] == "FluxKontextPipeline"
    assert note["seed"] == 7 and note["prompt"] == "put it on the sand"
    assert note["model"] == str(tiny_flux_kontext()) and note["feather"] == 4
    # a random model redraws the product beyond recognition: the review says so
    assert note["subject_redrawn"] > 40 and any("redrew the product" in r for r in out.review)


def test_subject_difference_measures_how_far_the_model_redrew_the_product():
    image = np.full((16, 16, 3), 200, np.uint8)
    coverage = np.zeros((16, 16), np.float32)
    coverage[4:12, 4:12] = 1.0
    assert subject_difference(image.astype(np.float32) / 255.0, image, coverage) < 1e-3
    moved = image.astype(np.float32) / 255.0
    moved[4:12, 4:8] = 1.0  # half the product gone, white sweep in its place
    assert abs(subject_difference(moved, image, coverage) - 27.5) < 0.1
    assert subject_difference(moved, image, np.zeros_like(coverage)) is None


def test_same_seed_same_scene_other_seed_another(tmp_path):
    s = stage(tmp_path)
    first, again = s.run(Asset(cutout()))[0], s.run(Asset(cutout()))[0]
    np.testing.assert_array_equal(first.pixels, again.pixels)
    s.options.seed = 8
    other = s.run(Asset(cutout()))[0]
    assert not np.array_equal(first.pixels, other.pixels)


def test_16bit_subject_exact(tmp_path):
    src = cutout(dtype=np.uint16)
    (out,) = stage(tmp_path, scale=0.5, anchor="bottom", margin=0.0).run(Asset(src))
    assert out.pixels.dtype == np.uint16
    region, subject, opaque = placed(out, src)
    np.testing.assert_array_equal(region[opaque], subject[opaque])


def test_edit_input_puts_the_subject_on_white_without_a_dark_fringe():
    src = cutout()
    image, coverage = edit_input(src, (80, 96), (0, 0), (40, 48))
    assert image.shape == (48, 40, 3) and coverage.shape == (48, 40)
    assert (image[coverage == 0] == 255).all()
    edge = (coverage > 0) & (coverage < 1)
    solid = coverage >= 0.999
    # a soft edge pixel lies between the subject's colour and white, never darker than both (black under alpha 0)
    assert edge.any() and (image[edge].astype(int).min() >= min(60, image[solid].min()) - 1)


def test_feathered_seam_hides_the_models_own_outline():
    h = w = 64
    yy, xx = np.mgrid[0:h, 0:w]
    r = np.hypot(yy - 32, xx - 32)
    gen = np.full((h, w, 3), 0.2, np.float32)
    gen[r <= 14] = 0.9  # the model drew the product two pixels too large
    coverage = (r <= 12).astype(np.float32)
    out = feathered_seam(gen, coverage, 4)
    ghost = (r > 12.5) & (r <= 14)
    assert np.abs(out[ghost] - 0.2).max() < 0.15  # the ghost edge is blended into the scene around it
    far = r > 17
    np.testing.assert_array_equal(out[far], gen[far])  # beyond the band: the model's own pixels
    np.testing.assert_array_equal(feathered_seam(gen, coverage, 0), gen)


def test_a_cutout_is_needed(tmp_path):
    from pipeline.errors import PermanentError

    with pytest.raises(PermanentError, match="RGBA"):
        stage(tmp_path).run(Asset(np.zeros((32, 32, 3), np.uint8)))


def check(workspace, tmp_path, model: str):
    """``assetd check`` on a rule whose place_in_scene uses the edit model ``model``."""
    from click.testing import CliRunner

    from pipeline.cli import cli

    workspace.write_config(extra=f"device: cpu\nmodels: {{cache_dir: {tmp_path / 'cache'}}}\n")
    for f in (workspace.root / "rules").iterdir():
        f.unlink()
    workspace.add_rule("kontext.yaml", f"""\
name: kontext
steps:
  - remove_background: {{}}
  - place_in_scene: {{backend: instruct, model: {model}, prompt: "put it on a marble table"}}
outputs:
  - {{channel: webshop, from: place_in_scene}}
""")
    return CliRunner().invoke(cli, ["check", "--config", str(workspace.config_path)])


def test_check_names_a_missing_edit_model_and_the_pull_command(workspace, tmp_path):
    result = check(workspace, tmp_path, "black-forest-labs/FLUX.1-Kontext-dev")
    assert result.exit_code != 0
    line = next(x for x in result.output.splitlines() if "FLUX.1-Kontext-dev" in x)
    assert "rule kontext, step place_in_scene" in line and "assetd models pull" in line


def test_check_refuses_a_pipeline_that_is_no_instruction_edit(workspace, tmp_path):
    result = check(workspace, tmp_path, str(tiny_flux_fill()))
    assert result.exit_code != 0 and "FluxFillPipeline, not an instruction-edit pipeline" in result.output
    result = check(workspace, tmp_path, str(tiny_flux_kontext()))
    assert result.exit_code == 0, result.output


def test_the_job_page_says_which_model_and_seed_made_the_scene(tmp_path):
    from pipeline.web.job import highlights

    (out,) = stage(tmp_path).run(Asset(cutout()))
    assert ("place_in_scene", f"generated by {tiny_flux_kontext()}, seed 7") in highlights(out.notes)


def test_a_cutout_png_through_assetd_process(workspace, tmp_path):
    """The backend in a rule, through ``assetd process``: the delivered PNG holds the cut-out's opaque pixels
    exactly where the manifest says the subject is, and the manifest records the model, prompt and seed."""
    import json

    from click.testing import CliRunner
    from PIL import Image

    from pipeline.cli import cli

    model = tiny_flux_kontext()
    workspace.write_config(extra=f"device: cpu\nmodels: {{cache_dir: {tmp_path / 'cache'}}}\n")
    for f in (workspace.root / "rules").iterdir():
        f.unlink()
    workspace.add_rule("kontext.yaml", f"""\
name: kontext
steps:
  - place_in_scene: {{backend: instruct, model: {model}, prompt: "put it on the sand", steps: 2, seed: 5}}
outputs:
  - {{channel: cutouts, from: place_in_scene}}
""")
    src = cutout()
    path = workspace.root / "batch" / "bottle.png"
    path.parent.mkdir()
    Image.fromarray(src, "RGBA").save(path)
    result = CliRunner().invoke(cli, ["process", str(path), "--config", str(workspace.config_path), "--json"],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    (doc,) = json.loads(result.stdout)["results"]
    assert doc["status"] == "done", doc
    (output,) = doc["outputs"]
    delivered = np.asarray(Image.open(output["path"]).convert("RGB"))
    (record,) = json.loads(workspace.manifest("kontext", "bottle").read_text())["outputs"]
    note = record["steps"]["place_in_scene"]
    assert (note["backend"], note["prompt"], note["seed"], note["model"]) == ("instruct", "put it on the sand", 5,
                                                                             str(model))
    x0, y0, x1, y1 = note["subject_box"]
    opaque = src[29:62, 20:52, 3] == 255
    np.testing.assert_array_equal(delivered[y0:y1, x0:x1][opaque], src[29:62, 20:52, :3][opaque])
