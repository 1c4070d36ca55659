"""Crop and placement geometry: plain arithmetic on boxes, no pixels.

Thumbor-style: the stages ask this module *where* to cut or place, then do the pixel work
themselves, so every framing decision can be tested table-driven without images.
The one exception is ``subject_box``, which measures a matte (it reads a mask; it never
changes pixels).

Coordinates are integers, boxes are half-open (``x1``/``y1`` excluded), ``x`` grows right and
``y`` grows down. Nothing here scales: a frame is always in the image's own pixel units.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

DEFAULT_MARGIN = 0.08
"""Crop margin around the subject, as a fraction of the subject's larger side."""


@dataclass(frozen=True)
class Box:
    """An integer rectangle [x0, x1) × [y0, y1)."""

    x0: int
    y0: int
    x1: int
    y1: int

    @property
    def width(self) -> int:
        return self.x1 - self.x0

    @property
    def height(self) -> int:
        return self.y1 - self.y0

    @property
    def size(self) -> tuple[int, int]:
        return self.width, self.height

    @property
    def empty(self) -> bool:
        return self.width <= 0 or self.height <= 0

    @property
    def center(self) -> tuple[float, float]:
        return (self.x0 + self.x1) / 2, (self.y0 + self.y1) / 2

    def contains(self, other: "Box") -> bool:
        return self.x0 <= other.x0 and self.y0 <= other.y0 and other.x1 <= self.x1 and other.y1 <= self.y1

    def intersect(self, other: "Box") -> "Box | None":
        box = Box(max(self.x0, other.x0), max(self.y0, other.y0), min(self.x1, other.x1), min(self.y1, other.y1))
        return None if box.empty else box

    def shift(self, dx: int, dy: int) -> "Box":
        return Box(self.x0 + dx, self.y0 + dy, self.x1 + dx, self.y1 + dy)

    def expand(self, left: int, top: int, right: int, bottom: int) -> "Box":
        return Box(self.x0 - left, self.y0 - top, self.x1 + right, self.y1 + bottom)

    def as_list(self) -> list[int]:
        return [self.x0, self.y0, self.x1, self.y1]


def subject_box(matte: np.ndarray, threshold: int = 0) -> Box | None:
    """Bounding box of ``matte > threshold`` (uint8 or uint16 H×W), None when nothing is above it."""
    mask = matte > threshold
    if mask.ndim != 2:
        raise ValueError(f"expected an H×W matte, got shape {matte.shape}")
    x, y, w, h = cv2.boundingRect(mask.view(np.uint8))
    if w == 0 or h == 0:
        return None
    return Box(x, y, x + w, y + h)


def parse_ratio(text: str) -> tuple[int, int]:
    """'4:5' → (4, 5), reduced; ValueError for anything else."""
    parts = str(text).split(":")
    if len(parts) != 2 or not all(p.isdigit() for p in parts) or 0 in (int(parts[0]), int(parts[1])):
        raise ValueError(f"expected a ratio like '4:5' (two positive integers), got {text!r}")
    w, h = int(parts[0]), int(parts[1])
    g = math.gcd(w, h)
    return w // g, h // g


def ratio_error(width: int, height: int, ratio: tuple[int, int]) -> float:
    """How far (in pixels) a size is from the exact ratio, along whichever side is worse."""
    rw, rh = ratio
    return max(abs(width - height * rw / rh), abs(height - width * rh / rw))


def _size_from_short(short: int, ratio: tuple[int, int]) -> tuple[int, int]:
    """The (w, h) whose short side is ``short`` and whose long side is rounded from it.

    Rounding the long side from an exact short side keeps both sides within 0.5 px of the ratio.
    """
    rw, rh = ratio
    if rw >= rh:
        return max(1, round(short * rw / rh)), short
    return short, max(1, round(short * rh / rw))


def largest_size(max_w: int, max_h: int, ratio: tuple[int, int]) -> tuple[int, int]:
    """The largest size of ``ratio`` fitting in max_w × max_h.

    The short side is at least 1 px, so an image under 2 px may be exceeded (16:9 of 1×1 is 2×1).
    """
    rw, rh = ratio
    short = max(1, math.floor(min(max_h, max_w * rh / rw) if rw >= rh else min(max_w, max_h * rw / rh)))
    w, h = _size_from_short(short, ratio)
    while short > 1 and (w > max_w or h > max_h):
        short -= 1
        w, h = _size_from_short(short, ratio)
    return w, h


def smallest_size(min_w: int, min_h: int, ratio: tuple[int, int]) -> tuple[int, int]:
    """The smallest size of ``ratio`` at least min_w × min_h."""
    rw, rh = ratio
    short = max(1, math.ceil(max(min_h, min_w * rh / rw) if rw >= rh else max(min_w, min_h * rw / rh)))
    w, h = _size_from_short(short, ratio)
    while w < min_w or h < min_h:
        short += 1
        w, h = _size_from_short(short, ratio)
    return w, h


@dataclass(frozen=True)
class Frame:
    """Where to cut one ratio: ``box`` in image coordinates (may reach past the image)."""

    box: Box
    image_w: int
    image_h: int
    subject: Box
    wanted: Box  # subject plus margins: what the frame tries to contain

    @property
    def image(self) -> Box:
        return Box(0, 0, self.image_w, self.image_h)

    @property
    def inside(self) -> Box:
        """The part of the image the frame keeps (image coordinates)."""
        box = self.box.intersect(self.image)
        assert box is not None, "a frame always overlaps the image"
        return box

    @property
    def known(self) -> Box:
        """Where the image's pixels land in the frame (frame coordinates)."""
        return self.inside.shift(-self.box.x0, -self.box.y0)

    @property
    def outside(self) -> tuple[int, int, int, int]:
        """New canvas beyond the image, in pixels: (left, top, right, bottom)."""
        b = self.box
        return max(0, -b.x0), max(0, -b.y0), max(0, b.x1 - self.image_w), max(0, b.y1 - self.image_h)

    @property
    def extended(self) -> bool:
        return any(self.outside)

    @property
    def cuts_margin(self) -> bool:
        return not self.box.contains(self.wanted)

    @property
    def cuts_subject(self) -> bool:
        return not self.box.contains(self.subject)


def wanted_box(subject: Box, image_w: int, image_h: int, margin: float) -> Box:
    """The subject plus ``margin`` × its larger side on every side.

    No margin is asked for past an image edge the subject touches: a subject cut by the
    photo stays cut there (extending the canvas would smear the product, not the backdrop).
    """
    m = round(margin * max(subject.width, subject.height))
    return subject.expand(
        0 if subject.x0 <= 0 else m,
        0 if subject.y0 <= 0 else m,
        0 if subject.x1 >= image_w else m,
        0 if subject.y1 >= image_h else m,
    )


def _clamp(value: int, lo: int, hi: int) -> int:
    return max(lo, min(value, hi))


def _place(size: int, length: int, want0: int, want1: int, target: int, keep_inside: bool) -> int:
    """Start of a ``size`` span on an axis of ``length``: near ``target``, holding the wanted span.

    Two wishes: stay inside [0, length) as far as possible, and contain [want0, want1).
    ``keep_inside`` (fill: crop) says which wins when they disagree.
    """
    inside = (min(0, length - size), max(0, length - size))
    holds = (want1 - size, want0)  # empty (lo > hi) when the span is smaller than the wanted part
    first, second = (holds, inside) if keep_inside else (inside, holds)
    pos = _clamp(target, *first) if first[0] <= first[1] else target
    return _clamp(pos, *second) if second[0] <= second[1] else pos


def frame_for_ratio(image_w: int, image_h: int, subject: Box | None, ratio: tuple[int, int],
                    margin: float = DEFAULT_MARGIN, fill: str = "outpaint", anchor: str = "center") -> Frame:
    """The crop of ``ratio`` for a subject in an image of image_w × image_h.

    * The frame is as large as the image allows at this ratio, centred on the subject and
      shifted to stay inside the image, as long as it holds the subject plus margins.
    * When it cannot (a tall bottle into 16:9), fills that add canvas (outpaint, pad, generate)
      get the smallest frame that holds subject plus margins, reaching past the image;
      ``fill="crop"`` keeps the largest frame inside the image and may cut margins or the subject
      (``Frame.cuts_margin`` / ``cuts_subject`` say so).
    * ``anchor`` decides where new canvas goes vertically when the frame is taller than the image:
      ``center`` splits it above and below the subject, ``bottom`` keeps the image's bottom edge
      (a product standing on a surface keeps its floor; new canvas goes above), ``top`` the reverse.

    ``subject`` None means the whole image is the subject.
    """
    if image_w <= 0 or image_h <= 0:
        raise ValueError(f"image size must be positive, got {image_w}×{image_h}")
    image = Box(0, 0, image_w, image_h)
    subject = (subject.intersect(image) if subject is not None else None) or image
    wanted = wanted_box(subject, image_w, image_h, margin)
    keep_inside = fill == "crop"
    max_w, max_h = largest_size(image_w, image_h, ratio)
    need_w, need_h = smallest_size(wanted.width, wanted.height, ratio)
    if keep_inside or (need_w <= max_w and need_h <= max_h):
        w, h = max_w, max_h
    else:
        w, h = need_w, need_h
    cx, cy = subject.center
    x = _place(w, image_w, wanted.x0, wanted.x1, math.floor(cx - w / 2 + 0.5), keep_inside)
    if h > image_h and anchor == "bottom":
        ty = image_h - h
    elif h > image_h and anchor == "top":
        ty = 0
    else:
        ty = math.floor(cy - h / 2 + 0.5)
    y = _place(h, image_h, wanted.y0, wanted.y1, ty, keep_inside)
    return Frame(box=Box(x, y, x + w, y + h), image_w=image_w, image_h=image_h, subject=subject, wanted=wanted)


@dataclass(frozen=True)
class Placement:
    """Where ``place_in_scene`` puts a subject: output size and the subject box's top-left corner."""

    out_w: int
    out_h: int
    x: int
    y: int
    scale: float  # the fraction actually used (may be below the asked one to keep the margins)


def place_subject(subject_w: int, subject_h: int, aspect: float, scale: float, margin: float,
                  anchor: str = "bottom", cut: tuple[str, ...] | list[str] = ()) -> Placement:
    """Size an output of ``aspect`` (w/h) around a subject kept at its native size.

    The output is sized so the subject box fills ``scale`` of it along its limiting side
    (``max(subject_w / out_w, subject_h / out_h) == scale``): the scene grows around the
    subject, the subject is never resampled. ``margin`` (fraction of the output side) keeps the
    subject off the edges; ``scale`` is lowered to ``1 - 2 × margin`` if it would not fit.
    The subject is centred horizontally; vertically ``anchor`` puts it on the bottom margin,
    the top margin, or the centre.
    ``cut`` names the sides where the photo's own frame cut the subject (a bust cut at the chest): the subject
    enters from those output edges instead (no margin there), whatever the anchor.
    """
    if subject_w <= 0 or subject_h <= 0 or aspect <= 0:
        raise ValueError("subject size and aspect must be positive")
    used = min(scale, 1.0 - 2.0 * margin)
    if used <= 0:
        raise ValueError(f"margin {margin} leaves no room for the subject")
    out_h = max(subject_h / used, subject_w / (used * aspect))
    out_h = math.ceil(out_h - 1e-9)
    out_w = max(subject_w, round(out_h * aspect))
    x = (out_w - subject_w) // 2
    if anchor == "bottom":
        y = out_h - round(margin * out_h) - subject_h
    elif anchor == "top":
        y = round(margin * out_h)
    else:
        y = (out_h - subject_h) // 2
    if "bottom" in cut:
        y = out_h - subject_h
    elif "top" in cut:
        y = 0
    if "left" in cut and "right" not in cut:
        x = 0
    elif "right" in cut and "left" not in cut:
        x = out_w - subject_w
    y = _clamp(y, 0, out_h - subject_h)
    real = max(subject_w / out_w, subject_h / out_h)
    return Placement(out_w=out_w, out_h=out_h, x=x, y=y, scale=real)


def cover_transform(extent: Box, point: tuple[float, float], frame: Box) -> tuple[float, float, float]:
    """How a background spanning ``extent`` grows about ``point`` and then shifts to cover ``frame``: (scale, dx, dy).

    It grows only when the frame is larger than it (scale 1.0 otherwise), then shifts as little as possible. Used to
    compose a crop that reaches past a composite on the same scene: the subject keeps its place on the floor, up to
    the shift (it stands a little further back or forward).
    """
    scale = max(1.0, frame.width / max(extent.width, 1), frame.height / max(extent.height, 1))
    px, py = point
    shift = []
    for lo0, hi0, f0, f1, p in ((extent.x0, extent.x1, frame.x0, frame.x1, px), (extent.y0, extent.y1, frame.y0,
                                                                                  frame.y1, py)):
        e0, e1 = p + scale * (lo0 - p), p + scale * (hi0 - p)
        shift.append(min(max(0.0, f1 - e1), f0 - e0))  # the smallest move that keeps [f0, f1) inside
    return scale, shift[0], shift[1]


def place_on_floor(subject_w: int, subject_h: int, scene_w: int, scene_h: int, *, height: float, floor: float,
                   area: tuple[float, float, float, float], cut: tuple[str, ...] | list[str] = ()
                   ) -> tuple[Placement, float]:
    """Place a subject (native size) on a scene that says where things stand (a scene sidecar): the scene is scaled
    so the subject is ``height`` of the scene's height (more when the subject would not fit the placement
    ``area``'s width), the subject's base stands on the ``floor`` line, horizontally centred in ``area`` (fractions
    x0, y0, x1, y1 of the scene). A subject cut at the bottom of its photo enters from the output's bottom edge
    instead. Returns the placement (the output is the whole scene at that scale) and the scale.
    """
    ax0, _ay0, ax1, _ay1 = area
    k = max(subject_h / (height * scene_h), subject_w / (max(ax1 - ax0, 1e-6) * scene_w), 1e-9)
    out_w, out_h = max(subject_w, round(scene_w * k)), max(subject_h, round(scene_h * k))
    x = round((ax0 + ax1) / 2 * out_w - subject_w / 2)
    x = _clamp(x, math.ceil(ax0 * out_w), math.floor(ax1 * out_w) - subject_w) if subject_w <= (ax1 - ax0) * out_w \
        else x
    if "left" in cut and "right" not in cut:
        x = 0
    elif "right" in cut and "left" not in cut:
        x = out_w - subject_w
    y = out_h - subject_h if "bottom" in cut else round(floor * out_h) - subject_h
    x, y = _clamp(x, 0, out_w - subject_w), _clamp(y, 0, out_h - subject_h)
    real = max(subject_w / out_w, subject_h / out_h)
    return Placement(out_w=out_w, out_h=out_h, x=x, y=y, scale=real), k
