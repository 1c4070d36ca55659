"""The ``assetd`` command line: a thin click group over config, rules, store, worker and daemon.

Exit codes: 0 success; 1 a file (or check) failed; 2 usage or configuration error.
A bad command line gets click's usage message; every other error is printed as ``assetd: error: ...``.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import click

from . import __version__
from .config import Config, load_config
from .errors import AssetdError, ConfigError
from .rules import Rule, load_rules
from .store import AWAITING, REJECTED, REVIEW, JobStatus

CONFIG_HELP = "config file (YAML); relative paths in it resolve against its folder"


class CommandError(click.ClickException):
    """An error that is not the command line's fault (click.UsageError is for those): printed as
    ``assetd: error: ...`` without the usage banner. Exit code 2 for configuration problems (a config
    or rule file, a model that does not load, a second daemon), 1 for a runtime failure."""

    def __init__(self, problems: list[str] | str, exit_code: int = 2):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("\n".join(self.problems))
        self.exit_code = exit_code

    def show(self, file: Any = None) -> None:
        if len(self.problems) == 1:
            click.echo(f"assetd: error: {self.problems[0]}", file=file, err=True)
        else:
            kind = "configuration problems" if self.exit_code == 2 else "problems"
            click.echo(f"assetd: error: {len(self.problems)} {kind}:", file=file, err=True)
            for problem in self.problems:
                click.echo(f"  {problem}", file=file, err=True)


class _Group(click.Group):
    """Turns an assetd error that a command did not handle into a CommandError, never a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ConfigError as exc:
            raise CommandError(exc.problems) from None
        except AssetdError as exc:
            raise CommandError(str(exc), exit_code=1) from None


def _load(config_path: str, rule: str | None = None) -> tuple[Config, list[Rule]]:
    try:
        config = load_config(config_path)
        rules = load_rules(config, only=rule)
    except ConfigError as exc:
        raise CommandError(exc.problems) from None
    return config, rules


def _load_config(config_path: str) -> Config:
    """The config alone, for the commands that read the job store (a rule file broken while the daemon runs must not
    stop `assetd jobs` or `assetd retry`)."""
    try:
        return load_config(config_path)
    except ConfigError as exc:
        raise CommandError(exc.problems) from None


def _config_to_list(config_path: str) -> Config:
    """The config for ``assetd jobs``. A config file that does not load (saved broken while the daemon runs on its
    last good version) still names its database: the jobs are listed from there after one warning naming the
    file and its first problem (``config.database_only``); with no database there, the problems as usual."""
    from .config import database_only

    try:
        return load_config(config_path)
    except ConfigError as exc:
        config = database_only(config_path)
        if config is None or not config.database.is_file():  # never create a database to list nothing
            raise CommandError(exc.problems) from None
        first = exc.problems[0].removeprefix(f"{config.source}: ")
        more = (f"; {len(exc.problems) - 1} more: assetd check --config {config_path}"
                if len(exc.problems) > 1 else "")
        click.echo(f"assetd: warning: {config.source} is broken ({first}{more}); showing the jobs in "
                   f"{config.database}", err=True)
        return config


def _setup_logging(level: str) -> None:
    logging.basicConfig(level=getattr(logging, level.upper()), stream=sys.stderr,
                        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s", datefmt="%Y-%m-%d %H:%M:%S")


def _config_option(f: Any) -> Any:
    # a plain path: a config file that is missing, unreadable or a folder is a configuration error (exit 2, no
    # usage banner) reported by load_config, not a command-line mistake
    return click.option("--config", "-c", "config_path", required=True, type=click.Path(),
                        help=CONFIG_HELP)(f)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="assetd")
def cli() -> None:
    """assetd: watched-folder asset pipeline for photo studios.

    Drop shots into an inbox; each is matched against the YAML rules and run through its
    rule's steps, in the rule's order, typically: retouch (backdrop spots, a painted
    NAME.remove.png) → remove_background → recolor (colourways) → place_in_scene (a scene,
    one variant per scene or per generated seed, a reference image, or an instruction edit
    with the product pasted back) → tone_match → crops → upscale. Outputs land in channel
    folders, one file per ratio and variant.

    Each step changes only what it says: the subject's pixels stay the input's except
    where recolor, tone_match or a painted mask change them on purpose (the manifest
    and the review page say so). `assetd explain FILE` shows what happens to one file.
    """


@cli.command()
@_config_option
def run(config_path: str) -> None:
    """Run the daemon: watch the inboxes and process files until SIGINT/SIGTERM.

    Example: assetd run --config studio.yaml
    """
    from .daemon import Daemon

    config, rules = _load(config_path)
    _setup_logging(config.log_level)
    try:
        code = Daemon(config, rules).run()
    except ConfigError as exc:  # a model does not load, or another daemon holds the database
        raise CommandError(exc.problems) from None
    sys.exit(code)


@cli.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path())
@_config_option
@click.option("--rule", "rule_name", help="use this rule for every file instead of matching")
@click.option("--json", "as_json", is_flag=True, help="print one JSON document with every result to stdout")
@click.option("--force", is_flag=True, help="process again even when this content was already done, running the chain "
              "(never copying a renamed twin's outputs)")
def process(paths: tuple[str, ...], config_path: str, rule_name: str | None, as_json: bool, force: bool) -> None:
    """Process files and folders once, with the daemon's rules, chain and channels.

    Exit 0 when every input succeeded, 1 when any failed, 2 for usage or configuration errors.
    Ctrl-C (or SIGTERM) finishes the current file, then stops (exit 130, or 143); a second one stops
    at once, handing the current file's job back to the queue.

    Example: assetd process shots/ --config studio.yaml --json
    """
    from .oneshot import ResultStatus, Stopper, output_folder_holding, output_folders, run_once

    config, rules = _load(config_path, rule_name)
    _setup_logging("warning" if as_json else config.log_level)
    missing = [p for p in paths if not os.path.lexists(p)]
    if missing:
        raise click.UsageError(f"no such file or folder: {', '.join(missing)}")
    written = output_folders(config)
    for p in paths:
        if (held := output_folder_holding(Path(p), written)) is not None:
            raise click.UsageError(f"{p}: inside the folder of {held[0]} ({held[1]}); "
                                   "its files are outputs, not inputs")
    show_progress = not as_json and sys.stderr.isatty()
    try:
        with Stopper() as stopper:  # Ctrl-C: finish the current file, then stop; again: stop at once
            results = run_once(config, rules, [Path(p) for p in paths], rule_name=rule_name, force=force,
                               progress=show_progress, stopper=stopper)
    except ConfigError as exc:  # a model the rules need does not load: nothing was taken
        raise CommandError(exc.problems) from None
    if as_json:
        click.echo(json.dumps({"results": results}, indent=2))
    else:
        for r in results:
            mark = {ResultStatus.DONE: "✓", ResultStatus.FAILED: "✗", ResultStatus.SKIPPED: "·",
                    ResultStatus.STOPPED: "■"}[r["status"]]
            error = (r["error"] or "").removeprefix(f"{r['input']}: ")  # the line names the file already
            click.echo(f"{mark} {r['status']:7s} {r['input']}" + (f"  ({error})" if error else ""))
            for reason in r["review"]:
                click.echo(f"      ⚑ needs review: {reason}")
            for o in r["outputs"]:
                waits = f"  (awaits approval; staged at {o['staged_path']})" if o.get("staged_path") else ""
                click.echo(f"      {o['channel']:>10s} → {o['path']}  {o['width']}×{o['height']}{waits}")
    if any(r["status"] is ResultStatus.STOPPED for r in results):
        sys.exit(stopper.exit_code)
    sys.exit(1 if any(r["status"] is ResultStatus.FAILED for r in results) else 0)


@cli.command()
@_config_option
def check(config_path: str) -> None:
    """Validate the config and the rules (and that configured models load offline).

    Also measures the volumes assetd writes to: a problems.min_free or resume_free larger than a volume, or a
    resume_free below min_free there, is a problem (`assetd run` refuses to start with it too).
    Prints every problem found; exits 1 when there are any.

    Example: assetd check --config studio.yaml
    """
    from .checks import run_checks

    try:
        config = load_config(config_path)
    except ConfigError as exc:
        click.echo("✗ " + "\n✗ ".join(exc.problems), err=True)
        sys.exit(1)
    problems, warnings, info = run_checks(config)
    for line in info:
        click.echo(f"✓ {line}")
    for line in warnings:
        click.echo(f"! {line}", err=True)
    for line in problems:
        click.echo(f"✗ {line}", err=True)
    sys.exit(1 if problems else 0)


@cli.command()
@click.argument("file", type=click.Path())
@_config_option
def explain(file: str, config_path: str) -> None:
    """Say which rule takes FILE and why each other rule does not.

    FILE is matched exactly as the daemon matches it: by its path relative to the innermost inbox
    holding it (a file outside every inbox: by its name alone, as `process` does). Exit 1 when no
    rule takes it, or when FILE does not exist (the rules are still shown for its name). For a mask
    (NAME.remove.png...): whose it is and whether its shot's rule reads it; exit 1 when it is unused
    or no shot lies beside it (then where its shot went, when after: move moved it).

    Example: assetd explain inbox/products/shoe.jpg --config studio.yaml
    """
    from .ignore import is_sidecar_mask
    from .intake import inbox_of, relative_path
    from .oneshot import output_folder_holding, output_folders
    from .rules import match_rule
    from .stages.masks import mask_kind
    from .watcher import is_ignored

    config, rules = _load(config_path)
    path = Path(os.path.abspath(file))
    written = output_folder_holding(path, output_folders(config))
    if written is not None:
        click.echo(f"{path}: inside the folder of {written[0]} ({written[1]}): an output, never an input; "
                   "neither the daemon nor `assetd process` takes it")
        sys.exit(1)
    aside = inbox_of(config, path)
    if aside is not None and aside.sets_aside(path):
        click.echo(f"{path}: in the done or error folder of inbox {aside.path} (after: move): neither the daemon "
                   "nor `assetd process` takes it; `assetd retry JOB_ID` moves it back")
        sys.exit(1)
    if mask_kind(path) is not None and is_sidecar_mask(path, Path(os.path.abspath(aside.path)) if aside else None):
        sys.exit(0 if _explain_mask(config, rules, path) else 1)
    rel = relative_path(config, path, None)
    chosen = match_rule(rules, rel)
    click.echo(f"{path}  (matched as {str(rel)!r})")
    missing = not os.path.lexists(path)
    if missing:
        click.echo(f"  {path} does not exist; this is what would happen to a file of this name")
    inbox = inbox_of(config, path)
    if inbox is None:
        click.echo("  not inside an inbox: the daemon never sees it; `assetd process` matches it by its name alone")
    elif not inbox.recursive and len(rel.parts) > 1:
        click.echo(f"  the daemon never sees this file: inbox {inbox.path} does not watch sub-folders "
                   "(recursive: false)")
    if is_ignored(path, Path(os.path.abspath(inbox.path)) if inbox else None):
        click.echo("  the watcher ignores this name (temporary or system file)")
    takes = "would take a file of this name" if missing else "takes it"
    for rule in rules:
        reason = rule.why_not(rel)
        if rule is chosen:
            click.echo(f"  ✓ {rule.name} ({rule.path.name}): {takes}")
        elif reason is None:
            click.echo(f"  · {rule.name} ({rule.path.name}): would match, but {chosen.name} comes first")
        else:
            click.echo(f"  ✗ {rule.name} ({rule.path.name}): {reason}")
    if chosen is None:
        click.echo("→ no rule takes this file; it would be left alone")
        sys.exit(1)
    steps = " → ".join(f"{s.step}[{s.backend}]" for s in chosen.steps)
    click.echo(f"→ {chosen.name}: {steps}; outputs to {', '.join(sorted({o.channel for o in chosen.outputs}))}")
    if missing:
        sys.exit(1)


def _explain_mask(config: Config, rules: list[Rule], path: Path) -> bool:
    """``assetd explain shot.remove.png``: whose mask it is, which steps read such a mask, and whether the rule that
    takes its shot has one (a mask is never an input; it is part of its shot's job). With no shot beside it: where
    its shot went when ``after: move`` moved it (the store knows), and the command that redoes it with the mask.
    Returns whether a shot's rule reads it (the mask is fine)."""
    from .intake import relative_path, where_its_shot_went
    from .rules import match_rule
    from .stages.masks import mask_kind, read_by, readers, shots_of

    kind = mask_kind(path)
    assert kind is not None
    shots = shots_of(path)
    stem = path.name[:-len(f".{kind}.png")]
    whose = " and ".join(s.name for s in shots) or f"{stem}.<image> (none lies beside it now)"
    click.echo(f"{path}: a {kind} mask for {whose} (read by {' and by '.join(readers(kind))}); never taken as an "
               "input")
    if not shots and Path(config.database).is_file():  # never create a database to explain a file
        where = where_its_shot_went(_open_store(config), path)
        if where is not None:
            click.echo(f"  {where}")
    used = False
    for shot in shots:
        rule = match_rule(rules, relative_path(config, shot, None))
        if rule is None:
            click.echo(f"  {shot.name}: no rule takes it, so nothing reads this mask")
            continue
        steps = read_by(rule, kind)
        if steps:
            used = True
            click.echo(f"  {shot.name}: rule {rule.name!r} reads it ({', '.join(steps)}); a change to it queues "
                       f"{shot.name} again as a new job")
        else:
            click.echo(f"  {shot.name}: rule {rule.name!r} has no step that reads it (needs "
                       f"{' or '.join(readers(kind))}); it is not used")
    return used


@cli.command()
@_config_option
@click.option("--status", type=click.Choice([*(s.value for s in JobStatus), REVIEW, AWAITING, REJECTED]),
              help="only jobs in this state; review: done jobs marked for review; awaiting: done jobs with outputs "
                   "awaiting approval; rejected: done jobs with rejected outputs not replaced since")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="only the newest this many jobs")
@click.option("--json", "as_json", is_flag=True, help="print JSON instead of a table")
def jobs(config_path: str, status: str | None, limit: int | None, as_json: bool) -> None:
    """List jobs, oldest first, with their state, attempts, inbox, time, errors and review reasons.

    One line per job, fitted to the terminal (long cells end in …; --json has everything). State
    "next": a running job only claimed to be read ahead while the one before it runs (nothing of it ran
    yet; the summary counts it apart from running). Time is
    when the job finished (queued and running jobs: when it was queued), in local time. Inbox (shown
    when the jobs come from more than one folder) is the folder the file was matched under (for
    `assetd process` outside the inboxes: the folder given). Note is the error, or for a done job
    marked for review (a stage doubted its result; the outputs were written) ⚑ and its first reason;
    a re-run's (`assetd rerun`) starts with "re-run of N"; ◷ N awaits approval: outputs of a publish:
    on_approval channel wait for `assetd approve`; ✗ N rejected: outputs rejected (`assetd reject`, the review
    page) and not replaced since by a re-run's (the summary line counts both, over all jobs); "outputs
    replaced by job N": a later job (a re-run, the file dropped again) wrote them again, and the channel
    folders hold that job's. After the table, one line per problem process pausing the running daemon (a disk below
    problems.min_free, the GPU, a model, an unreachable inbox): "paused since HH:MM: ...".
    A config file that does not load (saved broken while the daemon runs) still lists the jobs of
    the database it names, or of the default one beside it, after a warning naming its first problem.

    Example: assetd jobs --config studio.yaml --status failed --limit 20
    """
    from . import listing

    config = _config_to_list(config_path)
    store = _open_store(config)
    rows = store.jobs(status, limit)
    if as_json:
        click.echo(json.dumps({"jobs": listing.as_documents(store, rows)}, indent=2))
        return
    for line in listing.table(rows, config.base_dir, _terminal_width(), store.awaiting_counts(),
                              store.rejected_counts(), store.replaced_by()):
        click.echo(line)
    counts = store.counts()
    ahead = store.read_ahead_count()  # "running" but only read ahead: said apart, as the table's "next"
    counts[JobStatus.RUNNING.value] -= ahead
    to_review = store.review_count()
    to_approve, rejected = store.awaiting_total(), store.rejected_total()
    shown = f"showing the newest {limit}; all jobs: " if limit and len(rows) == limit else ""
    parts = [f"{n} {s}" + (f" ({to_review} need review)" if s == JobStatus.DONE and to_review else "")
             for s, n in counts.items() if n or s != JobStatus.SUPERSEDED]  # a rare state: named when there are some
    if ahead:
        parts.insert(list(counts).index(JobStatus.RUNNING.value) + 1, f"{ahead} next (read ahead, not started)")
    if to_approve:
        parts.append(f"{to_approve} output{'s' if to_approve != 1 else ''} await{'s' if to_approve == 1 else ''} "
                     f"approval (assetd approve)")
    if rejected:
        parts.append(f"{rejected} output{'s' if rejected != 1 else ''} rejected (assetd jobs --status rejected)")
    click.echo(shown + ", ".join(parts))
    for line in _paused_lines(store, config):
        click.echo(line)
    orphans = _orphaned(store, config)
    if orphans:
        click.echo(f"job(s) {', '.join(map(str, orphans))} marked running belong to an assetd that has stopped: the "
                   f"next `assetd run` queues them again, or now: assetd retry {' '.join(map(str, orphans))} "
                   f"--config {config_path}")


def _orphaned(store: Any, config: Any) -> list[int]:
    """The running jobs whose owner is known to be gone (an assetd killed on this host)."""
    from .owners import OwnerState, owner_state

    return [j.id for j in store.jobs(JobStatus.RUNNING.value)
            if owner_state(j.worker, config.database) is OwnerState.GONE]


def _paused_lines(store: Any, config: Any) -> list[str]:
    """One line per problem process pausing the running daemon's work (none when no daemon runs: its
    successor measures again)."""
    from .listing import problem_lines

    return problem_lines(store, config.database)


def _open_store(config: Any) -> Any:
    """The job store, closed when the command ends (however it ends)."""
    from .store import Store

    store = Store(config.database)
    click.get_current_context().call_on_close(store.close)
    return store


def _terminal_width() -> int:
    """COLUMNS when set, else the terminal's width; 240 when the output is not a terminal (a file, a pipe)."""
    columns = os.environ.get("COLUMNS", "")
    if columns.isdigit():
        return int(columns)
    return shutil.get_terminal_size().columns if sys.stdout.isatty() else 240


@cli.command()
@click.argument("job_ids", nargs=-1, type=int)
@_config_option
@click.option("--failed", is_flag=True, help="retry every failed job")
def retry(job_ids: tuple[int, ...], config_path: str, failed: bool) -> None:
    """Queue failed (or done) jobs again; a running daemon picks them up.

    A job still marked running whose owner is gone (a killed assetd on this host) is queued again at
    once; one whose owner is still at work is left alone. An input that its inbox's `after: move` put
    into done/ or error/ is moved back to where it was first (its .error.txt removed); when that place
    is taken by another file, the job is left as it is and the command says so (exit 1), as for a job
    named whose file has since run again as a later job (the line names it; --failed skips those). A job whose
    shot has other masks beside it now (a NAME.remove.png painted after it was done and moved) runs
    with them, and the command says so: that is how a late mask gets used.

    Example: assetd retry --failed --config studio.yaml
    """
    from .retrying import retry as queue_again

    if not job_ids and not failed:
        raise click.UsageError("give JOB_ID... or --failed")
    config = _load_config(config_path)
    store = _open_store(config)
    done = queue_again(config, store, job_ids, failed=failed)
    for line in done.lines:
        click.echo(line)
    for line in done.problems:
        click.echo(line, err=True)
    if not done.ok:
        sys.exit(1)


@cli.command()
@click.argument("job_ids", nargs=-1, type=int)
@click.option("--output", "output_ids", multiple=True, type=int, metavar="ID",
              help="approve this output only (an id from `assetd jobs --json` or the review page); repeat the option "
                   "for more (--output 31 --output 32); a rejected one is approved anew")
@click.option("--all-pending", is_flag=True, help="approve every output awaiting approval")
@_config_option
def approve(job_ids: tuple[int, ...], output_ids: tuple[int, ...], all_pending: bool, config_path: str) -> None:
    """Publish the outputs awaiting approval (channels with publish: on_approval).

    JOB_ID alone: every output of that job awaiting approval. --output ID: that output only (repeat the
    option for more); a JOB_ID given beside --output only says whose outputs they are: an output of another
    job is refused, and nothing else of the job is approved. Each job's outputs are checked against what the
    job wrote (a staged file changed or missing publishes none of that job's) and moved into their channel
    folders together, atomically; the same file's earlier output there is replaced. Something already approved
    is said and left as it is. Exit 1 when something could not be done, one line each.

    Examples: `assetd approve 12 14 --config studio.yaml` publishes every output of jobs 12 and 14 awaiting
    approval; `assetd approve --output 31 --output 32 --config studio.yaml` outputs 31 and 32 only; `assetd
    approve 12 --output 31 --config studio.yaml` output 31 only (refused unless it is job 12's).
    """
    from .approval import approve as approve_outputs
    from .approval import approve_all_pending

    if not job_ids and not output_ids and not all_pending:
        raise click.UsageError("give JOB_ID..., --output ID or --all-pending")
    config = _load_config(config_path)
    store = _open_store(config)
    decision = approve_outputs(config, store, job_ids=job_ids, output_ids=output_ids, by="cli")
    if all_pending:
        decision.add(approve_all_pending(config, store, by="cli"))
    _decided(decision)


@cli.command()
@click.argument("job_ids", nargs=-1, type=int)
@click.option("--output", "output_ids", multiple=True, type=int, metavar="ID",
              help="reject this output only (an id from `assetd jobs --json` or the review page); repeat the option "
                   "for more")
@click.option("--reason", required=True, help="why they are not to be published (recorded, shown on the review page)")
@_config_option
def reject(job_ids: tuple[int, ...], output_ids: tuple[int, ...], reason: str, config_path: str) -> None:
    """Keep outputs awaiting approval from being published, and record why.

    JOB_ID alone: every output of that job awaiting approval. --output ID: that output only (repeat the
    option for more); a JOB_ID given beside --output only says whose outputs they are, as for `assetd
    approve`. The staged files stay in the staging folder (a re-run replaces them; `assetd approve --output
    ID` can still approve one); `assetd jobs` marks the job (✗ N rejected). Exit 1 when something could not
    be done, one line each.

    Examples: `assetd reject 12 --reason "shadow cut off on the left" --config studio.yaml` rejects every
    output of job 12 awaiting approval; `assetd reject --output 31 --reason "label cut off" --config
    studio.yaml` output 31 only.
    """
    from .approval import reject as reject_outputs

    if not job_ids and not output_ids:
        raise click.UsageError("give JOB_ID... or --output ID")
    if not reason.strip():
        raise click.UsageError("--reason must say why (it is recorded)")
    config = _load_config(config_path)
    store = _open_store(config)
    _decided(reject_outputs(config, store, job_ids=job_ids, output_ids=output_ids, reason=reason, by="cli"))


def _decided(decision: Any) -> None:
    """Print an approval's lines (stdout) and problems (stderr); exit 1 when there are problems."""
    for line in decision.lines:
        click.echo(line)
    for line in decision.problems:
        click.echo(line, err=True)
    if decision.problems:
        sys.exit(1)


@cli.command()
@_config_option
@click.option("--listen", metavar="HOST:PORT", help="where to listen; default: review.listen, else 127.0.0.1:8765")
def serve(config_path: str, listen: str | None) -> None:
    """Serve the review page (the night's jobs, failures, /metrics) until Ctrl-C.

    It reads and changes the same job store as `assetd run`, which may run beside it (or serve the
    page itself: review.listen). Anything but loopback needs review.token or review.token_file (exit 2
    without).

    Example: assetd serve --config studio.yaml --listen 127.0.0.1:8765
    """
    from .web.security import exposure_problem
    from .web.server import DEFAULT_LISTEN, parse_listen, serve_forever

    config = _load_config(config_path)
    _setup_logging(config.log_level)
    listen = listen or config.review.listen or DEFAULT_LISTEN
    try:
        parse_listen(listen)
    except ValueError as exc:
        raise click.UsageError(f"--listen: {exc}") from None
    problem = exposure_problem(config, listen)
    if problem:
        raise CommandError(problem)
    try:
        serve_forever(config, listen)
    except OSError as exc:
        raise CommandError(f"review page: {exc}", exit_code=1) from None


@cli.command()
@_config_option
@click.option("--rule", "rule_name", required=True, help="the rule whose earlier files to redo")
@click.option("--since", type=click.DateTime(formats=["%Y-%m-%d", "%Y-%m-%dT%H:%M", "%Y-%m-%d %H:%M",
                                                      "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M:%S"]),
              help="only files whose last job finished at or after this local date (and time)")
@click.option("--all", "everything", is_flag=True, help="also the files already done under the rule as it is now")
@click.option("--dry-run", is_flag=True, help="say what would be queued and replaced; change nothing")
def reprocess(config_path: str, rule_name: str, since: Any, everything: bool, dry_run: bool) -> None:
    """Redo the files a rule took before it was changed (a changed rule applies to new files only).

    Says how many files it queues and how many of their outputs will be replaced; a running daemon
    (or the next `assetd run`) does the work.

    Example: assetd reprocess --rule products --since 2026-11-01 --dry-run --config studio.yaml
    """
    from .reprocess import plan, queue

    config, rules = _load(config_path, rule_name)
    store = _open_store(config)
    todo = plan(store, rules[0], since=since.timestamp() if since else None, everything=everything)
    which = "it took" if everything else "it took under an earlier version"
    click.echo(f"rule {rule_name} (version {rules[0].version}): {len(todo.redo)} file(s) {which}"
               + (f" since {since:%Y-%m-%d %H:%M:%S}" if since else "")
               + f"; their {todo.outputs} output(s) will be replaced")
    if todo.missing:
        click.echo(f"{len(todo.missing)} file(s) are no longer where they were and are not redone: "
                   + ", ".join(j.input_path for j in todo.missing[:5]) + (" …" if len(todo.missing) > 5 else ""))
    if todo.moved:
        click.echo(f"{len(todo.moved)} of them lie in a done or error folder (after: move): they are moved back "
                   "into their inbox first")
    if dry_run:
        click.echo("dry run: nothing was queued")
        return
    ids, moves = queue(config, rules, store, todo)
    for line in moves:
        click.echo(line)
    click.echo(f"queued {len(ids)} job(s)" + (": " + ", ".join(map(str, ids)) if ids else "")
               + ("; a running daemon picks them up, or the next `assetd run`" if ids else ""))


@cli.command()
@click.argument("job_id", type=int)
@_config_option
@click.option("--rule", "rule_name", help="run it under this rule instead of its own")
@click.option("--set", "settings", multiple=True, metavar="STEP.OPTION=VALUE",
              help="a step option for this job only, as in a rule file (a path relative to the config file's "
                   "folder); repeatable")
def rerun(job_id: int, config_path: str, rule_name: str | None, settings: tuple[str, ...]) -> None:
    """Run a finished job again as a new job, under another rule or with one-off step options.

    The options are checked as a rule file's are; a bad one queues nothing (exit 1). The new job is
    linked to the first ("re-run of N" in `assetd jobs`); when it has published its outputs they
    replace the first job's: same names are written again, and the first job's other outputs in
    those channels are removed (unless changed since). An input moved to done/ or error/ (after:
    move) is moved back first. The re-run uses the masks beside the shot (NAME.remove.png...) as
    they are now, and says so when they changed since. A running daemon (or the next `assetd run`)
    does the work.

    Example: assetd rerun 42 --set place_in_scene.scene=scenes/linen.jpg --config studio.yaml
    """
    from .rerun import RerunError, differences, parse_set, rerun as queue_rerun

    config, rules = _load(config_path)
    store = _open_store(config)
    lines: list[str] = []
    try:
        overrides = parse_set(list(settings))
        job = queue_rerun(config, rules, store, job_id, rule=rule_name, overrides=overrides, lines=lines)
    except RerunError as exc:
        raise CommandError(str(exc), exit_code=1) from None
    for line in lines:
        click.echo(line)
    source = store.get(job_id)
    rule = next(r for r in rules if r.name == job.rule)
    changes = differences(source, rule, job.overrides) if source is not None else []
    click.echo(f"queued job {job.id}: re-run of job {job_id} ({job.rel_path or job.input_path}, rule {job.rule}"
               + (f"; {', '.join(changes)}" if changes else "; as before") + ")")
    click.echo("a running daemon picks it up, or the next `assetd run`")

@cli.group()
def models() -> None:
    """Fetch and check the weights of model-backed backends."""


def _optional_config_option(f: Any) -> Any:
    return click.option("--config", "-c", "config_path", default=None, type=click.Path(),
                        help=CONFIG_HELP + "; without it: the built-in defaults")(f)


def _load_or_defaults(config_path: str | None) -> tuple[Config, list[Rule]]:
    """The config and rules, or without a config the built-in defaults: the default settings (so the
    default model cache) and one rule with the default step, a ``remove_background`` with its default
    backend (``studio``, whose model is the subject prior)."""
    if config_path is not None:
        return _load(config_path)
    from .config import config_from_dict
    from .rules import MatchSpec, StepSpec
    from .stages.base import stage_class

    config = config_from_dict({}, Path("(built-in defaults)").absolute())
    cls = stage_class("remove_background", None)
    step = StepSpec("remove_background", cls.backend, cls.Options())
    return config, [Rule(name="built-in-defaults", path=Path("(built-in)"), match=MatchSpec(), steps=[step], outputs=[])]


@models.command("pull")
@_optional_config_option
def models_pull(config_path: str | None) -> None:
    """Download every model the rules use into the cache (run while online); what is there is kept.

    Without --config: the built-in defaults, that is the studio backend's subject prior (U²-Netp,
    4.6 MB) into the default cache ($XDG_CACHE_HOME or ~/.cache, folder assetd).

    Example: assetd models pull --config studio.yaml
    """
    from .models import pull_models

    config, rules = _load_or_defaults(config_path)
    problems = pull_models(config, rules, click.echo)
    for p in problems:
        click.echo(f"✗ {p}", err=True)
    sys.exit(1 if problems else 0)


@models.command("check")
@_optional_config_option
def models_check(config_path: str | None) -> None:
    """Load every model the rules use, offline; name the missing ones and how to fetch them.

    A missing optional model (the subject prior with prior: auto) is a warning, not a failure. When no
    rule uses a model-backed step it says so, after the subject prior's state.
    Without --config: the built-in defaults (the subject prior in the default cache).

    Example: assetd models check --config studio.yaml
    """
    from .models import check_models, model_refs
    from .prior import prior_file

    config, rules = _load_or_defaults(config_path)
    refs = model_refs(config, rules)
    checked = check_models(config, rules)
    for ref in checked.loaded:
        where = f" ({prior_file(config)})" if ref.kind == "prior" else ""
        click.echo(f"✓ {ref.kind} model {ref.name} loads offline{where}")
    for w in checked.warnings:
        click.echo(f"! {w}", err=True)
    for p in checked.problems:
        click.echo(f"✗ {p}", err=True)
    if not any(ref.kind == "prior" for ref in refs):
        click.echo("· no rule uses the studio backend's subject prior (no studio step, or prior: off)")
    if not any(ref.kind != "prior" for ref in refs):
        click.echo("✓ no rule uses a model-backed step (rembg, diffusers or spandrel backend, or fill: generate)")
    elif not checked.problems:
        click.echo("✓ every model the rules use loads offline" if not checked.warnings
                   else "✓ every required model loads offline; the optional ones above are missing")
    sys.exit(1 if checked.problems else 0)


@cli.command()
@click.argument("directory", default="demo", type=click.Path(file_okay=False))
@click.option("--shots", type=int, default=6, help="how many synthetic shots to drop")
@click.option("--setup-only", is_flag=True, help="only write the workspace; do not run the daemon")
def demo(directory: str, shots: int, setup_only: bool) -> None:
    """Make a demo workspace, run the daemon on it, drop shots in, wait, report outputs.

    The shots wait in DIRECTORY/to-drop/ and are copied into DIRECTORY/inbox/products/ (with --setup-only: copy
    them yourself once `assetd run` is started).

    Example: assetd demo ./demo
    """
    from .demo import run_demo

    sys.exit(run_demo(Path(directory), shots=shots, setup_only=setup_only, echo=click.echo))


def main() -> None:
    cli(prog_name="assetd")


if __name__ == "__main__":
    main()
