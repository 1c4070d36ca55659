"""``assetd process``: the daemon's intake and worker, run once over given files and folders.

Stopping it (``Stopper``): the first SIGINT/SIGTERM lets the current file finish, then the rest is reported
as not processed; a second one stops at once and hands the current job back to the queue. A job left
running by a run that is gone (killed) is taken over at once (see ``owners``).
"""
from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
from enum import StrEnum
from pathlib import Path
from typing import Any, Callable, Iterator

from .config import Config
from .intake import Intake
from .models import load_for_start
from .outputs import remove_temp_files
from .owners import OwnerState, describe, owner_state
from .rules import Rule
from .store import FINISHED, Job, JobStatus, Store
from .stages.masks import mask_kind, shots_of
from .watcher import is_ignored
from .worker import Worker
from .text import printable

log = logging.getLogger("assetd.process")


class ResultStatus(StrEnum):
    """What became of one input (``status`` in a result document). A StrEnum: JSON and text show the value."""
    DONE = "done"  # processed by this run
    FAILED = "failed"  # processing failed, or no job could be made or taken for it
    SKIPPED = "skipped"  # left alone: no rule takes it, it is done already, or another run has it
    STOPPED = "stopped"  # not processed because the run was stopped


def output_folders(config: Config) -> dict[Path, str]:
    """The folders assetd writes (links resolved), each with what it is: every channel's folder, the staging
    folder of each channel publishing on approval, and the manifests folder. Their files are outputs, never
    inputs."""
    folders = {Path(os.path.realpath(c.path)): f"channel {name!r}" for name, c in config.channels.items()}
    for name, c in config.channels.items():
        if c.publish == "on_approval":
            folders.setdefault(Path(os.path.realpath(config.staging_folder(c))), f"channel {name!r}'s staging")
    folders.setdefault(Path(os.path.realpath(config.manifest_folder)), "the manifests")
    return folders


def output_folder_holding(path: Path, written: dict[Path, str]) -> tuple[str, Path] | None:
    """What assetd writes in the folder that is ``path`` or holds it, and that folder; None when none does."""
    real = Path(os.path.realpath(path))
    for folder, name in written.items():
        if real.is_relative_to(folder):
            return name, folder
    return None


def expand(paths: list[Path], written: dict[Path, str] | None = None,
           aside: Callable[[Path], bool] = lambda folder: False) -> Iterator[tuple[Path, Path | None]]:
    """Files to process with the folder they were found under (for rule matching); no links followed.

    The folders assetd writes (``written``, see ``output_folders``) are left out, each with a note; so are
    the folders ``aside`` names (an inbox's done and error folders) found while walking a folder. A mask named on
    the command line (``shot.remove.png``) stands for its shot(s): the masks are part of the shot's job."""
    written = written or {}
    for path in paths:
        path = Path(os.path.abspath(path))
        held = output_folder_holding(path, written)
        if held is not None:
            log.warning("%s: skipped: it is inside the folder of %s (%s); outputs are not inputs",
                        path, held[0], held[1])
        elif path.is_dir() and not path.is_symlink():
            for dirpath, dirnames, filenames in os.walk(path):
                dirnames[:] = sorted(d for d in dirnames if not is_ignored(Path(dirpath, d))
                                     and not aside(Path(dirpath, d))
                                     and not _is_output_folder(Path(dirpath, d), written))
                for name in sorted(filenames):
                    file = Path(dirpath, name)
                    if not is_ignored(file):
                        yield file, path
        elif mask_kind(path) is not None:
            shots = shots_of(path)
            log.warning("%s: a mask, never an input; %s", path,
                        f"processing its shot {', '.join(s.name for s in shots)}" if shots else "no shot lies beside it")
            for shot in shots:
                yield shot, None
        else:
            yield path, None


def _is_output_folder(folder: Path, written: dict[Path, str]) -> bool:
    name = written.get(Path(os.path.realpath(folder)))
    if name is not None:
        log.warning("%s: skipped: it is the folder of %s; outputs are not inputs", folder, name)
    return name is not None


class Stopper:
    """SIGINT/SIGTERM while ``assetd process`` runs (installed by ``with``, in the main thread only).

    The first signal lets the current file finish, then the run stops. A second one while a file is
    being processed raises KeyboardInterrupt there, so the claimed job is handed back on the way out;
    otherwise (nothing claimed, or a third signal) the program exits at once."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.busy = False  # a file is being processed
        self._interrupted = False
        self._previous: dict[int, Any] = {}

    @property
    def exit_code(self) -> int | None:
        """128 + the signal number once a signal asked the run to stop (130 for SIGINT, 143 for SIGTERM)."""
        return None if self.signum is None else 128 + self.signum

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum else ""

    def __enter__(self) -> "Stopper":
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        return self

    def __exit__(self, *exc: Any) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous = {}

    @contextlib.contextmanager
    def working(self) -> Iterator[None]:
        self.busy = True
        try:
            yield
        finally:
            self.busy = False

    def _on_signal(self, signum: int, frame: Any) -> None:
        name = signal.Signals(signum).name
        if self.signum is None:
            self.signum = signum
            if self.busy:
                log.warning("received %s: stopping after the current file (send it again to stop at once)", name)
            else:
                log.warning("received %s: stopping", name)
            return
        if self.busy and not self._interrupted:
            self._interrupted = True
            log.warning("received %s again: stopping at once; the current file's job goes back to the queue", name)
            raise KeyboardInterrupt
        log.warning("received %s again: exiting now", name)
        os._exit(self.exit_code or 128 + signum)


def run_once(config: Config, rules: list[Rule], paths: list[Path], *, rule_name: str | None = None,
             force: bool = False, progress: bool = False, stopper: Stopper | None = None) -> list[dict[str, Any]]:
    """Process every file; returns one result document per input (see ``assetd process --json``).

    With ``stopper`` (entered by the caller), a signal stops the run as ``Stopper`` says; the files not
    processed get the status ``stopped``. Raises ConfigError, before any file is taken, when a model the
    rules need does not load offline (under ``executor: ray``: on an actor's node).

    Under ``executor: ray`` the files run one after the other through one actor, the only one started
    (``ray.actors`` is for the daemon); a signal while it starts stops the run at once."""
    stopper = stopper or Stopper()  # not entered: no signal handling
    set_aside = [i for i in config.inboxes if i.after == "move"]  # their done and error folders are not inputs
    files = list(expand(paths, output_folders(config), lambda folder: any(i.sets_aside(folder) for i in set_aside)))
    pool = None
    if config.executor == "ray":
        from .errors import StopRequested
        from .scaleout import RemoteWorker, start_pool

        try:
            pool = start_pool(config, rules, actors=1, stop=lambda: stopper.signum is not None)
        except StopRequested as exc:
            log.warning("assetd process took no file: %s", exc)
            return [_stopped(file, f"not processed: assetd process was stopped by {stopper.name} while its Ray "
                                   "actor started") for file, _ in files]
        models = None
    else:
        models = load_for_start(config, rules, lambda warning: log.warning("%s", warning))
    store = Store(config.database, config.quarantine_after_crashes)
    for folder, n in remove_temp_files(config).items():
        log.warning("%s: removed %d temporary file(s) left by an assetd that stopped while writing", folder, n)
    intake = Intake(config, rules, store)
    if pool is not None:
        worker: Worker = RemoteWorker("process", config, store, rules, pool.actors[0], pool.names[0],
                                      make_actor=pool.make_actor)
    else:
        worker = Worker("process", config, store, rules)
        worker.ctx.models = models  # already loaded by the check
    results: list[dict[str, Any]] = []
    bar = None
    if progress:
        from rich.progress import Progress

        bar = Progress(transient=True)
        bar.start()
        task = bar.add_task("processing", total=len(files))
    try:
        for file, root in files:
            if stopper.signum is not None:
                break
            with stopper.working():
                results.append(_one(store, intake, worker, file, root, rule_name, force))
            if bar is not None:
                bar.advance(task)
    except KeyboardInterrupt:
        if stopper.signum is None or len(results) == len(files):
            raise
        results.append(_stopped(files[len(results)][0], f"interrupted by a second {stopper.name} before it "
                                                         "finished; its job is queued again"))
    finally:
        if bar is not None:
            bar.stop()
        worker.close()
        store.close()
        if pool is not None:
            pool.close()
    why = f"not processed: assetd process was stopped by {stopper.name}"
    results += [_stopped(file, why) for file, _ in files[len(results):]]
    return results


def _stopped(file: Path, why: str) -> dict[str, Any]:
    return {"input": str(file), "status": ResultStatus.STOPPED, "rule": None, "error": why, "review": [], "outputs": []}


def _one(store: Store, intake: Intake, worker: Worker, file: Path, root: Path | None, rule_name: str | None,
         force: bool) -> dict[str, Any]:
    doc: dict[str, Any] = {"input": str(file), "status": ResultStatus.SKIPPED, "rule": None, "error": None,
                           "review": [], "outputs": []}
    sub = intake.submit(file, root, rule_name=rule_name, reprocess=force)
    doc["rule"] = sub.rule.name if sub.rule else None
    if sub.job is None:
        doc["error"] = sub.reason
        doc["status"] = ResultStatus.SKIPPED if sub.rule is None or sub.earlier is not None else ResultStatus.FAILED
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
        if job.status in FINISHED:
            store.requeue([job.id])
    claimed = store.claim_next(worker.owner, worker.config.lease_seconds, only=[job.id])
    if claimed is None:
        now = store.get(job.id)
        if now is not None and now.status is JobStatus.RUNNING:
            doc["error"] = f"being processed by {describe(now.worker)} (job {job.id})"
        else:
            doc.update(status=ResultStatus.FAILED, error=f"job {job.id} is waiting to be retried later by the daemon")
        return doc
    try:
        result = worker.process(claimed, own_chain=force)
    except BaseException:  # stopped at once (or a bug): hand the job back, whatever happens next
        store.release(claimed.id, owner=worker.owner)
        raise
    doc["outputs"] = [_output(o) for o in result.outputs]
    if result.status is JobStatus.DONE:
        doc["status"] = ResultStatus.DONE
        doc["review"] = result.review
    else:
        doc["status"] = ResultStatus.FAILED
        doc["error"] = result.error + (" (will be retried by the daemon)" if result.status is JobStatus.QUEUED else "")
    return doc


def _take_over(store: Store, job: Job) -> bool:
    """Release ``job`` (running) if its owner is gone, so this run can take it now. Returns whether it was."""
    released = store.release_orphans(lambda owner: owner_state(owner, store.path) is OwnerState.GONE, only=[job.id])
    if released:
        log.warning("job %d was left running by %s, which is gone; taking it over", job.id, describe(job.worker))
    return bool(released)


def _output(o: Any) -> dict[str, Any]:
    """An output in ``assetd process --json``; one of a variant also has its ``variant``, one of a ``publish:
    on_approval`` channel its approval state and where it waits (``path`` is where it will be published)."""
    doc = {"channel": o.channel, "path": o.path, "step": o.step, "ratio": o.ratio, "width": o.width,
           "height": o.height}
    if o.variant is not None:
        doc["variant"] = o.variant
    if o.approval is not None:
        doc.update(approval=o.approval, staged_path=o.staged_path)
    return doc
