"""Thumbnails, previews and the subject check of the review page: made once per file, cached by content.

A file the store knows (a job's input, an output) is decoded once through ``pipeline.imageio`` (the chain's own
decode: RAW, HEIC, 16-bit TIFF, CMYK JPEG, orientation applied) into a thumbnail (``THUMB`` px long edge) and a
preview (``PREVIEW`` px), both cached in ``config.previews_folder`` under the file's sha256 from the store; a
later request reads the cached file. Before a cached image is served as a file, the file is checked to still
hold the recorded bytes: hashed once, then trusted while its size, mtime, ctime and inode stay as they were when
hashed (a stamp beside the cache). A file that changed (edited, replaced by a later job, gone) is never shown as
the record: ``NotServed`` says why.

The daemon makes a finished job's images when the job ends (``PreviewMaker``: one low-priority thread beside
the workers, so the morning's first view reads the cache) when the page is surely in use (``wanted``); a problem
there is logged and the page makes the image at its first request, as it always can.

The subject check (``subject_check``) is the visual proof of "edit, not regenerate": it finds where the input,
resized by the output's recorded scale, lies in the output and marks the subject's pixels that equal the
input's in one colour and those that differ in another. The subject is exactly what the chain cut out: the
worker keeps the cut-out step's matte of each job's input in the cache (``keep_matte``, whenever the cache
folder can be written: ``keeps_mattes``); a job without one (run by an earlier assetd, or where the cache could
not be written) falls back to its cut-out output's alpha, else to where the input is not background-like (the
backdrop's colour, or that colour in shadow: the photo's contact shadow is not subject).
"""
from __future__ import annotations

import collections
import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import queue
import shutil
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import cv2
import numpy as np

from .imageio import decode, read_input
from .errors import AssetdError
from .lab import srgb_decode, srgb_encode, srgb_to_lab
from .outputs import atomic_write
from .pixels import resize, to_dtype
from .text import printable

if TYPE_CHECKING:
    from .config import Config
    from .store import Job, Store

log = logging.getLogger("assetd.previews")

THUMB = 240  # long edge of a thumbnail (the night view's rows, the contact sheet)
PREVIEW = 1600  # long edge of a preview (the job page's side-by-side, the slider)
SIZES = {"thumb": THUMB, "preview": PREVIEW}
CHECK_EDGE = PREVIEW  # the subject check overlay is drawn at preview size
LOSSY = ("jpeg", "webp")
# How far an output pixel may be from the input's and still count as equal, in 8-bit levels (per channel): a
# lossless output only by rounding, a lossy one by its codec too (chroma subsampling at sharp colour edges).
TOLERANCE_LOSSLESS = 4
TOLERANCE_LOSSY = 12
# A resampled output (scale ≠ 1) may also differ by resampling error, which the chain's path (a whole frame
# enlarged and sharpened, then fitted to the channel's size) makes and one resize of the input does not
# repeat: at most this share of the input's local range (3×3 neighbourhood) more. A painted or regenerated
# subject differs far more than that, except exactly on its sharpest edges.
RESAMPLE_SLACK = 0.5
EQUAL_COLOUR = (40, 200, 90)  # subject pixels equal to the input's
DIFFER_COLOUR = (235, 30, 160)  # subject pixels that differ, and no recorded step says they may
PURPOSE_COLOUR = (245, 170, 20)  # subject pixels a step changed on purpose, as its manifest notes say it did
# A recolour keeps each pixel's L* within 0.5; measured on 8-bit values one level moves L* by at most about 0.5.
LIGHTNESS_KEPT = 0.5
LIGHTNESS_PER_LEVEL = 0.5


# Cache entries being made: the page asks for several images of one file at once. A fixed set of locks (an
# entry takes the one its key hashes to), so concurrent requests decode a file once, and memory stays bounded.
_MAKING = [threading.Lock() for _ in range(64)]


def _once(key: str) -> threading.Lock:
    """The lock of one cache entry, so concurrent requests for it decode the file once, not once each."""
    return _MAKING[int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) % len(_MAKING)]


class NotServed(AssetdError):
    """A file the page cannot show as its record (unknown id, the file gone or changed): the 404's reason."""


@dataclass
class Source:
    """A file the store knows: where it is now and the sha256 recorded for it."""
    path: Path
    sha256: str
    what: str  # for messages: "output 12" / "input of job 3"


@dataclass
class Expected:
    """What an output's manifest notes say changed its subject on purpose, as the subject check can verify it:
    one set of gains for every subject pixel (``tone_match`` in linear light, after ``place_in_scene``'s
    ``match_light`` on the values), hue and chroma moved with the lightness kept (``recolor``), and the pixels
    a painted remove mask covers (``retouch``). ``names`` say which, for the share line and the legend."""
    names: list[str]
    value_gains: np.ndarray | None = None  # match_light: rgb × gains, on the 0..255 values
    linear_gains: np.ndarray | None = None  # tone_match: in linear light
    max_delta_e: float = 0.0  # tone_match's bound: the lightness check's slack on a recoloured pixel toned after
    lightness_kept: bool = False  # recolor
    painted: np.ndarray | None = None  # retouch: the remove mask (the input's pixels, bool), where it reached

    def target(self, rgb: np.ndarray) -> np.ndarray:
        """``rgb`` (8-bit values, int16) as the recorded gains change it (one lookup table per channel)."""
        levels = np.arange(256, dtype=np.float64)
        out = np.empty_like(rgb)
        for c in range(3):
            lut = levels
            if self.value_gains is not None:
                lut = np.clip(np.rint(lut * self.value_gains[c]), 0, 255)
            if self.linear_gains is not None:
                lut = np.rint(srgb_encode(np.clip(srgb_decode(lut / 255) * self.linear_gains[c], 0, 1)) * 255)
            out[..., c] = lut.astype(np.int16)[rgb[..., c]]
        return out


def expected_change(steps: dict[str, Any], input_path: Path | None = None,
                    input_size: tuple[int, int] | None = None) -> Expected | None:
    """What ``steps`` (an output's notes in its manifest) record as changing the subject on purpose, or None.
    The remove mask is read beside ``input_path`` (the input where it is now); a mask that is gone or of another
    size leaves the painted pixels to show as differing."""
    names: list[str] = []
    found = Expected(names)
    ps = steps.get("place_in_scene") or {}
    light = (ps.get("match_light") or {}).get("gains") if isinstance(ps.get("match_light"), dict) else None
    if _gains(light) is not None:
        found.value_gains = _gains(light)
        names.append("light match")
    tm = steps.get("tone_match") or {}
    if tm.get("changes_subject") and _gains(tm.get("gains")) is not None:
        found.linear_gains = _gains(tm["gains"])
        found.max_delta_e = float(tm.get("max_delta_e") or 0.0)
        names.append("tone match")
    rc = steps.get("recolor") or {}
    if rc and not rc.get("untouched"):
        found.lightness_kept = True
        names.append("recolor")
    rt = steps.get("retouch") or {}
    if rt.get("subject_pixels") and input_path is not None and input_size is not None:
        from .stages.masks import MaskError, read_sidecar

        try:
            mask = read_sidecar(input_path, "remove", input_size)
        except MaskError:
            mask = None
        if mask is not None:
            found.painted = mask >= 128  # what retouch removes (a soft edge's faint fringe is not)
            names.append("painted removal")
    return found if names else None


def _gains(value: Any) -> np.ndarray | None:
    """Three positive gains from a manifest, or None (absent, or a manifest edited by hand)."""
    try:
        gains = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        return None
    return gains if gains.shape == (3,) and np.isfinite(gains).all() and (gains > 0).all() else None


@dataclass
class CheckResult:
    """The subject check of one output against its input."""
    equal: float | None  # the fraction of the subject's pixels equal to the input's (None: no subject found)
    subject_pixels: int  # how many output pixels the subject covers (the opaque interior compared)
    offset: tuple[int, int] | None  # where the resized input's subject box lies in the output (x, y)
    mask: str  # where the subject came from: "output alpha", "chain matte", "cut-out matte", "not background-like"
    tolerance: int  # 8-bit levels
    note: str = ""  # why there is no figure, when there is none
    origin: tuple[int, int] | None = None  # where the resized input's top-left corner lies in the output (x, y)
    png: bytes = b""  # the overlay: the output dimmed, the subject's equal / differing pixels coloured
    on_purpose: float | None = None  # the fraction changed as a recorded step says (None: no such step)
    purpose: str = ""  # those steps: "tone match", "recolor, tone match"

    def share_line(self) -> str:
        """The figure the page shows beside the check, in words: never "100 % equal" for a subject a recorded
        step changed on purpose. ASCII (an HTTP header carries it)."""
        if self.equal is None:
            return self.note or "no subject found to compare"
        if not self.purpose:
            return f"{100 * self.equal:.2f}% of the subject equals the input"
        changed = self.on_purpose or 0.0
        return (f"{100 * (self.equal + changed):.2f}% of the subject equals the input except the recorded "
                f"{self.purpose} ({100 * changed:.2f}% changed as recorded)")

    def figures(self) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self).items() if k != "png"}


# -- which file, and is it still the recorded one -------------------------------------------------

def output_source(store: Store, output_id: int) -> tuple[dict[str, Any], Source]:
    """An output's row and its file (the staged file while it waits for approval), or NotServed."""
    row = store.output_row(output_id)
    if row is None or not row.get("sha256"):
        raise NotServed(f"output {output_id}: no such output")
    if row.get("replaced_by"):
        raise NotServed(f"output {output_id}: {printable(row['path'])} was written again by job {row['replaced_by']}"
                        "; this record's file is history")
    path = row.get("staged_path") or row["path"]
    return row, Source(Path(path), row["sha256"], f"output {output_id}")


def input_source(store: Store, job_id: int) -> tuple[Job, Source]:
    """A job's input where it is now (its inbox, or where ``after: move`` put it), or NotServed."""
    job = store.get(job_id)
    if job is None:
        raise NotServed(f"job {job_id}: no such job")
    if not job.readable:
        raise NotServed(f"job {job_id}: its input {printable(job.input_path)} could not be read when it was queued")
    moved = store.moved(job_id)
    return job, Source(Path(moved.dest if moved else job.input_path), job.input_hash, f"input of job {job_id}")


def _stamp(st: os.stat_result) -> list[int]:
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]


def verify(config: Config, source: Source) -> None:
    """NotServed unless ``source.path`` holds the recorded bytes. Hashed once; trusted afterwards while the file's
    size, mtime, ctime and inode are unchanged (a rewrite, a rename over it or a touch changes ctime)."""
    shown = printable(str(source.path))
    try:
        st = os.stat(source.path, follow_symlinks=False)
    except OSError:
        raise NotServed(f"{source.what}: {shown} is no longer there") from None
    stamps_file = _cache_path(config, source.sha256, "seen.json")
    try:
        stamps = json.loads(stamps_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        stamps = {}
    if stamps.get(str(source.path)) == _stamp(st):
        return
    try:
        data = read_input(source.path)
    except AssetdError:
        raise NotServed(f"{source.what}: {shown} cannot be read") from None
    if hashlib.sha256(data).hexdigest() != source.sha256:
        raise NotServed(f"{source.what}: {shown} has changed since it was recorded (its sha256 differs); "
                        "not shown as the record")
    stamps[str(source.path)] = _stamp(st)
    atomic_write(stamps_file, json.dumps(stamps).encode())


# -- the cache ------------------------------------------------------------------------------------

def _cache_file(config: Config, sha256: str, suffix: str) -> Path:
    """Where the cache keeps ``suffix`` (a view, a check, a matte) of the file with ``sha256``: the one layout."""
    return config.previews_folder / sha256[:2] / f"{sha256}-{suffix}"


def _cache_path(config: Config, sha256: str, suffix: str) -> Path:
    """``_cache_file``, its folder made (to write it)."""
    path = _cache_file(config, sha256, suffix)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def kept_view(config: Config, sha256: str | None, kind: str) -> Path | None:
    """The thumbnail or preview the cache still holds of the file recorded with ``sha256``, or None; nothing is
    made. For an output a later job wrote again: its picture was made from the recorded bytes while they were
    there, so it shows that history as it was."""
    if not sha256 or kind not in SIZES:
        return None
    path = _cache_file(config, sha256, f"{SIZES[kind]}.webp")
    return path if path.is_file() else None


def _decoded(config: Config, source: Source) -> np.ndarray:
    """The file's pixels as the chain decodes them (sRGB, upright; uint8 or uint16, RGB or RGBA)."""
    data = read_input(source.path)
    if hashlib.sha256(data).hexdigest() != source.sha256:
        raise NotServed(f"{source.what}: {printable(str(source.path))} has changed since it was recorded")
    return decode(data, str(source.path), config.input).pixels


def _encode_view(pixels: np.ndarray, long_edge: int) -> bytes:
    """An 8-bit WebP of at most ``long_edge`` px (alpha kept: the page draws a checkerboard under it)."""
    h, w = pixels.shape[:2]
    if max(w, h) > long_edge:
        f = long_edge / max(w, h)
        pixels = resize(pixels, (max(1, round(w * f)), max(1, round(h * f))))
    pixels = to_dtype(pixels, np.uint8)
    bgr = cv2.cvtColor(pixels, cv2.COLOR_RGBA2BGRA if pixels.shape[2] == 4 else cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(".webp", bgr, [cv2.IMWRITE_WEBP_QUALITY, 86])
    if not ok:
        raise NotServed("the preview could not be encoded")
    return buf.tobytes()


def view(config: Config, source: Source, kind: str) -> Path:
    """The cached thumbnail or preview (``kind``) of ``source``, made (both sizes from one decode) on the first
    request; NotServed when the file is not the recorded one."""
    verify(config, source)
    target = _cache_path(config, source.sha256, f"{SIZES[kind]}.webp")
    if target.exists():
        return target
    with _once(f"view-{source.sha256}"):
        if target.exists():  # made meanwhile by the request that held the lock
            return target
        try:
            pixels = _decoded(config, source)
        except AssetdError as exc:
            raise NotServed(f"{source.what}: {exc}") from None
        for edge in SIZES.values():
            atomic_write(_cache_path(config, source.sha256, f"{edge}.webp"), _encode_view(pixels, edge))
        _shown(config)
    return target


def job_thumb(config: Config, store: Store, job_id: int) -> Path:
    """The night view's thumbnail of a job: its first output that is still as recorded, else its input."""
    problems = []
    for row in store.output_rows(job_id):
        try:
            return view(config, output_source(store, row["id"])[1], "thumb")
        except NotServed as exc:
            problems.append(str(exc))
    try:
        return view(config, input_source(store, job_id)[1], "thumb")
    except NotServed as exc:
        raise NotServed("; ".join([*problems, str(exc)])) from None


# -- the subject check ------------------------------------------------------------------------------

def _rgb8(pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """8-bit RGB as int16 (for differences) and the alpha (0..1 float32) when there is one."""
    px = to_dtype(pixels, np.uint8)
    alpha = px[..., 3].astype(np.float32) / 255.0 if px.shape[2] == 4 else None
    return px[..., :3].astype(np.int16), alpha


SHADOW_CHROMATICITY = 0.06  # a backdrop's shadow keeps its colour's proportions within this (of the mean level)
SHADOW_SHARE_MAX = 0.5  # more of the subject than this shadow-like: a neutral subject, not a shadow; kept


def background_like(rgb: np.ndarray, threshold: float = 28.0) -> np.ndarray:
    """Where an image is its backdrop: within ``threshold`` levels of the colour along its border (the studio
    shot's paper), or that colour in shadow (darker, its channels in the same proportions: the product's contact
    shadow on the paper, which is no part of the subject and which the chain removes). Its complement, cleaned
    and kept to the larger parts, is the subject when no matte exists. A shadow counted as subject made its box
    wider than the product (the subject check said "larger than the output" of a tight crop, and marked the
    input's shadow as differing); where most of what stands out is shadow-like, the subject itself is as neutral
    as the paper and is kept whole."""
    border = np.concatenate([rgb[0], rgb[-1], rgb[:, 0], rgb[:, -1]]).astype(np.float32)
    colour = np.median(border, axis=0)
    far = np.abs(rgb.astype(np.float32) - colour).max(axis=2) > threshold
    ys, xs = np.nonzero(far)
    stand_out = rgb[ys, xs].astype(np.float32)
    level = stand_out.mean(axis=1)
    tint = np.abs(stand_out / np.maximum(level, 1.0)[:, None] - colour / max(float(colour.mean()), 1.0)).max(axis=1)
    shadow = (level < colour.mean()) & (tint < SHADOW_CHROMATICITY)
    if shadow.sum() <= SHADOW_SHARE_MAX * len(ys):
        far[ys[shadow], xs[shadow]] = False
    far = cv2.morphologyEx(far.astype(np.uint8), cv2.MORPH_OPEN, np.ones((5, 5), np.uint8))
    n, labels, stats, _ = cv2.connectedComponentsWithStats(far, connectivity=8)
    if n <= 1:
        return np.ones(rgb.shape[:2], bool)
    largest = stats[1:, cv2.CC_STAT_AREA].max()
    keep = [i for i in range(1, n) if stats[i, cv2.CC_STAT_AREA] >= 0.05 * largest]
    return ~np.isin(labels, keep)


def _locate(template: np.ndarray, weight: np.ndarray, image: np.ndarray) -> tuple[int, int] | None:
    """Where ``template`` (its pixels where ``weight`` > 0) best matches ``image``: coarse at about 400 px, then
    exact at full size in a small window around it."""
    th, tw = template.shape[:2]
    ih, iw = image.shape[:2]
    if th > ih or tw > iw:
        return None
    k = max(1, int(max(ih, iw) / 400))
    small_t = cv2.resize(template.astype(np.float32), (max(1, tw // k), max(1, th // k)), interpolation=cv2.INTER_AREA)
    small_w = cv2.resize(weight.astype(np.float32), (max(1, tw // k), max(1, th // k)), interpolation=cv2.INTER_AREA)
    small_i = cv2.resize(image.astype(np.float32), (max(1, iw // k), max(1, ih // k)), interpolation=cv2.INTER_AREA)
    if small_t.shape[0] > small_i.shape[0] or small_t.shape[1] > small_i.shape[1]:
        return None
    scores = cv2.matchTemplate(small_i, small_t, cv2.TM_SQDIFF, mask=np.repeat(small_w[..., None], 3, axis=2))
    _, _, (cx, cy), _ = cv2.minMaxLoc(scores)
    r = 2 * k + 2
    x0, y0 = max(0, cx * k - r), max(0, cy * k - r)
    x1, y1 = min(iw - tw, cx * k + r), min(ih - th, cy * k + r)
    window = image[y0:y1 + th, x0:x1 + tw].astype(np.float32)
    w3 = np.repeat(weight.astype(np.float32)[..., None], 3, axis=2)
    scores = cv2.matchTemplate(window, template.astype(np.float32), cv2.TM_SQDIFF, mask=w3)
    _, _, (fx, fy), _ = cv2.minMaxLoc(scores)
    return x0 + fx, y0 + fy


def subject_check(input_pixels: np.ndarray, output_pixels: np.ndarray, scale: float, *,
                  matte: np.ndarray | None = None, tolerance: int = TOLERANCE_LOSSLESS,
                  matte_from: str = "cut-out matte", expected: Expected | None = None) -> CheckResult:
    """Where the output's subject pixels equal the input's, resized by ``scale`` (the output's recorded factor).

    The subject: the output's alpha when it has one, else ``matte`` (the input's, 0..1: the chain's own matte,
    ``matte_from`` "chain matte", or the alpha of the job's cut-out), else where the input is not
    background-like. Compared: its opaque interior (the outline's soft pixels are blended with a new background
    by design). Returns the fraction equal within ``tolerance`` and the overlay PNG (at most ``CHECK_EDGE`` px).

    ``expected``: what the output's manifest records as changing the subject on purpose. Its pixels are then
    compared with the change it records, not with the input alone (a codec's tolerance would take a bounded tone
    match for "equal"): those equal to the input with the recorded gains applied, a recoloured pixel whose
    lightness is kept, a pixel the painted remove mask covers, count as changed on purpose (amber); the rest
    equal to the input are equal (green), and only what neither explains differs (magenta)."""
    src, src_alpha = _rgb8(input_pixels)
    out, out_alpha = _rgb8(output_pixels)
    if matte is not None:
        how, in_matte = matte_from, matte.astype(np.float32)
    elif src_alpha is not None:
        how, in_matte = "input alpha", src_alpha
    else:
        how, in_matte = "not background-like", (~background_like(src)).astype(np.float32)
    ih, iw = src.shape[:2]
    w, h = max(1, round(iw * scale)), max(1, round(ih * scale))
    if (w, h) != (iw, ih):
        src = resize(src.astype(np.uint8), (w, h)).astype(np.int16)
        in_matte = cv2.resize(in_matte, (w, h), interpolation=cv2.INTER_LINEAR)
    solid = in_matte >= 0.99
    rows, cols = np.flatnonzero(solid.any(axis=1)), np.flatnonzero(solid.any(axis=0))
    result = CheckResult(None, 0, None, how, tolerance)
    if len(rows) == 0:
        result.note = "no subject found in the input"
    else:
        y0, y1, x0, x1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
        template, weight = src[y0:y1, x0:x1], solid[y0:y1, x0:x1]
        at = _locate(template, weight, out)
        if at is None:
            result.note = "the subject is larger than the output (cut by its frame)"
        else:
            ox, oy = at
            result.offset = (int(ox), int(oy))
            result.origin = (int(ox - x0), int(oy - y0))
            th, tw = template.shape[:2]
            # the opaque interior, 2 px inside the outline (the chain resamples whole frames; its outline blends),
            # at the subject box's sides too (the box is cut tight: outside it is not subject)
            inner = cv2.erode(weight.astype(np.uint8), np.ones((5, 5), np.uint8), borderType=cv2.BORDER_CONSTANT,
                              borderValue=0) > 0
            if out_alpha is not None:
                inner &= out_alpha[oy:oy + th, ox:ox + tw] >= 0.99
                result.mask = "output alpha"
            shown = out[oy:oy + th, ox:ox + tw]
            diff = np.abs(shown - template)
            allowed = np.full(template.shape, tolerance, np.float32)
            if (w, h) != (iw, ih):
                t8, k = template.astype(np.uint8), np.ones((3, 3), np.uint8)
                allowed += RESAMPLE_SLACK * (cv2.dilate(t8, k).astype(np.float32) - cv2.erode(t8, k))
            purposeful = np.zeros_like(inner)
            if expected is not None:
                painted = None
                if expected.painted is not None:
                    painted = cv2.resize(expected.painted.astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST)
                    painted = cv2.dilate(painted, np.ones((5, 5), np.uint8))[y0:y1, x0:x1] > 0
                purposeful = inner & _changed_as_recorded(expected, template, shown, allowed, painted)
            equal = inner & ~purposeful & (diff <= allowed).all(axis=2)
            result.subject_pixels = int(inner.sum())
            result.equal = float(equal.sum() / inner.sum()) if inner.any() else None
            if expected is not None:
                result.purpose = ", ".join(expected.names)
                result.on_purpose = float(purposeful.sum() / inner.sum()) if inner.any() else None
            if not inner.any():
                result.note = "no opaque subject pixels to compare"
            overlay = _overlay(out, out_alpha, (ox, oy), inner, equal, purposeful)
            result.png = overlay
    if not result.png:
        result.png = _overlay(out, out_alpha, None, None, None)
    return result


def _changed_as_recorded(expected: Expected, template: np.ndarray, shown: np.ndarray, allowed: np.ndarray,
                         painted: np.ndarray | None) -> np.ndarray:
    """Where ``shown`` (the output's pixels over the subject's box) is ``template`` (the input's) changed as
    ``expected`` records: equal within ``allowed`` to the template with the recorded gains applied (even where
    that is within ``allowed`` of the input too: the change is recorded); and of the pixels equal to neither, a
    recoloured one whose L* is within ``LIGHTNESS_KEPT`` of that (plus the codec's and the resampling's share,
    plus a tone match's bound when one ran after it), or one under the painted remove mask."""
    target = template
    if expected.value_gains is not None or expected.linear_gains is not None:
        target = expected.target(template)
        changed = (np.abs(shown - target) <= allowed).all(axis=2)
    else:
        changed = np.zeros(template.shape[:2], bool)
    unexplained = ~changed & ~(np.abs(shown - template) <= allowed).all(axis=2)  # not the input's either
    if expected.lightness_kept:
        left = unexplained
        slack = LIGHTNESS_KEPT + LIGHTNESS_PER_LEVEL * allowed[left].max(axis=1) + 2 * expected.max_delta_e
        l_out = srgb_to_lab(shown[left].astype(np.float64) / 255)[:, 0]
        l_in = srgb_to_lab(target[left].astype(np.float64) / 255)[:, 0]
        changed[left] = np.abs(l_out - l_in) <= slack
    if painted is not None:
        changed |= painted & unexplained
    return changed


def _overlay(out: np.ndarray, out_alpha: np.ndarray | None, at: tuple[int, int] | None,
             inner: np.ndarray | None, equal: np.ndarray | None, purposeful: np.ndarray | None = None) -> bytes:
    """The output in dimmed grey, the subject's equal pixels green, those changed on purpose as recorded amber,
    and differing ones magenta, as PNG."""
    grey = out.astype(np.float32).mean(axis=2)
    if out_alpha is not None:
        grey = grey * out_alpha + 255.0 * (1 - out_alpha)
    canvas = np.repeat((grey * 0.45 + 60)[..., None], 3, axis=2)
    if at is not None and inner is not None and equal is not None:
        ox, oy = at
        th, tw = inner.shape
        region = canvas[oy:oy + th, ox:ox + tw]
        luma = region[..., :1] / 255.0
        region[equal] = (np.array(EQUAL_COLOUR, np.float32) * (0.55 + 0.45 * luma))[equal]
        if purposeful is not None:
            region[purposeful] = (np.array(PURPOSE_COLOUR, np.float32) * (0.55 + 0.45 * luma))[purposeful]
            region[inner & ~equal & ~purposeful] = np.array(DIFFER_COLOUR, np.float32)
        else:
            region[inner & ~equal] = np.array(DIFFER_COLOUR, np.float32)
    img = np.clip(canvas, 0, 255).astype(np.uint8)
    h, w = img.shape[:2]
    if max(w, h) > CHECK_EDGE:
        f = CHECK_EDGE / max(w, h)
        # nearest: a differing pixel stays visible as a pixel, not averaged away
        img = cv2.resize(img, (max(1, round(w * f)), max(1, round(h * f))), interpolation=cv2.INTER_NEAREST)
    ok, buf = cv2.imencode(".png", cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    return buf.tobytes() if ok else b""


def matte_file(config: Config, job: Job) -> Path:
    """Where the chain's matte of ``job``'s input is kept: by the input's sha256 and what made the matte (the rule,
    its version and a re-run's one-off options: another rule or backend finds another matte). A job copied from
    a twin (same content, same rule version) finds its twin's."""
    made_by = json.dumps([job.rule, job.rule_version, job.overrides or {}], sort_keys=True, default=str)
    return _cache_path(config, job.input_hash, f"matte-{hashlib.sha256(made_by.encode()).hexdigest()[:12]}.png")


def matte_png(matte: np.ndarray) -> bytes:
    """A chain's matte (uint8) as the PNG ``keep_matte`` keeps (a mask compresses well: about 150 KB at 24 Mpx, 0.15 s
    to encode); a Ray actor encodes it there, so only the PNG travels."""
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(matte, dtype=np.uint8), [cv2.IMWRITE_PNG_COMPRESSION, 3])
    if not ok:
        raise ValueError("the matte could not be encoded as PNG")
    return buf.tobytes()


def keep_matte(config: Config, job: Job, matte: np.ndarray | bytes) -> Path:
    """Keep the subject's matte the chain found for ``job`` (uint8, the decoded input's size: ``chain.input_matte``;
    or already ``matte_png``'s PNG) for the subject check. The worker calls it on its codec pool after publishing,
    off the job's path."""
    data = matte if isinstance(matte, bytes) else matte_png(matte)
    if not config.previews_folder.exists():
        _make_mattes_only(config.previews_folder)
    target = matte_file(config, job)
    atomic_write(target, data)
    return target


def _make_mattes_only(folder: Path) -> None:
    """Create the cache folder with its ``MATTES_ONLY`` marker already in it: a cache made for mattes alone says
    nothing of the page being in use (``wanted``), and no thread may see the folder without the marker (the
    preview thread would take it for a page in use). Made beside it and renamed into place; one made meanwhile by
    another thread (or by ``assetd serve``) is left as it is."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    making = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    (making / MATTES_ONLY).touch()
    try:
        os.rename(making, folder)
    except OSError:  # made meanwhile
        shutil.rmtree(making, ignore_errors=True)


def chain_matte(config: Config, job: Job, input_size: tuple[int, int]) -> np.ndarray | None:
    """The chain's matte of ``job``'s input (0..1 float32, ``input_size`` = (width, height)) when it was kept
    (``keep_matte``), else None."""
    try:
        data = matte_file(config, job).read_bytes()
    except OSError:
        return None
    matte = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if matte is None or matte.ndim != 2 or (matte.shape[1], matte.shape[0]) != input_size:
        log.debug("job %d: its kept matte %s does not fit its input; not used", job.id, matte_file(config, job))
        return None
    return to_dtype(matte, np.uint8).astype(np.float32) / 255.0


def _cutout_matte(config: Config, store: Store, job_id: int, input_size: tuple[int, int],
                  ) -> np.ndarray | None:
    """The input's matte from the job's cut-out output (an output with alpha at the input's size and scale 1)."""
    for row in store.output_rows(job_id):
        if (row.get("width"), row.get("height")) != input_size or (row.get("scale") or 1) != 1:
            continue
        try:
            _, source = output_source(store, row["id"])
            verify(config, source)
            pixels = _decoded(config, source)
        except AssetdError:
            continue
        if pixels.shape[2] == 4:
            return to_dtype(pixels[..., 3], np.uint8).astype(np.float32) / 255.0
    return None


def aligned_input(input_pixels: np.ndarray, scale: float, origin: tuple[int, int],
                  size: tuple[int, int]) -> np.ndarray:
    """The input as the output frames it: resized by ``scale`` and placed at ``origin`` on a transparent canvas of
    the output's ``size`` (width, height), so a before/after slider compares the same pixels in the same place."""
    h, w = input_pixels.shape[:2]
    px = to_dtype(input_pixels, np.uint8)
    px = resize(px, (max(1, round(w * scale)), max(1, round(h * scale))))
    if px.shape[2] == 3:
        px = np.concatenate([px, np.full(px.shape[:2] + (1,), 255, np.uint8)], axis=2)
    canvas = np.zeros((size[1], size[0], 4), np.uint8)
    x, y = origin
    x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + px.shape[1], size[0]), min(y + px.shape[0], size[1])
    if x0 < x1 and y0 < y1:
        canvas[y0:y1, x0:x1] = px[y0 - y:y1 - y, x0 - x:x1 - x]
    return canvas


def _check_files(config: Config, output_sha: str, input_sha: str, matte: Path | None = None) -> dict[str, Path]:
    """The cached check of an output against an input; one made with the chain's matte (``matte``, when kept) is
    another entry than one made without (before the worker's matte had landed, or by an earlier assetd)."""
    # check2: made knowing what the output's manifest records as changed on purpose (``expected_change``)
    key = f"check2-{input_sha[:16]}" + (f"-{matte.stem.rpartition('-')[2]}" if matte is not None else "")
    return {"overlay": _cache_path(config, output_sha, key + ".png"),
            "before": _cache_path(config, output_sha, key + "-before.webp"),
            "figures": _cache_path(config, output_sha, key + ".json")}  # written last: the check is complete


def check(config: Config, store: Store, output_id: int) -> tuple[Path, CheckResult]:
    """The cached subject check of an output against its job's input (made on the first request, with the input
    as the output frames it, ``before``): the overlay PNG's path and the figures. NotServed when either file is
    not the recorded one."""
    files, result = _check(config, store, output_id)
    return files["overlay"], result


def _check(config: Config, store: Store, output_id: int) -> tuple[dict[str, Path], CheckResult]:
    row, out_source = output_source(store, output_id)
    job, in_source = input_source(store, row["job_id"])
    verify(config, out_source)
    verify(config, in_source)
    matte = matte_file(config, job)
    files = _check_files(config, out_source.sha256, in_source.sha256, matte if matte.exists() else None)
    with _once(f"check-{out_source.sha256}-{in_source.sha256}"):
        return files, _checked(config, store, row, job, files, in_source, out_source)


def output_steps(store: Store, row: dict[str, Any]) -> dict[str, Any]:
    """The step notes its job's manifest records for the output ``row`` ({} when no manifest can be read): what
    the subject check may expect to have changed."""
    for record in store.manifests(row["job_id"]):
        try:
            doc = json.loads(Path(record.path).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        for out in doc.get("outputs", []) if isinstance(doc, dict) else []:
            if isinstance(out, dict) and out.get("path") == row["path"]:
                return out.get("steps") or {}
    return {}


def _checked(config: Config, store: Store, row: dict[str, Any], job: Job, files: dict[str, Path],
             in_source: Source, out_source: Source) -> CheckResult:
    """The check's figures: read from the cache, else made (decoding both files) and cached."""
    output_id = row["id"]
    if files["figures"].exists():
        result = CheckResult(**{**json.loads(files["figures"].read_text(encoding="utf-8")), "png": b""})
        result.offset = tuple(result.offset) if result.offset else None  # type: ignore[assignment]
        result.origin = tuple(result.origin) if result.origin else None  # type: ignore[assignment]
        return result
    try:
        input_pixels = _decoded(config, in_source)
        output_pixels = _decoded(config, out_source)
    except AssetdError as exc:
        raise NotServed(f"output {output_id}: {exc}") from None
    channel = config.channels.get(row["channel"])
    lossy = channel is not None and channel.format in LOSSY
    scale = float(row.get("scale") or 1.0)
    input_size = (input_pixels.shape[1], input_pixels.shape[0])
    matte, matte_from = chain_matte(config, job, input_size), "chain matte"
    if matte is None:
        matte, matte_from = _cutout_matte(config, store, job.id, input_size), "cut-out matte"
    expected = expected_change(output_steps(store, row), in_source.path, input_size)
    result = subject_check(input_pixels, output_pixels, scale, matte=matte, matte_from=matte_from,
                           tolerance=TOLERANCE_LOSSY if lossy else TOLERANCE_LOSSLESS, expected=expected)
    atomic_write(files["overlay"], result.png)
    if result.origin is not None:
        size = (output_pixels.shape[1], output_pixels.shape[0])
        atomic_write(files["before"], _encode_view(aligned_input(input_pixels, scale, result.origin, size), PREVIEW))
    atomic_write(files["figures"], json.dumps(result.figures()).encode())
    return result


def before(config: Config, store: Store, output_id: int) -> Path:
    """The input as ``output_id`` frames it, at preview size (the slider's "before"); NotServed when the input
    could not be found in the output."""
    files, result = _check(config, store, output_id)
    path = files["before"]
    if result.origin is None or not path.exists():
        raise NotServed(f"output {output_id}: the input could not be placed in it ({result.note or 'not found'})")
    return path


# -- made when a job ends (the daemon) ------------------------------------------------------------

MATTES_ONLY = ".mattes-only"  # in a cache folder the worker made to keep mattes, until the page makes an image


def wanted(config: Config) -> bool:
    """Whether a finished job's images are made at once: the page is surely in use when the daemon serves it
    (``review.listen``), when a channel waits for approval on it (``publish: on_approval``), or when the cache
    exists (``assetd serve`` has shown images here before; not a cache that holds only the mattes the worker
    keeps, ``MATTES_ONLY``). Otherwise nothing is made until a page asks."""
    folder = config.previews_folder
    return (bool(config.review.listen) or any(c.publish == "on_approval" for c in config.channels.values())
            or (folder.is_dir() and not (folder / MATTES_ONLY).exists()))


def _shown(config: Config) -> None:
    """The page made an image: from now on the cache says it is in use (``wanted``)."""
    with contextlib.suppress(OSError):
        (config.previews_folder / MATTES_ONLY).unlink(missing_ok=True)


def keeps_mattes(config: Config) -> bool:
    """Whether the worker keeps each job's matte for the subject check (``keep_matte``): whenever the cache folder
    can be written (made if missing), not only while the page is surely in use (``wanted``). A job run before
    the page was first opened otherwise has no matte, and its check falls back to guessing the subject from the
    input's backdrop. About 0.2 s of the codec pool and a 30-200 KB PNG per 24 MP job."""
    if wanted(config):
        return True
    folder = config.previews_folder
    while not folder.exists() and folder.parent != folder:
        folder = folder.parent
    return folder.is_dir() and os.access(folder, os.W_OK | os.X_OK)


def make_for_job(config: Config, store: Store, job_id: int, stop: threading.Event | None = None, *,
                 subject_check: bool = True) -> int:
    """What the night view and the job page show of a finished job, made now: the thumbnail and preview of each
    output (the first one is the night view's thumbnail) and of its input, then (``subject_check``) the subject
    check with its "before" of the output the job page opens on (``make_check``). A file that cannot be shown
    (gone, changed, undecodable) is skipped with a debug line: the page says why when asked. Returns how many
    files were looked at; stops between files once ``stop`` is set."""
    done = 0
    rows = [r for r in store.output_rows(job_id) if not r.get("replaced_by")]
    sources: list[Callable[[], Source]] = [lambda r=r: output_source(store, r["id"])[1] for r in rows]
    sources.append(lambda: input_source(store, job_id)[1])
    for source in sources:
        if stop is not None and stop.is_set():
            return done
        try:
            view(config, source(), "thumb")
        except NotServed as exc:
            log.debug("job %d: no preview: %s", job_id, exc)
        done += 1
    if subject_check and not (stop is not None and stop.is_set()):
        make_check(config, store, job_id)
    return done


def make_check(config: Config, store: Store, job_id: int) -> None:
    """The subject check (and the slider's "before") of the output a job's page opens on: its first output."""
    rows = [r for r in store.output_rows(job_id) if not r.get("replaced_by")]
    if rows:
        try:
            check(config, store, rows[0]["id"])
        except NotServed as exc:
            log.debug("job %d: no subject check: %s", job_id, exc)


class PreviewMaker:
    """The daemon's preview thread: the workers hand it each job they finish (``offer``, a queue put: the next
    job starts at once) and it makes the job's thumbnails and previews (``make_for_job``) at a lower CPU priority
    than the workers, one job at a time; the subject checks (``make_check``: several times the work, at full
    size) come after, while no finished job waits for its thumbnails. It never fails a job: a problem is logged,
    and the page makes the image later. What is still waiting at stop is left to the page. It reads the job store
    through a connection of its own, so the daemon need not wait at stop for a subject check under way (seconds
    for a large shot): the thread ends after it, and only reads."""

    def __init__(self, config: Config, stop: threading.Event):
        self.config = config  # the daemon swaps it on a reload
        self.stop = stop
        self._queue: queue.Queue[int] = queue.Queue()
        self._checks: collections.deque[int] = collections.deque()

    def offer(self, job: Job) -> None:
        """A job ended done (any worker's thread)."""
        self._queue.put(job.id)

    def run(self) -> None:
        if sys.platform.startswith("linux"):  # on Linux a thread has its own nice value: yield to the workers
            # A thread inherits its creator's nice value: OpenCV's worker pool, made by the first parallel call in
            # the process, must not be made from here after the nice (the chain's resizes would run niced too).
            cv2.resize(np.zeros((1024, 1024, 3), np.uint8), (512, 512), interpolation=cv2.INTER_AREA)
            try:
                os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)
            except OSError:
                pass
        from .store import Store

        store = Store(self.config.database)
        try:
            self._loop(store)
        finally:
            store.close()

    def _loop(self, store: Store) -> None:
        while not self.stop.is_set():
            try:
                job_id, views = self._queue.get(timeout=0.5) if not self._checks else self._queue.get_nowait(), True
            except queue.Empty:
                if not self._checks:
                    continue
                job_id, views = self._checks.popleft(), False
            config = self.config
            if not wanted(config):
                continue
            try:
                if views:
                    make_for_job(config, store, job_id, self.stop, subject_check=False)
                    self._checks.append(job_id)
                else:
                    make_check(config, store, job_id)
            except Exception as exc:  # noqa: BLE001 - a preview never fails anything; the page makes it later
                log.warning("job %d: its previews could not be made now (%s: %s); the review page makes them when "
                            "it shows the job", job_id, type(exc).__name__, exc)
