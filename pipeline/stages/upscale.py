"""Stage ``upscale``, backend ``lanczos``: enlarge to a long edge or by a factor, never shrink.

Resampling goes through ``pixels.resize`` (premultiplied alpha, so cut-out edges get no dark
halo). Enlarging invents no detail, so the factor is capped at ``max_factor`` and the cap is
recorded rather than silently exceeded. ``Asset.scale`` is multiplied by the factor used.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..errors import PermanentError
from ..pixels import resize, resize_mask
from ..schema import opt
from .base import Asset, Stage, define_step, register
from .subject import (aimed_factor, enlarged_size, factor_option, long_edge_option, max_factor_option,
                      resolve_size, size_problems, targets_option)

define_step("upscale", "lanczos", doc="enlarges; keeps a crop's ratio")


@dataclass
class UpscaleOptions:
    long_edge: int | None = long_edge_option("enlarge until the long edge is this many pixels (neither this nor "
                                             "factor: each ratio only as far as the channels the rule sends it "
                                             "to from upscale need: their size, min_long_edge, else long_edge)")
    factor: float | None = factor_option()
    sharpen: float = opt(0.3, min=0.0, max=2.0, doc="unsharp-mask strength after enlarging (0: off)")
    max_factor: float = max_factor_option()
    review_above: float = opt(2.5, min=1.0, max=100.0,
                              doc="mark the job for review when enlarging more than this: Lanczos only interpolates, "
                                  "so the product goes soft (backend spandrel adds detail)")
    targets: dict[str, int] = targets_option()


@register
class LanczosUpscale(Stage):
    """Lanczos enlargement with optional light sharpening; records what it did."""

    step = "upscale"
    backend = "lanczos"
    Options = UpscaleOptions

    @classmethod
    def validate(cls, options: UpscaleOptions, where: str, ctx_config: Any) -> list[str]:
        return size_problems(options, where)

    @classmethod
    def resolve(cls, options: UpscaleOptions, where: str, outputs: list[Any], config: Any) -> UpscaleOptions:
        return resolve_size(options, where, outputs, config, required=True)  # no size of its own

    def run(self, asset: Asset) -> list[Asset]:
        o: UpscaleOptions = self.options
        w, h = asset.width, asset.height
        wanted = aimed_factor(o, w, h, asset.ratio)
        if wanted is None:
            raise PermanentError("upscale: neither long_edge nor factor is set; set one in the rule")
        notes: dict[str, Any] = {"backend": "lanczos", "factor": 1.0, "from": [w, h], "to": [w, h]}
        if wanted > o.max_factor:
            notes["capped"] = {"requested": round(wanted, 4), "max_factor": o.max_factor}
        size = enlarged_size(w, h, wanted, o.max_factor, asset.ratio)
        if size is None:
            out = asset.derive(asset.pixels, asset.matte)
        else:
            w2, h2 = size
            factor = max(w2, h2) / max(w, h)
            pixels = resize(asset.pixels, (w2, h2), sharpen=o.sharpen)
            matte = resize_mask(asset.matte, (w2, h2)) if asset.matte is not None else None
            out = asset.derive(pixels, matte, scale=asset.scale * factor)
            notes.update(factor=round(factor, 6), to=[w2, h2])
            if factor > o.review_above:
                which = f"upscale {asset.ratio}" if asset.ratio else "upscale"
                out.review.append(f"{which}: enlarged {factor:.2f}× by Lanczos (review_above {o.review_above:g}): "
                                  f"check the product's sharpness")
        out.notes["upscale"] = notes
        return [out]
