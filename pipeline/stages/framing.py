"""Crop and placement geometry: plain arithmetic on boxes, no pixels.

Thumbor-style: the stages ask this module *where* to cut or place, then do the pixel work
themselves, so every framing decision can be tested table-driven without images.
The one exception is ``subject_box``, which measures a matte (it reads a mask; it never
changes pixels).

Coordinates are integers, boxes are half-open (``x1``/``y1`` excluded), ``x`` grows right and
``y`` grows down. Nothing here scales: a frame is always in the image's own pixel units.
"""
from __future__ import annotations

import dataclasses
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
    # framing by subject fill (``frame_by_fill``); the largest frame (``frame_for_ratio``) leaves the defaults
    reference: Box | None = None  # what the fill is measured against: the frame less its copy space
    allowed: Box | None = None  # where the subject may be: the frame less copy space and safe zones
    target_fill: float | None = None
    framing: str = "largest"  # how it was chosen: see FRAMINGS
    why: str = ""  # one line on what the framing had to give up, when it did

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

    @property
    def new_canvas(self) -> float:
        """The share of the frame's area that is not the image's pixels (0: none, 1: all)."""
        inside = self.box.intersect(self.image)
        kept = inside.width * inside.height if inside is not None else 0
        return 1.0 - kept / (self.box.width * self.box.height)

    @property
    def subject_fill(self) -> float:
        """How much of the limiting side of the frame (less its copy space) the subject box fills."""
        ref = self.reference or self.box
        return max(self.subject.width / ref.width, self.subject.height / ref.height)

    @property
    def in_zones(self) -> bool:
        """The subject reaches into the copy space or a safe zone (only a capped crop does that)."""
        return self.allowed is not None and not self.allowed.contains(self.subject)


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


def clamp(value: int, lo: int, hi: int) -> int:
    return max(lo, min(value, hi))


def _place(size: int, length: int, want0: int, want1: int, target: int, keep_inside: bool) -> int:
    """Start of a ``size`` span on an axis of ``length``: near ``target``, holding the wanted span.

    Two wishes: stay inside [0, length) as far as possible, and contain [want0, want1).
    ``keep_inside`` (fill: crop) says which wins when they disagree.
    """
    inside = (min(0, length - size), max(0, length - size))
    holds = (want1 - size, want0)  # empty (lo > hi) when the span is smaller than the wanted part
    first, second = (holds, inside) if keep_inside else (inside, holds)
    pos = clamp(target, *first) if first[0] <= first[1] else target
    return clamp(pos, *second) if second[0] <= second[1] else pos


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


# --- framing by subject fill -------------------------------------------------------------------

DEFAULT_FILL = 0.8
"""The subject box fills this much of the frame's limiting side (less its copy space)."""
DEFAULT_FILL_RANGE = (0.6, 0.9)
"""How far the fill may go looser/tighter to keep new canvas under ``max_new_canvas``."""
DEFAULT_MAX_NEW_CANVAS = 0.25
"""The share of a frame's area that may be new canvas (not the image's pixels)."""
DEFAULT_OPTICAL_CENTER = 0.47
"""Where the subject's centre sits, as a fraction of the height from the top (0.5: the geometric centre)."""
SIDES = ("left", "top", "right", "bottom")
FRAMINGS = {
    "largest": "the largest frame of the ratio around the subject (subject_fill: null)",
    "framed": "the subject at the asked fill",
    "fitted": "the fill lowered so the subject fits between the copy space and the safe zones",
    "edge": "the photo cuts the subject on two opposite sides: that axis sets the frame",
    "tightened": "the fill raised (within fill_range) to keep new canvas under max_new_canvas",
    "loosened": "the fill lowered (within fill_range) to keep new canvas under max_new_canvas",
    "capped": "over max_new_canvas at every fill of fill_range: the least new canvas, or cut inside the image",
    "seam": "a tighter frame where outpaint would not stay seamless (crops fallback: crop)",
}
_FILL_STEP = 0.01  # fill_range is searched in these steps, then refined by bisection


@dataclass(frozen=True)
class Zones:
    """Fractions of a frame kept free of the subject: of its width (left, right) and height (top, bottom)."""

    left: float = 0.0
    top: float = 0.0
    right: float = 0.0
    bottom: float = 0.0

    @classmethod
    def copy_space(cls, side: str, fraction: float) -> "Zones":
        if side not in SIDES:
            raise ValueError(f"copy space side must be one of {', '.join(SIDES)}, got {side!r}")
        return cls(**{side: fraction})

    def union(self, other: "Zones") -> "Zones":
        return Zones(*(max(getattr(self, s), getattr(other, s)) for s in SIDES))

    def without(self, sides: set[str] | frozenset[str]) -> "Zones":
        return Zones(*(0.0 if s in sides else getattr(self, s) for s in SIDES))

    @property
    def room(self) -> tuple[float, float]:
        """The fractions of the width and the height left to the subject."""
        return 1.0 - self.left - self.right, 1.0 - self.top - self.bottom

    def pixels(self, w: int, h: int) -> tuple[int, int, int, int]:
        """(left, top, right, bottom) in whole pixels of a w × h frame (rounded up: a zone is kept free in full)."""
        def up(x: float) -> int:
            return math.ceil(x - 1e-9)

        return up(self.left * w), up(self.top * h), up(self.right * w), up(self.bottom * h)

    def inset(self, box: Box) -> Box:
        left, top, right, bottom = self.pixels(box.width, box.height)
        return box.expand(-left, -top, -right, -bottom)

    def __bool__(self) -> bool:
        return any(getattr(self, s) for s in SIDES)


def cut_sides(subject: Box, image_w: int, image_h: int) -> frozenset[str]:
    """The image edges a subject touches: the photo cuts it there, and no canvas is added past them."""
    touched = (subject.x0 <= 0, subject.y0 <= 0, subject.x1 >= image_w, subject.y1 >= image_h)
    return frozenset(s for s, t in zip(SIDES, touched) if t)


def fill_of(subject: Box, reference: Box) -> float:
    """How much of ``reference``'s limiting side the subject box fills."""
    return max(subject.width / reference.width, subject.height / reference.height)


def frame_by_fill(image_w: int, image_h: int, subject: Box | None, ratio: tuple[int, int],
                  subject_fill: float = DEFAULT_FILL, *, fill_range: tuple[float, float] = DEFAULT_FILL_RANGE,
                  max_new_canvas: float = DEFAULT_MAX_NEW_CANVAS, optical_center: float = DEFAULT_OPTICAL_CENTER,
                  copy_space: tuple[str, float] | None = None, safe_zone: Zones | None = None,
                  margin: float = DEFAULT_MARGIN, anchor: str = "center", keep_inside: bool = False,
                  when_capped: str = "extend", slide: bool = True) -> Frame:
    """The frame of ``ratio`` in which the subject box fills ``subject_fill`` of the limiting side.

    * The fill is measured against the frame less its ``copy_space`` (side, fraction): a 16:9 banner with
      ("right", 0.35) holds the subject in its left 65 %, at the fill of that part.
    * The subject's centre sits at the middle of the width and ``optical_center`` of the height of the part it
      may occupy: the frame less copy space and ``safe_zone`` (fractions kept free per side, the larger of the
      two where both are set). When the subject at that fill does not fit there, the fill is lowered until it
      does ("fitted").
    * The frame shifts to stay inside the image (keeping the subject in its part, at least ``margin`` × its
      larger side from that part's edges, or its ideal gap if less) before it reaches past the image.
    * A subject touching an image edge is cut by the photo: it stays anchored to that edge (no canvas past it,
      no copy space or safe zone on that side). Cut on two opposite sides, that axis sets the frame ("edge").
    * When more than ``max_new_canvas`` of the frame's area would be new canvas, fills within ``fill_range``
      are tried, tighter first (less canvas), then looser; the one closest to ``subject_fill`` wins
      ("tightened", "loosened"). When none does ("capped"), ``when_capped="extend"`` returns the frame with
      the least new canvas and ``"crop"`` one cut inside the image, as ``keep_inside`` (fill: crop, never
      any new canvas) does; the subject may then reach into a zone (``Frame.in_zones``) or be cut.

    ``slide=False`` (a place_in_scene composite, whose canvas past the image is more of the scene): the frame is
    placed by the fill and optical centre alone, not shifted to stay inside the image, and ``anchor`` is unused.

    ``subject`` None means the whole image is the subject. Raises ValueError when the copy space and safe zones
    leave no room (``assetd check`` refuses such rules before a job sees them).
    """
    if image_w <= 0 or image_h <= 0:
        raise ValueError(f"image size must be positive, got {image_w}×{image_h}")
    lo, hi = fill_range
    if not 0.0 < subject_fill <= 1.0 or not 0.0 < lo <= hi <= 1.0:
        raise ValueError(f"fills must lie in (0, 1], got subject_fill {subject_fill}, fill_range {fill_range}")
    lo, hi = min(lo, subject_fill), max(hi, subject_fill)
    image = Box(0, 0, image_w, image_h)
    subject = (subject.intersect(image) if subject is not None else None) or image
    cut = cut_sides(subject, image_w, image_h)
    copy = (Zones.copy_space(*copy_space) if copy_space else Zones()).without(cut)
    zones = (safe_zone or Zones()).union(copy).without(cut)
    if min(zones.room) <= 0.0:
        raise ValueError(f"copy space and safe zones leave no room for the subject: {zones}")
    asked = (safe_zone or Zones()).union(Zones.copy_space(*copy_space) if copy_space else Zones())
    ignored = [s for s in SIDES if s in cut and getattr(asked, s)]
    limit = 0.0 if keep_inside else max_new_canvas
    plan = _FillPlan(image_w, image_h, subject, ratio, cut, copy, zones, optical_center,
                     round(margin * max(subject.width, subject.height)), anchor,
                     wanted_box(subject, image_w, image_h, margin), slide or keep_inside)

    def attempt(fill: float) -> Frame:
        return plan.frame(fill, keep_inside=keep_inside)

    def ok(frame: Frame) -> bool:  # within the limit; a crop also keeps the subject and the zones whole
        return frame.new_canvas <= limit + 1e-9 and not (keep_inside and frame.in_zones)

    def framed(frame: Frame, framing: str, why: str = "") -> Frame:
        if ignored:
            why = "; ".join(filter(None, [why, f"cut by the photo at {', '.join(ignored)}: no copy space or "
                                                f"safe zone there"]))
        return dataclasses.replace(frame, target_fill=subject_fill, framing=framing, why=why)

    first = attempt(subject_fill)
    if ok(first):
        return framed(first, plan.status(subject_fill), plan.reason(subject_fill))
    over = f"new canvas {first.new_canvas:.2f} > {limit:g} at fill {subject_fill:g}"
    tried = [first]
    for framing, end in (("tightened", hi), ("loosened", lo)):
        prev = subject_fill
        steps = math.ceil(abs(end - subject_fill) / _FILL_STEP - 1e-9)  # 0 when the fill is at that end already
        for k in range(1, steps + 1):
            fill = subject_fill + (end - subject_fill) * k / steps
            frame = attempt(fill)
            tried.append(frame)
            if ok(frame):
                good, bad = fill, prev
                for _ in range(7):  # the fill closest to the asked one that still keeps the limit
                    mid = (good + bad) / 2
                    trial = attempt(mid)
                    if ok(trial):
                        good, frame = mid, trial
                    else:
                        bad = mid
                return framed(frame, framing, over)
            prev = fill
    if keep_inside or when_capped == "crop":
        tight = plan.frame(hi)
        if tight.box.width <= image_w and tight.box.height <= image_h:
            size = tight.box.size
        else:
            size = largest_size(image_w, image_h, ratio)
        return framed(plan.frame(hi, size=size, keep_inside=True), "capped", over + f" at every fill {lo:g}-{hi:g}: cut")
    best = min(tried, key=lambda f: (round(f.new_canvas, 6), abs(f.subject_fill - subject_fill)))
    return framed(best, "capped", over + f" at every fill {lo:g}-{hi:g}: least new canvas")


@dataclass(frozen=True)
class _FillPlan:
    """What ``frame_by_fill`` keeps fixed while it tries fills: the subject, its cut sides, the zones."""

    image_w: int
    image_h: int
    subject: Box
    ratio: tuple[int, int]
    cut: frozenset[str]
    copy: Zones
    zones: Zones
    optical_center: float
    margin_px: int
    anchor: str
    wanted: Box  # the subject and its margin (wanted_box): a frame without it cuts the margin
    slide: bool = True  # shift frames to stay inside the image (False: a scene composite, composed anew past it)

    def heights(self, fill: float) -> tuple[float, float, float | None]:
        """The frame height for ``fill``, the least one the subject fits in, and the one cut axes impose."""
        r = self.ratio[0] / self.ratio[1]
        sw, sh = self.subject.size
        (cx, cy), (ax, ay) = self.copy.room, self.zones.room
        caps = []
        if {"top", "bottom"} <= self.cut:
            caps.append(float(self.image_h))
        if {"left", "right"} <= self.cut:
            caps.append(self.image_w / r)
        return max(sw / (fill * cx * r), sh / (fill * cy)), max(sw / (ax * r), sh / ay), min(caps) if caps else None

    def status(self, fill: float) -> str:
        by_fill, fit, cap = self.heights(fill)
        if cap is not None and by_fill > cap + 1:
            return "edge"
        return "fitted" if fit > by_fill + 1 else "framed"

    def reason(self, fill: float) -> str:
        status = self.status(fill)
        if status == "edge":
            return "the photo cuts the subject on two opposite sides"
        if status == "fitted":
            return f"copy space and safe zones leave room for fill {self.frame(fill).subject_fill:.2f}"
        return ""

    def _fits(self, w: int, h: int) -> bool:
        left, top, right, bottom = self.zones.pixels(w, h)
        return self.subject.width <= w - left - right and self.subject.height <= h - top - bottom

    def size(self, fill: float) -> tuple[int, int]:
        """The integer size of the ratio closest to ``fill`` that the subject fits in."""
        by_fill, fit, cap = self.heights(fill)
        h = max(by_fill, fit)
        if cap is not None:
            h = max(min(h, cap), fit)
        rw, rh = self.ratio
        short = h if rw >= rh else h * rw / rh
        base = max(1, math.floor(short))
        candidates = [_size_from_short(s, self.ratio) for s in (base, base + 1)]
        while not any(self._fits(*c) for c in candidates):
            candidates.append(_size_from_short(max(1, math.floor(short)) + len(candidates), self.ratio))

        def excess(c: tuple[int, int]) -> int:  # canvas past the cut edges of an axis cut twice
            w, h = c
            return (max(0, w - self.image_w) if {"left", "right"} <= self.cut else 0) + \
                (max(0, h - self.image_h) if {"top", "bottom"} <= self.cut else 0)

        def error(c: tuple[int, int]) -> float:
            ref = self.copy.inset(Box(0, 0, *c))
            return abs(fill_of(self.subject, ref) - fill) * max(ref.size)

        return min((c for c in candidates if self._fits(*c)), key=lambda c: (excess(c), error(c)))

    def _axis(self, size: int, length: int, s0: int, s1: int, z0: int, z1: int, centre: float,
              cut0: bool, cut1: bool, keep_inside: bool, anchor: str) -> int:
        """The frame's start on one axis: the subject's centre at ``centre`` (frame coordinates), shifted to
        stay inside the image while the subject stays in its part (zones z0/z1, least gaps), pinned to a cut."""
        target = math.floor((s0 + s1) / 2 - centre + 0.5)
        if not self.slide and not (cut0 or cut1):
            return target  # the canvas past the image is as good as the image (a scene composed anew)
        if cut0 and not cut1:
            target = 0
        elif cut1 and not cut0:
            target = length - size
        elif size > length and anchor == "end":
            target = length - size
        elif size > length and anchor == "start":
            target = 0
        slack = max(0, size - z0 - z1 - (s1 - s0))  # room beside the subject in its part
        ideal0 = min(max(0, s0 - target - z0), slack)
        gap0 = 0 if cut0 else min(self.margin_px, ideal0)
        gap1 = 0 if cut1 else min(self.margin_px, slack - ideal0)
        return _place(size, length, s0 - z0 - gap0, s1 + z1 + gap1, target, keep_inside)

    def frame(self, fill: float, size: tuple[int, int] | None = None, keep_inside: bool = False) -> Frame:
        w, h = size or self.size(fill)
        left, top, right, bottom = self.zones.pixels(w, h)
        s = self.subject
        anchor = {"bottom": "end", "top": "start"}.get(self.anchor, "")
        x = self._axis(w, self.image_w, s.x0, s.x1, left, right, left + (w - left - right) / 2,
                       "left" in self.cut, "right" in self.cut, keep_inside, "")
        y = self._axis(h, self.image_h, s.y0, s.y1, top, bottom, top + (h - top - bottom) * self.optical_center,
                       "top" in self.cut, "bottom" in self.cut, keep_inside, anchor)
        box = Box(x, y, x + w, y + h)
        return Frame(box=box, image_w=self.image_w, image_h=self.image_h, subject=s, wanted=self.wanted,
                     reference=self.copy.inset(box), allowed=self.zones.inset(box))


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
    y = clamp(y, 0, out_h - subject_h)
    real = max(subject_w / out_w, subject_h / out_h)
    return Placement(out_w=out_w, out_h=out_h, x=x, y=y, scale=real)


def cover_transform(extent: Box, point: tuple[float, float], frame: Box,
                    max_grow: float = math.inf) -> tuple[float, float, float]:
    """How a background spanning ``extent`` grows about ``point`` (inside it) and shifts to cover ``frame``:
    (scale, dx, dy).

    Used to compose a crop that reaches past a composite on the same scene, ``point`` being the subject's base.
    Above or below, the scene grows about the base (the subject keeps its footing: the floor under it stays the
    floor), but not beyond ``max_grow`` (an enlarged scene goes soft); what is still missing is a shift (the subject
    then stands a little further back or forward). Sideways it shifts first (the floor goes on). It always grows as
    much as a frame larger than the scene needs. Scale 1.0 and no shift when it already covers the frame.
    """
    px, py = point
    need = max(1.0, frame.width / max(extent.width, 1), frame.height / max(extent.height, 1))
    wish = 1.0
    if frame.y0 < extent.y0:
        wish = max(wish, (py - frame.y0) / max(py - extent.y0, 1e-6))
    if frame.y1 > extent.y1:
        wish = max(wish, (frame.y1 - py) / max(extent.y1 - py, 1e-6))
    scale = max(need, min(wish, max_grow))
    shift = []
    for lo, hi, f0, f1, p in ((extent.x0, extent.x1, frame.x0, frame.x1, px), (extent.y0, extent.y1, frame.y0,
                                                                              frame.y1, py)):
        e0, e1 = p + scale * (lo - p), p + scale * (hi - p)
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
    x = clamp(x, math.ceil(ax0 * out_w), math.floor(ax1 * out_w) - subject_w) if subject_w <= (ax1 - ax0) * out_w \
        else x
    if "left" in cut and "right" not in cut:
        x = 0
    elif "right" in cut and "left" not in cut:
        x = out_w - subject_w
    y = out_h - subject_h if "bottom" in cut else round(floor * out_h) - subject_h
    x, y = clamp(x, 0, out_w - subject_w), clamp(y, 0, out_h - subject_h)
    real = max(subject_w / out_w, subject_h / out_h)
    return Placement(out_w=out_w, out_h=out_h, x=x, y=y, scale=real), k
