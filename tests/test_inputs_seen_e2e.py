"""What a studio sees through `assetd process` for the inputs of issue 8: the primary image of a multi-image
HEIC (and the manifest saying so), a blank RAW failed with its reason, the input's 300 dpi in the print TIFF."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import tifffile
from click.testing import CliRunner
from PIL import Image

from fixtures_images import FRAME_COLOURS, heif_multi, make_dng
from pipeline.cli import cli
from pipeline.synth import studio_shot

AS_IS = ("name: as_is\nsteps: [{upscale: {factor: 1.0}}]\n"  # the image as decoded (a rule needs a step)
         "outputs: [{channel: print, from: input}, {channel: web, from: input}]\n")


def test_inputs_through_the_product(workspace):
    workspace.config_path.write_text(workspace.config_path.read_text().replace(
        "notify:", "  print:     {path: out/print, format: tiff}\n"
                   "  web:       {path: out/web, format: jpeg, dpi: 72}\nnotify:"))
    for f in (workspace.root / "rules").iterdir():
        f.unlink()
    workspace.add_rule("as_is.yaml", AS_IS)
    batch = workspace.root / "batch"
    batch.mkdir()
    Image.fromarray(studio_shot("white", size=(240, 180), seed=1).rgb).save(batch / "shot.jpg", dpi=(300, 300))
    (batch / "burst.heic").write_bytes(heif_multi(2))
    (batch / "zero.dng").write_bytes(make_dng(np.zeros((32, 48, 3))))

    result = CliRunner().invoke(cli, ["process", str(batch), "--config", str(workspace.config_path), "--json"],
                                catch_exceptions=False)
    by_name = {Path(r["input"]).name: r for r in json.loads(result.stdout)["results"]}
    assert result.exit_code == 1  # one input failed

    zero = by_name["zero.dng"]
    assert zero["status"] == "failed" and zero["outputs"] == []
    assert "decoded image is blank (every pixel is #000000" in zero["error"]

    shot = by_name["shot.jpg"]
    assert shot["status"] == "done"
    (tif,) = [o["path"] for o in shot["outputs"] if o["channel"] == "print"]
    with tifffile.TiffFile(tif) as tf:
        tags = tf.pages.first.tags
        assert tags["XResolution"].value == (300, 1) and int(tags["ResolutionUnit"].value) == 2
    (jpg,) = [o["path"] for o in shot["outputs"] if o["channel"] == "web"]
    with Image.open(jpg) as im:
        assert im.info["dpi"] == (72, 72)  # the channel's dpi, not the input's

    burst = by_name["burst.heic"]
    assert burst["status"] == "done"
    (tif,) = [o["path"] for o in burst["outputs"] if o["channel"] == "print"]
    centre = tifffile.imread(tif)[16, 16, :3].astype(int)
    assert np.abs(centre - FRAME_COLOURS[2]).max() <= 12, centre  # image 2, the primary
    manifest = json.loads(workspace.manifest("as_is", "burst").read_text())
    steps = manifest["outputs"][0]["steps"]["input"]
    assert steps["images"] == 3 and steps["image"] == "2 (primary)"
