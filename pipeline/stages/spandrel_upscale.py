"""upscale backend ``spandrel``: a super-resolution network (Real-ESRGAN, SwinIR, HAT, SPAN, ...),
architecture auto-detected from the weights file by spandrel's ModelLoader.

The image is processed in overlapping tiles blended with linear feathers, and the output is built
one row of tiles at a time, so any image size runs in bounded memory: only the final image and
one tile row of float accumulators exist at once. When the requested size is not the model's
fixed scale, each tile's output is resampled into place (the feathered overlaps hide the tile
borders of that resampling). On a CUDA out-of-memory the tile size halves and the image is redone.
Alpha and matte are resized separately (Lanczos / linear). The subject is necessarily resampled
here: ``Asset.scale`` records the factor.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import cv2
import numpy as np

from ..errors import ConfigError, TransientError
from ..models import (ModelKind, empty_cuda_cache, gpu_errors, is_cuda_oom, manager_for, require,
                      weights_from_file, weights_present)
from ..pixels import max_value, resize_mask
from ..schema import opt
from . import upscale  # noqa: F401  (declares the step this module adds a backend to)
from .base import Asset, Stage, register
from .subject import (aimed_factor, enlarged_size, factor_option, long_edge_option, max_factor_option,
                      resolve_size, size_problems, targets_option)

if TYPE_CHECKING:
    from ..config import Config
    from ..models import ModelManager

MIN_TILE = 64


# ------------------------------------------------------------------------------ pure geometry


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of size ``tile`` covering [0, length) with at least ``overlap`` shared."""
    if length <= tile:
        return [0]
    step = max(1, tile - overlap)
    starts = list(range(0, length - tile + 1, step))
    if starts[-1] + tile < length:
        starts.append(length - tile)
    return starts


def feather(n: int, ramp: float, start: bool, end: bool) -> np.ndarray:
    """1-D blend weights of length ``n``: linear ramps of ``ramp`` px at the sides that have a neighbour."""
    i = np.arange(n, dtype=np.float32) + 0.5
    w = np.ones(n, np.float32)
    if ramp > 0:
        if start:
            w = np.minimum(w, i / ramp)
        if end:
            w = np.minimum(w, (n - i) / ramp)
    return np.maximum(w, 1e-3)


# ----------------------------------------------------------------------------------- tiling


class TileOutOfMemory(Exception):
    """A tile did not fit on the GPU; the caller retries with smaller tiles."""


def tiled_upscale(rgb: np.ndarray, run: Callable[[np.ndarray], np.ndarray], model_scale: int,
                  size: tuple[int, int], tile: int, overlap: int) -> np.ndarray:
    """Upscale H×W×3 ``rgb`` (uint8/uint16) to ``size`` (w, h) through ``run`` tile by tile.

    ``run`` maps a float32 h×w×3 tile in 0..1 to a (h·s)×(w·s)×3 float32 array (s = model_scale).
    Output has the input's dtype. Memory: the output plus one row of tiles in float32.
    """
    h, w = rgb.shape[:2]
    tw_out, th_out = size
    fx, fy = tw_out / w, th_out / h
    top = float(max_value(rgb))
    overlap = min(overlap, tile // 4)
    ys, xs = tile_starts(h, tile, overlap), tile_starts(w, tile, overlap)
    out = np.empty((th_out, tw_out, 3), rgb.dtype)
    carry: tuple[np.ndarray, np.ndarray] | None = None

    def ty(v: int) -> int:
        return int(round(v * fy))

    def tx(v: int) -> int:
        return int(round(v * fx))

    for r, y in enumerate(ys):
        y1 = min(h, y + tile)
        Y0, Y1 = ty(y), ty(y1)
        acc = np.zeros((Y1 - Y0, tw_out, 3), np.float32)
        wsum = np.zeros((Y1 - Y0, tw_out, 1), np.float32)
        if carry is not None:
            n = carry[0].shape[0]
            acc[:n] += carry[0]
            wsum[:n] += carry[1]
        wy = feather(Y1 - Y0, overlap * fy, start=r > 0, end=r < len(ys) - 1)
        for c, x in enumerate(xs):
            x1 = min(w, x + tile)
            X0, X1 = tx(x), tx(x1)
            piece = rgb[y:y1, x:x1].astype(np.float32) / top
            up = run(piece)
            if up.shape[:2] != (Y1 - Y0, X1 - X0):
                shrink = up.shape[0] > Y1 - Y0
                up = cv2.resize(up, (X1 - X0, Y1 - Y0), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_CUBIC)
            wx = feather(X1 - X0, overlap * fx, start=c > 0, end=c < len(xs) - 1)
            weight = wy[:, None, None] * wx[None, :, None]
            acc[:, X0:X1] += up * weight
            wsum[:, X0:X1] += weight
        done = ty(ys[r + 1]) - Y0 if r + 1 < len(ys) else Y1 - Y0
        final = acc[:done] / wsum[:done]
        out[Y0:Y0 + done] = np.clip(np.rint(final * top), 0, top).astype(rgb.dtype)
        carry = (acc[done:], wsum[done:])
    return out


# ------------------------------------------------------------------------------------ the model


class SpandrelModel(ModelKind):
    """A super-resolution weights file; its name is the resolved path. assetd never downloads these."""

    kind = "spandrel"

    @classmethod
    def name_for(cls, config: "Config", model: Path | None) -> str | None:
        """The weights file's absolute path (``model``, else models.spandrel; both resolved when they load); None
        when neither is set."""
        path = model or config.models.spandrel
        return str(path) if path else None

    @classmethod
    def load(cls, manager: "ModelManager", name: str) -> Any:
        """A spandrel ImageModelDescriptor (architecture auto-detected), in eval mode on the device.

        On a GPU it runs in bf16 or fp16 when the architecture supports it, else fp32.
        """
        file = Path(name)
        model = weights_from_file(file, "upscale model", "the spandrel backend")
        torch = require("torch", "the spandrel backend")
        spandrel = require("spandrel", "the spandrel backend")
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

    @classmethod
    def pull(cls, config: "Config", name: str) -> str:
        """Only checks the file is there: spandrel weights are put in place by hand."""
        return weights_present(name, "upscale model", "spandrel")


# ------------------------------------------------------------------------------------ stage


@dataclass
class SpandrelOptions:
    model: Path | None = opt(None, doc="super-resolution weights (.pth/.safetensors: Real-ESRGAN, SwinIR, HAT, SPAN, "
                                      "...), architecture auto-detected; default: models.spandrel")
    long_edge: int | None = long_edge_option("make the long edge this many pixels (neither this nor factor: each "
                                             "ratio only as far as the channels the rule sends it to from upscale "
                                             "need: their size, min_long_edge, else long_edge; none of these: "
                                             "the model's scale)")
    factor: float | None = factor_option()
    max_factor: float = max_factor_option()
    tile: int = opt(512, min=MIN_TILE, max=4096, doc="tile size in input pixels (halved automatically on GPU "
                                                     "out-of-memory)")
    overlap: int = opt(32, min=0, max=512, doc="pixels shared by neighbouring tiles, blended with a feather")
    targets: dict[str, int] = targets_option()


@register
class SpandrelUpscale(Stage):
    """A super-resolution model spandrel recognises (Real-ESRGAN, SwinIR, HAT, SPAN...), tiled with feathering."""

    step = "upscale"
    backend = "spandrel"
    Options = SpandrelOptions
    needs_models = True
    model_kind = SpandrelModel

    def __init__(self, options: Any, ctx: Any):
        super().__init__(options, ctx)
        self._tile = options.tile

    @classmethod
    def validate(cls, options: SpandrelOptions, where: str, ctx_config: Any) -> list[str]:
        path = options.model or ctx_config.models.spandrel
        if not path:
            return [f"{where}.model: required (or set models.spandrel in the config): a .pth/.safetensors file"]
        if not path.is_file():
            return [f"{where}.model: file {path} not found"]
        return size_problems(options, where)

    @classmethod
    def resolve(cls, options: SpandrelOptions, where: str, outputs: list[Any], config: Any) -> SpandrelOptions:
        return resolve_size(options, where, outputs, config, required=False)  # else the model's own scale

    @property
    def model_path(self) -> str:
        return self.model_ref(self.options, self.ctx.config).name

    def _model(self) -> Any:
        return manager_for(self.ctx).load(self.model_ref(self.options, self.ctx.config))

    def prepare(self) -> None:
        self._model()

    def run(self, asset: Asset) -> list[Asset]:
        model = self._model()
        o = self.options
        w, h = asset.width, asset.height
        wanted = aimed_factor(o, w, h, asset.ratio)
        if wanted is None:
            wanted = float(model.scale)
        size = enlarged_size(w, h, wanted, o.max_factor, asset.ratio)
        if size is None or (size[0] <= w and size[1] <= h):
            result = asset.derive(asset.pixels, asset.matte)
            result.notes["upscale"] = {"backend": "spandrel", "skipped": "already at or above the requested size"}
            return [result]
        factor = max(size) / max(w, h)
        run = self._runner(model)
        rgb = asset.pixels[..., :3]
        while True:
            try:
                with gpu_errors(f"upscale {model.architecture.id}"):
                    up = tiled_upscale(rgb, run, model.scale, size, self._tile, o.overlap)
                break
            except TileOutOfMemory:
                empty_cuda_cache()
                if self._tile // 2 < MIN_TILE:
                    raise TransientError(f"upscale: GPU out of memory even with {self._tile}px tiles; will retry")
                self._tile //= 2
                self.ctx.log.warning("upscale: GPU out of memory; retrying with %dpx tiles", self._tile)
        if asset.has_alpha:
            alpha = cv2.resize(asset.pixels[..., 3], size, interpolation=cv2.INTER_LANCZOS4)
            up = np.dstack([up, alpha])
        matte = resize_mask(asset.matte, size) if asset.matte is not None else None
        result = asset.derive(up, matte, scale=asset.scale * factor)
        result.notes["upscale"] = {
            "backend": "spandrel", "model": self.model_path, "architecture": model.architecture.id,
            "model_scale": model.scale, "factor": round(factor, 6), "size": list(size), "tile": self._tile,
        }
        if wanted > o.max_factor:
            result.notes["upscale"]["capped"] = {"requested": round(wanted, 4), "max_factor": o.max_factor}
        return [result]

    def _runner(self, model: Any) -> Callable[[np.ndarray], np.ndarray]:
        import torch

        def run(piece: np.ndarray) -> np.ndarray:
            t = torch.from_numpy(np.ascontiguousarray(piece.transpose(2, 0, 1)))[None]
            try:
                with torch.inference_mode():
                    y = model(t.to(model.device, model.dtype))
                    return y[0].float().clamp_(0, 1).permute(1, 2, 0).cpu().numpy()
            except Exception as exc:
                if is_cuda_oom(exc):
                    raise TileOutOfMemory() from exc
                raise

        return run

