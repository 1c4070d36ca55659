"""What several stages share about the subject, so no stage imports another for it.

Where the subject is (``find_subject`` for framing, ``cutout_subject`` for placing), its matte
(``matte_from_alpha``, ``paste_matte``), trimming a cut-out to it (``trim_box``, ``trimmed``),
putting it on a canvas 1:1 (``composite``: the composite and diffusers scenes both do); the
option groups two backends of a step both offer (where the subject sits; how much to enlarge it),
declared once so their validation cannot diverge; the one size an enlargement aims at (``aimed_factor``,
per ratio from what the channels need, gathered by ``resolve_size``; ``enlarged_size``); and the
subject's edge at full resolution from a mask found at working size (``refine_edge``,
``decontaminate_edges``), which both cut-out backends (studio, rembg) use.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from ..errors import ConfigError, PermanentError
from ..pixels import fit_long_edge, max_value, to_dtype
from ..schema import opt
from ..sizes import need_long_edge, ratio_key, sized_ratios
from .base import Asset
from .framing import SIDES, Box, parse_ratio, subject_box

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


CUT_RUN = 0.01  # solid subject along this share of an image edge (at least 2 px) means the photo's frame cuts it


def cut_edges(matte: np.ndarray) -> list[str]:
    """The image edges that cut the subject (a bust cut at the chest, a product shot too tight): sides along which
    solid subject pixels (matte ≥ half) run for at least ``CUT_RUN`` of the edge. In ``SIDES`` order."""
    solid = matte >= (max_value(matte) + 1) // 2
    h, w = solid.shape
    lines = {"left": solid[:, 0], "top": solid[0, :], "right": solid[:, -1], "bottom": solid[-1, :]}
    return [side for side in SIDES if int(lines[side].sum()) >= max(2, CUT_RUN * lines[side].size)]


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


def targets_option() -> Any:
    return opt({}, internal=True, doc="the long edge each ratio's channels need ('*': every ratio), set when the "
                                      "rule loads (resolve_size)")


def channels_targets(where: str, outputs: list[Any], config: Any) -> tuple[dict[str, int], str]:
    """The long edge the upscale step's outputs must reach for the channels the rule sends them to, per ratio
    ('*': outputs that take every ratio, or have none): the largest ``sizes.need_long_edge`` of those channels.
    Empty, and why, when none of them says."""
    targets: dict[str, int] = {}
    channels = sorted({o.channel for o in outputs if o.source == "upscale"})
    for spec in (o for o in outputs if o.source == "upscale"):
        channel = config.channels[spec.channel]
        ratios = spec.ratios or sized_ratios(channel) or [None]
        for ratio in ratios:
            edge = need_long_edge(channel, ratio)
            key = ratio_key(ratio) if ratio else "*"
            if edge:
                targets[key] = max(targets.get(key, 0), edge)
    if targets:
        return targets, ""
    if not channels:
        return {}, f"{where}: no long_edge or factor, and no output of this rule is from upscale; set one here"
    return {}, (f"{where}: no long_edge or factor, and none of channels {', '.join(channels)} sets long_edge, "
                "min_long_edge or size; set one here, or one of those on one of those channels")


def aimed_factor(options: Any, width: int, height: int, ratio: str | None) -> float | None:
    """The enlargement an upscale step's options ask of a width × height image of ``ratio``: ``long_edge`` or
    ``factor``; else the long edge its channels need at that ratio (``targets``; 1.0 when none of them needs more
    of this ratio). None: the options give no size at all."""
    if options.long_edge is not None or options.factor is not None or not options.targets:
        return requested_factor(width, height, options.long_edge, options.factor)
    edges = [options.targets.get(key) for key in ("*", ratio_key(ratio) if ratio else "*")]
    edge = max((e for e in edges if e), default=None)
    return edge / max(width, height) if edge else 1.0


def size_problems(options: Any, where: str) -> list[str]:
    """What both upscale backends refuse in their size options: ``long_edge`` and ``factor`` together."""
    if options.long_edge is not None and options.factor is not None:
        return [f"{where}: set long_edge or factor, not both"]
    return []


def resolve_size(options: Any, where: str, outputs: list[Any], config: Any, *, required: bool) -> Any:
    """The options with ``targets`` (per ratio, from the rule's channels: ``channels_targets``) when neither
    ``long_edge`` nor ``factor`` is set, so each ratio is enlarged only as much as its channels need.
    ``required``: a backend with no size of its own refuses the rule when no channel gives one."""
    if options.long_edge is not None or options.factor is not None:
        return options
    targets, why = channels_targets(where, outputs, config)
    if not targets:
        if required:
            raise ConfigError(why)
        return options
    if set(targets) == {"*"}:  # the same for every ratio: the step's long_edge, as if the rule spelled it out
        return dataclasses.replace(options, long_edge=targets["*"])
    return dataclasses.replace(options, targets=targets)

# --- the subject's edge at full resolution (remove_background studio and rembg) ------------------

KNOWN_MARGIN = 2  # working pixels between the outline and the pixels taken as pure subject or backdrop
MIN_WORK_SIZE = 640  # smaller images are enlarged for segmentation: soft shadows must span several pixels


def working_image(pixels: np.ndarray, long_edge: int, min_edge: int = MIN_WORK_SIZE) -> np.ndarray:
    """The RGB channels resized so the long edge is ``long_edge`` at most (area averaging) and
    ``MIN_WORK_SIZE`` at least (bilinear); float32 0..1."""
    h, w = pixels.shape[:2]
    rgb = np.ascontiguousarray(pixels[..., :3])
    f = min(1.0, long_edge / max(h, w))
    f = max(f, min_edge / max(h, w))
    size = (max(1, round(w * f)), max(1, round(h * f)))
    if size == (w, h):
        small = rgb
    else:
        small = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA if f < 1.0 else cv2.INTER_LINEAR)
    return small.astype(np.float32) / float(max_value(pixels))


def disk(radius: int) -> np.ndarray:
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))


def _normalised_blur(img: np.ndarray, weight: np.ndarray, sigma: float) -> tuple[np.ndarray, np.ndarray]:
    """Weighted local mean of ``img`` (H×W×3) and the local weight, for colour propagation."""
    wf = weight.astype(np.float32)
    num = cv2.GaussianBlur(img * wf[..., None], (0, 0), sigma)
    den = cv2.GaussianBlur(wf, (0, 0), sigma)
    return num / np.maximum(den, 1e-6)[..., None], den


def _sample(small: np.ndarray, ys: np.ndarray, xs: np.ndarray, scale: tuple[float, float]) -> np.ndarray:
    """Bilinear samples of a working-size array at full-resolution pixel centres (N or N×C)."""
    mx = ((xs.astype(np.float32) + 0.5) * scale[0] - 0.5).reshape(1, -1)
    my = ((ys.astype(np.float32) + 0.5) * scale[1] - 0.5).reshape(1, -1)
    n = mx.shape[1]
    cols = 4096  # remap takes 2-D maps; lay the points out in rows
    rows = max(1, math.ceil(n / cols))
    pad = rows * cols - n
    mxs = np.pad(mx[0], (0, pad)).reshape(rows, cols)
    mys = np.pad(my[0], (0, pad)).reshape(rows, cols)
    res = cv2.remap(small, mxs, mys, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    out = res.reshape((rows * cols,) + small.shape[2:])[:n]
    return out


def _noise_sigma(pixels: np.ndarray) -> float:
    """Per-pixel sensor noise (0..1 units) from horizontal differences along the image border."""
    top = float(max_value(pixels))
    strips = [pixels[:8, :, :3], pixels[-8:, :, :3]]
    vals = []
    for s in strips:
        d = np.diff(s.astype(np.float32), axis=1) / top
        vals.append(float(np.median(np.abs(d))) * 1.4826 / math.sqrt(2))
    return max(min(vals), 0.5 / top)


def _edge_alpha(I: np.ndarray, F: np.ndarray, B: np.ndarray, soft: np.ndarray, noise: float) -> np.ndarray:
    """Alpha of edge pixels from I = aF + (1 - a)B, blended towards ``soft`` where F ≈ B."""
    d = F - B
    dd = (d * d).sum(axis=1)
    a = ((I - B) * d).sum(axis=1) / np.maximum(dd, 1e-6)
    contrast = np.sqrt(dd)
    lo = np.clip(2.5 * noise * math.sqrt(3) / np.maximum(contrast, 1e-3), 0.02, 0.3)
    a = np.clip((a - lo) / (1.0 - 2.0 * lo), 0.0, 1.0)
    trust = np.clip((contrast - 0.06) / 0.06, 0.0, 1.0)
    return (trust * a + (1.0 - trust) * soft).astype(np.float32)


def _local_range(img: np.ndarray, known: np.ndarray, radius: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel minimum and maximum of the ``known`` pixels within ``radius`` (no known pixel near:
    the whole 0..1 range)."""
    kernel = disk(radius)
    lo = cv2.erode(np.where(known[..., None], img, np.float32(1.0)), kernel)
    hi = cv2.dilate(np.where(known[..., None], img, np.float32(0.0)), kernel)
    none = lo > hi
    lo[none], hi[none] = 0.0, 1.0
    return lo, hi


def _unmix(I: np.ndarray, a: np.ndarray, B: np.ndarray, F_local: np.ndarray, lo: np.ndarray | None = None,
           hi: np.ndarray | None = None, margin: float = 0.0) -> np.ndarray:
    """Foreground colour of partially transparent pixels: solve I = aF + (1 - a)B for F.

    F lies on the line from B through I, at 1/a times the distance. An underestimated alpha would carry
    it past the subject's real colour (a dark rim on a light backdrop): with ``lo``/``hi``, the subject's
    own colour range nearby, F goes no further along the line than that range allows, and never less far
    than I itself (the backdrop's colour is only ever removed). Where a is small the solution amplifies
    noise by 1/a, so F leans on the local subject colour instead.
    """
    d = I - B
    t = 1.0 / np.maximum(a, 1e-3)
    if lo is not None and hi is not None:
        with np.errstate(divide="ignore", invalid="ignore"):
            limit = np.where(d > 1e-6, (hi + margin - B) / d, np.where(d < -1e-6, (lo - margin - B) / d, np.inf))
        t = np.clip(np.minimum(t, limit.min(axis=1)), 1.0, None)
    F = np.clip(B + d * t[:, None], 0.0, 1.0)
    w = np.clip((a - 0.05) / 0.45, 0.0, 1.0)[:, None]
    return (w * F + (1.0 - w) * F_local).astype(np.float32)


@dataclass
class Edge:
    """The full-resolution cut-out from ``refine_edge``: RGBA pixels, and the band that was computed."""

    pixels: np.ndarray  # H×W×4, the input's dtype; RGB is 0 wherever alpha is 0
    ys: np.ndarray  # band pixel coordinates (full resolution)
    xs: np.ndarray
    decontaminated: int  # band pixels left partially transparent whose colour was unmixed


def refine_edge(pixels: np.ndarray, mask: np.ndarray, small: np.ndarray, backdrop: np.ndarray | None = None,
                decontaminate: bool = True) -> Edge:
    """The cut-out at full resolution from a subject ``mask`` found at working size.

    ``small`` is the image at the mask's size (float32 0..1); ``backdrop`` what is behind the subject
    there (H×W×3 float32), used where no known backdrop pixel is near; None: the image's mean colour.
    Only a band a few working pixels wide around the outline is computed at full resolution: alpha from
    I = aF + (1 - a)B with the local subject and backdrop colours F and B, falling back to a smooth
    outline where F and B are too alike to tell apart. The interior keeps the input's pixels bit for bit.
    """
    H, W = pixels.shape[:2]
    top = max_value(pixels)
    h, w = mask.shape
    scale = (w / W, h / H)
    mask8 = mask.astype(np.uint8)
    inner = cv2.erode(mask8, disk(3))  # 3: on a diagonal, the staircase of the upsampled mask reaches 2
    outer = cv2.dilate(mask8, disk(2))
    band_small = (outer > 0) & (inner == 0)

    # Everything outside the subject's box stays transparent black: only the box is touched at full size.
    # Full-resolution pixel (X, Y) belongs to working pixel (X·w/W, Y·h/H) rounded down (nearest neighbour).
    rows, cols = np.flatnonzero(outer.any(axis=1)), np.flatnonzero(outer.any(axis=0))
    out = np.zeros((H, W, 4), pixels.dtype)
    if len(rows) == 0:
        return Edge(out, np.zeros(0, np.int64), np.zeros(0, np.int64), 0)
    Y0, Y1 = int(rows[0] * H // h), min(H, -(-(int(rows[-1]) + 1) * H // h))
    X0, X1 = int(cols[0] * W // w), min(W, -(-(int(cols[-1]) + 1) * W // w))
    ry = np.minimum(np.arange(Y0, Y1) * h // H, h - 1)
    rx = np.minimum(np.arange(X0, X1) * w // W, w - 1)
    box = out[Y0:Y1, X0:X1]
    rgb_box, alpha_box = box[..., :3], box[..., 3]
    rgb_box[...] = pixels[Y0:Y1, X0:X1, :3]
    alpha_box[...] = inner[ry][:, rx] * np.asarray(top, pixels.dtype)  # the interior opaque, exact pixels
    ys, xs = np.nonzero(band_small[ry][:, rx])
    ys += Y0
    xs += X0
    rgb_out, out_alpha = out[..., :3], out[..., 3]

    # local subject / backdrop colours next to the outline, from pixels known to be one or the other
    sigma = 2.0
    fg_known = cv2.erode(mask8, disk(KNOWN_MARGIN)) > 0
    bg_known = cv2.erode(1 - mask8, disk(KNOWN_MARGIN)) > 0
    F_s, _ = _normalised_blur(small, fg_known, sigma)
    B_s, bden = _normalised_blur(small, bg_known, sigma)
    fallback = backdrop if backdrop is not None else small.reshape(-1, 3).mean(axis=0)
    B_s = np.where((bden > 1e-3)[..., None], B_s, fallback)
    lo_s, hi_s = _local_range(small, fg_known, radius=2 + KNOWN_MARGIN + 2)
    # a smooth outline for where colour cannot tell: the level set of the blurred mask, sharpened to a
    # ramp of about 1.5 output pixels (a working-size staircase would show as 2-6 px steps)
    blur_sigma = 1.0
    soft_s = cv2.GaussianBlur(mask8.astype(np.float32), (0, 0), blur_sigma)
    gain = max(1.0, math.sqrt(2 * math.pi) * blur_sigma / (1.5 * max(scale)))

    I = pixels[ys, xs, :3].astype(np.float32) / top
    F = _sample(F_s, ys, xs, scale)
    B = _sample(B_s, ys, xs, scale)
    soft = np.clip((_sample(soft_s, ys, xs, scale) - 0.5) * gain + 0.5, 0.0, 1.0)
    # compression ringing near edges is invisible to the border noise estimate: measure it on band
    # pixels that the segmentation puts clearly on the backdrop side
    noise = _noise_sigma(pixels)
    away = soft < 0.02
    if away.sum() >= 50:
        noise = max(noise, float(np.percentile(np.sqrt(((I[away] - B[away]) ** 2).mean(axis=1)), 80)))
    a = _edge_alpha(I, F, B, soft, noise)
    aq = np.rint(a * top).astype(np.int64)
    partial = (aq > 0) & (aq < top)
    if decontaminate and partial.any():
        p = partial
        lo, hi = _sample(lo_s, ys[p], xs[p], scale), _sample(hi_s, ys[p], xs[p], scale)
        Fp = _unmix(I[p], a[p], B[p], F[p], lo, hi, margin=max(2.0 * noise, 0.03))
        rgb_out[ys[p], xs[p]] = np.clip(np.rint(Fp * top), 0, top).astype(pixels.dtype)
    out_alpha[ys, xs] = aq.astype(pixels.dtype)
    rgb_box[alpha_box == 0] = 0  # clean transparent pixels: smaller files, no backdrop colour hidden in them
    return Edge(out, ys, xs, int(partial.sum()) if decontaminate else 0)


def decontaminate_edges(rgb: np.ndarray, alpha: np.ndarray, backdrop: np.ndarray | None = None) -> np.ndarray:
    """Remove backdrop colour spill from partially transparent pixels; other pixels are returned unchanged.

    ``rgb``: H×W×3 uint8/uint16. ``alpha``: H×W, uint8, uint16 or float in [0, 1]. ``backdrop``: what was
    behind the subject, as one colour (3 values in ``rgb``'s units) or an H×W×3 image; None: estimate it
    locally from the fully transparent pixels near the edge (works on any background, not only paper).
    """
    top = float(max_value(rgb))
    if np.issubdtype(alpha.dtype, np.floating):
        a_full = alpha
        amax = 1.0
    else:
        a_full = alpha
        amax = float(np.iinfo(alpha.dtype).max)
    partial = (a_full > 0) & (a_full < amax)
    ys, xs = np.nonzero(partial)
    out = np.array(rgb[..., :3], copy=True)
    if len(ys) == 0:
        return out
    H, W = rgb.shape[:2]
    small = working_image(rgb, 1024, min_edge=0)
    size = (small.shape[1], small.shape[0])
    opaque = (a_full >= amax).astype(np.uint8)
    clear = (a_full <= 0).astype(np.uint8)
    if size != (W, H):
        opaque = cv2.resize(opaque * 255, size, interpolation=cv2.INTER_AREA) > 250
        clear = cv2.resize(clear * 255, size, interpolation=cv2.INTER_AREA) > 250
    else:
        opaque, clear = opaque > 0, clear > 0
    scale = (size[0] / W, size[1] / H)
    F_s, _ = _normalised_blur(small, opaque, 3.0)
    I = rgb[ys, xs, :3].astype(np.float32) / top
    a = a_full[ys, xs].astype(np.float32) / amax
    F = _sample(F_s, ys, xs, scale)
    if backdrop is None:
        B_s, den = _normalised_blur(small, clear, 3.0)
        B_s = np.where((den > 1e-4)[..., None], B_s, small.reshape(-1, 3).mean(axis=0))
        B = _sample(B_s, ys, xs, scale)
    elif backdrop.ndim == 1:
        B = np.broadcast_to(np.asarray(backdrop, np.float32)[:3] / top, I.shape)
    else:
        B = backdrop[ys, xs, :3].astype(np.float32) / (top if not np.issubdtype(backdrop.dtype, np.floating) else 1.0)
    lo_s, hi_s = _local_range(small, opaque, radius=6)
    Fp = _unmix(I, a, B, F, _sample(lo_s, ys, xs, scale), _sample(hi_s, ys, xs, scale), margin=0.03)
    out[ys, xs] = np.clip(np.rint(Fp * top), 0, top).astype(rgb.dtype)
    return out
