"""Reading inputs and writing encoded outputs: the only module that talks to image codecs.

``read_input`` takes a path and returns the file's bytes (never following symlinks);
``decode`` turns bytes into a ``Decoded`` (sRGB working space, orientation applied);
``encode`` turns pixels into the bytes of a channel's format with an sRGB profile embedded.
"""
from __future__ import annotations

import io
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageCms, ImageOps

from .config import ChannelConfig, InputConfig
from .errors import InputError, TransientError
from .pixels import to_dtype

_SRGB = ImageCms.createProfile("sRGB")
SRGB_ICC: bytes = ImageCms.ImageCmsProfile(_SRGB).tobytes()

# Pillow formats we are willing to decode (no EPS/PS/PDF/SVG or other exotic parsers).
ALLOWED_FORMATS = {"JPEG", "PNG", "TIFF", "WEBP", "MPO"}


@dataclass
class Decoded:
    """An input image ready for the chain."""

    pixels: np.ndarray  # H×W×3 or ×4, uint8 or uint16, sRGB, orientation applied
    format: str  # what the content really is ("JPEG", "PNG", "RAW"...)
    exif: bytes | None = None  # EXIF as read (orientation already applied to pixels)
    xmp: bytes | None = None
    notes: dict[str, Any] = field(default_factory=dict)  # what decoding did (profile conversion, page count...)


def read_input(path: Path) -> bytes:
    """The file's bytes; InputError for anything that is not a readable regular file."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        raise InputError(f"{path}: file disappeared before it could be read") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot stat file: {exc.strerror}") from None
    if stat.S_ISLNK(st.st_mode):
        raise InputError(f"{path}: is a symbolic link; links are never followed")
    if not stat.S_ISREG(st.st_mode):
        raise InputError(f"{path}: not a regular file")
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except PermissionError:
        raise InputError(f"{path}: no permission to read the file") from None
    except FileNotFoundError:
        raise InputError(f"{path}: file disappeared before it could be read") from None
    with os.fdopen(fd, "rb") as fh:
        data = fh.read()
    if len(data) != st.st_size:
        raise TransientError(f"{path}: file changed while it was read ({st.st_size} → {len(data)} bytes)")
    if not data:
        raise InputError(f"{path}: file is empty (0 bytes)")
    return data


def decode(data: bytes, name: str, cfg: InputConfig) -> Decoded:
    """Decode an image's bytes into the sRGB working space; InputError naming ``name`` if bad."""
    try:
        im = Image.open(io.BytesIO(data), formats=sorted(ALLOWED_FORMATS))
    except Exception as exc:  # Pillow raises many types for unreadable content
        raise InputError(f"{name}: not a readable image ({type(exc).__name__}: {exc})") from None
    w, h = im.size
    if w * h > cfg.max_pixels:
        raise InputError(f"{name}: {w}×{h} = {w * h / 1e6:.0f} megapixels exceeds max_pixels "
                         f"({cfg.max_pixels / 1e6:.0f} megapixels)")
    try:
        im.load()
        exif = im.info.get("exif")
        xmp = im.info.get("xmp")
        icc = im.info.get("icc_profile")
        im = ImageOps.exif_transpose(im)
        notes: dict[str, Any] = {}
        mode = "RGBA" if ("A" in im.getbands() or "transparency" in im.info) else "RGB"
        im = im.convert(mode)
        if icc:
            src = ImageCms.ImageCmsProfile(io.BytesIO(icc))
            desc = ImageCms.getProfileDescription(src).strip()
            intent = (ImageCms.Intent.PERCEPTUAL if cfg.colour_intent == "perceptual"
                      else ImageCms.Intent.RELATIVE_COLORIMETRIC)
            im = ImageCms.profileToProfile(im, src, _SRGB, renderingIntent=intent, outputMode=mode)
            notes["icc"] = f"{desc} → sRGB"
        pixels = np.asarray(im)
    except InputError:
        raise
    except Exception as exc:
        raise InputError(f"{name}: image data is damaged ({type(exc).__name__}: {exc})") from None
    return Decoded(pixels=pixels, format=str(im.format or "unknown"), exif=exif, xmp=xmp, notes=notes)


def encode(pixels: np.ndarray, channel: ChannelConfig, source: Decoded | None = None) -> bytes:
    """Encode pixels for a channel: its format and quality, sRGB profile embedded."""
    fmt = channel.format
    if channel.bits == 8 or fmt not in ("png", "tiff"):
        pixels = to_dtype(pixels, np.uint8)
    mode = "RGBA" if pixels.shape[2] == 4 else "RGB"
    im = Image.fromarray(pixels, mode)
    buf = io.BytesIO()
    kwargs: dict[str, Any] = {"icc_profile": SRGB_ICC}
    if fmt == "jpeg":
        kwargs.update(quality=channel.quality, subsampling=0 if channel.quality >= 90 else 2, optimize=False)
        im.save(buf, "JPEG", **kwargs)
    elif fmt == "png":
        im.save(buf, "PNG", compress_level=6, **kwargs)
    elif fmt == "webp":
        im.save(buf, "WEBP", quality=channel.quality, method=4, **kwargs)
    elif fmt == "tiff":
        im.save(buf, "TIFF", compression="tiff_deflate", **kwargs)
    else:  # config validation makes this unreachable
        raise ValueError(f"unknown format {fmt}")
    return buf.getvalue()
