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
from PIL import Image, ImageOps

from ..config import check_colour
from ..errors import PermanentError
from ..pixels import colour_tuple, max_value, to_dtype
from ..schema import as_written, opt
from .base import Asset, Stage, define_step, register
from .framing import Box, Placement, place_subject
from .subject import (SUBJECT_ALPHA, anchor_option, composite, cutout_subject, margin_option, paste_matte,
                      scale_option)

define_step("place_in_scene", "composite", needs=("cutout", "uncropped"), takes=("cutout",),
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


# --- pixel helpers --------------------------------------------------------------------------

def load_scene(path: Path) -> np.ndarray:
    """Decode a scene image as RGB uint8 with its EXIF orientation applied."""
    try:
        with Image.open(path) as img:
            img = ImageOps.exif_transpose(img)
            return np.asarray(img.convert("RGB")).copy()
    except (OSError, ValueError) as exc:
        raise PermanentError(f"place_in_scene: cannot read scene {path}: {exc}") from exc


def cover(scene: np.ndarray, width: int, height: int) -> tuple[np.ndarray, float]:
    """Resize ``scene`` to cover width × height and centre-crop it; returns it and the factor used.

    Resized with OpenCV on the integer array (no float copy: outputs reach tens of megapixels).
    """
    sh, sw = scene.shape[:2]
    k = max(width / sw, height / sh)
    size = (max(width, round(sw * k)), max(height, round(sh * k)))
    interp = cv2.INTER_AREA if k < 1 else cv2.INTER_LANCZOS4
    resized = scene if size == (sw, sh) else cv2.resize(scene, size, interpolation=interp)
    x0, y0 = (size[0] - width) // 2, (size[1] - height) // 2
    return np.ascontiguousarray(resized[y0:y0 + height, x0:x0 + width]), k


def gradient_canvas(top: str, bottom: str, width: int, height: int, dtype: Any) -> np.ndarray:
    """A vertical gradient from ``top`` to ``bottom`` (RGB, ``dtype``)."""
    a = np.array(colour_tuple(top[:7], dtype), dtype=np.float32)
    b = np.array(colour_tuple(bottom[:7], dtype), dtype=np.float32)
    t = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None] if height > 1 else np.zeros((1, 1), np.float32)
    rows = np.rint(a + (b - a) * t).astype(dtype)[:, None, :]
    return np.ascontiguousarray(np.broadcast_to(rows, (height, width, 3)))


def contact_shadow(canvas: np.ndarray, base_x0: int, base_x1: int, base_y: int, opacity: float) -> None:
    """Darken ``canvas`` in place with a soft, flat ellipse centred on the base line (x0..x1, y).

    Multiplicative (``canvas × (1 - opacity × shadow)``), so texture under it survives.
    """
    h, w = canvas.shape[:2]
    rx = max(2.0, 0.55 * (base_x1 - base_x0))
    ry = max(2.0, 0.12 * rx)
    sigma = max(1.0, 0.5 * ry)
    cx = (base_x0 + base_x1) / 2
    reach_x, reach_y = int(rx + 3 * sigma) + 1, int(ry + 3 * sigma) + 1
    region = Box(int(cx) - reach_x, base_y - reach_y, int(cx) + reach_x + 1, base_y + reach_y + 1)
    region = region.intersect(Box(0, 0, w, h))
    if region is None:
        return
    mask = np.zeros((region.height, region.width), dtype=np.uint8)
    cv2.ellipse(mask, (round(cx - region.x0), base_y - region.y0), (round(rx), round(ry)), 0, 0, 360, 255, -1)
    shade = cv2.GaussianBlur(mask.astype(np.float32) * (opacity / 255.0), (0, 0), sigma)
    patch = canvas[region.y0:region.y1, region.x0:region.x1]
    top = max_value(canvas)
    patch[...] = np.clip(np.rint(patch.astype(np.float32) * (1.0 - shade[..., None])), 0, top).astype(canvas.dtype)


def light_gains(background: np.ndarray, strength: float) -> np.ndarray:
    """Per-channel gains nudging a subject toward the background's grey-world white balance.

    Luminance-neutral (the gains' luma is 1), blended by ``strength`` (0: all ones).
    """
    sample = background[::8, ::8, :3].reshape(-1, 3).astype(np.float32)
    mean = sample.mean(axis=0) + 1e-6
    cast = mean / mean.mean()
    gains = 1.0 + strength * (cast - 1.0)
    return (gains / float(gains @ _LUMA)).astype(np.float32)


# --- the stage -----------------------------------------------------------------------------

@register
class CompositePlace(Stage):
    """Classical compositing: resize the scene around the subject, never the subject."""

    step = "place_in_scene"
    backend = "composite"
    Options = PlaceOptions

    def __init__(self, options: PlaceOptions, ctx: Any):
        super().__init__(options, ctx)
        self._scene: np.ndarray | None = None

    @classmethod
    def validate(cls, options: PlaceOptions, where: str, ctx_config: Any) -> list[str]:
        given = [k for k in ("scene", "colour", "gradient") if getattr(options, k) is not None]
        if len(given) != 1:
            return [f"{where}: set exactly one of scene, colour or gradient, got "
                    f"{', '.join(given) if given else 'none'}"]
        if options.scene is not None and not options.scene.is_file():
            return [f"{where}.scene: file {options.scene} does not exist"]
        return []

    def scene_pixels(self) -> np.ndarray:
        """The decoded scene, read once per stage instance."""
        if self._scene is None:
            self._scene = load_scene(self.options.scene)
        return self._scene

    def run(self, asset: Asset) -> list[Asset]:
        o: PlaceOptions = self.options
        subject = cutout_subject(asset, "place_in_scene")
        pixels = asset.pixels
        top = max_value(pixels)
        alpha = pixels[..., 3]
        scene = self.scene_pixels() if o.scene is not None else None
        aspect = scene.shape[1] / scene.shape[0] if scene is not None else asset.width / asset.height
        place: Placement = place_subject(subject.width, subject.height, aspect, o.scale, o.margin, o.anchor)
        notes: dict[str, Any] = {"size": [place.out_w, place.out_h], "scale": round(place.scale, 4),
                                 "subject_box": [place.x, place.y, place.x + subject.width, place.y + subject.height]}
        if scene is not None:
            canvas, k = cover(scene, place.out_w, place.out_h)
            canvas = to_dtype(canvas, pixels.dtype)
            notes.update(scene=as_written(o.scene, self.ctx.config.base_dir), scene_scale=round(k, 4))
        elif o.colour is not None:
            canvas = np.empty((place.out_h, place.out_w, 3), dtype=pixels.dtype)
            canvas[...] = colour_tuple(o.colour[:7], pixels.dtype)
            notes.update(colour=o.colour)
        else:
            canvas = gradient_canvas(o.gradient[0], o.gradient[1], place.out_w, place.out_h, pixels.dtype)
            notes.update(gradient=list(o.gradient))
        ox, oy = place.x - subject.x0, place.y - subject.y0
        if o.shadow == "soft" and o.shadow_opacity > 0:
            x0, x1 = base_span(alpha, subject, int(SUBJECT_ALPHA * top))
            contact_shadow(canvas, x0 + ox, x1 + ox, subject.y1 + oy, o.shadow_opacity)
            notes["shadow"] = {"opacity": o.shadow_opacity, "base": [x0 + ox, x1 + ox, subject.y1 + oy]}
        gains = light_gains(canvas, o.match_light) if o.match_light > 0 else None
        if gains is not None:
            notes["match_light"] = {"strength": o.match_light, "gains": [round(float(g), 4) for g in gains]}
        composite(canvas, pixels, ox, oy, gains)
        out = asset.derive(canvas, paste_matte(alpha, (place.out_w, place.out_h), (ox, oy)))
        out.notes["place_in_scene"] = notes
        return [out]


def base_span(alpha: np.ndarray, subject: Box, threshold: int) -> tuple[int, int]:
    """Columns (x0, x1) the subject occupies in its bottom few rows: where it touches the ground."""
    rows = max(1, round(0.03 * subject.height))
    bottom = alpha[subject.y1 - rows:subject.y1, subject.x0:subject.x1] > threshold
    cols = np.flatnonzero(bottom.any(axis=0))
    if cols.size == 0:
        return subject.x0, subject.x1
    return subject.x0 + int(cols[0]), subject.x0 + int(cols[-1]) + 1
