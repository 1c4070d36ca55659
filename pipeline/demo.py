"""``assetd demo`` / ``make demo``: a complete studio workspace, run for real.

Writes synthetic studio shots (objects on seamless backdrops), a scene, a config and rules;
starts ``assetd run`` as a separate process; drops the shots into the inbox while it runs (slowly,
in chunks, and by write-then-rename, as a copy over a network share would); waits until the queue
drains; stops the daemon with SIGTERM; prints where every output went.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import yaml
from PIL import Image

from .store import PENDING, JobStatus, Store
from .synth import BACKDROPS, SUBJECTS, scene_image, studio_shot

CONFIG = """\
# assetd demo workspace (see config.example.yaml for every key)
database: state/assetd.sqlite3
device: auto
workers: 2
rules_dir: rules
inboxes:
  - path: inbox
    recursive: true
    polling: false
    settle_seconds: 1.0
channels:
  cutouts:   {path: out/cutouts,   format: png}
  webshop:   {path: out/webshop,   format: jpeg, quality: 90, size: 2000x2000, background: "#ffffff"}
  instagram: {path: out/instagram, format: jpeg, quality: 88, size: {"4:5": 1080x1350, "9:16": 1080x1920}}
  banners:   {path: out/banners,   format: webp, quality: 85, size: 1920x1080}
  print:     {path: out/print,     format: tiff, bits: 16, metadata: keep, min_long_edge: 2400}
notify:
  urls: []
  digest_after_idle_seconds: 5
"""

EXAMPLE_RULES = Path(__file__).resolve().parents[1] / "rules"  # the shipped example rules: the one source


def example_rule(filename: str, *, options: dict[str, dict[str, Any]] | None = None,
                 without_channels: tuple[str, ...] = ()) -> str:
    """A shipped example rule (``rules/FILENAME``) as YAML text, with some step options changed (``options``:
    step name → options to set) and the outputs to some channels left out. The demo, the tests and the
    benchmarks derive their rules from it, so the example users copy is the one that is exercised."""
    data = yaml.safe_load((EXAMPLE_RULES / filename).read_text(encoding="utf-8"))
    for item in data["steps"]:
        (step, opts), = item.items() if isinstance(item, dict) else ((item, {}),)
        if options and step in options:
            item[step] = dict(opts or {}, **options[step])
    data["outputs"] = [o for o in data["outputs"] if o["channel"] not in without_channels]
    return yaml.safe_dump(data, sort_keys=False)


CUTOUTS_RULE = """\
# Anything else: just the cut-out.
name: cutouts
match:
  extensions: [jpg, jpeg, png, tif, tiff, webp]
steps:
  - remove_background: {keep_shadow: true}
outputs:
  - {channel: cutouts, from: remove_background}
"""


def write_workspace(root: Path, shots: int = 6, size: tuple[int, int] = (1600, 1200)) -> list[Path]:
    """Create the workspace; returns the shots waiting in ``to-drop/`` to be dropped into the inbox (a folder not
    called staging/: that is where a publish: on_approval channel's outputs wait)."""
    for sub in ("rules", "scenes", "inbox/products", "to-drop", "state"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    (root / "config.yaml").write_text(CONFIG)
    (root / "rules" / "10-products.yaml").write_text(example_rule("10-products.yaml"))
    (root / "rules" / "20-cutouts.yaml").write_text(CUTOUTS_RULE)
    Image.fromarray(scene_image((2400, 1600), seed=1)).save(root / "scenes" / "marble.jpg", quality=92)
    waiting: list[Path] = []
    for i in range(shots):
        backdrop = BACKDROPS[i % len(BACKDROPS)]
        subject = SUBJECTS[i % len(SUBJECTS)]
        shot = studio_shot(backdrop, size=size, seed=i, subject=subject)
        path = root / "to-drop" / f"shot{i + 1:02d}_{subject}_{backdrop}.jpg"
        Image.fromarray(shot.rgb).save(path, quality=93)
        waiting.append(path)
    # One damaged file, to show how a failure is reported while the rest finishes. It was cut short long ago (a
    # card's file, copied with its date kept): a file cut short a moment ago may still be arriving, and the daemon
    # gives it a minute before it calls it damaged.
    broken = root / "to-drop" / "shot99_damaged.jpg"
    broken.write_bytes(waiting[0].read_bytes()[: waiting[0].stat().st_size // 3])
    an_hour_ago = time.time() - 3600
    os.utime(broken, (an_hour_ago, an_hour_ago))
    waiting.append(broken)
    return waiting


def drop(files: list[Path], inbox: Path, chunk: int = 64 * 1024, pause: float = 0.02) -> None:
    """Copy files into the inbox the way a slow share does: in chunks; every other one via a .part name; the
    modification time kept, as `cp -p` and rsync do."""
    for i, src in enumerate(files):
        data = src.read_bytes()
        final = inbox / src.name
        target = final.with_name(final.name + ".part") if i % 2 else final
        with open(target, "wb") as fh:
            for start in range(0, len(data), chunk):
                fh.write(data[start:start + chunk])
                fh.flush()
                time.sleep(pause)
        st = src.stat()
        os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))
        if target != final:
            os.replace(target, final)


def wait_until_drained(database: Path, expected: int, timeout: float, proc: subprocess.Popen | None = None) -> bool:
    """True once ``expected`` jobs exist and none is queued or running."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            return False
        if database.exists():
            store = Store(database)
            try:
                counts = store.counts()
            finally:
                store.close()
            if sum(counts.values()) >= expected and not any(counts[s.value] for s in PENDING):
                return True
        time.sleep(0.5)
    return False


def run_demo(root: Path, shots: int = 6, setup_only: bool = False, echo: Callable[[str], None] = print,
             timeout: float = 900.0) -> int:
    root = root.absolute()
    database = root / "state" / "assetd.sqlite3"
    if not setup_only and database.exists() and _job_count(database):
        echo(f"{root} was already run as a demo: its shots are done, so nothing would be processed again. "
             f"Its results are below; remove the folder (rm -rf {root}) for a fresh run.")
        return report(database, echo, None)
    to_drop = write_workspace(root, shots)
    echo(f"workspace: {root}  ({len(to_drop)} shots waiting in {root / 'to-drop'}, config {root / 'config.yaml'})")
    if setup_only:
        echo(f"start it with: assetd run --config {root / 'config.yaml'}; then copy the shots from {root / 'to-drop'} "
             f"into {root / 'inbox' / 'products'}")
        return 0
    log_path = root / "daemon.log"
    with open(log_path, "ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "pipeline", "run", "--config", str(root / "config.yaml")],
                                stdout=log, stderr=subprocess.STDOUT)
    try:
        time.sleep(1.5)
        if proc.poll() is not None:
            echo(f"the daemon exited at once; see {log_path}")
            return 1
        echo(f"daemon running (pid {proc.pid}, log {log_path}); dropping shots into {root / 'inbox/products'}")
        drop(to_drop, root / "inbox" / "products")
        started = time.monotonic()
        drained = wait_until_drained(root / "state" / "assetd.sqlite3", len(to_drop), timeout, proc)
        elapsed = time.monotonic() - started
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
    if not drained:
        echo(f"the queue did not drain in time; see {log_path}")
        return 1
    return report(root / "state" / "assetd.sqlite3", echo, elapsed)


def _job_count(database: Path) -> int:
    store = Store(database)
    try:
        return sum(store.counts().values())
    finally:
        store.close()


def report(database: Path, echo: Callable[[str], None], elapsed: float | None) -> int:
    """The jobs and their outputs; ``elapsed``: how long this run took (None: results of an earlier run)."""
    store = Store(database)
    try:
        jobs = store.jobs()
        counts = ", ".join(f"{n} {s}" for s, n in store.counts().items() if n)
        echo(f"\nqueue drained in {elapsed:.1f}s after the last drop finished: {counts}" if elapsed is not None
             else f"\nearlier run: {counts}")
        for job in jobs:
            if job.error and job.status is JobStatus.FAILED:
                echo(f"✗ {job.rel_path}: {job.error.removeprefix(job.input_path + ': ')}")  # named once
                continue
            echo(f"✓ {job.rel_path}  ({job.rule}, {job.seconds or 0:.1f}s)")
            for o in store.outputs(job.id):
                echo(f"    {o.channel:>9s}  {o.ratio or '-':>5s}  {o.width:>5d}×{o.height:<5d} {o.path}")
        echo(f"\nreview them in a browser: assetd serve --config {database.parent.parent / 'config.yaml'}  "
             "(then open http://127.0.0.1:8765/)")
    finally:
        store.close()
    return 0
