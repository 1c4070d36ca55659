"""The night view (``/``): the jobs since a chosen time, grouped by inbox and rule with a count per status, a
filtered table a page at a time (keyset: the id of the last row shown), and ``/api/progress`` that the page polls
every two seconds while the daemon works (counts, the rows on screen, how many jobs are new)."""
from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ..listing import inbox_of, marks, status_word
from ..store import AWAITING, READ_AHEAD, REJECTED, REVIEW, Job, JobStatus
from ..text import printable
from .templating import render

DEFAULT_HOURS = 24
SINCE_FORMAT = "%Y-%m-%dT%H:%M"  # what <input type="datetime-local"> sends
STATUSES = [s.value for s in JobStatus]
FLAGS = {REVIEW: "marked for review", AWAITING: "awaiting approval", REJECTED: "rejected outputs"}
COUNTED = [*STATUSES, REVIEW, AWAITING, REJECTED, READ_AHEAD, "total"]  # the job counts of the groups and totals


@dataclass
class NightQuery:
    """What the night view shows, from its query string; ``link`` writes it back with changes."""
    since: float
    since_text: str
    status: str | None = None
    rule: str | None = None
    inbox: str | None = None
    flag: str | None = None
    before: int | None = None
    after: int | None = None

    @classmethod
    def parse(cls, request: Request) -> "NightQuery":
        q = request.query_params
        since_text = q.get("since", "").strip()
        try:
            since = datetime.strptime(since_text, SINCE_FORMAT).timestamp()
        except ValueError:
            hours = q.get("hours", "")
            since = time.time() - 3600 * (float(hours) if _number(hours) else DEFAULT_HOURS)
            since_text = datetime.fromtimestamp(since).strftime(SINCE_FORMAT)
        return cls(since=since, since_text=since_text, status=q.get("status") if q.get("status") in STATUSES else None,
                   rule=q.get("rule") or None, inbox=q.get("inbox") or None,
                   flag=q.get("flag") if q.get("flag") in FLAGS else None,
                   before=_int(q.get("before")), after=_int(q.get("after")))

    @property
    def filters(self) -> dict[str, Any]:
        return {"status": self.status, "rule": self.rule, "inbox": self.inbox, "flag": self.flag}

    def link(self, **changes: Any) -> str:
        """This view's URL with ``changes`` (None drops a parameter); a new filter starts at the first page."""
        params = {"since": self.since_text, **self.filters, "before": self.before, "after": self.after}
        if set(changes) - {"before", "after"}:
            params.update(before=None, after=None)
        params.update(changes)
        return "/?" + urlencode({k: v for k, v in params.items() if v not in (None, "")})


def _number(text: str) -> bool:
    try:
        return 0 < float(text) < 24 * 366
    except ValueError:
        return False


def _int(text: str | None) -> int | None:
    return int(text) if text and text.isdigit() else None


def shown_folder(folder: str | None, base: Path) -> str:
    """A folder relative to the config file's folder when inside it."""
    if not folder:
        return "(no inbox)"
    path = Path(folder)
    return printable(str(path.relative_to(base)) if path.is_relative_to(base) and path != base else folder)


def when(stamp: float | None) -> str:
    """Local time: HH:MM today, else the date too."""
    if not stamp:
        return ""
    t = datetime.fromtimestamp(stamp)
    return t.strftime("%H:%M") if t.date() == datetime.now().date() else t.strftime("%d %b %H:%M")


def note(job: Job, awaiting: int = 0, rejected: int = 0, replaced: int | None = None) -> str:
    """As ``assetd jobs`` notes a job: its marks (re-run of N, ◷ outputs awaiting approval, ✗ rejected), then the
    error without the input path (the row names the file), or the first review reason."""
    error = job.error or ""
    for prefix in (f"{job.input_path}: ", f"{printable(job.input_path)}: "):
        error = error.removeprefix(prefix)
    if job.status in (JobStatus.FAILED, JobStatus.SUPERSEDED) or not job.review:
        text = printable(error) if job.status is not JobStatus.DONE else ""
    else:
        text = printable(job.review[0]) + (f" (+{len(job.review) - 1} more)" if len(job.review) > 1 else "")
    return "; ".join(filter(None, (*marks(job, awaiting, rejected, replaced), text)))


def row(job: Job, base: Path, awaiting: int = 0, rejected: int = 0, replaced: int | None = None) -> dict[str, Any]:
    return {"id": job.id, "name": printable(job.rel_path or Path(job.input_path).name),
            "inbox": shown_folder(inbox_of(job), base), "rule": job.rule, "status": status_word(job),
            "review": bool(job.review), "time": when(job.finished_at or job.created_at),
            "seconds": f"{job.seconds:.1f} s" if job.seconds else "", "note": note(job, awaiting, rejected, replaced)}


def rows(store: Any, jobs: list[Job], base: Path) -> list[dict[str, Any]]:
    """The table's rows, with how many outputs of each job await approval or are rejected."""
    ids = [j.id for j in jobs]
    awaiting, rejected, replaced = store.awaiting_counts(ids), store.rejected_counts(ids), store.replaced_by(ids)
    return [row(j, base, awaiting.get(j.id, 0), rejected.get(j.id, 0), replaced.get(j.id)) for j in jobs]


def totals(store: Any, groups: list[dict[str, Any]], since: float) -> dict[str, int]:
    """The jobs per status and flag since ``since`` (summed over the groups), and the outputs awaiting approval
    and rejected (``awaiting_outputs``, ``rejected_outputs``: what ``assetd jobs`` counts, for these jobs)."""
    found = {key: sum(g[key] for g in groups) for key in COUNTED}
    outputs = store.night_outputs(since) if found[AWAITING] or found[REJECTED] else {AWAITING: 0, REJECTED: 0}
    return {**found, "awaiting_outputs": outputs[AWAITING], "rejected_outputs": outputs[REJECTED]}


def night(request: Request) -> Response:
    config, store = request.app.state.config, request.app.state.store
    q = NightQuery.parse(request)
    size = config.review.page_size
    jobs = store.night_jobs(q.since, size, before=q.before, after=q.after, **q.filters)
    groups = store.night_groups(q.since)
    counted = totals(store, groups, q.since)
    for g in groups:
        g["shown_inbox"] = shown_folder(g["inbox"], config.base_dir)
    rules, inboxes = sorted({g["rule"] for g in groups}), sorted({g["inbox"] for g in groups if g["inbox"]})
    newer = bool(jobs) and store.night_more(q.since, jobs[0].id, True, **q.filters)
    older = bool(jobs) and store.night_more(q.since, jobs[-1].id, False, **q.filters)
    return render(
        request, "night.html", q=q, groups=groups, totals=counted, statuses=STATUSES, flags=FLAGS,
        rows=rows(store, jobs, config.base_dir), matching=store.night_count(q.since, **q.filters),
        rules=rules, inboxes=[(i, shown_folder(i, config.base_dir)) for i in inboxes],
        newest=store.newest_job_id(), page_size=size,
        approvals=counted[AWAITING] > 0 or counted[REJECTED] > 0 or any(
            c.publish == "on_approval" for c in config.channels.values()),
        newer_link=q.link(after=jobs[0].id, before=None) if newer else None,
        older_link=q.link(before=jobs[-1].id, after=None) if older else None,
        first_link=q.link(before=None, after=None) if newer else None,
        since_human=datetime.fromtimestamp(q.since).strftime("%a %d %b %H:%M"),
        flash=request.session.pop("flash", None))


def progress(request: Request) -> Response:
    """Counts since ``since`` (per group too), the state and note of the jobs ``ids`` on screen, and the newest
    job id."""
    config, store = request.app.state.config, request.app.state.store
    q = NightQuery.parse(request)
    ids = [int(i) for i in request.query_params.get("ids", "").split(",") if i.isdigit()][:500]
    groups = store.night_groups(q.since)
    shown = {r["id"]: r for r in rows(store, store.jobs_by_id(ids), config.base_dir)} if ids else {}
    return JSONResponse({
        "totals": totals(store, groups, q.since),
        "groups": [{k: g[k] for k in ("inbox", "rule", *COUNTED)} for g in groups],
        "jobs": {str(k): {"status": v["status"], "review": v["review"], "note": v["note"]} for k, v in shown.items()},
        "newest": store.newest_job_id(),
        "matching": store.night_count(q.since, **q.filters),
    }, headers={"Cache-Control": "no-store"})


def routes() -> list[Route]:
    return [Route("/", night, name="night"), Route("/api/progress", progress, name="progress")]
