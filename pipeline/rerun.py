"""``assetd rerun``: a finished job done again, under another rule or with one-off step options, as a new job.

The morning review finds a shot placed on the wrong scene or framed from the wrong anchor; it is fixed by running
that one file again with another option (``--set place_in_scene.scene=scenes/linen.jpg``), or under another rule,
without editing a rule file for everyone. The new job is linked to the first (``jobs.rerun_of``), carries its
options (``jobs.overrides``, validated exactly as a rule file's: ``Rule.with_overrides``) and takes the next
``jobs.rerun_seq`` of that file, so the intake's duplicate detection (one job per content, rule version and path)
is untouched: a file dropped again is still "already done". The re-run reads the masks beside the shot
(``NAME.remove.png``...) as they are when it is queued, and its job records them (a re-run after a retoucher fixed a
mask is a typical use); the command says so when they changed since the first job.

Replacement waits for the new job's outputs to be published: for an at-once channel when the re-run finishes (the
worker calls ``retire_replaced``), for an ``on_approval`` channel when they are approved. An output of the same
name is simply written again (the same input's file); one the new job does not write (another rule, other names)
is removed by ``retire_replaced``, only while the file still holds the bytes recorded for it.
"""
from __future__ import annotations

import logging
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import yaml

from .config import Config
from .errors import ConfigError
from .inboxflow import bring_back
from .intake import content_hash, mask_digest, mask_hashes
from .stages.masks import masks_beside
from .outputs import sha256
from .rules import Rule
from .store import FINISHED, Job, JobStatus, Store
from .text import printable

log = logging.getLogger("assetd.rerun")


class RerunError(ValueError):
    """A re-run that cannot be queued: one line naming the job and the problem; nothing was queued."""


def parse_set(values: list[str]) -> dict[str, dict[str, Any]]:
    """``--set STEP.OPTION=VALUE`` values as overrides: ``["place_in_scene.scene=b.jpg", "crops.anchor=top"]`` →
    ``{"place_in_scene": {"scene": "b.jpg"}, "crops": {"anchor": "top"}}``. A value is read as a YAML scalar, as
    in a rule file (``0.5`` a number, ``true`` a boolean, ``'["1:1"]'`` a list, nothing at all null), except that
    ``#ffffff`` is the text, not a YAML comment."""
    overrides: dict[str, dict[str, Any]] = {}
    for value in values:
        key, eq, raw = value.partition("=")
        step, dot, option = key.strip().partition(".")
        if not eq or not dot or not step or not option or "." in option:
            raise RerunError(f"--set {value!r}: expected STEP.OPTION=VALUE, like place_in_scene.scene=scenes/b.jpg")
        try:
            parsed = yaml.safe_load(raw)
        except yaml.YAMLError:
            parsed = raw  # not YAML (an unbalanced quote): the text as it is, checked by the option's schema
        if parsed is None and raw.strip() not in ("", "~", "null", "Null", "NULL"):
            parsed = raw  # "#ffffff" is a YAML comment: on a command line it is the colour
        overrides.setdefault(step, {})[option] = parsed
    return overrides


def rerun(config: Config, rules: list[Rule], store: Store, job_id: int, *, rule: str | None = None,
          overrides: dict[str, dict[str, Any]] | None = None, lines: list[str] | None = None) -> Job:
    """Queue job ``job_id`` again as a new job (queued; a running daemon picks it up): under ``rule`` (default: its
    own) with ``overrides`` ({step: {option: value}}, for this job only; a re-run of a re-run under the same rule
    keeps that one's options, these on top). Raises RerunError, queueing nothing, when
    the job has not ended, the rule is unknown, an override does not validate (naming the step and option), or its
    input is gone or changed. An input its inbox's ``after: move`` put in done/ or error/ is brought back first, as
    ``assetd retry`` does; ``lines`` gets one line per input moved back."""
    source = store.get(job_id)
    if source is None:
        raise RerunError(f"job {job_id}: no such job")
    if source.status is JobStatus.SUPERSEDED:
        raise RerunError(f"job {job_id} was superseded (its file changed before it ran): re-run the job of the new "
                         "version instead")
    if source.status not in FINISHED:
        raise RerunError(f"job {job_id} is still {source.status.value}: re-run it once it has ended")
    name = rule or source.rule
    target = next((r for r in rules if r.name == name), None)
    if target is None:
        raise RerunError(f"job {job_id}: no rule named {name!r} (known: {', '.join(r.name for r in rules)})")
    if target.name == source.rule and source.overrides:  # a re-run of a re-run: its options, then these
        overrides = {step: dict(source.overrides.get(step, {}), **(overrides or {}).get(step, {}))
                     for step in {**source.overrides, **(overrides or {})}}
    try:
        effective = target.with_overrides(overrides, config)
    except ConfigError as exc:
        raise RerunError(f"job {job_id}: {'; '.join(exc.problems)}; nothing queued") from None
    problems = new_model_problems(config, rules, effective)
    if problems:
        raise RerunError(f"job {job_id}: {'; '.join(problems)}; nothing queued")
    mover = store.input_moved_by(source.input_path)
    if mover is not None:
        moved, blocked = bring_back(store, [mover])
        if blocked:
            raise RerunError(f"{blocked[mover]} (re-run of job {job_id})")
        if lines is not None:
            lines.extend(moved)
    path = Path(source.input_path)
    shown = printable(source.input_path)
    try:
        st = os.lstat(path)
        current = content_hash(store, path, st) if source.readable else source.input_hash
    except FileNotFoundError:
        raise RerunError(f"job {job_id}: its input {shown} is gone; nothing queued") from None
    except OSError as exc:
        raise RerunError(f"job {job_id}: cannot read its input {shown} ({exc.strerror or exc}); "
                         "nothing queued") from None
    if current != source.input_hash:
        raise RerunError(f"job {job_id}: {shown} has changed since the job took it (the new version has a job of its "
                         "own: re-run that one); nothing queued")
    masks = mask_digest(mask_hashes(store, path)) if source.readable else source.masks
    if masks != source.masks and lines is not None:
        beside = [printable(p.name) for p in masks_beside(path).values()]
        lines.append(f"job {job_id}: the masks beside {shown} changed since it ran (now: "
                     f"{', '.join(beside) or 'none'}); the re-run uses them as they are now, recorded in its job")
    new = store.add_rerun(source, rule=target.name, rule_version=target.version, overrides=overrides or {},
                          max_attempts=config.max_attempts, masks=masks)
    log.info("queued job %d: re-run of job %d: %s (rule %s%s)", new.id, job_id, shown, target.name,
             "; " + ", ".join(differences(source, target, overrides)) if overrides else "")
    return new


def new_model_problems(config: Config, rules: list[Rule], rule: Rule) -> list[str]:
    """A model the options bring in (another backend, another model) must load offline, as a reloaded rule's must
    (``Daemon.apply``): a re-run whose model is missing would otherwise pause its whole rule when it runs. Only
    the steps whose model no loaded rule uses already are loaded here."""
    from .models import check_models, model_refs

    known = {ref.key for ref in model_refs(config, rules)}
    steps = [s for s in rule.steps
             if any(ref.key not in known for ref in model_refs(config, [replace(rule, steps=[s])]))]
    return check_models(config, [replace(rule, steps=steps)]).problems if steps else []


def differences(source: Job, rule: Rule, overrides: dict[str, dict[str, Any]] | None) -> list[str]:
    """What a re-run of ``source`` under ``rule`` with ``overrides`` changes, one phrase each: ``rule a → b`` and
    ``STEP.OPTION: OLD → NEW`` (OLD as the rule file writes it, or "default")."""
    out = [f"rule {source.rule} → {rule.name}"] if rule.name != source.rule else []
    items = (rule.written or {}).get("steps") or []
    written = {next(iter(i)): (i[next(iter(i))] or {}) for i in items if isinstance(i, dict)}
    for step, values in (overrides or {}).items():
        for option, value in values.items():
            before = written.get(step, {}).get(option)
            out.append(f"{step}.{option}: {'default' if before is None else as_written(before)} → {as_written(value)}")
    return out


def as_written(value: Any) -> str:
    """An option's value as a rule file writes it: ``true``, ``null``, ``['1:1', '4:5']``, text as it is."""
    if isinstance(value, str):
        return value
    return yaml.safe_dump(value, default_flow_style=True, width=1 << 20).strip().removesuffix("...").strip()


def retire_replaced(config: Config, store: Store, job: Job, channels: set[str]) -> list[str]:
    """A re-run's outputs in ``channels`` are published: the outputs there of the jobs it replaces (the first job,
    its other re-runs) that it did not write again (another rule: other names) go. A file is removed only while
    it holds the bytes recorded for it (one edited or replaced since is left where it is); each record is marked
    ``replaced_by`` the re-run. Returns one line per file. Nothing for a job that is not a re-run."""
    if job.rerun_of is None or not channels:
        return []
    ours = {o.path for o in store.outputs(job.id)}
    lines: list[str] = []
    for earlier in store.rerun_family(job.id):
        if earlier.id == job.id or earlier.status is not JobStatus.DONE:
            continue
        for record in store.outputs(earlier.id):
            if record.channel not in channels or record.replaced_by is not None or record.path in ours:
                continue
            owner = store.output_owner(record.path)
            if owner is not None and owner["job_id"] != earlier.id:
                continue  # another job wrote that path since: the file is its own
            lines += _retire(store, earlier, job, record.path, record.sha256)
    return lines


def _retire(store: Store, earlier: Job, job: Job, path: str, recorded: str) -> list[str]:
    """Remove ``earlier``'s output file ``path`` when it still holds ``recorded``; mark its record replaced."""
    shown = printable(path)
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        store.mark_replaced(earlier.id, path, job.id)
        return []
    except OSError as exc:
        return [f"left {shown}: cannot read it ({exc.strerror or exc}); job {job.id} replaces job {earlier.id}"]
    if sha256(data) != recorded:
        store.mark_replaced(earlier.id, path, job.id)
        return [f"left {shown}: it changed since job {earlier.id} wrote it; job {job.id} replaces that job"]
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        return [f"left {shown}: cannot remove it ({exc.strerror or exc}); job {job.id} replaces job {earlier.id}"]
    store.mark_replaced(earlier.id, path, job.id)
    return [f"removed {shown}: job {earlier.id}'s output, replaced by re-run job {job.id}"]
