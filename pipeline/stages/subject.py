"""What several stages share about the subject, so no stage imports another for it.

Where the subject is (``find_subject`` for framing, ``cutout_subject`` for placing), its matte
(``matte_from_alpha``, ``paste_matte``), trimming a cut-out to it (``trim_box``, ``trimmed``),
putting it on a canvas 1:1 (``composite``: the composite and diffusers scenes both do); the
option groups two backends of a step both offer (where the subject sits; how much to enlarge it),
declared once so their validation cannot diverge; and the one size an enlargement aims at
(``enlarged_size``).
"""
from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import PermanentError
from ..pixels import fit_long_edge, max_value, to_dtype
from ..schema import opt
from .base import Asset
from .framing import Box, parse_ratio, subject_box

SUBJECT_THRESHOLD = 25  # matte values above this (≈10 %) count for the subject's box; faint haze does not
SUBJECT_ALPHA = 0.1  # alpha above this fraction counts for a cut-out's subject box (faint matting haze does not)
_ROWS = 512  # rows composite() blends at a time


def matte_from_alpha(alpha: np.ndarray) -> np.ndarray:
    """uint8 matte with 255 exactly where ``alpha`` is fully opaque (so 255 always means 'exact pixels')."""
    if alpha.dtype == np.uint8:
        return alpha.copy()
    m = ((alpha.astype(np.uint32) + 128) // 257).astype(np.uint8)
    m[(m == 255) & (alpha < 65535)] = 254
    return m


def paste_matte(matte: np.ndarray, size: tuple[int, int], offset: tuple[int, int]) -> np.ndarray:
    """A (w, h) = ``size`` uint8 matte, zero except where ``matte`` lands with its (0, 0) at ``offset``.

    ``matte`` may be an alpha channel (uint8/uint16, converted with ``to_dtype``); parts past the
    new canvas are cut off.
    """
    w, h = size
    ox, oy = offset
    out = np.zeros((h, w), np.uint8)
    target = Box(0, 0, matte.shape[1], matte.shape[0]).shift(ox, oy).intersect(Box(0, 0, w, h))
    if target is not None:
        src = target.shift(-ox, -oy)
        out[target.y0:target.y1, target.x0:target.x1] = to_dtype(matte[src.y0:src.y1, src.x0:src.x1], np.uint8)
    return out


def trim_box(alpha: np.ndarray, margin: int) -> tuple[int, int, int, int] | None:
    """(x0, y0, x1, y1), end-exclusive, of the non-transparent pixels grown by ``margin``, clamped; None if empty."""
    rows = np.flatnonzero(alpha.any(axis=1))
    cols = np.flatnonzero(alpha.any(axis=0))
    if len(rows) == 0:
        return None
    h, w = alpha.shape
    return (max(0, int(cols[0]) - margin), max(0, int(rows[0]) - margin),
            min(w, int(cols[-1]) + 1 + margin), min(h, int(rows[-1]) + 1 + margin))


def trimmed(pixels: np.ndarray, matte: np.ndarray, coverage: np.ndarray,
            margin: int) -> tuple[np.ndarray, np.ndarray, list[int] | None]:
    """``pixels`` and ``matte`` cut (as copies) to ``trim_box(coverage, margin)``, and that box for the
    manifest; unchanged with None when ``coverage`` is empty."""
    box = trim_box(coverage, margin)
    if box is None:
        return pixels, matte, None
    x0, y0, x1, y1 = box
    return pixels[y0:y1, x0:x1].copy(), matte[y0:y1, x0:x1].copy(), [x0, y0, x1, y1]


def cutout_subject(asset: Asset, who: str) -> Box:
    """The subject's box in a cut-out; PermanentError when there is no cut-out or nothing in it."""
    if not asset.has_alpha:
        raise PermanentError(f"{who} needs a cut-out: add remove_background before it or drop a PNG with "
                             "transparency (an RGBA image)")
    subject = subject_box(asset.pixels[..., 3], int(SUBJECT_ALPHA * max_value(asset.pixels)))
    if subject is None:
        raise PermanentError(f"{who}: the cut-out is fully transparent: no subject to place")
    return subject


def find_subject(asset: Asset) -> tuple[Box | None, np.ndarray | None, str]:
    """The subject's box, the matte it came from, and where that came from.

    Fallback chain: the asset's matte → its alpha channel → the studio backend's
    ``estimate_subject_matte`` (plain backdrop photos) → None, meaning the whole image is framed.
    """
    if asset.matte is not None:
        return subject_box(asset.matte, SUBJECT_THRESHOLD), asset.matte, "matte"
    if asset.has_alpha:
        matte = to_dtype(asset.pixels[..., 3], np.uint8)
        return subject_box(matte, SUBJECT_THRESHOLD), matte, "alpha"
    from .remove_background import estimate_subject_matte  # the backdrop model lives with the studio backend

    matte = estimate_subject_matte(asset.pixels)
    if matte is None:
        return None, None, "whole image"
    box = subject_box(matte, SUBJECT_THRESHOLD)
    return (box, matte, "estimated") if box is not None else (None, None, "whole image")


def composite(canvas: np.ndarray, cutout: np.ndarray, x: int, y: int, gains: np.ndarray | None = None) -> Box | None:
    """Alpha-composite RGBA ``cutout`` onto RGB ``canvas`` in place, its (0, 0) at (x, y), 1:1.

    Pixels of full alpha are copied exactly (unless ``gains`` recolour them). Returns the
    output box that was touched (None if the cut-out misses the canvas).
    """
    alpha = cutout[..., 3]
    content = subject_box(alpha, 0)
    if content is None:
        return None
    target = content.shift(x, y).intersect(Box(0, 0, canvas.shape[1], canvas.shape[0]))
    if target is None:
        return None
    src = target.shift(-x, -y)
    top = float(max_value(canvas))
    for r0 in range(0, target.height, _ROWS):  # row blocks: float copies of a 24 MP cut-out add up
        r1 = min(target.height, r0 + _ROWS)
        fg = cutout[src.y0 + r0:src.y0 + r1, src.x0:src.x1, :3]
        a_int = alpha[src.y0 + r0:src.y0 + r1, src.x0:src.x1]
        bg = canvas[target.y0 + r0:target.y0 + r1, target.x0:target.x1]
        fgf = fg.astype(np.float32)
        if gains is not None:
            fgf *= gains
            np.clip(fgf, 0, top, out=fgf)
        a = (a_int.astype(np.float32) / top)[..., None]
        mixed = np.rint(fgf * a + bg.astype(np.float32) * (1.0 - a)).astype(canvas.dtype)
        if gains is None:
            solid = a_int == int(top)
            mixed[solid] = fg[solid]  # exact, not just float-exact
        bg[...] = mixed
    return target

# --- option groups: call these in an Options dataclass, one field each ---------------------------

def _check_scale(value: float) -> str | None:
    return None if 0.0 < value <= 1.0 else f"expected a number with 0 < scale ≤ 1, got {value!r}"


def anchor_option() -> Any:
    return opt("bottom", choices=("bottom", "center", "top"),
               doc="where the subject sits: bottom (standing on the bottom margin) | center | top")


def scale_option() -> Any:
    return opt(0.6, check=_check_scale,
               doc="subject box size as a fraction of the output, along its limiting side (0 < s ≤ 1)")


def margin_option() -> Any:
    return opt(0.05, min=0.0, max=0.45, doc="space kept between the subject and the edges, "
                                            "as a fraction of the output's side")


def long_edge_option(doc: str) -> Any:
    return opt(None, min=16, doc=doc)


def factor_option() -> Any:
    return opt(None, min=1.0, doc="enlarge by this factor instead of to a long edge")


def max_factor_option() -> Any:
    return opt(4.0, min=1.0, max=16.0, doc="never enlarge more than this; a larger request is capped and recorded")


# --- how much to enlarge -------------------------------------------------------------------------

def requested_factor(width: int, height: int, long_edge: int | None, factor: float | None) -> float | None:
    """The enlargement the options ask for: ``long_edge`` (over the long side) or ``factor``; None: neither."""
    if long_edge is not None:
        return long_edge / max(width, height)
    return factor


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


def enlarged_size(width: int, height: int, wanted: float, max_factor: float,
                  ratio: str | None = None) -> tuple[int, int] | None:
    """The size to enlarge to for a ``wanted`` factor capped at ``max_factor`` (keeping ``ratio``), or
    None when that is no enlargement (upscaling never shrinks)."""
    factor = min(max(wanted, 1.0), max_factor)
    return target_size(width, height, factor, ratio) if factor > 1.0 else None


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
