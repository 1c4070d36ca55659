"""Stage ``place_in_scene``, backend ``composite``: put a cut-out on a scene, colour or gradient.

The promise shapes the geometry: the subject is never resampled. ``framing.place_subject``
sizes the output around the subject at its native resolution (so the subject box fills
``scale`` of it), the scene is resized to cover that output, and the cut-out is composited 1:1:
every subject pixel with full alpha is bit-identical in the output (unless ``match_light`` > 0,
which is opt-in and recorded).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from ..config import check_colour
from ..errors import PermanentError
from ..pixels import colour_tuple, max_value, to_dtype
from ..schema import as_written, build, opt, read_yaml
from .base import Asset, Stage, define_step, register
from .framing import Box, clamp, cover_transform, place_on_floor, place_subject
from .subject import (SUBJECT_ALPHA, anchor_option, composite, cut_edges, cutout_subject, margin_option,
                      matte_from_alpha, paste_matte, scale_option)

define_step("place_in_scene", "composite", needs=("cutout", "uncropped"), gives=("placed",), takes=("cutout",),
            doc="puts the cut-out on a scene, a colour or a gradient")

_LUMA = np.array([0.2126, 0.7152, 0.0722], dtype=np.float32)


def _check_gradient(value: list[str]) -> str | None:
    if len(value) != 2:
        return f"expected two colours (top, bottom), got {value!r}"
    return next((p for p in map(check_colour, value) if p), None)


@dataclass
class PlaceOptions:
    scene: Path | None = opt(None, doc="background image (path relative to the config file); "
                                      "the output takes its aspect ratio")
    scenes: list[Path] | None = opt(None, check=lambda v: None if v else "expected at least one scene",
                                    doc="several background images instead of one: one variant per scene, each "
                                        "named from its file as a slug (scenes/linen.jpg: {variant} linen; "
                                        "Morning Kitchen.jpg: morning-kitchen)")
    colour: str | None = opt(None, check=check_colour, doc="solid background colour '#rrggbb' instead of a scene")
    gradient: list[str] | None = opt(None, check=_check_gradient,
                                     doc="two colours, top to bottom, for a vertical gradient background")
    anchor: str = anchor_option()
    scale: float = scale_option()
    margin: float = margin_option()
    shadow: str = opt("soft", choices=("soft", "none"), doc="soft contact shadow under the subject's base | none")
    shadow_opacity: float = opt(0.35, min=0.0, max=1.0, doc="how dark the contact shadow is at its centre")
    match_light: float = opt(0.0, min=0.0, max=1.0,
                             doc="shift the subject's white balance toward the scene's (0 = off: "
                                 "the product's colour stays exact)")
    max_scene_enlarge: float = opt(1.25, min=1.0, max=100.0,
                                   doc="warn (log and manifest) when the scene is enlarged more than this to cover "
                                       "an output: it looks softer than the product in front of it")


def enlarged_beyond(k: float, limit: float) -> bool:
    """Whether a scene enlarged ``k`` times is enlarged more than ``max_scene_enlarge`` (``limit``), at the precision
    the warning shows (two decimals): a scene grown up to the limit itself (1.25 × 0.54 / 0.54 is 1.2500000000000002
    in floating point) is not over it, nor is 1.2549, shown as 1.25."""
    return round(k, 2) > limit


def _check_range(value: list[float]) -> str | None:
    if len(value) != 2 or not 0 < value[0] <= value[1] <= 1:
        return f"expected [low, high] with 0 < low <= high <= 1, got {value!r}"
    return None


def _check_area(value: list[float]) -> str | None:
    if len(value) != 4 or not (0 <= value[0] < value[2] <= 1 and 0 <= value[1] < value[3] <= 1):
        return f"expected [x0, y0, x1, y1], fractions of the scene with x0 < x1 and y0 < y1, got {value!r}"
    return None


@dataclass
class SceneSpec:
    """A scene's sidecar (``marble.yaml`` beside ``marble.jpg``): where things can stand in it."""

    floor: float = opt(0.9, min=0.0, max=1.0, doc="the floor line the subject's base stands on, as a fraction of "
                                                  "the scene's height from the top")
    area: list[float] = opt([0.0, 0.0, 1.0, 1.0], check=_check_area,
                            doc="where the subject may be: [x0, y0, x1, y1], fractions of the scene")
    subject_height: list[float] = opt([0.3, 0.7], check=_check_range,
                                      doc="the subject's height as a fraction of the scene's: [low, high]; the "
                                          "step's scale is kept inside it")
    light: str = opt("front", choices=("front", "left", "right", "top"),
                     doc="where the light comes from: the contact shadow falls away from it")


def scene_spec_file(scene: Path) -> Path:
    return scene.with_suffix(".yaml")


def load_scene_spec(scene: Path) -> tuple[SceneSpec | None, list[str]]:
    """The scene's sidecar, or None when it has none; problems name the file and key."""
    path = scene_spec_file(scene)
    if not path.is_file():
        return None, []
    try:
        data = read_yaml(path, "scene sidecar")
    except ValueError as exc:
        return None, [f"scene sidecar {path}: {exc}"]
    errors: list[str] = []
    spec = build(SceneSpec, data, "", errors)
    return spec, [f"scene sidecar {path}: {e}" for e in errors]


# --- pixel helpers --------------------------------------------------------------------------

def load_scene(path: Path, config: Any = None) -> np.ndarray:
    """Decode a scene image as an input is decoded (``imageio``: safe read, bomb checks, orientation, ICC → sRGB),
    as RGB uint8."""
    from ..config import InputConfig
    from ..errors import InputError
    from ..imageio import decode, read_input
    from ..pixels import to_dtype

    import dataclasses

    cfg = dataclasses.replace(config.input if config is not None else InputConfig(), min_signal=0.0)  # a flat
    try:  # colour is a fine scene
        decoded = decode(read_input(path), str(path), cfg)
    except (InputError, OSError) as exc:
        raise PermanentError(f"place_in_scene: cannot read scene {path}: {exc}") from exc
    return np.ascontiguousarray(to_dtype(decoded.pixels[..., :3], np.uint8))


def cover(scene: np.ndarray, width: int, height: int) -> tuple[np.ndarray, float, tuple[int, int]]:
    """Resize ``scene`` to cover width × height and centre-crop it; returns it, the factor used and where the
    window starts in the resized scene."""
    sh, sw = scene.shape[:2]
    k = max(width / sw, height / sh)
    origin = ((max(width, round(sw * k)) - width) // 2, (max(height, round(sh * k)) - height) // 2)
    return scene_cover(scene, k, origin, width, height), k, origin


def gradient_canvas(top: str, bottom: str, width: int, height: int, dtype: Any) -> np.ndarray:
    """A vertical gradient from ``top`` to ``bottom`` (RGB, ``dtype``)."""
    a = np.array(colour_tuple(top[:7], dtype), dtype=np.float32)
    b = np.array(colour_tuple(bottom[:7], dtype), dtype=np.float32)
    t = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None] if height > 1 else np.zeros((1, 1), np.float32)
    rows = np.rint(a + (b - a) * t).astype(dtype)[:, None, :]
    return np.ascontiguousarray(np.broadcast_to(rows, (height, width, 3)))


def contact_shadow(canvas: np.ndarray, base_x0: int, base_x1: int, base_y: int, opacity: float,
                   light: str = "front") -> None:
    """Darken ``canvas`` in place with a soft, flat ellipse centred on the base line (x0..x1, y); with the light
    from the left or right it is longer and falls away from the light.

    Multiplicative (``canvas × (1 - opacity × shadow)``), so texture under it survives.
    """
    h, w = canvas.shape[:2]
    rx = max(2.0, 0.55 * (base_x1 - base_x0)) * (1.4 if light in ("left", "right") else 1.0)
    ry = max(2.0, 0.12 * rx)
    sigma = max(1.0, 0.5 * ry)
    cx = (base_x0 + base_x1) / 2 + {"left": 0.35, "right": -0.35}.get(light, 0.0) * rx
    reach_x, reach_y = int(rx + 3 * sigma) + 1, int(ry + 3 * sigma) + 1
    region = Box(int(cx) - reach_x, base_y - reach_y, int(cx) + reach_x + 1, base_y + reach_y + 1)
    region = region.intersect(Box(0, 0, w, h))
    if region is None:
        return
    mask = np.zeros((region.height, region.width), dtype=np.uint8)
    cv2.ellipse(mask, (round(cx - region.x0), base_y - region.y0), (round(rx), round(ry)), 0, 0, 360, 255, -1)
    shade = soft_blur(mask, sigma) * (opacity / 255.0)
    patch = canvas[region.y0:region.y1, region.x0:region.x1]
    top = max_value(canvas)
    patch[...] = np.clip(np.rint(patch.astype(np.float32) * (1.0 - shade[..., None])), 0, top).astype(canvas.dtype)


SOFT_SIGMA = 4.0  # a wide blur is computed where its sigma is about this many pixels, then enlarged back


def soft_blur(mask: np.ndarray, sigma: float) -> np.ndarray:
    """``mask`` (uint8) blurred by a Gaussian of ``sigma`` px, as float32: for a wide sigma, at a scale where it is
    ``SOFT_SIGMA`` px (area-averaged down by a whole factor, blurred, enlarged back linearly), since a blur that
    wide has no detail to lose: the shade differs from the full-size blur by less than a level. A wide product's
    contact shadow at 24 MP (sigma 130 px) took 18 s at full size.

    The averaging and the enlarging blur a little themselves (about ``factor``²/4 of variance): the blur at the
    small scale is that much narrower."""
    factor = int(sigma // SOFT_SIGMA)
    if factor < 2:
        return cv2.GaussianBlur(mask.astype(np.float32), (0, 0), sigma)
    h, w = mask.shape
    # what lies past the edges is what the full-size blur sees there (reflected), then whole small pixels
    pad = int(np.ceil(3 * sigma / factor)) * factor
    sh, sw = -(-(h + 2 * pad) // factor), -(-(w + 2 * pad) // factor)
    padded = cv2.copyMakeBorder(mask, pad, sh * factor - h - pad, pad, sw * factor - w - pad, cv2.BORDER_REFLECT_101)
    small = cv2.resize(padded, (sw, sh), interpolation=cv2.INTER_AREA).astype(np.float32)
    small = cv2.GaussianBlur(small, (0, 0), np.sqrt(sigma ** 2 - factor ** 2 / 4.0) / factor)
    return cv2.resize(small, (sw * factor, sh * factor), interpolation=cv2.INTER_LINEAR)[pad:pad + h, pad:pad + w]


def light_gains(background: np.ndarray, strength: float) -> np.ndarray:
    """Per-channel gains nudging a subject toward the background's grey-world white balance.

    Luminance-neutral (the gains' luma is 1), blended by ``strength`` (0: all ones).
    """
    sample = background[::8, ::8, :3].reshape(-1, 3).astype(np.float32)
    mean = sample.mean(axis=0) + 1e-6
    cast = mean / mean.mean()
    gains = 1.0 + strength * (cast - 1.0)
    return (gains / float(gains @ _LUMA)).astype(np.float32)


def scene_cover(scene: np.ndarray, scale: float, origin: tuple[float, float], width: int,
                height: int) -> np.ndarray:
    """``scene`` resized by ``scale``, the width × height window whose top-left is at ``origin`` (resized pixels).

    Resized with OpenCV on the integer array (no float copy: outputs reach tens of megapixels)."""
    sh, sw = scene.shape[:2]
    size = (max(width, round(sw * scale)), max(height, round(sh * scale)))
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LANCZOS4
    resized = scene if size == (sw, sh) else cv2.resize(scene, size, interpolation=interp)
    x0 = clamp(round(origin[0]), 0, size[0] - width)
    y0 = clamp(round(origin[1]), 0, size[1] - height)
    return np.ascontiguousarray(resized[y0:y0 + height, x0:x0 + width])


@dataclass
class Backdrop:
    """How ``place_in_scene`` made its background, kept with its output (``Asset.backdrop``): a crop that reaches
    past the composite is composed on the same scene (grown about the subject's base, so the subject keeps its
    place on the floor), colour or gradient instead of extended, with the cut-out pasted 1:1 again.

    Coordinates are the composite's: ``at`` is where the cut-out's (0, 0) lands, the scene (resized by ``scale``)
    has its top-left at ``-crop`` and spans ``extent``.
    """

    size: tuple[int, int]
    cutout: np.ndarray
    at: tuple[int, int]
    base: tuple[float, float]  # the subject's base centre: the scene grows about it
    scene: np.ndarray | None = None
    scale: float = 1.0
    crop: tuple[int, int] = (0, 0)
    colour: str | None = None
    gradient: list[str] | None = None
    shadow: tuple[int, int, int, float, str] | None = None  # base x0, x1, y, opacity, light
    gains: np.ndarray | None = None
    max_enlarge: float = 1.25

    @property
    def extent(self) -> Box:
        if self.scene is None:
            return Box(-10**9, -10**9, 10**9, 10**9)  # a colour or gradient covers anything
        sh, sw = self.scene.shape[:2]
        return Box(-self.crop[0], -self.crop[1], round(sw * self.scale) - self.crop[0],
                   round(sh * self.scale) - self.crop[1])

    def render(self, box: Box) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
        """The frame ``box`` (composite coordinates, may reach past it) composed anew: pixels, matte, notes."""
        dtype = self.cutout.dtype
        w, h = box.width, box.height
        notes: dict[str, Any] = {}
        if self.scene is not None:
            grow, dx, dy = cover_transform(self.extent, self.base, box, max(1.0, self.max_enlarge / self.scale))
            total = self.scale * grow
            bx, by = self.base
            origin = (box.x0 - dx - bx + grow * (self.crop[0] + bx), box.y0 - dy - by + grow * (self.crop[1] + by))
            canvas = to_dtype(scene_cover(self.scene, total, origin, w, h), dtype)
            notes.update(fill="scene", scene_scale=round(total, 4), scene_grown=round(grow, 4),
                         scene_shift=[round(dx), round(dy)])
            if enlarged_beyond(total, self.max_enlarge):
                notes["scene_enlarged"] = round(total, 4)
        elif self.colour is not None:
            canvas = np.empty((h, w, 3), dtype=dtype)
            canvas[...] = colour_tuple(self.colour[:7], dtype)
            notes["fill"] = "colour"
        else:
            full = gradient_canvas(self.gradient[0], self.gradient[1], 1, self.size[1], dtype)[:, 0]
            rows = full[np.clip(np.arange(box.y0, box.y1), 0, self.size[1] - 1)]
            canvas = np.ascontiguousarray(np.broadcast_to(rows[:, None, :], (h, w, 3)))
            notes["fill"] = "gradient"
        ox, oy = self.at[0] - box.x0, self.at[1] - box.y0
        if self.shadow is not None:
            x0, x1, y, opacity, light = self.shadow
            contact_shadow(canvas, x0 - box.x0, x1 - box.x0, y - box.y0, opacity, light)
        composite(canvas, self.cutout, ox, oy, self.gains)
        return canvas, paste_matte(self.cutout[..., 3], (w, h), (ox, oy)), notes


# --- the stage -----------------------------------------------------------------------------

@register
class CompositePlace(Stage):
    """Classical compositing: resize the scene around the subject, never the subject."""

    step = "place_in_scene"
    backend = "composite"
    Options = PlaceOptions
    one_of = (frozenset({"scene", "scenes", "colour", "gradient"}),)

    def __init__(self, options: PlaceOptions, ctx: Any):
        super().__init__(options, ctx)
        self._scene: dict[Path, np.ndarray] | None = None  # decoded scenes, by path

    @classmethod
    def validate(cls, options: PlaceOptions, where: str, ctx_config: Any) -> list[str]:
        given = [k for k in ("scene", "scenes", "colour", "gradient") if getattr(options, k) is not None]
        if len(given) != 1:
            return [f"{where}: set exactly one of scene, scenes, colour or gradient, got "
                    f"{', '.join(given) if given else 'none'}"]
        if options.scene is not None and not options.scene.is_file():
            return [f"{where}.scene: file {options.scene} does not exist"]
        if options.scene is not None:
            return [f"{where}.scene: {p}" for p in load_scene_spec(options.scene)[1]]
        problems: list[str] = []
        named: dict[str, int] = {}
        for i, scene in enumerate(options.scenes or []):
            if not scene.is_file():
                problems.append(f"{where}.scenes[{i}]: file {scene} does not exist")
                continue
            problems.extend(f"{where}.scenes[{i}]: {p}" for p in load_scene_spec(scene)[1])
            first = named.setdefault(scene_variant(scene), i)
            if first != i:
                problems.append(f"{where}.scenes[{i}]: {scene.name} gives the same variant name "
                                f"({scene_variant(scene)}) as scenes[{first}]: each scene's file name names its "
                                "variant, rename one")
        return problems

    @classmethod
    def variants(cls, options: PlaceOptions) -> list[str]:
        """One variant per scene of ``scenes``, named from its file; none for ``scene``, a colour or a gradient."""
        return [scene_variant(s) for s in options.scenes or []]

    def scene_spec(self, scene: Path | None = None) -> SceneSpec | None:
        """A scene's sidecar (``scene``, default the ``scene`` option; checked when the rule loaded), read once per
        stage instance."""
        path = scene or self.options.scene
        if not hasattr(self, "_specs"):
            self._specs: dict[Path, SceneSpec | None] = {}
        if path not in self._specs:
            spec, problems = load_scene_spec(path)
            if problems:
                raise PermanentError(f"place_in_scene: {problems[0]}")
            self._specs[path] = spec
        return self._specs[path]

    def scene_pixels(self, scene: Path | None = None) -> np.ndarray:
        """A decoded scene (``scene``, default the ``scene`` option), read once per stage instance."""
        path = scene or self.options.scene
        if self._scene is None:
            self._scene = {}
        if path not in self._scene:
            self._scene[path] = load_scene(path, self.ctx.config)
        return self._scene[path]

    def run(self, asset: Asset) -> list[Asset]:
        """The cut-out on the scene, colour or gradient; on each of ``scenes``, one asset per scene, each a
        variant named from its scene file (after the variant the asset already is: a colourway's)."""
        if self.options.scenes:
            return [self.place(asset, scene, variant_of(asset.variant, scene_variant(scene)))
                    for scene in self.options.scenes]
        return [self.place(asset, self.options.scene, asset.variant)]

    def place(self, asset: Asset, scene_path: Path | None, variant: str | None) -> Asset:
        """The cut-out ``asset`` on ``scene_path`` (None: on the colour or gradient), as ``variant``."""
        o: PlaceOptions = self.options
        subject = cutout_subject(asset, "place_in_scene")
        pixels = asset.pixels
        top = max_value(pixels)
        alpha = pixels[..., 3]
        cut = asset.notes.get("remove_background", {}).get("cut_edges")
        cut = cut_edges(matte_from_alpha(alpha)) if cut is None else cut
        scene = self.scene_pixels(scene_path) if scene_path is not None else None
        spec = self.scene_spec(scene_path) if scene is not None else None
        if spec is not None:  # the scene says where things stand
            low, high = spec.subject_height
            place, _k = place_on_floor(subject.width, subject.height, scene.shape[1], scene.shape[0],
                                       height=min(max(o.scale, low), high), floor=spec.floor, area=tuple(spec.area),
                                       cut=cut)
        else:
            aspect = scene.shape[1] / scene.shape[0] if scene is not None else asset.width / asset.height
            place = place_subject(subject.width, subject.height, aspect, o.scale, o.margin, o.anchor, cut)
        light = spec.light if spec is not None else "front"
        notes: dict[str, Any] = {"size": [place.out_w, place.out_h], "scale": round(place.scale, 4),
                                 "subject_box": [place.x, place.y, place.x + subject.width, place.y + subject.height]}
        if spec is not None:
            notes["scene_sidecar"] = as_written(scene_spec_file(scene_path), self.ctx.config.base_dir)
        if cut:
            notes["cut_edges"] = list(cut)  # the subject enters from these edges, as in its photo
        ox, oy = place.x - subject.x0, place.y - subject.y0
        backdrop = Backdrop(size=(place.out_w, place.out_h), cutout=pixels, at=(ox, oy),
                            base=((place.x + place.x + subject.width) / 2, place.y + subject.height - 0.5),
                            max_enlarge=o.max_scene_enlarge)
        if scene is not None:
            canvas, k, origin = cover(scene, place.out_w, place.out_h)
            canvas = to_dtype(canvas, pixels.dtype)
            backdrop.scene, backdrop.scale, backdrop.crop = scene, k, origin
            notes.update(scene=as_written(scene_path, self.ctx.config.base_dir), scene_scale=round(k, 4))
            if enlarged_beyond(k, o.max_scene_enlarge):
                notes["scene_enlarged"] = round(k, 4)
                if self.ctx.once(("scene enlarged", scene_path)):  # once per job: each colourway is enlarged alike
                    self.ctx.log.warning("place_in_scene: %s: scene %s enlarged %.2f× to cover the output (more "
                                         "than max_scene_enlarge %g): it looks softer than the product; use a larger "
                                         "scene image", asset.source or "image", scene_path.name, k,
                                         o.max_scene_enlarge)
        elif o.colour is not None:
            canvas = np.empty((place.out_h, place.out_w, 3), dtype=pixels.dtype)
            canvas[...] = colour_tuple(o.colour[:7], pixels.dtype)
            backdrop.colour = o.colour
            notes.update(colour=o.colour)
        else:
            canvas = gradient_canvas(o.gradient[0], o.gradient[1], place.out_w, place.out_h, pixels.dtype)
            backdrop.gradient = list(o.gradient)
            notes.update(gradient=list(o.gradient))
        if o.shadow == "soft" and o.shadow_opacity > 0 and "bottom" not in cut:  # no floor under a cut edge
            x0, x1 = base_span(alpha, subject, int(SUBJECT_ALPHA * top))
            backdrop.shadow = (x0 + ox, x1 + ox, subject.y1 + oy, o.shadow_opacity, light)
            contact_shadow(canvas, *backdrop.shadow)
            notes["shadow"] = {"opacity": o.shadow_opacity, "base": [x0 + ox, x1 + ox, subject.y1 + oy]}
        gains = light_gains(canvas, o.match_light) if o.match_light > 0 else None
        if gains is not None:
            backdrop.gains = gains
            notes["match_light"] = {"strength": o.match_light, "gains": [round(float(g), 4) for g in gains]}
        if variant != asset.variant:
            notes["variant"] = variant
        composite(canvas, pixels, ox, oy, gains)
        out = asset.derive(canvas, paste_matte(alpha, (place.out_w, place.out_h), (ox, oy)), backdrop=backdrop,
                           variant=variant)
        out.notes["place_in_scene"] = notes
        return out


def scene_variant(scene: Path) -> str:
    """The variant a scene of ``scenes`` makes: its file's name without the extension, as a lower-case ASCII slug
    (scenes/linen.jpg: linen; "Morning Kitchen.jpg": morning-kitchen), since it goes into output file names;
    "scene" when nothing of the name is left."""
    from ..outputs import web_safe  # outputs imports the stages

    return web_safe(scene.stem) or "scene"


def variant_of(before: str | None, name: str) -> str:
    """The variant an asset of variant ``before`` becomes when a step makes variant ``name`` of it: both, joined
    by ``-`` (a colourway on a scene: green-linen), or ``name`` when it was the only one."""
    return f"{before}-{name}" if before else name


def base_span(alpha: np.ndarray, subject: Box, threshold: int) -> tuple[int, int]:
    """Columns (x0, x1) the subject occupies in its bottom few rows: where it touches the ground."""
    rows = max(1, round(0.03 * subject.height))
    bottom = alpha[subject.y1 - rows:subject.y1, subject.x0:subject.x1] > threshold
    cols = np.flatnonzero(bottom.any(axis=0))
    if cols.size == 0:
        return subject.x0, subject.x1
    return subject.x0 + int(cols[0]), subject.x0 + int(cols[-1]) + 1
