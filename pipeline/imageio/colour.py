"""Colour: an embedded ICC profile converted to sRGB, the sRGB profile every output embeds.

8-bit images go through littleCMS (Pillow's ImageCms). littleCMS in Pillow has no 16-bit RGB mode, so 16-bit
images with a matrix/TRC profile (Adobe RGB, Display P3, ProPhoto, camera RGB, grey) are converted here in
float32 from the profile's own colorants and curves, concatenated with sRGB's (the relative colorimetric path
littleCMS takes for matrix-shaper profiles, where perceptual and relative are the same transform): within
ΔE2000 0.2 of littleCMS at 8 bits, see tests/test_colour.py. 16-bit images with LUT-based profiles (CMYK, some
printer/scanner RGB) fall back to littleCMS at 8 bits, and ``notes["bits"]`` says so. Untagged images are taken
as sRGB; a profile that describes sRGB is not "converted" (no needless rounding).
"""
from __future__ import annotations

import io
import struct
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image, ImageCms

from ..pixels import to_dtype
from ..text import reason

if TYPE_CHECKING:
    from ..config import InputConfig

_SRGB = ImageCms.createProfile("sRGB")


def _fixed_date(icc: bytes) -> bytes:
    """LittleCMS stamps a profile's creation date (header bytes 24-35) with the time it was built; a fixed
    date makes the same pixels give the same file in every run, so a shop sync does not re-upload an
    unchanged output. (The profile ID, bytes 84-99, is zero: nothing else depends on the date.)"""
    return icc[:24] + struct.pack(">6H", 2020, 1, 1, 0, 0, 0) + icc[36:]


SRGB_ICC: bytes = _fixed_date(ImageCms.ImageCmsProfile(_SRGB).tobytes())  # embedded in every output


def grey_to_rgb(arr: np.ndarray) -> np.ndarray:
    """Grey (with or without alpha) as RGB(A); anything with three or more channels unchanged."""
    if arr.shape[2] == 1:
        return np.repeat(arr, 3, axis=2)
    if arr.shape[2] == 2:
        return np.concatenate([np.repeat(arr[..., :1], 3, axis=2), arr[..., 1:2]], axis=2)
    return arr


def _intent(cfg: InputConfig) -> int:
    return (ImageCms.Intent.PERCEPTUAL if cfg.colour_intent == "perceptual"
            else ImageCms.Intent.RELATIVE_COLORIMETRIC)


def convert_8bit(im: Image.Image, icc: bytes, cfg: InputConfig, notes: dict[str, Any]) -> Image.Image:
    """Convert an L/RGB/CMYK image from its embedded profile to sRGB with littleCMS."""
    try:
        src = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        desc = ImageCms.getProfileDescription(src).strip() or "embedded profile"
    except Exception:
        notes["icc"] = "unreadable embedded profile ignored (treated as sRGB)"
        return im
    shaper = MatrixShaper.parse(icc)
    if shaper is not None and shaper.is_srgb():
        notes["icc"] = f"{desc} (sRGB: kept)"
        return im
    try:
        out = ImageCms.profileToProfile(im, src, _SRGB, renderingIntent=_intent(cfg), outputMode="RGB")
    except Exception as exc:
        notes["icc"] = f"{desc}: does not fit the {im.mode} image, ignored ({reason(exc)})"
        return im
    notes["icc"] = f"{desc} → sRGB"
    return out


# ---------------------------------------------------------------- 16-bit colour

class MatrixShaper:
    """A matrix/TRC ICC profile (RGB or grey): per-channel tone curves + colorants in the D50 PCS.

    ``parse`` returns None for anything else (LUT-based A2B profiles, CMYK, Lab PCS...).
    """

    def __init__(self, space: str, matrix: np.ndarray | None, curves: list[tuple[str, Any]]):
        self.space = space
        self.matrix = matrix  # 3×3, columns = XYZ of R, G, B (D50); None for grey
        self.curves = curves

    @classmethod
    def parse(cls, icc: bytes) -> "MatrixShaper | None":
        try:
            space = icc[16:20].decode("ascii").strip()
            if icc[20:24] not in (b"XYZ ", b"Lab "):
                return None
            (count,) = struct.unpack_from(">I", icc, 128)
            tags = {}
            for i in range(min(count, 256)):
                sig, off, size = struct.unpack_from(">4sII", icc, 132 + 12 * i)
                tags[sig] = icc[off:off + size]
            if any(t in tags for t in (b"A2B0", b"A2B1", b"A2B2")):
                return None  # littleCMS would use the LUT, not the matrix
            if space == "RGB":
                cols = [cls._xyz(tags[s]) for s in (b"rXYZ", b"gXYZ", b"bXYZ")]
                curves = [cls._curve(tags[s]) for s in (b"rTRC", b"gTRC", b"bTRC")]
                return cls("RGB", np.array(cols, dtype=np.float64).T, curves)
            if space == "GRAY":
                return cls("GRAY", None, [cls._curve(tags[b"kTRC"])])
        except (KeyError, struct.error, ValueError, UnicodeDecodeError):
            return None
        return None

    @staticmethod
    def _xyz(tag: bytes) -> list[float]:
        if tag[:4] != b"XYZ ":
            raise ValueError("not an XYZ tag")
        return [v / 65536.0 for v in struct.unpack_from(">3i", tag, 8)]

    @staticmethod
    def _curve(tag: bytes) -> tuple[str, Any]:
        kind = tag[:4]
        if kind == b"curv":
            (n,) = struct.unpack_from(">I", tag, 8)
            if n == 0:
                return ("gamma", 1.0)
            if n == 1:
                return ("gamma", struct.unpack_from(">H", tag, 12)[0] / 256.0)
            table = np.array(struct.unpack_from(f">{n}H", tag, 12), dtype=np.float64) / 65535.0
            return ("table", table)
        if kind == b"para":
            (ftype,) = struct.unpack_from(">H", tag, 8)
            nparams = {0: 1, 1: 3, 2: 4, 3: 5, 4: 7}[ftype]
            params = [v / 65536.0 for v in struct.unpack_from(f">{nparams}i", tag, 12)]
            return ("para", (ftype, params))
        raise ValueError(f"unsupported curve type {kind!r}")

    @staticmethod
    def evaluate(curve: tuple[str, Any], x: np.ndarray) -> np.ndarray:
        """Device value (0..1) → linear, as the ICC spec defines each curve type."""
        kind, value = curve
        if kind == "gamma":
            return np.power(x, value)
        if kind == "table":
            return np.interp(x, np.linspace(0.0, 1.0, len(value)), value)
        ftype, p = value
        g = p[0]
        if ftype == 0:
            return np.power(x, g)
        a, b = p[1], p[2]
        base = np.power(np.maximum(a * x + b, 0.0), g)
        if ftype == 1:
            return np.where(x >= -b / a, base, 0.0)
        if ftype == 2:
            return np.where(x >= -b / a, base + p[3], p[3])
        if ftype == 3:
            return np.where(x >= p[4], base, p[3] * x)
        return np.where(x >= p[4], base + p[5], p[3] * x + p[6])

    def luts(self, size: int = 65536) -> list[np.ndarray]:
        x = np.linspace(0.0, 1.0, size)
        return [np.clip(self.evaluate(c, x), 0.0, None).astype(np.float32) for c in self.curves]

    def is_srgb(self) -> bool:
        """Same colorants and tone curves as our sRGB, to 8-bit precision."""
        if self.space != "RGB":
            return False
        ref = _SRGB_SHAPER
        if np.abs(self.matrix - ref.matrix).max() > 2e-3:
            return False
        x = np.linspace(0.0, 1.0, 256)
        return all(np.abs(self.evaluate(a, x) - ref.evaluate(b, x)).max() < 1.5e-3
                   for a, b in zip(self.curves, ref.curves))


_SRGB_SHAPER = MatrixShaper.parse(SRGB_ICC)
assert _SRGB_SHAPER is not None and _SRGB_SHAPER.matrix is not None


def srgb_encode(linear: np.ndarray) -> np.ndarray:
    """Linear light (0..1) → sRGB-encoded (0..1), IEC 61966-2-1."""
    return np.where(linear <= 0.0031308, linear * 12.92,
                    1.055 * np.power(np.maximum(linear, 0.0031308), 1 / 2.4) - 0.055)


def convert_16bit(arr: np.ndarray, icc: bytes, cfg: InputConfig, notes: dict[str, Any]) -> np.ndarray:
    """uint16 H×W×C (grey/RGB, optional alpha) with an ICC profile → uint16 sRGB RGB(A)."""
    try:
        desc = ImageCms.getProfileDescription(ImageCms.ImageCmsProfile(io.BytesIO(icc))).strip()
    except Exception:
        notes["icc"] = "unreadable embedded profile ignored (treated as sRGB)"
        return grey_to_rgb(arr)
    colour = 3 if arr.shape[2] >= 3 else 1
    shaper = MatrixShaper.parse(icc)
    fits = shaper is not None and (shaper.space == "RGB") == (colour == 3)
    if shaper is not None and fits and shaper.is_srgb():
        notes["icc"] = f"{desc} (sRGB: kept)"
        return grey_to_rgb(arr)
    if shaper is None or not fits:
        # LUT-based profile: littleCMS at 8 bits is the accurate choice we have.
        im = Image.fromarray(to_dtype(arr[..., :colour], np.uint8)[..., 0] if colour == 1
                             else to_dtype(arr[..., :3], np.uint8), "L" if colour == 1 else "RGB")
        out = np.asarray(convert_8bit(im, icc, cfg, notes).convert("RGB"))
        notes["bits"] = "16 → 8 (the profile is LUT-based; converted by littleCMS at 8 bits)"
        if arr.shape[2] > colour:
            out = np.dstack([out, to_dtype(arr[..., colour], np.uint8)])
        return out
    luts = shaper.luts()
    if shaper.space == "RGB":
        assert shaper.matrix is not None and _SRGB_SHAPER.matrix is not None
        m = (np.linalg.inv(_SRGB_SHAPER.matrix) @ shaper.matrix).astype(np.float32)
    h, w = arr.shape[:2]
    out = np.empty((h, w, 3 + (arr.shape[2] - colour)), dtype=np.uint16)
    step = max(1, (1 << 20) // max(w, 1))  # ~1 megapixel per chunk: a few MB of float32
    for y in range(0, h, step):
        block = arr[y:y + step]
        if shaper.space == "RGB":
            lin = np.stack([luts[c][block[..., c]] for c in range(3)], axis=-1)
            lin = lin @ m.T
        else:
            lin = luts[0][block[..., 0]][..., None]
        enc = srgb_encode(np.clip(lin, 0.0, 1.0))
        enc = np.rint(enc * 65535.0).astype(np.uint16)
        out[y:y + step, :, :3] = enc if enc.shape[-1] == 3 else np.repeat(enc, 3, axis=-1)
        if arr.shape[2] > colour:
            out[y:y + step, :, 3] = block[..., colour]
    notes["icc"] = f"{desc} → sRGB (16-bit, matrix/TRC in float32)"
    return out


