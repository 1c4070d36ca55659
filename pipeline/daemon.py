"""The daemon wires the watcher, the workers and the notifier together, and stops them gracefully.

Signal handlers only set a flag. On stop: the watcher stops taking files, each worker finishes or
hands back its current job (outputs are written atomically, so nothing half-written remains), the
notifier gets a moment to deliver, and the store is closed. A second signal exits at once, handing the
running jobs back to the queue first.

The config and rule files are watched while it runs (``pipeline/reload.py``); a saved change that loads is
handed to ``apply``, which runs it for the jobs that start from then on.
"""
from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

from .config import Config, InboxConfig
from .errors import ConfigError, StopRequested
from .health import Problems
from .intake import Intake
from .notify import Notifier
from .outputs import Publisher, remove_temp_files
from .previews import PreviewMaker
from .reload import CHECK_SECONDS as RELOAD_SECONDS, Reloader
from .reprocess import plan
from .owners import InstanceLock, Owner, OwnerState, owner_state
from .rules import Rule
from .store import DAEMON_STARTED, Job, Store, daemon_ran_before
from .watcher import InboxWatcher
from .worker import Worker, end_failed

log = logging.getLogger("assetd.daemon")
GCS_RECONNECT_SECONDS = 300  # RAY_gcs_rpc_server_reconnect_timeout_s: see Daemon.start


def _process_at_work(owner: str | None, database: Path) -> bool:
    """Whether a running job belongs to an ``assetd process`` that is still at work (not a dead daemon's)."""
    parsed = Owner.parse(owner)
    return parsed is not None and not parsed.is_daemon_worker and owner_state(owner, database) is OwnerState.ALIVE


class Daemon:
    def __init__(self, config: Config, rules: list[Rule], *, reload_seconds: float = RELOAD_SECONDS):
        self.config = config
        self.rules = rules
        self.stop_event = threading.Event()
        self.lock = InstanceLock(config.database)
        self.store: Store | None = None
        self.watcher: InboxWatcher | None = None
        self.notifier: Notifier | None = None
        self.intake: Intake | None = None
        self.problems: Problems | None = None
        self.workers: list[Worker] = []  # every worker started, retired ones included (their claims at stop)
        self._threads: list[threading.Thread] = []
        self.reloader: Reloader | None = None
        self.review: Any = None  # the review page's server (review.listen), a web.server.ReviewServer
        self.previews: PreviewMaker | None = None  # makes finished jobs' thumbnails and previews (previews.wanted)
        self._previews_thread: threading.Thread | None = None
        self._applying = threading.Lock()  # apply() and stop() never change the watcher at the same time
        self.reload_seconds = reload_seconds
        self.pool: Any = None  # executor: ray: the chain actors (scaleout.Pool)
        self.watch: Any = None  # executor: ray: the scaleout.ClusterWatch telling the cluster away
        self.outage = False  # the Ray cluster went away: ``stop`` hands everything back, then restarts assetd

    def start(self) -> None:
        self.lock.acquire()  # first: a refused second daemon loads nothing
        # a model that does not load stops a first start (exit 2: a setup error, most likely); one that ran before
        # pauses the rules using it instead (``_pause_unloaded``)
        ran_before = daemon_ran_before(self.config.database)
        unloaded: list[Any] | None = [] if ran_before else None
        self._check_free_space(ran_before)
        checked_models = self._check_models(unloaded=unloaded) if self.config.executor == "local" else None
        away = None  # executor: ray: why the cluster does not answer at start (it is waited for, below)
        if self.config.executor == "ray":  # each actor loads (and checks) the models on its own node
            from .scaleout import cluster_away, start_pool

            if self.config.workers != 1:
                log.warning("workers: %d is ignored under executor: ray (one job at a time per actor, ray.actors)",
                            self.config.workers)
            # Ray ends a driver whose cluster's head has been away for this long (60 s by default); assetd
            # notices in seconds (``ClusterWatch``) and hands everything back first, which may take longer
            os.environ.setdefault("RAY_gcs_rpc_server_reconnect_timeout_s", str(GCS_RECONNECT_SECONDS))
            away = cluster_away(self.config)
            if away is None or not ran_before:  # never ran: more likely a wrong address,
                self.pool = start_pool(self.config, self.rules, stop=self.stop_event)  # refused at once (exit 2)
                away = None
        store = self.store = Store(self.config.database, self.config.quarantine_after_crashes)
        self._start_review(store)
        self.notifier = Notifier(self.config, store)  # alerts queue in the outbox; delivery starts below
        self._recover(store)
        intake = self.intake = Intake(self.config, self.rules, store)
        self._requeue_changed_rules(store, intake)
        self._log_rule_changes(store)
        self.notifier.start()
        self._start_problems(store, self.notifier)
        self._pause_unloaded(unloaded or [])  # before any worker claims a job of those rules
        self._start_previews()
        if away is not None:
            self.pool = self._await_cluster(away)
            if self.pool is None:  # stopped while waiting
                return
        if self.pool is not None:
            self._watch_cluster()
            for actor, name in zip(self.pool.actors, self.pool.names):
                self._start_worker(actor=(actor, name))
        else:
            for i in range(self.config.workers):
                self._start_worker(models=checked_models if i == 0 else None)  # the first keeps the checked models
        self.watcher = self._start_watcher()
        self._start_reloader()
        store.set_state(DAEMON_STARTED, time.time())  # from now on a start is a restart (``daemon_ran_before``)
        log.info("assetd running: %d inbox(es), %d rule(s), %d worker(s)%s, database %s",
                 len(self.config.inboxes), len(self.rules), len(self.workers),
                 " (Ray actors)" if self.pool is not None else "", self.config.database)

    def _start_review(self, store: Store) -> None:
        """With ``review.listen``: the review page in a thread over the daemon's store. Refused (ConfigError, exit 2)
        on anything but loopback without an access token, or when it cannot listen there."""
        if not self.config.review.listen:
            return
        from .web.app import create_app
        from .web.security import exposure_problem
        from .web.server import ReviewServer

        listen = self.config.review.listen
        problem = exposure_problem(self.config, listen)
        if problem:
            raise ConfigError(problem)
        review = ReviewServer(create_app(self.config, store), listen)
        try:
            review.start()
        except OSError as exc:
            raise ConfigError(f"review.listen: {exc} (the address is taken, or not this machine's)") from None
        self.review = review

    def _start_previews(self) -> None:
        """The thread making each finished job's review images (``previews.PreviewMaker``): with it, the morning's
        first look at a job reads the cache instead of decoding every file. It makes them only while
        ``previews.wanted`` says the page is in use (checked per job: a reload may change that)."""
        maker = self.previews = PreviewMaker(self.config, self.stop_event)
        thread = self._previews_thread = threading.Thread(target=maker.run, name="assetd-previews", daemon=True)
        thread.start()

    def _start_worker(self, models: Any = None, actor: tuple[Any, str] | None = None) -> Worker:
        """A worker thread; with ``actor`` (executor: ray: its handle and name) a ``scaleout.RemoteWorker`` whose
        chain runs there."""
        n = len(self.workers) + 1  # never reused: a retired worker may still be finishing its job
        kwargs: dict[str, Any] = dict(stop=self.stop_event, on_failed=self.notifier.job_failed, problems=self.problems,
                                      wait_for_arrival=True,
                                      on_done=self.previews.offer if self.previews is not None else None)
        if actor is not None:
            from .scaleout import RemoteWorker

            worker: Worker = RemoteWorker(f"worker-{n}", self.config, self.store, self.rules, actor[0], actor[1],
                                          make_actor=self.pool.make_actor, watch=self.watch, **kwargs)
        else:
            worker = Worker(f"worker-{n}", self.config, self.store, self.rules, **kwargs)
        if models is not None:
            worker.ctx.models = models
        thread = threading.Thread(target=worker.run_forever, name=f"assetd-worker-{n}", daemon=True)
        self.workers.append(worker)
        self._threads.append(thread)
        thread.start()
        return worker

    # -- executor: ray: the cluster away ----------------------------------------------------------
    def _await_cluster(self, away: str) -> Any:
        """The cluster does not answer at start (``ray stop``, the head rebooting, assetd restarting itself after
        the cluster went away): rather than exit 2 (the service manager would give up on it as on a config error),
        wait for it with the ``ray`` problem active (logged, one alert once it lasts
        ``problems.alert_after_seconds``), looking again every ``problems.check_seconds``. Only a first start (no daemon
        has run on the database, ``store.daemon_ran_before``) is refused at once: there a wrong address is the likely cause. Returns
        the started pool, or None when stopped meanwhile. A cluster that answers but cannot hold the actors is
        a config error as at any start (ConfigError)."""
        from .scaleout import RAY_PROBLEM, ClusterWatch, cluster_away, start_pool

        assert self.problems is not None and self.store is not None
        waiting = sum(n for state, n in self.store.counts().items() if state in ("queued", "running"))
        problem = ClusterWatch(self.config, None).problem(waiting)
        self.problems.start_problem(problem)
        log.warning("ray.address: %s does not answer (%s); assetd waits for it, looking again every %gs (start the "
                    "head node there: `ray start --head`, README \"Scaling out\"; Ctrl-C or SIGTERM stops assetd)",
                    self.config.ray.address, away, self.config.problems.check_seconds)
        while not self.stop_event.wait(self.config.problems.check_seconds):
            away = cluster_away(self.config)
            if away is not None:
                log.debug("ray: still away: %s", away)
                continue
            try:
                pool = start_pool(self.config, self.rules, stop=self.stop_event)
            except ConfigError:
                if cluster_away(self.config) is not None:  # gone again while joining it
                    continue
                raise
            self.problems.clear(RAY_PROBLEM, f"ray: the cluster at {self.config.ray.address} answers again; "
                                             f"{len(pool.names)} actor(s) started; jobs go on")
            return pool
        return None

    def _watch_cluster(self) -> None:
        """A thread telling the cluster away (``scaleout.ClusterWatch``), idle daemon or not."""
        from .scaleout import ClusterWatch, head_address

        watch = self.watch = ClusterWatch(self.config, head_address(self.config))
        thread = threading.Thread(target=watch.run, args=(self.stop_event, self._cluster_gone),
                                  name="assetd-ray-watch", daemon=True)
        thread.start()

    def _cluster_gone(self) -> None:
        """The whole cluster went away: the ``ray`` problem pauses every job (the calls that fail now charge no
        job, the workers hand their jobs back), and assetd restarts itself to wait for it, since a Ray driver
        cannot leave a cluster whose node on this machine is gone and join again in the same process
        (``ray.shutdown()`` then ends the process)."""
        assert self.problems is not None and self.watch is not None
        self.outage = True
        problem = self.watch.problem()
        problem.alert_after = float("inf")  # the restarted process carries the problem and its alerts (one each way)
        self.problems.start_problem(problem)
        log.error("ray: the cluster went away (its head %s does not answer); assetd hands its jobs back uncharged "
                  "and restarts itself to wait for it", self.watch.address)
        self.stop_event.set()

    def _restart(self) -> None:
        """Start this command again in this process (``exec``): it waits for the cluster (``_await_cluster``)."""
        argv = [sys.executable, *sys.orig_argv[1:]]
        log.warning("restarting: %s", " ".join(argv))
        for handler in logging.getLogger().handlers:
            handler.flush()
        try:
            os.execv(sys.executable, argv)
        except OSError as exc:  # exit 1: a service manager (Restart=on-failure) starts it again
            log.error("could not restart assetd (%s); exiting 1 for the service manager to start it again", exc)
            raise SystemExit(1) from None

    def _start_watcher(self, inboxes: list[InboxConfig] | None = None) -> InboxWatcher:
        """The inbox watcher, at the start and after a reload that changed the inboxes. One rule for both: the
        store remembers each inbox folder watched on this database (``Store.inbox_watched``), and ``create: true``
        creates only one never watched; one watched before and missing now (renamed away while assetd was down, a
        share not mounted yet) is an inbox away (``_inbox_unreachable``), as when it goes while assetd runs."""
        assert self.store is not None
        watcher = InboxWatcher(self.config.inboxes if inboxes is None else inboxes, self.intake.on_settled,
                               rescan_seconds=self.config.rescan_seconds, logger=logging.getLogger("assetd.watcher"),
                               on_unreachable=self._inbox_unreachable,
                               on_reachable=lambda root: self._inbox_unreachable(root, None),
                               on_mask_alone=self.intake.on_mask_alone,
                               watched_before=self.store.inbox_watched, on_watching=self.store.record_inbox_watched)
        watcher.start()
        return watcher

    def _recover(self, store: Store) -> None:
        """What an assetd that died left: jobs it was running (a job whose run had started, or whose decode ahead
        was going with no run beside it, counts the crash; a run and a decode ahead both going charge neither,
        and each runs alone next; one only claimed ahead goes back untouched) and its temporary files in the
        output folders."""
        found = store.recover(keep=lambda owner: _process_at_work(owner, self.config.database))
        for together in found.shared:
            said = [f"job {i}" + (" (read ahead, decoding)" if i in found.reading else "") for i in together]
            log.warning("%s were %s in flight when assetd last stopped; %s charged, each runs alone next",
                        ", ".join(said[:-1]) + " and " + said[-1], "both" if len(said) == 2 else "all",
                        "neither is" if len(said) == 2 else "none is")
        if found.started:
            fates = [f"{len(found.started) - len(found.failed)} queued again"] + (
                [f"{len(found.failed)} failed for good"] if found.failed else [])
            decoding = sum(i in found.reading for i in found.started)
            log.warning("%d job(s) were running when assetd last stopped (a crash counted for each%s): %s%s",
                        len(found.started), f"; {decoding} of them while decoded ahead" if decoding else "",
                        ", ".join(fates),
                        f"; {len(found.ahead)} claimed ahead went back to the queue untouched" if found.ahead else "")
        elif found.ahead:
            log.info("%d job(s) claimed ahead when assetd last stopped went back to the queue untouched",
                     len(found.ahead))
        assert self.notifier is not None
        notifier = self.notifier

        def report(job: Job, error: str) -> None:
            log.error("job %d failed: %s", job.id, error)
            notifier.job_failed(job, error)

        end_failed(self.config, store, Publisher("recovery", self.config, store, None), found.failed, report)
        for folder, n in remove_temp_files(self.config).items():
            log.warning("%s: removed %d temporary file(s) left by an assetd that stopped while writing", folder, n)

    def _start_problems(self, store: Store, notifier: Notifier) -> Problems:
        """Problem processes (``health``): the volumes are measured once before any worker starts (none claims
        a job a full disk would refuse), then a monitor thread watches them, probes and sends delayed alerts."""
        problems = self.problems = Problems(store, notifier, self.config, rules=self.rules)
        problems.check()
        thread = threading.Thread(target=problems.run_monitor, args=(self.stop_event,), name="assetd-problems",
                                  daemon=True)
        self._threads.append(thread)
        thread.start()
        return problems

    def _inbox_unreachable(self, root: Path, reason: str | None) -> None:
        """The watcher cannot watch an inbox folder (``reason``), or watches it again (None); once per outage each.
        A problem process (``inbox:<root>``): the jobs of its files wait, the alert goes out once it has lasted
        ``problems.alert_after_seconds``; the watcher, watching it again, clears it."""
        key = f"inbox:{root}"
        if self.problems is None:  # not started (or stopped): the log line only
            log.log(logging.ERROR if reason else logging.WARNING, "inbox %s: %s", root, reason or "back")
        elif reason is not None:
            self.problems.start_problem(self.problems.inbox_problem(root, reason, probe=False))
        else:
            self.problems.clear(key, f"inbox {root} is back; its files are taken again")

    # -- hot reload (pipeline/reload.py) --------------------------------------------------------
    def _start_reloader(self) -> None:
        """Watch the config file and the rule files; a saved change is applied by ``apply``."""
        if self.reload_seconds <= 0:
            return
        self.reloader = Reloader(self.config, self.rules, self.apply, self.problems, interval=self.reload_seconds)
        thread = threading.Thread(target=self.reloader.run, args=(self.stop_event,), name="assetd-reload",
                                  daemon=True)
        self._threads.append(thread)  # joined at stop, with the workers
        thread.start()

    def apply(self, config: Config, rules: list[Rule]) -> None:
        """Run ``config`` and ``rules`` (reloaded while running) for the jobs that start from now on.

        As at a start: a model a new step needs must load (else ConfigError: nothing changes), queued jobs of a
        changed rule follow ``_requeue_changed_rules`` and each changed rule is logged by ``_log_rule_changes``
        (``on_rule_change: reprocess`` also rescans the inboxes, as a start does). A job already running its
        chain finishes under the rule version and channels it started with; a job claimed ahead adopts the new
        version when it starts (``Worker._adopt``). Inboxes change by restarting
        the watcher; workers are added, or the extra ones stop after their current job."""
        from .models import model_refs

        loaded = {ref.key for ref in model_refs(self.config, self.rules)}
        new_models = [r for r in rules if any(ref.key not in loaded for ref in model_refs(config, [r]))]
        if self.pool is not None:  # the actors load new models at first use, on their nodes (a problem pauses)
            if config.executor != self.config.executor or config.ray != self.config.ray:
                log.warning("%s: executor and ray: take effect at the next start (restart assetd); the actors "
                            "started with it go on", config.source)
            if new_models:
                log.info("rules %s use models the Ray actors have not loaded; each actor loads them at first use",
                         ", ".join(repr(r.name) for r in new_models))
            new_models = []
        elif config.executor != self.config.executor:
            log.warning("%s: executor: %s takes effect at the next start (restart assetd)", config.source,
                        config.executor)
        if new_models:
            checked = self._check_models(config, new_models)  # ConfigError: refused, the running set stays
            if checked is not None:
                checked.close()  # the workers load what they use, when they first need it
        with self._applying:
            if not self.stop_event.is_set():  # stopping: the next start reads the files anyway
                self._apply(config, rules)

    def _apply(self, config: Config, rules: list[Rule]) -> None:
        store, intake = self.store, self.intake
        assert store is not None and intake is not None and self.notifier is not None
        old, old_rules = self.config, self.rules
        self.config, self.rules = config, rules
        active = [w for w in self.workers if not w.retired]
        for worker in active:
            worker.offer(config, rules)
        with intake.swap_lock:  # no file is queued under the old rules once the queued ones were moved on
            intake.config, intake.rules = config, rules
            self._requeue_changed_rules(store, intake)
        self._log_rule_changes(store)
        if config.notify != old.notify:
            self.notifier.apply(config)
        store.quarantine_after_crashes = config.quarantine_after_crashes
        if self.problems is not None:  # its settings (problems:), and which rules write where or run models
            self.problems.config, self.problems.rules = config, list(rules)
        if config.log_level != old.log_level:
            logging.getLogger().setLevel(config.log_level.upper())
        if self.previews is not None:
            self.previews.config = config
        if self.review is not None:  # the page shows the new channels and inboxes (review: is restart-only)
            self.review.app.state.config = config
        if self.pool is None:  # under ray: one worker per actor, whatever ``workers`` says
            for _ in range(len(active), config.workers):
                self._start_worker()
            for worker in active[config.workers:]:
                worker.offer(config, rules, retire=True)
        changed = {r.name: r.version for r in rules}.items() - {r.name: r.version for r in old_rules}.items()
        if (config.inboxes != old.inboxes or config.rescan_seconds != old.rescan_seconds
                or (config.on_rule_change == "reprocess" and changed)):
            if self.watcher is not None:
                self.watcher.stop()
            # its first scan takes what the new inboxes (or rules) hold; ``create: true`` creates an inbox never
            # watched on this database, never one that was and has disappeared since (``_start_watcher``)
            self.watcher = self._start_watcher(config.inboxes)

    def _check_free_space(self, ran_before: bool) -> None:
        """``problems.min_free``/``resume_free`` that cannot work on the volumes measured now (more than a volume
        holds, resume_free below min_free there: ``Problems.setting_problems``) stop a first start (exit 2).
        A restart logs them and goes on, as for a model (``_pause_unloaded``): a share mounted late at boot is
        another volume for a while, and the disk monitor pauses the rules writing there until it is back."""
        refused = [f"{self.config.source}: {line}"
                   for line in Problems(None, None, self.config, rules=self.rules).setting_problems()]
        if refused and not ran_before:
            raise ConfigError(refused)
        for line in refused:
            log.error("%s", line)

    def _check_models(self, config: Config | None = None, rules: list[Rule] | None = None,
                      unloaded: list[Any] | None = None) -> Any:
        """A configured model that does not load offline stops the daemon before it takes any file (and
        refuses a reloaded change, ``apply``, whose new steps need one); with ``unloaded`` (a start on a
        database that ran before) it is added there instead, for ``_pause_unloaded``.

        An optional one (the studio backend's subject prior, ``prior: auto``) that is not in the cache
        is logged as a warning; the daemon starts and that step runs without it.
        Returns the ModelManager holding the checked models (for the first worker), or None."""
        from .models import load_for_start, resolve_device
        from .stages.base import stage_class

        config, rules = config or self.config, self.rules if rules is None else rules
        if any(stage_class(s.step, s.backend).runs_model(s.options) for r in rules for s in r.steps):
            log.info("model-backed steps will run on %s", resolve_device(config.device))
        return load_for_start(config, rules, lambda warning: log.warning("%s", warning), unloaded)

    def _pause_unloaded(self, unloaded: list[Any]) -> None:
        """The models that did not load at a start on a database that ran before (a model cache on a share
        mounted late at boot, one model of one rule): rather than exit 2, after which the service manager keeps
        the whole daemon down, each pauses the rules using it under its ``model:<step>/<backend>`` problem, as a
        model that stops loading while assetd runs does (``health``): the other rules run; after
        ``problems.check_seconds`` the next job of its rules loads it again, and one that finishes clears it
        (one alert each way). A first start still exits 2: there a setup error is the likely cause."""
        from .models import pull_hint, steps_using

        assert self.problems is not None
        found: dict[tuple[str, str], tuple[set[str], list[str]]] = {}
        for ref, lines in unloaded:
            for rule, step, backend in steps_using(self.config, self.rules, ref):
                names, why = found.setdefault((step, backend), (set(), []))
                names.add(rule)
                why.extend(line for line in lines if line not in why)
        for (step, backend), (names, why) in found.items():
            what = "; ".join(why)
            cache = self.config.models.cache_dir
            todo = ("check that the folder holding it is mounted"
                    + (f" (models.cache_dir: {cache})" if cache else ""))
            todo += "" if "assetd models pull" in what else f", or {pull_hint(self.config)}"
            self.problems.start_problem(self.problems.unloaded_model_problem(step, backend, names,
                                                                             f"{what}; {todo}"))

    def _requeue_changed_rules(self, store: Store, intake: Intake) -> None:
        """Queued jobs made under an older version of a rule run under the current one (nothing of them
        was published yet); a job whose rule is gone fails with that reason."""
        current = {r.name: r.version for r in self.rules}
        for job in store.stale_queued(current):
            if job.rule not in current:
                store.fail(job.id, f"{job.input_path}: rule {job.rule!r} no longer exists")
                log.warning("job %d: rule %r no longer exists; failed", job.id, job.rule)
            elif not store.adopt_version(job.id, current[job.rule]):
                store.fail(job.id, f"{job.input_path}: rule {job.rule!r} changed before this job ran; "
                                   "superseded by a job under the current rule")
            else:
                log.info("job %d was queued under an earlier version of rule %r; it runs under the current one",
                         job.id, job.rule)

    def _log_rule_changes(self, store: Store) -> None:
        """One line per rule changed since the last start, with the number of files it took before."""
        previous = store.get_state("rule_versions") or store.last_versions()
        for rule in self.rules:
            before = previous.get(rule.name)
            if before is None or before == rule.version:
                continue
            todo = plan(store, rule)  # what `assetd reprocess --rule NAME` would redo: the same count
            if self.config.on_rule_change == "reprocess":
                log.warning("rule %r changed (version %s → %s); on_rule_change is reprocess: the %d file(s) it "
                            "took before that are still in the inboxes are redone, replacing their outputs%s",
                            rule.name, before, rule.version, len(todo.redo) - len(todo.moved),
                            f" ({len(todo.moved)} in done/error folders are not: assetd reprocess --rule {rule.name} "
                            f"--config {self.config.source} moves them back and redoes them)" if todo.moved else "")
            else:
                log.warning("rule %r changed (version %s → %s); it applies to new files. %d file(s) it took "
                            "before (%d still present, %d output(s)) keep their outputs; redo them with: assetd "
                            "reprocess --rule %s --config %s", rule.name, before, rule.version,
                            len(todo.redo) + len(todo.missing), len(todo.redo), todo.outputs, rule.name,
                            self.config.source)
        store.set_state("rule_versions", {r.name: r.version for r in self.rules})

    def stop(self, timeout: float = 60.0) -> None:
        self.stop_event.set()
        if not self.lock.held:  # never started (a second daemon refused): nothing to stop, nothing to say
            return
        with self._applying:  # a reload being applied ends first; none starts after this
            if self.watcher is not None:
                self.watcher.stop()
        if self.review is not None:
            self.review.stop()
        if self.intake is not None:
            self.intake.flush_summary(quiet_seconds=0.0)
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.1, deadline - time.monotonic()))
        if self._previews_thread is not None:  # it only reads, with its own connection: no need to wait long
            self._previews_thread.join(min(2.0, max(0.1, deadline - time.monotonic())))
        if self.notifier is not None:
            self.notifier.stop()  # the delivery thread first, so the last attempt below is the only one
            self.notifier.maybe_digest()
            self.notifier.deliver_due(budget_seconds=self.config.notify.timeout_seconds)  # the rest stays queued
        if self.store is not None:
            self._hand_back_claims()  # a worker still in a step after the timeout
            self.store.close()  # the problems still open stay so: the next start takes over those it finds again
        if self.pool is not None and not self.outage:  # after the claims went back: a call still running is
            # abandoned (with the cluster away Ray would end this process at the first call to its own node)
            try:
                self.pool.close()
            except Exception:  # noqa: BLE001 - exiting anyway; a local Ray instance dies with this process
                log.exception("could not stop the Ray actors")
            self.pool = None
        self.lock.release()
        if self.outage:
            self._restart()
        log.info("assetd stopped")

    def _hand_back_claims(self) -> None:
        """Queue again, uncharged, the jobs our workers still hold (we are exiting)."""
        if self.store is None:
            return
        try:
            ids = self.store.release_owned([w.owner for w in self.workers],
                                           "interrupted: the daemon stopped while processing it; queued again")
        except Exception:  # exiting at once; the next start (or assetd retry) recovers them anyway
            log.exception("could not hand back the running jobs")
            return
        if ids:
            log.warning("job(s) %s were interrupted; they are queued again", ", ".join(map(str, ids)))

    def idle(self) -> bool:
        """No file waiting to settle and no job queued or running (used by the demo and tests)."""
        return (self.watcher is not None and self.watcher.pending() == 0
                and self.store is not None and not self.store.busy())

    def run(self) -> int:
        """Run until SIGINT/SIGTERM. Returns the exit code: 0 for a stop by signal, also one while starting (the
        Ray actors loading: they are stopped at once)."""
        def on_signal(signum: int, frame: Any) -> None:
            if self.stop_event.is_set():
                log.error("second signal: exiting now")
                self._hand_back_claims()
                os._exit(130)
            log.info("received %s: stopping after the current step", signal.Signals(signum).name)
            self.stop_event.set()

        def install() -> None:
            for s in (signal.SIGINT, signal.SIGTERM):
                signal.signal(s, on_signal)

        # The handlers stay until the process exits: a second signal that lands while (or just after) the
        # first one's clean stop completes still exits at once with 130, instead of killing the process
        # with the default action after the handlers were put back.
        install()
        # executor: ray: Ray puts its own SIGTERM handlers in place at each ``ray.init`` (exit 15, a stack trace);
        # one in the main thread keeps ours (``scaleout._own_signal_handlers``), one in another thread (a reconnect)
        # cannot, so the loop puts ours back every second
        under_ray = self.config.executor == "ray"
        try:
            try:
                self.start()
            except StopRequested as exc:
                if not self.stop_event.is_set():
                    raise
                log.info("%s", exc)
                return 0
            while not self.stop_event.wait(1.0):
                if under_ray:
                    install()
                if self.intake is not None:
                    self.intake.flush_summary()
        finally:
            self.stop()
        return 0
