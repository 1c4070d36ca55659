"""Stage ``upscale``, backend ``lanczos``: enlarge to a long edge or by a factor, never shrink.

Resampling goes through ``pixels.resize`` (premultiplied alpha, so cut-out edges get no dark
halo). Enlarging invents no detail, so the factor is capped at ``max_factor`` and the cap is
recorded rather than silently exceeded. ``Asset.scale`` is multiplied by the factor used.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError, PermanentError
from ..pixels import fit_long_edge, resize, resize_mask
from ..schema import opt
from .base import Asset, Stage, register
from .framing import parse_ratio


@dataclass
class UpscaleOptions:
    long_edge: int | None = opt(None, min=16, doc="enlarge until the long edge is this many pixels (neither this nor "
                                                  "factor: the largest long_edge of the channels the rule sends "
                                                  "upscale outputs to)")
    factor: float | None = opt(None, min=1.0, doc="enlarge by this factor instead of to a long edge")
    sharpen: float = opt(0.3, min=0.0, max=2.0, doc="unsharp-mask strength after enlarging (0: off)")
    max_factor: float = opt(4.0, min=1.0, max=16.0,
                            doc="never enlarge more than this; a larger request is capped and recorded")


def target_size(width: int, height: int, factor: float, ratio: str | None = None) -> tuple[int, int]:
    """Size after enlarging by ``factor``, keeping a crop's exact ratio when it has one."""
    long_edge = round(max(width, height) * factor)
    w, h = fit_long_edge(width, height, long_edge)
    if ratio:
        rw, rh = parse_ratio(ratio)
        if w >= h:
            h = max(1, round(w * rh / rw))
        else:
            w = max(1, round(h * rw / rh))
    return w, h


def channels_long_edge(where: str, outputs: list[Any], config: Any) -> tuple[int | None, str]:
    """The largest ``long_edge`` of the channels a rule sends upscale outputs to; else None and why not."""
    channels = sorted({o.channel for o in outputs if o.source == "upscale"})
    edges = [config.channels[c].long_edge for c in channels if config.channels[c].long_edge]
    if edges:
        return max(edges), ""
    if not channels:
        return None, f"{where}: no long_edge or factor, and no output of this rule is from upscale; set one here"
    return None, (f"{where}: no long_edge or factor, and none of channels {', '.join(channels)} sets long_edge; "
                  "set one here, or a long_edge on one of those channels")


@register
class LanczosUpscale(Stage):
    """Lanczos enlargement with optional light sharpening; records what it did."""

    step = "upscale"
    backend = "lanczos"
    Options = UpscaleOptions

    @classmethod
    def validate(cls, options: UpscaleOptions, where: str, ctx_config: Any) -> list[str]:
        if options.long_edge is not None and options.factor is not None:
            return [f"{where}: set long_edge or factor, not both"]
        return []

    @classmethod
    def resolve(cls, options: UpscaleOptions, where: str, outputs: list[Any], config: Any) -> UpscaleOptions:
        if options.long_edge is not None or options.factor is not None:
            return options
        long_edge, why = channels_long_edge(where, outputs, config)
        if long_edge is None:
            raise ConfigError(why)
        return dataclasses.replace(options, long_edge=long_edge)

    def run(self, asset: Asset) -> list[Asset]:
        o: UpscaleOptions = self.options
        w, h = asset.width, asset.height
        if o.factor is not None:
            wanted = o.factor
        elif o.long_edge is not None:
            wanted = o.long_edge / max(w, h)
        else:
            raise PermanentError("upscale: neither long_edge nor factor is set; set one in the rule")
        factor = min(max(wanted, 1.0), o.max_factor)
        notes: dict[str, Any] = {"backend": "lanczos", "factor": 1.0, "from": [w, h], "to": [w, h]}
        if wanted > o.max_factor:
            notes["capped"] = {"requested": round(wanted, 4), "max_factor": o.max_factor}
        if factor <= 1.0:
            out = asset.derive(asset.pixels, asset.matte)
        else:
            w2, h2 = target_size(w, h, factor, asset.ratio)
            factor = max(w2, h2) / max(w, h)
            pixels = resize(asset.pixels, (w2, h2), sharpen=o.sharpen)
            matte = resize_mask(asset.matte, (w2, h2)) if asset.matte is not None else None
            out = asset.derive(pixels, matte, scale=asset.scale * factor)
            notes.update(factor=round(factor, 6), to=[w2, h2])
        out.notes["upscale"] = notes
        return [out]
