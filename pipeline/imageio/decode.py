"""Reading inputs and writing encoded outputs: the only module that talks to image codecs.

``read_input`` takes a path and returns the file's bytes (never following symlinks);
``decode`` turns bytes into a ``Decoded`` (sRGB working space, orientation applied; of a multi-image
file, the image a viewer shows) and refuses a blank result (``check_signal``);
``encode`` turns pixels into the bytes of a channel's format with an sRGB profile embedded and the
print resolution (the channel's ``dpi`` or the input's) stated; in every output that keeps alpha,
RGB is 0 wherever alpha is 0 (``clear_transparent``).

Decoders, chosen by content (magic bytes), never by the extension alone:
  JPEG, PNG, TIFF (and BigTIFF), WebP, HEIF/HEIC (pillow-heif), AVIF   Pillow, with an allow-list of formats;
  16-bit PNG                                           OpenCV (Pillow truncates RGB to 8 bits);
  16-bit TIFF                                          tifffile (OpenCV when tifffile lacks the codec);
  camera RAW                                           LibRaw in a subprocess (``rawdecode``).

Colour: an embedded ICC profile is converted to sRGB. 8-bit images go through littleCMS
(Pillow's ImageCms). littleCMS in Pillow has no 16-bit RGB mode, so 16-bit images with a
matrix/TRC profile (Adobe RGB, Display P3, ProPhoto, camera RGB, grey) are converted here in
float32 from the profile's own colorants and curves, concatenated with sRGB's (the relative
colorimetric path littleCMS takes for matrix-shaper profiles, where perceptual and relative are
the same transform): within ΔE2000 0.2 of littleCMS at 8 bits, see tests/test_colour.py.
16-bit images with LUT-based profiles (CMYK, some printer/scanner RGB) fall back to littleCMS at
8 bits, and ``notes["bits"]`` says so. Untagged images are taken as sRGB; a profile that
describes sRGB is not "converted" (no needless rounding).
"""
from __future__ import annotations

import io
import os
import re
import stat
import struct
import warnings
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import cv2
import numpy as np
import pillow_heif
from PIL import Image, ImageCms, ImageFile

from . import metadata as meta
from . import raw
from ..config import ChannelConfig, InputConfig
from ..errors import InputError, TransientError
from ..pixels import flatten, to_dtype

pillow_heif.register_heif_opener()  # HEIF/HEIC through Image.open, so the allow-list applies to it too

_SRGB = ImageCms.createProfile("sRGB")


def _fixed_date(icc: bytes) -> bytes:
    """LittleCMS stamps a profile's creation date (header bytes 24-35) with the time it was built; a fixed
    date makes the same pixels give the same file in every run, so a shop sync does not re-upload an
    unchanged output. (The profile ID, bytes 84-99, is zero: nothing else depends on the date.)"""
    return icc[:24] + struct.pack(">6H", 2020, 1, 1, 0, 0, 0) + icc[36:]


SRGB_ICC: bytes = _fixed_date(ImageCms.ImageCmsProfile(_SRGB).tobytes())  # embedded in every output

# Pillow formats we are willing to decode (no EPS/PS/PDF/SVG, GIF, BMP or other exotic parsers).
ALLOWED_FORMATS = ("JPEG", "PNG", "TIFF", "WEBP", "HEIF", "AVIF")  # JPEG includes MPO
RAW_EXTENSIONS = {
    ".cr2", ".cr3", ".crw", ".nef", ".nrw", ".arw", ".srf", ".sr2", ".raf", ".orf", ".rw2", ".dng",
    ".pef", ".srw", ".3fr", ".iiq", ".erf", ".mef", ".mos", ".kdc", ".rwl", ".x3f",
}
EXTENSION_FORMATS = {  # what each image extension should hold (a mismatch is noted, not refused)
    ".jpg": "JPEG", ".jpeg": "JPEG", ".jpe": "JPEG", ".jfif": "JPEG", ".png": "PNG", ".tif": "TIFF",
    ".tiff": "TIFF", ".webp": "WEBP", ".heic": "HEIF", ".heif": "HEIF", ".hif": "HEIF", ".avif": "AVIF",
    ".mpo": "JPEG",  # MPO: JPEG images one after the other; sniffed as JPEG
}
# Every extension the decoder reads, without the dot: the one list rules take by default (rules.DEFAULT_EXTENSIONS).
INPUT_EXTENSIONS = tuple(ext.lstrip(".") for ext in (*EXTENSION_FORMATS, *sorted(RAW_EXTENSIONS)))
# Formats we recognise by their magic bytes only to refuse them with a precise reason.
_REFUSED_MAGIC = [
    (b"%PDF", "PDF"), (b"%!PS", "PostScript"), (b"\xc5\xd0\xd3\xc6", "EPS"), (b"GIF8", "GIF"),
    (b"BM", "BMP"), (b"8BPS", "Photoshop PSD"), (b"\x00\x00\x01\x00", "ICO"), (b"PK\x03\x04", "ZIP"),
]
RAW_TIMEOUT_S = 600.0

# Never decode a truncated file into a grey half-image: truncation is an error.
ImageFile.LOAD_TRUNCATED_IMAGES = False


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


def printable(name: str) -> str:
    """A file name safe to put in a one-line message: control characters escaped (\\n, \\x1b)."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(name))


# ====================================================================== reading

def read_input(path: Path) -> bytes:
    """The file's bytes; InputError for anything that is not a readable regular file.

    Symlinks are refused (lstat, then O_NOFOLLOW on open, then fstat to check it is the same
    inode); a file replaced or resized while being read raises TransientError (retry later).
    """
    shown = printable(str(path))
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        raise InputError(f"{shown}: file disappeared before it could be read") from None
    except OSError as exc:
        raise InputError(f"{shown}: cannot stat file: {exc.strerror}") from None
    if stat.S_ISLNK(st.st_mode):
        raise InputError(f"{shown}: is a symbolic link; links are never followed")
    if not stat.S_ISREG(st.st_mode):
        raise InputError(f"{shown}: not a regular file")
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    except PermissionError:
        raise InputError(f"{shown}: no permission to read the file") from None
    except FileNotFoundError:
        raise TransientError(f"{shown}: file disappeared while it was being opened") from None
    except OSError as exc:
        if exc.errno == getattr(os, "ELOOP", -1):
            raise InputError(f"{shown}: is a symbolic link; links are never followed") from None
        raise InputError(f"{shown}: cannot open file: {exc.strerror}") from None
    try:
        fst = os.fstat(fd)
        if (fst.st_ino, fst.st_dev) != (st.st_ino, st.st_dev) or not stat.S_ISREG(fst.st_mode):
            raise TransientError(f"{shown}: file was replaced while it was being opened")
        chunks = []
        while True:
            try:
                chunk = os.read(fd, 1 << 22)
            except OSError as exc:
                raise InputError(f"{shown}: read error: {exc.strerror}") from None
            if not chunk:
                break
            chunks.append(chunk)
        data = b"".join(chunks)
        after = os.fstat(fd)
    finally:
        os.close(fd)
    if len(data) != st.st_size or after.st_size != st.st_size or after.st_mtime_ns != st.st_mtime_ns:
        raise TransientError(f"{shown}: file changed while it was read "
                             f"({st.st_size} → {len(data)} bytes); will retry once it settles")
    try:
        now = os.lstat(path)
    except FileNotFoundError:
        raise TransientError(f"{shown}: file was removed while it was read") from None
    if (now.st_ino, now.st_dev) != (st.st_ino, st.st_dev):
        raise TransientError(f"{shown}: file was replaced while it was read")
    if not data:
        raise InputError(f"{shown}: file is empty (0 bytes)")
    return data


# ====================================================================== sniffing

def sniff(data: bytes) -> str | None:
    """What the content is by its magic bytes: an ALLOWED_FORMATS name, "RAW", a refused
    format's name prefixed with "refused:", or None when nothing matches."""
    head = data[:32]
    if head.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    if head.startswith(b"FUJIFILMCCD-RAW") or head[:4] in (b"IIRO", b"IIRS", b"MMOR", b"IIU\x00"):
        return "RAW"  # Fuji RAF, Olympus ORF, Panasonic RW2
    if head[4:8] == b"ftyp":
        brand = head[8:12]
        if brand == b"crx ":
            return "RAW"  # Canon CR3
        if brand in (b"avif", b"avis"):
            return "AVIF"
        if brand in (b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"mif1", b"msf1"):
            return "HEIF"
        return None
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):  # classic TIFF or BigTIFF
        if head[:4] == b"II*\x00" and head[8:10] == b"CR":
            return "RAW"  # Canon CR2
        return "RAW" if 50706 in _tiff_ifd0_tags(data) else "TIFF"  # DNGVersion: a DNG
    for magic, what in _REFUSED_MAGIC:
        if head.startswith(magic):
            return f"refused:{what}"
    stripped = head.lstrip()
    if stripped.startswith((b"<svg", b"<?xml", b"<!DOCTYPE svg")):
        return "refused:SVG/XML"
    return None


def _tiff_ifd0_tags(data: bytes) -> set[int]:
    """The tag numbers of a TIFF's (or BigTIFF's) first IFD (empty when the structure is broken)."""
    try:
        end = "<" if data[:2] == b"II" else ">"
        if struct.unpack_from(end + "H", data, 2)[0] == 43:  # BigTIFF: 8-byte offsets and counts, 20-byte entries
            (ifd,) = struct.unpack_from(end + "Q", data, 8)
            (count,) = struct.unpack_from(end + "Q", data, ifd)
            first, size = ifd + 8, 20
        else:
            (ifd,) = struct.unpack_from(end + "I", data, 4)
            (count,) = struct.unpack_from(end + "H", data, ifd)
            first, size = ifd + 2, 12
        return {struct.unpack_from(end + "H", data, first + size * i)[0] for i in range(min(count, 4096))}
    except struct.error:
        return set()


# ====================================================================== decoding

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
        raise InputError(f"{shown}: {kind[8:]} files are not accepted (only JPEG, PNG, TIFF, WebP, "
                         f"HEIF/HEIC, AVIF and camera RAW)")
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
        raise InputError(f"{shown}: image data is damaged ({_reason(exc)})") from None


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


_OBJECT_REPR = re.compile(r"\s*<[^<>]* at 0x[0-9a-fA-F]+>")  # "<_io.BytesIO object at 0x7f…>"
_BYTES_REPR = re.compile(r"""\bb(['"])(.*?)\1""")  # b'Input/output error'


def clean_text(text: str) -> str:
    """A library's message fit for a one-line error: no object or bytes reprs, whitespace collapsed."""
    text = _BYTES_REPR.sub(lambda m: m.group(2), _OBJECT_REPR.sub("", text))
    return " ".join(text.split())


def _reason(exc: BaseException) -> str:
    text = clean_text(str(exc)) or "no detail"
    return f"{type(exc).__name__}: {text[:200]}"


def _pixels(n: int) -> str:
    if n < 100_000:
        return f"{n} pixels"
    mp = n / 1e6
    return f"{mp:,.0f} megapixels" if mp >= 100 else f"{mp:.3g} megapixels"


def _bomb(shown: str, w: int, h: int, cfg: InputConfig) -> InputError:
    return InputError(f"{shown}: {w}×{h} = {_pixels(w * h)} exceeds input.max_pixels "
                      f"({_pixels(cfg.max_pixels)}); refused before decoding")


def _open(data: bytes, shown: str, cfg: InputConfig, kind: str) -> Image.Image:
    # Pillow warns above MAX_IMAGE_PIXELS and refuses above twice that. Its ceiling follows ours, so
    # it never warns about an image we accept, and its warning is turned into an error (never a mere
    # log line). Our own check from the header (``_check_size``) refuses the rest in any case.
    Image.MAX_IMAGE_PIXELS = cfg.max_pixels
    warnings.filterwarnings("error", category=Image.DecompressionBombWarning)
    if kind in ("HEIF", "AVIF") and kind in Image.OPEN:
        _probe_heif(data, shown)
    try:
        return Image.open(io.BytesIO(data), formats=list(ALLOWED_FORMATS))
    except Image.UnidentifiedImageError:
        raise InputError(f"{shown}: not a readable image (its {kind} header is damaged: no decoder "
                         f"could make sense of it)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        found = re.search(r"\((\d+) pixels\)", str(exc))
        size = _pixels(int(found.group(1))) if found else "the image"
        raise InputError(f"{shown}: {size} exceeds input.max_pixels ({_pixels(cfg.max_pixels)}); "
                         f"refused before decoding") from None
    except Exception as exc:
        raise InputError(f"{shown}: not a readable image ({_reason(exc)})") from None


def _probe_heif(data: bytes, shown: str) -> None:
    """Parse a HEIF container with libheif first: Pillow's open hides libheif's reason (security
    limits, corrupt boxes) behind "cannot identify image file"."""
    if sniff(data) != "HEIF":
        return
    try:
        pillow_heif.open_heif(io.BytesIO(data), convert_hdr_to_8bit=True)
    except Exception as exc:
        raise InputError(f"{shown}: HEIF decoder refused it ({_reason(exc)})") from None


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
            pixels = _convert_16bit(pixels, icc, cfg, notes)
        elif pixels.shape[2] < 3:
            pixels = _grey_to_rgb(pixels)
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
                    raise InputError(f"{shown}: image data is damaged (TIFF is truncated: strip ends at byte "
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
        raise InputError(f"{shown}: image data is damaged ({_reason(exc)})") from None
    arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if arr is None:
        raise InputError(f"{shown}: image data is damaged (16-bit TIFF could not be decoded)")
    if arr.dtype != np.uint16:
        return None
    return _from_cv2(arr)


def _grey_to_rgb(arr: np.ndarray) -> np.ndarray:
    if arr.shape[2] == 1:
        return np.repeat(arr, 3, axis=2)
    if arr.shape[2] == 2:
        return np.concatenate([np.repeat(arr[..., :1], 3, axis=2), arr[..., 1:2]], axis=2)
    return arr


def _intent(cfg: InputConfig) -> int:
    return (ImageCms.Intent.PERCEPTUAL if cfg.colour_intent == "perceptual"
            else ImageCms.Intent.RELATIVE_COLORIMETRIC)


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
        return _convert_16bit(grey, icc, cfg, notes) if icc else _grey_to_rgb(grey)
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
        base = _icc_8bit(base, icc, cfg, notes)
    elif mode == "CMYK":
        notes["icc"] = "none: CMYK converted with the naive formula (no embedded profile)"
    if base.mode != "RGB":
        base = base.convert("RGB")
    out = np.asarray(base)
    if alpha is not None:
        out = np.dstack([out, np.asarray(alpha)])
    return out


def _icc_8bit(im: Image.Image, icc: bytes, cfg: InputConfig, notes: dict[str, Any]) -> Image.Image:
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
        notes["icc"] = f"{desc}: does not fit the {im.mode} image, ignored ({_reason(exc)})"
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


def _convert_16bit(arr: np.ndarray, icc: bytes, cfg: InputConfig, notes: dict[str, Any]) -> np.ndarray:
    """uint16 H×W×C (grey/RGB, optional alpha) with an ICC profile → uint16 sRGB RGB(A)."""
    try:
        desc = ImageCms.getProfileDescription(ImageCms.ImageCmsProfile(io.BytesIO(icc))).strip()
    except Exception:
        notes["icc"] = "unreadable embedded profile ignored (treated as sRGB)"
        return _grey_to_rgb(arr)
    colour = 3 if arr.shape[2] >= 3 else 1
    shaper = MatrixShaper.parse(icc)
    fits = shaper is not None and (shaper.space == "RGB") == (colour == 3)
    if shaper is not None and fits and shaper.is_srgb():
        notes["icc"] = f"{desc} (sRGB: kept)"
        return _grey_to_rgb(arr)
    if shaper is None or not fits:
        # LUT-based profile: littleCMS at 8 bits is the accurate choice we have.
        im = Image.fromarray(to_dtype(arr[..., :colour], np.uint8)[..., 0] if colour == 1
                             else to_dtype(arr[..., :3], np.uint8), "L" if colour == 1 else "RGB")
        out = np.asarray(_icc_8bit(im, icc, cfg, notes).convert("RGB"))
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


# ====================================================================== encoding

def encode(pixels: np.ndarray, channel: ChannelConfig, source: Decoded | None = None) -> bytes:
    """Encode pixels for a channel: its format, quality and bit depth, sRGB profile always embedded,
    metadata per ``channel.metadata`` (orientation always 1). Transparency is flattened onto
    ``channel.background`` when set, and onto white for JPEG; outputs that keep alpha get RGB 0
    wherever alpha is 0 (``clear_transparent``). Never resizes."""
    fmt = channel.format
    dpi = (float(channel.dpi), float(channel.dpi)) if channel.dpi else (source.dpi if source is not None else None)
    md = (meta.for_policy(channel.metadata, source.exif, source.xmp, source.iptc, dpi)
          if source is not None else meta.OutputMetadata())
    if pixels.ndim == 3 and pixels.shape[2] == 4 and (channel.background or fmt == "jpeg"):
        pixels = flatten(pixels, channel.background or "#ffffff")
    sixteen = channel.bits == 16 and fmt in ("png", "tiff")
    converted = to_dtype(pixels, np.uint16 if sixteen else np.uint8)
    owned = converted is not pixels  # a fresh array of ours: cleared in place, no second copy
    pixels = converted
    if fmt == "png":  # OpenCV takes BGR(A): that copy is ours too
        pixels = cv2.cvtColor(pixels, cv2.COLOR_RGBA2BGRA if pixels.shape[2] == 4 else cv2.COLOR_RGB2BGR)
        owned = True
    pixels = clear_transparent(pixels, in_place=owned)
    if fmt == "tiff":  # tifffile for 8 and 16 bits: Pillow's libtiff writer cannot link EXIF sub-IFDs
        return _tiff(pixels, md, dpi or (72.0, 72.0))  # TIFF requires a resolution: 72 dpi when none is known
    if fmt == "png":
        return _png(pixels, md, channel.png_compression, dpi)
    mode = "RGBA" if pixels.shape[2] == 4 else "RGB"
    im = Image.fromarray(np.ascontiguousarray(pixels), mode)
    buf = io.BytesIO()
    kwargs: dict[str, Any] = {"icc_profile": SRGB_ICC}
    if md.exif:
        kwargs["exif"] = md.exif
    if fmt == "jpeg":
        kwargs.update(quality=channel.quality, subsampling=0 if channel.quality >= 90 else 2, optimize=False)
        if dpi:
            kwargs["dpi"] = dpi  # JFIF density in dots per inch (whole numbers); without: "aspect ratio only"
        if md.xmp:
            kwargs["xmp"] = md.xmp
        if md.iptc:
            kwargs["extra"] = meta.photoshop_app13(md.iptc)
        im.save(buf, "JPEG", **kwargs)
    elif fmt == "webp":
        if md.xmp:
            kwargs["xmp"] = md.xmp
        if dpi and not md.exif and channel.metadata != "strip":  # WebP's only place for a resolution is EXIF
            kwargs["exif"] = meta.exif_resolution_only(dpi)
        # exact: keep the cleared RGB; libwebp would otherwise paint the subject's colours under alpha 0
        im.save(buf, "WEBP", quality=channel.quality, method=4, exact=True, **kwargs)
    else:  # config validation makes this unreachable
        raise ValueError(f"unknown format {fmt!r}")
    return buf.getvalue()


def clear_transparent(pixels: np.ndarray, *, in_place: bool = False) -> np.ndarray:
    """RGB 0 wherever alpha is 0: what every output that keeps alpha carries (README, Outputs).

    The photo's backdrop under a cut-out is invisible, but left in place it survives in the file
    (anyone can strip the alpha channel) and it makes a PNG many times larger and slower to write (a
    24 MP cut-out from a JPEG, same encoder: 13.6 MB in 4.9 s; clean, 0.58 MB in 0.59 s). Pixels with
    alpha > 0 are never touched. ``in_place`` writes into ``pixels`` (an array the caller owns);
    otherwise the caller's array is left alone and copied only when a transparent pixel still has
    colour (an opaque or already clean image costs a scan, not a copy). Works a megapixel at a time,
    so its masks stay small. RGB(A) only; anything else passes through.
    """
    if pixels.ndim != 3 or pixels.shape[2] != 4:
        return pixels
    if in_place:
        pixels = np.ascontiguousarray(pixels)  # OpenCV writes only into contiguous rows
        for band in _bands(pixels):
            hidden = band[..., 3] == 0
            if hidden.any():
                cv2.bitwise_xor(band, band, dst=band, mask=hidden.view(np.uint8))  # x ^ x = 0 under the mask
        return pixels
    if not any(_colour_under(band) for band in _bands(pixels)):
        return pixels
    out = np.zeros_like(pixels, order="C")  # calloc'd: a page costs nothing until it is written
    for band, dst in zip(_bands(pixels), _bands(out)):
        cv2.bitwise_and(band, band, dst=dst, mask=(band[..., 3] != 0).view(np.uint8))  # copy what is visible
    return out


def _bands(arr: np.ndarray) -> Iterator[np.ndarray]:
    """Row bands of about a megapixel (views, not copies)."""
    step = max(1, (1 << 20) // max(arr.shape[1], 1))
    return (arr[y:y + step] for y in range(0, arr.shape[0], step))


def _colour_under(band: np.ndarray) -> bool:
    """Whether some pixel of ``band`` with alpha 0 has RGB other than 0."""
    hidden = band[..., 3] == 0
    return bool(hidden.any()) and any(cv2.mean(band, mask=hidden.view(np.uint8))[:3])


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


# The "Up" filter on every row: on 24 MP cut-outs and photos (measured through JPEG) it gives files a
# few percent smaller than Pillow's or libpng's adaptive per-row choice, in two thirds to half the time.
_PNG_FILTER = ([cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_UP]
               if hasattr(cv2, "IMWRITE_PNG_FILTER") else [])  # OpenCV < 4.11: its default filters


def _png(bgr: np.ndarray, md: meta.OutputMetadata, level: int, dpi: tuple[float, float] | None) -> bytes:
    """8- or 16-bit PNG from BGR(A) pixels: OpenCV's libpng encodes (Pillow cannot write 16-bit RGB,
    nor choose the row filter) at zlib ``level``; we add the iCCP/pHYs/eXIf/iTXt chunks after IHDR."""
    ok, buf = cv2.imencode(".png", bgr, [cv2.IMWRITE_PNG_COMPRESSION, level, *_PNG_FILTER])
    if not ok:
        raise ValueError("OpenCV could not encode the PNG")
    png = buf.tobytes()
    ihdr_end = 8 + 8 + 13 + 4
    extra = _png_chunk(b"iCCP", b"sRGB\x00\x00" + zlib.compress(SRGB_ICC))
    if dpi:  # pixels per metre, unit 1
        extra += _png_chunk(b"pHYs", struct.pack(">IIB", round(dpi[0] / 0.0254), round(dpi[1] / 0.0254), 1))
    if md.exif:
        extra += _png_chunk(b"eXIf", md.exif.removeprefix(b"Exif\x00\x00"))
    if md.xmp:
        extra += _png_chunk(b"iTXt", b"XML:com.adobe.xmp\x00\x00\x00\x00\x00" + md.xmp)
    return png[:ihdr_end] + extra + png[ihdr_end:]


def _tiff(pixels: np.ndarray, md: meta.OutputMetadata, dpi: tuple[float, float]) -> bytes:
    """Deflate TIFF via tifffile (Pillow cannot write 16-bit RGB) at ``dpi`` pixels per inch; EXIF/GPS
    sub-IFDs appended and linked."""
    import tifffile

    extratags: list[tuple[int, int, int, Any, bool]] = [(34675, 7, len(SRGB_ICC), SRGB_ICC, True)]
    if md.xmp:
        extratags.append((700, 1, len(md.xmp), md.xmp, True))
    if md.iptc:
        extratags.append((33723, 7, len(md.iptc), md.iptc, True))
    exif = meta.load_exif(md.exif) if md.exif else None
    subifds: dict[int, dict[int, Any]] = {}
    if exif is not None:
        for tag, value in exif.items():
            if tag in (meta.EXIF_IFD, meta.GPS_IFD):
                continue
            if tag in meta.TIFF_STRUCTURE_TAGS or tag == meta.ORIENTATION:
                continue
            entry = _tifffile_tag(tag, value)
            if entry is not None:
                extratags.append(entry)
        for ifd_tag in (meta.EXIF_IFD, meta.GPS_IFD):
            sub = exif.get_ifd(ifd_tag)
            if sub:
                subifds[ifd_tag] = dict(sub)
                # tifffile will not write 34665/34853 itself: a private placeholder, renamed below
                extratags.append((_PLACEHOLDER[ifd_tag], 4, 1, 0, True))
    buf = io.BytesIO()
    tifffile.imwrite(buf, pixels, photometric="rgb", compression="zlib", byteorder="<",
                     extrasamples=[2] if pixels.shape[2] == 4 else None, extratags=extratags,
                     resolution=dpi, resolutionunit=2, metadata=None, software=False)
    out = bytearray(buf.getvalue())
    if subifds:
        if len(out) % 2:
            out += b"\x00"
        holder = Image.Exif()
        holder.endian = "<"  # same byte order as tifffile's output
        for ifd_tag, sub in subifds.items():
            holder[ifd_tag] = sub
        base = len(out)
        blob = holder.tobytes(base)[6 + 8:]  # drop "Exif\0\0" and the 8-byte TIFF header
        out += blob
        pointers = _ifd_entries(bytes(out), base)
        _link_ifd0(out, {tag: pointers[tag] for tag in subifds if tag in pointers})
    return bytes(out)


def _tifffile_tag(tag: int, value: Any) -> tuple[int, int, int, Any, bool] | None:
    if isinstance(value, str):
        raw = value.encode("utf-8", "replace")
        return (tag, 2, len(raw) + 1, raw, True)
    if isinstance(value, bytes):
        return (tag, 7, len(value), value, True)
    if isinstance(value, int):
        return (tag, 4, 1, value, True)
    return None


def _ifd_entries(data: bytes, offset: int) -> dict[int, int]:
    """{tag: value} of the LONG entries of the little-endian IFD at ``offset``."""
    (count,) = struct.unpack_from("<H", data, offset)
    out = {}
    for i in range(count):
        tag, typ, n, value = struct.unpack_from("<HHII", data, offset + 2 + 12 * i)
        if n == 1 and typ in (4, 13):
            out[tag] = value
    return out


_PLACEHOLDER = {meta.EXIF_IFD: 65000, meta.GPS_IFD: 65001}


def _link_ifd0(out: bytearray, pointers: dict[int, int]) -> None:
    """Turn IFD0's placeholder entries into ExifIFD/GPSInfo pointers, keeping entries sorted by tag."""
    (ifd,) = struct.unpack_from("<I", out, 4)
    (count,) = struct.unpack_from("<H", out, ifd)
    entries = []
    renamed = {v: k for k, v in _PLACEHOLDER.items()}
    for i in range(count):
        tag, typ, n, value = struct.unpack_from("<HHII", out, ifd + 2 + 12 * i)
        if tag in renamed and renamed[tag] in pointers:
            tag, typ, n, value = renamed[tag], 4, 1, pointers[renamed[tag]]
        entries.append((tag, typ, n, value))
    for i, entry in enumerate(sorted(entries)):
        struct.pack_into("<HHII", out, ifd + 2 + 12 * i, *entry)
