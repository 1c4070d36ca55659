"""Stage ``tone_match``, backend ``global``: warm or cool, brighten or darken the placed subject a little toward
the light of the scene it was placed in: a bounded, recorded change of the subject's pixels.

Every other step keeps the subject's pixels; this one changes them on purpose, so it is off unless a rule lists it,
it runs only after ``place_in_scene`` (the fact ``placed``), and what it did is in the manifest (``changes_subject:
true``, the gains, the largest ΔE2000 it applied) and on the review page beside the subject check.

The scene is known by what shows of it: the image's pixels outside the subject's matte (``place_in_scene``'s scene,
colour or gradient, its contact shadow included), whichever backend made it and whatever ran between. Its
illuminant is estimated by shades of grey (the Minkowski p-norm of linear light, between grey world and white
patch); its exposure by its log-average luminance against middle grey. The change is one set of per-channel gains
in linear light (white balance × exposure), the same for every subject pixel, scaled down as a whole until no
subject pixel moves more than ``max_delta_e`` (CIEDE2000, measured on the values written). Pixels outside the matte
are never touched; the subject's soft edge moves in proportion to its coverage.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..lab import LUMA, delta_e2000, srgb_decode, srgb_encode, srgb_to_lab
from ..pixels import max_value
from ..schema import opt
from .base import Asset, Stage, define_step, register

define_step("tone_match", "global", needs=("placed", "uncropped"),
            doc="moves the subject's white balance and exposure a bounded step toward the scene's light")

MIDDLE_GREY = 0.18  # linear luminance a scene of normal exposure averages (log-mean); the exposure's reference
SHADES_OF_GREY_P = 6  # Minkowski norm of the illuminant estimate (Finlayson & Trezzi 2004: 6 does well)
SCENE_SAMPLES = 250_000  # scene pixels sampled for its statistics: plenty for a mean, quick at any size
MIN_SCENE_SHARE = 0.02  # less of the image outside the subject than this: no scene to match, nothing changes
_ROUNDS = 40  # scale-downs tried before giving up (no change at all then)


@dataclass
class ToneOptions:
    strength: float = opt(0.5, min=0.0, max=1.0,
                          doc="how far toward the scene's light: 0 leaves the subject exact, 1 takes the scene's "
                              "whole colour cast and exposure (before the bounds below)")
    max_delta_e: float = opt(5.0, min=0.1, max=30.0,
                             doc="the most any subject pixel may change, in CIEDE2000 (1: barely visible side by "
                                 "side; 5: clearly warmer or cooler); the whole change is scaled down to keep it")
    max_stops: float = opt(0.33, min=0.0, max=2.0,
                           doc="the most the exposure moves, in stops (0: white balance only)")


@dataclass(frozen=True)
class SceneLight:
    """What the scene's pixels say about its light: the illuminant's colour (linear RGB, luminance 1) and the
    log-average luminance."""

    cast: np.ndarray
    key: float


def scene_light(pixels: np.ndarray, matte: np.ndarray) -> SceneLight | None:
    """The light of the scene around the subject (the pixels where ``matte`` is 0); None when too little of it
    shows."""
    h, w = matte.shape
    step = max(1, math.isqrt(max(1, h * w // SCENE_SAMPLES)))
    outside = matte[::step, ::step] == 0
    count = int(outside.sum())
    if count < max(16, MIN_SCENE_SHARE * outside.size):
        return None
    sample = pixels[::step, ::step, :3][outside].astype(np.float64) / max_value(pixels)
    linear = srgb_decode(sample)
    illuminant = np.power(np.mean(np.power(linear, SHADES_OF_GREY_P), axis=0), 1 / SHADES_OF_GREY_P) + 1e-6
    key = float(np.exp(np.mean(np.log(linear @ LUMA + 1e-4))))
    return SceneLight(cast=illuminant / float(illuminant @ LUMA), key=key)


def tone_gains(light: SceneLight, strength: float, max_stops: float) -> tuple[np.ndarray, float]:
    """Per-channel linear gains taking a neutrally lit subject ``strength`` of the way to the scene's light: the
    white balance (luminance-neutral) times the exposure; and the exposure in stops (within ``max_stops``)."""
    balance = np.power(light.cast, strength)
    balance = balance / float(balance @ LUMA)
    stops = float(np.clip(strength * math.log2(light.key / MIDDLE_GREY), -max_stops, max_stops))
    return balance * 2.0 ** stops, stops


class _Colours:
    """The distinct (colour, coverage) pairs among the subject's pixels: the change is computed and measured once
    per pair, not per pixel, and exactly on the values that will be written."""

    def __init__(self, rgb: np.ndarray, weight: np.ndarray, top: int):
        bits = 16 if top > 255 else 8
        shifts = [np.uint64(8 + bits * (2 - c)) for c in range(3)]  # r, g, b above the 8 bits of the coverage
        keys = weight.astype(np.uint64)
        for c in range(3):
            keys |= rgb[:, c].astype(np.uint64) << shifts[c]
        self.keys, self.inverse = np.unique(keys, return_inverse=True)
        self.rgb = np.stack([(self.keys >> shifts[c]) & np.uint64(top) for c in range(3)], axis=-1) / top
        self.weight = (self.keys & np.uint64(255)).astype(np.float64)[:, None] / 255.0
        self.lab = srgb_to_lab(self.rgb)
        self.top = top

    def changed(self, gains: np.ndarray, which: np.ndarray | slice = slice(None)) -> tuple[np.ndarray, np.ndarray]:
        """The values written for the pairs ``which`` under ``gains`` (integers) and their ΔE2000 from the
        original."""
        rgb = self.rgb[which]
        full = srgb_encode(np.clip(srgb_decode(rgb) * gains, 0.0, 1.0))
        written = np.rint((rgb + self.weight[which] * (full - rgb)) * self.top)
        return written, delta_e2000(self.lab[which], srgb_to_lab(written / self.top))


def bounded_scale(colours: _Colours, gains: np.ndarray, max_delta_e: float) -> tuple[float, np.ndarray, np.ndarray]:
    """The largest share ``t`` of the change (gains ** t, to within 1 %) under which no pair moves more than
    ``max_delta_e``; returns t, the written values and their ΔE. Searched on the pairs that could exceed the bound
    (ΔE grows with t, about in proportion: a pair under it at t = 1 stays under it below), then confirmed on all.
    t = 0 (no change) when no share keeps the bound (rounding alone can exceed a tiny one)."""
    log_gains = np.log(gains)
    written, de = colours.changed(gains)
    if de.max(initial=0.0) <= max_delta_e:
        return 1.0, written, de
    at_one = de

    def worst(t: float, which: np.ndarray) -> float:
        return float(colours.changed(np.exp(t * log_gains), which)[1].max(initial=0.0))

    for watch in (np.flatnonzero(at_one > max_delta_e), np.arange(len(colours.keys))):  # all: a rare second try
        hi, above = 1.0, float(at_one.max())
        for _ in range(_ROUNDS):  # scale down until it fits (the first guess usually does: ΔE is about linear in t)
            lo = hi * min(0.97, max(0.1, 0.99 * max_delta_e / above))
            part = colours.changed(np.exp(lo * log_gains), watch)[1]
            above = float(part.max(initial=0.0))
            if above <= max_delta_e:
                break
            hi = lo
        else:
            break
        watch = watch[part * (hi / lo) > 0.75 * max_delta_e]  # those that could exceed it between lo and hi
        while hi - lo > 0.01 * hi:  # then as far back up as it still fits
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if worst(mid, watch) <= max_delta_e else (lo, mid)
        written, de = colours.changed(np.exp(lo * log_gains))
        if de.max(initial=0.0) <= max_delta_e:
            return lo, written, de
    return 0.0, np.rint(colours.rgb * colours.top), np.zeros(len(colours.keys))


@register
class GlobalToneMatch(Stage):
    """One white balance and exposure change for the whole subject, bounded per pixel in ΔE2000."""

    step = "tone_match"
    backend = "global"
    Options = ToneOptions

    def run(self, asset: Asset) -> list[Asset]:
        o: ToneOptions = self.options
        notes: dict[str, Any] = {"changes_subject": False, "strength": o.strength, "max_delta_e": o.max_delta_e}
        matte = asset.matte
        light = scene_light(asset.pixels, matte) if matte is not None and matte.any() else None
        if light is None:
            notes["skipped"] = "no subject matte" if matte is None or not matte.any() else \
                "too little scene shows around the subject to match"
            self.ctx.log.info("tone_match: %s: %s: the subject is left as it is", asset.source or "image",
                              notes["skipped"])
            return [_unchanged(asset, notes)]
        gains, stops = tone_gains(light, o.strength, o.max_stops)
        notes["scene"] = {"cast": _rounded(light.cast), "key": round(light.key, 4)}
        if np.allclose(gains, 1.0, rtol=0, atol=1e-6):  # strength 0, or a neutral scene of normal exposure
            return [_unchanged(asset, notes)]
        pixels, top = asset.pixels, max_value(asset.pixels)
        inside = matte > 0
        rgb, weight = pixels[..., :3][inside], matte[inside]
        cutout = self._cutout_colours(asset.backdrop, pixels.dtype)
        if cutout is not None:  # bounded too: a crop composed anew on the scene shows them (see _cutout_colours)
            rgb = np.concatenate([rgb, cutout[0]])
            weight = np.concatenate([weight, np.full(len(cutout[0]), 255, np.uint8)])
        colours = _Colours(rgb, weight, top)
        t, written, de = bounded_scale(colours, gains, o.max_delta_e)
        applied = np.exp(t * np.log(gains))
        values = written.astype(pixels.dtype)[colours.inverse]
        n = int(inside.sum())
        toned = pixels.copy()
        toned[..., :3][inside] = values[:n]
        counts = np.bincount(colours.inverse[:n], minlength=len(colours.keys))
        shown = de[counts > 0]
        notes.update(changes_subject=bool(shown.max(initial=0.0) > 0), gains=_rounded(applied),
                     exposure_stops=round(t * stops, 4), share_applied=round(t, 4),
                     delta_e_max=round(float(shown.max(initial=0.0)), 3),
                     delta_e_mean=round(float(de @ counts / max(1, counts.sum())), 3))
        if t < 1:
            notes["asked_gains"] = _rounded(gains)
        backdrop = None
        if cutout is not None:
            toned_cutout = asset.backdrop.cutout.copy()
            toned_cutout[..., :3][cutout[1]] = values[n:]
            backdrop = dataclasses.replace(asset.backdrop, cutout=toned_cutout, gains=None)
        out = asset.derive(toned, matte, backdrop=backdrop)
        out.notes["tone_match"] = notes
        return [out]

    @staticmethod
    def _cutout_colours(backdrop: Any, dtype: np.dtype) -> tuple[np.ndarray, np.ndarray] | None:
        """The colours of ``place_in_scene``'s cut-out (``Asset.backdrop``) where it is not transparent, as
        ``composite()`` puts them on the scene (with ``match_light``'s gains), and where they are; None when there is
        no backdrop. The step changes them as it changes the subject, so a crop that composes a frame anew on the
        scene shows the subject as this step left it (without one, crops extends the image instead)."""
        cutout = getattr(backdrop, "cutout", None)
        if cutout is None or cutout.dtype != dtype:
            return None
        where = cutout[..., 3] > 0
        rgb = cutout[..., :3][where]
        if getattr(backdrop, "gains", None) is not None:
            fg = rgb.astype(np.float32) * backdrop.gains
            rgb = np.rint(np.clip(fg, 0, max_value(cutout))).astype(dtype)
        return rgb, where


def _unchanged(asset: Asset, notes: dict[str, Any]) -> Asset:
    """The asset as it came, with the step's notes: its backdrop kept (crops composes frames anew on it)."""
    out = asset.derive(asset.pixels, asset.matte, backdrop=asset.backdrop)
    out.notes["tone_match"] = notes
    return out


def _rounded(values: np.ndarray) -> list[float]:
    return [round(float(v), 4) for v in values]
