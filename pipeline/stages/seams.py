"""Where a classical outpaint stays seamless: the border band's texture, the depth it may be extended, the seam score.

Pure numpy/OpenCV, no Stage: ``crops`` asks this module before it extends a frame with ``outpaint``.

* ``band_texture`` measures the band of original pixels along one side of the image part that gets new
  canvas, at the outpaint's work resolution: its grain, the structure above the grain (``detail``) and that
  structure's period. ``plain`` (flat) and ``smooth`` (shading, a gradient) bands extend as far as needed;
  a ``textured`` one (veins, bricks, a street scene) only as far as ``seamless_depth`` says.
* ``seamless_depth``: a few texture periods, bounded by fractions of the image part's extent, and never
  deeper than the clean backdrop between the edge and the subject (new canvas never copies from near it);
  none at all when that backdrop is too thin to hold the texture, or where the photo's frame cuts the subject.
* ``seam_score``: the step across the seam between original and new pixels ÷ the typical step between
  neighbouring rows inside the original band; about 1 where the seam does not show, ≤ ``SEAMLESS_SCORE``
  counts as seamless. It works on any filled canvas (outpaint, pad, generate).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from ..pixels import max_value
from .framing import SIDES, Box  # SIDES: the order of ``Frame.outside``


WORK_LONG_EDGE = 640  # bands are measured at this size (the outpaint's work resolution)
BAND_FRACTION = 0.15  # band depth, as a fraction of the image part's extent across the side
BAND_MIN = 12  # ... and at least this many work pixels
NEAR_SUBJECT = 0.02  # pixels closer to the subject than this fraction of the work long edge are not backdrop
PLAIN_LEVELS = 6.0  # a band whose (grain-free) values span less than this (8-bit levels) is plain
TEXTURE_LEVELS = 3.0  # structure above this amplitude (8-bit levels, RMS)...
TEXTURE_OVER_GRAIN = 0.6  # ...and above this multiple of the grain makes a band textured
TEXTURE_SCALE = 4.0  # work px: structure finer than about 2π × this is texture; coarser is shading (a soft
                     # shadow, a defocused background), which the smooth continuation carries on
REACH_PERIODS = 3.0  # a textured band extends seamlessly for about this many texture periods...
REACH_MIN = 0.03  # ...but at least this fraction of the image part's extent across the side
REACH_MAX = 0.12  # ...and at most this fraction
CUT_SHARE = 0.02  # a subject touching more of an edge than this is cut by the photo's frame there
CLEAR_PERIODS = 2.0  # a textured band with less clean backdrop than this many periods is not extended
SEAMLESS_SCORE = 1.2  # seam_score at or below this: the seam does not show
VISIBLE_SEAM = 2.0  # above this it shows at a glance: crops does that side again without outpaint (a photo's
                    # own pixels, with no seam, score under 1.9 nine times in ten)
STEP_FLOOR = 0.5  # 8-bit levels: the typical step of a noiseless band, so a flat band's score stays finite
SCORE_ROWS = 16  # rows inside the seam that seam_score looks at
TYPICAL_PERCENTILE = 75  # the typical step inside: this percentile of those rows' mean steps
SEGMENT = 128  # seam_score scores the seam in pieces this long (px; longer on very long seams)...
MAX_SEGMENTS = 32
SEGMENT_PERCENTILE = 90  # ...and a side scores this percentile of its pieces: a seam in one place shows


@dataclass(frozen=True)
class BandTexture:
    """What the band of original pixels along one side looks like (8-bit levels; lengths in full-size px)."""

    side: str
    kind: str  # "plain" | "smooth" | "textured"
    detail: float  # RMS of the structure above the grain (band-pass, shading removed)
    grain: float  # pixel noise (robust)
    spread: float  # range (2nd to 98th percentile) of the grain-free values
    period: float  # the structure's typical period; 0 when there is none
    clear: int | None  # backdrop depth from the edge to the subject (grown) over most of the edge; None: no subject
    cut: float = 0.0  # share of the edge the subject touches: there the photo's frame cuts it

    @property
    def textured(self) -> bool:
        return self.kind == "textured"

    def as_note(self) -> dict[str, object]:
        return {"kind": self.kind, "detail": round(self.detail, 2), "grain": round(self.grain, 2),
                "period": round(self.period, 1), "cut": round(self.cut, 3)}


def _grey_levels(pixels: np.ndarray) -> np.ndarray:
    """Mean of the colour channels, float32 in 8-bit levels (0..255 whatever the dtype)."""
    rgb = pixels[..., :3] if pixels.ndim == 3 else pixels[..., None]
    return rgb.astype(np.float32).mean(axis=2) * (255.0 / float(max_value(pixels)))


def _orient(a: np.ndarray, side: str) -> np.ndarray:
    """A view of ``a`` whose axis 0 runs inward from ``side``'s edge, axis 1 along it."""
    if side == "top":
        return a
    if side == "bottom":
        return a[::-1]
    t = np.swapaxes(a, 0, 1)
    return t if side == "left" else t[::-1]


def _masked_blur(a: np.ndarray, weight: np.ndarray, sigma: float) -> np.ndarray:
    num = cv2.GaussianBlur(a * weight, (0, 0), sigma, borderType=cv2.BORDER_REFLECT)
    den = cv2.GaussianBlur(weight, (0, 0), sigma, borderType=cv2.BORDER_REFLECT)
    return num / np.maximum(den, 1e-3)


def _without_shading(band: np.ndarray, mask: np.ndarray, sigma: float) -> np.ndarray:
    """``band`` minus its shading: a least-squares plane (a gradient backdrop), then a masked blur at ``sigma``."""
    ys, xs = np.nonzero(mask)
    design = np.stack([np.ones(ys.size, np.float32), ys.astype(np.float32), xs.astype(np.float32)], axis=1)
    coef, *_ = np.linalg.lstsq(design, band[mask], rcond=None)
    yy, xx = np.mgrid[0:band.shape[0], 0:band.shape[1]].astype(np.float32)
    flat = band - (coef[0] + coef[1] * yy + coef[2] * xx)
    return flat - _masked_blur(flat, mask.astype(np.float32), sigma)


def band_texture(image: np.ndarray, side: str, matte: np.ndarray | None = None, *,
                 work_long_edge: int = WORK_LONG_EDGE) -> BandTexture:
    """Measure the band of ``image`` (the original pixels, H×W×C or H×W) along ``side``.

    ``matte`` (H×W, >0 = subject) keeps the subject and its surroundings out of the measurement: only
    backdrop decides how the backdrop extends. Measured at ``work_long_edge`` (the outpaint's work size).
    """
    if side not in SIDES:
        raise ValueError(f"side must be one of {SIDES}, got {side!r}")
    h, w = image.shape[:2]
    r = max(1.0, max(w, h) / work_long_edge)
    ws, hs = max(1, round(w / r)), max(1, round(h / r))
    small = image[..., :3] if image.ndim == 3 else image
    if (ws, hs) != (w, h):  # shrink first: the grey conversion then costs nothing on a large photo
        small = cv2.resize(np.ascontiguousarray(small), (ws, hs), interpolation=cv2.INTER_AREA).reshape(
            (hs, ws) + small.shape[2:])
    grey = _grey_levels(small)
    subject = np.zeros((hs, ws), np.uint8)
    cut = 0.0
    if matte is not None and matte.any():
        near = max(1, round(NEAR_SUBJECT * max(ws, hs)))
        inside = np.where(matte > 0, np.uint8(255), np.uint8(0))
        cut = float((_orient(inside, side)[0] > 0).mean())
        small = cv2.resize(inside, (ws, hs), interpolation=cv2.INTER_AREA) > 0
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * near + 1, 2 * near + 1))
        subject = cv2.dilate(small.astype(np.uint8), kernel)
    g = np.ascontiguousarray(_orient(grey, side))
    s = np.ascontiguousarray(_orient(subject, side)) > 0
    extent = g.shape[0]
    depth = min(extent, max(BAND_MIN, round(BAND_FRACTION * extent)))
    clear = None
    if s.any():
        hit = np.where(s.any(axis=0), s.argmax(axis=0), extent)  # per position along the edge
        clear = int(math.floor(float(np.percentile(hit, 50)) * r))
    band, open_ = g[:depth], (~s[:depth]).astype(np.float32)
    if band.shape[0] < 3 or band.shape[1] < 3 or open_.sum() < 16:
        return BandTexture(side, "plain", 0.0, 0.0, 0.0, 0.0, clear, cut)
    mask = open_ > 0
    fine = cv2.GaussianBlur(band, (0, 0), 1.0, borderType=cv2.BORDER_REFLECT)
    resid = (band - fine)[mask]
    grain = float(1.4826 * np.median(np.abs(resid - np.median(resid))))
    structure = _without_shading(fine, mask, TEXTURE_SCALE)
    detail = float(np.sqrt(np.mean(structure[mask] ** 2)))
    lo, hi = np.percentile(fine[mask], [2, 98])
    spread = float(hi - lo)
    # the period: 2π × RMS(value) / RMS(gradient) (exact for a sinusoid), over pairs of backdrop pixels
    gy = np.diff(structure, axis=0)[mask[1:] & mask[:-1]]
    gx = np.diff(structure, axis=1)[mask[:, 1:] & mask[:, :-1]]
    grad = math.sqrt((float(np.mean(gy ** 2)) if gy.size else 0.0) + (float(np.mean(gx ** 2)) if gx.size else 0.0))
    period = 2.0 * math.pi * detail / grad * r if grad > 1e-6 else 0.0
    if detail > TEXTURE_LEVELS and detail > TEXTURE_OVER_GRAIN * grain:
        kind = "textured"
    elif spread < PLAIN_LEVELS:
        kind = "plain"
    else:
        kind = "smooth"
    return BandTexture(side, kind, detail, grain, spread, period, clear, cut)


def seamless_depth(texture: BandTexture, extent: int) -> int | None:
    """How far (px) a classical extension of this band stays seamless; None: as far as needed.

    ``extent`` is the image part's size across the side (its height for top/bottom). Where the photo's
    frame cuts the subject (it touches more than ``CUT_SHARE`` of the edge), none: the new canvas would
    show the cut. Otherwise plain and smooth bands continue their colour and grain indefinitely; a
    textured one for ``REACH_PERIODS`` periods, between ``REACH_MIN`` and ``REACH_MAX`` of ``extent``, and
    never deeper than its clean backdrop (the texture is copied from there, and the subject is never a
    source); not at all when that backdrop is under ``CLEAR_PERIODS`` periods deep.
    """
    if texture.cut > CUT_SHARE:
        return 0  # new canvas here would show the subject's flat cut edge, whatever the backdrop
    if not texture.textured:
        return None
    reach = REACH_PERIODS * texture.period
    depth = int(min(max(reach, REACH_MIN * extent), REACH_MAX * extent))
    if texture.clear is not None:
        # under CLEAR_PERIODS periods of clean backdrop there is no texture to copy, only a smear
        depth = min(depth, texture.clear) if texture.clear >= CLEAR_PERIODS * texture.period else 0
    return max(0, depth)


def _lines(a: np.ndarray, known: Box, side: str, rows: int) -> np.ndarray | None:
    """The new row next to ``side`` then ``rows`` original rows inward (lines × positions along the seam [× C])."""
    if side == "top":
        return a[known.y0 - 1:known.y0 + rows, known.x0:known.x1] if known.y0 >= 1 else None
    if side == "bottom":
        return a[known.y1 - rows:known.y1 + 1, known.x0:known.x1][::-1] if known.y1 < a.shape[0] else None
    if side == "left":
        return np.swapaxes(a[known.y0:known.y1, known.x0 - 1:known.x0 + rows], 0, 1) if known.x0 >= 1 else None
    if known.x1 >= a.shape[1]:
        return None
    return np.swapaxes(a[known.y0:known.y1, known.x1 - rows:known.x1 + 1], 0, 1)[::-1]


def seam_score(canvas: np.ndarray, known: Box, matte: np.ndarray | None = None,
               rows: int = SCORE_ROWS) -> dict[str, float]:
    """Per side with new canvas: the step across the seam ÷ the typical step inside the original band.

    ``canvas`` is any filled frame (H×W×C or H×W), ``known`` where its original pixels are. A step is the
    mean |difference| of neighbouring rows (columns for left/right) over a ``SEGMENT`` of the seam, in 8-bit
    levels of the channel mean; the typical one is the ``TYPICAL_PERCENTILE`` percentile over the ``rows``
    rows inside (row steps of real texture vary; the seam should not stand out among them), at least
    ``STEP_FLOOR``. A side scores the ``SEGMENT_PERCENTILE`` percentile of its segments, so a seam that
    shows in one place (a shore line, a tree) is not averaged away by the rest.
    Calibration: the photos' own pixels (no seam at all) score about 1.0 at the median; edges that happen
    to run along the line put about a quarter of them above 1.2 (``bench/seams.py`` reports both).
    ``matte`` (H×W, >0 = subject) leaves out where the subject reaches the seam (a subject cut by the photo
    ends there, which is no seam of the fill); a side that is all subject gets no score.
    About 1 where the seam does not show; ≤ ``SEAMLESS_SCORE`` counts as seamless.
    """
    rows = max(2, min(rows, known.width, known.height))
    scores = {}
    for side in SIDES:
        lines = _lines(canvas, known, side, rows)
        if lines is None or lines.shape[0] < 3 or lines.shape[1] < 1:
            continue
        lines = _grey_levels(lines) if canvas.ndim == 3 else lines.astype(np.float32) * (255.0 / max_value(canvas))
        steps = np.abs(np.diff(lines, axis=0))  # steps[0]: across the seam (new row → first original)
        keep = np.ones(steps.shape[1], bool)
        if matte is not None:
            keep = ~(_lines(matte, known, side, rows)[1:] > 0).any(axis=0)
        segment = max(SEGMENT, -(-steps.shape[1] // MAX_SEGMENTS))
        found = []
        for a0 in range(0, steps.shape[1], segment):
            part = steps[:, a0:a0 + segment][:, keep[a0:a0 + segment]]
            if part.shape[1] >= min(segment, steps.shape[1]) // 2 and part.shape[1] > 0:
                per_row = part.mean(axis=1)
                found.append(float(per_row[0]) / max(float(np.percentile(per_row[1:], TYPICAL_PERCENTILE)), STEP_FLOOR))
        if found:
            scores[side] = float(np.percentile(found, SEGMENT_PERCENTILE))
    return scores
