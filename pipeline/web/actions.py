"""The review page's decisions: Approve / Reject per output or per job, "approve all remaining" from the night view,
the next job awaiting approval, and Re-run under another rule or with a one-off step option.

Every action is a POST carrying the session's CSRF token (``security.Guard`` checks it) and goes through the same
functions as the command line (``approval.approve`` / ``reject`` / ``approve_all_pending``, ``rerun.rerun``), with
``by="review page"``. A plain form gets a redirect back to the page, with what happened shown once above it; the
page's own script (``static/review.js``: the P / X keys) asks for JSON instead and updates the outputs' state in
place. This module reads the store and the rules; the SQL stays in the store, the publishing in ``approval``.
"""
from __future__ import annotations

import dataclasses
import os
import time
from datetime import datetime
from pathlib import PurePath
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from ..approval import Decision, approve, approve_all_pending, reject
from ..config import Config
from ..errors import ConfigError
from ..formats import INPUT_EXTENSIONS
from ..ignore import is_ignored_name
from ..rerun import RerunError, as_written, differences, parse_set, rerun
from ..rules import Rule, load_rules
from ..stages.crops import CropsOptions
from ..store import Job, Store
from .job import APPROVAL
from .night import SINCE_FORMAT
from .security import safe_next
from .templating import TEMPLATES

BY = "review page"  # who decided, in the decisions table (the page has one access token, not one login a person)
SCENE, ANCHOR = ("place_in_scene", "scene"), ("crops", "anchor")  # the re-run form's two ready-made options
MAX_SCENES = 500  # the re-run form's scene menu (a folder of thousands of images is not a menu)

TEMPLATES.env.filters["as_written"] = as_written  # a re-run's options as a rule file writes them (true, not True)


def decided(record: dict[str, Any] | None) -> str:
    """``approved by review page at 08:12`` / ``rejected by cli at 08:13: too dark``: one decision, for a person."""
    if not record:
        return ""
    at = time.strftime("%H:%M", time.localtime(record["at"]))
    if datetime.fromtimestamp(record["at"]).date() != datetime.now().date():
        at = time.strftime("%d %b %H:%M", time.localtime(record["at"]))
    return f"{record['verdict']} by {record['by']} at {at}" + (f": {record['reason']}" if record.get("reason") else "")


def output_states(store: Store, job_id: int,
                  history: list[dict[str, Any]] | None = None) -> dict[int, dict[str, Any]]:
    """Each output of the job with what the page shows of its approval: the state, the last decision (who, when,
    why), and whether it can still be approved / rejected. ``history``: the job's decisions, when already read."""
    last: dict[int, dict[str, Any]] = {}
    for record in store.decisions(job_id) if history is None else history:  # oldest first: the last one wins
        last[record["output_id"]] = record
    states = {}
    for row in store.output_rows(job_id):
        key = row.get("approval")
        live = row.get("replaced_by") is None
        shown = APPROVAL.get(key, key) if live else f"replaced by job {row['replaced_by']}"  # history: that says it
        states[row["id"]] = {
            "approval_key": (key or "published") if live else "replaced", "approval": shown,
            "decided": decided(last.get(row["id"])),
            "can_approve": live and key in ("pending", "rejected"), "can_reject": live and key == "pending",
        }
    return states


def job_context(request: Request, job: Job) -> dict[str, Any]:
    """What job.html's actions need: the outputs' decisions, the history, the re-runs, the next job awaiting
    approval, the re-run form's choices, and what the last action did (shown once)."""
    store: Store = request.app.state.store
    history = store.decisions(job.id)
    states = output_states(store, job.id, history)
    rules, rules_problem = _rules(request)
    scene = job_scene(job, rules)
    return {
        "states": states,
        "awaiting": sum(1 for s in states.values() if s["can_reject"]),
        "rejected": sum(1 for s in states.values() if s["approval_key"] == "rejected" and s["can_approve"]),
        "history": [dict(d, text=decided(d)) for d in history],
        "reruns": [j for j in store.rerun_family(job.id) if j.rerun_of == job.id],
        "next_awaiting": store.next_awaiting(after=job.id),
        "rerun_rules": [r.name for r in rules], "rules_problem": rules_problem,
        "scenes": scenes(request.app.state.config, rules, scene), "scene": scene, "anchors": anchors(),
        "flash": request.session.pop("flash", None),
    }


def _rules(request: Request) -> tuple[list[Rule], str | None]:
    """The rules as the rule files say now (as ``assetd rerun`` loads them), or none and why."""
    try:
        return load_rules(request.app.state.config), None
    except ConfigError as exc:
        return [], "the rules cannot be read, so nothing can be re-run: " + "; ".join(exc.problems)


def _written_scene(rule: Rule | None) -> str | None:
    """The scene a rule file names for ``place_in_scene`` (as written), if any."""
    for item in ((rule.written or {}).get("steps") or []) if rule is not None else []:
        if isinstance(item, dict) and isinstance(item.get(SCENE[0]), dict):
            scene = item[SCENE[0]].get(SCENE[1])
            if scene:
                return str(scene)
    return None


def job_scene(job: Job, rules: list[Rule]) -> str | None:
    """The scene this job was placed on, as a rule file writes it: its own override, else its rule's."""
    override = (job.overrides or {}).get(SCENE[0], {}).get(SCENE[1])
    if override:
        return str(override)
    return _written_scene(next((r for r in rules if r.name == job.rule), None))


def scenes(config: Config, rules: list[Rule], also: str | None = None) -> list[str]:
    """The scenes a re-run may pick, as a rule file writes them (relative to the config file's folder): those the
    rules use and every other image in their folders (a studio keeps its scenes together; the one it wants for this
    shot is seldom the one a rule names), and ``also`` (the job's own). At most ``MAX_SCENES``, in name order."""
    named = [s for s in (_written_scene(r) for r in rules) if s]
    found = set(named) | ({also} if also else set())
    for folder_written in dict.fromkeys(str(PurePath(s).parent) for s in named):
        folder = config.resolve(folder_written)
        try:
            names = sorted(entry.name for entry in os.scandir(folder) if entry.is_file())
        except OSError:
            continue  # the rule's own scene is still offered; the run will say what is wrong with the folder
        for name in names:
            if not is_ignored_name(name) and name.rsplit(".", 1)[-1].lower() in INPUT_EXTENSIONS:
                found.add(name if folder_written == "." else str(PurePath(folder_written) / name))
    return sorted(found)[:MAX_SCENES]


def anchors() -> list[str]:
    field = next(f for f in dataclasses.fields(CropsOptions) if f.name == ANCHOR[1])
    return list(field.metadata.get("choices") or ())


# ---------------------------------------------------------------------------------------------- answers
def _wants_json(request: Request) -> bool:
    return "application/json" in request.headers.get("accept", "")


def _answer(request: Request, decision: Decision, job_id: int | None, back: str) -> Response:
    """JSON for the page's script (the job's outputs as they are now), else back to the page with a flash."""
    if _wants_json(request):
        store: Store = request.app.state.store
        body: dict[str, Any] = {"lines": decision.lines, "problems": decision.problems}
        if job_id is not None:
            body["outputs"] = {str(k): v for k, v in output_states(store, job_id).items()}
            body["next_awaiting"] = store.next_awaiting(after=job_id)
        return JSONResponse(body, status_code=200 if not decision.problems or decision.done else 409)
    request.session["flash"] = {"lines": decision.lines[-20:], "problems": decision.problems[-20:]}
    return RedirectResponse(back, status_code=303)


async def _form(request: Request) -> Any:
    return await request.form()


def _ids(values: list[Any]) -> list[int]:
    return [int(v) for v in values if str(v).strip().isdigit()]


# ---------------------------------------------------------------------------------------------- routes
async def approve_job(request: Request) -> Response:
    """POST /jobs/{id}/approve: the outputs ``output`` (one or more), or every one of the job awaiting approval."""
    config, store = request.app.state.config, request.app.state.store
    job_id = request.path_params["job_id"]
    form = await _form(request)
    decision = Decision()
    wanted = _ids(form.getlist("output"))  # none: every output of the job awaiting approval
    decision.add(await run_in_threadpool(lambda: approve(config, store, job_ids=[job_id], output_ids=wanted, by=BY)))
    return _answer(request, decision, job_id, f"/jobs/{job_id}")


async def reject_job(request: Request) -> Response:
    """POST /jobs/{id}/reject: ``reason`` (required), the outputs ``output`` or every one awaiting approval."""
    config, store = request.app.state.config, request.app.state.store
    job_id = request.path_params["job_id"]
    form = await _form(request)
    reason = str(form.get("reason") or "")
    decision = Decision()
    wanted = _ids(form.getlist("output"))
    if not " ".join(reason.split()):
        decision.problems.append("nothing rejected: type the reason first (one line: what is wrong with it)")
    else:  # the job scopes the outputs given (approval refuses another job's); none given: all of it awaiting
        decision.add(await run_in_threadpool(
            lambda: reject(config, store, job_ids=[job_id], output_ids=wanted, reason=reason, by=BY)))
    return _answer(request, decision, job_id, f"/jobs/{job_id}")


async def approve_all(request: Request) -> Response:
    """POST /approve-all: every output awaiting approval of the jobs finished since ``since`` (the night view's
    time; without one: every output awaiting approval)."""
    config, store = request.app.state.config, request.app.state.store
    form = await _form(request)
    since_text = str(form.get("since") or "").strip()
    since = None
    if since_text:
        try:
            since = datetime.strptime(since_text, SINCE_FORMAT).timestamp()
        except ValueError:
            decision = Decision(problems=[f"nothing approved: {since_text!r} is not a time like 2026-11-30T18:00"])
            return _answer(request, decision, None, "/")
    decision = await run_in_threadpool(lambda: approve_all_pending(config, store, since=since, by=BY))
    return _answer(request, decision, None, safe_next(str(form.get("back") or "/")))


def next_awaiting(request: Request) -> Response:
    """GET /next-awaiting?after=ID: the next job awaiting approval (after this one; from the first again at the
    end), or the night view saying nothing awaits."""
    store: Store = request.app.state.store
    after = request.query_params.get("after", "")
    job_id = store.next_awaiting(after=int(after) if after.isdigit() else None)
    if job_id is None:
        request.session["flash"] = {"lines": ["no job awaits approval"], "problems": []}
        return RedirectResponse("/", status_code=303)
    return RedirectResponse(f"/jobs/{job_id}", status_code=303)


async def rerun_job(request: Request) -> Response:
    """POST /jobs/{id}/rerun: ``rule`` (default its own), ``scene`` / ``anchor`` (the ready-made options) and
    ``set`` (``STEP.OPTION=VALUE`` lines, as ``assetd rerun --set``) → a new job, linked to this one."""
    config, store = request.app.state.config, request.app.state.store
    job_id = request.path_params["job_id"]
    form = await _form(request)
    settings = []
    if str(form.get("scene") or "").strip():
        settings.append(f"{SCENE[0]}.{SCENE[1]}={str(form.get('scene')).strip()}")
    if str(form.get("anchor") or "").strip():
        settings.append(f"{ANCHOR[0]}.{ANCHOR[1]}={str(form.get('anchor')).strip()}")
    settings += [line.strip() for line in str(form.get("set") or "").splitlines() if line.strip()]
    rule_name = str(form.get("rule") or "").strip() or None

    def queue() -> tuple[Job, list[str], list[str]]:
        try:
            rules = load_rules(config)
        except ConfigError as exc:
            raise RerunError(f"job {job_id}: the rules cannot be read ({'; '.join(exc.problems)}); nothing queued") \
                from None
        overrides = parse_set(settings)
        moved: list[str] = []
        new = rerun(config, rules, store, job_id, rule=rule_name, overrides=overrides, lines=moved)
        source = store.get(job_id)
        rule = next(r for r in rules if r.name == new.rule)
        return new, moved, differences(source, rule, new.overrides) if source is not None else []

    try:
        new, moved, changes = await run_in_threadpool(queue)
    except RerunError as exc:
        if _wants_json(request):
            return JSONResponse({"lines": [], "problems": [str(exc)]}, status_code=409)
        request.session["flash"] = {"lines": [], "problems": [str(exc)]}
        return RedirectResponse(f"/jobs/{job_id}#rerun", status_code=303)
    line = (f"queued job {new.id}: re-run of job {job_id} (rule {new.rule}"
            + (f"; {', '.join(changes)}" if changes else "; as before") + "); the daemon picks it up")
    if _wants_json(request):
        return JSONResponse({"lines": [*moved, line], "problems": [], "job": new.id})
    request.session["flash"] = {"lines": [*moved, line], "problems": [], "link": [f"/jobs/{new.id}", f"job {new.id}"]}
    return RedirectResponse(f"/jobs/{job_id}#rerun", status_code=303)


def routes() -> list[BaseRoute]:
    return [Route("/jobs/{job_id:int}/approve", approve_job, methods=["POST"]),
            Route("/jobs/{job_id:int}/reject", reject_job, methods=["POST"]),
            Route("/jobs/{job_id:int}/rerun", rerun_job, methods=["POST"]),
            Route("/approve-all", approve_all, methods=["POST"]),
            Route("/next-awaiting", next_awaiting)]
