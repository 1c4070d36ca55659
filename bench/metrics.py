"""One ``/metrics`` scrape with 10,000 jobs in the store: the time ``pipeline.metrics.exposition`` takes.

    .venv/bin/python bench/metrics.py [--jobs 10000] [--scrapes 30] [--markdown PATH]

The store is filled as a night of the products rule leaves it: per job five steps (remove_background,
place_in_scene, crops, upscale, outputs/encode) and five outputs; most jobs done, some failed, some still
queued or running; a few model loads and an open problem. Each scrape builds its registry anew and reads the
store (one GROUP BY per family) and the disks, as the review server does on every request.
"""
from __future__ import annotations

import argparse
import random
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
from pipeline.metrics import exposition  # noqa: E402
from pipeline.store import Store  # noqa: E402

STEPS = [("remove_background", "studio", 1.2), ("place_in_scene", "composite", 0.4), ("crops", "geometry", 0.6),
         ("upscale", "lanczos", 0.9), ("outputs", "encode", 0.7)]
CHANNELS = ["webshop", "instagram", "banners", "print", "cutouts"]


def fill(store: Store, n: int, *, inboxes: tuple[str, ...] = ("/srv/inbox",), on_approval: str | None = None,
         ) -> None:
    """``n`` jobs with their steps and outputs, written in bulk (the bench measures reading, not writing).

    ``inboxes``: the jobs' files are spread over these folders in turn. ``on_approval``: a channel whose outputs
    wait for approval (staged; one job in four already approved), as ``publish: on_approval`` leaves them."""
    rng = random.Random(1)
    now = time.time()
    jobs, steps, outputs = [], [], []
    for i in range(1, n + 1):
        status = "done" if i <= n * 0.9 else "failed" if i <= n * 0.95 else "queued" if i < n - 3 else "running"
        created = now - 8 * 3600 + i * 2.5
        wait = rng.uniform(0, 600)
        jobs.append({"id": i, "input_hash": f"{i:064x}", "rule": ("products", "cutouts", "banners")[i % 3],
                     "rule_version": "v1", "input_path": f"{inboxes[i % len(inboxes)]}/shoot/IMG_{i:05d}.jpg",
                     "rel_path": f"shoot/IMG_{i:05d}.jpg", "status": status, "attempts": 1, "max_attempts": 3,
                     "created_at": created, "started_at": created + wait, "queue_wait": wait,
                     "finished_at": created + wait + 4 if status in ("done", "failed") else None,
                     "chain_started_at": created + wait if status == "running" else None,
                     "review": '["remove_background: matte uncertain"]' if i % 17 == 0 else None})
        if status == "queued":
            jobs[-1].update(started_at=None, queue_wait=None)
            continue
        for step, backend, typical in STEPS:
            steps.append({"job_id": i, "attempt": 1, "step": step, "backend": backend,
                          "seconds": rng.lognormvariate(0, 0.5) * typical, "finished_at": created + wait + 4,
                          "device": "cpu"})
        if status == "done":
            outputs += [{"job_id": i, "channel": c, "path": f"/srv/out/{c}/IMG_{i:05d}.jpg", "step": "upscale",
                         "ratio": "4:5", "width": 1080, "height": 1350, "bytes": 400_000, "sha256": "0" * 64,
                         "scale": 1.0, "created_at": created + wait + 4} for c in CHANNELS]
            if on_approval is not None:
                for o in outputs[-len(CHANNELS):]:
                    if o["channel"] == on_approval:
                        o["approval"] = "approved" if i % 4 == 0 else "pending"
                        o["staged_path"] = None if i % 4 == 0 else f"/srv/staging/{o['channel']}/IMG_{i:05d}.jpg"
    with store.db.conn:
        store.db["jobs"].insert_all(jobs, batch_size=1000)
        store.db["steps"].insert_all(steps, batch_size=1000)
        store.db["outputs"].insert_all(outputs, batch_size=1000)
    for backend, seconds in [("prior", 0.3), ("rembg", 2.1), ("diffusers", 41.0)]:
        store.record_model_load(backend, "model", "cpu", seconds, now)
    store.problem_started("disk:/srv/out", "disk:/srv/out: 400 MB free", "jobs of rule products", now)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--scrapes", type=int, default=30)
    parser.add_argument("--markdown", type=Path)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="assetd-bench-") as tmp:
        root = Path(tmp)
        config = config_from_dict({"channels": {c: {"path": f"out/{c}"} for c in CHANNELS}}, root / "config.yaml")
        writer = Store(config.database)
        fill(writer, args.jobs)
        writer.close()
        store = Store(config.database)  # another process's view: a fresh connection, nothing cached
        started = time.perf_counter()
        body, _ = exposition(config, store)
        first = time.perf_counter() - started
        times = []
        for _ in range(args.scrapes):
            started = time.perf_counter()
            exposition(config, store)
            times.append(time.perf_counter() - started)
        store.close()
    times.sort()
    p95 = times[min(len(times) - 1, int(0.95 * len(times)))]
    emit("\n".join([
        f"One `/metrics` scrape (`pipeline.metrics.exposition`) with {args.jobs:,} jobs in the store "
        f"({len(STEPS)} steps and up to {len(CHANNELS)} outputs each), {args.scrapes} scrapes:",
        "",
        "| | ms |",
        "|---|---:|",
        f"| first scrape (new connection) | {first * 1000:.1f} |",
        f"| median | {statistics.median(times) * 1000:.1f} |",
        f"| p95 | {p95 * 1000:.1f} |",
        "",
        f"Body: {len(body):,} bytes, {len(body.splitlines()):,} lines.",
    ]), args.markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
