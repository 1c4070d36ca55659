"""Stage remove_background, backend ``studio``: cut a product out of a plain studio backdrop.

A studio shot is a subject on seamless paper, so the backdrop can be *modelled*; a learned subject
prior (U²-Netp, ``pipeline/prior.py``, when it is in the model cache) says what the product is.

1. Segmentation at a reduced size (``work_size`` long edge). A smooth backdrop (a low-order
   polynomial per channel, so sweeps and vignettes fit) is fitted to the image border, robustly,
   then refitted to every pixel found to be backdrop. A pixel is backdrop-like when it matches the
   model, or when it is the model darkened with the same chroma (a shadow; only in the lower part
   of the subject's extent and below: contact shadows lie at the base). Backdrop-like pixels
   reached from the border without crossing a sharp edge are backdrop: shadows are soft, a
   light-grey box on white paper has a sharp outline, so the flood stops there. Areas brighter than
   the refitted paper are held back from the flood (paper is never brighter than itself): they are
   product (a near-white label) when the prior says so or when they lie against the product, else
   paper. With the prior, regions the flood did not reach (between a lamp's arms, inside a frame)
   are backdrop when the prior calls them background, or when they are the paper itself (its colour,
   brightness and evenness) whatever the prior says, since at 320 px it fills small gaps. What is
   left is the subject: small specks are dropped unless the prior calls them subject.
2. Edge refinement at full resolution (``subject.refine_edge``, shared with the rembg backend), only in a
   band a few pixels wide around the outline: alpha from I = aF + (1 - a)B, with F and B the local
   subject and backdrop colours (normalised convolution of the known pixels on each side), falling
   back to a smooth outline where F and B are too alike to tell apart.
3. Decontamination of the partially transparent pixels: F = (I - (1 - a)B) / a, kept within the
   subject's own colours nearby (no dark rim where alpha was underestimated).

The promise: wherever the output alpha is opaque the RGB is the input's, bit for bit; only the
partially transparent edge (and, with ``keep_shadow``, the shadow, stored as black at low alpha)
is changed, and fully transparent pixels are (0, 0, 0). RGBA input whose alpha already has
transparent pixels is taken as cut out already: its alpha is kept as the matte.

With the prior, the manifest records ``uncertain_outline``: the share of the outline where the prior
and the backdrop model disagree; above ``review_above`` the job is marked for review.
"""
from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable

import cv2
import numpy as np

from ..errors import PermanentError
from ..models import gpu_errors, manager_for
from ..pixels import max_value
from ..prior import NAME as PRIOR_NAME
from ..prior import PriorMissingError, PriorModel, load_prior
from ..schema import opt
from .base import Asset, Stage, define_step, register
from .subject import disk as _disk
from .subject import cut_edges, matte_from_alpha, refine_edge, trimmed, working_image

define_step("remove_background", "studio", needs=("uncropped",), gives=("cutout",),
            doc="cuts the subject out of its backdrop")


# --- backdrop model ----------------------------------------------------------------------------

def _poly_terms(xn: np.ndarray, yn: np.ndarray, degree: int) -> np.ndarray:
    """Monomials x^i y^j (i + j <= degree) of normalised coordinates, one column each."""
    cols = [xn**i * yn**j for i in range(degree + 1) for j in range(degree + 1 - i)]
    return np.stack(cols, axis=-1).astype(np.float32)


@dataclass
class BackdropModel:
    """Per-channel polynomial over normalised coordinates (x, y in [-1, 1]); values 0..1."""

    coeffs: np.ndarray  # terms × 3
    degree: int
    noise: float  # robust residual sigma of the fit (0..1 units), at the size it was fitted
    inliers: float  # fraction of samples the fit explains

    def render(self, width: int, height: int) -> np.ndarray:
        """The backdrop at (width, height), H×W×3 float32."""
        d = self.degree
        xn = (np.arange(width, dtype=np.float64) + 0.5) / width * 2 - 1
        yn = (np.arange(height, dtype=np.float64) + 0.5) / height * 2 - 1
        xp = np.stack([xn**i for i in range(d + 1)], axis=1)  # W × (d+1)
        yp = np.stack([yn**j for j in range(d + 1)], axis=1)  # H × (d+1)
        grid = np.zeros((d + 1, d + 1, 3))  # [i, j, channel], same order as _poly_terms
        pairs = [(i, j) for i in range(d + 1) for j in range(d + 1 - i)]
        for t, (i, j) in enumerate(pairs):
            grid[i, j] = self.coeffs[t]
        out = np.einsum("yj,ijc,xi->yxc", yp, grid, xp, optimize=True)  # separable: no per-pixel powers
        return np.clip(out, 0.0, 1.0).astype(np.float32)

    def mean_colour(self) -> tuple[float, float, float]:
        img = self.render(16, 16)
        return tuple(float(c) for c in img.reshape(-1, 3).mean(axis=0))  # type: ignore[return-value]


def fit_backdrop(img: np.ndarray, samples: np.ndarray, degree: int, max_samples: int = 20000) -> BackdropModel | None:
    """Robust least-squares fit of a smooth backdrop to the pixels where ``samples`` is true.

    ``img`` is H×W×3 float32 in 0..1. Trimmed refits drop outliers (a subject touching the border,
    a shadow); None when too few samples remain or the survivors are not a smooth surface.
    """
    h, w = samples.shape
    ys, xs = np.nonzero(samples)
    if len(ys) < 6 * (degree + 1) ** 2:
        return None
    if len(ys) > max_samples:
        pick = np.linspace(0, len(ys) - 1, max_samples).astype(np.int64)
        ys, xs = ys[pick], xs[pick]
    terms = _poly_terms((xs + 0.5) / w * 2 - 1, (ys + 0.5) / h * 2 - 1, degree)
    values = img[ys, xs]
    keep = np.ones(len(ys), bool)
    coeffs = np.zeros((terms.shape[1], 3), np.float32)
    sigma = 1.0
    for _ in range(4):
        if keep.sum() < 3 * terms.shape[1]:
            return None
        t64 = terms[keep].astype(np.float64)
        coeffs = np.linalg.solve(t64.T @ t64 + 1e-9 * np.eye(t64.shape[1]), t64.T @ values[keep]).astype(np.float32)
        resid = np.sqrt(((terms @ coeffs - values) ** 2).mean(axis=1))
        sigma = max(float(np.median(resid[keep])) * 1.4826, 0.002)
        keep = resid < max(3.0 * sigma, 0.015)
    inliers = float(keep.mean())
    if inliers < 0.5 or sigma > 0.015:  # paper is smooth; a textured surface is no backdrop
        return None
    return BackdropModel(coeffs=coeffs, degree=degree, noise=sigma, inliers=inliers)


# --- segmentation at working size ----------------------------------------------------------------

@dataclass
class _Segmentation:
    mask: np.ndarray  # bool, subject
    model: BackdropModel
    model_img: np.ndarray  # H×W×3 float32
    darkening: np.ndarray  # H×W float32, 1 - k where the backdrop is shadowed, else 0
    image: np.ndarray  # H×W×3 float32, the working-size image (unblurred)


LEAK_RADIUS = 2  # gaps in an outline up to about twice this (working pixels) do not let the backdrop in
OPENING_REACH = 6  # working pixels an opening grows through paper into its narrow ends (past the sharp edges)


def _channel_sum(img: np.ndarray) -> np.ndarray:
    """Sum over the three channels of an H×W×3 array (several times faster than ``sum(axis=2)``)."""
    return img[..., 0] + img[..., 1] + img[..., 2]


def _classify(blur: np.ndarray, model_img: np.ndarray, noise: float, tolerance: float,
              max_shadow: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(plain, candidate, k): matches the backdrop; backdrop or shadow; brightness ratio to the model."""
    bb = _channel_sum(model_img * model_img) + 1e-6
    k = _channel_sum(blur * model_img) / bb
    t = max(0.03, 4.0 * noise) * tolerance
    diff = np.sqrt(_channel_sum(np.square(blur - model_img)) / 3.0)
    chroma = np.sqrt(_channel_sum(np.square(blur - k[..., None] * model_img)) / 3.0)
    plain = diff < t
    shadow = (chroma < t) & (k >= 1.0 - max_shadow) & (k < 1.0)
    return plain, plain | shadow, k


def _gradient(img: np.ndarray) -> np.ndarray:
    """Largest per-channel gradient magnitude, in value per pixel."""
    gx = cv2.Sobel(img, cv2.CV_32F, 1, 0, ksize=3) / 8.0
    gy = cv2.Sobel(img, cv2.CV_32F, 0, 1, ksize=3) / 8.0
    g = gx * gx + gy * gy
    return np.sqrt(np.maximum(np.maximum(g[..., 0], g[..., 1]), g[..., 2]))


def _sharp_edges(blur: np.ndarray, noise: float, tolerance: float) -> np.ndarray:
    """Pixels on a sharp edge: strong fine-scale gradient that a coarser scale does not explain.

    A soft shadow has about the same gradient at both scales; an outline is much steeper at the
    fine one. That ratio, not the gradient's size, lets faint outlines stop the backdrop flood
    at any image size.
    """
    fine = _gradient(blur)
    coarse = _gradient(cv2.GaussianBlur(blur, (0, 0), 3.0))
    edges = (fine > max(0.01, 4.0 * noise) * tolerance) & (fine > 1.4 * coarse)
    return cv2.dilate(edges.astype(np.uint8), np.ones((3, 3), np.uint8)) > 0  # close one-pixel gaps at corners


def _below_subject_top(evidence: np.ndarray) -> np.ndarray:
    """Rows where a contact shadow may lie: the lower part of the subject's extent and below.

    ``evidence`` marks pixels that are surely subject (unlike the backdrop, or on a sharp edge).
    Shadows here are contact shadows at the base; darker neutral areas higher up are subject
    (an off-white mug darkened by its shading would otherwise pass for shadow).
    """
    h, w = evidence.shape
    rows = np.flatnonzero(evidence.sum(axis=1) >= max(2, w // 200))
    allowed = np.ones((h, w), bool)
    if len(rows) >= 4:
        y0, y1 = np.percentile(rows, [2, 98])
        allowed[: int(y0 + 0.6 * (y1 - y0))] = False
    return allowed


def _segment(small: np.ndarray, tolerance: float, max_shadow: float,
             prior: np.ndarray | Future | None = None) -> _Segmentation | None:
    """Find backdrop and subject in the working-size image; None when there is no plain backdrop.

    ``prior``: the learned subject probability at working size (or a Future of it: the backdrop fit does
    not need it, so the network may still be running), or None to rely on the backdrop alone.
    """
    h, w = small.shape[:2]
    blur = cv2.GaussianBlur(small, (0, 0), 0.8)
    band = max(2, round(0.03 * min(h, w)))
    border = np.zeros((h, w), bool)
    border[:band], border[-band:], border[:, :band], border[:, -band:] = True, True, True, True
    model = fit_backdrop(blur, border, degree=2)
    if model is None:
        return None
    # plain paper shows along most of the frame: at least three sides mostly explained by the model
    fits = np.sqrt(_channel_sum(np.square(blur - model.render(w, h))) / 3.0) < max(4.0 * model.noise, 0.02)
    sides = [fits[:band].mean(), fits[-band:].mean(), fits[:, :band].mean(), fits[:, -band:].mean()]
    if sum(side >= 0.6 for side in sides) < 3:
        return None
    sharp = _sharp_edges(blur, model.noise, tolerance)
    frame = np.zeros((h, w), bool)
    frame[0], frame[-1], frame[:, 0], frame[:, -1] = True, True, True, True

    backdrop = np.zeros((h, w), bool)
    model_img, k = model.render(w, h), np.ones((h, w), np.float32)
    pending = prior
    for refit in range(2):
        # the first pass only serves to refit the paper model: it runs while the prior is still computing
        prior = pending.result() if refit == 1 and isinstance(pending, Future) else (
            pending if refit == 1 else None)
        model_img = model.render(w, h)
        plain, candidate, k = _classify(blur, model_img, model.noise, tolerance, max_shadow)
        lift = _channel_sum(blur - model_img) / 3.0
        bright = np.zeros((h, w), bool)
        if refit == 1:
            # paper is never brighter than itself (once the model has been refitted to all of it): an area
            # brighter than the model, however close in colour, is held back from the flood and decided below
            even = cv2.GaussianBlur(lift, (0, 0), 1.0)
            bright = (candidate & (even > max(2.5 * model.noise, 0.012))).astype(np.uint8)
            bright = cv2.morphologyEx(bright, cv2.MORPH_OPEN, np.ones((3, 3), np.uint8))  # no specks
            bright = cv2.morphologyEx(bright, cv2.MORPH_CLOSE, np.ones((3, 3), np.uint8)) > 0  # no pinholes
        barrier = sharp | bright
        if prior is not None:
            # an 'edge' in shadow or paper where the prior is sure there is no subject is noise on a steep
            # contact shadow, not an outline: it does not stop the flood (no slab of shadow under the feet)
            barrier = (sharp & ~(candidate & (prior < 0.05))) | bright
        candidate &= plain | _below_subject_top(~candidate | barrier)
        if prior is not None:  # a darker neutral area the prior is sure is subject is no shadow (grey folds)
            candidate &= plain | (prior < 0.5)
        free = (candidate & ~barrier).astype(np.uint8)
        # flood on the eroded free space so that a gap of a few pixels in an outline does not leak
        core = cv2.erode(free, _disk(LEAK_RADIUS)) if LEAK_RADIUS else free
        n, labels, stats, _ = cv2.connectedComponentsWithStats(core, connectivity=4)  # thin edges block
        outside = np.zeros(n, bool)
        outside[np.unique(labels[frame & (core > 0)])] = True
        # enclosed regions showing plain backdrop (a mug handle's inside) are holes, not subject
        plain_frac = np.bincount(labels.ravel(), weights=plain.ravel(), minlength=n) / np.maximum(stats[:, 4], 1)
        min_hole = max(12, int(0.0015 * h * w))
        outside |= (stats[:, 4] >= min_hole) & (plain_frac > 0.9)
        outside[0] = False
        backdrop = outside[labels] & (core > 0)
        if LEAK_RADIUS:
            backdrop = (cv2.dilate(backdrop.astype(np.uint8), _disk(LEAK_RADIUS)) > 0) & (free > 0)
        product = np.zeros((h, w), bool)
        if bright.any():
            paper = _bright_paper(bright, backdrop, ~candidate | sharp, prior)
            backdrop |= paper
            product = bright & ~paper
        if prior is not None:
            holes = _openings(free > 0, backdrop, plain, prior, lift, model.noise, product)
            # an opening runs on into its narrow ends, where the sharp edges on both sides meet
            reach = (plain & ~product).astype(np.uint8)
            for _ in range(OPENING_REACH):
                holes = (cv2.dilate(holes.astype(np.uint8), _disk(1)) & reach) > 0
            backdrop |= holes
        # edge pixels on the barrier that still look like backdrop or shadow join the backdrop
        for _ in range(2):
            backdrop |= cv2.dilate(backdrop.astype(np.uint8), _disk(1)).astype(bool) & candidate & ~product
        if refit == 0:
            better = fit_backdrop(blur, backdrop & plain & (k > 1.0 - 2 * model.noise), degree=3)
            if better is not None:
                model = BackdropModel(better.coeffs, better.degree, model.noise, better.inliers)

    subject = ~backdrop
    subject = cv2.morphologyEx(subject.astype(np.uint8), cv2.MORPH_OPEN, _disk(1))
    n, labels, stats, _ = cv2.connectedComponentsWithStats(subject, connectivity=8)
    if n <= 1:
        return _Segmentation(np.zeros((h, w), bool), model, model_img, np.zeros((h, w), np.float32), small)
    areas = stats[1:, 4]
    keep = np.zeros(n, bool)
    keep[1:] = (areas >= 0.1 * areas.max()) & (areas >= max(16, 0.0005 * h * w))
    if prior is not None:  # small separate parts the prior calls subject (a seal beside a signature)
        p_mean = np.bincount(labels.ravel(), weights=prior.ravel(), minlength=n)[1:] / np.maximum(areas, 1)
        keep[1:] |= (p_mean > 0.5) & (areas >= 16)
    # smaller pieces right next to the kept ones are parts of the subject cut off by a misread edge
    near = cv2.dilate(keep[labels].astype(np.uint8), _disk(max(2, round(0.01 * max(h, w))))) > 0
    touching = np.unique(labels[near])
    keep[touching[(touching > 0) & (stats[touching, 4] >= 16)]] = True
    mask = keep[labels]
    darkening = np.where(~mask & (k < 1.0), np.clip(1.0 - k, 0.0, 1.0), 0.0).astype(np.float32)
    return _Segmentation(mask, model, model_img, darkening, small)


def _bright_paper(bright: np.ndarray, backdrop: np.ndarray, evidence: np.ndarray,
                  prior: np.ndarray | None) -> np.ndarray:
    """Which areas brighter than the paper model are paper after all (a hot spot the model misses).

    An area is product (a near-white label, a white sole) when the prior calls it subject, or when much of
    its border lies against pixels that are surely subject (a label between the dark parts of a bottle);
    otherwise, mostly surrounded by paper, it is paper, except for its pixels the prior calls subject
    (white trousers whose bright area runs on into a brighter patch of paper).
    """
    n, labels, stats, _ = cv2.connectedComponentsWithStats(bright.astype(np.uint8), connectivity=8)
    flat = labels.ravel()
    ring = np.ones((3, 3), np.uint8)
    border = (bright & (cv2.erode(bright.astype(np.uint8), ring) == 0)).ravel()  # inner border pixels
    against_subject = (cv2.dilate(evidence.astype(np.uint8), ring) > 0).ravel() & border
    against_paper = (cv2.dilate(backdrop.astype(np.uint8), ring) > 0).ravel() & border
    subject_side = np.bincount(flat[against_subject], minlength=n)
    paper_side = np.bincount(flat[against_paper], minlength=n)
    product = subject_side > 0.35 * np.maximum(subject_side + paper_side, 1)
    if prior is not None:
        product |= np.bincount(flat, weights=prior.ravel(), minlength=n) / np.maximum(stats[:, 4], 1) > 0.5
    paper = ~product
    paper[0] = False
    if prior is None:
        return paper[labels]
    return paper[labels] & (prior <= 0.5)  # where the prior calls it subject, a bright area is never paper


def _openings(free: np.ndarray, backdrop: np.ndarray, plain: np.ndarray, prior: np.ndarray, lift: np.ndarray,
              noise: float, product: np.ndarray) -> np.ndarray:
    """Backdrop seen through openings of the subject (between a lamp's arms, inside a frame, in hair).

    Each region of backdrop-like pixels that the flood from the border did not reach is backdrop when the
    prior does not call it subject and most of it matches the paper, however small it is; or, whatever
    the prior says (at 320 px it fills small gaps), when it is the paper itself: all of it matches, with
    the paper's mean brightness and evenness (a near-white product area is lit and shaded differently).
    A region that touches a near-white ``product`` area is taken to be part of it.
    """
    rest = (free & ~backdrop).astype(np.uint8)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(rest, connectivity=4)
    if n <= 1:
        return np.zeros_like(free)
    flat = labels.ravel()
    area = np.maximum(stats[:, 4], 1)
    p_mean = np.bincount(flat, weights=prior.ravel(), minlength=n) / area
    plain_frac = np.bincount(flat, weights=plain.ravel(), minlength=n) / area
    lift_mean = np.bincount(flat, weights=lift.ravel(), minlength=n) / area
    lift_var = np.bincount(flat, weights=(lift * lift).ravel(), minlength=n) / area - lift_mean**2
    fine = np.abs(lift - cv2.GaussianBlur(lift, (0, 0), 2.0))  # texture, whatever the shading
    texture = np.bincount(flat, weights=fine.ravel(), minlength=n) / area
    # seen as background by the prior, and looking like paper: no brighter than it and no texture of its own
    # (white fleece, a white print: U²-Netp also misses those)
    like_paper = (texture < 2.0 * noise + 0.003) & (lift_mean < max(2.0 * noise, 0.008))
    # the paper's brightness, and as even as the paper: shading or texture is product
    paper = ((plain_frac > 0.95) & (np.abs(lift_mean) < 1.5 * noise + 0.004)
             & (np.sqrt(np.maximum(lift_var, 0.0)) < 2.0 * noise + 0.002))
    # a sliver along a near-white product area (between a label and the dark glass) is part of it
    beside_product = np.bincount(flat, weights=(cv2.dilate(product.astype(np.uint8), _disk(1)) > 0).ravel(),
                                 minlength=n) > 0
    hole = (plain_frac > 0.5) & (stats[:, 4] >= 4) & (((p_mean < 0.5) & like_paper) | paper) & ~beside_product
    hole[0] = False
    return hole[labels]


@dataclass
class Cutout:
    """Result of ``cut_out``: RGBA pixels (input dtype), the subject matte (uint8) and what was found."""

    pixels: np.ndarray
    matte: np.ndarray
    notes: dict[str, Any]


def _hex(colour: tuple[float, ...]) -> str:
    return "#" + "".join(f"{int(round(min(max(c, 0.0), 1.0) * 255)):02x}" for c in colour[:3])


def cut_out(pixels: np.ndarray, *, work_size: int = 1024, tolerance: float = 1.0, max_shadow: float = 0.6,
            keep_shadow: bool = False, decontaminate: bool = True,
            prior: Callable[[np.ndarray], np.ndarray] | None = None) -> Cutout | None:
    """Cut the subject out of a plain backdrop; None when no plain backdrop can be found.

    ``pixels``: H×W×3 (or ×4, alpha ignored) uint8/uint16. Output is RGBA of the same size and dtype.
    ``prior``: maps the working-size image to the learned subject probability (same size), or None.
    """
    H, W = pixels.shape[:2]
    top = max_value(pixels)
    small = working_image(pixels, work_size)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="assetd-prior") as pool:
        pending = pool.submit(prior, small) if prior is not None else None  # runs while the backdrop is fitted
        seg = _segment(small, tolerance, max_shadow, pending)
        subject_prior = pending.result() if pending is not None else None
    if seg is None:
        return None
    h, w = seg.mask.shape
    scale = (w / W, h / H)
    mask8 = seg.mask.astype(np.uint8)
    edge = refine_edge(pixels, seg.mask, seg.image, seg.model_img, decontaminate)
    out = edge.pixels
    rgb_out, out_alpha = out[..., :3], out[..., 3]

    shadow_alpha: np.ndarray | None = None
    if keep_shadow:
        t = max(0.02, 4.0 * seg.model.noise)
        # contact shadows hug the base: kept at full strength next to the subject, fading out smoothly with
        # the distance from it (a hard cut-off would draw a disc under every leg)
        reach = max(6.0, 0.08 * max(h, w))
        distance = cv2.distanceTransform((1 - mask8).astype(np.uint8), cv2.DIST_L2, 5)
        fade = np.clip(1.0 - distance / reach, 0.0, 1.0) ** 2
        dark = np.where(~seg.mask, np.clip((seg.darkening - t) / (1.0 - t), 0.0, 1.0) * fade, 0.0)
        dark = cv2.GaussianBlur(dark.astype(np.float32), (0, 0), 0.7)
        shadow_alpha = dark if float(dark.max()) * top >= 1.0 else None

    matte = matte_from_alpha(out_alpha)

    shadow_note: dict[str, Any] | None = None
    if shadow_alpha is not None:
        # only the shadow's bounding box is touched at full size
        sy, sx = np.nonzero(shadow_alpha > 0)
        X0, X1 = max(0, int(sx.min() / scale[0]) - 2), min(W, int((sx.max() + 1) / scale[0]) + 2)
        Y0, Y1 = max(0, int(sy.min() / scale[1]) - 2), min(H, int((sy.max() + 1) / scale[1]) + 2)
        mx = ((np.arange(X0, X1, dtype=np.float32) + 0.5) * scale[0] - 0.5)[None, :].repeat(Y1 - Y0, 0)
        my = ((np.arange(Y0, Y1, dtype=np.float32) + 0.5) * scale[1] - 0.5)[:, None].repeat(X1 - X0, 1)
        s_q = np.rint(cv2.remap(shadow_alpha, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE) * top)
        del mx, my
        a_win, rgb_win = out_alpha[Y0:Y1, X0:X1], rgb_out[Y0:Y1, X0:X1]
        where = (s_q > 0) & (a_win < top)
        sa = s_q[where].astype(np.float32) / top
        fa = a_win[where].astype(np.float32) / top
        combined = fa + (1.0 - fa) * sa
        keep_rgb = rgb_win[where].astype(np.float32) * (fa / np.maximum(combined, 1e-6))[:, None]
        rgb_win[where] = np.clip(np.rint(keep_rgb), 0, top).astype(pixels.dtype)
        a_win[where] = np.clip(np.rint(combined * top), 0, top - 1).astype(pixels.dtype)
        shadow_note = {"pixels": int(where.sum()), "max_alpha": round(float(sa.max()) if sa.size else 0.0, 3)}

    notes = {
        "backend": "studio",
        "backdrop": {"colour": _hex(seg.model.mean_colour()), "model": f"polynomial degree {seg.model.degree}",
                     "noise": round(seg.model.noise, 4), "inliers": round(seg.model.inliers, 3)},
        "work_size": [w, h],
        "edge_pixels": int(len(edge.ys)),
        "decontaminated": edge.decontaminated,
        "shadow": shadow_note if keep_shadow else "removed",
    }
    if subject_prior is not None:
        notes["uncertain_outline"] = round(outline_disagreement(seg.mask, subject_prior), 4)
    return Cutout(pixels=out, matte=matte, notes=notes)


def outline_disagreement(mask: np.ndarray, prior: np.ndarray) -> float:
    """Share of the subject's outline (0..1) where the prior puts the outline elsewhere.

    An outline pixel disagrees when the prior's own outline (its 0.5 level) is more than 1 % of the image's
    long edge away (3 working pixels at least): the two ways of finding the subject tell different stories
    there, and one of them is wrong. Outline pixels on the image frame (a subject cut by the frame) are not
    counted.
    """
    h, w = mask.shape
    m8 = mask.astype(np.uint8)
    outline = (m8 - cv2.erode(m8, np.ones((3, 3), np.uint8))) > 0
    if not outline.any():
        return 0.0
    p8 = (prior > 0.5).astype(np.uint8)
    prior_outline = (p8 - cv2.erode(p8, np.ones((3, 3), np.uint8))) > 0
    if not prior_outline.any():
        return 1.0
    dist = cv2.distanceTransform((~prior_outline).astype(np.uint8), cv2.DIST_L2, 3)
    return float((dist[outline] > max(3.0, 0.01 * max(h, w))).mean())


# --- helpers other stages use --------------------------------------------------------------------

def estimate_subject_matte(pixels: np.ndarray) -> np.ndarray | None:
    """A cheap subject mask (uint8 H×W, full size) of an uncut studio photo, or None without a plain backdrop.

    Segmentation only (no edge refinement): good for framing crops, not for compositing.
    """
    H, W = pixels.shape[:2]
    small = working_image(pixels, 512)
    seg = _segment(small, 1.0, 0.6)
    if seg is None or not seg.mask.any():
        return None
    soft = cv2.GaussianBlur(seg.mask.astype(np.float32), (0, 0), 0.7)
    return np.clip(np.rint(cv2.resize(soft, (W, H), interpolation=cv2.INTER_LINEAR) * 255), 0, 255).astype(np.uint8)


# --- the stage -----------------------------------------------------------------------------------

@register
class StudioBackground(Stage):
    """Cut the subject out of a plain studio backdrop (white, grey, coloured paper, sweeps, vignettes)."""

    step = "remove_background"
    backend = "studio"

    @dataclass
    class Options:
        keep_shadow: bool = opt(False, doc="keep the contact shadow as semi-transparent black under the subject")
        trim: bool = opt(False, doc="crop the cut-out to the subject (and kept shadow) plus trim_margin")
        trim_margin: int = opt(0, min=0, max=10000, doc="pixels kept around the subject when trim is on")
        decontaminate: bool = opt(True, doc="remove backdrop colour spill from semi-transparent edge pixels")
        tolerance: float = opt(1.0, min=0.25, max=4.0,
                               doc="how far from the backdrop colour a pixel may be and still count as backdrop "
                                   "(x the measured noise; raise for uneven paper, lower for subjects close to it)")
        max_shadow: float = opt(0.6, min=0.0, max=0.95,
                                doc="darkest shadow treated as backdrop (0.6: down to 40% of the paper's "
                                    "brightness); darker neutral areas count as subject")
        work_size: int = opt(1024, min=256, max=4096,
                             doc="long edge at which the subject is found; edges are refined at full size")
        review_above: float = opt(0.2, min=0.0, max=1.0,
                                  doc="mark the job for review when the prior and the backdrop model disagree on "
                                      "more than this share of the subject's outline (1: never)")
        prior: str = opt("auto", choices=("auto", "on", "off"),
                         doc="learned subject prior (U²-Netp, `assetd models pull`): auto uses it when it is in "
                             "the model cache; \"on\" requires it; \"off\" never loads it (quote on and off in YAML)")

    _warned = False  # said once per worker that the prior is missing

    @classmethod
    def model_ref(cls, options: Any, config: Any) -> Any:
        """The subject prior, unless ``prior: off``; optional with ``auto`` (the step runs without it)."""
        return None if options.prior == "off" else PriorModel.ref(config, optional=options.prior != "on")

    def prepare(self) -> None:
        self._prior()

    def _prior(self) -> Any:
        """The worker's subject prior (loaded once), or None: ``prior: off``, or ``auto`` without the file."""
        if self.options.prior == "off":
            return None
        try:
            return load_prior(manager_for(self.ctx))
        except PriorMissingError as exc:
            if self.options.prior == "on":
                raise
            if not self._warned:
                self._warned = True
                self.ctx.log.warning("remove_background studio runs without its subject prior: %s", exc)
            return None

    def run(self, asset: Asset) -> list[Asset]:
        px = asset.pixels
        top = max_value(px)
        notes: dict[str, Any]
        review: list[str] = []
        if asset.has_alpha and int(px[..., 3].min()) < top:
            out = px
            matte = matte_from_alpha(px[..., 3])
            notes = {"backend": "studio", "kept_input_alpha": True}
        else:
            o = self.options
            prior = self._prior()
            with gpu_errors("remove_background studio, subject prior"):
                cut = cut_out(px, work_size=o.work_size, tolerance=o.tolerance, max_shadow=o.max_shadow,
                              keep_shadow=o.keep_shadow, decontaminate=o.decontaminate,
                              prior=prior.predict if prior is not None else None)
            if cut is None:
                raise PermanentError("no plain studio backdrop found along the image border; "
                                     "use remove_background backend rembg for shots on other backgrounds")
            if not cut.matte.any():
                raise PermanentError("no subject found: the image looks like empty backdrop")
            out, matte, notes = cut.pixels, cut.matte, cut.notes
            notes["prior"] = PRIOR_NAME if prior is not None else (
                "off" if o.prior == "off" else "not in the model cache (assetd models pull)")
            uncertain = notes.get("uncertain_outline")
            if uncertain is not None and uncertain > o.review_above:
                review.append(f"remove_background: the subject prior and the backdrop model disagree on "
                              f"{uncertain:.0%} of the outline (review_above {o.review_above:.0%})")
        notes["cut_edges"] = cut_edges(matte)  # before a trim: the photo's own frame
        if self.options.trim:
            out, matte, box = trimmed(out, matte, out[..., 3], self.options.trim_margin)
            if box is not None:
                notes["trim"] = box
        result = asset.derive(out, matte)
        result.notes["remove_background"] = notes
        result.review.extend(review)
        return [result]
