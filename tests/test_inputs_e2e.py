"""Hostile and deep inputs through the whole product (`assetd process`): each bad file is one clear failure,
the good ones finish, nothing is written for the bad ones, and 16-bit data reaches a 16-bit channel."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from click.testing import CliRunner
from PIL import Image

from fixtures_images import png_claiming, tiff16
from pipeline.cli import cli
from pipeline.synth import studio_shot

CUTOUT_ONLY = "name: cutouts\nsteps: [remove_background]\noutputs: [{channel: cutouts}]\n"


def process(workspace, *paths) -> tuple[int, dict]:
    result = CliRunner().invoke(cli, ["process", *map(str, paths), "--config", str(workspace.config_path), "--json"],
                                catch_exceptions=False)
    return result.exit_code, json.loads(result.stdout)


def test_a_hostile_batch_fails_file_by_file(workspace):
    for f in (workspace.root / "rules").iterdir():
        f.unlink()
    workspace.add_rule("cutouts.yaml", CUTOUT_ONLY)
    batch = workspace.root / "batch"
    good = workspace.shot("batch/good.jpg", "white", seed=1)
    png = workspace.shot("batch/png-inside.png", "grey", seed=2)
    (batch / "liar.jpg").write_bytes(png.read_bytes())  # a PNG named .jpg: decoded for what it is
    png.unlink()
    (batch / "empty.jpg").write_bytes(b"")
    (batch / "cut.jpg").write_bytes(good.read_bytes()[:2000])
    (batch / "letter.jpg").write_text("Dear studio, this is not a photo.")
    (batch / "huge.png").write_bytes(png_claiming(100_000, 100_000))
    (batch / "link.jpg").symlink_to(good)
    hostile = workspace.shot("batch/evil\nname..jpg", "grey", seed=4)

    code, doc = process(workspace, batch)
    assert code == 1
    by_name = {Path(r["input"]).name: r for r in doc["results"]}
    for name in ("good.jpg", "liar.jpg", "evil\nname..jpg"):
        assert by_name[name]["status"] == "done", by_name[name]
    expected_errors = {
        "empty.jpg": "file is empty",
        "cut.jpg": "damaged",
        "letter.jpg": "not an image",
        "huge.png": "exceeds input.max_pixels",
        "link.jpg": "symbolic link",
    }
    for name, fragment in expected_errors.items():
        r = by_name[name]
        assert r["status"] == "failed" and fragment in r["error"], r
        assert "\n" not in r["error"] and r["outputs"] == []
    written = sorted(p.name for p in workspace.out("cutouts").iterdir() if p.suffix == ".png")
    assert written == ["evil_name.png", "good.png", "liar.png"]
    for p in workspace.out("cutouts").iterdir():
        assert p.parent == workspace.out("cutouts") and "\n" not in p.name
    # the inputs are all still there, untouched
    assert (batch / "cut.jpg").stat().st_size == 2000 and os.path.islink(batch / "link.jpg")


def test_sixteen_bit_tiff_reaches_a_sixteen_bit_channel(workspace):
    workspace.write_config(extra="")
    config_text = workspace.config_path.read_text().replace(
        "notify:", "  print:     {path: out/print, format: tiff, bits: 16}\nnotify:")
    workspace.config_path.write_text(config_text)
    for f in (workspace.root / "rules").iterdir():
        f.unlink()
    workspace.add_rule("print.yaml", "name: print\nsteps:\n  - remove_background: {}\n"
                                     "  - crops: {ratios: ['4:5'], fill: pad}\n"
                                     "outputs: [{channel: print, from: crops}]\n")
    shot = studio_shot("grey", size=(320, 240), seed=3, subject="box").rgb
    deep = (shot.astype(np.uint16) * 257) | 1  # 16-bit values an 8-bit round trip would change
    path = workspace.root / "batch" / "deep.tif"
    path.parent.mkdir()
    path.write_bytes(tiff16(deep))

    code, doc = process(workspace, path)
    assert code == 0, doc
    (out,) = doc["results"][0]["outputs"]
    import tifffile

    pixels = tifffile.imread(out["path"])
    assert pixels.dtype == np.uint16 and pixels.shape[2] == 4
    assert abs(pixels.shape[1] / pixels.shape[0] - 0.8) < 0.01
    opaque = pixels[..., 3] == 65535
    assert opaque.sum() > 1000
    assert np.any(pixels[..., :3][opaque] % 257 != 0), "16-bit precision was lost on the way"
    with Image.open(out["path"]) as im:
        assert im.info.get("icc_profile"), "the output carries its sRGB profile"
