"""``assetd reprocess``: redo, on purpose and counted, the files a rule took before it changed.

A changed rule applies to new files (``on_rule_change: new_files``); the files it took under an
earlier version keep their outputs until this command queues them again. The plan is made first
(which files, how many outputs they have, which inputs are gone) so ``--dry-run`` shows exactly
what a real run would queue; a running daemon (or the next ``assetd run``) does the work.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .config import Config
from .intake import Intake
from .rules import Rule
from .store import Job, Store


@dataclass
class Plan:
    rule: Rule
    redo: list[Job] = field(default_factory=list)  # the latest job of each file to queue again
    missing: list[Job] = field(default_factory=list)  # their input file is gone: cannot be redone
    moved: list[Job] = field(default_factory=list)  # in done/ or error/ (after: move): moved back, then redone
    outputs: int = 0  # outputs the redone jobs have now (written again under the current rule)


def plan(store: Store, rule: Rule, *, since: float | None = None, everything: bool = False) -> Plan:
    """The files ``rule`` took (finished at or after ``since``) under an earlier version, or all of them."""
    result = Plan(rule=rule)
    for job in store.rule_inputs(rule.name, since):
        if job.rule_version == rule.version and not everything:
            continue
        if not Path(job.input_path).is_file():
            move = store.moved(job.id)
            if move is None or not Path(move.dest).is_file():
                result.missing.append(job)
                continue
            result.moved.append(job)
        result.redo.append(job)
        result.outputs += len(store.outputs(job.id))
    return result


def queue(config: Config, rules: list[Rule], store: Store, todo: Plan) -> tuple[list[int], list[str]]:
    """Queue every file of the plan under the rule as it is now, the moved ones first put back in their inbox
    (as ``assetd retry`` does); returns the job ids and one line per file moved back or left where it is."""
    from .inboxflow import bring_back

    lines, blocked = bring_back(store, [job.id for job in todo.moved])
    lines += list(blocked.values())
    intake = Intake(config, rules, store)
    ids: list[int] = []
    for job in todo.redo:
        if job.id in blocked:
            continue
        sub = intake.submit(Path(job.input_path), rule_name=todo.rule.name, reprocess=True)
        if sub.job is None:
            continue
        if not sub.created:  # the same content already has a job under the current version: run it again
            store.requeue([sub.job.id])
        ids.append(sub.job.id)
    return ids, lines
