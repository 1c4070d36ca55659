"""``executor: ray``: the chain runs on the actors of a Ray cluster; this process stays the coordinator.

One idea: a remote worker is a ``Worker`` whose chain runs elsewhere. Everything that makes the local worker safe
stays in ``pipeline/worker.py`` and is used unchanged: claims and the read-ahead of one (so at most one job's input
is in Ray's object store per actor, plus the one read ahead here), leases kept alive while the call runs, the
attempt charged when the run starts, crash attribution, problems and pauses, twins, re-runs, failure
classification. Only the middle of a job differs (``RemoteWorker._run_chain``): the input's bytes (and its sidecar
masks) travel to an actor, which decodes them, runs the same ``Chain`` a local worker runs and encodes the outputs
(``outputs.render_outputs``); the encoded outputs come back and are written here (``Publisher.write``: names,
staging, manifests, the store), so channel folders keep one writer and the worker machines need no access to the
studio's share.

Ray's queue is not durable (an actor call runs at most once, ``max_task_retries=0``, and the driver's death loses
what is in flight): the job store stays the only record of work. An actor that dies under a job (its node lost, a
kill, the OOM killer) charges that job one crash (``Store.charge_crash``: quarantined at
``quarantine_after_crashes``, like a job that kills the local process) and nothing else; Ray restarts the actor
(``ray.max_restarts``) and its worker waits for it, or starts a fresh one once Ray has given up. A worker whose
actor cannot be had (its node left the cluster) claims nothing until it, or a fresh one, answers again.

The whole cluster away (``ray stop``, the head rebooting) is nobody's crash: ``ClusterWatch`` notices that the head
no longer answers, the ``ray`` problem pauses every job (the running ones go back uncharged) and the daemon restarts
itself to wait for the cluster: a Ray driver whose node on this machine is gone cannot leave the cluster and join
it again in the same process (``ray.shutdown()`` then ends the process, Ray's "local Raylet is dead").

This is the only module that imports ray, and only when ``executor: ray`` is used (the ``scale`` extra).
"""
from __future__ import annotations

import contextlib
import logging
import os
import pickle
import re
import shutil
import signal
import socket
import tempfile
import threading
import time
import traceback
import warnings
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from . import previews
from .chain import Chains, ModelLoadError, StepUse, input_asset
from .config import Config
from .errors import AssetdError, ConfigError, IncompleteInput, ProcessProblem, StopRequested
from .imageio import decode
from .outputs import Rendered, one_line, render_outputs
from .rules import Rule
from .stages.base import StageContext
from .stages.masks import masks_beside, sidecar_path
from .store import Job, JobStatus, ManifestRecord, OutputRecord
from .text import printable
from .worker import Failure, JobResult, Worker

log = logging.getLogger("assetd.scaleout")

INSTALL = "pip install -e '.[scale]'"
ACTOR_DIED = "a Ray actor"  # what stopped, in a job's crash note: "quarantined: it stopped a Ray actor 2 times"
STOP_GRACE_SECONDS = 30.0  # after a stop, how long a call may take to end at its next step before it is abandoned


TOKEN_LOGGER = "ray._private.authentication.authentication_token_setup"  # "Token authentication is enabled…"


def ray_module() -> Any:
    """Ray, imported on first use; ConfigError with the install command when the ``scale`` extra is missing.
    Ray's own warning that token authentication is on (or off), which every command printed, is quieted:
    ``assetd check`` says it instead (``token_auth``)."""
    try:
        import ray
    except ImportError:
        raise ConfigError(f"executor: ray needs Ray, which is not installed: {INSTALL}") from None
    logging.getLogger(TOKEN_LOGGER).setLevel(logging.ERROR)
    _raylet_notes_to_log()
    return ray


ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _raylet_notes_to_log() -> None:
    """The raylet's notes to the driver ("A worker died or was killed while executing a task…", "memory on the
    node was low…") are printed by Ray to stdout raw, with ANSI colours and no time or level, whatever
    ``log_to_driver`` says: they go through this module's logger instead, one warning each. A Ray without the hook
    (``ray._private.worker.print_to_stdstream``, private) prints them as before."""
    try:
        import ray._private.worker as driver
    except ImportError:
        return
    original = getattr(driver, "print_to_stdstream", None)
    if original is None or getattr(original, "assetd", False):
        return

    def to_log(data: dict[str, Any], ignore_prefix: bool) -> None:
        if data.get("pid") != "raylet":
            return original(data, ignore_prefix)
        for line in data.get("lines", ()):
            text = one_line(ANSI.sub("", str(line)))
            first = re.split(r"(?<=[.!?])\s", text, maxsplit=1)[0]  # Ray appends pages of raylet log to some
            log.warning("ray: %s", first if len(first) <= 240 else first[:240] + "…")
            if first != text:
                log.debug("ray: %s", text)

    to_log.assetd = True  # type: ignore[attr-defined]
    driver.print_to_stdstream = to_log


def token_auth() -> str:
    """Whether the Ray this process connected to asks for a token, in words for ``assetd check`` (instead of Ray's
    warning on every command). Ray sets ``RAY_AUTH_MODE=token`` in the process when it starts a local instance or
    finds a token here (``RAY_AUTH_TOKEN``, ``~/.ray/auth_token``); connected without one, the cluster asks none."""
    mode = os.environ.get("RAY_AUTH_MODE", "").lower()
    if mode == "token":
        return "on (every box and every assetd command needs the cluster's token)"
    return ("off (anyone who reaches the cluster's ports can run code on it: README \"Scaling out\" sets a token "
            "up)" + (" by RAY_AUTH_MODE=disabled" if mode == "disabled" else ""))


def in_words(exc: BaseException) -> str:
    """What happened to an actor, said in words for the log and a job's note instead of Ray's class names
    (``ActorUnavailableError``, ``ActorDiedError``)."""
    ray = ray_module()
    text = str(exc)
    if isinstance(exc, ray.exceptions.ActorUnavailableError):
        return "it stopped answering: it is restarting, or its node cannot be reached"
    if isinstance(exc, ray.exceptions.RayActorError):
        why = re.search(r"The actor is dead because (.+?)(?:\.\s|\.?$)", text, re.S)
        return f"it died: {one_line(why.group(1))}" if why else "it died"
    if isinstance(exc, ray.exceptions.ObjectLostError):
        return "its result was lost: its node left the cluster"
    return one_line(text) or type(exc).__name__


def ray_installed() -> bool:
    """Whether Ray can be imported here (``assetd check``'s problem when ``executor: ray`` and it cannot)."""
    import importlib.util

    return importlib.util.find_spec("ray") is not None


# -- what travels ---------------------------------------------------------------------------------------
@dataclass
class Input:
    """A job's input as read here (``RemoteWorker._load``): its bytes and those of its sidecar masks by kind."""

    data: bytes
    masks: dict[str, bytes] = field(default_factory=dict)


@dataclass
class ChainResult:
    """What an actor's call gives back: plain data, pickled through Ray's object store."""

    rendered: list[Rendered]
    steps: list[tuple[str, str, float, str, int | None]]  # (step, backend, seconds, device, GPU peak bytes)
    loads: list[tuple[str, str, str, float, float]]  # the models it loaded: (backend, model, device, seconds, at)
    encode_seconds: float
    matte: bytes | None  # the subject's matte as PNG, when the review page wants it (``previews.wanted``)
    node: str  # the host name of the actor's node
    logs: list[tuple[int, str, str]] = field(default_factory=list)  # what assetd's loggers said during the call


class RemoteError(AssetdError):
    """An error of an actor's call that could not travel back as itself (its class does not pickle)."""


class RemoteModelLoadError(ModelLoadError):
    """A ``ModelLoadError`` on an actor, made to travel: its step, backend and message, its cause kept."""

    def __init__(self, step: str, backend: str, message: str, cause: BaseException | None = None):
        AssetdError.__init__(self, message)
        self.step, self.backend = step, backend
        self.__cause__ = cause

    def __reduce__(self) -> Any:  # the state: what the actor attached (``ChainRunner.run``: its logs, its node)
        return RemoteModelLoadError, (self.step, self.backend, str(self), self.__cause__), self.__dict__


def portable(exc: BaseException) -> BaseException:
    """``exc`` as it can travel through Ray and keep its class (``worker.classify`` goes by the class alone)."""
    if isinstance(exc, ModelLoadError) and not isinstance(exc, RemoteModelLoadError):
        cause = portable(exc.__cause__) if exc.__cause__ is not None else RemoteError(str(exc))  # never None:
        # ``classify`` without problems goes by the cause
        return RemoteModelLoadError(exc.step, exc.backend, str(exc), cause)
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:  # noqa: BLE001 - any class that does not survive the trip
        return RemoteError(f"{type(exc).__name__}: {exc}")


# -- the actor -------------------------------------------------------------------------------------------
class Captured(logging.Handler):
    """What assetd's loggers say in an actor during one call (a stage's warning, a model loaded): kept as
    (level, logger, message) to travel back with the call's result or error, so that the coordinator logs it with
    the job and the actor (``RemoteWorker._relog``) instead of Ray printing the actor's stderr raw (no time, no
    level, no job, ANSI colours, "[repeated 5x across cluster]", sometimes after the job ended)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[tuple[int, str, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
            if record.exc_info:
                message += "\n" + "".join(traceback.format_exception(*record.exc_info)).rstrip()
        except Exception:  # noqa: BLE001 - a record that does not format is said as it was written
            message = str(record.msg)
        self.records.append((record.levelno, record.name, message))

    def __enter__(self) -> "Captured":
        logging.getLogger("assetd").addHandler(self)
        return self

    def __exit__(self, *exc: Any) -> None:
        logging.getLogger("assetd").removeHandler(self)


def _actor_log_level(config: Config) -> None:
    """In an actor's own process (logging not set up there), let assetd's records at ``log_level`` reach
    ``Captured``; a process whose logging is set up (the coordinator, a test running the body here) is left as
    it is."""
    ours = logging.getLogger("assetd")
    if ours.level == logging.NOTSET and not logging.getLogger().handlers:
        ours.setLevel(config.log_level.upper())


class ChainRunner:
    """The body of a chain actor (``ray.remote(ChainRunner)``; a plain class, so it also runs here in tests).
    Loads every model the rules use once, at start; then runs one job's decode, chain and encode per call.
    ``problems`` lists what kept it from loading them, each naming this node (``start_pool`` reports them)."""

    def __init__(self, config: Config, rules: list[Rule], name: str):
        from . import faults
        from .models import load_for_start

        faults.point("actor-start", name)
        self.config = config
        self.name = name
        self.node = socket.gethostname()
        _actor_log_level(config)
        self.stop = threading.Event()
        self.ctx = StageContext(config=config, stop=self.stop)
        self.chains = Chains(self.ctx)
        self.problems: list[str] = []
        self.warnings: list[str] = []
        try:
            self.ctx.models = load_for_start(config, rules, self.warnings.append)
        except ConfigError as exc:
            self.problems = [f"{name} on {self.node}: {p}" for p in exc.problems]

    def ready(self) -> tuple[str, list[str], list[str]]:
        """(node, problems, warnings): what the start found on this actor's node."""
        return self.node, self.problems, self.warnings

    def halt(self) -> None:
        """The coordinator stops: the call running ends at its next step (``StopRequested``)."""
        self.stop.set()

    def run(self, config: Config, rule: Rule, source: str, data: bytes, masks: dict[str, bytes],
            want_matte: bool) -> ChainResult:
        """Decode ``data`` (the input at ``source`` on the coordinator), run the rule's chain, encode its outputs,
        under the coordinator's ``config`` (a reload's channels travel with each call; models loaded at start stay,
        new ones load at first use). Sidecar masks are put beside a copy of the name in a folder of their own,
        where the stages look. What assetd's loggers say meanwhile comes back with the result (``logs``) or the
        error. Any error is raised as its own class (``portable``), carrying those records (``actor_logs``) and
        this node (``actor_node``); an unexpected one (not an ``AssetdError``) carries its traceback here as a
        note, which the coordinator's log of the crash prints."""
        self.stop.clear()
        self.config = self.ctx.config = config
        folder = None
        with Captured() as captured:
            try:
                if self.problems:
                    raise ConfigError(self.problems)
                decoded = decode(data, source, self.config.input)
                where = source
                if masks:
                    folder = tempfile.mkdtemp(prefix="assetd-masks-")
                    where = str(Path(folder) / Path(source).name)
                    for kind, body in masks.items():
                        sidecar_path(where, kind).write_bytes(body)
                asset = input_asset(decoded, where)
                steps: list[tuple[str, str, float, str, int | None]] = []
                mattes: list[Any] = []

                def on_step(stage: Any, seconds: float, use: StepUse) -> None:
                    steps.append((stage.step, stage.backend, seconds, use.device, use.gpu_peak_bytes))

                results = self.chains.of(rule).run(asset, on_step=on_step, on_matte=mattes.append)
                if self.stop.is_set():
                    raise StopRequested("stopping before encoding outputs")
                started = time.perf_counter()
                rendered = render_outputs(self.config, rule, results, decoded)
                encode_seconds = time.perf_counter() - started
                matte = previews.matte_png(mattes[0]) if want_matte and mattes else None
                take = getattr(self.ctx.models, "take_loads", None)
                loads = [(x.backend, x.model, x.device, x.seconds, x.at) for x in (take() if take else ())]
                return ChainResult(rendered, steps, loads, encode_seconds, matte, self.node, captured.records)
            except BaseException as exc:
                if folder is not None:
                    _unmask(exc, folder, str(Path(source).parent))
                raised = portable(exc)
                with contextlib.suppress(Exception):  # an exception that takes no attributes travels without them
                    raised.actor_logs, raised.actor_node = captured.records, self.node  # type: ignore[attr-defined]
                    if not isinstance(exc, AssetdError):
                        raised.add_note(f"(raised on {self.name} on {self.node}) "
                                        + "".join(traceback.format_exception(exc)).rstrip())
                raise raised from None
            finally:
                if folder is not None:
                    shutil.rmtree(folder, ignore_errors=True)


def _unmask(exc: BaseException, folder: str, original: str) -> None:
    """A message naming the masks' temporary folder names the input's folder instead (a mask's error)."""
    exc.args = tuple(a.replace(folder, original) if isinstance(a, str) else a for a in exc.args)
    if isinstance(exc, ConfigError):
        exc.problems = [p.replace(folder, original) for p in exc.problems]


# -- the coordinator's side -------------------------------------------------------------------------------
class ActorLost(Exception):
    """The actor running a job's chain died under it (``RayActorError``: its node lost, a kill, out of memory):
    the job is charged one crash (``Store.charge_crash``), nothing else is. ``ran`` False: the actor was gone
    before the call reached it (it died idle): the job goes back uncharged."""

    def __init__(self, message: str, ran: bool = True):
        super().__init__(message)
        self.ran = ran


class ActorGone(Exception):
    """An actor cannot be had now: Ray does not restart it and a fresh one does not answer either (its node left
    the cluster), or it does not load its models. Its worker waits for it (``RemoteWorker.run_forever``)."""


class RemoteWorker(Worker):
    """A ``Worker`` whose chain runs on one Ray actor (``ChainRunner``). ``make_actor(name)`` starts a fresh actor
    when Ray has given up on this one. Its claims are a daemon worker's (``worker-N pid P on HOST``); where its
    chains ran is ``actor-N on NODE`` (``jobs.ran_on``). ``watch``: the daemon's ``ClusterWatch``; a call that
    fails while the whole cluster is away is the ``ray`` problem (every job waits, none is charged)."""

    def __init__(self, name: str, config: Config, store: Any, rules: list[Rule], actor: Any, actor_name: str,
                 make_actor: Callable[[str], Any] | None = None, watch: ClusterWatch | None = None, **kwargs: Any):
        super().__init__(name, config, store, rules, **kwargs)
        self.actor = actor
        self.actor_name = actor_name
        self.node: str | None = None  # the node its actor answered from last (``ready``, before each job)
        self.make_actor = make_actor
        self.watch = watch
        self._lost = False  # the last call's actor died: see it is back before the next call
        self.away: str | None = None  # why its actor cannot be had now (``ActorGone``): it claims nothing
        self._asking: Any = None  # the ``ready()`` call a worker whose actor is away waits on

    def run_forever(self, idle_max: float = 1.0) -> None:
        """``Worker.run_forever``, left while its actor cannot be had (``away``: the job read ahead goes back
        untouched) and entered again once it, or a fresh one, answers: a GPU box that rejoins the cluster is
        used again, and a worker never holds a job it cannot run meanwhile."""
        while True:
            super().run_forever(idle_max)
            if self.away is None or self.stop.is_set() or self.retired:
                if self.away is not None:
                    super().close()
                return
            while not self.stop.is_set() and not self._revive():
                pass

    def take_update(self) -> bool:
        return super().take_update() or self.away is not None

    def close(self) -> None:
        if self.away is None or self.stop.is_set() or self.retired:  # away: the loop is entered again
            super().close()

    def _execute(self, job: Job, loaded: Future | None, own_chain: bool = False) -> Any:
        if self.away is not None:  # claimed ahead before its actor was found gone: back, uncharged
            raise ActorGone(self.away)
        return super()._execute(job, loaded, own_chain)

    def _revive(self) -> bool:
        """One look (up to ``ACTOR_RETRY_SECONDS``) at whether the actor answers again: restarted by Ray on a node
        that came back, or a fresh one (started when Ray does not restart it) placed at last. True when it does:
        its problem clears and the worker claims again."""
        ray = ray_module()
        deadline = time.monotonic() + ACTOR_RETRY_SECONDS
        try:
            if self._asking is None:
                self._asking = self.actor.ready.remote()
            while not ray.wait([self._asking], timeout=0.5)[0]:
                if self.stop.is_set() or time.monotonic() > deadline:
                    return False
            ref, self._asking = self._asking, None
            node, problems, _ = ray.get(ref)
        except ray.exceptions.ActorUnavailableError:  # restarting: ask again
            self._asking = None
            self.stop.wait(min(ACTOR_RETRY_SECONDS, 5.0))
            return False
        except ray.exceptions.RayActorError:  # Ray does not restart it: a fresh one, placed when a node can hold it
            self._asking = None
            if self.make_actor is not None:
                self.actor = self.make_actor(self.actor_name)
            else:
                self.stop.wait(ACTOR_RETRY_SECONDS)
            return False
        except Exception:  # noqa: BLE001 - the cluster away (the daemon restarts itself), or anything else: not yet
            log.debug("%s: %s does not answer yet", self.name, self.actor_name, exc_info=True)
            self._asking = None
            self.stop.wait(ACTOR_RETRY_SECONDS)
            return False
        if problems:
            self.stop.wait(ACTOR_RETRY_SECONDS)
            return False
        self.away, self._lost = None, False
        message = f"ray: {self.actor_name} answers again on {node}; {self.name} takes jobs again"
        if self.problems is None or not self.problems.clear(f"ray:{self.actor_name}", message):
            log.info("%s", message)
        return True

    def _load(self, job: Job) -> Input:  # type: ignore[override]
        """Read (not decode: the actor does) a job's input and its sidecar masks, checking it is still the content
        that was queued; runs on the codec pool for the job read ahead."""
        path = Path(job.input_path)
        data = self._read(job)
        masks = {}
        for kind, mask in masks_beside(path).items():
            with contextlib.suppress(OSError):
                masks[kind] = mask.read_bytes()
        return Input(data, masks)

    def _run_chain(self, job: Job, rule: Rule, loaded: Future | None
                   ) -> tuple[list[OutputRecord], list[ManifestRecord], list[str]]:
        inp = loaded.result() if loaded is not None else self._load(job)
        try:
            self._await_actor()
        except (ActorGone, ray_module().exceptions.RayError):
            if self.watch is not None and self.watch.lost():
                raise self.watch.problem() from None
            raise
        ray = ray_module()
        want_matte = previews.keeps_mattes(self.config)
        try:
            # ``ready`` just before the job, in the same queue: when both fail, the actor was gone before the job
            # reached it (it died idle, its node lost between jobs) and the job is not charged a crash it had no
            # part in
            probe = self.actor.ready.remote()
            ref = self.actor.run.remote(self.config, rule, printable(job.input_path), inp.data, inp.masks,
                                        want_matte)
            del inp
            result: ChainResult = self._wait(ray, ref, probe, job)
        except IncompleteInput as exc:
            if self.wait_for_arrival:
                self._check_arriving(Path(job.input_path), exc)
            raise
        except (ActorLost, ActorGone, ray.exceptions.RayError) as exc:
            if self.watch is not None and self.watch.lost(within=LOSS_GRACE_SECONDS):  # the whole cluster went
                raise self.watch.problem() from None                                   # away: nobody's crash
            raise exc from None
        self.node = result.node
        self.ran_on = f"{self.actor_name} on {result.node}"
        self._relog(job, result.logs)
        for step, backend, seconds, device, peak in result.steps:
            self.store.record_step(job.id, job.attempts, step, backend, seconds, device, peak)
        for load in result.loads:
            self.store.record_model_load(*load)
        self.store.heartbeat(job.id, self.config.lease_seconds)
        if self.stop.is_set():
            raise StopRequested("stopping before writing outputs")
        records, manifests, review = self.outputs.write(job, rule, result.rendered, result.encode_seconds)
        if result.matte is not None:
            self._keep_matte(job, result.matte)
        return records, manifests, review

    def _wait(self, ray: Any, ref: Any, probe: Any, job: Job) -> ChainResult:
        """The call's result, waiting while keeping an eye on ``stop``: on stop the actor is told to end the job
        at its next step (it comes back as ``StopRequested``), and a call still going after a grace is abandoned
        (the job goes back to the queue; the actor finishes it for nothing). An error raised on the actor is
        raised here as its own class, after what the actor logged meanwhile; the actor's death is ``ActorLost``.
        Either way ``ran_on`` names the actor and its node once the job reached it (a failed job says where)."""
        halted_at = None
        while True:
            ready, _ = ray.wait([ref], timeout=0.5)
            if ready:
                break
            if self.stop.is_set():
                if halted_at is None:
                    halted_at = time.monotonic()
                    with contextlib.suppress(Exception):
                        self.actor.halt.remote()
                elif time.monotonic() - halted_at > STOP_GRACE_SECONDS:
                    raise StopRequested(f"stopping: {self.actor_name} did not end the job within "
                                        f"{STOP_GRACE_SECONDS:.0f}s; abandoned")
        try:
            return ray.get(ref)
        except ray.exceptions.RayTaskError as exc:
            cause = exc.cause if exc.cause is not None else RemoteError(one_line(str(exc)))
            self.node = getattr(cause, "actor_node", None) or self.node
            self.ran_on = f"{self.actor_name} on {self.node}" if self.node else self.actor_name
            self._relog(job, getattr(cause, "actor_logs", ()))
            raise cause from None
        except ray.exceptions.RayError as exc:  # the actor died (RayActorError), or its node with the result
            self._lost = True
            try:
                self.node = ray.get(probe, timeout=5.0)[0]
            except ray.exceptions.RayActorError:
                raise ActorLost(f"{self.actor_name} was gone before the job reached it ({in_words(exc)})",
                                ran=False) from None
            except Exception:  # noqa: BLE001 - no word from the probe: count it as the job's
                pass
            self.ran_on = f"{self.actor_name} on {self.node}" if self.node else self.actor_name
            raise ActorLost(f"{self.ran_on} stopped while running it ({in_words(exc)})") from None

    def _relog(self, job: Job, records: Any) -> None:
        """Log what assetd's loggers said on the actor during the job's call (``Captured``) through the same
        loggers here, with the job and where it ran, before the job's own end is logged."""
        where = self.ran_on or self.actor_name
        for level, name, message in records or ():
            logging.getLogger(name).log(level, "%s: job %d: %s", where, job.id, message)

    def _await_actor(self) -> None:
        """After its actor died: wait until Ray has restarted it (its models loaded again), or, once Ray gave up on
        it (``ActorDiedError``), start a fresh one. ``StopRequested`` when stopping meanwhile (the job goes back to
        the queue uncharged); ``ActorGone`` when no actor can be had."""
        if not self._lost:
            return
        ray = ray_module()
        fresh = False
        deadline = time.monotonic() + AWAIT_SECONDS
        for _ in range(20):  # an actor restarting answers "unavailable" for a while; a fresh one is started once
            ref = self.actor.ready.remote()
            while not ray.wait([ref], timeout=0.5)[0]:
                if self.stop.is_set():
                    raise StopRequested(f"stopping while {self.actor_name} restarts")
                if time.monotonic() > deadline:  # Ray waits for a node that can hold it: its node left the cluster
                    raise ActorGone(f"{self.actor_name} cannot be placed: no answer within {AWAIT_SECONDS:.0f}s "
                                    "(its node left the cluster, or no node has the GPUs and CPUs it asks for)")
            try:
                node, problems, _ = ray.get(ref)
            except ray.exceptions.ActorUnavailableError:
                self.stop.wait(0.5)  # restarting: ask again
                continue
            except ray.exceptions.RayActorError as exc:
                if self.make_actor is None or fresh:
                    raise ActorGone(f"{self.actor_name} died and Ray does not restart it; a fresh one could not "
                                    "start either (its node left the cluster?)") from None
                log.warning("%s: %s: %s, and Ray does not restart it; starting a fresh one", self.name,
                            self.actor_name, in_words(exc))
                self.actor, fresh = self.make_actor(self.actor_name), True
                continue
            if problems:
                raise ActorGone("; ".join(problems))
            log.info("%s: %s is back on %s", self.name, self.actor_name, node)
            self._lost = False
            return
        raise ActorGone(f"{self.actor_name} cannot be placed: it stays unavailable (its node left the cluster)")

    def _settle_failure(self, job: Job, failure: Failure, result: JobResult) -> JobResult:
        """An actor that died under the job charges it one crash (``Store.charge_crash``), the rest as a local
        worker's; an actor that cannot be had retires this worker (its job goes back, uncharged)."""
        if isinstance(failure.exc, ActorLost) and not failure.exc.ran:
            self.store.release(job.id, owner=self.owner)
            log.warning("%s: job %d: %s; queued again, not charged: %s", self.name, job.id, failure.exc,
                        printable(job.input_path))
            result.status = JobStatus.QUEUED
            return result
        if isinstance(failure.exc, ActorLost):
            status = self.store.charge_crash(job.id, self.owner, ACTOR_DIED, ran_on=self.ran_on)
            stored = self.store.get(job.id)
            if status is JobStatus.FAILED and stored is not None:
                result.status, result.error = JobStatus.FAILED, stored.error
                self._report_failure(job, stored.error or str(failure.exc))
            else:
                log.warning("%s: job %d: %s; a crash is charged to it (%d so far) and it is queued again: %s",
                            self.name, job.id, failure.exc, stored.crashes if stored else 0,
                            printable(job.input_path))
                result.status = JobStatus.QUEUED
            return result
        if isinstance(failure.exc, ActorGone):
            self.store.release(job.id, owner=self.owner, note=f"waiting: {failure.exc}")
            first = self.away is None
            self.away = str(failure.exc)
            if not first:  # the job read ahead, handed back the same way
                log.info("%s: job %d is queued again, uncharged (%s is away)", self.name, job.id, self.actor_name)
            elif self.problems is not None:  # an alert (nothing to pause: the other actors go on), cleared by _revive
                from .health import Scope

                log.info("%s: job %d is queued again, uncharged", self.name, job.id)
                self.problems.start_problem(ProcessProblem(
                    f"ray:{self.actor_name}", f"ray: {failure.exc}; {self.name} takes no job until it answers again "
                    f"(checked every {ACTOR_RETRY_SECONDS:.0f}s); the other actors go on", Scope.nothing(),
                    alert_after=self.config.problems.alert_after_seconds))
            else:
                log.error("%s: %s; its job is queued again, uncharged; it takes no job until the actor answers "
                          "again", self.name, failure.exc)
            result.status = JobStatus.QUEUED
            return result
        return super()._settle_failure(job, failure, result)


# -- the pool --------------------------------------------------------------------------------------------
@dataclass
class Pool:
    """The chain actors ``start_pool`` started, and how to start one more (``RemoteWorker.make_actor``)."""

    actors: list[Any]
    names: list[str]
    make_actor: Callable[[str], Any]
    started_ray: bool  # this process started the Ray instance (``ray.address: null``): ``close`` shuts it down
    nodes: dict[str, str] = field(default_factory=dict)  # actor name -> node
    every: list[Any] = field(default_factory=list)  # every actor started, fresh ones (``make_actor``) included

    def close(self) -> None:
        """Stop the actors (a call still running is abandoned: its job was handed back), fresh ones a worker
        started in place of one Ray gave up on included, and a Ray we started."""
        ray = ray_module()
        for actor in self.every or self.actors:
            with contextlib.suppress(Exception):
                ray.kill(actor, no_restart=True)
        if self.started_ray:
            ray.shutdown()


@dataclass
class ClusterInfo:
    """The Ray cluster ``executor: ray`` would use (``assetd check``)."""

    address: str  # as configured ("a local instance" for null)
    nodes: list[dict[str, Any]]  # alive nodes: {"node": host or IP, "cpus": float, "gpus": float}
    actors: int  # chain actors it would start
    gpus_per_actor: float
    cpus_per_actor: float
    free: list[dict[str, Any]] = field(default_factory=list)  # what is free on each node now, as ``nodes``
    # (one entry for the whole cluster where Ray does not say it per node: Ray Client)

    @property
    def gpus(self) -> float:
        return sum(n["gpus"] for n in self.nodes)

    def placement_problems(self, config: Config) -> list[str]:
        """Why some of the actors could never be placed on these nodes (Ray would wait for such a node forever),
        each starting with the ``ray`` key to change: ``assetd check`` and ``start_pool`` refuse them."""
        problems: list[str] = []
        if config.ray.actors == "per_gpu" and not self.gpus:
            problems.append("actors: per_gpu, but no node of the cluster has a GPU: it would start one actor on a CPU; "
                            "set ray.actors to a number for a CPU cluster, or join the GPU boxes")
        most_gpus = max((n["gpus"] for n in self.nodes), default=0.0)
        most_cpus = max((n["cpus"] for n in self.nodes), default=0.0)
        cpus = sum(n["cpus"] for n in self.nodes)
        if self.gpus_per_actor > most_gpus:
            problems.append(f"gpus_per_actor: {self.gpus_per_actor:g}, but no node has more than {most_gpus:g} GPU(s): "
                            "no actor could start (Ray would wait for such a node forever)")
        elif self.gpus_per_actor and self.actors * self.gpus_per_actor > self.gpus:
            problems.append(f"actors: {self.actors} actors × {self.gpus_per_actor:g} GPU need "
                            f"{self.actors * self.gpus_per_actor:g} GPUs, the cluster has {self.gpus:g}: the actors "
                            "beyond them would never start")
        if self.cpus_per_actor > most_cpus:
            problems.append(f"cpus_per_actor: {self.cpus_per_actor:g}, but no node has more than {most_cpus:g} "
                            "CPU(s): no actor could start")
        elif self.actors * self.cpus_per_actor > cpus:
            problems.append(f"actors: {self.actors} actors × {self.cpus_per_actor:g} CPU need more CPUs than the "
                            f"cluster's {cpus:g}: the actors beyond them would never start")
        return problems

    def fits_free(self, actors: int | None = None) -> bool:
        """Whether what is free now (``free``) holds ``actors`` actors (all of them by default), node by node."""
        wanted = self.actors if actors is None else actors
        room = 0.0
        for node in self.free:
            fits = [node[kind] / each + 1e-6 for kind, each in (("cpus", self.cpus_per_actor),
                                                                 ("gpus", self.gpus_per_actor)) if each]
            if not fits:  # an actor asking for nothing fits anywhere
                return True
            room += int(min(fits))
        return room >= wanted

    def free_summary(self) -> str:
        """What is free, e.g. "0 of the cluster's 2 CPUs and 0 of its 0 GPUs are free now (vm: 0 CPUs, 0 GPUs)"."""
        cpus, gpus = (sum(n[kind] for n in self.free) for kind in ("cpus", "gpus"))
        by_node = "; ".join(f"{n['node']}: {n['cpus']:g} CPUs, {n['gpus']:g} GPUs" for n in self.free)
        return (f"{cpus:g} of the cluster's {sum(n['cpus'] for n in self.nodes):g} CPUs and {gpus:g} of its "
                f"{self.gpus:g} GPUs are free now ({by_node})")

    def free_problem(self, actors: int | None = None) -> str | None:
        """Why the free resources cannot hold the actors now (another assetd, or another Ray job, holds the rest:
        Ray would queue them until it lets go, and the start would wait for it), or None when they can."""
        if self.fits_free(actors):
            return None
        wanted = self.actors if actors is None else actors
        asked = " and ".join(f"{each:g} {kind}" for kind, each in (("CPU", self.cpus_per_actor),
                                                                   ("GPU", self.gpus_per_actor)) if each)
        keys = (["ray.actors"] if wanted > 1 else []) + [f"ray.{kind}_per_actor" for kind, each in (
            ("cpus", self.cpus_per_actor), ("gpus", self.gpus_per_actor)) if each]
        return (f"actors: {wanted} actor(s) asking {asked} each cannot be placed now: {self.free_summary()}; "
                f"another assetd (or another Ray job) holds the rest: stop it first, or lower {' / '.join(keys)}")


class ClusterUnreachable(ConfigError):
    """The configured Ray cluster is not there (nothing answers at the address, no cluster runs on this machine for
    ``auto``, no Ray Client server replies): a problem of the cluster, not of the config, which may clear by itself
    (a head machine rebooting)."""


HEAD_ADVICE = "start the head node there (`ray start --head`, README \"Scaling out\") or correct the address"


def unreachable(address: str | None, timeout: float = 5.0) -> str | None:
    """Why ``ray.address`` (``HOST:PORT`` or ``ray://HOST:PORT``) does not answer a TCP connection within
    ``timeout``; None when it does, or for null and auto (Ray finds those at once or says so). Ray itself retries
    an address that does not answer for minutes, which would hang ``assetd run`` and ``assetd check``."""
    if address is None or address == "auto":
        return None
    host, _, port = address.removeprefix("ray://").rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            return None
    except (OSError, ValueError) as exc:
        return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


RAY_PROBLEM = "ray"  # the problem key of the whole cluster away (``ClusterWatch``)
LOSS_GRACE_SECONDS = 6.0  # an actor's death is charged once the cluster's head has answered this long after it
WATCH_SECONDS = 2.0  # how often a running daemon checks that the cluster's head answers
ACTOR_RETRY_SECONDS = 30.0
AWAIT_SECONDS = 120.0  # how long a job waits for its dead actor to answer again before its worker waits alone  # how often a worker whose actor is gone asks whether it (or a fresh one) answers


def cluster_away(config: Config, timeout: float = 5.0) -> str | None:
    """Why the configured cluster does not answer now (its head's GCS port refuses or does not answer within
    ``timeout``), without joining it; None when it answers, and for null (a local instance is started). For
    ``auto`` the running cluster is found as Ray finds it (the address file a ``ray start`` on this machine
    leaves); none found means none runs here."""
    address = config.ray.address
    if address is None:
        return None
    if address == "auto":
        try:
            from ray._private.services import canonicalize_bootstrap_address_or_die
        except ImportError:  # another Ray: ``ray.init`` finds it, or says so
            return None
        try:
            address = canonicalize_bootstrap_address_or_die("auto")
        except Exception:  # noqa: BLE001 - ConnectionError: no running instance found here
            return "no Ray cluster runs on this machine (`ray start --head` starts its head node)"
    return unreachable(address, timeout)


def head_address(config: Config) -> str | None:
    """The GCS address the driver joined (``HOST:PORT``), to watch while it runs; the configured one for a Ray
    client (``ray://``), which has no GCS address of its own."""
    with contextlib.suppress(Exception):
        return str(ray_module().get_runtime_context().gcs_address)
    address = config.ray.address
    return address if address not in (None, "auto") else None


class ClusterWatch:
    """Notices that the whole cluster went away (its head's GCS port refuses connections: ``ray stop``, the head
    rebooting): a dead actor's call then says nothing about its job. ``answers()`` is the check (a seam for tests);
    ``run`` (a thread) checks every ``WATCH_SECONDS`` and calls ``on_gone`` once, after two failed checks in a row,
    so an idle daemon notices too, long before Ray's own timeout would end the process."""

    def __init__(self, config: Config, address: str | None):
        self.config = config
        self.address = address  # HOST:PORT (or ray://HOST:PORT) of the head; None: nothing to watch
        self.gone = threading.Event()

    def answers(self) -> bool:
        return self.address is None or unreachable(self.address, timeout=2.0) is None

    def lost(self, within: float = 0.0) -> bool:
        """Whether the cluster is away (known, or found now, looking again for ``within`` seconds): a failed call is
        then nobody's crash. ``ray stop`` ends the nodes' raylets (and so the actors) a few seconds before the
        head's GCS port closes: an actor's death is only charged once the head has kept answering that long."""
        deadline = time.monotonic() + within
        while not self.gone.is_set():
            if not self.answers():
                self.gone.set()
                break
            if time.monotonic() >= deadline:
                break
            time.sleep(0.5)
        return self.gone.is_set()

    def problem(self, waiting: int | None = None) -> ProcessProblem:
        """The ``ray`` problem: every job waits (none is charged) until the cluster answers again."""
        from .health import Scope

        jobs = f"{waiting} job(s)" if waiting is not None else "all jobs"
        where = f"the cluster at {self.config.ray.address}" if self.config.ray.address else "the local Ray instance"
        return ProcessProblem(RAY_PROBLEM, f"ray: {where} cannot be reached; {jobs} wait; assetd retries every "
                                           f"{self.config.problems.check_seconds:g}s", Scope.ALL,
                              alert_after=self.config.problems.alert_after_seconds)

    def run(self, stop: threading.Event, on_gone: Callable[[], None]) -> None:
        failed = 0
        while not stop.wait(WATCH_SECONDS) and not self.gone.is_set():
            failed = 0 if self.answers() else failed + 1
            if failed >= 2:
                self.gone.set()
        if self.gone.is_set() and not stop.is_set():
            on_gone()


def _connect(config: Config) -> bool:
    """Join the configured Ray (or start a local instance); True when this call started or joined it (so the
    caller shuts it down), False when this process was connected already (a test's shared instance).
    ``ClusterUnreachable`` (a ConfigError) when the cluster is not there, with what to do about it."""
    ray = ray_module()
    address = config.ray.address
    why = unreachable(address)
    if why:
        raise ClusterUnreachable(f"ray.address: {address} does not answer ({why}): {HEAD_ADVICE}")
    if ray.is_initialized():
        return False
    try:
        # null: a new local instance, even when a cluster runs on this machine (``ray.init()`` would join that one)
        with _own_signal_handlers(), warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # Ray Client's timeout, said below in our words
            ray.init(address=address or "local", namespace=config.ray.namespace, include_dashboard=False,
                     configure_logging=False, log_to_driver=False)  # the actors' records come back with each job
    except ConnectionError as exc:
        if address == "auto":
            raise ClusterUnreachable(
                "ray.address: auto, but no Ray cluster runs on this machine (start its head node here: `ray start "
                "--head`, README \"Scaling out\"; or set the head's address, HOST:6379)") from None
        if address is not None and address.startswith("ray://"):
            raise ClusterUnreachable(
                f"ray.address: {address} answers, but no Ray Client server replied ({exc}): {HEAD_ADVICE} (ray:// "
                "takes the head's Ray Client port, 10001 by default, not its GCS port 6379)") from None
        token = ("is the token here the cluster's (~/.ray/auth_token, or RAY_AUTH_TOKEN_PATH)?"
                 if os.environ.get("RAY_AUTH_MODE", "").lower() == "token" else
                 "when its head has token authentication on (Ray turns it on where a token exists), this process "
                 "needs RAY_AUTH_MODE=token and the cluster's token")
        # it answers: most likely a token missing here, which waiting does not mend (not ClusterUnreachable)
        raise ConfigError(f"ray.address: {address} answers, but Ray could not join a cluster there ({exc}): "
                          f"{token} (README \"Scaling out\"); otherwise {HEAD_ADVICE}") from None
    except Exception as exc:  # noqa: BLE001 - Ray raises several kinds for an address that does not answer
        raise ConfigError(f"ray.address: cannot start or join Ray ({address or 'a local instance'}): "
                          f"{type(exc).__name__}: {exc}") from None
    return True


@contextlib.contextmanager
def _own_signal_handlers() -> Any:
    """Keep this process's SIGINT/SIGTERM handlers across ``ray.init``: Ray puts its own in place in the driver (a
    SIGTERM handler calling ``sys.exit(15)``, and a C++ one printing a stack trace), which would make a SIGTERM to
    ``assetd run`` exit 15 with Ray's lines instead of the daemon's clean stop. Only the main thread can set them
    (elsewhere the caller puts them back: ``Daemon.run``)."""
    main = threading.current_thread() is threading.main_thread()
    kept = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)} if main else {}
    try:
        yield
    finally:
        for s, handler in kept.items():
            if handler is not None:
                signal.signal(s, handler)


def _plan(config: Config, gpus: float) -> tuple[int, float]:
    """(actors to start, GPUs each reserves) on a cluster with ``gpus`` GPUs in all."""
    per_actor = config.ray.gpus_per_actor if config.ray.gpus_per_actor is not None else (1.0 if gpus else 0.0)
    if config.ray.actors == "per_gpu":
        return max(1, int(gpus)), per_actor
    return int(config.ray.actors), per_actor


def describe_cluster(config: Config) -> ClusterInfo:
    """The nodes alive, their CPUs and GPUs, and the actors ``start_pool`` would start (``assetd check``).
    ConfigError when Ray is missing or the address does not answer."""
    ray = ray_module()
    ours = _connect(config)
    try:
        return _cluster(config, ray)
    finally:
        if ours:
            ray.shutdown()


def _cluster(config: Config, ray: Any) -> ClusterInfo:
    """What the connected Ray has (its nodes alive, and what is free on each now) and the actors ``config`` asks of
    it."""
    alive = [n for n in ray.nodes() if n.get("Alive")]
    names = {n.get("NodeID"): n.get("NodeManagerHostname") or n.get("NodeManagerAddress", "?") for n in alive}
    nodes = [{"node": names[n.get("NodeID")], "cpus": float(n.get("Resources", {}).get("CPU", 0.0)),
              "gpus": float(n.get("Resources", {}).get("GPU", 0.0))} for n in alive]
    actors, per_actor = _plan(config, sum(n["gpus"] for n in nodes))
    return ClusterInfo(config.ray.address or "a local instance", nodes, actors, per_actor, config.ray.cpus_per_actor,
                       free=_free(ray, names))


def _free(ray: Any, names: dict[str, str]) -> list[dict[str, Any]]:
    """What is free now on each node alive (``names``: node id -> host), as ``ClusterInfo.nodes``; through Ray Client,
    where Ray tells only the cluster's sum, one entry "the cluster"."""
    try:
        from ray._private.state import available_resources_per_node

        per_node = available_resources_per_node()
    except Exception:  # noqa: BLE001 - Ray Client, or a Ray that moved it: the sum alone
        free = ray.available_resources()
        return [{"node": "the cluster", "cpus": float(free.get("CPU", 0.0)), "gpus": float(free.get("GPU", 0.0))}]
    return [{"node": names[node], "cpus": float(res.get("CPU", 0.0)), "gpus": float(res.get("GPU", 0.0))}
            for node, res in per_node.items() if node in names]


FREED_SECONDS = 5.0  # how long the resources of actors just stopped (an assetd that just exited) may take to be free


def _wait_free(config: Config, ray: Any, cluster: ClusterInfo, actors: int) -> ClusterInfo:
    """``cluster`` once what is free holds ``actors`` actors; after ``FREED_SECONDS`` without, ConfigError saying
    what is free and what is asked (Ray would queue the actors until another assetd lets go: a start that waits
    for that, or hangs, is worse than a refusal that says why)."""
    deadline = time.monotonic() + FREED_SECONDS
    while not cluster.fits_free(actors):
        if time.monotonic() >= deadline:
            raise ConfigError(f"ray.{cluster.free_problem(actors)}")
        time.sleep(0.25)
        cluster = _cluster(config, ray)
    return cluster


def _when_ready(ray: Any, handles: list[Any], names: list[str], every: float = 30.0,
                stop: threading.Event | Callable[[], bool] | None = None) -> list[Any]:
    """Each actor's ``ready()``, waiting as long as its models take to load (minutes for a large one on a cold
    box), and saying every ``every`` seconds which actors are still not ready, so a start that waits is explained.
    ``StopRequested`` as soon as ``stop`` is set (a signal: the command stops at once, not after the wait)."""
    stopping = (stop.is_set if isinstance(stop, threading.Event) else stop) or (lambda: False)
    refs = [h.ready.remote() for h in handles]
    waiting = dict(zip(refs, names))
    started = said = time.monotonic()
    while waiting:
        done, _ = ray.wait(list(waiting), num_returns=len(waiting), timeout=0.25)
        for ref in done:
            waiting.pop(ref, None)
        if waiting and stopping():
            raise StopRequested(f"stopped while waiting for {', '.join(waiting.values())} to start")
        if waiting and time.monotonic() - said >= every:
            said = time.monotonic()
            try:
                free = f"; {_cluster_free(ray)}"
            except Exception:  # noqa: BLE001 - the line without the figures
                free = ""
            log.info("executor ray: after %.0fs still waiting for %s (loading models, or waiting for a node with "
                     "the GPUs and CPUs it asks for%s)", said - started, ", ".join(waiting.values()), free)
    return ray.get(refs)


def _cluster_free(ray: Any) -> str:
    free = ray.available_resources()
    return f"free now: {free.get('CPU', 0.0):g} CPUs, {free.get('GPU', 0.0):g} GPUs"


def start_pool(config: Config, rules: list[Rule], *, actors: int | None = None,
               stop: threading.Event | Callable[[], bool] | None = None) -> Pool:
    """Start the chain actors (``ray.actors``, or at most ``actors``: ``assetd process`` uses one) and wait for each
    to have loaded its models: ConfigError (exit 2 at start) listing every actor's problem with its node, e.g. a
    model missing from that box's cache; also when the cluster's free CPUs/GPUs cannot hold them now (another
    assetd holds them: Ray would queue them until it lets go). ``StopRequested`` when ``stop`` is set while
    waiting (a signal): the actors started so far are stopped."""
    ray = ray_module()
    started = _connect(config)
    pool = None
    try:
        cluster = _cluster(config, ray)
        placement = cluster.placement_problems(config)
        if placement:
            raise ConfigError([f"ray.{p}" for p in placement])
        count = cluster.actors if actors is None else min(actors, cluster.actors)
        cluster = _wait_free(config, ray, cluster, count)
        per_actor = cluster.gpus_per_actor
        env = {k: v for k, v in os.environ.items() if k.startswith("ASSETD_")}  # failpoints (tests), as here
        remote = ray.remote(ChainRunner).options(
            num_gpus=per_actor, num_cpus=config.ray.cpus_per_actor, max_restarts=config.ray.max_restarts,
            max_task_retries=0, max_concurrency=2, runtime_env={"env_vars": env} if env else None)

        names = [f"actor-{i + 1}" for i in range(count)]
        handles = [remote.remote(config, rules, name) for name in names]
        every = list(handles)  # and the fresh ones workers start later: ``close`` stops them all

        def make_actor(name: str) -> Any:
            every.append(remote.remote(config, rules, name))
            return every[-1]

        pool = Pool(handles, names, make_actor, started, every=every)
        problems: list[str] = []
        try:
            for name, (node, found, warnings_) in zip(names, _when_ready(ray, handles, names, stop=stop)):
                pool.nodes[name] = node
                problems += found
                for warning in warnings_:
                    log.warning("%s on %s: %s", name, node, warning)
        except ray.exceptions.RayError as exc:
            problems.append(f"a chain actor could not start: {type(exc).__name__}: {exc}")
        if problems:
            raise ConfigError(problems)
        log.info("executor ray: %d actor(s) (%s), %g GPU and %g CPU each", count,
                 ", ".join(f"{n} on {pool.nodes[n]}" for n in names), per_actor, config.ray.cpus_per_actor)
        return pool
    except BaseException:
        if pool is not None:
            pool.close()  # shuts down a Ray it started
        elif started and ray.is_initialized():
            ray.shutdown()
        raise
