"""Daemon overhead with 10,000 files queued: settled file → job start, and bookkeeping per job.

    .venv/bin/python bench/overhead.py [--files 10000] [--markdown PATH]

Measured on the real store (SQLite file, WAL) and intake, with small real files on disk:
- intake: a settled file → content hash → rule match → job row, per file, while the queue grows to N;
- settled → started: for a new file arriving with N jobs already queued, the time from the watcher's
  hand-over to a worker holding the claimed job (intake + claim), the chain itself excluded;
- bookkeeping per job: everything the worker writes around a job of the products rule (claim, heartbeats,
  four step timings, five reserved outputs, finish with five output rows), the pixel work excluded;
- the watcher's rescan of an inbox holding N files (the periodic safety net).
Target: ≤ 10 ms per job for the bookkeeping.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import emit  # noqa: E402

from pipeline.config import config_from_dict  # noqa: E402
from pipeline.intake import Intake  # noqa: E402
from pipeline.rules import load_rules  # noqa: E402
from pipeline.store import OutputRecord, Store  # noqa: E402
from pipeline.watcher import InboxWatcher  # noqa: E402

RULE = """\
name: cutouts
steps: [remove_background]
outputs: [{channel: cutouts}]
"""


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(p * len(values)))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--markdown", type=Path)
    args = parser.parse_args(argv)
    n = args.files
    with tempfile.TemporaryDirectory(prefix="assetd-bench-") as tmp:
        root = Path(tmp)
        (root / "rules").mkdir()
        (root / "rules" / "cutouts.yaml").write_text(RULE)
        inbox = root / "inbox"
        inbox.mkdir()
        config = config_from_dict({"inboxes": [{"path": "inbox"}], "channels": {"cutouts": {"path": "out"}}},
                                  root / "config.yaml")
        rules = load_rules(config)
        store = Store(config.database)
        intake = Intake(config, rules, store)
        files = []
        for i in range(n + 200):
            path = inbox / f"shot{i:05d}.jpg"
            path.write_bytes(i.to_bytes(4, "little") * 4096)  # 16 KB each, distinct content
            files.append(path)

        intake_times = []
        for path in files[:n]:
            t0 = time.perf_counter()
            intake.submit(path, inbox)
            intake_times.append(time.perf_counter() - t0)

        start_times = []
        for path in files[n:n + 200]:  # new arrivals while N jobs are queued
            t0 = time.perf_counter()
            job = intake.submit(path, inbox).job
            claimed = store.claim_next("bench", 900, only=[job.id])
            start_times.append(time.perf_counter() - t0)
            assert claimed is not None and claimed.id == job.id
            store.release(job.id)

        book_times = []
        for _ in range(min(500, n)):
            t0 = time.perf_counter()
            job = store.claim_next("bench", 900)
            store.heartbeat(job.id, 900)
            for step in ("remove_background", "place_in_scene", "crops", "upscale"):
                store.record_step(job.id, job.attempts, step, "x", 0.1)
                store.heartbeat(job.id, 900)
            outs = []
            for k in range(5):
                p = f"/out/{job.id}_{k}.jpg"
                store.output_owner(p)
                store.reserve_output(job.id, p, "c", "crops")
                outs.append(OutputRecord(channel="c", path=p, step="crops", ratio="1:1", width=10, height=10,
                                         bytes=1, sha256="x"))
            store.record_step(job.id, job.attempts, "outputs", "encode", 0.1)
            store.finish(job.id, outs, 1.0)
            book_times.append(time.perf_counter() - t0)
        queued = store.counts()["queued"]
        store.close()

        watcher = InboxWatcher(config.inboxes, lambda p, i: None)
        t0 = time.perf_counter()
        watcher.rescan()
        rescan = time.perf_counter() - t0
        watcher.stop()

    ms = 1000.0
    med_book = statistics.median(book_times) * ms
    lines = [
        f"{n:,} files queued (16 KB each, real files, SQLite in WAL mode on the local disk); {queued:,} still queued "
        "during the bookkeeping runs.",
        "",
        "| measure | median | p95 | target |",
        "|---|---|---|---|",
        f"| intake per file (hash, match, enqueue) while the queue grows to {n:,} | "
        f"{statistics.median(intake_times) * ms:.2f} ms | {pct(intake_times, .95) * ms:.2f} ms | |",
        f"| settled file → job claimed by a worker, {n:,} queued | {statistics.median(start_times) * ms:.2f} ms | "
        f"{pct(start_times, .95) * ms:.2f} ms | |",
        f"| bookkeeping per job (claim, heartbeats, 5 step rows, 5 outputs reserved + recorded, finish) | "
        f"**{med_book:.2f} ms** | {pct(book_times, .95) * ms:.2f} ms | ≤ 10 ms ({'met' if med_book <= 10 else 'missed'}) |",
        f"| watcher rescan of an inbox of {n + 200:,} files | {rescan * ms:.0f} ms (once) | | |",
        "",
        "The settle wait itself (`settle_seconds`, default 2 s) and the watcher's tick (0.25 s) come on top of "
        "the settled → claimed figure by design; an idle worker polls the queue with a back-off capped at 1 s.",
    ]
    emit("\n".join(lines), args.markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
