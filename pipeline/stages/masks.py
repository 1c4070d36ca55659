"""Masks a retoucher puts beside a shot for a step: ``NAME.recolor.png`` (the region to recolour),
``NAME.protect.png`` (what no edit may touch), ``NAME.remove.png`` (what retouch removes). White (or opaque) is
"yes"; the mask has the shot's pixel size. The inbox never takes them as inputs (``pipeline.ignore``)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import PermanentError
from ..ignore import SIDECAR_MASKS


class MaskError(PermanentError):
    """A sidecar mask that cannot be used: unreadable, or not the shot's size."""


def sidecar_path(source: str | Path, kind: str) -> Path:
    """Where ``kind``'s mask of the shot at ``source`` lies: ``shot.jpg`` → ``shot.recolor.png``."""
    if kind not in SIDECAR_MASKS:
        raise ValueError(f"unknown mask kind {kind!r} (known: {', '.join(SIDECAR_MASKS)})")
    source = Path(source)
    return source.with_name(f"{source.stem}.{kind}.png")


def read_sidecar(source: str | Path | None, kind: str, size: tuple[int, int]) -> np.ndarray | None:
    """The mask beside ``source`` as H×W uint8 (255 = yes), or None when there is none. ``size`` is the shot's
    (width, height): a mask of another size fails the job naming both sizes (a mask made for another crop or
    resolution would mark the wrong pixels)."""
    if source is None:
        return None
    path = sidecar_path(source, kind)
    if not path.is_file():
        return None
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
                mask = np.asarray(im.convert("RGBA"))[..., 3]
            else:
                mask = np.asarray(im.convert("L"))
    except (OSError, ValueError) as exc:
        raise MaskError(f"{path}: cannot read this {kind} mask ({exc})") from None
    if (mask.shape[1], mask.shape[0]) != tuple(size):
        raise MaskError(f"{path}: the {kind} mask is {mask.shape[1]}×{mask.shape[0]}, the shot {size[0]}×{size[1]}; "
                        "make it at the shot's size")
    return mask.astype(np.uint8)
