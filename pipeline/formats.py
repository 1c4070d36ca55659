"""Every file format assetd knows, in one table: the extensions its files carry, what its content is called,
what decodes it, which channel format writes it, and whether it is accepted at all.

Like Pillow, which registers everything about a format in one place, there is no second table to disagree
with it: the decoder's allow-list, the extensions rules take by default, the channel formats config accepts
and the formats refused with a reason are all read from ``FORMATS``. ``sniff`` tells the content by its magic bytes.
Imports nothing heavy, so config and the notifier can read it without loading a codec.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

PILLOW = "Pillow"  # with an allow-list of formats; 16-bit PNG through OpenCV, 16-bit TIFF through tifffile
LIBRAW = "LibRaw"  # in a disposable subprocess (imageio.raw)


@dataclass(frozen=True)
class Format:
    """One format. ``decoder`` None: refused, recognised only to say why (by ``magic``, at the start of the
    content, after leading whitespace for ``text`` formats)."""

    name: str  # Pillow's name for it ("MPO"), or what messages call it ("PDF")
    kind: str  # what ``sniff`` calls the content: an MPO starts as a JPEG and is sniffed as one
    shown: str  # its name in the list of accepted formats
    extensions: tuple[str, ...] = ()  # the input extensions whose files should hold it
    decoder: str | None = None  # PILLOW or LIBRAW; None: refused
    channel: str | None = None  # the channel format (config's ``format:``) that writes it
    channel_extension: str | None = None  # the extension of that channel's files
    magic: tuple[bytes, ...] = ()
    text: bool = False


FORMATS: tuple[Format, ...] = (
    #      name   kind    shown   extensions                            decoder channel channel_extension
    Format("JPEG", "JPEG", "JPEG", (".jpg", ".jpeg", ".jpe", ".jfif"), PILLOW, "jpeg", "jpg"),
    Format("PNG", "PNG", "PNG", (".png",), PILLOW, "png", "png"),
    Format("TIFF", "TIFF", "TIFF", (".tif", ".tiff"), PILLOW, "tiff", "tif"),  # and BigTIFF
    Format("WEBP", "WEBP", "WebP", (".webp",), PILLOW, "webp", "webp"),
    Format("HEIF", "HEIF", "HEIF/HEIC", (".heic", ".heif", ".hif"), PILLOW),  # pillow-heif's plugin
    Format("AVIF", "AVIF", "AVIF", (".avif",), PILLOW),
    Format("MPO", "JPEG", "MPO", (".mpo",), PILLOW),  # JPEG images one after the other; Pillow's JPEG opener reads it
    Format("RAW", "RAW", "camera RAW", (
        ".3fr", ".arw", ".cr2", ".cr3", ".crw", ".dng", ".erf", ".iiq", ".kdc", ".mef", ".mos", ".nef", ".nrw",
        ".orf", ".pef", ".raf", ".rw2", ".rwl", ".sr2", ".srf", ".srw", ".x3f",
    ), LIBRAW),
    # Recognised only to be refused with a precise reason: no EPS/PS/PDF/SVG, GIF, BMP or other exotic parsers.
    # Their extensions are there for rules: a rule's match.extensions naming one is refused when it loads.
    Format("PDF", "PDF", "PDF", (".pdf",), magic=(b"%PDF",)),
    Format("PostScript", "PostScript", "PostScript", (".ps",), magic=(b"%!PS",)),
    Format("EPS", "EPS", "EPS", (".eps", ".epsf"), magic=(b"\xc5\xd0\xd3\xc6",)),
    Format("GIF", "GIF", "GIF", (".gif",), magic=(b"GIF8",)),
    Format("BMP", "BMP", "BMP", (".bmp", ".dib"), magic=(b"BM",)),
    Format("Photoshop PSD", "Photoshop PSD", "Photoshop PSD", (".psd", ".psb"), magic=(b"8BPS",)),
    Format("ICO", "ICO", "ICO", (".ico",), magic=(b"\x00\x00\x01\x00",)),
    Format("ZIP", "ZIP", "ZIP", (".zip",), magic=(b"PK\x03\x04",)),
    Format("SVG/XML", "SVG/XML", "SVG/XML", (".svg", ".xml"), magic=(b"<svg", b"<?xml", b"<!DOCTYPE svg"), text=True),
)

ACCEPTED = tuple(f for f in FORMATS if f.decoder)
REFUSED = tuple(f for f in FORMATS if not f.decoder)
# What each image extension should hold (a mismatch is noted, not refused).
EXTENSION_FORMATS = {ext: f.kind for f in ACCEPTED if f.decoder == PILLOW for ext in f.extensions}
RAW_EXTENSIONS = frozenset(ext for f in ACCEPTED if f.decoder == LIBRAW for ext in f.extensions)
# Every extension the decoder reads, without the dot: the one list rules take by default (rules.DEFAULT_EXTENSIONS).
INPUT_EXTENSIONS = tuple(ext.lstrip(".") for f in ACCEPTED for ext in f.extensions)
# The refused format of each extension a refused format's files carry (a rule may not match them).
REFUSED_EXTENSIONS = {ext.lstrip("."): f for f in REFUSED for ext in f.extensions}
# The formats Pillow may open (its ``formats=`` allow-list); MPO comes through the JPEG opener.
PILLOW_FORMATS = tuple(dict.fromkeys(f.kind for f in ACCEPTED if f.decoder == PILLOW))
# "JPEG, PNG, ... and camera RAW": for the message that refuses anything else (MPO is told as JPEG).
_SHOWN = [f.shown for f in ACCEPTED if f.name == f.kind]
ACCEPTED_SHOWN = ", ".join(_SHOWN[:-1]) + " and " + _SHOWN[-1]

# Channel formats in the order config lists them (choices, messages), checked against the table's.
CHANNEL_FORMATS = ("jpeg", "png", "webp", "tiff")
_WRITTEN = {f.channel: f.channel_extension for f in FORMATS if f.channel}
assert sorted(CHANNEL_FORMATS) == sorted(_WRITTEN), "CHANNEL_FORMATS must list every channel format once"
CHANNEL_EXTENSIONS = {channel: _WRITTEN[channel] for channel in CHANNEL_FORMATS}  # the extension of its files


def sniff(data: bytes) -> str | None:
    """What the content is by its magic bytes: an accepted format's ``kind`` ("JPEG", "RAW"...), a refused
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
    for fmt in REFUSED:
        if (head.lstrip() if fmt.text else head).startswith(fmt.magic):
            return f"refused:{fmt.kind}"
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
