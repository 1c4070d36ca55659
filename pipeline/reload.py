"""Hot reload: the config file and the rule files are watched while the daemon runs.

A change is read with the very functions the start uses (``load_config``, ``load_rules``) and handed to
``Daemon.apply``, which runs it for the jobs that start after it; a job already running its chain finishes under
the rule version (and the channels) it started with. What cannot change in a running process (``RESTART_ONLY``: the database, the
device, the model settings) keeps its running value, with a warning that it needs a restart; the rest of the
same change applies.

A broken file (bad YAML, an unknown key, a rule that does not validate, a model that does not load) changes
nothing: the last good config and rules keep running, every problem is logged at ERROR and one alert goes
out (the problem ``config`` of ``pipeline.health``, which pauses nothing); the next save that loads cleanly applies
and clears it (a log line and a "cleared" alert).

Watching is a poll of a *stat signature* (size, mtime, inode of the config file and of each ``*.yaml`` /
``*.yml`` in ``rules_dir``), every ``interval`` seconds on its own thread, rather than watchdog: two
stats and one directory listing are cheap, the same code works on SMB/NFS shares where inotify never fires,
and no observer has to be supervised and restarted when a share blips. A change is loaded once the
signature has stayed the same for one more interval: an editor's save (temp file, write, rename, chmod)
is several writes, and a file copied over the network arrives in pieces.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from .config import Config, load_config
from .errors import ConfigError
from .rules import Rule, load_rules

if TYPE_CHECKING:
    from .health import Problems

log = logging.getLogger("assetd.reload")

#: How often the files are looked at; a change is loaded once it has been still for one more interval.
CHECK_SECONDS = 2.0
#: Config keys a running daemon cannot change (the open database and its lock, the loaded models, the review
#: page's listening server and its token): a changed value keeps its running one until the next start, with a
#: warning; the rest of the change applies.
RESTART_ONLY = ("database", "device", "models", "review")

PROBLEM_KEY = "config"  # the problem process of a broken config or rule file (``pipeline.health``)

Signature = tuple[Any, ...]


def _stat(path: Path) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_size, st.st_mtime_ns, st.st_ino)


def signature(config_path: Path, rules_dir: Path) -> Signature:
    """What changes when the config file or a rule file is saved, added, removed or renamed."""
    try:
        with os.scandir(rules_dir) as entries:
            rules = sorted((e.name, _stat(Path(e.path))) for e in entries
                           if os.path.splitext(e.name)[1] in (".yaml", ".yml"))
    except OSError:
        rules = None
    return (_stat(config_path), str(rules_dir), rules)


def load_candidate(running: Config) -> tuple[Config, list[Rule], list[str]]:
    """Read the config file and the rules as the start does. Returns (config, rules, notes): the config keeps
    the running value of each ``RESTART_ONLY`` key, and ``notes`` says which changed and need a restart.
    Raises ConfigError listing every problem."""
    written = load_config(running.source)
    notes = [f"{running.source}: {key}: changed ({_shown(getattr(running, key))} → "
             f"{_shown(getattr(written, key))}); needs a restart, until then assetd keeps the running value"
             for key in RESTART_ONLY if getattr(written, key) != getattr(running, key)]
    config = dataclasses.replace(written, **{key: getattr(running, key) for key in RESTART_ONLY})
    return config, load_rules(config), notes


def _shown(value: Any) -> str:
    return "{...}" if dataclasses.is_dataclass(value) else str(value)


def config_changes(old: Config, new: Config) -> list[str]:
    """The top-level settings that differ (``channels``, ``notify``, ``workers``...), in the config's order."""
    return [f.name for f in dataclasses.fields(Config)
            if not f.metadata.get("internal") and getattr(old, f.name) != getattr(new, f.name)]


def rule_changes(old: list[Rule], new: list[Rule]) -> list[str]:
    """One phrase per rule added, removed, changed (a new version: what its outputs are made of) or
    re-matched (which files it takes, or the order rules are tried in)."""
    before, after = {r.name: r for r in old}, {r.name: r for r in new}
    phrases = [f"rule {name!r} added" for name in after if name not in before]
    phrases += [f"rule {name!r} removed" for name in before if name not in after]
    for name, rule in after.items():
        earlier = before.get(name)
        if earlier is None:
            continue
        if earlier.version != rule.version:
            phrases.append(f"rule {name!r} changed (version {earlier.version} → {rule.version})")
        elif earlier.match != rule.match:
            phrases.append(f"rule {name!r} changed (which files it takes)")
    if not phrases and [r.name for r in old] != [r.name for r in new]:
        phrases.append("rule order changed")
    if not phrases and old != new:
        phrases.append("rule files changed (their outputs do not)")
    return phrases


def summary(problems: list[str]) -> str:
    """The broken files' problems in one line (for ``assetd jobs`` and the alert; the log lists them all)."""
    more = f" (and {len(problems) - 1} more problem(s), listed in the log)" if len(problems) > 1 else ""
    first = " ".join(problems[0].split())  # a YAML error spans lines
    return f"config or rule file broken, not applied: {first}{more}; the last good config and rules keep running"


class Reloader:
    """Watches the daemon's config file and rules folder and applies a saved change (see the module docstring).

    ``apply(config, rules)`` is ``Daemon.apply``: it raises ConfigError to refuse a change (a model that does
    not load). ``health``: the daemon's problem processes; a broken file is the problem ``config`` there, with
    ``Scope.nothing()`` (nothing pauses: one alert when it starts, one when it clears, a line in ``assetd jobs``).
    ``check()`` is one look; ``run(stop)`` is the thread body, a look every ``interval`` seconds."""

    def __init__(self, config: Config, rules: list[Rule], apply: Callable[[Config, list[Rule]], None],
                 health: Problems | None = None, interval: float = CHECK_SECONDS):
        self.config = config  # what runs now
        self.rules = rules
        self.apply = apply
        self.health = health
        self.interval = interval
        self.problems: list[str] | None = None  # the broken files' problems, while they are broken
        self._restart_notes: list[str] = []  # the RESTART_ONLY changes already logged
        self._rules_dir = config.rules_dir  # the folder of the config that last loaded (a fix goes there)
        self._loaded = self._signature()  # the files as last read (applied, or found broken)
        self._seen = self._loaded

    def _signature(self) -> Signature:
        return signature(self.config.source, self._rules_dir)

    def run(self, stop: threading.Event) -> None:
        while not stop.wait(self.interval):
            try:
                self.check()
            except Exception:  # the watch must outlive anything (a bug in apply): the next save tries again
                log.exception("reloading the config and rules failed; the running set stays")

    def check(self) -> bool:
        """Load the files if they changed and have been still since the last look. True when it loaded."""
        now = self._signature()
        settled, self._seen = now == self._seen, now
        if now == self._loaded or not settled:
            return False
        self._loaded = now
        self.reload()
        if str(self._rules_dir) != now[1]:  # the config moved rules_dir: watch the new folder from now on
            self._loaded = self._seen = self._signature()
        return True

    def reload(self) -> None:
        """Read the files now; apply them, or keep the running set and report what is wrong."""
        try:
            config, rules, notes = load_candidate(self.config)
            self._rules_dir = config.rules_dir
            changes = rule_changes(self.rules, rules)
            settings = config_changes(self.config, config)
            if changes or settings:
                self.apply(config, rules)  # may refuse (ConfigError): a model that does not load
        except ConfigError as exc:
            self._broken(exc.problems)
            return
        self.config, self.rules = config, rules
        for note in notes:
            if note not in self._restart_notes:  # once per value written, not at every later reload
                log.warning("%s", note)
        self._restart_notes = notes
        if changes or settings:
            what = changes + ([f"config: {', '.join(settings)} changed"] if settings else [])
            log.info("reloaded: %s; new jobs use it", "; ".join(what))
        self._fixed()

    def _broken(self, problems: list[str]) -> None:
        if problems != self.problems:  # every save that is still broken lists its problems again
            log.error("config or rule file not applied (%d problem(s)); the last good config and rules keep "
                      "running until it is fixed:", len(problems))
            for problem in problems:
                log.error("  %s", problem)
        if self.health is not None:
            from .health import Scope

            self.health.start(PROBLEM_KEY, summary(problems), Scope.nothing())  # once: alerts on the first
        self.problems = problems

    def _fixed(self) -> None:
        if self.problems is None:
            return
        self.problems = None
        message = f"config and rule files load again ({self.config.source}, {self.config.rules_dir})"
        if self.health is None or not self.health.clear(PROBLEM_KEY, message):  # logs it ("cleared: ...")
            log.warning("%s", message)
