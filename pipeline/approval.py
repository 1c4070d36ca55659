"""Approve before publishing: the outputs of a ``publish: on_approval`` channel wait in its staging folder until
someone approves them (``assetd approve``, the review page) or rejects them (``assetd reject``, with a reason).

Approving publishes a job's chosen outputs together, the way a job publishes (``outputs.FileSet``): each staged
file is read and checked against the sha256 its job recorded, written to a temporary file of assetd's pattern in
the channel folder, fsynced, then all are renamed; a staged file that changed or went missing publishes none of
that job's outputs. The claim, the renames and the record happen in one store transaction
(``Store.approval_claim``), so two approvals at once (the command line and the page) publish once. The earlier
file at a path (the same input's earlier job) is replaced and its record marked ``replaced_by``.

Rejecting records who and why (``decisions``); the staged file stays where it is (the page shows it) until its
job is re-run or the output is approved anew, and is never published otherwise.
"""
from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable

from .outputs import FileSet, one_line, sha256
from .store import APPROVED, PENDING, PENDING_APPROVAL, REJECTED, JobStatus, OutputRecord, Store
from .text import plural, printable

if TYPE_CHECKING:
    from .config import Config


@dataclass
class Decision:
    done: list[OutputRecord] = field(default_factory=list)  # outputs approved (now published) or rejected by this call
    lines: list[str] = field(default_factory=list)  # one line per job or output for the user
    problems: list[str] = field(default_factory=list)  # one line each: what could not be done, and why

    def add(self, other: "Decision") -> None:
        self.done += other.done
        self.lines += other.lines
        self.problems += other.problems


def approve(config: Config, store: Store, *, job_ids: Iterable[int] = (), output_ids: Iterable[int] = (),
            by: str) -> Decision:
    """Publish the outputs waiting for approval of ``job_ids`` (all of each job's) or, when ``output_ids`` are
    given, those outputs (a rejected one is approved anew; ``job_ids`` then only scope them: ``_select``) into
    their channel folders. Approving what is already published says so
    and does nothing (not a problem)."""
    decision = Decision()
    chosen = _select(store, job_ids, output_ids, APPROVED, decision)
    for job_id, records in chosen.items():
        decision.add(_publish(config, store, job_id, records, by))
    return decision


def reject(config: Config, store: Store, *, job_ids: Iterable[int] = (), output_ids: Iterable[int] = (),
           reason: str, by: str) -> Decision:
    """Record that the outputs waiting for approval of ``job_ids`` (or, given ``output_ids``, those outputs of
    them: ``_select``) are not to be published, and why (``reason``: one line). Their staged files stay where they
    are."""
    decision = Decision()
    reason = " ".join(str(reason or "").split())
    if not reason:
        decision.problems.append("a rejection needs a reason (one line: what is wrong with the outputs)")
        return decision
    chosen = _select(store, job_ids, output_ids, REJECTED, decision)
    for job_id, records in chosen.items():
        with store.approval_claim([r.id for r in records], [PENDING_APPROVAL]) as claimed:
            store.record_decision(claimed, REJECTED, by, reason)
        decision.done += claimed
        decision.lines += _decided_meanwhile(store, job_id, records, claimed)
        if claimed:
            folders = sorted({str(Path(r.staged_path).parent) for r in claimed if r.staged_path})
            decision.lines.append(f"job {job_id}{_input_of(store, job_id)}: {plural(len(claimed), 'output')} "
                                  f"rejected ({reason}); never published; the staged "
                                  f"{'file stays' if len(claimed) == 1 else 'files stay'} in {', '.join(folders)}")
    return decision


def approve_all_pending(config: Config, store: Store, *, since: float | None = None, by: str) -> Decision:
    """Approve every output waiting for approval (of jobs finished at or after ``since``); rejected ones stay
    rejected."""
    waiting = store.awaiting_approval(since)
    if not waiting:
        when = f" since {time.strftime('%Y-%m-%d %H:%M', time.localtime(since))}" if since is not None else ""
        return Decision(lines=[f"no output awaits approval{when}"])
    return approve(config, store, output_ids=[r.id for r in waiting if r.id is not None], by=by)


# ---------------------------------------------------------------------------------------------- inside
def _select(store: Store, job_ids: Iterable[int], output_ids: Iterable[int], verdict: str,
            decision: Decision) -> dict[int, list[OutputRecord]]:
    """The outputs to decide about, by job (in the order asked); what cannot be decided goes to ``decision``.

    Jobs alone: every output of each awaiting a decision. Outputs (``output_ids``): those outputs; jobs named
    beside them only scope them (``assetd approve 12 --output 31``: output 31, which must be job 12's), never
    add their other outputs: an output of another job is refused with a line, and so is a named job none of
    the outputs belongs to."""
    job_ids, output_ids = list(dict.fromkeys(job_ids)), list(dict.fromkeys(output_ids))
    chosen: dict[int, dict[int, OutputRecord]] = {}
    jobs_ok: dict[int, bool] = {}

    def job_ready(job_id: int, what: str) -> bool:
        if job_id not in jobs_ok:
            job = store.get(job_id)
            jobs_ok[job_id] = job is not None and job.status is JobStatus.DONE
            if job is not None and not jobs_ok[job_id]:
                verb = "approved" if verdict == APPROVED else "rejected"
                why = (f"its outputs can be {verb} once it is done" if job.status in PENDING else
                       f"nothing of it can be {verb}")
                subject = what if what == f"job {job_id}" else f"{what}: job {job_id}"
                decision.problems.append(f"{subject} is {job.status.value}; {why}")
        return jobs_ok[job_id]

    scope = []
    for job_id in job_ids:
        if store.get(job_id) is None:
            decision.problems.append(f"job {job_id}: no such job")
        else:
            scope.append(job_id)
    if output_ids:
        _select_outputs(store, output_ids, job_ids, scope, verdict, decision, job_ready, chosen)
        return {job_id: list(records.values()) for job_id, records in chosen.items()}
    for job_id in scope:
        if not job_ready(job_id, f"job {job_id}"):
            continue
        records = store.outputs(job_id)
        waiting = [r for r in records if r.approval == PENDING_APPROVAL and r.replaced_by is None]
        if waiting:
            chosen.setdefault(job_id, {}).update((r.id, r) for r in waiting)
            continue
        decision_line, problem = _nothing_waiting(job_id, records, verdict)
        (decision.problems if problem else decision.lines).append(decision_line)
    return {job_id: list(records.values()) for job_id, records in chosen.items()}


def _select_outputs(store: Store, output_ids: list[int], job_ids: list[int], scope: list[int], verdict: str,
                    decision: Decision, job_ready: Callable[[int, str], bool],
                    chosen: dict[int, dict[int, OutputRecord]]) -> None:
    """``_select`` for outputs given by id, within the jobs named (``job_ids``; those that exist: ``scope``)."""
    known = {r.id: r for r in store.outputs_by_id(output_ids)}
    given: set[int] = set()  # the named jobs an output given belongs to
    for output_id in output_ids:
        record = known.get(output_id)
        what = f"output {output_id}"
        if record is None:
            decision.problems.append(f"{what}: no such output")
            continue
        what += f" (job {record.job_id}, {printable(Path(record.path).name)})"
        if job_ids and record.job_id not in job_ids:
            named = " or ".join(f"job {i}" for i in job_ids)
            decision.problems.append(f"{what}: not an output of {named}; nothing done to it (the jobs named "
                                     "beside --output only say whose outputs they are)")
            continue
        given.add(record.job_id)
        if not job_ready(record.job_id, what):
            continue
        line, problem = _undecidable(store, what, record, verdict)
        if line:
            (decision.problems if problem else decision.lines).append(line)
            continue
        chosen.setdefault(record.job_id, {})[record.id] = record
    verb = "approve" if verdict == APPROVED else "reject"
    for job_id in scope:
        if job_id not in given:
            decision.problems.append(f"job {job_id}: none of the --output ids is one of its outputs; nothing done to "
                                     f"it (to {verb} every output of it awaiting approval, give the job without "
                                     "--output)")


def _nothing_waiting(job_id: int, records: list[OutputRecord], verdict: str) -> tuple[str, bool]:
    """Why job ``job_id`` has no output to decide about: (the line, whether it is a problem)."""
    live = [r for r in records if r.replaced_by is None]
    if not records:
        return f"job {job_id}: it has no outputs", True
    if any(r.approval == PENDING_APPROVAL for r in records) and not live:
        later = sorted({r.replaced_by for r in records if r.replaced_by is not None})
        return (f"job {job_id}: its outputs were replaced by job {', '.join(map(str, later))} (a later run of the same "
                "file); decide about that one instead"), True
    rejected = [r for r in live if r.approval == REJECTED]
    if rejected:
        if verdict == APPROVED:
            options = " ".join(f"--output {r.id}" for r in rejected)
            return (f"job {job_id}: no output awaits approval; {plural(len(rejected), 'output')} rejected "
                    f"(to approve anew: {options})"), True
        ids = " ".join(str(r.id) for r in rejected)
        return f"job {job_id}: already rejected ({plural(len(rejected), 'output')}: {ids})", False
    if all(r.approval is None for r in records):
        how = "nothing to approve" if verdict == APPROVED else "a published file is not taken back"
        return (f"job {job_id}: its outputs were published when it ended (its channels publish at once); {how}",
                verdict != APPROVED)
    if verdict == APPROVED:
        return f"job {job_id}: already approved; its outputs are published", False
    return f"job {job_id}: its outputs are already approved and published; a published file is not taken back", True


def _undecidable(store: Store, what: str, record: OutputRecord, verdict: str) -> tuple[str | None, bool]:
    """Why one output asked for by id cannot be decided about: (the line, whether it is a problem), or
    (None, False) when it can."""
    if record.replaced_by is not None:
        return (f"{what}: replaced by job {record.replaced_by}'s output (a later run of the same file); decide about "
                "that one instead"), True
    if record.approval is None:
        how = "nothing to approve" if verdict == APPROVED else "a published file is not taken back"
        return f"{what}: published when its job ended (channel {record.channel} publishes at once); {how}", \
            verdict != APPROVED
    if record.approval == APPROVED:
        if verdict == APPROVED:
            return f"{what}: already approved{_by_whom(store, record)}; published at {printable(record.path)}", False
        return f"{what}: already approved{_by_whom(store, record)} and published; a published file is not taken back", \
            True
    if record.approval == REJECTED and verdict == REJECTED:
        return f"{what}: already rejected{_by_whom(store, record)}", False
    return None, False


def _by_whom(store: Store, record: OutputRecord) -> str:
    """`` by cli at 08:12 (too dark)``: the last decision about ``record``, or ""."""
    last = store.last_decision(record.id) if record.id is not None else None
    if last is None:
        return ""
    reason = f" ({last['reason']})" if last.get("reason") else ""
    return f" by {last['by']} at {time.strftime('%H:%M', time.localtime(last['at']))}{reason}"


def _input_of(store: Store, job_id: int) -> str:
    job = store.get(job_id)
    return f" ({printable(Path(job.input_path).name)})" if job is not None else ""


def _decided_meanwhile(store: Store, job_id: int, asked: list[OutputRecord], claimed: list[OutputRecord]) -> list[str]:
    """Lines for the outputs another approval decided about between the look and the claim."""
    taken = {r.id for r in claimed}
    lines = []
    for record in store.outputs_by_id([r.id for r in asked if r.id not in taken]):
        state = record.approval if record.replaced_by is None else f"replaced by job {record.replaced_by}"
        lines.append(f"output {record.id} (job {job_id}): already {state}{_by_whom(store, record)}")
    return lines


def _publish(config: Config, store: Store, job_id: int, records: list[OutputRecord], by: str) -> Decision:
    """Publish ``records`` (one job's, waiting or rejected) together into their channel folders, or none of them."""
    decision = Decision()
    published: list[OutputRecord] = []
    claimed: list[OutputRecord] = []
    try:
        states = {PENDING_APPROVAL, *(r.approval for r in records if r.approval)}  # as chosen: a rejected one by id
        with store.approval_claim([r.id for r in records], states) as claimed:
            found, missing = _read_staged(claimed)
            job = store.get(job_id)
            missing += _strangers(store, claimed, job.finished_at if job is not None else None)
            if missing:
                none = ("its output was not published" if len(claimed) == 1 else
                        f"none of its {len(claimed)} outputs was published")
                decision.problems += [f"job {job_id}: {none}: {line}" for line in missing]
            elif claimed:
                with FileSet() as files:
                    for record, data in found:
                        files.add(Path(record.path), data)
                    files.publish()
                store.record_decision(claimed, APPROVED, by)
                published = claimed
    except OSError as exc:
        where = exc.filename or ", ".join(sorted({str(Path(r.path).parent) for r in records}))
        decision.problems.append(f"job {job_id}: could not publish into {where}: {exc.strerror or exc}; nothing of it "
                                 "was published; its outputs still await approval")
        return decision
    decision.lines += _decided_meanwhile(store, job_id, records, claimed)
    if not published:
        return decision
    for record in published:  # published and recorded: the staged copy has done its work
        if record.staged_path:
            with contextlib.suppress(OSError):
                os.unlink(record.staged_path)
    folders = sorted({str(Path(r.path).parent) for r in published})
    decision.done += published
    decision.lines.append(f"job {job_id}{_input_of(store, job_id)}: {plural(len(published), 'output')} published to "
                          f"{', '.join(printable(f) for f in folders)}")
    decision.add(_retire(config, store, job_id, {r.channel for r in published}))
    return decision


def _retire(config: Config, store: Store, job_id: int, channels: set[str]) -> Decision:
    """A re-run's outputs in ``channels`` are published now: the jobs it replaces lose theirs there that it did not
    write again (``rerun.retire_replaced``). Its own are published whatever happens here."""
    from .rerun import retire_replaced

    job = store.get(job_id)
    if job is None or job.rerun_of is None:
        return Decision()
    try:
        return Decision(lines=[f"job {job_id}: {line}" for line in retire_replaced(config, store, job, channels)])
    except Exception as exc:  # noqa: BLE001 - the outputs are published; what is left of the first job stays
        return Decision(problems=[f"job {job_id}: published, but the outputs it replaces could not be removed: "
                                  f"{one_line(str(exc)) or type(exc).__name__}"])


def _strangers(store: Store, records: list[OutputRecord], ended: float | None) -> list[str]:
    """One line per channel path holding a file that was put there or changed after the job ended (``ended``)
    and that assetd never recorded there: it is not overwritten. (What was there when the job ended, the job
    vetted as a job publishing at once does: the same input's earlier output, or its name would differ.)"""
    lines = []
    for record in records:
        path = Path(record.path)
        try:
            if ended is not None and path.stat().st_mtime < ended:
                continue
            data = path.read_bytes()
        except FileNotFoundError:
            continue
        except OSError as exc:
            lines.append(f"{printable(str(path))} cannot be read to check it is assetd's ({exc.strerror or exc})")
            continue
        if sha256(data) not in store.recorded_hashes(record.path):
            lines.append(f"{printable(str(path))} holds a file assetd did not write (put there or edited since); not "
                         "overwritten: move it away, then approve again")
    return lines


def _read_staged(records: list[OutputRecord]) -> tuple[list[tuple[OutputRecord, bytes]], list[str]]:
    """Each record's staged bytes, checked against the sha256 its job recorded; and one line per file that is
    missing or changed."""
    found, problems = [], []
    for record in records:
        staged = record.staged_path
        name = f"output {record.id}'s staged file {printable(staged or '(none recorded)')}"
        try:
            data = Path(staged).read_bytes() if staged else None
        except FileNotFoundError:
            data = None
        except OSError as exc:
            problems.append(f"{name} cannot be read ({exc.strerror or exc})")
            continue
        again = f"re-run the job to stage it anew (assetd retry {record.job_id})"
        if data is None:
            problems.append(f"{name} is missing; {again}")
        elif sha256(data) != record.sha256:
            problems.append(f"{name} changed since the job wrote it (its sha256 differs); {again}")
        else:
            found.append((record, data))
    return found, problems
