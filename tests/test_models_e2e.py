"""Model-backed backends plug into the same daemon machinery: a rule using rembg, a generated scene, the
generative crop fill and spandrel runs through `assetd process` with tiny local models, offline."""
from __future__ import annotations

import json

import numpy as np
from click.testing import CliRunner
from PIL import Image

from pipeline.cli import cli
from tinymodels import needs, netguard, tiny_dark_subject_onnx, tiny_esrgan_x4, tiny_sd_inpaint  # noqa: F401

pytestmark = needs("rembg")  # the other libraries: each tiny model skips without its own


def test_model_backed_rule_through_process(workspace, tmp_path, netguard):  # noqa: F811
    onnx, sd, esrgan = tiny_dark_subject_onnx(), tiny_sd_inpaint(), tiny_esrgan_x4()
    workspace.write_config(extra=f"device: cpu\nmodels: {{cache_dir: {tmp_path / 'cache'}}}\n")
    for f in (workspace.root / "rules").iterdir():
        f.unlink()
    workspace.add_rule("gpu.yaml", f"""\
name: gpu
steps:
  - remove_background: {{backend: rembg, model: {onnx}}}
  - place_in_scene: {{backend: diffusers, model: {sd}, prompt: "a marble table", steps: 2, seed: 3, scale: 0.6}}
  - crops: {{ratios: ["1:1", "3:1"], fill: generate, model: {sd}, steps: 2, seed: 3}}
  - upscale: {{backend: spandrel, model: {esrgan}, factor: 2, tile: 128, overlap: 16}}
outputs:
  - {{channel: cutouts, from: remove_background}}
  - {{channel: webshop, from: upscale, ratios: ["1:1"]}}
  - {{channel: banners, from: crops, ratios: ["3:1"]}}
""")
    shot = np.full((160, 200, 3), 235, np.uint8)
    shot[40:140, 70:130] = (30, 40, 120)  # a dark subject the tiny ONNX model calls "subject"
    path = workspace.root / "batch" / "dark.png"
    path.parent.mkdir()
    Image.fromarray(shot).save(path)

    check = CliRunner().invoke(cli, ["check", "--config", str(workspace.config_path)])
    assert check.exit_code == 0, check.output
    result = CliRunner().invoke(cli, ["process", str(path), "--config", str(workspace.config_path), "--json"],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    (doc,) = json.loads(result.stdout)["results"]
    assert doc["status"] == "done", doc
    outputs = {(o["channel"], o["ratio"]): o for o in doc["outputs"]}
    cutout = np.asarray(Image.open(outputs[("cutouts", None)]["path"]))
    assert cutout.shape == (160, 200, 4)
    opaque = cutout[..., 3] == 255
    assert opaque.any() and np.array_equal(cutout[..., :3][opaque], shot[opaque])
    web = outputs[("webshop", "1:1")]
    assert web["width"] == web["height"]
    wide = outputs[("banners", "3:1")]  # wider than the generated scene: the canvas must grow
    assert abs(wide["width"] / wide["height"] - 3) < 0.01
    manifest = json.loads(workspace.manifest("gpu", "dark").read_text())
    steps = {o["channel"]: o["steps"] for o in manifest["outputs"]}
    assert steps["webshop"]["upscale"]["backend"] == "spandrel" and steps["webshop"]["upscale"]["factor"] == 2
    assert steps["webshop"]["place_in_scene"]["backend"] == "diffusers"
    assert steps["banners"]["crops"]["fill"] == "generate" and steps["banners"]["crops"]["extended"]
    assert "upscale" not in steps["banners"]  # from: crops is the crop as framed


def test_daemon_start_check_loads_each_model_once(workspace, tmp_path, monkeypatch, netguard):  # noqa: F811
    import time

    from pipeline.daemon import Daemon
    from pipeline.stages.rembg_backend import RembgModel
    from pipeline.store import JobStatus

    onnx = tiny_dark_subject_onnx()
    loads = []
    real = RembgModel.load

    def counting(cls, manager, name):
        loads.append(name)
        return real(manager, name)

    monkeypatch.setattr(RembgModel, "load", classmethod(counting))
    workspace.write_config(extra=f"device: cpu\nmodels: {{cache_dir: {tmp_path / 'cache'}}}\n")
    for f in (workspace.root / "rules").iterdir():
        f.unlink()
    workspace.add_rule("gpu.yaml", f"name: gpu\nsteps: [{{remove_background: {{backend: rembg, model: {onnx}}}}}]\n"
                                   "outputs: [{channel: cutouts}]\n")
    shot = np.full((120, 160, 3), 235, np.uint8)
    shot[30:90, 50:110] = (30, 40, 120)
    Image.fromarray(shot).save(workspace.inbox / "dark.png")
    config, rules = workspace.load()
    daemon = Daemon(config, rules)
    daemon.start()
    try:
        deadline = time.monotonic() + 60
        while not (daemon.store.jobs() and daemon.idle()) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert [j.status for j in daemon.store.jobs()] == [JobStatus.DONE]
    finally:
        daemon.stop()
    assert loads == [str(onnx)]  # loaded by the start-up check, reused by the first worker
