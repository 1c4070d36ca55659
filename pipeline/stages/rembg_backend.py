"""remove_background backend ``rembg``: a segmentation model (BiRefNet, ISNet, BRIA RMBG, U²-Net...)
finds the subject; its mask becomes the alpha channel of the untouched input pixels.

The rembg session is created once per worker through the model manager and reused for every job
(``remove()`` is always given ``session=``: without it rembg creates a session that downloads).
Only the mask comes from the model, and only as the answer to "which pixels are subject": the model
predicts at about 320 px, so its edge is found again at full resolution against the locally estimated
background (the studio backend's ``refine_edge``): a 24 MP cut-out gets a 24 MP edge. Pixels inside
the edge band keep the input RGB exactly; decontamination only touches the soft edge.
"""
from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

from ..errors import ConfigError, PermanentError
from ..imageio import clear_transparent
from ..models import ModelKind, gpu_errors, manager_for, pull_hint, require
from ..pixels import max_value, to_dtype
from ..schema import opt
from . import remove_background  # noqa: F401  (declares the step this module adds a backend to)
from .base import Asset, Stage, register
from .subject import cut_edges, decontaminate_edges, matte_from_alpha, refine_edge, trimmed, working_image

if TYPE_CHECKING:
    from ..config import Config
    from ..models import ModelManager

log = logging.getLogger("assetd.models")


# ------------------------------------------------------------------------------------- the model


def apply_cache_dir(config: "Config") -> None:
    """Point rembg at ``models.cache_dir/rembg`` when a cache folder is configured."""
    if config.models.cache_dir is not None:
        os.environ["U2NET_HOME"] = str(Path(config.models.cache_dir) / "rembg")


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


class RembgModel(ModelKind):
    """A rembg session: a named rembg model under rembg's home, or a custom .onnx file."""

    kind = "rembg"
    setting = "rembg"

    @classmethod
    def load(cls, manager: "ModelManager", name: str) -> Any:
        """A rembg session, on CUDA when the device is a GPU and onnxruntime has the CUDA provider."""
        apply_cache_dir(manager.config)
        path = rembg_model_file(manager.config, name)
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
            if is_onnx_path(name):
                return new_session("u2net_custom", model_path=str(path), providers=providers)
            return new_session(name, providers=providers)
        except ConfigError:
            raise
        except Exception as exc:  # onnxruntime raises its own error types for corrupt files
            raise ConfigError(f"rembg model {name!r} ({path}) cannot be loaded: {type(exc).__name__}: "
                              f"{str(exc).splitlines()[0] if str(exc) else ''}") from exc

    @classmethod
    def pull(cls, config: "Config", name: str) -> str:
        apply_cache_dir(config)  # fetched where load looks: models.cache_dir/rembg when one is set
        if is_onnx_path(name):
            return f"{name}: {rembg_model_file(config, name)} (custom file, nothing to fetch)"
        return f"{name}: {_rembg_session_class(name).download_models()}"


# ------------------------------------------------------------------------------------- the stage


@dataclass
class RembgOptions:
    model: str | None = opt(None, doc="rembg model name (birefnet-general, birefnet-portrait, isnet-general-use, "
                                      "bria-rmbg, u2net, ...) or a path to a custom .onnx segmentation model; "
                                      "default: models.rembg")
    alpha_matting: bool = opt(False, doc="refine the soft edge with closed-form alpha matting (slower; hair, fur)")
    alpha_matting_erode: int = opt(10, min=1, max=100,
                                   doc="alpha matting: pixels around the mask edge treated as unknown")
    post_process_mask: bool = opt(False, doc="smooth the model's mask (morphological clean-up) before use")
    refine_edge: bool = opt(True, doc="decide the soft edge at full resolution against the locally estimated "
                                      "background (the model predicts at about 320 px); false: the model's "
                                      "upsampled mask is the alpha")
    work_size: int = opt(1024, min=256, max=4096,
                         doc="long edge at which the model's mask is read before the edge is refined at full size")
    decontaminate: bool = opt(True, doc="remove the backdrop's colour from semi-transparent edge pixels")
    trim: bool = opt(False, doc="crop the cut-out to the subject plus trim_margin (default: keep the input canvas)")
    trim_margin: int = opt(0, min=0, max=10000, doc="pixels kept around the subject when trim is on")


@register
class RembgBackground(Stage):
    """A rembg segmentation model (BiRefNet, ISNet, U²-Net, BRIA, or your ONNX); opaque pixels stay the input's."""

    step = "remove_background"
    backend = "rembg"
    Options = RembgOptions
    needs_models = True
    model_kind = RembgModel

    @classmethod
    def validate(cls, options: RembgOptions, where: str, ctx_config: Any) -> list[str]:
        model = options.model or ctx_config.models.rembg
        if is_onnx_path(model) and not ctx_config.resolve(model).is_file():
            return [f"{where}.model: file {ctx_config.resolve(model)} not found"]
        return []

    @property
    def model_name(self) -> str:
        return self.model_ref(self.options, self.ctx.config).name

    def _session(self) -> Any:
        return manager_for(self.ctx).load(self.model_ref(self.options, self.ctx.config))

    def prepare(self) -> None:
        apply_cache_dir(self.ctx.config)
        rembg_model_file(self.ctx.config, self.model_name)  # fail fast, before loading anything
        self._session()

    def run(self, asset: Asset) -> list[Asset]:
        from PIL import Image

        rgb = asset.pixels[..., :3]
        rgb8 = to_dtype(rgb, np.uint8)
        image = Image.fromarray(np.ascontiguousarray(rgb8), "RGB")
        session = self._session()
        with gpu_errors(f"rembg {self.model_name}"):
            mask8 = self._mask(image, session)
        if mask8.shape != rgb.shape[:2]:
            raise PermanentError(f"rembg model {self.model_name} returned a {mask8.shape} mask for a "
                                 f"{rgb.shape[:2]} image")
        if not mask8.any():
            raise PermanentError(f"rembg model {self.model_name} found no subject in the image")
        notes = {"backend": "rembg", "model": self.model_name, "alpha_matting": self.options.alpha_matting}
        if self.options.refine_edge and not self.options.alpha_matting:
            # the model decides which pixels are subject; the edge is found again at full resolution
            small = working_image(rgb, self.options.work_size, min_edge=0)
            subject = cv2.resize(mask8, (small.shape[1], small.shape[0]), interpolation=cv2.INTER_AREA) >= 128
            if not subject.any():
                raise PermanentError(f"rembg model {self.model_name} found no subject in the image")
            edge = refine_edge(rgb, subject, small, decontaminate=self.options.decontaminate)
            rgba = edge.pixels
            matte = matte_from_alpha(rgba[..., 3])
            notes.update(edge="full resolution", edge_pixels=int(len(edge.ys)), decontaminated=edge.decontaminated)
        else:
            alpha = to_dtype(mask8, rgb.dtype)
            out_rgb = _decontaminated(rgb, alpha) if self.options.decontaminate else rgb
            rgba = clear_transparent(np.dstack([out_rgb, alpha]), in_place=True)
            matte = mask8
            notes["edge"] = "model mask"
        notes["cut_edges"] = cut_edges(matte)  # before a trim: the photo's own frame
        if self.options.trim:
            rgba, matte, box = trimmed(rgba, matte, mask8, self.options.trim_margin)
            if box is not None:
                notes["trim"] = box
        result = asset.derive(np.ascontiguousarray(rgba), np.ascontiguousarray(matte))
        result.notes["remove_background"] = notes
        return [result]

    def _mask(self, image: Any, session: Any) -> np.ndarray:
        """The model's coverage at full resolution, uint8; alpha matting refines its soft edge."""
        from rembg import remove

        mask = remove(image, session=session, only_mask=True, post_process_mask=self.options.post_process_mask)
        if self.options.alpha_matting:
            from rembg.bg import alpha_matting_cutout

            try:
                cut = alpha_matting_cutout(image, mask, 240, 10, self.options.alpha_matting_erode)
                return np.asarray(cut)[..., 3].copy()
            except ValueError:  # pymatting fails on masks without a clear fore/background: keep the model's
                pass
        return np.asarray(mask.convert("L")).copy()


def _decontaminated(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """The studio backend's edge decontamination, with opaque pixels forced back to the input."""
    out = decontaminate_edges(rgb, alpha)
    opaque = alpha == max_value(alpha)
    out = np.array(out, dtype=rgb.dtype, copy=True)
    out[opaque] = rgb[opaque]
    return out

