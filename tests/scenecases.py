"""Test helper: a cut-out to place in a scene, and where it landed (tests/test_backend_diffusion.py,
tests/test_reference.py, tests/test_instruct.py)."""
from __future__ import annotations

import numpy as np

from pipeline.stages.base import Asset


def cutout(h: int = 96, w: int = 80, dtype: type = np.uint8) -> np.ndarray:
    """A dark product with a soft edge on a transparent canvas (the backdrop RGB kept under alpha 0)."""
    img = np.zeros((h, w, 4), np.uint8)
    img[..., :3] = 240
    yy, xx = np.mgrid[0:h, 0:w]
    img[30:62, 20:52, :3] = np.stack([(xx * 3) % 90, (yy * 5) % 70, (xx + yy) % 50], -1)[30:62, 20:52]
    img[30:62, 20:52, 3] = 255
    img[29, 20:52, 3] = 128  # a soft edge row
    img[29, 20:52, :3] = 60
    return img.astype(np.uint16) * 257 if dtype == np.uint16 else img


def placed(out: Asset, src: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The output's subject box, the cut-out's pixels in its own subject box, and their opaque mask."""
    x0, y0, x1, y1 = out.notes["place_in_scene"]["subject_box"]
    top = 65535 if src.dtype == np.uint16 else 255
    ys, xs = np.nonzero(src[..., 3] > 0.1 * top)
    box = src[ys.min():ys.max() + 1, xs.min():xs.max() + 1]
    return out.pixels[y0:y1, x0:x1], box[..., :3], box[..., 3] == top
