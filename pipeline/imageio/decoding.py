"""Decoding an input's bytes into the sRGB working space: the one image a viewer shows, upright, checked.

Decoders, chosen by content (magic bytes), never by the extension alone:
  JPEG, PNG, TIFF (and BigTIFF), WebP, HEIF/HEIC (pillow-heif), AVIF   Pillow, with an allow-list of formats;
  16-bit PNG                                           OpenCV (Pillow truncates RGB to 8 bits);
  16-bit TIFF                                          tifffile (OpenCV when tifffile lacks the codec);
  camera RAW                                           LibRaw in a subprocess (``raw``).

Colour conversion is ``colour``'s; a blank result is refused (``check_signal``).
"""
from __future__ import annotations

import io
import os
import struct
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np
import pillow_heif
from PIL import Image, ImageFile

from . import metadata as meta
from . import raw
from ..errors import IncompleteInput, InputError
from ..formats import ACCEPTED_SHOWN, EXTENSION_FORMATS, PILLOW_FORMATS, RAW_EXTENSIONS, sniff
from ..text import printable, reason
from .colour import convert_8bit, convert_16bit, grey_to_rgb

if TYPE_CHECKING:
    from ..config import InputConfig

pillow_heif.register_heif_opener()  # HEIF/HEIC through Image.open, so the allow-list applies to it too

RAW_TIMEOUT_S = 600.0

# Never decode a truncated file into a grey half-image: truncation is an error.
ImageFile.LOAD_TRUNCATED_IMAGES = False
# What the codecs say when the data stops before the image does (Pillow: "image file is truncated";
# libheif: "Unexpected end of file"): the file may be a copy still arriving (``IncompleteInput``).
_CUT_SHORT = ("truncated", "end of file", "broken data stream")

# Pillow's own bomb check is off, set once here: our limit (input.max_pixels) is per config, and a Pillow
# global set on every decode is shared by every thread and every other user of Pillow. ``_open`` checks the
# size the header declares itself, counted as Pillow counts it, before any pixel is decoded.
Image.MAX_IMAGE_PIXELS = None


@dataclass
class Decoded:
    """An input image ready for the chain.

    ``exif`` keeps every tag as read except the orientation, which is reset to 1 because the
    pixels are already upright (``notes["orientation"]`` keeps the original value). ``iptc`` is the
    raw IPTC-IIM record; ``icc`` the source's embedded profile (the pixels are sRGB regardless).
    """

    pixels: np.ndarray  # H×W×3 or ×4, uint8 or uint16, sRGB, orientation applied
    format: str  # what the content really is ("JPEG", "PNG", "RAW"...)
    exif: bytes | None = None
    xmp: bytes | None = None
    notes: dict[str, Any] = field(default_factory=dict)  # what decoding did (profile conversion, page count...)
    iptc: bytes | None = None
    icc: bytes | None = None
    dpi: tuple[float, float] | None = None  # the resolution the file states (pixels per inch, x and y) or None


def decode(data: bytes, name: str, cfg: InputConfig) -> Decoded:
    """Decode an image's bytes into the sRGB working space; InputError naming ``name`` if bad,
    or if the decoded image is blank (``check_signal``)."""
    decoded = _decode(data, name, cfg)
    check_signal(decoded.pixels, printable(name), cfg.min_signal)
    return decoded


def _decode(data: bytes, name: str, cfg: InputConfig) -> Decoded:
    shown = printable(name)
    if not data:
        raise InputError(f"{shown}: file is empty (0 bytes)")
    kind = sniff(data)
    ext = os.path.splitext(str(name))[1].lower()
    notes: dict[str, Any] = {}
    if kind is not None and kind.startswith("refused:"):
        raise InputError(f"{shown}: {kind[8:]} files are not accepted (only {ACCEPTED_SHOWN})")
    if kind == "RAW" or (ext in RAW_EXTENSIONS and kind in (None, "TIFF")):
        return _decode_raw(data, shown, cfg, ext)
    if kind is None:
        raise InputError(f"{shown}: not an image (the content matches no accepted format)")
    expected = EXTENSION_FORMATS.get(ext)
    if ext and expected != kind:
        notes["content"] = f"named {ext} but the content is {kind}"
    try:
        return _decode_pillow(data, shown, cfg, kind, notes)
    except InputError:
        raise
    except MemoryError:
        raise InputError(f"{shown}: not enough memory to decode it") from None
    except Exception as exc:  # codecs raise many types for damaged content
        raise _damaged(shown, exc) from None


def _damaged(shown: str, exc: BaseException) -> InputError:
    """The error for a codec's failure: ``IncompleteInput`` when the data stopped before the image did."""
    why = reason(exc)
    kind = IncompleteInput if any(w in why.lower() for w in _CUT_SHORT) else InputError
    return kind(f"{shown}: image data is damaged ({why})")


def check_signal(pixels: np.ndarray, shown: str, min_signal: float) -> None:
    """InputError when the image has no picture: in every channel (alpha included) the pixels' standard
    deviation is under ``min_signal`` (``input.min_signal``; 0 turns the check off) levels of the image's own
    depth (of 255 at 8 bits, of 65535 at 16 bits).

    A decode that yields nothing (a RAW whose sensor data is all zero, a constant fill) measures 0; a real
    photograph, even white on white, measures more than a level. At its own depth, a dark 16-bit picture (a
    micrograph in the lowest 1 % of the range) is not taken for a blank. The message says what was measured."""
    if min_signal <= 0:
        return
    mean, std = (v.ravel() for v in cv2.meanStdDev(pixels))
    measured = float(std.max())
    if measured >= min_signal:
        return
    top = 65535 if pixels.dtype == np.uint16 else 255
    colour = "#" + "".join(f"{int(round(v * 255 / top)):02x}" for v in mean)
    if measured == 0.0:
        raise InputError(f"{shown}: decoded image is blank (every pixel is {colour}: standard deviation 0 levels "
                         f"of {top}, under input.min_signal ({min_signal:g}))")
    raise InputError(f"{shown}: decoded image is blank (standard deviation {measured:.2f} levels of {top}, "
                     f"under input.min_signal ({min_signal:g}); mean colour {colour})")




def _pixels(n: int) -> str:
    if n < 100_000:
        return f"{n} pixels"
    mp = n / 1e6
    return f"{mp:,.0f} megapixels" if mp >= 100 else f"{mp:.3g} megapixels"


def _bomb(shown: str, w: int, h: int, cfg: InputConfig) -> InputError:
    return InputError(f"{shown}: {w}×{h} = {_pixels(w * h)} exceeds input.max_pixels "
                      f"({_pixels(cfg.max_pixels)}); refused before decoding")


def _open(data: bytes, shown: str, cfg: InputConfig, kind: str) -> Image.Image:
    """Open with Pillow (its allow-list of formats): the header is read, no pixel yet; refused above
    ``max_pixels`` as Pillow's own check would (its count: a side of 0 counts as 1)."""
    if kind in ("HEIF", "AVIF") and kind in Image.OPEN:
        _probe_heif(data, shown)
    try:
        im = Image.open(io.BytesIO(data), formats=list(PILLOW_FORMATS))
    except Image.UnidentifiedImageError:
        raise InputError(f"{shown}: not a readable image (its {kind} header is damaged: no decoder "
                         f"could make sense of it)") from None
    except Exception as exc:
        raise InputError(f"{shown}: not a readable image ({reason(exc)})") from None
    declared = max(1, im.width) * max(1, im.height)
    if declared > cfg.max_pixels:
        raise InputError(f"{shown}: {_pixels(declared)} exceeds input.max_pixels ({_pixels(cfg.max_pixels)}); "
                         f"refused before decoding")
    return im


def _probe_heif(data: bytes, shown: str) -> None:
    """Parse a HEIF container with libheif first: Pillow's open hides libheif's reason (security
    limits, corrupt boxes) behind "cannot identify image file"."""
    if sniff(data) != "HEIF":
        return
    try:
        pillow_heif.open_heif(io.BytesIO(data), convert_hdr_to_8bit=True)
    except Exception as exc:
        raise InputError(f"{shown}: HEIF decoder refused it ({reason(exc)})") from None


def _check_size(im: Image.Image, shown: str, cfg: InputConfig) -> None:
    """The bomb check: the header's declared size against ``max_pixels``, before any pixel is decoded.

    Never the file's size against the declared size: deflate packs a flat graphic 2,000:1 and more, so
    a small file is no proof of a lying header. Damage is what decoding finds (a truncated stream
    raises when the pixels are loaded)."""
    w, h = im.size
    if w <= 0 or h <= 0:
        raise InputError(f"{shown}: header claims an empty image ({w}×{h})")
    if w * h > cfg.max_pixels:
        raise _bomb(shown, w, h, cfg)


def _decode_pillow(data: bytes, shown: str, cfg: InputConfig, kind: str, notes: dict[str, Any]) -> Decoded:
    im = _open(data, shown, cfg, kind)
    _check_size(im, shown, cfg)
    fmt = str(im.format or kind)
    frame = _frame_shown(im, fmt, notes)
    exif_obj = im.getexif()
    orientation = int(exif_obj.get(meta.ORIENTATION, 1) or 1)
    orientation = orientation if orientation in range(1, 9) else 1
    if fmt == "HEIF" and im.info.get("original_orientation", 1) not in (None, 1):
        notes["orientation"] = int(im.info["original_orientation"])  # libheif already rotated the pixels
        orientation = 1
    exif = meta.exif_from_tiff_tags(exif_obj) if fmt == "TIFF" else im.info.get("exif")
    if isinstance(exif, bytes) and not exif.startswith(b"Exif\x00\x00"):
        # WebP/PNG/HEIF hold bare TIFF-structured EXIF: given JPEG's APP1 header, every encoder takes it
        exif = b"Exif\x00\x00" + exif if exif[:2] in (b"II", b"MM") else None
    xmp = _xmp_of(im)
    iptc = _iptc_of(im)
    icc = im.info.get("icc_profile") or None

    pixels: np.ndarray | None = None
    if fmt == "PNG" and len(data) > 24 and data[24] == 16:
        pixels = _decode_png16(data, shown)
    elif fmt == "TIFF" and _tiff_is_16bit(im):
        pixels = _decode_tiff16(data, shown)
    if pixels is None:
        pixels = _pil_pixels(im, frame, icc, cfg, notes, shown)
    else:
        notes["bits"] = 16
        if icc:
            pixels = convert_16bit(pixels, icc, cfg, notes)
        elif pixels.shape[2] < 3:
            pixels = grey_to_rgb(pixels)
    if orientation != 1:
        pixels = apply_orientation(pixels, orientation)
        notes["orientation"] = orientation
    if exif and orientation != 1:
        exif = meta.exif_orientation_reset(exif)
    if xmp:
        xmp = meta.xmp_orientation_reset(xmp)
    dpi = _dpi_of(im, fmt, exif_obj)
    if dpi and notes.get("orientation") in (5, 6, 7, 8):  # turned a quarter: the axes swap
        dpi = (dpi[1], dpi[0])
    return Decoded(pixels=np.ascontiguousarray(pixels), format=fmt, exif=exif or None, xmp=xmp,
                   notes=notes, iptc=iptc, icc=icc, dpi=dpi)


def _dpi_of(im: Image.Image, fmt: str, exif: Image.Exif) -> tuple[float, float] | None:
    """The resolution the file states, in pixels per inch; None when it states none (or only an aspect ratio).

    JPEG: the JFIF density when it has a unit, else the EXIF resolution. PNG: pHYs (per metre). TIFF: its
    X/YResolution and ResolutionUnit (inch when absent). WebP, HEIF, AVIF: the EXIF resolution."""
    if fmt in ("JPEG", "MPO"):
        unit, density = im.info.get("jfif_unit"), im.info.get("jfif_density")
        if unit in (1, 2) and density:
            return meta.dpi_from(float(density[0]), float(density[1]), 2 if unit == 1 else 3)
        return meta.exif_resolution(exif)
    if fmt == "PNG":
        dpi = im.info.get("dpi")  # Pillow: pHYs in pixels per metre × 0.0254, when its unit is the metre
        if not dpi:
            return None
        return meta.dpi_from(_dpi_from_ppm(round(dpi[0] / 0.0254)), _dpi_from_ppm(round(dpi[1] / 0.0254)), 2)
    if fmt == "TIFF":
        tags = getattr(im, "tag_v2", {})
        try:
            x = float(tags[282]) if 282 in tags else None
            y = float(tags[283]) if 283 in tags else x
            return meta.dpi_from(x, y, int(tags.get(296, 2) or 2))
        except (TypeError, ValueError, ZeroDivisionError):
            return None
    return meta.exif_resolution(exif)


def _dpi_from_ppm(ppm: int) -> float:
    """Pixels per metre as the shortest dpi that writes back as the same pixels per metre (11811 → 300)."""
    for digits in range(4):
        dpi = round(ppm * 0.0254, digits)
        if round(dpi / 0.0254) == ppm:
            return float(dpi)
    return ppm * 0.0254


def _frame_shown(im: Image.Image, fmt: str, notes: dict[str, Any]) -> int:
    """The image of a multi-image file that viewers show, which is the one decoded; notes say which of how many.

    HEIF/HEIC: the primary image (pillow-heif opens the file at it; it need not be the first). MPO:
    the first, which the format makes the primary. TIFF: the first page. Animated PNG and WebP: the
    first frame (for APNG, the default image every PNG decoder shows)."""
    index = im.tell()  # before anything seeks: the image the plugin opened at
    count = int(getattr(im, "n_frames", 1) or 1)
    if count > 1:
        if fmt in ("HEIF", "MPO"):
            notes["images"], notes["image"] = count, f"{index} (primary)"
        elif fmt == "TIFF":
            notes["pages"], notes["page"] = count, f"{index} (first)"
        elif im.info.get("default_image"):  # APNG whose still image is shown by decoders that do not animate
            notes["frames"], notes["frame"] = count, f"{index} (the default image, not part of the animation)"
        else:
            notes["frames"], notes["frame"] = count, f"{index} (first)"
    return index


def _xmp_of(im: Image.Image) -> bytes | None:
    xmp = im.info.get("xmp") or im.info.get("XML:com.adobe.xmp")
    if xmp is None and hasattr(im, "tag_v2"):
        xmp = im.tag_v2.get(700)
    if isinstance(xmp, str):
        xmp = xmp.encode("utf-8")
    if isinstance(xmp, tuple):
        xmp = bytes(xmp)
    return xmp or None


def _iptc_of(im: Image.Image) -> bytes | None:
    iptc: Any = None
    photoshop = im.info.get("photoshop")
    if isinstance(photoshop, dict):
        iptc = photoshop.get(0x0404)
    if iptc is None and hasattr(im, "tag_v2"):
        iptc = im.tag_v2.get(33723)
        if isinstance(iptc, tuple):  # Photoshop stores it as LONGs: the bytes are the words in file order
            if im.tag_v2.tagtype.get(33723) == 4:
                end = "<" if getattr(im.tag_v2, "_endian", "<") == "<" else ">"
                iptc = struct.pack(f"{end}{len(iptc)}I", *iptc)
            else:
                iptc = bytes(v & 0xFF for v in iptc)
    return iptc if isinstance(iptc, bytes) and iptc else None


def _tiff_is_16bit(im: Image.Image) -> bool:
    """Unsigned 16-bit grey or RGB(A): Pillow would truncate it to 8 bits, tifffile keeps it."""
    tags = getattr(im, "tag_v2", {})
    bits = tags.get(258)
    bits = bits if isinstance(bits, tuple) else (bits,)
    fmt = tags.get(339, 1)
    fmt = fmt if isinstance(fmt, tuple) else (fmt,)
    return all(b == 16 for b in bits) and tags.get(262) in (1, 2) and all(f == 1 for f in fmt)


def _decode_png16(data: bytes, shown: str) -> np.ndarray:
    arr = cv2.imdecode(np.frombuffer(_png_still(data), np.uint8), cv2.IMREAD_UNCHANGED)
    if arr is None or arr.dtype != np.uint16:
        raise InputError(f"{shown}: image data is damaged (16-bit PNG could not be decoded: truncated or corrupt)")
    return _from_cv2(arr)


_APNG_CHUNKS = (b"acTL", b"fcTL", b"fdAT")


def _png_still(data: bytes) -> bytes:
    """The PNG without its APNG chunks: the default image, as Pillow's frame 0 and every non-APNG decoder show
    it (OpenCV plays APNG and would return an animation frame instead). Unchanged when not animated."""
    out, i, animated = [data[:8]], 8, False
    while i + 12 <= len(data):
        (n,) = struct.unpack_from(">I", data, i)
        kind = data[i + 4:i + 8]
        animated = animated or kind == b"acTL"
        if kind == b"IDAT" and not animated:  # acTL comes before the first IDAT, or nowhere
            return data
        if kind not in _APNG_CHUNKS:
            out.append(data[i:i + 12 + n])
        i += 12 + n
    out.append(data[i:])  # a damaged tail stays, for the decoder to find
    return b"".join(out)


def _from_cv2(arr: np.ndarray) -> np.ndarray:
    if arr.ndim == 2:
        return arr[..., None]
    if arr.shape[2] == 3:
        return arr[..., ::-1]
    if arr.shape[2] == 4:
        return arr[..., [2, 1, 0, 3]]
    return arr


def _decode_tiff16(data: bytes, shown: str) -> np.ndarray | None:
    """First page of a 16-bit RGB(A)/grey TIFF as H×W×C uint16 (None: let Pillow do it at 8 bits)."""
    import tifffile

    try:
        with tifffile.TiffFile(io.BytesIO(data)) as tf:
            page = tf.pages.first
            for off, n in zip(page.dataoffsets, page.databytecounts):
                if off + n > len(data):
                    raise IncompleteInput(f"{shown}: image data is damaged (TIFF is truncated: strip ends at byte "
                                     f"{off + n} of {len(data)})")
            extras = tuple(page.extrasamples or ())
            try:
                arr = page.asarray()
            except (ValueError, NotImplementedError, KeyError):  # codec not available without imagecodecs
                arr = None
            if arr is not None:
                if page.planarconfig == 2 and arr.ndim == 3:
                    arr = np.moveaxis(arr, 0, -1)
                if arr.ndim == 2:
                    arr = arr[..., None]
                colour = 3 if arr.shape[2] >= 3 else 1
                if arr.shape[2] > colour:
                    if extras[:1] in ((1,), (2,)):
                        alpha = arr[..., colour:colour + 1]
                        arr = arr[..., :colour + 1]
                        if extras[0] == 1:  # associated (premultiplied) alpha → straight
                            a = np.maximum(alpha.astype(np.float32), 1.0)
                            rgb = np.clip(arr[..., :colour].astype(np.float32) * 65535.0 / a + 0.5, 0, 65535)
                            arr = np.concatenate([rgb.astype(np.uint16), alpha], axis=2)
                    else:
                        arr = arr[..., :colour]
                return np.ascontiguousarray(arr.astype(np.uint16, copy=False))
    except InputError:
        raise
    except Exception as exc:
        raise _damaged(shown, exc) from None
    arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if arr is None:
        raise InputError(f"{shown}: image data is damaged (16-bit TIFF could not be decoded)")
    if arr.dtype != np.uint16:
        return None
    return _from_cv2(arr)



def _pil_pixels(im: Image.Image, frame: int, icc: bytes | None, cfg: InputConfig, notes: dict[str, Any],
                shown: str) -> np.ndarray:
    """Load image ``frame`` with Pillow (8 bits per channel, or grey I;16), convert to sRGB RGB/RGBA."""
    im.seek(frame)
    im.load()  # LOAD_TRUNCATED_IMAGES is False: a truncated file raises here
    mode = im.mode
    if mode in ("I", "F"):
        raise InputError(f"{shown}: 32-bit integer/floating-point pixels are not supported")
    if mode.startswith("I;16"):
        grey = np.asarray(im).astype(np.uint16)[..., None]
        notes["bits"] = 16
        return convert_16bit(grey, icc, cfg, notes) if icc else grey_to_rgb(grey)
    has_alpha = "A" in im.getbands() or "a" in im.getbands() or "transparency" in im.info
    if mode == "P":
        im = im.convert("RGBA" if has_alpha else "RGB")
        notes["palette"] = "expanded" + (" with transparency" if has_alpha else "")
    alpha = None
    if has_alpha:
        rgba = im.convert("RGBA") if im.mode != "RGBA" else im
        alpha = rgba.getchannel("A")
        base = rgba.convert("RGB") if im.mode not in ("L", "LA", "La") else im.convert("L")
    elif mode in ("1", "L"):
        base = im.convert("L")
    elif mode == "CMYK":
        base = im
    else:
        base = im if mode == "RGB" else im.convert("RGB")  # converting RGB to RGB only copies (50 ms at 24 MP)
    if icc:
        base = convert_8bit(base, icc, cfg, notes)
    elif mode == "CMYK":
        notes["icc"] = "none: CMYK converted with the naive formula (no embedded profile)"
    if base.mode != "RGB":
        base = base.convert("RGB")
    out = np.asarray(base)
    if alpha is not None:
        out = np.dstack([out, np.asarray(alpha)])
    return out


# ---------------------------------------------------------------- orientation

def apply_orientation(arr: np.ndarray, orientation: int) -> np.ndarray:
    """Make pixels upright per the EXIF orientation (1..8), as ImageOps.exif_transpose does."""
    if orientation == 2:
        return arr[:, ::-1]
    if orientation == 3:
        return arr[::-1, ::-1]
    if orientation == 4:
        return arr[::-1]
    if orientation == 5:
        return arr.swapaxes(0, 1)
    if orientation == 6:
        return np.rot90(arr, -1)
    if orientation == 7:
        return arr[::-1, ::-1].swapaxes(0, 1)
    if orientation == 8:
        return np.rot90(arr, 1)
    return arr


# ---------------------------------------------------------------- RAW

def _decode_raw(data: bytes, shown: str, cfg: InputConfig, ext: str) -> Decoded:
    try:
        result = raw.decode_raw(data, half_size=cfg.raw_half_size, memory_mb=cfg.raw_memory_mb,
                                      timeout_s=RAW_TIMEOUT_S)
    except raw.RawDecodeError as exc:
        raise InputError(f"{shown}: {exc}") from None
    h, w = result.pixels.shape[:2]
    if w * h > cfg.max_pixels:
        raise _bomb(shown, w, h, cfg)
    notes: dict[str, Any] = {"raw": "LibRaw: camera white balance, AHD demosaic, sRGB", "bits": 16}
    if cfg.raw_half_size:
        notes["raw_half_size"] = True
    if result.notes.get("flip"):
        notes["orientation"] = {3: 3, 5: 8, 6: 6}.get(result.notes["flip"], result.notes["flip"])
    exif = _raw_exif(data)
    return Decoded(pixels=result.pixels, format="RAW", exif=exif, notes=notes)


def _raw_exif(data: bytes) -> bytes | None:
    """EXIF of TIFF-based RAWs (CR2, NEF, ARW, DNG, ORF...) read from their first IFD; None otherwise."""
    if data[:4] not in (b"II*\x00", b"MM\x00*"):
        return None
    try:
        from PIL import TiffImagePlugin

        ifd = TiffImagePlugin.ImageFileDirectory_v2(data[:8])
        fp = io.BytesIO(data)
        fp.seek(ifd.next)
        ifd.load(fp)
        out = Image.Exif()
        for tag, value in ifd.items():
            if tag not in meta.TIFF_STRUCTURE_TAGS and tag not in (meta.EXIF_IFD, meta.GPS_IFD) and tag < 50000:
                out[tag] = value  # tags ≥ 50000 are DNG/vendor private: colour matrices, not photo facts
        out[meta.ORIENTATION] = 1
        if meta.EXIF_IFD in ifd:
            fp.seek(int(ifd[meta.EXIF_IFD]))
            sub = TiffImagePlugin.ImageFileDirectory_v2(data[:8])
            sub.load(fp)
            out[meta.EXIF_IFD] = {t: v for t, v in sub.items() if t != 0x927C}  # no MakerNote
        return out.tobytes()
    except Exception:
        return None
