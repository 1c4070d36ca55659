"""Failures (``/failures``): one line per failed job nobody acknowledged since it last failed, with its reason
and its class; Retry (one), Retry all and Acknowledge, as POST forms (CSRF). Retry is ``assetd retry``
(``pipeline.retrying``): an input that ``after: move`` put into error/ is moved back first."""
from __future__ import annotations

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from ..retrying import retry
from ..store import Job
from .night import row
from .templating import render

# A failure's class, from the one-line error assetd wrote (the same words on every database, old ones too):
# (key, label, what to do), the first whose marker the error holds; then the input's own faults (imageio's and
# the intake's words for them); anything else a step could not do on this image (a StepError, a permanent
# backend error): a stage problem.
CLASSES = [
    ("quarantined", "quarantined", "assetd stopped while running it, more than once: look at the file before retrying",
     ("quarantined:",)),
    ("bug", "stage bug", "an internal error: report it with the file; retrying runs the same code",
     ("internal error:",)),
    ("crashed", "worker stopped", "assetd was killed while running it until its attempts ran out",
     ("the worker stopped while processing it",)),
    ("gave-up", "gave up", "a transient problem (disk, GPU, a file changing) lasted all its attempts: retry it",
     ("gave up after",)),
    ("rule", "rule changed", "its rule changed or went away before it ran",
     ("no longer exists", "changed before this job ran")),
    ("input", "bad input", "the file itself could not be used: fix or replace it (a file changed in the inbox runs again by itself, and this line goes once it is done), or retry it once fixed",
     ("damaged", "not an image", "file is empty", "are not accepted", "too large", "blank", "symbolic link",
      "no permission", "disappeared", "not a regular file", "pixels (limit", "cannot decode", "truncated")),
]
STAGE_PROBLEM = ("stage", "stage problem", "a step could not do this image: re-run it with other options or "
                                           "another rule")


def failure_class(job: Job) -> tuple[str, str, str]:
    """(key, label, hint) of a failed job's class: quarantined, stage bug, worker stopped, gave up, rule changed,
    bad input or stage problem."""
    error = (job.error or "").lower()
    for key, label, hint, markers in CLASSES:
        if any(m in error for m in markers):
            return key, label, hint
    return STAGE_PROBLEM


def failures(request: Request) -> Response:
    config, store = request.app.state.config, request.app.state.store
    acknowledged = request.query_params.get("acknowledged") == "1"
    before = request.query_params.get("before", "")
    size = config.review.page_size
    jobs = store.failures(size + 1, before=int(before) if before.isdigit() else None, acknowledged=acknowledged)
    more, jobs = len(jobs) > size, jobs[:size]
    rows = []
    for job in jobs:
        r = row(job, config.base_dir)
        r["class"], r["class_label"], r["hint"] = failure_class(job)
        r["attempts"] = f"{job.attempts}/{job.max_attempts}"
        rows.append(r)
    open_count, acknowledged_count = store.failure_counts()
    flash = request.session.pop("flash", None)
    return render(request, "failures.html", rows=rows, acknowledged=acknowledged, open_count=open_count,
                  acknowledged_count=acknowledged_count, flash=flash,
                  older_link=(f"/failures?before={jobs[-1].id}" + ("&acknowledged=1" if acknowledged else ""))
                  if more else None)


def _done(request: Request, lines: list[str], problems: list[str]) -> Response:
    """Back to the list (POST, redirect, GET), with what happened shown once above it."""
    request.session["flash"] = {"lines": lines[-20:], "problems": problems[-20:]}
    return RedirectResponse("/failures", status_code=303)


async def _ids(request: Request) -> list[int]:
    form = await request.form()
    return [int(v) for v in form.getlist("job") if str(v).isdigit()]


async def retry_jobs(request: Request) -> Response:
    config, store = request.app.state.config, request.app.state.store
    ids = await _ids(request)
    if request.path_params.get("which") == "all":
        ids = await run_in_threadpool(store.unacknowledged_failures)
    if not ids:
        return _done(request, ["nothing to retry"], [])
    done = await run_in_threadpool(retry, config, store, ids)  # moves files back: off the event loop
    return _done(request, done.lines, done.problems)


async def acknowledge(request: Request) -> Response:
    store = request.app.state.store
    ids = await _ids(request)
    done = await run_in_threadpool(store.acknowledge, ids)
    lines = [f"acknowledged: {', '.join(map(str, done))} (off this list until they fail again)"] if done else []
    problems = [f"not failed (or unknown): {', '.join(map(str, sorted(set(ids) - set(done))))}"] \
        if set(ids) - set(done) else []
    return _done(request, lines, problems)


def routes() -> list[Route]:
    return [Route("/failures", failures, name="failures"),
            Route("/failures/retry", retry_jobs, methods=["POST"]),
            Route("/failures/retry-{which:str}", retry_jobs, methods=["POST"]),
            Route("/failures/acknowledge", acknowledge, methods=["POST"])]
