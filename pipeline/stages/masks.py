"""Masks a retoucher puts beside a shot for a step: ``NAME.recolor.png`` (the region to recolour),
``NAME.protect.png`` (what no edit may touch), ``NAME.remove.png`` (what retouch removes). White (or, on a
transparent layer, painted) is "yes"; the mask has the shot's pixel size. The inbox never takes them as inputs (``pipeline.ignore``), but they are part
of what a job is: the digest of the masks beside a shot is in its job's identity (``pipeline.intake.mask_digest``),
and a mask that changes hands its shot(s) to the intake again (``shots_of``, used by the watcher)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

import numpy as np
from PIL import Image

from ..errors import PermanentError
from ..formats import INPUT_EXTENSIONS
from ..ignore import SIDECAR_MASKS, is_ignored_name


class MaskError(PermanentError):
    """A sidecar mask that cannot be used: unreadable, or not the shot's size."""


def sidecar_path(source: str | Path, kind: str) -> Path:
    """Where ``kind``'s mask of the shot at ``source`` lies: ``shot.jpg`` → ``shot.recolor.png``."""
    if kind not in SIDECAR_MASKS:
        raise ValueError(f"unknown mask kind {kind!r} (known: {', '.join(SIDECAR_MASKS)})")
    source = Path(source)
    return source.with_name(f"{source.stem}.{kind}.png")


def mask_kind(path: str | Path) -> str | None:
    """The kind of the mask at ``path`` (``shot.remove.png`` → ``remove``), or None when it is no mask name. Exactly the
    names ``sidecar_path`` gives (the steps read those, not another case)."""
    name = Path(path).name
    return next((kind for kind in SIDECAR_MASKS if name.endswith(f".{kind}.png") and len(name) > len(kind) + 5),
                None)


def masks_beside(source: str | Path) -> dict[str, Path]:
    """The masks lying beside the shot at ``source`` now, {kind: path}, in kind order (regular files only: a symbolic
    link is never followed, as for inputs, and ``read_sidecar`` refuses one)."""
    found = {}
    for kind in sorted(SIDECAR_MASKS):
        path = sidecar_path(source, kind)
        if path.is_file() and not path.is_symlink():
            found[kind] = path
    return found


def shots_of(mask: str | Path) -> list[Path]:
    """The shots the mask at ``mask`` belongs to: ``NAME.<an input extension>`` in its folder (``shot.remove.png`` →
    ``shot.jpg``, and ``shot.tif`` when both lie there); [] when it is no mask or its folder cannot be listed."""
    mask = Path(mask)
    kind = mask_kind(mask)
    if kind is None:
        return []
    stem = mask.name[:-len(f".{kind}.png")]
    try:
        names = os.listdir(mask.parent)
    except OSError:
        return []
    return sorted(mask.parent / name for name in names
                  if Path(name).stem == stem and Path(name).suffix.lower().lstrip(".") in INPUT_EXTENSIONS
                  and not is_ignored_name(name))


# Which steps read which mask, and when: (step, the option that makes it read the mask, a test on its options).
_READERS: dict[str, list[tuple[str, str, Callable[[Any], bool]]]] = {
    "recolor": [("recolor", "region: auto, sidecar or mask", lambda o: getattr(o, "region", "auto") != "cluster")],
    "protect": [("recolor", "always", lambda o: True), ("retouch", "always", lambda o: True)],
    "remove": [("retouch", "remove_mask: sidecar", lambda o: getattr(o, "remove_mask", None) == "sidecar")],
}


def readers(kind: str) -> list[str]:
    """The steps that can read ``kind``'s mask, as a user reads it: ``["retouch: remove_mask: sidecar"]``."""
    return [f"{step}: {when}" if when != "always" else step for step, when, _ in _READERS[kind]]


def read_by(rule: Any, kind: str) -> list[str]:
    """The steps of ``rule`` (a ``pipeline.rules.Rule``) that read ``kind``'s mask as it is configured."""
    return [spec.step for spec in rule.steps for step, _, reads in _READERS[kind]
            if spec.step == step and reads(spec.options)]


NEARLY_ALL = 0.95  # a remove mask marking this share of the frame or more is refused: an inverted or blank-white mask


def read_sidecar(source: str | Path | None, kind: str, size: tuple[int, int]) -> np.ndarray | None:
    """The mask beside ``source`` as H×W uint8 (255 = yes), or None when there is none. ``size`` is the shot's
    (width, height): a mask of another size fails the job naming both sizes (a mask made for another crop or
    resolution would mark the wrong pixels). So does a remove mask that marks (nearly) the whole frame: that is an
    inverted mask or a white layer saved over the paint, never a retoucher's intent, and filling the whole frame
    from nothing would change nothing while the manifest said it removed everything. (Protecting or recolouring
    nearly everything may be meant: "all but the label".)"""
    if source is None:
        return None
    path = sidecar_path(source, kind)
    if path.is_symlink():  # never followed (inputs neither): it is not part of the job's identity (masks_beside)
        raise MaskError(f"{path}: the {kind} mask is a symbolic link, which assetd never follows; put the mask file "
                        "itself beside the shot")
    if not path.is_file():
        return None
    try:
        with Image.open(path) as im:
            im.load()
            mask = paint_of(im)
    except (OSError, ValueError) as exc:
        raise MaskError(f"{path}: cannot read this {kind} mask ({exc})") from None
    if (mask.shape[1], mask.shape[0]) != tuple(size):
        raise MaskError(f"{path}: the {kind} mask is {mask.shape[1]}×{mask.shape[0]}, the shot {size[0]}×{size[1]}; "
                        "make it at the shot's size")
    share = float(np.count_nonzero(mask >= 128)) / max(1, mask.size)
    if kind == "remove" and share >= NEARLY_ALL:
        raise MaskError(f"{path}: the remove mask marks {int(share * 100)}% of the frame: paint only what to remove "
                        "(white) on black or transparent")
    return mask


def paint_of(im: Image.Image) -> np.ndarray:
    """Where a mask image paints, H×W uint8 (255 = yes). Its alpha is the paint when it carries any (white or any
    colour on a transparent layer): alpha that is one value everywhere (an opaque RGBA or LA export, a fully
    transparent one) says nothing, and the paint is in the colour, white or bright meaning yes, as in a greyscale
    mask. A 16-bit greyscale mask is scaled to 8 bits (Pillow would clip it: any grey above 255 of 65535 white)."""
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info:
        alpha = np.asarray(im.convert("RGBA"))[..., 3]
        if alpha.min() != alpha.max():
            return np.ascontiguousarray(alpha)
    if im.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N"):
        wide = np.asarray(im).astype(np.float64)
        scale = 257.0 if wide.max() > 255 else 1.0  # a 32-bit "I" image may hold 8-bit levels
        return np.clip(np.rint(wide / scale), 0, 255).astype(np.uint8)
    return np.asarray(im.convert("L"))


def unused_masks(rule: Any, shot: str | Path) -> list[str]:
    """The masks lying beside the shot at ``shot`` that no step of ``rule`` (a ``pipeline.rules.Rule``) reads as it
    is configured, one line each naming the mask and what would read it: "shot.remove.png lies beside it but rule
    'x' has no retouch step with remove_mask: sidecar". A retoucher's mask that changes nothing must not pass in
    silence: the chain adds each line to the job's review reasons (``Chain.run``: "...; it was not used") and
    ``assetd check`` warns of them in the inboxes."""
    lines = []
    for kind, path in masks_beside(shot).items():
        if read_by(rule, kind):
            continue
        ways = _READERS[kind]
        if all(when == "always" for _, when, _ in ways):
            wanted = f"{' or '.join(step for step, _, _ in ways)} step"
        else:
            wanted = " or ".join(f"{step} step" + ("" if when == "always" else f" with {when}")
                                 for step, when, _ in ways)
        lines.append(f"{path.name} lies beside it but rule '{rule.name}' has no {wanted}")
    return lines
