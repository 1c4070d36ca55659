"""Stage ``crops``, backend ``geometry``: one asset per ratio, framed around the subject.

Where to cut is decided by ``framing.frame_for_ratio`` (pure geometry); this module only moves
pixels. When a frame reaches past the image (a tall bottle into 16:9) the new canvas is filled:

* ``pad``       a solid colour (transparent for RGBA unless a colour is given);
* ``outpaint``  classical, CPU: the border is extended row/column-wise and blended into a
                heavily blurred mirror of the image, at reduced resolution, then grain matching
                the border's noise is added so the extension is not suspiciously smooth.
                For RGBA cut-outs the backdrop *is* transparency, so the new area is alpha 0;
* ``crop``      no new canvas: the frame stays inside the image and may cut margins/subject;
* ``generate``  a model-backed fill registered in ``FILLS`` by another module.

Whatever the fill, the original pixels are pasted back afterwards: they are never altered.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import cv2
import numpy as np

from ..config import check_colour
from ..pixels import colour_tuple, max_value, to_dtype
from ..schema import opt
from .base import Asset, Stage, register
from .framing import DEFAULT_MARGIN, Box, Frame, frame_for_ratio, parse_ratio, subject_box

FILL_NAMES = ("outpaint", "pad", "crop", "generate")

FillFunction = Callable[[np.ndarray, np.ndarray, Any, Any], np.ndarray]
FILLS: dict[str, FillFunction] = {}
"""Extra fills by name (``generate``): fill(canvas, known, options, ctx) -> canvas.

``canvas`` is the frame (H×W×C, the input's dtype) with the original pixels in place,
``known`` is H×W bool (True where pixels come from the original), ``options`` the crops
options (model, prompt, seed...), ``ctx`` the StageContext. Returns the filled canvas, same
shape and dtype; the original pixels are pasted back over whatever it returns.
"""


def register_fill(name: str) -> Callable[[FillFunction], FillFunction]:
    """Decorator: make a canvas fill available as ``crops: {fill: <name>}``."""
    def deco(fn: FillFunction) -> FillFunction:
        FILLS[name] = fn
        return fn
    return deco


def _check_ratios(values: list[str]) -> str | None:
    if not values:
        return "expected at least one ratio like '1:1'"
    for text in values:
        try:
            parse_ratio(text)
        except ValueError as exc:
            return str(exc)
    if len(set(values)) != len(values):
        return f"each ratio may appear once, got {values}"
    return None


@dataclass
class CropsOptions:
    ratios: list[str] = opt(["1:1", "4:5", "9:16", "16:9"], check=_check_ratios,
                            doc="crop ratios as 'W:H' (positive integers); one output per ratio")
    fill: str = opt("outpaint", choices=FILL_NAMES,
                    doc="when a crop needs more canvas than the image has: outpaint | pad | crop | generate")
    margin: float = opt(DEFAULT_MARGIN, min=0.0, max=1.0,
                        doc="space kept around the subject, as a fraction of its larger side")
    anchor: str = opt("center", choices=("center", "bottom", "top"),
                      doc="where new canvas goes when a crop is taller than the image: center | bottom "
                          "(keeps the floor, grows upwards) | top")
    pad_colour: str | None = opt(None, check=check_colour,
                                 doc="fill: pad colour ('#rrggbb' or '#rrggbbaa'); default white, transparent for RGBA")
    model: str | None = opt(None, doc="fill: generate: model to use (default: models.diffusers)")
    prompt: str | None = opt(None, doc="fill: generate: what the new canvas should show")
    negative_prompt: str | None = opt(None, doc="fill: generate: what it should not show")
    seed: int | None = opt(None, doc="random seed of the fill (outpaint grain, generate); default 0")
    steps: int = opt(30, min=1, max=200, doc="fill: generate: denoising steps")
    guidance: float = opt(7.5, min=0.0, max=50.0, doc="fill: generate: classifier-free guidance scale")


# --- pixel helpers (no Stage needed; tested directly) ---------------------------------------

WORK_LONG_EDGE = 640  # outpaint computes its smooth extension at this size, then upsamples
EDGE_SMOOTHING = 0.012  # blur of the continued border, as a fraction of the work canvas's long edge
NOISE_CAP = 0.03  # added grain never exceeds this fraction of the value range (textured borders)
_CHUNK_ROWS = 256
SUBJECT_THRESHOLD = 25  # matte values above this (≈10 %) count for the subject's box; faint haze does not


def _slices(box: Box) -> tuple[slice, slice]:
    return slice(box.y0, box.y1), slice(box.x0, box.x1)


def frame_matte(matte: np.ndarray, frame: Frame) -> np.ndarray:
    """The matte cut out like the pixels: zero (no subject) where the frame reaches past the image."""
    if not frame.extended:
        return matte[_slices(frame.inside)].copy()
    out = np.zeros((frame.box.height, frame.box.width), dtype=matte.dtype)
    out[_slices(frame.known)] = matte[_slices(frame.inside)]
    return out


def build_canvas(pixels: np.ndarray, frame: Frame, fill: str, *, pad_colour: str | None = None,
                 seed: int = 0, options: Any = None, ctx: Any = None) -> tuple[np.ndarray, Box]:
    """Cut ``frame`` out of ``pixels``, filling any canvas past the image with ``fill``.

    Returns the new array and the rectangle (frame coordinates) holding the original pixels,
    which are bit-identical to the input's.
    """
    original = pixels[_slices(frame.inside)]
    known = frame.known
    if not frame.extended:
        return original.copy(), known
    if fill == "crop":
        fill = "pad"  # only reached for images smaller than the ratio's 1-pixel short side
    shape = (frame.box.height, frame.box.width) + pixels.shape[2:]
    canvas = np.zeros(shape, dtype=pixels.dtype)
    canvas[_slices(known)] = original
    if fill == "pad":
        canvas[...] = pad_value(pixels, pad_colour)
        canvas[_slices(known)] = original
    elif fill == "outpaint":
        outpaint(canvas, known, seed=seed)
    elif fill in FILLS:
        mask = np.zeros(shape[:2], dtype=bool)
        mask[_slices(known)] = True
        filled = FILLS[fill](canvas, mask, options, ctx)
        if filled.shape != canvas.shape or filled.dtype != canvas.dtype:
            raise ValueError(f"fill {fill!r} returned {filled.shape} {filled.dtype}, "
                             f"expected {canvas.shape} {canvas.dtype}")
        canvas = filled
    else:
        raise ValueError(f"unknown fill {fill!r} (known: {', '.join(('outpaint', 'pad', *FILLS))})")
    canvas[_slices(known)] = original  # the promise: whatever the fill did, the original stays exact
    return canvas, known


def pad_value(pixels: np.ndarray, colour: str | None) -> np.ndarray:
    """The pad colour in the pixels' channels and dtype (default white, or transparent for RGBA)."""
    channels = pixels.shape[2] if pixels.ndim == 3 else 1
    top = max_value(pixels)
    if colour is None:
        values = (0,) * channels if channels == 4 else (top,) * channels
    else:
        rgba = list(colour_tuple(colour, pixels.dtype)) + [top]
        values = tuple(rgba[:3] + [rgba[3]])[:channels] if channels >= 3 else (rgba[0],)
    return np.array(values, dtype=pixels.dtype)


def _unknown_bands(width: int, height: int, known: Box) -> list[Box]:
    """The canvas outside ``known`` as up to four rectangles: full-width top/bottom, then sides."""
    bands = [Box(0, 0, width, known.y0), Box(0, known.y1, width, height),
             Box(0, known.y0, known.x0, known.y1), Box(known.x1, known.y0, width, known.y1)]
    return [b for b in bands if not b.empty]


def _noise_level(canvas: np.ndarray, known: Box, depth: int = 16) -> np.ndarray:
    """Per-channel grain of the known border next to the new canvas (robust: MAD of a high-pass)."""
    h, w = canvas.shape[:2]
    strips = []
    d_y, d_x = min(depth, known.height), min(depth, known.width)
    if known.y0 > 0:
        strips.append(canvas[known.y0:known.y0 + d_y, known.x0:known.x1])
    if known.y1 < h:
        strips.append(canvas[known.y1 - d_y:known.y1, known.x0:known.x1])
    if known.x0 > 0:
        strips.append(canvas[known.y0:known.y1, known.x0:known.x0 + d_x].transpose(1, 0, 2))
    if known.x1 < w:
        strips.append(canvas[known.y0:known.y1, known.x1 - d_x:known.x1].transpose(1, 0, 2))
    residuals = []
    for strip in strips:
        step = max(1, strip.shape[1] // 4096)  # a few thousand columns are plenty
        s = np.ascontiguousarray(strip[:, ::step, :3]).astype(np.float32)
        if min(s.shape[:2]) < 3:
            continue
        residuals.append((s - cv2.GaussianBlur(s, (0, 0), 1.5)).reshape(-1, s.shape[2]))
    if not residuals:
        return np.zeros(canvas.shape[2], dtype=np.float32)
    r = np.concatenate(residuals)
    mad = np.median(np.abs(r - np.median(r, axis=0)), axis=0) * 1.4826
    return np.minimum(mad, NOISE_CAP * max_value(canvas)).astype(np.float32)


def _extend_low_res(small: np.ndarray, k: Box, ws: int, hs: int) -> np.ndarray:
    """Fill a ws×hs work canvas around ``small`` (placed at ``k``): edge extension fading into a blur.

    Near the image the border's rows/columns are continued (lightly smoothed); further out they
    blend (exponential fall-off) into a heavy blur of that continuation, its low frequencies.
    The blur is normalised over the new canvas only, so nothing from inside the image (the
    subject) bleeds into the extension; a mirror would paint ghosts of the subject there.
    """
    borders = (k.y0, hs - k.y1, k.x0, ws - k.x1)
    channels = small.shape[2]
    # smoothing the border before continuing it keeps only its broad structure: fine detail
    # (veins, grain) repeated row after row would read as streaks
    edge = cv2.GaussianBlur(small, (0, 0), max(1.0, EDGE_SMOOTHING * max(ws, hs)), borderType=cv2.BORDER_REPLICATE)
    extended = cv2.copyMakeBorder(edge, *borders, cv2.BORDER_REPLICATE).reshape(hs, ws, channels)
    outside = np.ones((hs, ws), dtype=np.float32)
    outside[k.y0:k.y1, k.x0:k.x1] = 0.0
    f = max(1, round(max(ws, hs) / 40))
    tiny_size = (max(1, ws // f), max(1, hs // f))

    def smooth(a: np.ndarray) -> np.ndarray:
        tiny = cv2.resize(a, tiny_size, interpolation=cv2.INTER_AREA)
        return cv2.resize(cv2.GaussianBlur(tiny, (0, 0), 1.5), (ws, hs), interpolation=cv2.INTER_LINEAR)

    num = smooth(extended * outside[..., None]).reshape(hs, ws, channels)
    den = smooth(outside)[..., None]
    low = np.where(den > 1e-3, num / np.maximum(den, 1e-3), extended)
    xs = np.arange(ws, dtype=np.float32)
    ys = np.arange(hs, dtype=np.float32)
    dx = np.maximum(np.maximum(k.x0 - xs, xs - (k.x1 - 1)), 0)
    dy = np.maximum(np.maximum(k.y0 - ys, ys - (k.y1 - 1)), 0)
    dist = np.sqrt(dy[:, None] ** 2 + dx[None, :] ** 2)
    weight = np.exp(-dist / max(2.0, 0.06 * max(ws, hs)))[..., None]
    out = weight * extended + (1.0 - weight) * low
    out[k.y0:k.y1, k.x0:k.x1] = small.reshape(k.height, k.width, -1)
    return out


def outpaint(canvas: np.ndarray, known: Box, *, seed: int = 0) -> None:
    """Fill ``canvas`` outside ``known`` in place so the seam does not show (classical, CPU).

    RGBA: the new area is transparent (alpha 0), since a cut-out's backdrop is transparency.
    RGB: the smooth extension is computed at ≤ WORK_LONG_EDGE px, upsampled band by band,
    and grain matching the border's noise is added, so 24 MP frames take a fraction of a second.
    """
    if canvas.ndim == 3 and canvas.shape[2] == 4:
        for band in _unknown_bands(canvas.shape[1], canvas.shape[0], known):
            canvas[_slices(band)] = 0
        return
    img = canvas
    h, w, channels = img.shape
    top = max_value(img)
    r = max(1.0, max(w, h) / WORK_LONG_EDGE)
    ws, hs = max(1, round(w / r)), max(1, round(h / r))
    rx, ry = w / ws, h / hs
    kx0, ky0 = min(round(known.x0 / rx), ws - 1), min(round(known.y0 / ry), hs - 1)
    k = Box(kx0, ky0, max(kx0 + 1, min(ws, round(known.x1 / rx))), max(ky0 + 1, min(hs, round(known.y1 / ry))))
    small = cv2.resize(img[_slices(known)], k.size, interpolation=cv2.INTER_AREA).astype(np.float32)
    work = _extend_low_res(small.reshape(k.height, k.width, channels), k, ws, hs)
    work = np.clip(np.rint(work), 0, top).astype(img.dtype)
    sigma = _noise_level(img, known)
    rng = np.random.default_rng(seed)
    bands = _unknown_bands(w, h, known)
    grain = None
    slack = 512
    if float(sigma.max()) >= 0.25:
        widest = max(b.width for b in bands)
        grain = rng.standard_normal((_CHUNK_ROWS, widest + slack, channels), dtype=np.float32) * sigma
        grain = np.rint(grain).astype(np.int32 if img.dtype == np.uint16 else np.int16)
    depth = cv2.CV_16U if img.dtype == np.uint16 else cv2.CV_8U
    for band in bands:
        for y in range(band.y0, band.y1, _CHUNK_ROWS):
            rows = min(_CHUNK_ROWS, band.y1 - y)
            m = np.float32([[1 / rx, 0, (band.x0 + 0.5) / rx - 0.5], [0, 1 / ry, (y + 0.5) / ry - 0.5]])
            part = cv2.warpAffine(work, m, (band.width, rows), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                                  borderMode=cv2.BORDER_REPLICATE)
            part = part.reshape(rows, band.width, channels)
            if grain is not None:
                ox = int(rng.integers(0, slack))
                part = cv2.add(part, grain[:rows, ox:ox + band.width], dtype=depth).reshape(part.shape)
            img[y:y + rows, band.x0:band.x1] = part


# --- the stage -----------------------------------------------------------------------------

def find_subject(asset: Asset) -> tuple[Box | None, np.ndarray | None, str]:
    """The subject's box, the matte it came from, and where that came from.

    Fallback chain: the asset's matte → its alpha channel → ``estimate_subject_matte`` (plain
    backdrop photos) → None, meaning the whole image is framed.
    """
    if asset.matte is not None:
        return subject_box(asset.matte, SUBJECT_THRESHOLD), asset.matte, "matte"
    if asset.has_alpha:
        alpha = asset.pixels[..., 3]
        matte = to_dtype(alpha, np.uint8)
        return subject_box(matte, SUBJECT_THRESHOLD), matte, "alpha"
    from .remove_background import estimate_subject_matte

    matte = estimate_subject_matte(asset.pixels)
    if matte is None:
        return None, None, "whole image"
    box = subject_box(matte, SUBJECT_THRESHOLD)
    return (box, matte, "estimated") if box is not None else (None, None, "whole image")


@register
class GeometryCrops(Stage):
    """Thumbor-style crops: frame each ratio around the subject, extend the canvas when needed."""

    step = "crops"
    backend = "geometry"
    Options = CropsOptions

    @classmethod
    def validate(cls, options: CropsOptions, where: str, ctx_config: Any) -> list[str]:
        if options.fill == "generate" and "generate" not in FILLS:
            return [f"{where}.fill: 'generate' needs the model-backed fill, which is not installed "
                    f"(install the model extras, or use outpaint, pad or crop)"]
        return []

    def run(self, asset: Asset) -> list[Asset]:
        o: CropsOptions = self.options
        subject, matte, source = find_subject(asset)
        seed = 0 if o.seed is None else o.seed
        outputs = []
        for text in o.ratios:
            frame = frame_for_ratio(asset.width, asset.height, subject, parse_ratio(text),
                                    margin=o.margin, fill=o.fill, anchor=o.anchor)
            pixels, _known = build_canvas(asset.pixels, frame, o.fill, pad_colour=o.pad_colour,
                                          seed=seed, options=o, ctx=self.ctx)
            left, top, right, bottom = frame.outside
            notes = {
                "ratio": text,
                "fill": o.fill if frame.extended else "none",
                "subject": source,
                "box": frame.box.as_list(),
                "size": [frame.box.width, frame.box.height],
                "extended": {"left": left, "top": top, "right": right, "bottom": bottom} if frame.extended else None,
                "cut_margin": frame.cuts_margin,
                "cut_subject": frame.cuts_subject,
            }
            if frame.extended and o.fill == "outpaint" and asset.has_alpha:
                notes["fill"] = "outpaint (transparent)"
            out = asset.derive(pixels, frame_matte(matte, frame) if matte is not None else None, ratio=text)
            out.notes["crops"] = notes
            outputs.append(out)
        return outputs
