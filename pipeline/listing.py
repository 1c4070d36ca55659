"""``assetd jobs``: the jobs as one line each (a plain-text table that fits the terminal) or as JSON."""
from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path
from typing import Any

from .store import READ_AHEAD, Job, JobStatus, Store
from .text import printable


def live_problems(store: Store, database: Path) -> list[dict[str, Any]]:
    """The problem processes of the daemon running on ``database`` now (``Store.active_problems``); none while no
    daemon runs: they were about its run (a daemon stopped or killed leaves them open for the next start, which
    takes over those it finds again and ends the others, ``health.Problems``). ``assetd jobs``, ``/metrics`` and the
    review page's banner say these."""
    from .owners import InstanceLock

    try:
        if InstanceLock(database).holder() is None:
            return []
    except OSError:  # the lock file cannot be read from here: no daemon we can tell of
        return []
    return store.active_problems()


def problem_lines(store: Store, database: Path) -> list[str]:
    """One line per problem of the running daemon (``live_problems``): "paused since HH:MM: …" for one that holds
    jobs back, "problem since HH:MM: …" for one that only alerts (a broken config file)."""
    from .health import NOTHING_PAUSED

    return [f"{'problem' if p['scope'] == NOTHING_PAUSED else 'paused'} since "
            f"{time.strftime('%H:%M', time.localtime(p['started_at']))}: {p['message']}"
            for p in live_problems(store, database)]


def inbox_of(job: Job) -> str | None:
    """The folder a job's file was matched under: ``input_path`` without its ``rel_path``."""
    path, rel = Path(job.input_path), Path(job.rel_path or "")
    n = len(rel.parts)
    if not n or n >= len(path.parts) or path.parts[-n:] != rel.parts:
        return None
    return str(Path(*path.parts[:-n]))


def local_time(job: Job) -> datetime:
    """When a job finished, or (queued, running) when it was queued, in the local time zone."""
    return datetime.fromtimestamp(job.finished_at or job.created_at or 0.0).astimezone()


def as_documents(store: Store, jobs: list[Job]) -> list[dict[str, Any]]:
    """``assetd jobs --json``: every field of each job, its inbox, an ISO time, its outputs and where its input
    was moved (``moved_to``: an inbox with ``after: move``; null when it was not, or was moved back)."""
    docs = []
    for j in jobs:
        d = {k: (v.value if hasattr(v, "value") else v) for k, v in j.__dict__.items()}
        d["inbox"] = inbox_of(j)
        d["time"] = local_time(j).isoformat(timespec="seconds")
        d["outputs"] = [o.as_dict() for o in store.outputs(j.id)]
        moved = store.moved(j.id)  # the inbox's after: move put the input there (done/ or error/)
        d["moved_to"] = moved.dest if moved else None
        docs.append(d)
    return docs


def status_word(job: Job) -> str:
    """A job's state as listed: "next" (``READ_AHEAD``) for a running job only claimed to be read ahead (its input
    is read while the job before it runs; nothing of it ran yet), else its status."""
    if job.status is JobStatus.RUNNING and job.chain_started_at is None:
        return READ_AHEAD
    return job.status.value


def _shown(folder: str, base: Path) -> str:
    """A folder relative to the config file's folder when inside it."""
    path = Path(folder)
    return str(path.relative_to(base)) if path.is_relative_to(base) else folder


APPROVAL_MARK = "◷"  # a job with outputs awaiting approval (publish: on_approval)
REJECTED_MARK = "✗"  # a job with rejected outputs not replaced since


def marks(job: Job, awaiting: int = 0, rejected: int = 0, replaced: int | None = None) -> list[str]:
    """What a job's note starts with, here and on the review page's night view: "re-run of N" for a re-run,
    "◷ N await approval" (outputs of a publish: on_approval channel waiting), "✗ N rejected" (rejected
    outputs not replaced since) and "outputs replaced by job N" (a later job wrote them again: what the channel
    folders hold now is that job's)."""
    return [m for m in (f"re-run of {job.rerun_of}" if job.rerun_of is not None else "",
                        f"{APPROVAL_MARK} {awaiting} await{'s' if awaiting == 1 else ''} approval" if awaiting else "",
                        f"{REJECTED_MARK} {rejected} rejected" if rejected else "",
                        f"outputs replaced by job {replaced}" if replaced is not None else "") if m]


def _note(job: Job, awaiting: int = 0, rejected: int = 0, replaced: int | None = None) -> str:
    """The error (without the input path the input column shows), or the review mark and first reason; after
    the ``marks`` (re-run of N, outputs awaiting approval, rejected, replaced by a later job)."""
    error = job.error or ""
    for prefix in (f"{job.input_path}: ", f"{printable(job.input_path)}: "):
        error = error[len(prefix):] if error.startswith(prefix) else error
    if error or not job.review:
        return "; ".join(filter(None, (*marks(job, awaiting, rejected, replaced), error)))
    more = f" (+{len(job.review) - 1} more)" if len(job.review) > 1 else ""
    return "; ".join(filter(None, (*marks(job, awaiting, rejected, replaced), f"⚑ {job.review[0]}{more}")))


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: max(width - 1, 0)] + "…"


def table(jobs: list[Job], base: Path, width: int, awaiting: dict[int, int] | None = None,
          rejected: dict[int, int] | None = None, replaced: dict[int, int] | None = None) -> list[str]:
    """One line per job, at most ``width`` characters: short columns keep their width, the long ones (input,
    rule, inbox, then the note) end in "…" when the terminal is narrow. The inbox column shows only when the
    jobs come from more than one folder; the note is the error, or ⚑ and the first review reason, after
    ◷ and how many of its outputs await approval (``awaiting``: by job id) and ✗ and how many are rejected
    (``rejected``: by job id), and the later job that wrote its outputs again (``replaced``: by job id)."""
    awaiting, rejected, replaced = awaiting or {}, rejected or {}, replaced or {}
    inboxes = {inbox_of(j) for j in jobs}
    columns: list[tuple[str, list[str], int]] = []  # (header, cells, the narrowest it may get)

    def add(header: str, cells: list[str], least: int | None = None) -> None:
        columns.append((header, cells, len(header) if least is None else least))

    add("id", [str(j.id) for j in jobs])
    add("status", [status_word(j) for j in jobs])
    add("try", [str(j.attempts) for j in jobs])
    add("time", [f"{local_time(j):%Y-%m-%d %H:%M}" for j in jobs])
    if len(inboxes) > 1:
        add("inbox", [_shown(i, base) if (i := inbox_of(j)) else "" for j in jobs], 8)
    add("rule", [j.rule for j in jobs], 6)
    add("input", [j.rel_path or j.input_path for j in jobs], 12)
    add("secs", [f"{j.seconds:.2f}" if j.seconds else "" for j in jobs])
    add("note", [_note(j, awaiting.get(j.id, 0), rejected.get(j.id, 0), replaced.get(j.id))
                  for j in jobs], 12)
    widths = [max([len(h), *map(len, cells)]) for h, cells, _ in columns]
    widths[-1] = min(widths[-1], 120)
    excess = sum(widths) + 2 * (len(widths) - 1) - width
    long = [i for i, (header, _, _) in enumerate(columns) if header in ("inbox", "rule", "input", "note")]
    while excess > 0:  # narrow the widest long column by one, until it fits or all are at their least
        room = [i for i in long if widths[i] > columns[i][2]]
        if not room:
            break
        widths[max(room, key=lambda i: widths[i])] -= 1
        excess -= 1
    lines = ["  ".join(h.ljust(w) for (h, _, _), w in zip(columns, widths)).rstrip(),
             "  ".join("-" * w for w in widths)]
    for row in range(len(jobs)):
        lines.append("  ".join(_cut(cells[row], w).ljust(w) for (_, cells, _), w in zip(columns, widths)).rstrip())
    return lines
