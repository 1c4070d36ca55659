"""pipeline.models: device/dtype choice, the per-worker cache, offline checks and the pull command."""
from __future__ import annotations

import logging
import sys
from pathlib import Path

import pytest

from pipeline import models
from pipeline.errors import ConfigError, TransientError
from pipeline.rules import MatchSpec, Rule, StepSpec
from pipeline.stages.crops import CropsOptions
from pipeline.stages.diffusion import DiffusersModel, DiffusersSceneOptions
from pipeline.stages.rembg_backend import RembgOptions
from pipeline.stages.spandrel_upscale import SpandrelModel, SpandrelOptions
from tinymodels import (make_config, needs, netguard, tiny_dark_subject_onnx, tiny_esrgan_x4,  # noqa: F401
                        tiny_sd_inpaint)

pytestmark = pytest.mark.usefixtures("netguard")


def rule(*steps: StepSpec, name: str = "shop") -> Rule:
    return Rule(name=name, path=Path(f"{name}.yaml"), match=MatchSpec(), steps=list(steps), outputs=[])


@needs("torch")
def test_resolve_device_falls_back_to_cpu(caplog, monkeypatch):
    assert models.resolve_device("cpu") == "cpu"
    with caplog.at_level(logging.WARNING, logger="assetd.models"):
        assert models.resolve_device("auto") == "cpu"  # no GPU on the test machine
    assert "no CUDA GPU" in caplog.text
    monkeypatch.setitem(sys.modules, "torch", None)  # the models extra not installed
    assert models.resolve_device("cuda:1") == "cpu"


@needs("torch")
def test_dtype_is_float32_on_cpu():
    import torch

    assert models.resolve_dtype("auto", "cpu") is torch.float32
    assert models.resolve_dtype("bfloat16", "cpu") is torch.float32


def test_manager_loads_once_and_frees_idle_models(tmp_path):
    now = [0.0]
    manager = models.ModelManager(make_config(tmp_path), clock=lambda: now[0])
    loads = []

    def loader():
        loads.append(1)
        return object()

    first = manager.get("a", loader)
    assert manager.get("a", loader) is first and len(loads) == 1
    manager.get("b", loader)
    now[0] = 50.0
    manager.get("b", loader)
    now[0] = 70.0  # unload_after_seconds is 60: "a" idle for 70 s, "b" for 20 s
    assert manager.release_idle() == ["a"]
    assert manager.loaded() == ["b"]
    manager.close()
    assert manager.loaded() == []


@needs("torch")
def test_gpu_errors_become_transient():
    with pytest.raises(TransientError, match="out of memory"):
        with models.gpu_errors("upscale"):
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
    with pytest.raises(TransientError, match="GPU error"):
        with models.gpu_errors("upscale"):
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
    with pytest.raises(ValueError):
        with models.gpu_errors("upscale"):
            raise ValueError("a bug stays a bug")


def test_require_names_the_readme_install_command(monkeypatch):
    """Not 'pip install assetd[models]': assetd is installed from its source folder, and a PyPI package of
    that name is not ours."""
    with pytest.raises(ConfigError) as missing:
        models.require("no_such_module_xyz", "the test backend")
    assert "pip install -c constraints.txt -e '.[models]'" in str(missing.value)
    assert "assetd[models]" not in str(missing.value) and "source folder" in str(missing.value)
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # part of the base install, not of the extra
    with pytest.raises(ConfigError) as base:
        models.require("onnxruntime", "the subject prior")
    assert "pip install -e ." in str(base.value) and "[models]" not in str(base.value)


def test_generate_fill_without_the_extra_names_the_install_command(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "diffusers", None)  # the models extra not installed
    crops = StepSpec("crops", "geometry", CropsOptions(fill="generate"))
    (problem,) = models.check_models(make_config(tmp_path), [rule(crops)]).problems
    assert problem.startswith("rule shop, step crops: ")
    assert "pip install -c constraints.txt -e '.[models]'" in problem


@needs("torch", "spandrel", "torchvision")
def test_torchvision_imports_next_to_this_torch():
    models.require("spandrel", "the spandrel backend")
    import torchvision  # noqa: F401  (PyPI torchvision next to the CPU torch wheel)


def test_model_refs_resolve_defaults(tmp_path):
    config = make_config(tmp_path, spandrel="weights/x4.safetensors")
    refs = models.model_refs(config, [
        rule(StepSpec("remove_background", "rembg", RembgOptions()),
             StepSpec("crops", "geometry", CropsOptions(fill="generate")),
             StepSpec("upscale", "spandrel", SpandrelOptions())),
        rule(StepSpec("place_in_scene", "diffusers", DiffusersSceneOptions(prompt="x")), name="other"),
    ])
    assert [(r.kind, r.name) for r in refs] == [
        ("rembg", "birefnet-general"),
        ("diffusers", "diffusers/stable-diffusion-xl-1.0-inpainting-0.1"),
        ("spandrel", str(tmp_path / "weights/x4.safetensors")),
    ]
    assert refs[1].used_by == "rule shop, step crops"


@needs("rembg", "huggingface_hub")
def test_check_reports_missing_models_with_the_pull_command(tmp_path, monkeypatch):
    monkeypatch.setenv("REMBG_HOME", str(tmp_path / "empty-rembg"))
    monkeypatch.delenv("U2NET_HOME", raising=False)
    config = make_config(tmp_path, cache_dir=None)
    config.models.cache_dir = tmp_path / "empty-cache"
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    problems = models.check_models(config, [rule(
        StepSpec("remove_background", "rembg", RembgOptions(model="u2net")),
        StepSpec("place_in_scene", "diffusers", DiffusersSceneOptions(prompt="x", model="acme/not-pulled")),
        StepSpec("upscale", "spandrel", SpandrelOptions(model=tmp_path / "gone.pth")),
    )]).problems
    monkeypatch.delenv("U2NET_HOME", raising=False)  # the manager pointed rembg at cache_dir
    assert len(problems) == 3
    pull = f"assetd models pull --config {config.source}"
    assert "'u2net'" in problems[0] and pull in problems[0]
    assert "'acme/not-pulled'" in problems[1] and pull in problems[1]
    assert "gone.pth" in problems[2] and "not found" in problems[2]
    assert all(p.startswith("rule shop, step ") for p in problems)


@needs("rembg")
def test_check_and_pull_pass_for_local_models(tmp_path, monkeypatch):
    monkeypatch.setenv("REMBG_HOME", str(tmp_path / "rembg"))
    monkeypatch.delenv("U2NET_HOME", raising=False)
    config = make_config(tmp_path, diffusers=str(tiny_sd_inpaint()), spandrel=str(tiny_esrgan_x4()))
    rules = [rule(StepSpec("remove_background", "rembg", RembgOptions(model=str(tiny_dark_subject_onnx()))),
                  StepSpec("place_in_scene", "diffusers", DiffusersSceneOptions(prompt="x")),
                  StepSpec("upscale", "spandrel", SpandrelOptions()))]
    assert models.check_models(config, rules).problems == []
    lines: list[str] = []
    assert models.pull_models(config, rules, lines.append) == []
    assert any("nothing to fetch" in line for line in lines)


@needs("torch", "spandrel", "diffusers")
def test_broken_model_file_is_a_config_error(tmp_path):
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"not a model")
    manager = models.ModelManager(make_config(tmp_path))
    with pytest.raises(ConfigError, match="cannot be loaded"):
        SpandrelModel.load(manager, str(broken))
    folder = tmp_path / "pipe"
    folder.mkdir()
    (folder / "model_index.json").write_text('{"_class_name": "StableDiffusionInpaintPipeline", "unet": '
                                             '["diffusers", "UNet2DConditionModel"]}')
    with pytest.raises(ConfigError, match="pipe"):
        DiffusersModel.load(manager, str(folder))
