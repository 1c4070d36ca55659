"""Stage ``retouch``: remove dust on the backdrop and what a retoucher painted, and nothing else.

What is removed is one mask: small blobs on the backdrop outside the subject (``backdrop_spots``: no larger than
``max_spot``, at least ``min_contrast`` from the paper around them, none within ``subject_margin`` of the
subject, each with even paper all around it: never part of a clamp entering the frame, which is named in the log
and the manifest as too large for a spot) and what ``NAME.remove.png`` beside the shot paints (``remove_mask:
sidecar``: a clamp at the edge of the sweep, tape, a colour chart), minus what ``NAME.protect.png`` protects. Only
the masked pixels are replaced (``classical``: OpenCV's Telea or Navier-Stokes inpainting, drawn toward the paper
around the hole; ``lama``: a LaMa network through spandrel); every other pixel stays the input's, bit for bit, and
the subject is only touched where the painted mask covers it.

It runs on the whole photo before ``remove_background`` and ``crops``: the backdrop it cleans is still there, a
clamp removed here is neither cut out with the subject nor extended into new canvas by an outpainting crop.
Each masked region is filled in a window around it, so a few specks on a 24 MP shot cost little.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, NamedTuple

import cv2
import numpy as np

from ..errors import ConfigError
from ..models import ModelKind, gpu_errors, manager_for, require, weights_from_file, weights_present
from ..pixels import max_value
from ..schema import opt
from .base import Asset, Stage, define_step, register
from .framing import Box
from .masks import read_sidecar, sidecar_path
from .subject import SUBJECT_THRESHOLD, find_subject

if TYPE_CHECKING:
    from ..config import Config
    from ..models import ModelManager

define_step("retouch", "classical", needs=("uncropped",),
            doc="removes dust on the backdrop and what a retoucher painted (before remove_background)")

TOO_LARGE = "too large for a spot (use remove_mask: sidecar)"  # what backdrop_spots says of what it leaves
SHOWN = 5  # the largest marks backdrop_spots left that the manifest and the log name by their box


# --------------------------------------------------------------------------------------- the masks


def subject_zone(matte: np.ndarray, margin: float) -> np.ndarray:
    """Where no spot may be: the subject (matte above ``SUBJECT_THRESHOLD``) grown by ``margin`` pixels."""
    subject = matte > SUBJECT_THRESHOLD
    if margin <= 0 or not subject.any():
        return subject
    distance = cv2.distanceTransform((~subject).astype(np.uint8), cv2.DIST_L2, 3)
    return distance <= margin


def painted_parts(matte: np.ndarray, painted: np.ndarray,
                  removed_share: float = 0.8) -> tuple[np.ndarray, np.ndarray]:
    """What the paint did to the subject found on the shot (``matte``), two H×W bool masks: the subject's pixels it
    covered (``subject_pixels``), and the parts it covered (nearly) whole, ``removed_share`` of them or more, which
    are things removed (a clamp the finder took for subject, a coin on the paper), not the subject touched. Counted
    on the shot, not on the filled image: an ear painted over is counted whatever the fill makes of it (counted
    after the fill, Telea's smear made the trial's 5,946 px 6,155 and NS's 6,521)."""
    was = (matte > SUBJECT_THRESHOLD).astype(np.uint8)
    try:  # 16-bit labels: half the memory of 32-bit ones on a 24 MP shot (OpenCV raises when they overflow)
        n, labels = cv2.connectedComponents(was, connectivity=8, ltype=cv2.CV_16U)
    except cv2.error:
        n, labels = cv2.connectedComponents(was, connectivity=8)
    del was
    none = np.zeros(painted.shape, bool)
    if n <= 1:
        return none, none
    size = np.bincount(labels.ravel(), minlength=n)
    under = np.bincount(labels[painted], minlength=n)
    gone = under >= removed_share * size
    touched = (under > 0) & ~gone
    gone[0] = touched[0] = False
    reached = touched[labels]
    reached &= painted
    return reached, gone[labels]


class Spots(NamedTuple):
    """What ``find_spots`` found: the spots (H×W bool, each with its faint rim), how many, the contrast threshold
    used (8-bit levels), and the boxes (x0, y0, x1, y1) of the marks it left because they are larger than
    ``max_spot`` or enter from the frame's edge (their pieces joined), the largest first."""

    mask: np.ndarray
    count: int
    threshold: float
    skipped: list[tuple[int, int, int, int]]


def find_spots(pixels: np.ndarray, allowed: np.ndarray, *, max_spot: int, min_contrast: float,
               grow: int = 2) -> Spots:
    """Small blobs on the backdrop, each wholly surrounded by paper.

    A spot is darker or brighter than the paper around it (the luminance closed, then opened, with a square a
    little larger than ``max_spot``: what both leave is paper) by at least ``min_contrast`` (8-bit levels; raised
    to five times the paper's grain on noisy paper, so grain is never a spot), fits in a ``max_spot`` ×
    ``max_spot`` box, and lies wholly in ``allowed`` (the backdrop away from the subject): a blob that reaches
    toward the subject is left whole rather than half removed. It is never part of something larger: a blob
    touching the frame's edge (a clamp or tape entering the frame) is none, nor is one whose surroundings are not
    even paper (a clamp's jaw tip, a highlight on its metal: the closing sees only the part narrower than its
    square). Its extent is grown by ``grow`` px, and by up to three times that where the contrast still passes half
    the threshold (the soft rim of out-of-focus dust).
    """
    top = float(max_value(pixels))
    gray = cv2.cvtColor(np.ascontiguousarray(pixels[..., :3]), cv2.COLOR_RGB2GRAY)
    gray = cv2.GaussianBlur(gray, (3, 3), 0)  # single-pixel sensor noise is not dust
    threshold = max(min_contrast * top / 255.0, 5.0 * grain(gray, allowed))
    size = max_spot + 3
    kernel = cv2.getStructuringElement(cv2.MORPH_RECT, (size, size))
    # the paper continues past the frame (replicated): without it, the opening next to a dark speck near an edge
    # has no paper to reach for, and the paper between them would look like a bright spot
    padded = cv2.copyMakeBorder(gray, size, size, size, size, cv2.BORDER_REPLICATE)
    inner = (slice(size, size + gray.shape[0]), slice(size, size + gray.shape[1]))
    # the paper without its specks: the closing fills dark ones, the opening then removes bright ones (and the
    # bright bridge a closing leaves between two bright specks close together)
    paper = cv2.morphologyEx(cv2.morphologyEx(padded, cv2.MORPH_CLOSE, kernel), cv2.MORPH_OPEN, kernel)
    contrast = cv2.absdiff(padded, paper)[inner]
    level = threshold * 255.0 / top
    h, w = gray.shape
    none = Spots(np.zeros(gray.shape, bool), 0, level, [])
    n, labels, stats, _ = cv2.connectedComponentsWithStats((contrast >= threshold).astype(np.uint8), connectivity=8)
    if n <= 1:
        return none
    outside = np.bincount(labels[~allowed], minlength=n) > 0  # part of the subject, or too close to it
    x, y, bw, bh = (stats[:, i] for i in range(4))
    small = (bw <= max_spot) & (bh <= max_spot)
    edge = (x == 0) | (y == 0) | (x + bw >= w) | (y + bh >= h)
    keep = ~outside & small & ~edge
    keep[0] = outside[0] = False
    if keep.any():
        keep &= surrounded_by_paper(gray, contrast, allowed, labels, stats, keep, threshold, reach=3 * grow + 1,
                                    ring=max(4, max_spot // 4))
    marks = ~outside & ~keep
    marks[0] = False
    skipped = [b for b in (mark_boxes(marks[labels], size) if marks.any() else [])  # what a retoucher would see
               if b[2] - b[0] > max_spot or b[3] - b[1] > max_spot or b[0] == 0 or b[1] == 0 or b[2] == w or b[3] == h]
    if not keep.any():
        return none._replace(skipped=skipped)
    core = keep[labels].astype(np.uint8)
    spots = cv2.dilate(core, disk(grow)) > 0 if grow > 0 else core > 0
    if grow > 0:
        spots |= (cv2.dilate(core, disk(3 * grow)) > 0) & (contrast >= threshold / 2)
    spots &= allowed
    count = cv2.connectedComponents(spots.astype(np.uint8), connectivity=8)[0] - 1  # a ring of dust is one spot
    return Spots(spots, count, level, skipped)


def surrounded_by_paper(gray: np.ndarray, contrast: np.ndarray, allowed: np.ndarray, labels: np.ndarray,
                        stats: np.ndarray, keep: np.ndarray, threshold: float, reach: int, ring: int) -> np.ndarray:
    """Which of the ``keep`` components have even paper all around them: in a ``ring`` px wide band starting
    ``reach`` px out (past the other candidates' rims), at most 5 % of the pixels differ from the band's median
    by ``threshold`` or more, or from the paper (``contrast``) by half of it, and that median is a level the
    backdrop (``allowed``) commonly has (at least 1 % of it lies within ``threshold`` of it). A clamp's tip has the
    clamp in its band; a rivet on a clamp has metal all around it, a level no paper has; the tail of a subject's
    soft contact shadow goes on fainter past its band's edge (it was taken for a spot and cut off)."""
    h, w = gray.shape
    out = keep.copy()
    grown = cv2.dilate(keep[labels].astype(np.uint8), disk(reach))
    levels = np.bincount(gray[::4, ::4][allowed[::4, ::4]].ravel(), minlength=int(max_value(gray)) + 1)
    near = np.concatenate([[0], np.cumsum(levels)])  # near[v]: how many samples are below level v
    t = int(np.ceil(threshold))
    far = reach + ring
    for i in np.flatnonzero(keep):
        x, y, bw, bh = (int(v) for v in stats[i, :4])
        x0, y0, x1, y1 = max(0, x - far), max(0, y - far), min(w, x + bw + far), min(h, y + bh + far)
        own = (labels[y0:y1, x0:x1] == i).astype(np.uint8)
        band = (cv2.dilate(own, disk(far)) > 0) & (grown[y0:y1, x0:x1] == 0)
        values = gray[y0:y1, x0:x1][band].astype(np.float32)
        faint = np.mean(contrast[y0:y1, x0:x1][band] >= threshold / 2) > 0.05  # a soft shadow's tail goes on
        if values.size < 8 or faint:
            out[i] = False
            continue
        median = float(np.median(values))
        even = np.mean(np.abs(values - median) >= threshold) <= 0.05
        v = int(round(median))
        common = near[min(len(levels), v + t + 1)] - near[max(0, v - t)] >= 0.01 * near[-1]
        out[i] = even and common
    return out


def mark_boxes(marks: np.ndarray, join: int) -> list[tuple[int, int, int, int]]:
    """The boxes (x0, y0, x1, y1) of ``marks``, pieces closer than ``join`` px taken as one, largest first."""
    joined = cv2.dilate(marks.astype(np.uint8), cv2.getStructuringElement(cv2.MORPH_RECT, (join, join)))
    n, labels, stats, _ = cv2.connectedComponentsWithStats(joined, connectivity=8)
    boxes = []
    for i in sorted(range(1, n), key=lambda i: -int(stats[i, cv2.CC_STAT_AREA])):
        x, y, bw, bh = (int(v) for v in stats[i, :4])
        ys, xs = np.nonzero((labels[y:y + bh, x:x + bw] == i) & marks[y:y + bh, x:x + bw])
        boxes.append((x + int(xs.min()), y + int(ys.min()), x + int(xs.max()) + 1, y + int(ys.max()) + 1))
    return boxes


def disk(radius: int) -> np.ndarray:
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))


def grain(gray: np.ndarray, where: np.ndarray, samples: int = 200_000) -> float:
    """The paper's grain: robust spread of ``gray`` around its local mean over (a sample of) ``where``."""
    g = gray.astype(np.float32)
    residual = np.abs(g - cv2.GaussianBlur(g, (0, 0), 1.5))[where]
    if residual.size < 64:
        return 0.0
    residual = residual[:: max(1, residual.size // samples)]
    return float(1.4826 * np.median(residual) / 0.945)  # a 1.5 px blur keeps ~11 % of white noise's variance


def fill_masked(pixels: np.ndarray, mask: np.ndarray, fill: Callable[[np.ndarray, np.ndarray], np.ndarray],
                context: int, share: float = 0.0) -> tuple[np.ndarray, int, int]:
    """``pixels`` with only the ``mask`` pixels replaced, region by region; how many regions, and how many pixels
    were filled.

    ``fill(window, window_mask)`` returns the window (h×w×3, the input's dtype) inpainted; each region (masked
    pixels closer than ``context`` joined into one) is filled in its box grown by ``context`` or by ``share`` of
    its own size, whichever is more, and only its masked pixels are copied back: everything else stays the
    input's, bit for bit. A region whose window is masked all over has nothing to be filled from (OpenCV returns
    it unchanged): it is left as it is and not counted, so the figures say what was done.
    """
    out = pixels.copy()
    h, w = mask.shape
    regions, done = 0, np.zeros(mask.shape, bool)
    joined = cv2.dilate(mask.astype(np.uint8), cv2.getStructuringElement(cv2.MORPH_RECT, (context, context)))
    n, _labels, stats, _ = cv2.connectedComponentsWithStats(joined, connectivity=8)
    for i in range(1, n):
        x, y, bw, bh = (int(v) for v in stats[i, :4])
        pad = max(context, int(share * max(bw, bh)))
        box = Box(x, y, x + bw, y + bh).expand(pad, pad, pad, pad).intersect(Box(0, 0, w, h))
        if box is None:
            continue
        ys, xs = slice(box.y0, box.y1), slice(box.x0, box.x1)
        window_mask = mask[ys, xs]
        if not window_mask.any() or window_mask.all():
            continue
        filled = fill(np.ascontiguousarray(pixels[ys, xs, :3]), window_mask)
        target = out[ys, xs]
        target[..., :3][window_mask] = filled[window_mask]
        regions += 1
        done[ys, xs] |= window_mask
    return out, regions, int(done.sum())


# ---------------------------------------------------------------------------------------- options


@dataclass
class RetouchOptions:
    backdrop_spots: bool = opt(False, doc="remove small blobs (dust, marks) on the backdrop outside the subject")
    max_spot: int = opt(32, min=2, max=1000, doc="backdrop_spots: the largest spot, in pixels of the shot "
                                                   "(width and height of its box); larger marks need a painted mask")
    min_contrast: float = opt(12.0, min=1.0, max=255.0,
                              doc="backdrop_spots: how much darker or brighter than the paper around it a spot is "
                                  "at least, in 8-bit levels (raised to 5× the paper's grain on noisy paper)")
    subject_margin: int = opt(16, min=0, max=1000, doc="backdrop_spots: spots closer than this many pixels to the "
                                                       "subject are left alone")
    remove_mask: str | None = opt(None, choices=("sidecar",),
                                  expected="'sidecar' (the mask beside the shot, NAME.remove.png) or nothing",
                                  doc="sidecar: also remove what NAME.remove.png beside the shot paints (white on "
                                      "black, or paint on a transparent layer; the subject too where it is painted, "
                                      "which marks the job for review); a shot without one is kept")
    review_above: int = opt(200, min=1, max=1_000_000,
                            doc="mark the job for review when backdrop_spots finds more spots than this (a "
                                "textured backdrop, not dust)")


@dataclass
class ClassicalOptions(RetouchOptions):
    method: str = opt("telea", choices=("telea", "ns"), doc="OpenCV inpainting: telea (fast marching) | ns "
                                                             "(Navier-Stokes)")
    radius: int = opt(5, min=1, max=50, doc="pixels around each removed pixel the fill draws from")
    grain: bool = opt(True, doc="give the fill the grain measured on the paper around it (an inpainted area is "
                               "smooth, and a smooth patch shows on noisy paper)")


@dataclass
class LamaOptions(RetouchOptions):
    model: Path | None = opt(None, doc="LaMa inpainting weights (.pth/.safetensors, big-lama), loaded by spandrel; "
                                      "required")
    work_size: int = opt(1024, min=64, max=4096, doc="long edge at which a removed region and its surroundings are "
                                                     "filled; larger regions are filled smaller and enlarged back")


# -------------------------------------------------------------------------------------- the stage


class Retouch(Stage):
    """What both fills share: the mask (spots, the painted sidecar, the protect sidecar) and the bookkeeping."""

    step = "retouch"
    backend: str

    @classmethod
    def validate(cls, options: RetouchOptions, where: str, ctx_config: Any) -> list[str]:
        if not options.backdrop_spots and options.remove_mask is None:
            return [f"{where}: nothing to remove: set backdrop_spots: true, remove_mask: sidecar, or both"]
        return []

    context = 16  # pixels of surroundings a region is filled with, at least
    context_share = 0.0  # ... or this share of the region's size, when more

    def fill(self, window: np.ndarray, mask: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def run(self, asset: Asset) -> list[Asset]:
        """The painted mask first, then the spots on what is left: a clamp the mask removes is no subject for the
        spots to keep clear of. ``subject_pixels`` counts the subject under the paint in the shot (``subject_painted``)."""
        o: RetouchOptions = self.options
        w, h = asset.width, asset.height
        notes: dict[str, Any] = {"backend": self.backend}
        review: list[str] = []
        protect = read_sidecar(asset.source, "protect", (w, h))
        protect = protect >= 128 if protect is not None else None
        pixels, removed, regions, protected = asset.pixels, 0, 0, 0
        painted = None

        def remove(mask: np.ndarray) -> None:
            nonlocal pixels, removed, regions, protected
            if protect is not None:
                protected += int((mask & protect).sum())
                mask = mask & ~protect
            if mask.any():
                with gpu_errors(f"retouch {self.backend}"):
                    pixels, n, filled = fill_masked(pixels, mask, self.fill, self.context, self.context_share)
                removed, regions = removed + filled, regions + n

        if o.remove_mask == "sidecar":
            painted = read_sidecar(asset.source, "remove", (w, h))
            if painted is None:
                notes["remove_mask"] = "none beside the shot"
            else:
                painted = painted >= 128
                notes["remove_mask"] = {"file": sidecar_path(asset.source, "remove").name,
                                        "pixels": int(painted.sum())}
                remove(painted)
        cleaned = asset.derive(pixels, asset.matte)
        reached, shot_subject = 0, None
        if painted is not None and removed:  # only a painted mask reaches the subject (spots keep their margin)
            box, matte, where = find_subject(asset)
            if matte is not None:
                touched, gone = painted_parts(matte, painted)
                if protect is not None:
                    touched &= ~protect
                reached = int(touched.sum())
                matte = matte.copy() if matte is asset.matte or where == "alpha" else matte
                matte[gone] = 0  # what the paint removed is no subject for the spots to keep clear of
                shot_subject = (box, matte, where)
                del touched, gone
        if o.backdrop_spots:
            spots = self._spots(cleaned, notes, shot_subject)
            if spots is not None:
                remove(spots)
                if notes["backdrop_spots"]["spots"] > o.review_above:
                    review.append(f"retouch: {notes['backdrop_spots']['spots']} spots removed from the backdrop "
                                  f"(review_above {o.review_above}): a textured backdrop, not dust? Check it")
        if protect is not None:
            notes["protected"] = {"file": sidecar_path(asset.source, "protect").name, "pixels": protected}
        notes["removed_pixels"] = removed
        if regions:
            notes["regions"] = regions
        if reached:
            notes["subject_pixels"] = reached
            review.append(f"retouch: the painted removal covers {reached:,} px of the subject; a fill there is a "
                          "guess: look at it" + (", or use backend: lama" if self.backend != "lama" else ""))
        result = asset.derive(pixels, asset.matte)
        result.notes["retouch"] = notes
        result.review.extend(review)
        return [result]

    def _spots(self, asset: Asset, notes: dict[str, Any],
               found: tuple[Any, np.ndarray, str] | None = None) -> np.ndarray | None:
        """The spots found on the backdrop (None: not looked for); notes say how. ``found``: the subject already
        found on the shot, less what the paint removed (one search, not two, for a shot with a painted mask)."""
        o: RetouchOptions = self.options
        _box, matte, where = found if found is not None else find_subject(asset)
        if matte is None:
            notes["backdrop_spots"] = {"skipped": "no plain backdrop found, so no subject to keep clear of"}
            return None
        # no more for an estimated subject, found at 512 px: its soft outline (above SUBJECT_THRESHOLD) lies about
        # 1.5 of its pixels outside the subject already (never inside, on the synthetic shots), 18 px of a 24 MP
        # shot; two more of them (23 px) hid the specks 40 px from a shoe at 24 MP
        margin = float(o.subject_margin)
        allowed = ~subject_zone(matte, margin)
        if asset.has_alpha:  # a cut-out: only opaque pixels are backdrop; transparent ones show nothing
            allowed &= asset.pixels[..., 3] >= max_value(asset.pixels)
        spots = find_spots(asset.pixels, allowed, max_spot=o.max_spot, min_contrast=o.min_contrast)
        notes["backdrop_spots"] = {"spots": spots.count, "pixels": int(spots.mask.sum()),
                                   "threshold": round(spots.threshold, 1), "subject": where, "margin": round(margin, 1)}
        if spots.skipped:
            many = len(spots.skipped)
            notes["backdrop_spots"]["too_large"] = {"why": TOO_LARGE, "marks": many,
                                                    "boxes": [list(b) for b in spots.skipped[:SHOWN]]}
            self.ctx.log.info("retouch: %s: %s on the backdrop left as %s, %s: %s%s", asset.source or "image",
                              "a mark" if many == 1 else f"{many} marks", "it is" if many == 1 else "they are",
                              TOO_LARGE, ", ".join("x %d-%d y %d-%d" % (b[0], b[2], b[1], b[3])
                                                   for b in spots.skipped[:SHOWN]),
                              "" if many <= SHOWN else f" (the {SHOWN} largest)")
        return spots.mask


@register
class ClassicalRetouch(Retouch):
    """OpenCV inpainting (Telea's fast marching, or Navier-Stokes): no model, fine for dust and small marks."""

    backend = "classical"
    Options = ClassicalOptions

    def __init__(self, options: Any, ctx: Any):
        super().__init__(options, ctx)
        self.context = max(16, 3 * options.radius)

    def fill(self, window: np.ndarray, mask: np.ndarray) -> np.ndarray:
        flag = cv2.INPAINT_TELEA if self.options.method == "telea" else cv2.INPAINT_NS
        m8 = mask.astype(np.uint8) * 255
        if window.dtype == np.uint8:
            filled = cv2.inpaint(window, m8, self.options.radius, flag)
        else:  # OpenCV inpaints 16-bit images one channel at a time
            filled = np.dstack([cv2.inpaint(np.ascontiguousarray(window[..., c]), m8, self.options.radius, flag)
                                for c in range(window.shape[2])])
        filled = match_surround(filled, window, mask, ring=max(8, 2 * self.options.radius))
        return add_grain(filled, window, mask) if self.options.grain else filled


def match_surround(filled: np.ndarray, window: np.ndarray, mask: np.ndarray, ring: int) -> np.ndarray:
    """``filled`` with its ``mask`` pixels drawn toward what the paper around the hole says is there: a plane
    fitted (robustly) to a ``ring`` px band around the hole. The pull grows from nothing at the hole's edge (where
    the fill already meets its surroundings) to all of it ``ring`` px inside.

    Telea's fill is a tent of the values on the hole's edge: on a sweep's gradient its lower half comes out lighter
    and its mean 1.5-3 levels lighter, a patch a retoucher sees. A plane follows the gradient across the hole,
    also where the hole reaches the frame's edge and the band is on one side only. A band that is no plane (the
    hole lies across two surfaces, or on a pattern) leaves the fill as it is.
    """
    m8 = mask.astype(np.uint8)
    band = (cv2.dilate(m8, disk(ring)) > 0) & (cv2.dilate(m8, disk(1)) == 0)  # its first pixel may be the rim
    if band.sum() < 32:
        return filled
    h, w = mask.shape
    top = float(max_value(window))

    def terms(ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
        return np.stack([np.ones(len(ys)), xs / max(1, w - 1), ys / max(1, h - 1)], axis=1)

    ys, xs = np.nonzero(band)
    a = terms(ys, xs)
    values = window[band].astype(np.float64)
    keep = np.ones(len(ys), bool)
    for _ in range(3):  # refit without the outliers (dust left in the band, the grain's tails)
        coef = np.linalg.lstsq(a[keep], values[keep], rcond=None)[0]
        residual = np.abs(a @ coef - values).max(axis=1)
        sigma = max(1.4826 * float(np.median(residual[keep])), top / 255.0)
        keep = residual <= 3.0 * sigma
    if keep.mean() < 0.7 or sigma > 8.0 * top / 255.0:
        return filled
    hy, hx = np.nonzero(mask)
    inside = cv2.distanceTransform(m8, cv2.DIST_L2, 3)[hy, hx]  # from the hole's edge (the frame's is no edge)
    pull = np.clip(inside / ring, 0.0, 1.0)[:, None]
    given = filled[hy, hx].astype(np.float64)
    out = filled.copy()
    out[hy, hx] = np.clip(np.rint(given + pull * (terms(hy, hx) @ coef - given)), 0, top).astype(filled.dtype)
    return out


def add_grain(filled: np.ndarray, window: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``filled`` with noise as strong as the grain of ``window``'s unmasked pixels added inside ``mask``.

    The grain is the robust spread (median absolute deviation) of each channel around its local mean; the noise is
    seeded by the window, so the same shot gives the same pixels.
    """
    known = cv2.dilate(mask.astype(np.uint8), np.ones((5, 5), np.uint8)) == 0
    if known.sum() < 64:
        return filled
    w = window.astype(np.float32)
    residual = np.abs(w - cv2.GaussianBlur(w, (0, 0), 1.5))[known]
    sigma = 1.4826 * np.median(residual, axis=0) / 0.945  # a 1.5 px blur keeps ~11 % of white noise's variance
    if not (sigma > 0).any():
        return filled
    seed = int(np.frombuffer(np.ascontiguousarray(window[known][:4096]).tobytes(), np.uint8).sum()) + mask.size
    rng = np.random.default_rng(seed)
    noise = rng.standard_normal((int(mask.sum()), window.shape[2]), dtype=np.float32) * sigma
    out = filled.copy()
    top = float(max_value(window))
    out[mask] = np.clip(np.rint(filled[mask].astype(np.float32) + noise), 0, top).astype(filled.dtype)
    return out


# ------------------------------------------------------------------------------------ LaMa model


class LamaModel(ModelKind):
    """LaMa inpainting weights (big-lama) spandrel recognises; its name is the resolved path. Never downloaded."""

    kind = "lama"

    @classmethod
    def name_for(cls, config: "Config", model: Path | None) -> str | None:
        return str(model) if model else None

    @classmethod
    def load(cls, manager: "ModelManager", name: str) -> Any:
        """A spandrel MaskedImageModelDescriptor in eval mode on the device, in float32 (LaMa's Fourier units)."""
        file = Path(name)
        model = weights_from_file(file, "retouch model", "retouch backend lama")
        require("torch", "retouch backend lama")
        spandrel = require("spandrel", "retouch backend lama")
        if not isinstance(model, spandrel.MaskedImageModelDescriptor) or model.input_channels != 3:
            raise ConfigError(f"retouch model {file} is a {model.architecture.id} {type(model).__name__}, not an "
                              f"inpainting model (LaMa)")
        model.eval()
        with gpu_errors(f"loading {file.name}"):
            model.to(manager.device)
        return model

    @classmethod
    def pull(cls, config: "Config", name: str) -> str:
        """Only checks the file is there: LaMa weights are put in place by hand."""
        return weights_present(name, "retouch model", "LaMa")


@register
class LamaRetouch(Retouch):
    """LaMa (big-lama) through spandrel: fills larger painted areas (a clamp, a chart) with the backdrop's structure.

    Each region is filled in a window around it of at most ``work_size`` pixels (larger ones are filled smaller and
    enlarged back). In float32 on any device: LaMa's Fourier units are not made for half precision."""

    backend = "lama"
    Options = LamaOptions
    needs_models = True
    model_kind = LamaModel

    @classmethod
    def validate(cls, options: LamaOptions, where: str, ctx_config: Any) -> list[str]:
        problems = super().validate(options, where, ctx_config)
        if options.model is None:
            problems.append(f"{where}.model: required: a LaMa .pth/.safetensors file (big-lama)")
        elif not options.model.is_file():
            problems.append(f"{where}.model: file {options.model} not found")
        return problems

    def _model(self) -> Any:
        return manager_for(self.ctx).load(self.model_ref(self.options, self.ctx.config))

    def prepare(self) -> None:
        self._model()

    context = 64
    context_share = 0.5  # a network sees what surrounds a clamp or a chart: half its size on each side

    def run(self, asset: Asset) -> list[Asset]:
        result = super().run(asset)
        if "regions" in result[0].notes["retouch"]:
            model = self._model()
            result[0].notes["retouch"]["model"] = str(self.options.model)
            result[0].notes["retouch"]["architecture"] = model.architecture.id
        return result

    def fill(self, window: np.ndarray, mask: np.ndarray) -> np.ndarray:
        import torch

        model = self._model()
        top = float(max_value(window))
        h, w = mask.shape
        scale = min(1.0, self.options.work_size / max(h, w))
        sw, sh = max(16, round(w * scale)), max(16, round(h * scale))
        img = window.astype(np.float32) / top
        m = mask.astype(np.float32)
        if (sw, sh) != (w, h):
            img = cv2.resize(img, (sw, sh), interpolation=cv2.INTER_AREA)
            m = (cv2.resize(m, (sw, sh), interpolation=cv2.INTER_LINEAR) > 0).astype(np.float32)
        ph, pw = (-sh) % 8, (-sw) % 8  # LaMa wants sides that are multiples of 8
        img = np.pad(img, ((0, ph), (0, pw), (0, 0)), mode="reflect" if min(sh, sw) > 1 else "edge")
        m = np.pad(m, ((0, ph), (0, pw)), mode="constant")
        t_img = torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))[None]
        t_mask = torch.from_numpy(np.ascontiguousarray(m))[None, None]
        with torch.inference_mode():
            y = model(t_img.to(model.device, model.dtype), t_mask.to(model.device, model.dtype))
            out = y[0].float().clamp_(0, 1).permute(1, 2, 0).cpu().numpy()[:sh, :sw]
        if (sw, sh) != (w, h):
            out = cv2.resize(out, (w, h), interpolation=cv2.INTER_CUBIC)
        return np.clip(np.rint(out * top), 0, top).astype(window.dtype)
