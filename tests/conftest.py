"""Shared fixtures: a temporary studio workspace (config, rules, scene, inbox) and shot factories."""
from __future__ import annotations

import functools
import io
import os
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

pytest_plugins = ["browser", "raycluster"]  # the review page tests' `browser` (tests/browser.py); the Ray tests' `ray_cluster`


def _threads_per_worker() -> int:
    """Under pytest-xdist, each worker's share of the cores (at least one thread); 0 when not under xdist."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0"))
    return max(1, (os.cpu_count() or 1) // workers) if workers >= 2 else 0


# Under pytest-xdist, each worker's native thread pools get its share of the cores. OpenBLAS, OpenCV,
# onnxruntime and torch (OpenMP) each start one thread per core by default; with one worker per core that is
# cores² threads fighting for the cores, and the spinning ones (onnxruntime's pool, OpenMP) burn the time the
# other worker needed. Only this process is sized: the processes the tests start (`assetd run`, `assetd
# process`) keep their defaults, so their timing is what a user's is.
THREADS_PER_WORKER = _threads_per_worker()

_saved = {var: os.environ.get(var) for var in ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}
if THREADS_PER_WORKER:
    os.environ.update({var: str(THREADS_PER_WORKER) for var in _saved})  # read once, when numpy loads
import numpy as np  # noqa: E402

for _var, _value in _saved.items():  # not passed on to subprocesses
    if _value is None:
        os.environ.pop(_var, None)
    else:
        os.environ[_var] = _value

import cv2  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402


def _onnxruntime_sessions_share_the_cores(threads: int) -> None:
    """onnxruntime reads no variable for its pool: new SessionOptions start at ``threads`` intra-op threads
    (assetd's subject prior and rembg's sessions both build theirs with ``SessionOptions()``)."""
    try:
        import onnxruntime
    except ImportError:  # an optional extra: nothing to size
        return
    base = onnxruntime.SessionOptions

    class WorkerSessionOptions(base):  # type: ignore[misc, valid-type]
        def __init__(self) -> None:
            super().__init__()
            self.intra_op_num_threads = threads

    onnxruntime.SessionOptions = WorkerSessionOptions


if THREADS_PER_WORKER:
    cv2.setNumThreads(THREADS_PER_WORKER)
    _onnxruntime_sessions_share_the_cores(THREADS_PER_WORKER)


@pytest.fixture(autouse=True)
def torch_shares_the_cores() -> None:
    """torch, once a test has imported it, runs on this worker's share of the cores (see THREADS_PER_WORKER);
    conftest does not import torch itself (tests check when it gets imported)."""
    torch = sys.modules.get("torch")
    if THREADS_PER_WORKER and torch is not None and torch.get_num_threads() != THREADS_PER_WORKER:
        torch.set_num_threads(THREADS_PER_WORKER)

from pipeline.config import Config, load_config
from pipeline.demo import example_rule
from pipeline.rules import Rule, load_rules
from pipeline.synth import scene_image, studio_shot

CONFIG = """\
database: state/assetd.sqlite3
workers: {workers}
rules_dir: rules
max_attempts: 2
retry_delay_seconds: 0.2
rescan_seconds: 30
inboxes:
  - path: inbox
    settle_seconds: {settle}
channels:
  cutouts:   {{path: out/cutouts,   format: png}}
  webshop:   {{path: out/webshop,   format: jpeg, quality: 90, long_edge: 600, background: "#ffffff"}}
  instagram: {{path: out/instagram, format: jpeg, quality: 88, long_edge: 500}}
  banners:   {{path: out/banners,   format: webp, quality: 85, long_edge: 640}}
notify:
  urls: {urls}
  digest_after_idle_seconds: {digest}
  timeout_seconds: 2
  retry_seconds: 0.5
"""

# The shipped products rule, smaller for speed, without the print channel this workspace does not have.
PRODUCTS = example_rule("10-products.yaml", options={"upscale": {"long_edge": 800}}, without_channels=("print",))

CUTOUTS = """\
name: cutouts
steps:
  - remove_background: {}
outputs:
  - {channel: cutouts, from: remove_background}
"""


@dataclass
class Workspace:
    root: Path

    @property
    def config_path(self) -> Path:
        return self.root / "config.yaml"

    @property
    def inbox(self) -> Path:
        return self.root / "inbox"

    def out(self, channel: str) -> Path:
        return self.root / "out" / channel

    def manifest(self, rule: str, stem: str) -> Path:
        """Where a job's manifest lands by default: ``manifests/<rule>/<stem>.assetd.json`` beside the database."""
        return self.root / "state" / "manifests" / rule / f"{stem}.assetd.json"

    def write_config(self, *, workers: int = 1, settle: float = 0.3, urls: list[str] | None = None,
                     digest: float = 60.0, extra: str = "") -> Path:
        text = CONFIG.format(workers=workers, settle=settle, urls=urls or [], digest=digest) + extra
        self.config_path.write_text(text)
        return self.config_path

    def add_rule(self, filename: str, text: str) -> None:
        (self.root / "rules" / filename).write_text(text)

    def load(self) -> tuple[Config, list[Rule]]:
        config = load_config(self.config_path)
        return config, load_rules(config)

    def shot(self, path: Path | str, backdrop: str = "white", size: tuple[int, int] = (480, 360), seed: int = 0,
             subject: str | None = None) -> Path:
        """Write a synthetic studio shot (JPEG) at ``path`` (relative to the workspace root)."""
        path = self.root / path
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(shot_pixels(backdrop, size, seed, subject)).save(path, quality=92)
        return path


@functools.lru_cache(maxsize=None)
def shot_pixels(backdrop: str, size: tuple[int, int], seed: int, subject: str | None) -> np.ndarray:
    """``studio_shot(...).rgb``, made once per test process (the large ones take seconds; several tests write
    the same shot). Read-only, so no test can change another's input."""
    rgb = studio_shot(backdrop, size=size, seed=seed, subject=subject).rgb
    rgb.flags.writeable = False
    return rgb


@functools.lru_cache(maxsize=None)
def scene_jpeg() -> bytes:
    """The workspace's scene (``scenes/marble.jpg``), encoded once per test process."""
    buf = io.BytesIO()
    Image.fromarray(scene_image((900, 600), seed=1)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


@pytest.fixture
def workspace(tmp_path: Path) -> Workspace:
    ws = Workspace(tmp_path / "studio")
    (ws.root / "rules").mkdir(parents=True)
    (ws.root / "scenes").mkdir()
    ws.inbox.mkdir()
    (ws.root / "scenes" / "marble.jpg").write_bytes(scene_jpeg())
    ws.write_config()
    ws.add_rule("10-products.yaml", PRODUCTS)
    ws.add_rule("20-cutouts.yaml", CUTOUTS)
    return ws


@pytest.fixture
def no_leaked_threads() -> Callable[[], None]:
    """Fails the test if it leaves threads running (as watchdog's own suite does)."""
    before = set(threading.enumerate())
    yield
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        leaked = [t for t in threading.enumerate() if t not in before and t.is_alive()]
        if not leaked:
            return
        time.sleep(0.05)
    pytest.fail(f"threads left running: {[t.name for t in leaked]}")


def ratio_of(path: Path) -> float:
    with Image.open(path) as im:
        return im.width / im.height


def decode(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        im.load()
        return np.asarray(im)


@pytest.fixture(autouse=True)
def no_terminal_size(monkeypatch):
    """Tests see output as a file does: pytest-xdist's workers set COLUMNS=80, which narrows `assetd jobs`."""
    monkeypatch.delenv("COLUMNS", raising=False)
    monkeypatch.delenv("LINES", raising=False)
