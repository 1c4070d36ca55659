"""Metadata policy for outputs: which EXIF / XMP / IPTC survives into a channel's files.

Three policies (``ChannelConfig.metadata``):

``keep``     every EXIF tag, the XMP packet and the IPTC record as read, byte for byte,
             except the orientation, which is rewritten to 1 (the pixels are already upright).
``default``  only what identifies the work and its capture: copyright, artist/creator, capture
             date, camera make/model and lens. GPS, serial numbers, maker notes, thumbnails,
             comments and everything else are dropped.
``strip``    nothing.

Pure functions on bytes; no pixels, no files. ``encoding.encode`` decides where each blob goes.
"""
from __future__ import annotations

import re
import struct
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from fractions import Fraction

from PIL import Image

ORIENTATION = 0x0112
X_RESOLUTION, Y_RESOLUTION, RESOLUTION_UNIT = 0x011A, 0x011B, 0x0128
EXIF_IFD = 0x8769
GPS_IFD = 0x8825

# EXIF tags the default policy keeps (IFD0 and the Exif sub-IFD).
DEFAULT_IFD0_TAGS = {
    0x010F,  # Make
    0x0110,  # Model
    0x013B,  # Artist
    0x8298,  # Copyright
    0x0132,  # DateTime
}
DEFAULT_EXIF_TAGS = {
    0x9000,  # ExifVersion
    0x9003,  # DateTimeOriginal
    0x9004,  # DateTimeDigitized
    0x9010, 0x9011, 0x9012,  # OffsetTime, OffsetTimeOriginal, OffsetTimeDigitized
    0x9290, 0x9291, 0x9292,  # SubSecTime, SubSecTimeOriginal, SubSecTimeDigitized
    0xA432,  # LensSpecification
    0xA433,  # LensMake
    0xA434,  # LensModel
}
# TIFF structure tags that Pillow's getexif() reports for TIFF files but that describe the
# source file's layout, not the photograph: never copied into an output's EXIF.
TIFF_STRUCTURE_TAGS = {
    254, 255, 256, 257, 258, 259, 262, 266, 273, 277, 278, 279, 280, 281, 282, 283, 284, 296, 317,
    320, 322, 323, 324, 325, 330, 338, 339, 340, 341, 347, 532, 700, 33723, 34377, 34675,
    50706, 50707,  # DNGVersion: an output is never a DNG
}

# XMP properties the default policy keeps: namespace URI → local names (None: all of them).
_DC = "http://purl.org/dc/elements/1.1/"
_RDF = "http://www.w3.org/1999/02/22-rdf-syntax-ns#"
DEFAULT_XMP_PROPERTIES: dict[str, set[str] | None] = {
    _DC: {"rights", "creator"},
    "http://ns.adobe.com/xap/1.0/rights/": None,
    "http://ns.adobe.com/xap/1.0/": {"CreateDate"},
    "http://ns.adobe.com/photoshop/1.0/": {"DateCreated"},
    "http://ns.adobe.com/exif/1.0/": {"DateTimeOriginal", "DateTimeDigitized"},
    "http://cipa.jp/exif/1.0/": {"LensMake", "LensModel", "LensSpecification"},
    "http://ns.adobe.com/exif/1.0/aux/": {"Lens", "LensInfo"},
    "http://ns.adobe.com/tiff/1.0/": {"Make", "Model", "Artist"},
}
_PREFIXES = {
    "x": "adobe:ns:meta/", "rdf": _RDF, "dc": _DC, "xmpRights": "http://ns.adobe.com/xap/1.0/rights/",
    "xmp": "http://ns.adobe.com/xap/1.0/", "photoshop": "http://ns.adobe.com/photoshop/1.0/",
    "exif": "http://ns.adobe.com/exif/1.0/", "exifEX": "http://cipa.jp/exif/1.0/",
    "aux": "http://ns.adobe.com/exif/1.0/aux/", "tiff": "http://ns.adobe.com/tiff/1.0/",
}
for _prefix, _uri in _PREFIXES.items():
    ET.register_namespace(_prefix, _uri)

# IPTC-IIM datasets the default policy keeps: (record, dataset).
DEFAULT_IPTC_DATASETS = {
    (1, 90),  # coded character set: needed to read the rest
    (2, 0),  # record version
    (2, 55), (2, 60),  # date / time created
    (2, 62), (2, 63),  # digital creation date / time
    (2, 80),  # by-line (creator)
    (2, 116),  # copyright notice
}


@dataclass
class OutputMetadata:
    """What an encoder writes besides pixels and the ICC profile. ``None``: write nothing."""

    exif: bytes | None = None  # "Exif\\0\\0" + TIFF structure, as Pillow writes it
    xmp: bytes | None = None
    iptc: bytes | None = None  # raw IPTC-IIM datasets


def for_policy(policy: str, exif: bytes | None, xmp: bytes | None, iptc: bytes | None,
               dpi: tuple[float, float] | None = None) -> OutputMetadata:
    """The metadata an output carries under ``policy`` (keep | default | strip). With ``dpi``, an EXIF block
    that is written states that resolution (so it never contradicts the format's own resolution field)."""
    if policy == "strip":
        return OutputMetadata()
    if policy == "keep":
        kept = exif_orientation_reset(exif) if exif else None
        return OutputMetadata(
            exif=exif_resolution_patched(kept, dpi) if kept and dpi else kept,
            xmp=xmp_orientation_reset(xmp) if xmp else None,
            iptc=iptc or None,
        )
    if policy == "default":
        return OutputMetadata(
            exif=exif_default(exif, dpi) if exif else None,
            xmp=xmp_default(xmp) if xmp else None,
            iptc=iptc_default(iptc) if iptc else None,
        )
    raise ValueError(f"unknown metadata policy {policy!r}")


# ---------------------------------------------------------------- EXIF

def load_exif(data: bytes) -> Image.Exif:
    exif = Image.Exif()
    exif.load(data)
    return exif


def exif_orientation(data: bytes | None) -> int:
    """The EXIF orientation (1..8), 1 when absent or unreadable."""
    if not data:
        return 1
    try:
        value = load_exif(data).get(ORIENTATION, 1)
        return int(value) if int(value) in range(1, 9) else 1
    except Exception:  # damaged EXIF must not fail a decodable image
        return 1


def exif_orientation_reset(data: bytes) -> bytes:
    """The same EXIF bytes with IFD0's orientation patched to 1 in place (everything else untouched)."""
    prefix = b"Exif\x00\x00" if data.startswith(b"Exif\x00\x00") else b""
    tiff = bytearray(data[len(prefix):])
    if len(tiff) < 8 or tiff[:2] not in (b"II", b"MM"):
        return data
    end = "<" if tiff[:2] == b"II" else ">"
    (ifd,) = struct.unpack_from(end + "I", tiff, 4)
    if ifd + 2 > len(tiff):
        return data
    (count,) = struct.unpack_from(end + "H", tiff, ifd)
    for i in range(count):
        entry = ifd + 2 + 12 * i
        if entry + 12 > len(tiff):
            break
        tag, typ, n = struct.unpack_from(end + "HHI", tiff, entry)
        if tag == ORIENTATION and typ == 3 and n == 1:  # SHORT, value stored inline
            struct.pack_into(end + "H", tiff, entry + 8, 1)
    return prefix + bytes(tiff)


def exif_default(data: bytes, dpi: tuple[float, float] | None = None) -> bytes | None:
    """A new EXIF block with only the default policy's tags (orientation 1, the resolution ``dpi`` when
    given); None if nothing is left."""
    try:
        src = load_exif(data)
        exif_ifd = src.get_ifd(EXIF_IFD)
    except Exception:
        return None
    out = Image.Exif()
    for tag in DEFAULT_IFD0_TAGS:
        if tag in src:
            out[tag] = src[tag]
    kept = {tag: value for tag, value in exif_ifd.items() if tag in DEFAULT_EXIF_TAGS}
    if not out and not [t for t in kept if t != 0x9000]:
        return None
    out[ORIENTATION] = 1
    if dpi:
        _set_resolution(out, dpi)
    if kept:
        out[EXIF_IFD] = kept
    return out.tobytes()


def exif_resolution_only(dpi: tuple[float, float]) -> bytes:
    """An EXIF block that says only the resolution (and orientation 1): for WebP, whose only place for it is EXIF."""
    out = Image.Exif()
    out[ORIENTATION] = 1
    _set_resolution(out, dpi)
    return out.tobytes()


def _set_resolution(exif: Image.Exif, dpi: tuple[float, float]) -> None:
    exif[X_RESOLUTION], exif[Y_RESOLUTION], exif[RESOLUTION_UNIT] = float(dpi[0]), float(dpi[1]), 2  # inches


def exif_resolution(exif: Image.Exif) -> tuple[float, float] | None:
    """IFD0's resolution in pixels per inch; None when absent, unitless (ResolutionUnit 1) or absurd."""
    try:
        x = float(exif[X_RESOLUTION]) if X_RESOLUTION in exif else None
        y = float(exif[Y_RESOLUTION]) if Y_RESOLUTION in exif else x
        unit = int(exif.get(RESOLUTION_UNIT, 2) or 2)
    except (TypeError, ValueError, ZeroDivisionError):
        return None
    return dpi_from(x, y, unit)


def dpi_from(x: float | None, y: float | None, unit: int) -> tuple[float, float] | None:
    """(x, y) pixels per inch from a TIFF/EXIF-style pair and unit (2 inch, 3 centimetre, 1 none)."""
    if x is None or y is None or unit not in (2, 3):
        return None
    scale = 2.54 if unit == 3 else 1.0
    out = (round(x * scale, 2), round(y * scale, 2))
    return out if all(0 < v < 1e6 for v in out) else None  # NaN fails this too


def exif_resolution_patched(data: bytes, dpi: tuple[float, float]) -> bytes:
    """The same EXIF bytes with IFD0 stating ``dpi`` (inches), every other byte kept, as the keep policy promises.

    Entries that exist are patched in place. Missing ones cannot be inserted without moving what follows
    IFD0 (and breaking offsets into maker notes), so IFD0 is copied to the end with them added and the
    header pointed at the copy: every old offset stays valid. Unchanged when the EXIF is unreadable."""
    prefix = b"Exif\x00\x00" if data.startswith(b"Exif\x00\x00") else b""
    tiff = bytearray(data[len(prefix):])
    try:
        end = {b"II": "<", b"MM": ">"}[bytes(tiff[:2])]
        (ifd,) = struct.unpack_from(end + "I", tiff, 4)
        (count,) = struct.unpack_from(end + "H", tiff, ifd)
        entries = [bytes(tiff[ifd + 2 + 12 * i:ifd + 14 + 12 * i]) for i in range(count)]
        (next_ifd,) = struct.unpack_from(end + "I", tiff, ifd + 2 + 12 * count)
    except (KeyError, struct.error):
        return data
    rationals = {X_RESOLUTION: Fraction(dpi[0]).limit_denominator(1000),
                 Y_RESOLUTION: Fraction(dpi[1]).limit_denominator(1000)}
    missing = {X_RESOLUTION, Y_RESOLUTION, RESOLUTION_UNIT}
    for i, entry in enumerate(entries):
        tag, typ, n, value = struct.unpack_from(end + "HHII", entry)
        at = ifd + 2 + 12 * i
        if tag in rationals and typ == 5 and n == 1 and value + 8 <= len(tiff):  # RATIONAL, stored at an offset
            struct.pack_into(end + "II", tiff, value, rationals[tag].numerator, rationals[tag].denominator)
            missing.discard(tag)
        elif tag == RESOLUTION_UNIT and typ == 3 and n == 1:  # SHORT, inline
            struct.pack_into(end + "H", tiff, at + 8, 2)
            missing.discard(tag)
        elif tag in missing:  # an odd type: replaced below
            entries[i] = b""
    if not missing:
        return prefix + bytes(tiff)
    tiff += b"\x00" * (len(tiff) % 2)
    entries = [e for e in entries if e and struct.unpack_from(end + "H", e)[0] not in missing]
    for tag in sorted(missing):
        if tag == RESOLUTION_UNIT:
            entries.append(struct.pack(end + "HHIHH", tag, 3, 1, 2, 0))
        else:
            entries.append(struct.pack(end + "HHII", tag, 5, 1, len(tiff)))
            tiff += struct.pack(end + "II", rationals[tag].numerator, rationals[tag].denominator)
    entries.sort(key=lambda e: struct.unpack_from(end + "H", e)[0])
    struct.pack_into(end + "I", tiff, 4, len(tiff))
    tiff += struct.pack(end + "H", len(entries)) + b"".join(entries) + struct.pack(end + "I", next_ifd)
    if len(prefix) + len(tiff) > _JPEG_SEGMENT_MAX:  # would no longer fit the JPEG it came from: leave it
        return data
    return prefix + bytes(tiff)


_JPEG_SEGMENT_MAX = 65533  # the most EXIF bytes ("Exif\0\0" included) one JPEG APP1 segment holds


def exif_from_tiff_tags(exif: Image.Exif) -> bytes | None:
    """EXIF bytes for a TIFF source, whose getexif() mixes photo tags with strip layout: drop the latter."""
    out = Image.Exif()
    for tag, value in exif.items():
        if tag in TIFF_STRUCTURE_TAGS or tag in (EXIF_IFD, GPS_IFD):
            continue
        out[tag] = value
    for ifd_tag in (EXIF_IFD, GPS_IFD):
        try:
            sub = exif.get_ifd(ifd_tag)
        except Exception:
            sub = {}
        if sub:
            out[ifd_tag] = dict(sub)
    return out.tobytes() if len(out) else None


# ---------------------------------------------------------------- XMP

_XMP_ORIENTATION = [
    (re.compile(rb'(tiff:Orientation\s*=\s*["\'])\s*[2-8]\s*(["\'])'), rb"\g<1>1\g<2>"),
    (re.compile(rb"(<tiff:Orientation>)\s*[2-8]\s*(</tiff:Orientation>)"), rb"\g<1>1\g<2>"),
]


def xmp_orientation_reset(xmp: bytes) -> bytes:
    """The packet with ``tiff:Orientation`` set to 1 (attribute or element form)."""
    for pattern, repl in _XMP_ORIENTATION:
        xmp = pattern.sub(repl, xmp)
    return xmp


def _split(qname: str) -> tuple[str, str]:
    if qname.startswith("{"):
        uri, _, local = qname[1:].partition("}")
        return uri, local
    return "", qname


def _wanted(qname: str) -> bool:
    uri, local = _split(qname)
    if uri not in DEFAULT_XMP_PROPERTIES:
        return False
    names = DEFAULT_XMP_PROPERTIES[uri]
    return names is None or local in names


def xmp_default(xmp: bytes) -> bytes | None:
    """A new XMP packet with only rights, creator, capture dates and camera/lens; None if none of them."""
    try:
        root = ET.fromstring(xmp.strip(b"\x00 \r\n\t"))
    except ET.ParseError:
        return None
    kept_attrs: dict[str, str] = {}
    kept_children: list[ET.Element] = []
    for desc in root.iter(f"{{{_RDF}}}Description"):
        for key, value in desc.attrib.items():
            if _wanted(key):
                kept_attrs[key] = value
        for child in desc:
            if _wanted(child.tag):
                kept_children.append(child)
    if not kept_attrs and not kept_children:
        return None
    meta = ET.Element("{adobe:ns:meta/}xmpmeta")
    rdf = ET.SubElement(meta, f"{{{_RDF}}}RDF")
    desc = ET.SubElement(rdf, f"{{{_RDF}}}Description", {f"{{{_RDF}}}about": "", **kept_attrs})
    desc.extend(kept_children)
    body = ET.tostring(meta, encoding="utf-8", xml_declaration=False)
    return (b'<?xpacket begin="\xef\xbb\xbf" id="W5M0MpCehiHzreSzNTczkc9d"?>' + body
            + b'<?xpacket end="w"?>')


# ---------------------------------------------------------------- IPTC-IIM

def iptc_datasets(data: bytes) -> list[tuple[int, int, bytes]]:
    """Parse IPTC-IIM into (record, dataset, value) triples; stops at the first malformed entry."""
    out = []
    i = 0
    while i + 5 <= len(data) and data[i] == 0x1C:
        record, dataset = data[i + 1], data[i + 2]
        (length,) = struct.unpack_from(">H", data, i + 3)
        i += 5
        if length & 0x8000:  # extended dataset: the low bits give the size of the length field
            n = length & 0x7FFF
            if n > 4 or i + n > len(data):
                break
            length = int.from_bytes(data[i:i + n], "big")
            i += n
        if i + length > len(data):
            break
        out.append((record, dataset, data[i:i + length]))
        i += length
    return out


def iptc_build(datasets: list[tuple[int, int, bytes]]) -> bytes:
    parts = []
    for record, dataset, value in datasets:
        if len(value) < 0x8000:
            parts.append(struct.pack(">BBBH", 0x1C, record, dataset, len(value)) + value)
        else:
            parts.append(struct.pack(">BBBHI", 0x1C, record, dataset, 0x8004, len(value)) + value)
    return b"".join(parts)


def iptc_default(data: bytes) -> bytes | None:
    kept = [d for d in iptc_datasets(data) if (d[0], d[1]) in DEFAULT_IPTC_DATASETS]
    if not [d for d in kept if d[0] == 2 and d[1] != 0]:
        return None
    return iptc_build(kept)


def photoshop_app13(iptc: bytes) -> bytes:
    """A JPEG APP13 segment ("Photoshop 3.0" image resource 0x0404) carrying the IPTC record."""
    resource = b"8BIM" + struct.pack(">H", 0x0404) + b"\x00\x00" + struct.pack(">I", len(iptc)) + iptc
    if len(iptc) % 2:
        resource += b"\x00"
    body = b"Photoshop 3.0\x00" + resource
    if len(body) + 2 > 0xFFFF:
        raise ValueError("IPTC record too large for one JPEG segment")
    return b"\xff\xed" + struct.pack(">H", len(body) + 2) + body
