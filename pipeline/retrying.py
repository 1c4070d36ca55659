"""Queue failed (or done) jobs again: ``assetd retry`` and the review page's Retry buttons share this.

A job still marked running whose owner is gone (a killed assetd on this host) is queued again at once; one
whose owner is still at work is left alone. An input that its inbox's ``after: move`` put into done/ or error/
is moved back first (``inboxflow.bring_back``): a worker must find the file in place. A job whose file has
since run to done as a later job of the same rule (a replaced file dropped again, a re-run) is not queued: it would
only end superseded, or redo what the later job did; the line names that job. A job whose shot has other masks
beside it now (a mask painted after the shot was done and moved) runs with them, the line says so: retrying it is
how a retoucher's late mask gets used.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from .config import Config
from .inboxflow import bring_back
from .intake import mask_digest, mask_hashes
from .owners import OwnerState, describe, owner_state
from .stages.masks import masks_beside
from .store import FINISHED, JobStatus, Store
from .text import printable


@dataclass
class Retried:
    """What a retry did: the jobs queued again, one line each for the user (``lines``: what happened,
    ``problems``: what could not be done and why)."""
    queued: list[int] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def retry(config: Config, store: Store, job_ids: list[int] | tuple[int, ...] = (), *, failed: bool = False) -> Retried:
    """Queue ``job_ids`` again (``failed``: every failed job). See the module docstring."""
    out = Retried()
    job_ids = list(job_ids)
    released = store.release_orphans(lambda owner: owner_state(owner, config.database) is OwnerState.GONE,
                                     only=None if failed else job_ids)
    wanted = [j.id for j in store.jobs(JobStatus.FAILED.value)] if failed else list(job_ids)
    ran = store.ran_again([i for i in wanted if i not in {j.id for j in released}])
    if failed and len(ran) > 3:
        out.lines.append(f"{len(ran)} failed jobs not queued: their files ran again to done since, as later jobs "
                         f"({', '.join(f'{i} → {later.id}' for i, later in ran.items())})")
    else:  # a job named on the command line and not queued is a refusal (exit 1); --failed only skips them
        (out.lines if failed else out.problems).extend(
            f"job {i}: its file ran again as job {later.id} ({later.status.value}); not queued (to run it once more: "
            f"assetd retry {later.id})" for i, later in ran.items())
    wanted = [i for i in wanted if i not in ran]
    job_ids = [i for i in job_ids if i not in ran]
    moved_back, blocked = bring_back(store, wanted)  # before requeueing: a worker must find the file in place
    out.lines += moved_back
    out.problems += blocked.values()
    wanted = [i for i in wanted if i not in blocked]
    held = _with_current_masks(store, wanted, out.lines)
    wanted = [i for i in wanted if i not in held]
    job_ids = [i for i in job_ids if i not in held]
    ids = store.requeue(wanted)
    out.queued = sorted(set(ids) | {j.id for j in released})
    out.lines.append(f"queued again: {', '.join(map(str, out.queued)) or 'none'}")
    for job in released:
        out.lines.append(f"job {job.id} was left running by {describe(job.worker)}, which has stopped")
    missing = sorted(set(job_ids) - set(out.queued) - set(blocked))
    unknown = []
    for job_id in missing:
        job = store.get(job_id)
        if job is None or job.status is not JobStatus.RUNNING:
            unknown.append(job_id)
        elif owner_state(job.worker, config.database) is OwnerState.ALIVE:
            out.problems.append(f"job {job_id} is being processed by {describe(job.worker)}; left alone")
        else:
            until = time.strftime("%H:%M:%S", time.localtime(job.lease_expires or 0))
            out.problems.append(f"job {job_id} is held by {describe(job.worker)}, which cannot be checked from "
                                f"here; it is taken back when its lease runs out ({until})")
    if unknown:
        out.problems.append(f"not failed or done (or unknown): {', '.join(map(str, unknown))}")
    return out


def _with_current_masks(store: Store, job_ids: list[int], lines: list[str]) -> set[int]:
    """Make each ended job run with the masks beside its shot now (``NAME.remove.png``... painted, changed or
    removed since it ran): they become part of the job (``jobs.masks``), else the worker would find them changed
    and end it superseded. Returns the jobs not to queue: another job already is that shot with those masks (the
    line names it)."""
    held = set()
    for job_id in job_ids:
        job = store.get(job_id)
        if job is None or job.status not in FINISHED or not job.readable:
            continue
        shot = Path(job.input_path)
        if not shot.is_file():
            continue
        masks = mask_digest(mask_hashes(store, shot))
        if masks == job.masks:
            continue
        beside = ", ".join(printable(p.name) for p in masks_beside(shot).values()) or "none"
        other = store.change_masks(job_id, masks)
        if other is None:
            lines.append(f"job {job_id}: the masks beside {printable(str(shot))} changed since it ran (now: {beside});"
                         " it runs with them, recorded in its job")
        else:
            held.add(job_id)
            lines.append(f"job {job_id}: the masks beside {printable(str(shot))} changed since it ran (now: {beside});"
                         f" job {other.id} is this shot with them ({other.status.value}); not queued (to run that "
                         f"once more: assetd retry {other.id})")
    return held
