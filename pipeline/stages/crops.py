"""Stage ``crops``, backend ``geometry``: one asset per ratio, framed around the subject.

Where to cut is decided by ``framing.frame_by_fill`` (the subject at the same fill in every ratio; with
``subject_fill: null``, ``framing.frame_for_ratio``: the largest frame), pure geometry; this module only moves
pixels. When a frame reaches past the image (a tall bottle into 16:9) the new canvas is filled:

* ``pad``       a solid colour (transparent for RGBA unless a colour is given);
* ``outpaint``  classical, CPU: the border is extended row/column-wise and blended into a
                heavily blurred mirror of the image, at reduced resolution, then grain matching
                the border's noise is added so the extension is not suspiciously smooth.
                For RGBA cut-outs the backdrop *is* transparency, so the new area is alpha 0;
* ``crop``      no new canvas: the frame stays inside the image and may cut margins/subject;
* ``generate``  a model-backed fill (``pipeline.stages.diffusion``).

Each fill is a backend of the part ``fill`` in the one registry (a ``Fill`` subclass with ``@register``);
it reads only its own options, the crops keys its ``Options`` names.
Whatever the fill, the original pixels are pasted back afterwards: they are never altered.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from ..config import CopySpace, check_colour
from ..errors import ConfigError
from ..pixels import colour_tuple, max_value
from ..schema import opt, options_of
from .base import STEPS, Asset, Stage, backends, define_part, define_step, register, stage_class
from .framing import (DEFAULT_FILL, DEFAULT_FILL_RANGE, DEFAULT_MARGIN, DEFAULT_MAX_NEW_CANVAS, DEFAULT_OPTICAL_CENTER,
                      SIDES, Box, Frame, Zones, frame_by_fill, frame_for_ratio, parse_ratio)
from .seams import CUT_SHARE, VISIBLE_SEAM, BandTexture, band_texture, seam_score, seamless_depth
from .subject import find_subject, paste_matte

define_step("crops", "geometry", needs=("uncropped",), gives=("ratio",), takes=("uncropped",),
            doc="frames the subject once per ratio")
define_part("fill", "how crops fills the canvas a frame reaches past the image: crops: {fill: NAME}")


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


def _check_per_ratio(value: Any) -> str | None:
    """A per-ratio mapping's keys are ratios or ``default``."""
    for key in value if isinstance(value, dict) else ():
        if key != "default":
            try:
                parse_ratio(key)
            except ValueError as exc:
                return f"{exc} (or default) as a key; quote ratios in YAML: '9:16'"
    return None


def _check_subject_fill(value: Any) -> str | None:
    values = value.values() if isinstance(value, dict) else [value]
    bad = [v for v in values if v is not None and not 0.0 < v <= 1.0]
    return f"expected fills in (0, 1], got {bad[0]!r}" if bad else _check_per_ratio(value)


def _check_fill_range(value: list[float]) -> str | None:
    if len(value) != 2 or not 0.0 < value[0] <= value[1] <= 1.0:
        return f"expected [loosest, tightest] with 0 < loosest <= tightest <= 1, got {value!r}"
    return None


@dataclass
class CropsOptions:
    ratios: list[str] = opt(["1:1", "4:5", "9:16", "16:9"], check=_check_ratios,
                            doc="crop ratios as 'W:H' (positive integers); one output per ratio")
    fill: str = opt("outpaint", check=lambda name: _check_fill(name),
                    doc="when a crop needs more canvas than the image has: outpaint | pad | crop | generate")
    margin: float = opt(DEFAULT_MARGIN, min=0.0, max=1.0,
                        doc="space kept around the subject, as a fraction of its larger side (with subject_fill: "
                            "the least kept when the frame slides to stay inside the image)")
    anchor: str = opt("center", choices=("center", "bottom", "top"),
                      doc="where new canvas goes when a crop is taller than the image: center | bottom "
                          "(keeps the floor, grows upwards) | top")
    subject_fill: float | dict[str, float | None] | None = opt(
        DEFAULT_FILL, check=_check_subject_fill,
        doc="the subject box fills this much of each frame's limiting side (less its copy space), so it has the "
            "same presence in every ratio; per ratio: {'9:16': 0.7, default: 0.8}; null: the largest frame of "
            "the ratio around the subject (margin)")
    fill_range: list[float] = opt(list(DEFAULT_FILL_RANGE), check=_check_fill_range,
                                  doc="[loosest, tightest] fill the framing may use to keep new canvas under "
                                      "max_new_canvas (tighter tried first)")
    max_new_canvas: float = opt(DEFAULT_MAX_NEW_CANVAS, min=0.0, max=1.0,
                                doc="share of a frame's area that may be new canvas (past the image); over it the "
                                    "fill moves within fill_range, and failing that the frame is capped (fill "
                                    "crop: cut inside the image; else the least new canvas), as the manifest says")
    optical_center: float = opt(DEFAULT_OPTICAL_CENTER, min=0.0, max=1.0,
                                doc="height of the subject's centre in its frame, as a fraction from the top "
                                    "(0.5: geometric; a little above reads as centred for products)")
    copy_space: CopySpace | dict[str, CopySpace | None] | None = opt(
        None, check=_check_per_ratio, expected="{side: left, right, top or bottom, fraction: 0 to 0.9}, a mapping of "
                                                "ratios to those, or null",
        doc="a side kept free of the subject for text, {side: right, fraction: 0.35}, or per ratio "
            "({'16:9': {side: right, fraction: 0.35}}); the fill is measured on the rest")
    pad_colour: str | None = opt(None, check=check_colour,
                                 doc="fill: pad colour ('#rrggbb' or '#rrggbbaa'); default white, transparent for RGBA")
    model: str | None = opt(None, doc="fill: generate: model to use (default: models.diffusers)")
    prompt: str | None = opt(None, doc="fill: generate: what the new canvas should show")
    negative_prompt: str | None = opt(None, doc="fill: generate: what it should not show")
    seed: int | None = opt(None, doc="random seed of the fill (outpaint grain, generate); default 0")
    steps: int = opt(30, min=1, max=200, doc="fill: generate: denoising steps")
    guidance: float = opt(7.5, min=0.0, max=50.0, doc="fill: generate: classifier-free guidance scale")
    fallback: str = opt("crop", choices=("crop", "pad", "generate"),
                        doc="where outpaint would not stay seamless (a textured border): crop (a tighter frame) | "
                            "pad | generate (needs the diffusers model)")
    # by ratio, the union of the safe zones of the channels that receive it (GeometryCrops.resolve, when the rule
    # loads: part of its version)
    safe_zones: dict[str, Zones] = field(default_factory=dict, init=False, metadata={"internal": True})

    def fill_for(self, ratio: str) -> float | None:
        """``subject_fill`` for one ratio (None: the largest frame)."""
        if isinstance(self.subject_fill, dict):
            return self.subject_fill.get(ratio, self.subject_fill.get("default", DEFAULT_FILL))
        return self.subject_fill

    def copy_space_for(self, ratio: str) -> CopySpace | None:
        if isinstance(self.copy_space, dict):
            return self.copy_space.get(ratio, self.copy_space.get("default"))
        return self.copy_space


def _check_fill(name: str) -> str | None:
    known = backends("fill")
    return None if name in known else f"expected one of {', '.join(map(repr, known))}, got {name!r}"


def seed_of(options: Any) -> int:
    """The fill's random seed: the ``seed`` option, 0 when unset."""
    return 0 if options.seed is None else options.seed


# --- fills: the ways to fill new canvas, backends of the part "fill" ------------------------

class Fill(Stage):
    """A way to fill the canvas a frame reaches past the image (``crops: {fill: NAME}``).

    ``Options`` names the crops keys it reads (``options_of(CropsOptions, ...)``: their defaults and docs stay
    declared once, on the crops step); ``model_kind``/``needs_models`` as for a step's backend.
    """

    step = "fill"

    def fill(self, canvas: np.ndarray, known: Box, matte: np.ndarray | None) -> np.ndarray:
        """Fill ``canvas`` (H×W×C, the input's dtype, the original pixels already at ``known``) outside ``known``.

        ``matte`` (H×W, frame coordinates, >0 = subject) says what not to continue; None: unknown. Returns the
        canvas (same shape and dtype; may be ``canvas`` itself); the original pixels are pasted back over it.
        """
        raise NotImplementedError

    def reach(self, original: np.ndarray, outside: tuple[int, int, int, int],
              matte: np.ndarray | None) -> dict[str, "Reach"]:
        """How far this fill stays seamless on each side that needs new canvas (``outside``: left, top, right,
        bottom, px), given the ``original`` pixels it continues and their ``matte``. {}: as far as needed."""
        return {}


@dataclass(frozen=True)
class Reach:
    """One side of a frame: the band's texture and how far (px) the fill stays seamless (None: no limit)."""

    texture: BandTexture
    depth: int | None


class _Smooth:
    """An outpaint fill's colour-only continuation, as the rest of ``build_within``."""

    backend = "outpaint (smooth)"

    def __init__(self, outpaint: "OutpaintFill"):
        self.outpaint = outpaint

    def fill(self, canvas: np.ndarray, known: Box, matte: np.ndarray | None) -> np.ndarray:
        return self.outpaint.smooth(canvas, known, matte)


def fill_class(name: str) -> type[Fill]:
    return stage_class("fill", name)  # type: ignore[return-value]


@register
class PadFill(Fill):
    """A solid colour: ``pad_colour``, default white (transparent for RGBA)."""

    backend = "pad"
    Options = options_of(CropsOptions, "pad_colour")

    def fill(self, canvas: np.ndarray, known: Box, matte: np.ndarray | None) -> np.ndarray:
        canvas[...] = pad_value(canvas, self.options.pad_colour)
        return canvas


@register
class CropFill(PadFill):
    """No new canvas: the frame stays inside the image. Only an image smaller than a ratio's one-pixel short side
    still needs some, padded with the default colour."""

    backend = "crop"
    Options = options_of(CropsOptions)

    def fill(self, canvas: np.ndarray, known: Box, matte: np.ndarray | None) -> np.ndarray:
        canvas[...] = pad_value(canvas, None)
        return canvas


@register
class OutpaintFill(Fill):
    """Classical, CPU: continue the border into a blurred mirror of the image, with matching grain."""

    backend = "outpaint"
    Options = options_of(CropsOptions, "seed")

    def fill(self, canvas: np.ndarray, known: Box, matte: np.ndarray | None) -> np.ndarray:
        outpaint(canvas, known, seed=seed_of(self.options), matte=matte)
        return canvas

    def smooth(self, canvas: np.ndarray, known: Box, matte: np.ndarray | None) -> np.ndarray:
        """Continue only the border's colour and shading, no texture (nothing is copied): what is left past where
        texture stays seamless, when a tighter frame would cut the subject."""
        outpaint(canvas, known, seed=seed_of(self.options), matte=np.full(canvas.shape[:2], 255, np.uint8))
        return canvas

    def reach(self, original: np.ndarray, outside: tuple[int, int, int, int],
              matte: np.ndarray | None) -> dict[str, Reach]:
        """Plain and smooth borders extend as far as needed; a textured one as far as ``seams`` says."""
        if original.ndim == 3 and original.shape[2] == 4:
            return {}  # a cut-out's backdrop is transparency: nothing to continue
        h, w = original.shape[:2]
        reach = {}
        for side, need in zip(SIDES, outside):
            if need > 0:
                texture = band_texture(original, side, matte, work_long_edge=WORK_LONG_EDGE)
                reach[side] = Reach(texture, seamless_depth(texture, h if side in ("top", "bottom") else w))
        return reach


# --- pixel helpers (no Stage needed; tested directly) ---------------------------------------

WORK_LONG_EDGE = 640  # outpaint computes its smooth extension at this size, then upsamples
EDGE_SMOOTHING = 0.03  # scale of the backdrop low frequencies (shading), as a fraction of the work canvas long edge
NOISE_CAP = 0.03  # added grain never exceeds this fraction of the value range (textured borders)
_CHUNK_ROWS = 256


def _slices(box: Box) -> tuple[slice, slice]:
    return slice(box.y0, box.y1), slice(box.x0, box.x1)


def frame_matte(matte: np.ndarray, frame: Frame) -> np.ndarray:
    """The matte cut out like the pixels: zero (no subject) where the frame reaches past the image."""
    return paste_matte(matte, frame.box.size, (-frame.box.x0, -frame.box.y0))


def build_canvas(pixels: np.ndarray, frame: Frame, fill: Fill,
                 matte: np.ndarray | None = None) -> tuple[np.ndarray, Box]:
    """Cut ``frame`` out of ``pixels``, filling any canvas past the image with ``fill``.

    ``matte`` (H×W like ``pixels``, >0 = subject) keeps the subject out of what a fill continues;
    None: no subject is known, the whole image may be continued.
    Returns the new array and the rectangle (frame coordinates) holding the original pixels,
    which are bit-identical to the input's.
    """
    original = pixels[_slices(frame.inside)]
    known = frame.known
    if not frame.extended:
        return original.copy(), known
    shape = (frame.box.height, frame.box.width) + pixels.shape[2:]
    canvas = np.zeros(shape, dtype=pixels.dtype)
    canvas[_slices(known)] = original
    filled = fill.fill(canvas, known, frame_matte(matte, frame) if matte is not None else None)
    if filled.shape != canvas.shape or filled.dtype != canvas.dtype:
        raise ValueError(f"fill {fill.backend!r} returned {filled.shape} {filled.dtype}, "
                         f"expected {canvas.shape} {canvas.dtype}")
    filled[_slices(known)] = original  # the promise: whatever the fill did, the original stays exact
    return filled, known


def frame_within(frame: Frame, allowed: tuple[int, int, int, int], ratio: tuple[int, int], margin: float,
                 anchor: str) -> Frame:
    """The largest frame of ``ratio`` around ``frame``'s subject that reaches past the image by at most
    ``allowed`` (left, top, right, bottom, px): ``frame_for_ratio`` with fill "crop" on the image grown by
    ``allowed``. It may cut margins or the subject (its ``cuts_margin``/``cuts_subject`` say so)."""
    left, top, right, bottom = allowed
    grown = frame_for_ratio(frame.image_w + left + right, frame.image_h + top + bottom,
                            frame.subject.shift(left, top), ratio, margin=margin, fill="crop", anchor=anchor)
    return Frame(box=grown.box.shift(-left, -top), image_w=frame.image_w, image_h=frame.image_h,
                 subject=frame.subject, wanted=frame.wanted, target_fill=frame.target_fill, framing="seam",
                 why="a tighter frame: outpaint would not stay seamless (fallback: crop)")


def build_within(pixels: np.ndarray, frame: Frame, depths: dict[str, int], fill: Fill, rest: Fill,
                 matte: np.ndarray | None = None) -> tuple[np.ndarray, Box]:
    """Like ``build_canvas``, but ``fill`` extends each side at most ``depths[side]`` px; ``rest`` fills the
    canvas beyond, continuing what ``fill`` made. Returns the canvas and the box ``fill`` covered (frame
    coordinates). The original pixels stay bit-identical."""
    need = dict(zip(SIDES, frame.outside))
    d = {side: min(need[side], depths.get(side, need[side])) for side in SIDES}
    inner = Frame(box=frame.inside.expand(d["left"], d["top"], d["right"], d["bottom"]), image_w=frame.image_w,
                  image_h=frame.image_h, subject=frame.subject, wanted=frame.wanted)
    ring, _ = build_canvas(pixels, inner, fill, matte)
    b = inner.box
    outer = Frame(box=frame.box.shift(-b.x0, -b.y0), image_w=b.width, image_h=b.height,
                  subject=frame.subject.shift(-b.x0, -b.y0), wanted=frame.wanted.shift(-b.x0, -b.y0))
    canvas, covered = build_canvas(ring, outer, rest, frame_matte(matte, inner) if matte is not None else None)
    return canvas, covered


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


def _blur(a: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur (edges replicated); wide ones are done at reduced size, where they cost little."""
    f = sigma / 3.0
    if f < 2.0:
        return cv2.GaussianBlur(a, (0, 0), sigma, borderType=cv2.BORDER_REPLICATE).reshape(a.shape)
    h, w = a.shape[:2]
    small = cv2.resize(a, (max(1, round(w / f)), max(1, round(h / f))), interpolation=cv2.INTER_AREA)
    small = cv2.GaussianBlur(small, (0, 0), 3.0, borderType=cv2.BORDER_REPLICATE)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR).reshape(a.shape)


def _backdrop_low(small: np.ndarray, backdrop: np.ndarray, sigma: float) -> np.ndarray:
    """The backdrop's low frequencies at work size: a blur normalised over backdrop pixels only.

    ``backdrop`` (H×W float32, 0..1) is how much of each work pixel is not subject. Near a
    subject the estimate comes from the backdrop around it (a wider blur where a narrow one sees
    none), so the product's colours never streak into the extension. Only an image with no
    backdrop at all falls back to blurring everything.
    """
    if float(backdrop.max()) <= 0.0:
        return _blur(small, sigma)
    out = None
    weight_left = np.ones(backdrop.shape, np.float32)
    for s in (sigma, 4 * sigma, 16 * sigma):
        num = _blur(small * backdrop[..., None], s)
        den = _blur(backdrop, s)
        est = num / np.maximum(den, 1e-6)[..., None]
        trust = np.clip(den / 0.2, 0.0, 1.0) if s < 16 * sigma else (den > 1e-6).astype(np.float32)
        part = (weight_left * trust)[..., None] * est
        out = part if out is None else out + part
        weight_left = weight_left * (1.0 - trust)
    if float(weight_left.max()) > 0:  # no backdrop within reach: the image's own blur
        plain = _blur(small, sigma)
        out = out + weight_left[..., None] * plain
    return out


def _extend_low_res(low: np.ndarray, k: Box, ws: int, hs: int) -> np.ndarray:
    """Continue the backdrop's low frequencies ``low`` (placed at ``k``) over a ws×hs work canvas.

    Near the image the border's rows/columns are continued; further out they blend (exponential
    fall-off) into a heavy blur of that continuation. The blur is normalised over the new canvas
    only. Inside ``k`` the result is ``low`` itself, so the full-size detail of the image is
    ``image - upsampled(result)`` there and continues seamlessly onto it outside.
    """
    borders = (k.y0, hs - k.y1, k.x0, ws - k.x1)
    channels = low.shape[2]
    extended = cv2.copyMakeBorder(low, *borders, cv2.BORDER_REPLICATE).reshape(hs, ws, channels)
    outside = np.ones((hs, ws), dtype=np.float32)
    outside[k.y0:k.y1, k.x0:k.x1] = 0.0
    f = max(1, round(max(ws, hs) / 40))
    tiny_size = (max(1, ws // f), max(1, hs // f))

    def smooth(a: np.ndarray) -> np.ndarray:
        tiny = cv2.resize(a, tiny_size, interpolation=cv2.INTER_AREA)
        return cv2.resize(cv2.GaussianBlur(tiny, (0, 0), 1.5), (ws, hs), interpolation=cv2.INTER_LINEAR)

    num = smooth(extended * outside[..., None]).reshape(hs, ws, channels)
    den = smooth(outside)[..., None]
    far = np.where(den > 1e-3, num / np.maximum(den, 1e-3), extended)
    xs = np.arange(ws, dtype=np.float32)
    ys = np.arange(hs, dtype=np.float32)
    dx = np.maximum(np.maximum(k.x0 - xs, xs - (k.x1 - 1)), 0)
    dy = np.maximum(np.maximum(k.y0 - ys, ys - (k.y1 - 1)), 0)
    dist = np.sqrt(dy[:, None] ** 2 + dx[None, :] ** 2)
    weight = np.exp(-dist / max(2.0, 0.06 * max(ws, hs)))[..., None]
    out = weight * extended + (1.0 - weight) * far
    out[k.y0:k.y1, k.x0:k.x1] = low
    return out.astype(np.float32)


# Texture: the new canvas gets the border's fine detail (image minus its low frequencies), not
# just its colour. Right at the seam the detail is mirrored (continuous by construction); that
# mirror fades within half a patch into a quilt of patches copied from the border strip
# (translated, chosen to match their neighbours, flat-top windows whose squares sum to one, so
# the texture keeps its contrast across overlaps). Subject pixels are never a source.

PATCH_FRACTION = 0.1  # texture patch side, as a fraction of the image part's short side
PATCH_MIN, PATCH_MAX = 12, 384
PATCH_CANDIDATES = 12  # source windows tried per patch; the best match to its neighbours wins
MAX_BLOCKED = 0.0  # a source window may overlap the subject's (zeroed) pixels this much
NEAR_SUBJECT = 6  # texture is never copied from this close to the subject (px; more for larger patches):
                  # its soft edge, halo and colour spill lie outside the matte


def near_subject(patch: int) -> int:
    """How far (px) from the subject texture may not be copied, for a patch side of ``patch``."""
    return max(NEAR_SUBJECT, patch // 6)
_SIDES = ("top", "bottom", "left", "right")


def _orient(a: np.ndarray, side: str) -> np.ndarray:
    """A view of ``a`` (canvas layout) whose axis 0 runs away from the image on ``side``, axis 1 along it."""
    if side == "top":
        return a[::-1]
    if side == "bottom":
        return a
    t = np.swapaxes(a, 0, 1)
    return t[::-1] if side == "left" else t


def _side_box(side: str, known: Box, lo: int, hi: int, a0: int, a1: int) -> Box:
    """Canvas box of outward distances [lo, hi) from ``known``'s ``side`` (negative: inside), along [a0, a1)."""
    if side == "top":
        return Box(a0, known.y0 - hi, a1, known.y0 - lo)
    if side == "bottom":
        return Box(a0, known.y1 + lo, a1, known.y1 + hi)
    if side == "left":
        return Box(known.x0 - hi, a0, known.x0 - lo, a1)
    return Box(known.x1 + lo, a0, known.x1 + hi, a1)


def _window(size: int, ramp: int) -> np.ndarray:
    """Flat-top window whose squares sum to one where neighbours overlap by ``ramp``."""
    t = np.arange(size, dtype=np.float32)
    w = np.ones(size, np.float32)
    w[:ramp] = np.sin(0.5 * np.pi * (t[:ramp] + 0.5) / ramp)
    w[size - ramp:] = np.cos(0.5 * np.pi * (t[:ramp] + 0.5) / ramp)
    return w


@dataclass
class _Quilt:
    """Where each texture patch of one band is copied from: ``src[sy, sx]`` per grid cell (-1: none)."""

    src: np.ndarray
    size: int
    ramp: int
    sy: np.ndarray
    sx: np.ndarray

    @property
    def stride(self) -> int:
        return self.size - self.ramp

    def start(self, index: int) -> int:
        return -self.ramp + index * self.stride


def _open_windows(blocked: np.ndarray, size: int, step: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Top-left corners (on a ``step`` grid, sorted by x) of size×size windows mostly free of blocked
    pixels (at most MAX_BLOCKED of them), and the blocked fraction of each."""
    integral = cv2.integral(blocked.view(np.uint8))
    ys = np.arange(0, blocked.shape[0] - size + 1, step)
    xs = np.arange(0, blocked.shape[1] - size + 1, step)
    bad = (integral[ys[:, None] + size, xs[None, :] + size] - integral[ys[:, None], xs[None, :] + size]
           - integral[ys[:, None] + size, xs[None, :]] + integral[ys[:, None], xs[None, :]])
    frac = bad.T / float(size * size)  # transposed: x-major order
    iy, ix = np.nonzero(frac <= MAX_BLOCKED)
    return ys[ix], xs[iy], frac[iy, ix]


def _high_pass(src: np.ndarray, blocked: np.ndarray, sigma: float) -> np.ndarray:
    """``src`` minus its local mean over unblocked pixels (scale ``sigma``): texture without the shading.

    Shading the image's low frequencies missed (a shadow's edge) would make copied patches
    show as blocks; the blur is done at reduced size, as it only needs the broad shape.
    """
    h, w, channels = src.shape
    f = max(1.0, sigma / 3.0)
    size = (max(1, round(w / f)), max(1, round(h / f)))
    open_ = (~blocked).astype(np.float32)
    num = cv2.resize(src * open_[..., None], size, interpolation=cv2.INTER_AREA)
    den = cv2.resize(open_, size, interpolation=cv2.INTER_AREA)
    num = cv2.GaussianBlur(num, (0, 0), sigma / f, borderType=cv2.BORDER_REFLECT)
    den = cv2.GaussianBlur(den, (0, 0), sigma / f, borderType=cv2.BORDER_REFLECT)
    mean = cv2.resize(num.reshape(size[1], size[0], channels) / np.maximum(den, 1e-3)[..., None], (w, h),
                      interpolation=cv2.INTER_LINEAR).reshape(h, w, channels)
    return (src - mean) * open_[..., None]


def _plan_quilt(src: np.ndarray, blocked: np.ndarray, depth: int, size: int, rng: np.random.Generator) -> _Quilt | None:
    """Choose a source window for every patch of a band ``depth`` deep, matching its neighbours.

    ``src`` is the border's detail (S×A×C, row 0 the image's edge row), ``blocked`` where it may
    not be copied from. A patch at outward distance g shows ``src`` rows in reverse (a translated
    copy, as if the texture went on); candidates are open windows near the patch's own position
    along the edge, scored by the squared difference with the patch before it (or, for the
    first row, with the image itself) and the one beside it, on a sparse grid. When the subject
    leaves no open window of this size, smaller patches are tried; None when none fit.
    """
    s_rows, along = src.shape[:2]
    pos_y, pos_x, pos_bad = _open_windows(blocked, size, max(1, size // 8))
    if pos_x.size == 0:
        return None
    ramp = max(2, size // 4)
    energy = 1e-6 + 2.0 * float(np.mean(src[::4, ::4] ** 2))  # a typical mismatch between unrelated patches
    quilt = _Quilt(src, size, ramp, np.empty(0, np.int64), np.empty(0, np.int64))
    rows = -(-(depth + ramp) // quilt.stride)
    cols = -(-(along + ramp) // quilt.stride)
    sy = np.full((rows, cols), -1, np.int64)
    sx = np.full((rows, cols), -1, np.int64)
    q = max(1, size // 16)
    ov = np.arange(0, ramp, q)  # overlap offsets
    full = np.arange(0, size, q)
    for g in range(rows):
        for c in range(cols):
            a0 = quilt.start(c)
            for reach in (3 * size, along):  # prefer windows from near this place along the edge
                lo, hi = np.searchsorted(pos_x, [a0 - reach, a0 + reach + 1])
                if hi > lo:
                    break
            pick = rng.integers(lo, hi, PATCH_CANDIDATES)
            cy, cx = pos_y[pick], pos_x[pick]
            score = (0.05 * rng.random(pick.size) + 4.0 * pos_bad[pick]) * energy
            # above: the previous patch row, or the image itself (outward distance < 0)
            in_cols = full[(a0 + full >= 0) & (a0 + full < along)]
            if g == 0:
                target = src[(ramp - 1 - ov)[:, None], (a0 + in_cols)[None, :]]
            elif sy[g - 1, c] >= 0:
                target = src[(sy[g - 1, c] + ramp - 1 - ov)[:, None], (sx[g - 1, c] + in_cols)[None, :]]
            else:
                target = None
            if target is not None and in_cols.size:
                cand = src[(cy[:, None] + size - 1 - ov[None, :])[:, :, None], (cx[:, None] + in_cols[None, :])[:, None, :]]
                score += ((cand - target[None]) ** 2).mean(axis=(1, 2, 3))
            if c > 0 and sy[g, c - 1] >= 0:
                left = src[(sy[g, c - 1] + size - 1 - full)[:, None], (sx[g, c - 1] + quilt.stride + ov)[None, :]]
                cand = src[(cy[:, None] + size - 1 - full[None, :])[:, :, None], (cx[:, None] + ov[None, :])[:, None, :]]
                score += ((cand - left[None]) ** 2).mean(axis=(1, 2, 3))
            best = int(np.argmin(score))
            sy[g, c], sx[g, c] = cy[best], cx[best]
    quilt.sy, quilt.sx = sy, sx
    return quilt


def _quilt_rows(quilt: _Quilt, i0: int, i1: int, along: int) -> tuple[np.ndarray, np.ndarray]:
    """The quilt's texture and coverage (sum of squared weights, 0..1) for outward rows [i0, i1)."""
    size, stride, src = quilt.size, quilt.stride, quilt.src
    channels = src.shape[2]
    acc = np.zeros((i1 - i0, along, channels), np.float32)
    cover = np.zeros((i1 - i0, along), np.float32)
    win = _window(size, quilt.ramp)
    w2 = win[:, None] * win[None, :]
    g_first = max(0, (i0 + quilt.ramp - size) // stride)
    for g in range(g_first, quilt.sy.shape[0]):
        g0 = quilt.start(g)
        if g0 >= i1:
            break
        r0, r1 = max(g0, i0), min(g0 + size, i1)
        if r0 >= r1:
            continue
        for c in range(quilt.sy.shape[1]):
            sy = int(quilt.sy[g, c])
            if sy < 0:
                continue
            a0 = quilt.start(c)
            x0, x1 = max(a0, 0), min(a0 + size, along)
            if x0 >= x1:
                continue
            sx = int(quilt.sx[g, c])
            t0, t1 = r0 - g0, r1 - g0
            # outward row t of the patch shows source row sy + size - 1 - t (a translated copy)
            hi = sy + size - 1 - t0
            lo = sy + size - 1 - (t1 - 1)
            patch = src[lo:hi + 1, sx + x0 - a0:sx + x1 - a0][::-1]
            w = w2[t0:t1, x0 - a0:x1 - a0]
            acc[r0 - i0:r1 - i0, x0:x1] += patch * w[..., None]
            cover[r0 - i0:r1 - i0, x0:x1] += w * w
    return acc, np.minimum(cover, 1.0)


def _low_box(work: np.ndarray, box: Box, rx: float, ry: float) -> np.ndarray:
    """The work canvas upsampled over one canvas ``box`` (float32, box.height × box.width × C)."""
    m = np.float32([[1 / rx, 0, (box.x0 + 0.5) / rx - 0.5], [0, 1 / ry, (box.y0 + 0.5) / ry - 0.5]])
    part = cv2.warpAffine(work, m, box.size, flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                          borderMode=cv2.BORDER_REPLICATE)
    return part.reshape(box.height, box.width, work.shape[2])


def _blocked(matte: np.ndarray | None, box: Box, radius: int) -> np.ndarray:
    """Where texture may not be copied from inside canvas ``box``: the subject grown by ``radius``
    (soft edges, halos and colour fringes stay out too), as uint8 0/255."""
    if matte is None:
        return np.zeros((box.height, box.width), np.uint8)
    h, w = matte.shape
    grown = Box(max(0, box.x0 - radius), max(0, box.y0 - radius), min(w, box.x1 + radius), min(h, box.y1 + radius))
    mask = np.where(matte[_slices(grown)] > 0, np.uint8(255), np.uint8(0))
    if mask.any():
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
        mask = cv2.dilate(mask, kernel)
    return mask[box.y0 - grown.y0:box.y1 - grown.y0, box.x0 - grown.x0:box.x1 - grown.x0]


def _fill_side(img: np.ndarray, side: str, known: Box, along: tuple[int, int], depth: int, src_depth: int,
               work: np.ndarray, scale: tuple[float, float], matte: np.ndarray | None, grain: np.ndarray | None,
               patch: int, rng: np.random.Generator) -> None:
    """Fill ``depth`` rows outward from ``known``'s ``side`` over ``along``: low frequencies + texture + grain."""
    rx, ry = scale
    a0, a1 = along
    width = a1 - a0
    top = max_value(img)
    s_rows = min(src_depth, 2 * patch)
    src = None
    quilt = None
    if s_rows >= 2 and width >= 2:
        box = _side_box(side, known, -s_rows, 0, a0, a1)
        sl = _slices(box)
        src = _orient(img[sl].astype(np.float32) - _low_box(work, box, rx, ry), side)[::-1]
        src = np.ascontiguousarray(src)
        no = np.ascontiguousarray(_orient(_blocked(matte, box, near_subject(patch)), side)[::-1]) > 0
        src[no] = 0.0
        size = min(patch, s_rows, width)
        if size >= PATCH_MIN:
            quilt = _plan_quilt(_high_pass(src, no, size / 4), no, depth, size, rng)
        mirror = min(s_rows - 1, max(2, (quilt.size if quilt is not None else size) // 2))
        open_ = (~no).astype(np.float32)
    for i0 in range(0, depth, _CHUNK_ROWS):
        i1 = min(depth, i0 + _CHUNK_ROWS)
        box = _side_box(side, known, i0, i1, a0, a1)
        out = _orient(_low_box(work, box, rx, ry), side)  # a view: rows outward
        cover = None
        if src is not None:
            if quilt is not None:
                texture, cover = _quilt_rows(quilt, i0, i1, width)
            else:
                texture = np.zeros((i1 - i0,) + src.shape[1:], np.float32)
                cover = np.zeros((i1 - i0, width), np.float32)
            # mirror right at the seam: outward row i shows image row i + 1 (reflect-101)
            m1 = min(i1, mirror)
            if i0 < m1:
                i = np.arange(i0, m1)
                fade = np.cos(0.5 * np.pi * (i + 0.5) / mirror).astype(np.float32)[:, None] * open_[i + 1]
                rest = np.sqrt(1.0 - fade * fade)
                n = m1 - i0
                texture[:n] = fade[..., None] * src[i + 1] + rest[..., None] * texture[:n]
                cover[:n] = fade * fade + rest * rest * cover[:n]
            out = out + texture
        if grain is not None:
            ox = int(rng.integers(0, grain.shape[1] - width + 1))
            noise = grain[:i1 - i0, ox:ox + width]
            if cover is not None:
                noise = noise * np.sqrt(np.maximum(1.0 - cover, 0.0))[..., None]
            out = out + noise
        _orient(img[_slices(box)], side)[...] = np.clip(np.rint(out), 0, top).astype(img.dtype)


def outpaint(canvas: np.ndarray, known: Box, *, seed: int = 0, matte: np.ndarray | None = None) -> None:
    """Fill ``canvas`` outside ``known`` in place so the seam does not show (classical, CPU).

    RGBA: the new area is transparent (alpha 0), since a cut-out's backdrop is transparency.
    RGB: the backdrop's low frequencies are continued at ≤ WORK_LONG_EDGE px (subject masked
    out), and its texture (veins, grain) is carried on at full size: mirrored at the seam,
    then quilted from border patches. ``matte`` (H×W like ``canvas``, 0 = backdrop) marks the
    subject, whose pixels are never copied; None means the image is all backdrop. Top and
    bottom are filled over the image's columns first, then the sides over the full height.
    """
    if canvas.ndim == 3 and canvas.shape[2] == 4:
        for band in _unknown_bands(canvas.shape[1], canvas.shape[0], known):
            canvas[_slices(band)] = 0
        return
    img = canvas
    h, w, channels = img.shape
    r = max(1.0, max(w, h) / WORK_LONG_EDGE)
    ws, hs = max(1, round(w / r)), max(1, round(h / r))
    rx, ry = w / ws, h / hs
    kx0, ky0 = min(round(known.x0 / rx), ws - 1), min(round(known.y0 / ry), hs - 1)
    k = Box(kx0, ky0, max(kx0 + 1, min(ws, round(known.x1 / rx))), max(ky0 + 1, min(hs, round(known.y1 / ry))))
    patch = int(np.clip(round(PATCH_FRACTION * min(known.width, known.height)), PATCH_MIN, PATCH_MAX))
    subject = np.zeros(k.size[::-1], np.float32)
    if matte is not None:
        if matte.shape != (h, w):
            raise ValueError(f"matte shape {matte.shape} does not match canvas {(h, w)}")
        inside = np.where(matte[_slices(known)] > 0, np.uint8(255), np.uint8(0))
        subject = cv2.resize(inside, k.size, interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0
        subject = cv2.dilate(subject, np.ones((3, 3), np.uint8)).reshape(subject.shape)  # its fringe too
    small = cv2.resize(img[_slices(known)], k.size, interpolation=cv2.INTER_AREA).astype(np.float32)
    small = small.reshape(k.height, k.width, channels)
    backdrop = 1.0 - subject
    low = _backdrop_low(small, backdrop.reshape(k.height, k.width), max(1.0, EDGE_SMOOTHING * max(ws, hs)))
    work = _extend_low_res(low, k, ws, hs)
    sigma = _noise_level(img, known)
    rng = np.random.default_rng(seed)
    grain = None
    if float(sigma.max()) >= 0.25:
        slack = 512
        grain = rng.standard_normal((_CHUNK_ROWS, max(w, h) + slack, channels), dtype=np.float32) * sigma
    common = dict(work=work, scale=(rx, ry), matte=matte, grain=grain, patch=patch, rng=rng)
    # top/bottom over the image's columns, then the sides over the full height (corners included):
    # their source strips then hold the freshly filled rows, which are backdrop by construction
    if known.y0 > 0:
        _fill_side(img, "top", known, (known.x0, known.x1), known.y0, known.height, **common)
    if known.y1 < h:
        _fill_side(img, "bottom", known, (known.x0, known.x1), h - known.y1, known.height, **common)
    if known.x0 > 0:
        _fill_side(img, "left", known, (0, h), known.x0, known.width, **common)
    if known.x1 < w:
        _fill_side(img, "right", known, (0, h), w - known.x1, known.width, **common)


# --- framing options checked against each other and against the channels ------------------------

def framing_problems(options: CropsOptions, where: str) -> list[str]:
    """Per-ratio keys that are no ratio of the step, and fills outside fill_range."""
    problems = []
    for name in ("subject_fill", "copy_space"):
        value = getattr(options, name)
        extra = sorted(set(value) - set(options.ratios) - {"default"}) if isinstance(value, dict) else []
        if extra:
            problems.append(f"{where}.{name}: {', '.join(extra)} is not one of the ratios ({', '.join(options.ratios)})")
    lo, hi = options.fill_range
    for ratio in options.ratios:
        fill = options.fill_for(ratio)
        if fill is not None and not lo <= fill <= hi:
            problems.append(f"{where}.subject_fill: {fill:g} for {ratio} lies outside fill_range [{lo:g}, {hi:g}]")
    return sorted(set(problems), key=problems.index)


def _receives(spec: Any, ratio: str) -> bool:
    """Whether an output (a rule's OutputSpec) gets the crops of ``ratio``: one from crops, or from a later step (which
    is all a step without ``uncropped`` among its needs may be; one before crops counts too, to be safe)."""
    if spec.source == "input" or (spec.ratios is not None and ratio not in spec.ratios):
        return False
    step = STEPS.get(spec.source)
    return spec.source == "crops" or spec.ratios is not None or (step is not None and "uncropped" not in step.needs)


def _zone(value: Any, ratio: str) -> Zones:
    zone = value.get(ratio) if isinstance(value, dict) else value
    return Zones(zone.left, zone.top, zone.right, zone.bottom) if zone is not None else Zones()


def channel_copy_spaces(options: CropsOptions, where: str, outputs: list[Any],
                        config: Any) -> tuple[dict[str, CopySpace], list[str]]:
    """By ratio, the copy space the channels receiving it ask for (one frame per ratio: they, and the step's own
    ``copy_space`` if set, must agree), and the ratios where they do not."""
    spaces: dict[str, CopySpace] = {}
    problems = []
    for ratio in options.ratios:
        asked = {}  # who → the copy space it asks for this ratio
        own = options.copy_space_for(ratio)
        if own is not None:
            asked["the crops step"] = own
        for spec in outputs:
            channel = config.channels.get(spec.channel)
            value = getattr(channel, "copy_space", None) if channel is not None else None
            space = value.get(ratio) if isinstance(value, dict) else value
            if space is not None and _receives(spec, ratio):
                asked[f"channel {channel.name or spec.channel}"] = space
        kinds = {(s.side, s.fraction) for s in asked.values()}
        if len(kinds) > 1:
            problems.append(f"{where}: ratio {ratio}: " + ", ".join(f"{who} asks for copy_space {s.side} {s.fraction:g}"
                                                                     for who, s in asked.items())
                            + ": one frame per ratio cannot give both; send them different ratios or agree")
        elif asked and own is None:
            spaces[ratio] = next(iter(asked.values()))
    return spaces, problems


def channel_safe_zones(options: CropsOptions, where: str, outputs: list[Any],
                       config: Any) -> tuple[dict[str, Zones], list[str]]:
    """By ratio, the union of the safe zones of the channels that receive it, and what cannot fit: the zones
    with the copy space must leave, on each axis, the room the subject fills at fill_range's loosest."""
    zones: dict[str, Zones] = {}
    problems = []
    for ratio in options.ratios:
        given = {}  # channel → its zone for this ratio
        for spec in outputs:
            channel = config.channels.get(spec.channel)
            if channel is not None and _receives(spec, ratio):
                zone = _zone(getattr(channel, "safe_zone", None), ratio)
                if zone:
                    given[channel.name or spec.channel] = zone
        union = Zones()
        for zone in given.values():
            union = union.union(zone)
        if union:
            zones[ratio] = union
        space = options.copy_space_for(ratio)
        copy = Zones.copy_space(space.side, space.fraction) if space else Zones()
        fill = options.fill_for(ratio)
        if fill is None:
            if union or space:
                what = [f"the safe_zone of channel {', '.join(given)}"] * bool(union) + ["copy_space"] * bool(space)
                problems.append(f"{where}: ratio {ratio}: subject_fill null (the largest frame) cannot keep "
                                f"{' and '.join(what)} free; set a subject_fill for {ratio}")
            continue
        loosest = min(options.fill_range[0], fill)
        for axis, (free, ref) in zip(("width", "height"), zip(union.union(copy).room, copy.room)):
            if free + 1e-9 < loosest * ref:
                sides = ("left", "right") if axis == "width" else ("top", "bottom")
                names = [f"{name} ({', '.join(f'{s} {getattr(z, s):g}' for s in sides if getattr(z, s))})"
                         for name, z in given.items() if any(getattr(z, s) for s in sides)]
                copy_text = f" and copy_space {space.side} {space.fraction:g}" if space and space.side in sides else ""
                problems.append(
                    f"{where}: ratio {ratio}: the safe_zone of channel {', '.join(names)}{copy_text} "
                    f"{'leave' if copy_text or len(names) > 1 else 'leaves'} "
                    f"{free:.3g} of the {axis} to the subject, which needs {loosest * ref:.3g} at fill {loosest:g} "
                    f"(fill_range's loosest); lower the zones, the copy space or fill_range")
    return zones, problems


# --- the stage -----------------------------------------------------------------------------

@register
class GeometryCrops(Stage):
    """Thumbor-style crops: frame each ratio around the subject at the same fill, extend the canvas when needed."""

    step = "crops"
    backend = "geometry"
    Options = CropsOptions

    @classmethod
    def _fill(cls, options: CropsOptions, name: str | None = None) -> tuple[type[Fill], Any]:
        """A fill (``name``, default the ``fill`` option) and its view of the options."""
        fill = fill_class(name or options.fill)
        return fill, fill.Options.of(options)

    @classmethod
    def _fills(cls, options: CropsOptions) -> list[tuple[type[Fill], Any]]:
        """The fill, then the fallback's when it is a fill of its own (generate: it runs a model too)."""
        fills = [cls._fill(options)]
        if options.fallback == "generate" and options.fill != "generate":
            fills.append(cls._fill(options, options.fallback))
        return fills

    @classmethod
    def runs_model(cls, options: CropsOptions) -> bool:
        return any(fill.runs_model(fill_options) for fill, fill_options in cls._fills(options))

    @classmethod
    def model_ref(cls, options: CropsOptions, config: Any) -> Any:
        """The fill's model, else the fallback's (generate runs the diffusers inpainting pipeline)."""
        refs = [fill.model_ref(fill_options, config) for fill, fill_options in cls._fills(options)]
        return next((ref for ref in refs if ref is not None), None)

    @classmethod
    def validate(cls, options: CropsOptions, where: str, ctx_config: Any) -> list[str]:
        return framing_problems(options, where) + [
            p for fill, fill_options in cls._fills(options) for p in fill.validate(fill_options, where, ctx_config)]

    @classmethod
    def resolve(cls, options: CropsOptions, where: str, outputs: list[Any], config: Any) -> CropsOptions:
        """Fold in, per ratio, the copy space and the safe zones of the channels that receive it; ConfigError when
        channels ask one ratio for different copy spaces, or when zones and copy space leave the subject less room
        than it needs at fill_range's loosest."""
        spaces, problems = channel_copy_spaces(options, where, outputs, config)
        if problems:
            raise ConfigError(problems)
        resolved = dataclasses.replace(options)
        if spaces:
            resolved.copy_space = {r: spaces.get(r, options.copy_space_for(r)) for r in options.ratios}
        zones, problems = channel_safe_zones(resolved, where, outputs, config)
        if problems:
            raise ConfigError(problems)
        resolved.safe_zones = zones
        return resolved

    def prepare(self) -> None:
        self.filler.prepare()
        if self.options.fallback == "generate":
            self.rest_filler.prepare()

    @property
    def filler(self) -> Fill:
        if getattr(self, "_filler", None) is None:
            fill, fill_options = self._fill(self.options)
            self._filler = fill(fill_options, self.ctx)
        return self._filler

    @property
    def rest_filler(self) -> Fill:
        """The fallback's fill (pad, generate) for what ``filler`` cannot make seamless."""
        if getattr(self, "_rest_filler", None) is None:
            fill, fill_options = self._fill(self.options, self.options.fallback)
            self._rest_filler = fill(fill_options, self.ctx)
        return self._rest_filler

    def frame(self, width: int, height: int, subject: Box | None, ratio: str, composed: bool = False,
              keep_inside: bool = False) -> Frame:
        """Where to cut ``ratio`` (pure geometry: ``framing``). ``composed``: canvas past the image is composed anew
        on the image's own background (a place_in_scene output), not invented, so max_new_canvas does not apply;
        ``keep_inside``: no new canvas at all (a photo whose subject is unknown is cut, not smeared)."""
        o: CropsOptions = self.options
        fill = o.fill_for(ratio)
        if fill is None:
            return frame_for_ratio(width, height, subject, parse_ratio(ratio), margin=o.margin,
                                   fill="crop" if keep_inside else o.fill, anchor=o.anchor)
        space = o.copy_space_for(ratio)
        return frame_by_fill(width, height, subject, parse_ratio(ratio), fill, fill_range=tuple(o.fill_range),
                             max_new_canvas=1.0 if composed else o.max_new_canvas, optical_center=o.optical_center,
                             copy_space=(space.side, space.fraction) if space else None,
                             safe_zone=o.safe_zones.get(ratio), margin=o.margin, anchor=o.anchor,
                             keep_inside=keep_inside or o.fill == "crop", slide=not composed)

    def run(self, asset: Asset) -> list[Asset]:
        o: CropsOptions = self.options
        subject, matte, source = find_subject(asset)
        # with no idea where the subject is, outpaint would smear a smooth band: cut inside the image instead
        cut_blind = subject is None and not asset.has_alpha and o.fill == "outpaint"
        if cut_blind:
            self.ctx.log.info("crops: %s: no subject found: each ratio is cut inside the image (no new canvas)",
                              asset.source or "image")
        keep_out = matte
        outputs = []
        for text in o.ratios:
            ratio = parse_ratio(text)
            frame = self.frame(asset.width, asset.height, subject, text, composed=asset.backdrop is not None,
                               keep_inside=cut_blind)
            composed = None
            depths: dict[str, int] = {}
            seam_notes: dict[str, Any] = {}
            if frame.extended and asset.backdrop is not None:  # a scene composite: compose this frame anew
                pixels, framed_matte, composed = asset.backdrop.render(frame.box)
            else:
                frame, pixels, depths, seam_notes = self._extend(asset, frame, ratio, keep_out)
                framed_matte = frame_matte(matte, frame) if matte is not None else None
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
                "subject_fill": round(frame.subject_fill, 3),
                "new_canvas": round(frame.new_canvas, 3),
                "framing": frame.framing,
            }
            if frame.target_fill is not None:
                notes["target_fill"] = frame.target_fill
            if frame.why:
                notes["framing_why"] = frame.why
            if frame.framing == "capped":
                self.ctx.log.info("crops: %s %s: %s", asset.source or "image", text, frame.why)
            if composed is not None:
                notes.update(composed)
                scene = _scene_named(asset)  # each scene of ``scenes`` is enlarged by its own factor: named
                if "scene_enlarged" in composed and self.ctx.once(("crops scene enlarged", text, scene)):
                    self.ctx.log.warning("crops: %s %s: the scene %s is enlarged %.2f× to cover this frame (more "
                                         "than max_scene_enlarge): it looks softer than the product",
                                         asset.source or "image", text, scene, composed["scene_enlarged"])
            elif frame.extended and o.fill == "outpaint" and asset.has_alpha:
                notes["fill"] = "outpaint (transparent)"
            elif cut_blind:
                notes["fill"] = "none (subject unknown: cut)"
            notes.update(seam_notes)
            if frame.extended and depths:
                smooth = (seam_notes.get("fallback") or {}).get("to") == "smooth (review)"
                notes["fill"] = f"{o.fill} + {'smooth' if smooth else o.fallback}"
            if seam_notes.get("fallback"):
                self.ctx.log.info("crops: %s %s: %s: %s", asset.source or "image", text, o.fallback,
                                  seam_notes["fallback"]["why"])
            out = asset.derive(pixels, framed_matte, ratio=text)
            if "review" in notes:
                out.review.append(notes.pop("review"))
            out.notes["crops"] = notes
            outputs.append(out)
        return outputs

    def _extend(self, asset: Asset, frame: Frame, ratio: tuple[int, int],
                matte: np.ndarray | None) -> tuple[Frame, np.ndarray, dict[str, int], dict[str, Any]]:
        """Cut ``frame`` out, outpainting only as far as it stays seamless (``pipeline.stages.seams``); the
        fallback does the rest. A side whose outpainted seam still shows (``seam_score`` over
        ``VISIBLE_SEAM``) is done again without outpaint. Returns the frame (tighter for fallback crop), its
        pixels, the depth per side outpaint was held to, and the manifest notes (texture, fallback, seam score)."""
        shown: dict[str, float] = {}
        while True:
            framed, depths, notes = self._within_reach(asset, frame, ratio, matte, shown)
            if depths:
                rest = self.rest_filler
                if notes.get("fallback", {}).get("to") == "smooth (review)" and isinstance(self.filler, OutpaintFill):
                    rest = _Smooth(self.filler)
                pixels, _known = build_within(asset.pixels, framed, depths, self.filler, rest, matte=matte)
            else:
                pixels, _known = build_canvas(asset.pixels, framed, self.filler, matte=matte)
            if not framed.extended or asset.has_alpha:
                return framed, pixels, depths, notes
            scores = seam_score(pixels, framed.known, frame_matte(matte, framed) if matte is not None else None)
            notes["seam_score"] = {side: round(v, 3) for side, v in scores.items()}
            need = dict(zip(SIDES, framed.outside))
            showing = {side: v for side, v in scores.items() if v > VISIBLE_SEAM and side not in shown
                       and need[side] > 0 and depths.get(side, need[side]) > 0 and "texture" in notes}
            if not showing:
                return framed, pixels, depths, notes
            shown.update(showing)

    def _within_reach(self, asset: Asset, frame: Frame, ratio: tuple[int, int], matte: np.ndarray | None,
                      shown: dict[str, float]) -> tuple[Frame, dict[str, int], dict[str, Any]]:
        """Where the fill would not stay seamless, apply the fallback: ``crop`` returns a tighter frame,
        ``pad``/``generate`` the depth per side the fill may do (the fallback's fill does the rest). ``shown``:
        sides (and their seam scores) where the fill's seam showed before, not extended by it now.
        Also the manifest notes: texture per side, the fallback and why."""
        if not frame.extended:
            return frame, {}, {}
        o: CropsOptions = self.options
        inside = frame.inside
        reach = self.filler.reach(asset.pixels[_slices(inside)], frame.outside,
                                  matte[_slices(inside)] if matte is not None else None)
        if not reach:
            return frame, {}, {}
        notes: dict[str, Any] = {"texture": {side: r.texture.kind for side, r in reach.items()}, "fallback": None}
        need = dict(zip(SIDES, frame.outside))
        reach.update({side: Reach(reach[side].texture, 0) for side in shown if side in reach})
        short = {side: r for side, r in reach.items() if r.depth is not None and need[side] > r.depth}
        if not short:
            return frame, {}, notes

        def why(side: str, r: Reach) -> str:
            if side in shown:
                return f"{side}: the extension's seam showed (score {shown[side]:.1f}), the frame needs {need[side]} px"
            if r.texture.cut > CUT_SHARE:
                return (f"{side}: the photo's edge cuts the subject ({r.texture.cut:.0%} of it), "
                        f"the frame needs {need[side]} px")
            return (f"{side}: {r.texture.kind} border (period {r.texture.period:.0f} px) stays seamless for "
                    f"{r.depth} px, the frame needs {need[side]}")

        notes["fallback"] = {"to": o.fallback, "why": "; ".join(why(side, r) for side, r in short.items())}
        if o.fallback != "crop":
            return frame, {side: r.depth for side, r in short.items()}, notes
        allowed = tuple(min(need[side], short[side].depth) if side in short else need[side] for side in SIDES)
        tighter = frame_within(frame, allowed, ratio, o.margin, o.anchor)
        if not tighter.cuts_subject or frame.cuts_subject or shown or any(r.texture.cut > CUT_SHARE
                                                                         for r in short.values()):
            return tighter, {}, notes  # (where the photo already cuts the subject, new canvas would show the cut)
        # a tighter frame would cut the product: keep the least new canvas that holds it, outpainted, and say so
        holding = frame_for_ratio(frame.image_w, frame.image_h, frame.subject, ratio, margin=0.0, fill="outpaint",
                                  anchor=o.anchor)
        holding = dataclasses.replace(holding, target_fill=frame.target_fill, framing="seam",
                                      why="the tightest frame that holds the subject: outpainted past where it "
                                          "stays seamless (a tighter one would cut the subject)")
        notes["fallback"]["to"] = "smooth (review)"
        notes["review"] = (f"crops {ratio[0]}:{ratio[1]}: the new canvas on a textured border goes past where "
                           f"outpaint stays seamless (a tighter frame would cut the subject): beyond that only its "
                           f"colour continues; check it, or use fallback: generate")
        need = dict(zip(SIDES, holding.outside))
        return holding, {side: min(r.depth, need[side]) for side, r in short.items()}, notes


def _scene_named(asset: Asset) -> str:
    """The scene under ``asset`` for a log line: its file's name as ``place_in_scene`` noted it, else the variant
    (a generated scene's), else "of the composite"."""
    scene = (asset.notes.get("place_in_scene") or {}).get("scene")
    if scene:
        return Path(str(scene)).name
    return f"of variant {asset.variant}" if asset.variant else "of the composite"
