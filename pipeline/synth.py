"""Deterministic synthetic studio shots with known ground-truth alpha, and scene backgrounds.

Used by the tests, the demo workspace and the matting benchmark: a product shot on seamless paper
(white, grey, coloured, a light-to-dark sweep or a vignetted backdrop), a subject drawn from signed
distance functions (so edges are anti-aliased analytically), a soft contact shadow and sensor noise.
The composite is physical: ``rgb = alpha * fg + (1 - alpha) * backdrop_with_shadow``, then noise.

Pure arrays only: nothing here reads or writes files.
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass

import cv2
import numpy as np

BACKDROPS = ("white", "grey", "coloured", "gradient", "vignette")
# backdrops for real subjects composited onto paper (``composite_shot``): the sweeps studios shoot on
SWEEPS = ("white", "grey", "pastel", "gradient")
SUBJECTS = ("bottle", "box", "mug", "shoe")
SCENES = ("marble", "wood")

# Subject base colours (linear-ish sRGB in 0..1). Light grey and off-white are the hard cases on white.
_PALETTE = (
    (0.72, 0.10, 0.09),  # red
    (0.12, 0.18, 0.45),  # navy
    (0.16, 0.48, 0.26),  # green
    (0.55, 0.34, 0.10),  # amber
    (0.07, 0.07, 0.08),  # black
    (0.80, 0.80, 0.81),  # light grey
    (0.90, 0.89, 0.86),  # off-white
    (0.88, 0.72, 0.14),  # yellow
    (0.10, 0.45, 0.50),  # teal
)


@dataclass(frozen=True)
class Shot:
    """One synthetic studio shot.

    rgb:      H×W×3 uint8, what the camera saw.
    alpha:    H×W float32 in [0, 1], coverage of the subject only (the shadow is not subject).
    shadow:   H×W float32 in [0, 1), how much the contact shadow darkens the backdrop (0: none).
    backdrop: backdrop kind; subject: subject kind.
    subject_colour / backdrop_colour: the main colours (0..1), for colour-spill checks.
    foreground: H×W×3 float32, the subject's true colour (0..1) wherever alpha > 0, for unmixing checks.
    """

    rgb: np.ndarray
    alpha: np.ndarray
    shadow: np.ndarray
    backdrop: str
    subject: str
    subject_colour: tuple[float, float, float]
    backdrop_colour: tuple[float, float, float]
    foreground: np.ndarray | None = None


def _rng(seed: int, *names: str) -> np.random.Generator:
    """A generator that depends on the seed and the names, stable across runs and platforms."""
    return np.random.default_rng([seed & 0xFFFFFFFF, *(zlib.crc32(n.encode()) for n in names)])


def _grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    return xs + 0.5, ys + 0.5


def _fbm(h: int, w: int, rng: np.random.Generator, base: int = 4, octaves: int = 4) -> np.ndarray:
    """Smooth fractal value noise in about [-1, 1] (sum of upscaled random grids)."""
    out = np.zeros((h, w), np.float32)
    amp, total = 1.0, 0.0
    for i in range(octaves):
        cells = base * 2**i
        gh, gw = max(2, round(cells * h / max(h, w))) + 1, max(2, round(cells * w / max(h, w))) + 1
        grid = rng.uniform(-1, 1, (gh, gw)).astype(np.float32)
        out += amp * cv2.resize(grid, (w, h), interpolation=cv2.INTER_CUBIC)
        total += amp
        amp *= 0.5
    return out / total


# --- signed distance functions (pixels; negative inside) ---------------------------------------

def _sd_box(xs: np.ndarray, ys: np.ndarray, cx: float, cy: float, hw: float, hh: float, r: float = 0.0) -> np.ndarray:
    qx = np.abs(xs - cx) - (hw - r)
    qy = np.abs(ys - cy) - (hh - r)
    outside = np.hypot(np.maximum(qx, 0), np.maximum(qy, 0))
    return outside + np.minimum(np.maximum(qx, qy), 0) - r


def _sd_ellipse(xs: np.ndarray, ys: np.ndarray, cx: float, cy: float, rx: float, ry: float) -> np.ndarray:
    # Scaled-circle approximation: exact on the axes, good enough within a pixel of the outline.
    k = np.hypot((xs - cx) / rx, (ys - cy) / ry)
    grad = np.hypot((xs - cx) / rx**2, (ys - cy) / ry**2) / np.maximum(k, 1e-6)
    return (k - 1.0) / np.maximum(grad, 1e-6)


def _sd_polygon(xs: np.ndarray, ys: np.ndarray, pts: list[tuple[float, float]]) -> np.ndarray:
    """Convex polygon, either winding (distance to the nearest edge line: exact except past corners)."""
    mx, my = sum(p[0] for p in pts) / len(pts), sum(p[1] for p in pts) / len(pts)
    d = np.full(xs.shape, -np.inf, np.float32)
    for i in range(len(pts)):
        (x0, y0), (x1, y1) = pts[i - 1], pts[i]
        nx, ny = (y1 - y0), -(x1 - x0)
        n = np.hypot(nx, ny)
        sign = -1.0 if (mx - x0) * nx + (my - y0) * ny > 0 else 1.0  # normals point away from the centre
        d = np.maximum(d, sign * ((xs - x0) * nx + (ys - y0) * ny) / n)
    return d


def _coverage(sd: np.ndarray) -> np.ndarray:
    """Analytic anti-aliasing: a one-pixel ramp across the outline."""
    return np.clip(0.5 - sd, 0.0, 1.0).astype(np.float32)


# --- subjects ---------------------------------------------------------------------------------

def _subject(kind: str, xs: np.ndarray, ys: np.ndarray, cx: float, base: float, h: float,
             colour: np.ndarray, rng: np.random.Generator, midsole: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """(alpha, foreground rgb, half width) of one subject standing on ``base``."""
    H, W = xs.shape
    fg = np.empty((H, W, 3), np.float32)
    fg[:] = colour
    tex = 1.0 + 0.05 * _fbm(H, W, rng, base=12, octaves=3)
    label = np.clip(1.0 - colour * 0.9 + rng.uniform(-0.1, 0.1, 3), 0.05, 0.95).astype(np.float32)

    if kind == "bottle":
        hw = 0.18 * h
        body = _sd_box(xs, ys, cx, base - 0.31 * h, hw, 0.31 * h, r=0.07 * h)
        neck = _sd_box(xs, ys, cx, base - 0.78 * h, 0.065 * h, 0.16 * h, r=0.02 * h)
        cap = _sd_box(xs, ys, cx, base - 0.95 * h, 0.08 * h, 0.05 * h, r=0.01 * h)
        alpha = _coverage(np.minimum(np.minimum(body, neck), cap))
        u = np.clip((xs - cx) / hw, -1, 1)
        shade = 0.62 + 0.45 * np.sqrt(1 - u * u)  # cylinder
        in_label = (np.abs(ys - (base - 0.3 * h)) < 0.13 * h)[..., None]
        fg = np.where(in_label, label, fg)
        text = (np.abs(ys - (base - 0.3 * h)) < 0.02 * h) & (np.abs(xs - cx) < 0.1 * h)
        fg[text] *= 0.3
        fg[cap < 0] = colour * 0.4 + 0.1
        fg *= (shade * tex)[..., None]
    elif kind == "box":
        hw = 0.42 * h
        d = 0.16 * h  # depth offset of the top/side faces
        x0, x1, y1, y0 = cx - hw, cx + hw - d, base, base - h + d
        front = _sd_polygon(xs, ys, [(x0, y0), (x1, y0), (x1, y1), (x0, y1)])
        top = _sd_polygon(xs, ys, [(x0, y0), (x0 + d, y0 - d), (x1 + d, y0 - d), (x1, y0)])
        side = _sd_polygon(xs, ys, [(x1, y0), (x1 + d, y0 - d), (x1 + d, y1 - d), (x1, y1)])
        alpha = _coverage(np.minimum(np.minimum(front, top), side))
        fg[top < 0] = np.clip(colour * 1.1 + 0.03, 0, 1)
        fg[side < 0] = colour * 0.72
        logo = _sd_box(xs, ys, (x0 + x1) / 2, (y0 + y1) / 2, 0.18 * h, 0.1 * h, r=0.03 * h) < 0
        fg[logo] = label
        fg *= tex[..., None]
    elif kind == "mug":
        hw = 0.34 * h
        body = _sd_box(xs, ys, cx, base - 0.4 * h, hw, 0.4 * h, r=0.04 * h)
        ring = np.abs(np.hypot(xs - (cx + hw), ys - (base - 0.42 * h)) - 0.2 * h) - 0.055 * h
        alpha = _coverage(np.minimum(body, np.where(xs > cx, ring, np.inf)))
        u = np.clip((xs - cx) / hw, -1, 1)
        shade = np.where(body < 0, 0.65 + 0.4 * np.sqrt(1 - u * u), 0.85)
        band = (np.abs(ys - (base - 0.5 * h)) < 0.06 * h) & (body < 0)
        fg[band] = label
        fg *= (shade * tex)[..., None]
        hw = hw + 0.3 * h
    elif kind == "shoe":
        hw = 1.0 * h
        sole = _sd_box(xs, ys, cx, base - 0.07 * h, hw, 0.07 * h, r=0.05 * h)
        upper = _sd_ellipse(xs, ys, cx + 0.15 * h, base - 0.2 * h, 0.85 * h, 0.3 * h)
        heel = _sd_ellipse(xs, ys, cx - 0.55 * h, base - 0.45 * h, 0.42 * h, 0.5 * h)
        ankle = _sd_ellipse(xs, ys, cx - 0.3 * h, base - 0.6 * h, 0.45 * h, 0.35 * h)
        upper_sd = np.minimum(np.minimum(upper, heel), ankle)
        alpha = _coverage(np.minimum(sole, np.maximum(upper_sd, ys - base)))
        fg[sole < 0] = midsole
        fg[(sole < 0) & (ys > base - 0.045 * h)] = (0.45, 0.3, 0.18)  # gum outsole
        collar = _sd_ellipse(xs, ys, cx - 0.45 * h, base - 0.95 * h, 0.3 * h, 0.08 * h) < 0
        fg[collar] = colour * 0.25
        laces = (np.abs(((xs - cx) / (0.09 * h)) % 1.0 - 0.5) < 0.12) & (np.abs(ys - (base - 0.45 * h)) < 0.07 * h) \
            & (np.abs(xs - (cx + 0.1 * h)) < 0.35 * h)
        fg[laces] = label
        fg *= (tex * (1.0 - 0.15 * np.clip((ys - (base - h)) / h, 0, 1)))[..., None]
    else:
        raise ValueError(f"unknown subject {kind!r} (known: {', '.join(SUBJECTS)})")
    return alpha, np.clip(fg, 0.0, 1.0), hw


def _backdrop(kind: str, xs: np.ndarray, ys: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    H, W = xs.shape
    u, v = xs / W, ys / H  # 0..1
    if kind == "white":
        colour = np.array([0.95, 0.95, 0.94]) + rng.uniform(-0.02, 0.02, 3)
        light = 1.0 - 0.04 * (u - 0.4) ** 2 - 0.03 * v
    elif kind == "grey":
        colour = np.full(3, rng.uniform(0.5, 0.68)) + rng.uniform(-0.015, 0.015, 3)
        light = 1.0 - 0.06 * (u - 0.5) ** 2 - 0.05 * v
    elif kind == "coloured":
        hue = rng.uniform(0, 180)
        hsv = np.uint8([[[hue, rng.uniform(150, 200), rng.uniform(170, 215)]]])
        colour = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0, 0] / 255.0
        light = 1.0 - 0.05 * (u - 0.5) ** 2 - 0.06 * v
    elif kind == "pastel":
        hsv = np.uint8([[[rng.uniform(0, 180), rng.uniform(25, 70), rng.uniform(215, 240)]]])
        colour = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0, 0] / 255.0
        light = 1.0 - 0.05 * (u - 0.5) ** 2 - 0.05 * v
    elif kind == "gradient":
        colour = np.full(3, rng.uniform(0.9, 0.96)) * (1 + rng.uniform(-0.03, 0.03, 3))
        light = 1.0 - rng.uniform(0.25, 0.35) * np.clip(v - 0.1, 0, None) ** 1.3 - 0.03 * (u - 0.5) ** 2
    elif kind == "vignette":
        colour = np.full(3, rng.uniform(0.78, 0.9)) * (1 + rng.uniform(-0.04, 0.04, 3))
        r2 = ((u - 0.5) / 0.7) ** 2 + ((v - 0.45) / 0.7) ** 2
        light = 1.0 - rng.uniform(0.25, 0.4) * r2
    else:
        raise ValueError(f"unknown backdrop {kind!r} (known: {', '.join(BACKDROPS + SWEEPS)})")
    return (np.clip(colour, 0, 1).astype(np.float32) * light[..., None].astype(np.float32)).astype(np.float32)


def _contact_shadow(xs: np.ndarray, ys: np.ndarray, cx: float, base: float, half_width: float, h: float,
                    rng: np.random.Generator) -> np.ndarray:
    """How much a soft elliptical contact shadow under a subject standing on ``base`` darkens the paper."""
    depth = rng.uniform(0.35, 0.55)
    ell = (((xs - cx) / half_width) ** 2 + ((ys - base) / (0.05 * h)) ** 2) <= 1.0
    dark = cv2.GaussianBlur(ell.astype(np.float32), (0, 0), max(1.0, 0.045 * h)) * depth
    return np.clip(dark, 0.0, 0.95).astype(np.float32)


def _expose(alpha: np.ndarray, fg: np.ndarray, backdrop: np.ndarray, rng: np.random.Generator | None) -> np.ndarray:
    """The physical composite ``alpha * fg + (1 - alpha) * backdrop``, with sensor noise when ``rng`` is given."""
    a = alpha[..., None]
    img = a * fg + (1.0 - a) * backdrop
    if rng is not None:
        sd = (0.8 + 1.6 * img) / 255.0
        img = img + rng.standard_normal(img.shape).astype(np.float32) * sd
    return np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8)


def jpeg_round_trip(rgb: np.ndarray, quality: int) -> np.ndarray:
    """The shot as a camera JPEG would deliver it (4:2:0 chroma, blocking, ringing)."""
    ok, data = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    return cv2.cvtColor(cv2.imdecode(data, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def studio_shot(backdrop: str, size: tuple[int, int] = (640, 480), seed: int = 0, subject: str | None = None,
                shadow: bool = True, noise: bool = True) -> Shot:
    """A product on seamless paper. ``size`` is (width, height); the same arguments give the same shot."""
    if backdrop not in BACKDROPS:
        raise ValueError(f"unknown backdrop {backdrop!r} (known: {', '.join(BACKDROPS)})")
    rng = _rng(seed, backdrop, subject or "")
    if subject is None:
        subject = SUBJECTS[int(rng.integers(len(SUBJECTS)))]
    W, H = size
    xs, ys = _grid(H, W)
    bg = _backdrop(backdrop, xs, ys, rng)

    h = H * rng.uniform(0.42, 0.6)
    if subject == "shoe":
        h = min(h, 0.36 * W)
    cx = W * (0.5 + rng.uniform(-0.06, 0.06))
    base = H * rng.uniform(0.8, 0.88)
    # the subject's colour must differ from the paper behind every part of it (a sweep changes with height);
    # light grey on white stays in: that is the hard case a studio really shoots
    behind = bg[max(0, int(base - h)):int(base), int(cx)]
    colours = [np.array(c, np.float32) for c in _PALETTE
               if np.linalg.norm(behind - np.array(c, np.float32), axis=1).min() > 0.2]
    colour = colours[int(rng.integers(len(colours)))]
    soles = [np.array(c, np.float32) for c in ((0.8, 0.79, 0.77), (0.93, 0.92, 0.9), (0.16, 0.15, 0.15))]
    midsole = max(soles, key=lambda c: float(np.linalg.norm(behind[-1] - c)) + (0.3 if c.mean() > 0.5 > colour.mean() else 0))
    alpha, fg, hw = _subject(subject, xs, ys, cx, base, h, colour, rng, midsole)

    dark = _contact_shadow(xs, ys, cx + 0.08 * hw, base, 1.15 * hw, h, rng) if shadow else np.zeros((H, W), np.float32)
    rgb = _expose(alpha, fg, bg * (1.0 - dark)[..., None], rng if noise else None)
    bgc = tuple(float(c) for c in bg[H // 2, W // 2])
    return Shot(rgb=rgb, alpha=alpha, shadow=dark, backdrop=backdrop, subject=subject,
                subject_colour=tuple(float(c) for c in colour), backdrop_colour=bgc,  # type: ignore[arg-type]
                foreground=fg)


def scene_image(size: tuple[int, int] = (1200, 800), seed: int = 0, kind: str = "marble") -> np.ndarray:
    """A plausible scene for place_in_scene demos: a table top under a softly lit wall (H×W×3 uint8)."""
    if kind not in SCENES:
        raise ValueError(f"unknown scene {kind!r} (known: {', '.join(SCENES)})")
    W, H = size
    rng = _rng(seed, "scene", kind)
    xs, ys = _grid(H, W)
    u, v = xs / W, ys / H
    horizon = rng.uniform(0.5, 0.6)
    # wall: warm, lit from upper left, falling off to the right and down
    wall_colour = np.array([0.86, 0.83, 0.78], np.float32) * (1 + rng.uniform(-0.04, 0.04, 3)).astype(np.float32)
    wall_light = 1.0 - 0.25 * np.hypot(u - 0.25, v - 0.1) + 0.02 * _fbm(H, W, rng, base=3, octaves=3)
    wall = wall_colour * wall_light[..., None]
    # table: perspective depth t in (0, 1]: 0 at the horizon, 1 at the bottom edge
    t = np.clip((v - horizon) / (1 - horizon), 1e-3, 1)
    depth = 1.0 / np.maximum(t, 0.12)  # farther: larger (capped: no aliasing at the horizon)
    tx = (u - 0.5) * depth
    if kind == "marble":
        turb = _fbm(H, W, rng, base=6, octaves=5)
        veins = np.abs(np.sin(6.0 * tx + 3.0 * depth * 0.4 + 4.0 * turb))
        vein = np.exp(-veins * 5.0) * np.sqrt(t)
        base = np.array([0.93, 0.92, 0.9], np.float32)
        table = base * (1.0 - 0.35 * vein - 0.04 * turb)[..., None]
        table *= (0.85 + 0.15 * t)[..., None]
    else:
        grain = _fbm(H, W, rng, base=8, octaves=4)
        plank = np.floor(tx * 4.0)
        rings = np.sin(40.0 * depth * 0.2 + 25.0 * grain + plank * 1.7)
        wood = np.array([0.55, 0.36, 0.2], np.float32)
        table = wood * (0.85 + np.sqrt(t) * (0.1 * rings + 0.1 * grain))[..., None]
        seam = np.abs((tx * 4.0) - np.rint(tx * 4.0)) < 0.01 * depth
        table[seam] *= 0.6
        table *= (0.8 + 0.2 * t)[..., None]
    edge = np.clip((v - horizon) * H / 2.0, 0, 1)[..., None]  # a two-pixel soft table edge
    img = wall * (1 - edge) + table * edge
    # the table's front edge catches a soft shadow from the wall light
    img *= (1.0 - 0.12 * np.exp(-np.abs(v - horizon) * H / (0.02 * H)))[..., None]
    return np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8)


def composite_shot(photo: np.ndarray, mask: np.ndarray, backdrop: str, size: tuple[int, int] = (2000, 1500),
                   seed: int = 0, name: str = "", jpeg: int | None = 90) -> Shot:
    """A real subject (a photo and its mask) placed on seamless paper, with exact ground truth.

    The mask is hardened (opaque object, a 1–3 px soft edge at the output size) and becomes the true alpha;
    the subject's colour near its outline is continued from its interior, so no trace of the photo's own
    background is left in the composite. Then a contact shadow under the base, sensor noise and, unless
    ``jpeg`` is None, a JPEG round trip at that quality. ``size`` is (width, height).
    """
    if backdrop not in SWEEPS + BACKDROPS:
        raise ValueError(f"unknown backdrop {backdrop!r} (known: {', '.join(SWEEPS)})")
    rng = _rng(seed, "composite", backdrop, name)
    W, H = size
    m = mask[..., 0] if mask.ndim == 3 else mask
    m = m.astype(np.float32) / float(np.iinfo(m.dtype).max if m.dtype.kind in "ui" else 1.0)
    rows, cols = np.flatnonzero((m > 0.5).any(axis=1)), np.flatnonzero((m > 0.5).any(axis=0))
    if len(rows) == 0:
        raise ValueError("the mask has no subject")
    y0, y1, x0, x1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    pad = 2
    y0, x0 = max(0, y0 - pad), max(0, x0 - pad)
    y1, x1 = min(m.shape[0], y1 + pad), min(m.shape[1], x1 + pad)
    photo_f = photo[y0:y1, x0:x1, :3].astype(np.float32) / 255.0
    m = m[y0:y1, x0:x1]
    f = min(rng.uniform(0.5, 0.68) * H / (y1 - y0), 0.8 * W / (x1 - x0))
    sw, sh = max(1, round((x1 - x0) * f)), max(1, round((y1 - y0) * f))
    big = cv2.resize(photo_f, (sw, sh), interpolation=cv2.INTER_CUBIC if f > 1 else cv2.INTER_AREA)
    hard = cv2.resize(m, (sw, sh), interpolation=cv2.INTER_LINEAR) > 0.5
    alpha_s = cv2.GaussianBlur(hard.astype(np.float32), (0, 0), rng.uniform(0.45, 0.9))
    # the subject's own colour continued outwards from pixels well inside the outline (the photo's edge
    # pixels carry its own background, spread over about ``f`` pixels by the enlargement)
    r = max(2, int(np.ceil(1.5 * f)))
    inner = cv2.erode(hard.astype(np.uint8), cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))) > 0
    wsum = cv2.GaussianBlur(inner.astype(np.float32), (0, 0), 3.0)
    spread = cv2.GaussianBlur(big * inner[..., None], (0, 0), 3.0) / np.maximum(wsum, 1e-4)[..., None]
    fg_s = np.where(inner[..., None], big, np.where((wsum > 1e-3)[..., None], spread, big))

    cx = W * (0.5 + rng.uniform(-0.05, 0.05))
    base = H * rng.uniform(0.82, 0.88)
    ox, oy = int(round(cx - sw / 2)), int(round(base - sh))
    alpha = np.zeros((H, W), np.float32)
    fg = np.zeros((H, W, 3), np.float32)
    # clip the placed subject to the canvas (a very wide subject may touch the sides)
    px0, py0, px1, py1 = max(ox, 0), max(oy, 0), min(ox + sw, W), min(oy + sh, H)
    alpha[py0:py1, px0:px1] = np.clip(alpha_s[py0 - oy:py1 - oy, px0 - ox:px1 - ox], 0.0, 1.0)
    fg[py0:py1, px0:px1] = np.clip(fg_s[py0 - oy:py1 - oy, px0 - ox:px1 - ox], 0.0, 1.0)

    xs, ys = _grid(H, W)
    bg = _backdrop(backdrop, xs, ys, rng)
    foot = np.flatnonzero(hard[-max(2, sh // 20):].any(axis=0))
    half = max(8.0, (foot[-1] - foot[0] + 1) / 2 * 1.1) if len(foot) else sw / 4
    foot_cx = ox + ((foot[0] + foot[-1]) / 2 if len(foot) else sw / 2)
    dark = _contact_shadow(xs, ys, foot_cx, base, half, sh, rng)
    rgb = _expose(alpha, fg, bg * (1.0 - dark)[..., None], rng)
    if jpeg:
        rgb = jpeg_round_trip(rgb, jpeg)
    return Shot(rgb=rgb, alpha=alpha, shadow=dark, backdrop=backdrop, subject=name or "photo",
                subject_colour=tuple(float(c) for c in fg_s[inner].mean(axis=0)) if inner.any() else (0.5, 0.5, 0.5),
                backdrop_colour=tuple(float(c) for c in bg[H // 2, W // 2]),  # type: ignore[arg-type]
                foreground=fg)


def label_shot(size: tuple[int, int] = (1200, 800), seed: int = 0, lift: float = 7.0) -> tuple[Shot, np.ndarray]:
    """A dark bottle on white paper with a wrap-around label ``lift`` levels (of 255) brighter than the paper.

    The label runs across the bottle's full width, so it meets the backdrop on both sides: the hard case of a
    near-white product area touching the paper. Returns the shot and the label's mask (opaque label pixels).
    """
    rng = _rng(seed, "label")
    W, H = size
    xs, ys = _grid(H, W)
    u, v = xs / W, ys / H
    paper = np.float32(236 / 255)
    bg = np.full((H, W, 3), paper, np.float32) * (1.0 - 0.015 * (u - 0.5) ** 2 - 0.01 * v)[..., None]
    h = H * rng.uniform(0.5, 0.6)
    cx, base = W * (0.5 + rng.uniform(-0.05, 0.05)), H * 0.85
    hw = 0.2 * h
    body = _sd_box(xs, ys, cx, base - 0.31 * h, hw, 0.31 * h, r=0.05 * h)
    neck = _sd_box(xs, ys, cx, base - 0.74 * h, 0.07 * h, 0.14 * h, r=0.02 * h)
    alpha = _coverage(np.minimum(body, neck))
    colour = np.array(_PALETTE[int(rng.integers(5))], np.float32)  # a dark or saturated glass
    shade = 0.7 + 0.35 * np.sqrt(1 - np.clip((xs - cx) / hw, -1, 1) ** 2)
    fg = colour * shade[..., None]
    label = np.abs(ys - (base - 0.3 * h)) < 0.12 * h
    fg = np.where(label[..., None], bg + np.float32(lift / 255), fg)  # evenly lit matte paper label
    dark = _contact_shadow(xs, ys, cx, base, 1.1 * hw, h, rng)
    rgb = _expose(alpha, np.clip(fg, 0.0, 1.0), bg * (1.0 - dark)[..., None], rng)
    shot = Shot(rgb=rgb, alpha=alpha, shadow=dark, backdrop="white", subject="bottle",
                subject_colour=tuple(float(c) for c in colour), backdrop_colour=(float(paper),) * 3,  # type: ignore[arg-type]
                foreground=fg)
    return shot, label & (alpha >= 1.0)
