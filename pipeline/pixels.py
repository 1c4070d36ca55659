"""Small pixel helpers shared by stages and outputs: dtype handling, alpha-correct resizing, flattening.

Arrays are H×W×3 (RGB) or H×W×4 (RGBA, straight alpha), uint8 or uint16.
"""
from __future__ import annotations

import cv2
import numpy as np


def max_value(arr: np.ndarray) -> int:
    return 65535 if arr.dtype == np.uint16 else 255


def to_dtype(arr: np.ndarray, dtype: np.dtype | type) -> np.ndarray:
    """Convert between uint8 and uint16 (exact scaling: 255 ↔ 65535)."""
    dtype = np.dtype(dtype)
    if arr.dtype == dtype:
        return arr
    if arr.dtype == np.uint8 and dtype == np.uint16:
        return arr.astype(np.uint16) * 257
    if arr.dtype == np.uint16 and dtype == np.uint8:
        return ((arr.astype(np.uint32) + 128) // 257).astype(np.uint8)
    if np.issubdtype(arr.dtype, np.floating):
        top = 65535 if dtype == np.uint16 else 255
        return np.clip(np.rint(arr * top), 0, top).astype(dtype)
    raise TypeError(f"cannot convert {arr.dtype} to {dtype}")


def colour_tuple(hex_colour: str, dtype: np.dtype | type = np.uint8) -> tuple[int, ...]:
    """'#rrggbb' or '#rrggbbaa' → channel values in the dtype's range."""
    h = hex_colour.lstrip("#")
    vals = [int(h[i:i + 2], 16) for i in range(0, len(h), 2)]
    if np.dtype(dtype) == np.uint16:
        vals = [v * 257 for v in vals]
    return tuple(vals)


def resize(arr: np.ndarray, size: tuple[int, int], *, sharpen: float = 0.0) -> np.ndarray:
    """Resize to ``size`` (width, height) with premultiplied alpha, so edges get no dark or backdrop halo.

    Lanczos for enlarging, area averaging for shrinking (no aliasing). ``sharpen`` > 0 adds a mild
    unsharp mask (used after enlarging).
    """
    w, h = size
    if (w, h) == (arr.shape[1], arr.shape[0]):
        return arr
    shrinking = w < arr.shape[1] and h < arr.shape[0]
    interp = cv2.INTER_AREA if shrinking else cv2.INTER_LANCZOS4
    top = float(max_value(arr))
    has_alpha = arr.ndim == 3 and arr.shape[2] == 4
    if not has_alpha:
        # OpenCV resamples uint8/uint16 directly (saturating), with no float copy of the whole image.
        out = cv2.resize(arr, (w, h), interpolation=interp)
        if out.ndim == 2:
            out = out[..., None]
        if sharpen > 0:
            soft = cv2.GaussianBlur(out, (0, 0), sigmaX=1.0)
            out = cv2.addWeighted(out, 1.0 + sharpen, soft, -sharpen, 0)  # saturates to the dtype's range
        return out
    work = arr.astype(np.float32)
    alpha = work[..., 3:4] / top
    work[..., :3] *= alpha
    del alpha
    out = cv2.resize(work, (w, h), interpolation=interp)
    del work
    if sharpen > 0:
        soft = cv2.GaussianBlur(out, (0, 0), sigmaX=1.0)
        out = cv2.addWeighted(out, 1.0 + sharpen, soft, -sharpen, 0)
        del soft
    np.clip(out, 0, top, out=out)
    a = out[..., 3:4]
    rgb = out[..., :3]
    np.divide(rgb, np.where(a > 0, a / top, 1.0), out=rgb)
    np.clip(out, 0, top, out=out)
    np.rint(out, out=out)
    return out.astype(arr.dtype)


def resize_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize a single-channel uint8 matte."""
    if (size[0], size[1]) == (mask.shape[1], mask.shape[0]):
        return mask
    shrinking = size[0] < mask.shape[1]
    return cv2.resize(mask, size, interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)


def flatten(arr: np.ndarray, colour: str) -> np.ndarray:
    """Composite RGBA onto a solid colour; returns RGB in the same dtype."""
    if arr.ndim != 3 or arr.shape[2] != 4:
        return arr
    top = float(max_value(arr))
    bg = np.array(colour_tuple(colour[:7], arr.dtype), dtype=np.float32)
    a = arr[..., 3:4].astype(np.float32) / top
    rgb = arr[..., :3].astype(np.float32) * a + bg * (1.0 - a)
    return np.clip(np.rint(rgb), 0, top).astype(arr.dtype)


def fit_long_edge(width: int, height: int, long_edge: int) -> tuple[int, int]:
    """The size with the same aspect whose long edge is ``long_edge``."""
    if width >= height:
        return long_edge, max(1, round(height * long_edge / width))
    return max(1, round(width * long_edge / height)), long_edge
