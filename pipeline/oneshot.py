"""``assetd process``: the daemon's intake and worker, run once over given files and folders."""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Iterator

from .config import Config
from .imageio import printable
from .intake import Intake
from .models import load_for_start
from .owners import OwnerState, describe, owner_state
from .rules import Rule
from .store import Job, JobStatus, Store
from .watcher import is_ignored
from .worker import Worker

log = logging.getLogger("assetd.process")


def expand(paths: list[Path]) -> Iterator[tuple[Path, Path | None]]:
    """Files to process with the folder they were found under (for rule matching); no links followed."""
    for path in paths:
        path = Path(os.path.abspath(path))
        if path.is_dir() and not path.is_symlink():
            for dirpath, dirnames, filenames in os.walk(path):
                dirnames[:] = sorted(d for d in dirnames if not is_ignored(Path(dirpath, d)))
                for name in sorted(filenames):
                    file = Path(dirpath, name)
                    if not is_ignored(file):
                        yield file, path
        else:
            yield path, None


def run_once(config: Config, rules: list[Rule], paths: list[Path], *, rule_name: str | None = None,
             force: bool = False, progress: bool = False) -> list[dict[str, Any]]:
    """Process every file; returns one result document per input (see ``assetd process --json``).

    Raises ConfigError, before any file is taken, when a model the rules need does not load offline."""
    models = load_for_start(config, rules, lambda warning: log.warning("%s", warning))
    store = Store(config.database)
    intake = Intake(config, rules, store)
    worker = Worker("process", config, store, rules)
    worker.ctx.models = models  # already loaded by the check
    files = list(expand(paths))
    results: list[dict[str, Any]] = []
    bar = None
    if progress:
        from rich.progress import Progress

        bar = Progress(transient=True)
        bar.start()
        task = bar.add_task("processing", total=len(files))
    try:
        for file, root in files:
            results.append(_one(store, intake, worker, file, root, rule_name, force))
            if bar is not None:
                bar.advance(task)
    finally:
        if bar is not None:
            bar.stop()
        worker.close()
        store.close()
    return results


def _one(store: Store, intake: Intake, worker: Worker, file: Path, root: Path | None, rule_name: str | None,
         force: bool) -> dict[str, Any]:
    doc: dict[str, Any] = {"input": str(file), "status": "skipped", "rule": None, "error": None, "review": [],
                           "outputs": []}
    sub = intake.submit(file, root, rule_name=rule_name, reprocess=force)
    doc["rule"] = sub.rule.name if sub.rule else None
    if sub.job is None:
        doc["error"] = sub.reason
        doc["status"] = "skipped" if sub.rule is None or sub.earlier is not None else "failed"
        return doc
    job = sub.job
    if not sub.created:
        if job.status is JobStatus.DONE and not force:
            doc["error"] = f"already done as job {job.id} ({printable(job.input_path)})"
            doc["outputs"] = [_output(o) for o in store.outputs(job.id)]
            doc["review"] = job.review
            return doc
        if job.status is JobStatus.RUNNING and not _take_over(store, job):
            doc["error"] = f"being processed by {describe(job.worker)} (job {job.id})"
            return doc
        if job.status in (JobStatus.DONE, JobStatus.FAILED):
            store.requeue([job.id])
    claimed = store.claim_next(worker.owner, worker.config.lease_seconds, only=[job.id])
    if claimed is None:
        now = store.get(job.id)
        if now is not None and now.status is JobStatus.RUNNING:
            doc["error"] = f"being processed by {describe(now.worker)} (job {job.id})"
        else:
            doc.update(status="failed", error=f"job {job.id} is waiting to be retried later by the daemon")
        return doc
    result = worker.process(claimed)
    doc["outputs"] = [_output(o) for o in result.outputs]
    if result.status == JobStatus.DONE.value:
        doc["status"] = "done"
        doc["review"] = result.review
    else:
        doc["status"] = "failed"
        doc["error"] = result.error + (" (will be retried by the daemon)" if result.status == "queued" else "")
    return doc


def _take_over(store: Store, job: Job) -> bool:
    """Release ``job`` (running) if its owner is gone, so this run can take it now. Returns whether it was."""
    released = store.release_orphans(lambda owner: owner_state(owner, store.path) is OwnerState.GONE, only=[job.id])
    if released:
        log.warning("job %d was left running by %s, which is gone; taking it over", job.id, describe(job.worker))
    return bool(released)


def _output(o: Any) -> dict[str, Any]:
    return {"channel": o.channel, "path": o.path, "step": o.step, "ratio": o.ratio, "width": o.width,
            "height": o.height}
