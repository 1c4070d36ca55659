"""Stage ``recolor``, backend ``lch``: colourways of one shot. Only the chroma and hue of one region move.

The studio's job: one shot of a tan bag, sold in green and burgundy: same angle, light, shadows, stitching and
hardware. So the edit works in CIE LCh (from CIELAB, D65 white, the sRGB working space's own white: no
chromatic adaptation), keeps every pixel's L* (within 0.5, after rounding to the image's integers) and moves
only a* and b*, by one rotation and scaling of the a*b* plane per colourway: the region's mean colour lands on
the target, and the shading, grain and hue variation of the leather ride along.

The region is the subject's dominant colour cluster: the peak of its a*b* histogram weighted by chroma (a white
sail bigger than the blue hull is not the hull's colour), and every subject pixel of that material: within
``tolerance`` of it in hue and chroma, lightness ignored (the leather in shadow belongs). A deeper shade of the
material, darker and more colourful (the ginger in tan fur, twice its chroma), belongs; more colourful and lighter
is another material (brass on tan leather); a hue 45° to 75° away is another colour whatever its chroma (blue
stitching). A retoucher's ``NAME.recolor.png`` beside the shot bounds the region: within it, the dominant colour
of what is painted turns the same way, so a brush that overshoots onto the white sail or the blue mast beside a
band leaves them as they are (``region: mask`` gives every painted pixel the target's hue instead, for an exact
mask). Taken out of it: ``NAME.protect.png``, and by default low-chroma pixels (white or black stitching, chrome
hardware, the backdrop's greys: a pale shade of the material fades out below ``min_chroma`` rather than being cut,
so pale fur has no hard edge between kept and moved patches) and highlights brighter and paler than the leather
(polished metal, specular glints, fading out over 8 L*; a lighter seam of the leather's own colour turns).
Hardware of nearly the leather's colour and lightness (dark brass on tan) cannot be told from it by colour: a
protect mask is the way. Membership is soft in colour (it ramps to nothing
between ``tolerance`` and 1.5×), so an edge pixel half stitching, half leather moves halfway: that is the soft
edge, and a pixel with no membership at all is bit-identical in every colourway. The region's outline (against
the backdrop, the transparency of a cut-out, a protected part, or another colour inside the paint) is different:
its pixels are the region's colour mixed with what lies beside, paler and less colourful, so weighed by their own
colour they would keep the old colour as a rim; there only the region's share of each pixel turns
(``LchRecolor._outline``), and the new colour meets the backdrop as the old one did.

A swatch gives the target's chroma and its hue as seen (the Oklab hue: CIELAB's hue angle bends toward purple in
the blues as lightness changes, and navy kept at its CIELAB angle but at the leather's L* is a lavender); its
lightness is not taken. A swatch far darker or lighter than the region (``review_lightness``) marks the job for
review, and the manifest records the swatch's L*, the region's and the ΔE2000 between the result and the swatch.

Each colourway is its own ``Asset`` with ``variant`` set to its name; crops and channels carry it to the
``{variant}`` of the file names.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np
from PIL import Image

from ..config import check_colour
from ..errors import PermanentError
from ..lab import D65, RGB_TO_XYZ, delta_e2000, oklab_hue
from ..pixels import max_value
from ..schema import opt
from .base import Asset, Stage, define_step, register
from .masks import MaskError, read_sidecar, sidecar_path
from .subject import disk, find_subject

define_step("recolor", "lch", needs=("uncropped",),
            doc="colourways: moves the hue and chroma of one region of the subject, keeps its lightness")

_ROWS = 256  # rows converted at a time: float copies of a 24 MP shot add up
_SAMPLE = 250_000  # subject pixels the dominant colour is found from
_CORE = 0.99  # membership from which a pixel counts for the region's mean colour
L_KEPT = 0.5  # L* moves at most this much per pixel (rounding to integers is the only cause)
EDGE = 4  # pixels: how far an outline's soft edge (the region mixed with what is beside it) reaches
RIM = 2 * EDGE  # pixels: how far in from the outline a colour off the region's hue is taken as a mix
_ESTIMATED_AT = 512  # long edge at which remove_background.estimate_subject_matte finds an uncut shot's subject
_UNMOVED = 0.2  # a*b*: a pixel whose colour would move less than this keeps its code values exactly
_LIGHTER = 15.0  # L*: a pixel more colourful than the region counts as another material once this much lighter
_PALEST = 0.25  # of min_chroma: the chroma below which a pixel of the region's hue is not moved at all
_HUE_NEAR, _HUE_APART = 45.0, 75.0  # degrees: a hue this far from the region's is another colour (fading between)
_BRIGHTER = 10.0  # L*: a pixel this much brighter than the region's 99th percentile is a highlight (from +2: fades)
_PALE = (0.75, 0.4)  # of the region's median C*: a highlight is paler than the material (from the first: fades)

# --- colour: sRGB (IEC 61966-2-1) <-> CIELAB, D65 ------------------------------------------

_M = RGB_TO_XYZ  # sRGB primaries to XYZ, D65 (pipeline.lab)
_M_INV = np.linalg.inv(_M)
_WHITE = D65
_EPS = (6 / 29) ** 3


def _decode_table(dtype: np.dtype) -> np.ndarray:
    v = np.arange(max_value(np.empty(0, dtype)) + 1, dtype=np.float64) / max_value(np.empty(0, dtype))
    return np.where(v <= 0.04045, v / 12.92, ((v + 0.055) / 1.055) ** 2.4).astype(np.float32)


_TABLES: dict[str, np.ndarray] = {}


def linear_table(dtype: np.dtype) -> np.ndarray:
    """Linear light of every code value of ``dtype`` (uint8: 256 values, uint16: 65536)."""
    key = np.dtype(dtype).str
    if key not in _TABLES:
        _TABLES[key] = _decode_table(np.dtype(dtype))
    return _TABLES[key]


def _f(t: np.ndarray) -> np.ndarray:
    f = np.cbrt(t)
    small = t <= _EPS
    if np.ndim(f) == 0:
        return np.where(small, t / (3 * (6 / 29) ** 2) + 4 / 29, f)
    if small.any():
        f[small] = t[small] / (3 * (6 / 29) ** 2) + 4 / 29
    return f


def _f_inv(f: np.ndarray) -> np.ndarray:
    t = f ** 3
    small = f <= 6 / 29
    if np.ndim(t) == 0:
        return np.where(small, 3 * (6 / 29) ** 2 * (f - 4 / 29), t)
    if small.any():
        t[small] = 3 * (6 / 29) ** 2 * (f[small] - 4 / 29)
    return t


def _times(v: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """``matrix`` applied to each colour of ``v`` (…×3): OpenCV's transform on float32 (numpy's matmul on N×3 is
    several times slower), numpy's for anything else."""
    if v.dtype == np.float32 and v.ndim == 2 and len(v):
        return cv2.transform(v[:, None, :], matrix.astype(np.float32))[:, 0, :]
    return v @ matrix.T


def linear_to_lab(lin: np.ndarray) -> np.ndarray:
    """Linear sRGB (…×3) → CIELAB (D65)."""
    f = _f(_times(lin, _M / _WHITE[:, None]))
    return np.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], -1)


def lab_to_linear(lab: np.ndarray) -> np.ndarray:
    """CIELAB (D65, …×3) → linear sRGB, unclipped (outside 0..1: out of the sRGB gamut)."""
    fy = (lab[..., 0] + 16) / 116
    xyz = np.stack([_f_inv(fy + lab[..., 1] / 500), _f_inv(fy), _f_inv(fy - lab[..., 2] / 200)], -1)
    return _times(xyz, _M_INV * _WHITE)


def srgb_encode(lin: np.ndarray) -> np.ndarray:
    lin = np.clip(lin, 0.0, 1.0)
    return np.where(lin <= 0.0031308, lin * 12.92, 1.055 * np.power(lin, 1 / 2.4) - 0.055)


def lightness(y: np.ndarray) -> np.ndarray:
    """L* of relative luminance ``y`` (white 1)."""
    return 116 * _f(y) - 16


def hex_to_lab(colour: str) -> np.ndarray:
    rgb = np.array([int(colour[i:i + 2], 16) for i in (1, 3, 5)], dtype=np.uint8)
    return linear_to_lab(linear_table(np.dtype(np.uint8))[rgb])


def lab_to_hex(lab: np.ndarray) -> str:
    rgb = np.rint(srgb_encode(lab_to_linear(np.asarray(lab, dtype=np.float64))) * 255).astype(int)
    return "#" + "".join(f"{v:02x}" for v in rgb)


def delta_e_2000(lab1: np.ndarray, lab2: np.ndarray) -> float:
    """CIEDE2000 between two CIELAB colours (``pipeline.lab.delta_e2000``)."""
    return float(delta_e2000(np.asarray(lab1, dtype=np.float64), np.asarray(lab2, dtype=np.float64)))


def aim(swatch: np.ndarray, lightness: float) -> np.ndarray:
    """The a*b* a swatch (CIELAB) becomes at another L*: its chroma, and the CIELAB hue angle whose Oklab hue is the
    swatch's. CIELAB's hue angle bends with lightness in the blues: navy #1f2a44 kept at its angle but at L* 64
    is a lavender (Oklab hue 7° toward purple); at the swatch's Oklab hue it is the swatch's blue, lighter."""
    chroma = float(np.hypot(swatch[1], swatch[2]))
    if chroma < 1e-6:
        return np.zeros(2)
    wanted = float(oklab_hue(lab_to_linear(np.asarray(swatch, dtype=np.float64))))
    start = math.atan2(swatch[2], swatch[1])
    turns = start + np.radians(np.arange(-45.0, 45.0, 0.05))
    lab = np.column_stack([np.full(turns.size, lightness), chroma * np.cos(turns), chroma * np.sin(turns)])
    off = np.abs((oklab_hue(lab_to_linear(lab)) - wanted + 180) % 360 - 180)
    best = turns[int(np.argmin(off))]
    return np.array([chroma * math.cos(best), chroma * math.sin(best)])


# --- options ---------------------------------------------------------------------------------

def variant_name(name: str) -> str:
    """The ``{variant}`` a colourway's name gives: a lower-case ASCII slug, as a scene's file name gives one ("Coral
    Red": coral-red), since it goes into output file names; "" when nothing of the name is left."""
    from ..outputs import web_safe  # outputs imports the stages

    return web_safe(name)


def _check_name(value: str) -> str | None:
    return None if variant_name(value) else (f"expected a name with a letter or digit (it goes into file names as "
                                             f"{{variant}}, as a slug), got {value!r}")


def _check_rgb(value: str) -> str | None:
    return check_colour(value) or (None if len(value) == 7 else f"expected a colour like '#1f4d3a', got {value!r}")


@dataclass
class Colourway:
    """One colourway: a name (the outputs' ``{variant}``) and the colour the region's mean moves to, or a move."""

    name: str = opt(doc="the colourway's name; the outputs' {variant} is its slug (Coral Red: coral-red)",
                    check=_check_name, required=True)
    colour: str | None = opt(None, check=_check_rgb,
                             doc="'#rrggbb' the region's mean hue and chroma move to (its lightness stays the shot's)")
    hue_shift: float | None = opt(None, min=-180.0, max=180.0,
                                  doc="instead of colour: turn the region's hue by this many degrees (LCh)")
    chroma_scale: float | None = opt(None, min=0.0, max=4.0,
                                     doc="instead of colour: multiply the region's chroma (0: grey, 1: as shot)")


@dataclass
class RecolorOptions:
    variants: list[Colourway] = opt([], doc="the colourways, each its own output: [{name: green, colour: "
                                            "'#1f4d3a'}, {name: burgundy, colour: '#5a1a24'}]")
    hue_shift: float | None = opt(None, min=-180.0, max=180.0,
                                  doc="without variants: one edit, no variant name: turn the region's hue by this "
                                      "many degrees")
    chroma_scale: float | None = opt(None, min=0.0, max=4.0,
                                     doc="without variants: one edit, no variant name: multiply the region's chroma")
    original: str | None = opt(None, check=_check_name,
                               doc="also pass the shot on untouched as a variant of this name (the tan of the "
                                   "colourways; its slug, as a colourway's); null: only the colourways")
    region: str = opt("auto", choices=("auto", "sidecar", "mask", "cluster"),
                      doc="what is recoloured: sidecar: within NAME.recolor.png beside the shot (required), the "
                          "dominant colour of what is painted (a brush's overshoot onto another colour stays); "
                          "mask: every painted pixel, as painted (the paint is exact); cluster: the subject's "
                          "dominant colour; auto: sidecar when there is a NAME.recolor.png, else cluster")
    tolerance: float = opt(20.0, min=1.0, max=100.0,
                           doc="how far a pixel's colour may be from the dominant colour and still be recoloured "
                               "(a*b* distance: hue and chroma; more colourful counts only when also lighter: a "
                               "deeper shade of the material turns, brass does not); fades out to 1.5×")
    min_chroma: float = opt(8.0, min=0.0, max=50.0,
                            doc="pixels less colourful than this (C*) move the less the paler they are, none below "
                                "a quarter of it: stitching, chrome, black, greys stay (0: recolour greys too)")
    protect_highlights: bool = opt(True, doc="keep highlights: pixels brighter than the region's 99th percentile "
                                             "of L* (fading out from 2 to 10 L* above) and paler than it (C* under "
                                             "3/4 of the region's, in full under 2/5): specular glints, polished "
                                             "metal; a lighter seam of the material's own colour turns")
    review_delta_e: float = opt(3.0, min=0.0, max=100.0,
                                doc="mark the job for review when a colourway's mean lands further than this "
                                    "(ΔE2000, at the region's lightness) from its colour: a target the shot's "
                                    "lightness cannot hold")
    review_lightness: float = opt(15.0, min=0.0, max=100.0,
                                  doc="mark the job for review when a colourway's swatch is this much darker or "
                                      "lighter (L*) than the region: lightness is kept, so navy on tan leather "
                                      "comes out a light blue")


# --- the region ------------------------------------------------------------------------------

def _smooth_ramp(x: np.ndarray, zero: float, one: float) -> np.ndarray:
    """0 at ``zero``, 1 at ``one`` (either order), smoothstep between."""
    t = np.clip((x - zero) / (one - zero), 0.0, 1.0) if one != zero else (x >= one).astype(np.float64)
    return t * t * (3 - 2 * t)


@dataclass
class Region:
    """What is recoloured: per-pixel weights (0..1) inside ``box`` (x0, y0, x1, y1), and the region's mean colour."""

    box: tuple[int, int, int, int]
    weight: np.ndarray  # float32, box-sized
    mean_lab: np.ndarray
    notes: dict[str, Any]
    # the outline's mixed pixels: flat indices into the box (sorted) and the a*b* of what they are mixed with,
    # times its share (subtracted before the turn, added back after: only the region's part of them turns)
    edge_at: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    edge_other: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), np.float32))
    # region: mask: every painted colour takes the target's hue (its chroma scaled), rather than turning by the
    # mean's turn (which takes a blue patch painted beside the yellow band to maroon, not to the target)
    set_hue: bool = False
    # 0..255 per box pixel: how near the region's outline it lies (255 on it, 0 from ``RIM`` pixels in); there a
    # colour off the region's hue is the region mixed with what is beside (fur over grass: olive), and only its part
    # along the region's hue turns (turned whole, an olive tan becomes a yellow beside coral: a third hue)
    rim: np.ndarray | None = None


def _lab_rows(rgb: np.ndarray) -> np.ndarray:
    return linear_to_lab(linear_table(rgb.dtype)[rgb])


def dominant_colour(lab: np.ndarray, tolerance: float) -> np.ndarray:
    """The a*b* peak of ``lab`` (N×3) after smoothing the histogram by the tolerance, refined to the mean of the
    pixels within ``tolerance`` of it: the colour most of the subject is."""
    bins = np.arange(-128, 130, 2.0)
    hist, _, _ = np.histogram2d(lab[:, 1], lab[:, 2], bins=(bins, bins), weights=np.hypot(lab[:, 1], lab[:, 2]))
    hist = cv2.GaussianBlur(hist.astype(np.float32), (0, 0), max(1.0, tolerance / 4 / 2.0))
    i, j = np.unravel_index(int(np.argmax(hist)), hist.shape)
    centre = np.array([bins[i] + 1.0, bins[j] + 1.0])
    for _ in range(5):
        near = np.hypot(lab[:, 1] - centre[0], lab[:, 2] - centre[1]) <= tolerance / 2
        if not near.any():
            break
        centre = lab[near, 1:].mean(axis=0)
    return centre


def colour_distance(lab: np.ndarray, centre: np.ndarray, lightness_of: float) -> np.ndarray:
    """How far each CIELAB colour of ``lab`` (N×3) is from the material of a*b* ``centre`` and median L*
    ``lightness_of``, for membership: the hue difference ΔH, and the chroma difference where it means another
    material. Less colourful counts in full (a whitish sail of the hull's hue is not the hull; the palest shades
    fade by ``min_chroma`` instead). More colourful counts only where the pixel is also lighter than the material,
    and only beyond the chroma that more light gives it (sunlit cloth is lighter and more colourful in proportion),
    then 1.5×: a deeper shade of a material is darker and more colourful (the ginger of tan fur, C* twice the
    fur's), a more colourful thing of a near hue that is lighter still is another material (brass on tan
    leather)."""
    a, b = lab[:, 1], lab[:, 2]
    c = np.hypot(a, b)
    cc = float(np.hypot(*centre))
    dh = np.arctan2(b, a) - math.atan2(centre[1], centre[0])
    big_dh = 2 * np.sqrt(c * cc) * np.sin(dh / 2)
    dc = c - cc
    # more light makes the material lighter and more colourful alike: the chroma it has at this lightness
    lit = cc * np.maximum(1.0, lab[:, 0] / max(1.0, lightness_of))
    lighter = _smooth_ramp(lab[:, 0] - lightness_of, 0.0, _LIGHTER)
    return np.hypot(np.where(dc < 0, dc, 1.5 * lighter * np.maximum(0.0, c - lit)), big_dh)


def hue_apart(lab: np.ndarray, centre: np.ndarray) -> np.ndarray:
    """The hue angle (degrees, 0..180) between each colour of ``lab`` (N×3) and a*b* ``centre``."""
    turn = np.arctan2(lab[:, 2], lab[:, 1]) - math.atan2(centre[1], centre[0])
    return np.degrees(np.abs(np.arctan2(np.sin(turn), np.cos(turn))))


def membership(lab: np.ndarray, centre: np.ndarray | None, lightness_of: float, bright: float | None,
               tolerance: float, min_chroma: float, chroma_of: float = 0.0) -> np.ndarray:
    """How much each colour of ``lab`` (N×3) belongs to the region (0..1). With a material (a*b* ``centre``, L*
    ``lightness_of``): its colour distance (full within ``tolerance``, none past 1.5×), and none for a hue
    ``_HUE_APART`` or more away whatever the chroma (the lavender spots of a muzzle beside tan fur; ``centre`` None:
    every colour, a region taken as painted). Then faded by chroma below ``min_chroma`` (a pale shade of the
    material moves the less the paler it is, down to none for a grey: no hard edge between a moved and a kept patch
    of pale fur), and by highlights: lighter than ``bright`` and paler than the material's C* ``chroma_of`` (a glint,
    polished metal: near white). A seam of the sail's own yellow, a little lighter but as colourful, is the material
    and turns with it: kept, it is a thin line of the old colour across the new."""
    part = np.ones(len(lab))
    if centre is not None:
        part *= _smooth_ramp(colour_distance(lab, centre, lightness_of), 1.5 * tolerance, tolerance)
        part *= _smooth_ramp(hue_apart(lab, centre), _HUE_APART, _HUE_NEAR)
    if min_chroma > 0:
        part *= _smooth_ramp(np.hypot(lab[:, 1], lab[:, 2]), _PALEST * min_chroma, min_chroma)
    if bright is not None:
        pale = _smooth_ramp(np.hypot(lab[:, 1], lab[:, 2]), _PALE[0] * chroma_of, _PALE[1] * chroma_of)
        part *= 1.0 - _smooth_ramp(lab[:, 0], bright + 2.0, bright + _BRIGHTER) * pale
    return part


@register
class LchRecolor(Stage):
    """Rotates and scales the region's a*b* per colourway in CIELAB; L* stays the shot's."""

    step = "recolor"
    backend = "lch"
    Options = RecolorOptions

    @classmethod
    def validate(cls, options: RecolorOptions, where: str, ctx_config: Any) -> list[str]:
        problems = []
        single = options.hue_shift is not None or options.chroma_scale is not None
        if bool(options.variants) == single:
            problems.append(f"{where}: set either variants (colourways, each its own output) or hue_shift/"
                            f"chroma_scale (one edit), got {'both' if single else 'neither'}")
        names = ([options.original] if options.original else []) + [v.name for v in options.variants]
        slugs = [variant_name(n) for n in names]
        for i, slug in enumerate(slugs):
            first = slugs.index(slug)
            if not slug or first == i or slug in slugs[:i][first + 1:]:  # "" is refused by the name's own check
                continue
            clash = (f"the name {names[i]!r} is given twice" if names[first] == names[i] else
                     f"{names[first]!r} and {names[i]!r} give the same variant name ({slug})")
            problems.append(f"{where}.variants: {clash}: each colourway needs its own (it names the files)")
        for i, v in enumerate(options.variants):
            moves = v.hue_shift is not None or v.chroma_scale is not None
            if (v.colour is not None) == moves:
                problems.append(f"{where}.variants[{i}]: set either colour or hue_shift/chroma_scale, got "
                                f"{'both' if moves else 'neither'}")
        if options.original and not options.variants:
            problems.append(f"{where}.original: only with variants (the shot passed on beside its colourways)")
        return problems

    @classmethod
    def variants(cls, options: RecolorOptions) -> list[str]:
        """The colourways' names, the untouched shot's first when ``original`` names it ([]: one edit, no name)."""
        return [variant_name(n) for n in ([options.original] if options.original else []) +
                [v.name for v in options.variants]]

    # -- region --------------------------------------------------------------------------------

    def _sidecar(self, asset: Asset, kind: str) -> np.ndarray | None:
        """``kind``'s mask beside the shot, in this asset's pixels: a cut-out trimmed by remove_background gets the
        same window of it; after a step that resized or placed the shot, the mask's pixels no longer match."""
        if asset.source is None or not sidecar_path(asset.source, kind).is_file():
            return None
        trim = (asset.notes.get("remove_background") or {}).get("trim")
        moved = [s for s in ("place_in_scene", "upscale", "crops") if s in asset.notes] or (
            ["a resize"] if asset.scale != 1.0 else [])
        path = sidecar_path(asset.source, kind)
        if moved:
            raise MaskError(f"{path}: the {kind} mask is in the shot's pixels, but recolor runs after {moved[0]}: "
                            "put recolor before it in the rule")
        if trim is None:
            return read_sidecar(asset.source, kind, (asset.width, asset.height))
        try:
            with Image.open(path) as im:
                size = im.size
        except OSError as exc:
            raise MaskError(f"{path}: cannot read this {kind} mask ({exc})") from None
        mask = read_sidecar(asset.source, kind, size)
        x0, y0, x1, y1 = trim
        if x1 > size[0] or y1 > size[1] or (x1 - x0, y1 - y0) != (asset.width, asset.height):
            raise MaskError(f"{path}: the {kind} mask is {size[0]}×{size[1]}, smaller than the shot; make it at the "
                            "shot's size")
        return mask[y0:y1, x0:x1]

    def _subject(self, asset: Asset) -> tuple[np.ndarray, bool]:
        """Where the subject is (0 or 1, float): a cut-out's non-transparent pixels, else the matte (found if need
        be), and whether that is only an estimate whose outline may lie a few pixels off the subject's. A matte's
        soft edge is not a weight: those pixels are already the subject mixed with the backdrop."""
        if asset.has_alpha:
            return (asset.pixels[..., 3] > 0).astype(np.float32), False
        _box, matte, where = find_subject(asset)
        if matte is None:
            raise PermanentError(f"recolor: {asset.source or 'image'}: cannot tell the subject from its backdrop: "
                                 "put remove_background before recolor, or a NAME.recolor.png beside the shot")
        return (matte >= 128).astype(np.float32), where == "estimated"

    def find_region(self, asset: Asset) -> Region:
        o: RecolorOptions = self.options
        rgb = asset.pixels[..., :3]
        painted = None if o.region == "cluster" else self._sidecar(asset, "recolor")
        if o.region in ("sidecar", "mask") and painted is None:
            where = sidecar_path(asset.source, "recolor") if asset.source else "NAME.recolor.png"
            raise PermanentError(f"recolor: {where} is missing (region: {o.region}): paint the region to recolour "
                                 "or set region: auto")
        protect = self._sidecar(asset, "protect")
        notes: dict[str, Any] = {"region": "sidecar" if painted is not None else "cluster"}
        if painted is not None:
            base = painted.astype(np.float32) / 255.0
            if asset.has_alpha:
                base *= asset.pixels[..., 3] > 0  # a transparent pixel's colour is nobody's
        estimated = False
        if painted is None:
            base, estimated = self._subject(asset)
        if protect is not None:
            base *= 1.0 - protect.astype(np.float32) / 255.0
            notes["protect"] = "sidecar"
        ys, xs = np.nonzero(base > 0)
        if ys.size == 0:
            raise PermanentError(f"recolor: {asset.source or 'image'}: nothing to recolour: the "
                                 f"{'painted region' if painted is not None else 'subject'} is empty")
        # an estimated outline lies up to a working pixel or two off the subject's soft edge, either way
        slack = EDGE + 2 * math.ceil(max(asset.width, asset.height) / _ESTIMATED_AT) if estimated else 0
        grow = 3 * EDGE + slack if estimated else 0
        box = (max(0, int(xs.min()) - grow), max(0, int(ys.min()) - grow),
               min(asset.width, int(xs.max()) + 1 + grow), min(asset.height, int(ys.max()) + 1 + grow))
        x0, y0, x1, y1 = box
        base = base[y0:y1, x0:x1]
        prot = None if protect is None else protect[y0:y1, x0:x1]
        alpha = asset.pixels[y0:y1, x0:x1, 3] if asset.has_alpha else None
        # the colour of the region: a sample of its sure pixels (colourful, not a highlight)
        step = max(1, int(math.sqrt(ys.size / _SAMPLE)))
        sure = base[::step, ::step] >= 0.99
        sample = _lab_rows(rgb[y0:y1:step, x0:x1:step][sure]).reshape(-1, 3)
        chroma = np.hypot(sample[:, 1], sample[:, 2])
        colourful = sample[chroma >= o.min_chroma] if o.min_chroma > 0 else sample
        enough = len(colourful) >= max(16, 0.01 * len(sample))
        if painted is None and not enough:
            raise PermanentError(f"recolor: {asset.source or 'image'}: the subject has no colour above "
                                 f"min_chroma {o.min_chroma:g} (grey, black or white): paint NAME.recolor.png "
                                 "or lower min_chroma")
        if o.region == "mask" or not enough:
            # every painted colour turns (fading only below min_chroma and above the highlights)
            centre, lightness_of, cluster = None, 0.0, (colourful if len(colourful) else sample)
        else:
            # the subject's dominant colour, or the painted pixels': a brush that overshoots onto the sail or the
            # mast beside the band does not turn them
            centre = dominant_colour(colourful, o.tolerance)
            near = np.hypot(colourful[:, 1] - centre[0], colourful[:, 2] - centre[1]) <= o.tolerance
            lightness_of = float(np.median(colourful[near, 0] if near.any() else colourful[:, 0]))
            member = membership(colourful, centre, lightness_of, None, o.tolerance, 0.0) >= _CORE
            cluster = colourful[member] if member.any() else colourful
            lightness_of = float(np.median(cluster[:, 0]))
            notes["dominant"] = lab_to_hex(np.array([lightness_of, *centre]))
        bright = float(np.percentile(cluster[:, 0], 99)) if o.protect_highlights and len(cluster) else None
        chroma_of = float(np.median(np.hypot(cluster[:, 1], cluster[:, 2]))) if len(cluster) else 0.0
        weight = np.empty(base.shape, np.float32)
        for r0 in range(0, y1 - y0, _ROWS):
            r1 = min(y1 - y0, r0 + _ROWS)
            w = base[r0:r1].copy()
            todo = w > 0
            lab = _lab_rows(rgb[y0 + r0:y0 + r1, x0:x1][todo])
            part = w[todo] * membership(lab, centre, lightness_of, bright, o.tolerance, o.min_chroma, chroma_of)
            w[todo] = part
            weight[r0:r1] = w
        core = weight >= _CORE
        if not core.any():
            raise PermanentError(f"recolor: {asset.source or 'image'}: no pixel of the region is colourful enough to "
                                 f"recolour (min_chroma {o.min_chroma:g}, tolerance {o.tolerance:g})")
        ry, rx = np.nonzero(core)
        pick = slice(None, None, max(1, int(ry.size / _SAMPLE)))
        mean_lab = _lab_rows(rgb[y0 + ry[pick], x0 + rx[pick]]).mean(axis=0)
        subject_px = float((base > 0).sum())
        # inside a painted region, what is another colour (the sail beside the band) is beyond the region's outline
        outside = base < _CORE
        if painted is not None and centre is not None:
            outside |= weight < 0.01
        rim = None if centre is None else _rim(outside if alpha is None else
                                               outside | (alpha <= 0.9 * max_value(alpha)), box,
                                               (asset.width, asset.height))
        edge_at, edge_other = self._outline(rgb[y0:y1, x0:x1], box, (asset.width, asset.height), weight, base,
                                            outside, prot, alpha, slack, mean_lab[1:])
        notes.update(pixels=int((weight > 0).sum()), share=round(float(weight.sum()) / max(1.0, subject_px), 4),
                     mean=lab_to_hex(mean_lab), lch=_lch(mean_lab), edge_pixels=int(edge_at.size))
        return Region(box, weight, mean_lab, notes, edge_at, edge_other, set_hue=centre is None, rim=rim)

    def _outline(self, rgb: np.ndarray, box: tuple[int, int, int, int], size: tuple[int, int], weight: np.ndarray,
                 base: np.ndarray, outside: np.ndarray, prot: np.ndarray | None, alpha: np.ndarray | None, slack: int,
                 region_ab: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The region's soft outline (against the backdrop, a cut-out's partly transparent edge, a protected part, or
        ``outside``: what is not the region, such as another colour inside a painted region), taken into ``weight``
        in place; returns the outline pixels' flat indices (in the box) and the part of
        their a*b* that does not turn.

        An outline pixel is the region's colour mixed with what lies beside it: tan leather half over white paper
        is a pale, less colourful, lighter tan. Weighed by its own colour (min_chroma, highlights, the tolerance)
        it drops out and keeps the old colour: a rim of tan around a green bag. So within ``EDGE`` of the region's
        sure pixels and near its outline, a pixel's share of the region is found by projecting its a*b* on the line
        from the colour beside it (the mean of the pixels beyond, per cell) to the region's mean colour, and that
        share of the region's colour turns; what it is mixed with (white paper, blue paper, chrome) stays. A pixel
        far off that line is another material (brass trim, a label) and keeps its colour.
        """
        o: RecolorOptions = self.options
        core = (weight >= _CORE).astype(np.uint8)
        near = cv2.dilate(core, disk(EDGE)) > 0
        # a cut-out's partly transparent pixels are outline however wide (fur, hair): the subject mixed with the
        # backdrop it was cut from, unless remove_background took that out
        soft = np.zeros(base.shape, bool) if alpha is None else (alpha > 0) & (alpha <= 0.9 * max_value(alpha))
        # what is not the region's in full, and past the box's sides (not the frame's: a subject cut by the frame
        # has no outline there)
        x0, y0, x1, y1 = box
        wide = 2 * EDGE + slack  # ``slack``: how far an estimated outline may lie off the subject's
        sides = [int(v) * wide for v in (y0 > 0, y1 < size[1], x0 > 0, x1 < size[0])]
        apart = cv2.copyMakeBorder((outside | soft).astype(np.uint8), *sides, cv2.BORDER_CONSTANT, value=1)
        outline = cv2.dilate(apart, _square(wide))[sides[0]:sides[0] + base.shape[0],
                                                  sides[2]:sides[2] + base.shape[1]] > 0
        reach = base > 0
        if slack:
            reach = cv2.dilate(reach.astype(np.uint8), _square(slack)) > 0
        band = (near | soft) & outline & reach & (core == 0)
        del apart, outline, reach
        if prot is not None:
            band &= prot < 255
        if not band.any():
            return np.zeros(0, np.int64), np.zeros((0, 2), np.float32)
        # what lies beside: colours of the pixels beyond the sure region's reach (not the region, not transparent;
        # in a cut-out the more transparent the more they count), averaged per cell of the band's width and its
        # eight neighbours
        beyond = (cv2.dilate((near | soft).astype(np.uint8), disk(2 * EDGE)) > 0) & ~near & (weight < 0.01)
        if alpha is not None:
            beyond &= alpha > 0
        if prot is not None:
            beyond |= near & (prot >= 128)
        cell = 2 * EDGE + 1
        gh, gw = -(-weight.shape[0] // cell), -(-weight.shape[1] // cell)
        sums = np.zeros((3, gh * gw))
        by, bx = np.nonzero(beyond)
        if by.size:
            ab = _lab_rows(rgb[by, bx])[:, 1:]
            idx = (by // cell) * gw + bx // cell
            count = None if alpha is None else 1.0 - alpha[by, bx] / max_value(alpha) + 1e-3
            for c in range(2):
                sums[c] = np.bincount(idx, ab[:, c] * (1.0 if count is None else count), gh * gw)
            sums[2] = np.bincount(idx, count, gh * gw)
        sums = np.stack([cv2.boxFilter(s.reshape(gh, gw).astype(np.float32), -1, (3, 3), normalize=False,
                                       borderType=cv2.BORDER_CONSTANT) for s in sums])
        ey, ex = np.nonzero(band)
        at = (ey // cell, ex // cell)
        count = sums[2][at]
        # a painted region's soft edge with nothing else beside it (the paint fading out across the same material):
        # not a mix, its own colour turns by its membership like its neighbours' (taken as a mix with nothing, it
        # turned only in part: a line of a third hue along the paint's edge)
        mixed = (count > 0) | (base[ey, ex] >= _CORE)
        ey, ex, at, count = ey[mixed], ex[mixed], (at[0][mixed], at[1][mixed]), count[mixed]
        if not ey.size:
            return np.zeros(0, np.int64), np.zeros((0, 2), np.float32)
        lab = _lab_rows(rgb[ey, ex])
        other = np.where((count > 0)[:, None], np.stack([sums[0][at], sums[1][at]], -1) / np.maximum(count, 1)[:, None],
                         0.0)
        # the region's share of each pixel: its a*b* projected on the line from the other colour to the region's
        span = region_ab[None, :] - other
        span2 = (span ** 2).sum(axis=1)
        share = np.where(span2 > 16.0, ((lab[:, 1:] - other) * span).sum(axis=1) / np.maximum(span2, 1e-9), 1.0)
        share = np.clip(share, 0.0, 1.0)
        # a pixel off that line is another thing (brass trim, a blue label): it keeps its colour
        off_line = np.hypot(*(lab[:, 1:] - other - share[:, None] * span).T)
        # no more than the median among its neighbours (the sure region counting as all region's): on a textured
        # backdrop one pixel's share is mostly its grain; and no more than its own: a grey fleck next to the
        # region is not pushed to the new colour
        share = np.minimum(share, _neighbour_median(ey, ex, share, core))
        # only the region's part turns: its colour times the share (the rest, and the pixel's grain, stay)
        own = share[:, None] * region_ab[None, :]
        other_part = lab[:, 1:] - own
        w = np.ones(ey.size) if slack else base[ey, ex].astype(np.float64)  # a guessed outline is no weight
        w *= _smooth_ramp(share, 0.02, 0.06) * _smooth_ramp(off_line, o.tolerance, o.tolerance / 2)
        if prot is not None:
            w *= 1.0 - prot[ey, ex] / 255.0
        w = w.astype(np.float32)
        weight[ey, ex] = np.maximum(weight[ey, ex], w)
        keep = w > 0  # so every outline pixel kept is one ``apply`` changes (weight > 0)
        return (ey[keep] * weight.shape[1] + ex[keep]).astype(np.int64), other_part[keep].astype(np.float32)

    # -- one colourway -------------------------------------------------------------------------

    def apply(self, pixels: np.ndarray, region: Region, target_ab: np.ndarray) -> tuple[np.ndarray, dict[str, Any]]:
        """``pixels`` with the region's a*b* moved by the rotation-and-scale taking its mean to ``target_ab``,
        blended by the region's weight, L* kept; the rest bit-identical."""
        mean_ab = region.mean_lab[1:]
        k = float(np.hypot(*target_ab)) / max(1e-6, float(np.hypot(*mean_ab)))
        turn = math.atan2(target_ab[1], target_ab[0]) - math.atan2(mean_ab[1], mean_ab[0])
        rot = k * np.array([[math.cos(turn), -math.sin(turn)], [math.sin(turn), math.cos(turn)]])
        unit = np.asarray(target_ab, np.float64) / max(1e-6, float(np.hypot(*target_ab)))
        m_unit = np.asarray(mean_ab, np.float64) / max(1e-6, float(np.hypot(*mean_ab)))
        out = pixels.copy()
        x0, y0, x1, y1 = region.box
        width = x1 - x0
        top = max_value(pixels)
        table = linear_table(pixels.dtype)
        limited, worst = 0, 0.0
        for r0 in range(0, y1 - y0, _ROWS):
            r1 = min(y1 - y0, r0 + _ROWS)
            w = region.weight[r0:r1]
            todo = w > 0
            if not todo.any():
                continue
            block = out[y0 + r0:y0 + r1, x0:x1]
            src = block[..., :3][todo]
            lab = linear_to_lab(table[src])
            own = lab[:, 1:].copy()
            lo, hi = np.searchsorted(region.edge_at, [r0 * width, r1 * width])
            if hi > lo:  # outline pixels: only the region's part turns, what it is mixed with stays
                flat = np.flatnonzero(todo)
                own[np.searchsorted(flat, region.edge_at[lo:hi] - r0 * width)] -= region.edge_other[lo:hi]
            if region.set_hue:  # the target's hue, each colour's chroma scaled as the mean's
                turned = np.hypot(own[:, 0], own[:, 1])[:, None] * (k * unit)[None, :]
            else:
                turned = own @ rot.T
                if region.rim is not None:  # near the outline: the part along the region's hue turns, the rest stays
                    r = region.rim[r0:r1][todo].astype(np.float64)[:, None] / 255.0
                    if r.any():
                        along = np.maximum(0.0, own @ m_unit)[:, None]
                        turned = (1.0 - r) * turned + r * (own + along * (k * unit - m_unit)[None, :])
            change = w[todo][:, None] * (turned - own)
            still = np.hypot(change[:, 0], change[:, 1]) < _UNMOVED
            lab[:, 1:] += change
            lin, n = _into_gamut(lab)
            limited += n
            new = _round_keeping_lightness(lin, lightness(lin @ _M[1]), table, top)
            new[still] = src[still]
            worst = max(worst, float(np.abs(lightness(table[new] @ _M[1]) - lab[:, 0]).max()))
            rgb = block[..., :3]
            rgb[todo] = new.astype(pixels.dtype)
            block[..., :3] = rgb
        return out, {"gamut_limited": round(limited / max(1, int((region.weight > 0).sum())), 4),
                     "max_lightness_change": round(worst, 3)}

    def run(self, asset: Asset) -> list[Asset]:
        o: RecolorOptions = self.options
        region = self.find_region(asset)
        mean = region.mean_lab
        ways = o.variants or [Colourway(name="", hue_shift=o.hue_shift, chroma_scale=o.chroma_scale)]
        outs = []
        if o.original:
            kept = asset.derive(asset.pixels, asset.matte, variant=_variant(asset.variant, variant_name(o.original)),
                                backdrop=asset.backdrop)
            kept.notes["recolor"] = {**region.notes, "variant": variant_name(o.original), "untouched": True}
            outs.append(kept)
        for way in ways:
            swatch = hex_to_lab(way.colour) if way.colour is not None else None
            if swatch is not None:
                target = aim(swatch, float(mean[0]))
            else:
                c, h = _lch(mean)[1:]
                c *= way.chroma_scale if way.chroma_scale is not None else 1.0
                h += way.hue_shift or 0.0
                target = np.array([c * math.cos(math.radians(h)), c * math.sin(math.radians(h))])
            pixels, result = self.apply(asset.pixels, region, target)
            landed = self._landed(pixels, region)
            delta = delta_e_2000(np.array([landed[0], *target]), landed)
            notes = {**region.notes, **result, "delta_e": round(delta, 2), "result": lab_to_hex(landed)}
            which = f"recolor {way.name}" if way.name else "recolor"
            review = []
            if delta > o.review_delta_e:
                review.append(f"{which}: the region's mean lands ΔE2000 {delta:.1f} from "
                              f"{way.colour or 'the asked move'} (review_delta_e {o.review_delta_e:g}): the shot's "
                              "lightness cannot hold that colour; check the colourway")
            if swatch is not None:
                # lightness is the shot's on purpose: how far the result stays from the swatch itself
                from_swatch = delta_e_2000(swatch, landed)
                notes.update(colour=way.colour, swatch_lightness=round(float(swatch[0]), 1),
                             region_lightness=round(float(mean[0]), 1), delta_e_swatch=round(from_swatch, 1))
                gap = float(mean[0]) - float(swatch[0])
                if abs(gap) > o.review_lightness:
                    reads, base = ("lighter", "darker") if gap > 0 else ("darker", "lighter")
                    review.append(f"{which}: the swatch {way.colour} is L* {swatch[0]:.0f}, the region L* "
                                  f"{mean[0]:.0f}; lightness is kept, so it reads {reads} than the swatch (ΔE2000 "
                                  f"{from_swatch:.0f}); a {base} base shot may be needed (review_lightness "
                                  f"{o.review_lightness:g})")
            else:
                notes.update({k: v for k, v in (("hue_shift", way.hue_shift), ("chroma_scale", way.chroma_scale))
                              if v is not None})
            slug = variant_name(way.name)
            out = asset.derive(pixels, asset.matte, variant=_variant(asset.variant, slug) if way.name
                               else asset.variant)
            if way.name:
                notes["variant"] = slug
            out.notes["recolor"] = notes
            out.review.extend(review)
            outs.append(out)
        return outs

    @staticmethod
    def _landed(pixels: np.ndarray, region: Region) -> np.ndarray:
        """The mean CIELAB colour of the region's sure pixels in ``pixels``."""
        x0, y0, _x1, _y1 = region.box
        sure = region.weight >= _CORE
        sure.flat[region.edge_at] = False  # the outline's pixels are the region mixed with something else
        ry, rx = np.nonzero(sure)
        pick = slice(None, None, max(1, int(ry.size / _SAMPLE)))
        return _lab_rows(pixels[y0 + ry[pick], x0 + rx[pick], :3]).mean(axis=0)


def _rim(outside: np.ndarray, box: tuple[int, int, int, int], size: tuple[int, int]) -> np.ndarray:
    """How near each pixel of the box lies to ``outside`` (uint8: 255 on it, 0 from ``RIM`` pixels in); past the
    box's sides counts as outside, the frame's does not (a subject cut by the frame has no outline there)."""
    x0, y0, x1, y1 = box
    sides = [int(v) * (RIM + 1) for v in (y0 > 0, y1 < size[1], x0 > 0, x1 < size[0])]
    inside = cv2.copyMakeBorder((~outside).astype(np.uint8), *sides, cv2.BORDER_CONSTANT, value=0)
    if inside.all():
        return np.zeros(outside.shape, np.uint8)
    dist = cv2.distanceTransform(inside, cv2.DIST_L2, 3)[sides[0]:sides[0] + outside.shape[0],
                                                         sides[2]:sides[2] + outside.shape[1]]
    return np.rint(255 * _smooth_ramp(dist, RIM, 0.0)).astype(np.uint8)


def _square(radius: int) -> np.ndarray:
    """A square structuring element: OpenCV dilates by it in two passes, fast at any radius."""
    return np.ones((2 * radius + 1, 2 * radius + 1), np.uint8)


def _neighbour_median(ys: np.ndarray, xs: np.ndarray, values: np.ndarray, core: np.ndarray,
                      size: int = 5) -> np.ndarray:
    """The median of ``values`` (0..1, at pixels ``ys``, ``xs`` in row-major order) over each one's ``size``²
    neighbours, the ``core`` pixels counting as 1 and all others as 0; in blocks of rows, so a 24 MP box costs a
    few MB."""
    out = np.empty(values.shape, np.float64)
    half = size // 2
    for r0 in range(0, core.shape[0], _ROWS):
        r1 = min(core.shape[0], r0 + _ROWS)
        a, b = np.searchsorted(ys, [r0, r1])
        if a == b:
            continue
        s0, s1 = max(0, r0 - half), min(core.shape[0], r1 + half)
        lo, hi = np.searchsorted(ys, [s0, s1])
        plane = (core[s0:s1] > 0).astype(np.uint8) * 255
        plane[ys[lo:hi] - s0, xs[lo:hi]] = np.rint(values[lo:hi] * 255).astype(np.uint8)
        out[a:b] = cv2.medianBlur(plane, size)[ys[a:b] - s0, xs[a:b]] / 255.0
    return out


def _variant(before: str | None, name: str) -> str:
    """A colourway's variant name; after a step that already made variants (scenes), both: ``marble-green``."""
    return f"{before}-{name}" if before else name


def _lch(lab: np.ndarray) -> list[float]:
    return [round(float(lab[0]), 2), round(float(np.hypot(lab[1], lab[2])), 2),
            round(math.degrees(math.atan2(lab[2], lab[1])) % 360, 2)]


def _into_gamut(lab: np.ndarray) -> tuple[np.ndarray, int]:
    """Linear sRGB of ``lab`` (N×3); colours outside sRGB lose chroma (same L* and hue) until they fit. Returns
    the linear values and how many had to."""
    lin = lab_to_linear(lab)
    out = np.any((lin < -1e-9) | (lin > 1 + 1e-9), axis=1)
    n = int(out.sum())
    if n:
        sub = lab[out]
        lo, hi = np.zeros(n), np.ones(n)
        for _ in range(10):
            mid = (lo + hi) / 2
            trial = lab_to_linear(np.column_stack([sub[:, 0], sub[:, 1:] * mid[:, None]]))
            fits = np.all((trial >= -1e-9) & (trial <= 1 + 1e-9), axis=1)
            lo, hi = np.where(fits, mid, lo), np.where(fits, hi, mid)
        lin[out] = lab_to_linear(np.column_stack([sub[:, 0], sub[:, 1:] * lo[:, None]]))
    return np.clip(lin, 0.0, 1.0), n


def _round_keeping_lightness(lin: np.ndarray, wanted_l: np.ndarray, table: np.ndarray, top: int) -> np.ndarray:
    """Integer code values for linear ``lin``: rounded, and where rounding moved L* by more than a quarter, the
    floor/ceiling combination of the three channels whose L* is nearest ``wanted_l``."""
    exact = srgb_encode(lin) * top
    codes = np.clip(np.rint(exact), 0, top).astype(np.int64)
    off = np.abs(lightness(table[codes] @ _M[1]) - wanted_l) > 0.25
    if off.any():
        lo = np.clip(np.floor(exact[off]), 0, top).astype(np.int64)
        hi = np.clip(lo + 1, 0, top)
        best, best_err = codes[off], np.abs(lightness(table[codes[off]] @ _M[1]) - wanted_l[off])
        for mask in range(8):
            pick = np.array([(mask >> c) & 1 for c in range(3)], dtype=bool)
            trial = np.where(pick, hi, lo)
            err = np.abs(lightness(table[trial] @ _M[1]) - wanted_l[off])
            better = err < best_err - 1e-9
            best, best_err = np.where(better[:, None], trial, best), np.where(better, err, best_err)
        codes[off] = best
    return codes
