"""What happens to an input once its job has ended for good: the inbox's ``after`` option.

Print-workflow hot folders (Enfocus Switch, Kodak Prinergy) empty their inbox as they go: what was
done goes to one folder, what failed to another with a note saying why, and whatever still lies in
the inbox is what has not been dealt with yet. ``after: move`` does that per inbox:

- a done job's input moves to the inbox's ``done_folder`` (default ``<inbox>/done``), a failed one's
  to its ``error_folder`` (default ``<inbox>/error``) with ``NAME.error.txt`` beside it: the one-line
  reason and the job id;
- the input keeps its sub-folder relative to the inbox (``products/shoe.jpg`` → ``done/products/shoe.jpg``);
- nothing is overwritten: a name already taken there gets a suffix (``shoe-2.jpg``);
- the masks a retoucher put beside the shot (``shoe.remove.png``..., part of what the job was) go with it, named
  after where it went (``shoe-2.remove.png``), unless another shot of that name still lies in the inbox and reads
  them too;
- each move is recorded (``moves``), so ``assetd retry`` puts the file back where it was before the
  job runs again (``bring_back``), its masks with it.

An input stays where it is when another unfinished job reads the same path, or when the file there (or a mask
beside it) is no longer the content its job took (a new version was dropped meanwhile: its own job moves it).
``after: keep`` (the default) never touches an input. The watcher and the intake never take a file
from a done or error folder (``InboxConfig.sets_aside``).
"""
from __future__ import annotations

import errno
import logging
import os
import shlex
import shutil
import threading
from pathlib import Path

from .config import Config
from .intake import content_hash, file_hash, inbox_of, mask_digest, mask_hashes, unreadable_token
from .stages.masks import masks_beside, shots_of, sidecar_path
from .outputs import atomic_write
from .store import Job, JobStatus, Store
from .text import printable

log = logging.getLogger("assetd.inboxflow")

SIDECAR = ".error.txt"  # beside a failed input: NAME.error.txt
_lock = threading.Lock()  # picking a free name and renaming into it is one step for this process's workers


def after_job(config: Config, store: Store, job: Job, status: JobStatus, error: str | None) -> Path | None:
    """Move ``job``'s input out of its inbox when the inbox says ``after: move`` (``status``: done or failed,
    the job's end for good; ``error``: why it failed). Returns where the input went, or None when it stays.

    Never raises: a file that cannot be moved is logged and stays in the inbox."""
    source = Path(job.input_path)
    inbox = inbox_of(config, source)
    if inbox is None or inbox.after != "move" or status not in (JobStatus.DONE, JobStatus.FAILED):
        return None
    folder = inbox.done if status is JobStatus.DONE else inbox.error
    try:
        if store.in_use_by_another(job.input_path, job.id):
            log.info("job %d: %s stays in the inbox: another job still reads it", job.id, printable(str(source)))
            return None
        if not _still_the_input(store, job, source):
            return None
        target = folder / source.relative_to(os.path.abspath(inbox.path))
        masks = masks_beside(source)
        dest = _move(source, target, reserve_sidecar=status is JobStatus.FAILED, masks=tuple(masks))
        sidecar = _sidecar(dest) if status is JobStatus.FAILED else None
        # recorded at once: whatever fails next, `assetd retry` finds the file and moves it back
        store.record_move(job.id, str(source), str(dest), status.value, str(sidecar) if sidecar else None)
    except Exception as exc:  # noqa: BLE001 - the job is recorded already; the file just stays
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else f"{type(exc).__name__}: {exc}"
        log.error("job %d: could not move %s to %s (%s); it stays in the inbox", job.id, printable(str(source)),
                  folder, reason, exc_info=not isinstance(exc, OSError))
        return None
    if sidecar is not None:
        try:
            _write_reason(dest, job, error or "failed", config)
        except OSError as exc:
            log.error("job %d: %s moved to %s, but its reason could not be written beside it (%s); `assetd jobs` has "
                      "it", job.id, printable(str(source)), printable(str(dest)), exc.strerror or exc)
    _move_masks(job, masks, dest)
    log.info("job %d: %s moved to %s", job.id, printable(str(source)), printable(str(dest)))
    return dest


def bring_back(store: Store, job_ids: list[int]) -> tuple[list[str], dict[int, str]]:
    """``assetd retry``: put the moved inputs of these jobs back where they were, before they are queued again.

    Returns (one line per input moved back, {job id: why it cannot run again} for the jobs not to requeue:
    the original place is taken by another file, or the input is nowhere to be found)."""
    lines: list[str] = []
    blocked: dict[int, str] = {}
    for job_id in job_ids:
        move = store.moved(job_id)
        if move is None:
            continue
        source, dest = Path(move.source), Path(move.dest)
        shown_source, shown_dest = printable(move.source), printable(move.dest)
        if os.path.lexists(source):
            if os.path.lexists(dest) and not _same_content(source, dest):
                blocked[job_id] = (f"job {job_id}: {shown_source} is taken by another file; its input stays in "
                                   f"{shown_dest} and the job is not queued again (move one of them away first)")
                continue
            store.move_returned(move.id)
            _masks_back(dest, source)
            lines.append(f"job {job_id}: {shown_source} is back in place already"
                         + (f" (the copy in {shown_dest} is left)" if os.path.lexists(dest) else ""))
            continue
        if not os.path.lexists(dest):
            blocked[job_id] = (f"job {job_id}: its input is neither in {shown_dest} nor at {shown_source}; "
                               "not queued again")
            continue
        try:
            source.parent.mkdir(parents=True, exist_ok=True)
            with _lock:
                if os.path.lexists(source):
                    raise FileExistsError(errno.EEXIST, "taken meanwhile", str(source))
                _rename(dest, source)
        except OSError as exc:
            blocked[job_id] = (f"job {job_id}: cannot move {shown_dest} back to {shown_source} "
                               f"({exc.strerror or exc}); not queued again")
            continue
        if move.sidecar:
            Path(move.sidecar).unlink(missing_ok=True)
        store.move_returned(move.id)
        back = _masks_back(dest, source)
        lines.append(f"job {job_id}: moved {shown_dest} back to {shown_source}"
                     + (f" with {', '.join(back)}" if back else ""))
    return lines, blocked


def _still_the_input(store: Store, job: Job, source: Path) -> bool:
    """Whether ``source`` still holds the content ``job`` took (not gone, not a newer version)."""
    try:
        st = os.lstat(source)
    except FileNotFoundError:
        log.info("job %d: %s is no longer in the inbox; nothing to move", job.id, printable(str(source)))
        return False
    try:
        current = content_hash(store, source, st) if job.readable else unreadable_token(source, st)
    except FileNotFoundError:
        current = None
    if current != job.input_hash:
        log.info("job %d: %s changed since the job took it; it stays in the inbox (the new version has a job "
                 "of its own)", job.id, printable(str(source)))
        return False
    if job.readable and mask_digest(mask_hashes(store, source)) != job.masks:
        log.info("job %d: the masks beside %s changed since the job took it; it stays in the inbox (the shot with "
                 "its new masks has a job of its own)", job.id, printable(str(source)))
        return False
    return True


def _move_masks(job: Job, masks: dict[str, Path], dest: Path) -> None:
    """Move the masks that lay beside the input to beside ``dest`` (their names reserved by ``_move``), unless
    another shot of the same name still lies in the inbox (it reads them too): logged, never raised."""
    for kind, mask in masks.items():
        if shots_of(mask):
            log.info("job %d: %s stays in the inbox: %s reads it too", job.id, printable(str(mask)),
                     printable(str(shots_of(mask)[0])))
            continue
        try:
            with _lock:
                if os.path.lexists(sidecar_path(dest, kind)):
                    raise FileExistsError(errno.EEXIST, "taken meanwhile", str(sidecar_path(dest, kind)))
                _rename(mask, sidecar_path(dest, kind))
        except OSError as exc:
            log.error("job %d: could not move %s beside %s (%s); it stays in the inbox", job.id,
                      printable(str(mask)), printable(str(dest)), exc.strerror or exc)


def _masks_back(dest: Path, source: Path) -> list[str]:
    """``assetd retry``: the masks that went with a moved input (beside ``dest``) back beside ``source``; returns
    their names. A mask whose place in the inbox is taken (a new one was painted meanwhile) stays where it is."""
    back = []
    for kind, mask in masks_beside(dest).items():
        home = sidecar_path(source, kind)
        try:
            with _lock:
                if os.path.lexists(home):
                    continue
                _rename(mask, home)
        except OSError as exc:
            log.error("could not move %s back to %s (%s)", printable(str(mask)), printable(str(home)),
                      exc.strerror or exc)
            continue
        back.append(printable(home.name))
    return back


def _move(source: Path, target: Path, *, reserve_sidecar: bool, masks: tuple[str, ...] = ()) -> Path:
    """Move ``source`` to ``target``, or to ``target`` with a suffix when that name (or, for a failed input,
    its ``.error.txt``, or the name of one of its ``masks``' kinds) is taken. Returns where it went."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with _lock:
        dest, n = target, 1
        while (os.path.lexists(dest) or (reserve_sidecar and os.path.lexists(_sidecar(dest)))
               or any(os.path.lexists(sidecar_path(dest, kind)) for kind in masks)):
            n += 1
            dest = target.with_name(f"{target.stem}-{n}{target.suffix}")
        _rename(source, dest)
    return dest


def _rename(source: Path, dest: Path) -> None:
    """Rename; across file systems (a done folder on another volume) copy to a hidden name, rename, then delete."""
    try:
        os.rename(source, dest)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        temp = dest.with_name(f".{dest.name}.assetd-move")
        try:
            shutil.copy2(source, temp, follow_symlinks=False)
            os.rename(temp, dest)
        except BaseException:
            temp.unlink(missing_ok=True)
            raise
        os.unlink(source)


def _sidecar(dest: Path) -> Path:
    return dest.with_name(dest.name + SIDECAR)


def _write_reason(dest: Path, job: Job, error: str, config: Config) -> Path:
    """``NAME.error.txt`` beside a failed input: its one-line reason, the job id and the command that retries it."""
    sidecar = _sidecar(dest)
    reason = " ".join(error.split())
    command = f"assetd retry {job.id} --config {shlex.quote(str(config.source))}"
    atomic_write(sidecar, f"{reason} (assetd job {job.id}; `{command}` moves it back and runs it again)\n".encode())
    return sidecar


def _same_content(a: Path, b: Path) -> bool:
    try:
        return os.lstat(a).st_size == os.lstat(b).st_size and file_hash(a) == file_hash(b)
    except OSError:
        return False
