"""Generators for every input class the imageio tests need, built in memory (no files shipped).

ICC profiles are written here with ``struct`` (ImageCms can only create sRGB/Lab/XYZ profiles and
the system has no profile directory we can count on): matrix/TRC RGB profiles for Adobe RGB
(1998), Display P3 and ProPhoto, and a LUT-based CMYK profile. ``delta_e2000`` is the CIEDE2000
colour difference (Sharma, Wu & Dalal 2005) used to compare colours numerically.
"""
from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image

# ---------------------------------------------------------------- colour maths

D50 = np.array([0.9642, 1.0, 0.8249])
SRGB_PRIMARIES = ((0.64, 0.33), (0.30, 0.60), (0.15, 0.06))
D65_XY = (0.3127, 0.3290)
_BRADFORD = np.array([[0.8951, 0.2664, -0.1614], [-0.7502, 1.7135, 0.0367], [0.0389, -0.0685, 1.0296]])


def xy_to_xyz(x: float, y: float) -> np.ndarray:
    return np.array([x / y, 1.0, (1 - x - y) / y])


def rgb_to_xyz_matrix(primaries, white_xy) -> np.ndarray:
    """Columns: XYZ of R, G, B for the given chromaticities (white Y = 1)."""
    p = np.stack([xy_to_xyz(*xy) for xy in primaries], axis=1)
    s = np.linalg.solve(p, xy_to_xyz(*white_xy))
    return p * s


def bradford(src_white: np.ndarray, dst_white: np.ndarray) -> np.ndarray:
    a = _BRADFORD @ src_white
    b = _BRADFORD @ dst_white
    return np.linalg.inv(_BRADFORD) @ np.diag(b / a) @ _BRADFORD


def srgb_decode(v: np.ndarray) -> np.ndarray:
    v = np.asarray(v, dtype=np.float64)
    return np.where(v <= 0.04045, v / 12.92, ((v + 0.055) / 1.055) ** 2.4)


def srgb_to_lab(rgb8: np.ndarray) -> np.ndarray:
    """sRGB (0..255, any shape ×3) → CIELAB (D65)."""
    lin = srgb_decode(np.asarray(rgb8, dtype=np.float64) / 255.0)
    m = rgb_to_xyz_matrix(SRGB_PRIMARIES, D65_XY)
    xyz = lin @ m.T
    return xyz_to_lab(xyz, xy_to_xyz(*D65_XY))


def xyz_to_lab(xyz: np.ndarray, white: np.ndarray) -> np.ndarray:
    t = xyz / white
    d = 6 / 29
    f = np.where(t > d ** 3, np.cbrt(t), t / (3 * d * d) + 4 / 29)
    return np.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], -1)


def delta_e2000(lab1: np.ndarray, lab2: np.ndarray) -> np.ndarray:
    """CIEDE2000 between Lab arrays (…×3)."""
    l1, a1, b1 = np.moveaxis(np.asarray(lab1, dtype=np.float64), -1, 0)
    l2, a2, b2 = np.moveaxis(np.asarray(lab2, dtype=np.float64), -1, 0)
    c1, c2 = np.hypot(a1, b1), np.hypot(a2, b2)
    cm = (c1 + c2) / 2
    g = 0.5 * (1 - np.sqrt(cm ** 7 / (cm ** 7 + 25.0 ** 7)))
    a1p, a2p = (1 + g) * a1, (1 + g) * a2
    c1p, c2p = np.hypot(a1p, b1), np.hypot(a2p, b2)
    h1p = np.degrees(np.arctan2(b1, a1p)) % 360
    h2p = np.degrees(np.arctan2(b2, a2p)) % 360
    dl = l2 - l1
    dc = c2p - c1p
    dh = h2p - h1p
    dh = np.where(c1p * c2p == 0, 0, np.where(dh > 180, dh - 360, np.where(dh < -180, dh + 360, dh)))
    dH = 2 * np.sqrt(c1p * c2p) * np.sin(np.radians(dh / 2))
    lm = (l1 + l2) / 2
    cmp_ = (c1p + c2p) / 2
    hs = h1p + h2p
    hm = np.where(c1p * c2p == 0, hs,
                  np.where(np.abs(h1p - h2p) <= 180, hs / 2, np.where(hs < 360, (hs + 360) / 2, (hs - 360) / 2)))
    t = (1 - 0.17 * np.cos(np.radians(hm - 30)) + 0.24 * np.cos(np.radians(2 * hm))
         + 0.32 * np.cos(np.radians(3 * hm + 6)) - 0.20 * np.cos(np.radians(4 * hm - 63)))
    dtheta = 30 * np.exp(-(((hm - 275) / 25) ** 2))
    rc = 2 * np.sqrt(cmp_ ** 7 / (cmp_ ** 7 + 25.0 ** 7))
    sl = 1 + 0.015 * (lm - 50) ** 2 / np.sqrt(20 + (lm - 50) ** 2)
    sc = 1 + 0.045 * cmp_
    sh = 1 + 0.015 * cmp_ * t
    rt = -np.sin(np.radians(2 * dtheta)) * rc
    return np.sqrt((dl / sl) ** 2 + (dc / sc) ** 2 + (dH / sh) ** 2 + rt * (dc / sc) * (dH / sh))


# ---------------------------------------------------------------- ICC profiles

def _s15(v: float) -> bytes:
    return struct.pack(">i", int(round(v * 65536)))


def _desc_tag(text: str) -> bytes:
    ascii_ = text.encode("ascii") + b"\x00"
    return (b"desc" + b"\x00" * 4 + struct.pack(">I", len(ascii_)) + ascii_
            + struct.pack(">II", 0, 0) + struct.pack(">HB", 0, 0) + b"\x00" * 67)


def _xyz_tag(xyz) -> bytes:
    return b"XYZ " + b"\x00" * 4 + b"".join(_s15(v) for v in xyz)


def _text_tag(text: str) -> bytes:
    return b"text" + b"\x00" * 4 + text.encode("ascii") + b"\x00"


def _curve_tag(trc) -> bytes:
    if trc == "srgb":  # parametric type 3: the sRGB curve
        params = [2.4, 1 / 1.055, 0.055 / 1.055, 1 / 12.92, 0.04045]
        return b"para" + b"\x00" * 4 + struct.pack(">HH", 3, 0) + b"".join(_s15(p) for p in params)
    return b"curv" + b"\x00" * 4 + struct.pack(">IH", 1, int(round(trc * 256))) + b"\x00\x00"


def _assemble(device_class: bytes, space: bytes, pcs: bytes, tags: list[tuple[bytes, bytes]]) -> bytes:
    table = b""
    body = b""
    offset = 128 + 4 + 12 * len(tags)
    for sig, data in tags:
        pad = (-len(data)) % 4
        table += struct.pack(">4sII", sig, offset + len(body), len(data))
        body += data + b"\x00" * pad
    size = offset + len(body)
    header = bytearray(128)
    struct.pack_into(">I4sI4s4s4s", header, 0, size, b"none", 0x02100000, device_class, space, pcs)
    struct.pack_into(">6H", header, 24, 2024, 1, 1, 0, 0, 0)
    header[36:40] = b"acsp"
    header[68:80] = b"".join(_s15(v) for v in D50)
    return bytes(header) + struct.pack(">I", len(tags)) + table + body


def matrix_profile(description: str, primaries, white_xy, trc) -> bytes:
    """An ICC v2 display profile with colorants (Bradford-adapted to D50) and a gamma or sRGB curve."""
    m = rgb_to_xyz_matrix(primaries, white_xy)
    m50 = bradford(xy_to_xyz(*white_xy), D50) @ m
    curve = _curve_tag(trc)
    return _assemble(b"mntr", b"RGB ", b"XYZ ", [
        (b"desc", _desc_tag(description)), (b"cprt", _text_tag("public domain test profile")),
        (b"wtpt", _xyz_tag(D50)),
        (b"rXYZ", _xyz_tag(m50[:, 0])), (b"gXYZ", _xyz_tag(m50[:, 1])), (b"bXYZ", _xyz_tag(m50[:, 2])),
        (b"rTRC", curve), (b"gTRC", curve), (b"bTRC", curve),
    ])


ADOBE_RGB_PRIMARIES = ((0.64, 0.33), (0.21, 0.71), (0.15, 0.06))
P3_PRIMARIES = ((0.680, 0.320), (0.265, 0.690), (0.150, 0.060))
PROPHOTO_PRIMARIES = ((0.7347, 0.2653), (0.1596, 0.8404), (0.0366, 0.0001))


def adobe_rgb_profile() -> bytes:
    return matrix_profile("Adobe RGB (1998) compatible", ADOBE_RGB_PRIMARIES, D65_XY, 563 / 256)


def display_p3_profile() -> bytes:
    return matrix_profile("Display P3 compatible", P3_PRIMARIES, D65_XY, "srgb")


def prophoto_profile() -> bytes:
    return matrix_profile("ProPhoto RGB compatible", PROPHOTO_PRIMARIES, (0.3457, 0.3585), 1.8)


def cmyk_model(cmyk: np.ndarray) -> np.ndarray:
    """The test CMYK press (0..1 in, linear sRGB out): inks weaker than the naive formula assumes,
    so a profile-based conversion and the naive fallback give visibly different colours."""
    c, m, y, k = np.moveaxis(cmyk, -1, 0)
    r = (1 - 0.85 * c) * (1 - 0.9 * k)
    g = (1 - 0.80 * m) * (1 - 0.9 * k)
    b = (1 - 0.75 * y) * (1 - 0.9 * k)
    return srgb_decode(np.stack([r, g, b], -1))


def cmyk_profile(grid: int = 9) -> bytes:
    """An ICC v2 input profile for CMYK with an A2B0 lut16 (CMYK → Lab D50) sampling ``cmyk_model``."""
    axis = np.linspace(0, 1, grid)
    cmyk = np.stack(np.meshgrid(axis, axis, axis, axis, indexing="ij"), -1).reshape(-1, 4)
    lin = cmyk_model(cmyk)
    m50 = bradford(xy_to_xyz(*D65_XY), D50) @ rgb_to_xyz_matrix(SRGB_PRIMARIES, D65_XY)
    lab = xyz_to_lab(lin @ m50.T, D50)
    enc = np.stack([lab[:, 0] * 65280 / 100, (lab[:, 1] + 128) * 256, (lab[:, 2] + 128) * 256], -1)
    clut = np.clip(np.rint(enc), 0, 65535).astype(">u2").tobytes()
    n = 2  # identity input/output curves
    ident = np.array([0, 65535], dtype=">u2").tobytes()
    lut = (b"mft2" + b"\x00" * 4 + struct.pack(">BBBB", 4, 3, grid, 0)
           + b"".join(_s15(v) for v in (1, 0, 0, 0, 1, 0, 0, 0, 1))
           + struct.pack(">HH", n, n) + ident * 4 + clut + ident * 3)
    return _assemble(b"scnr", b"CMYK", b"Lab ", [
        (b"desc", _desc_tag("Test CMYK press")), (b"cprt", _text_tag("public domain test profile")),
        (b"wtpt", _xyz_tag(D50)), (b"A2B0", lut),
    ])


# ---------------------------------------------------------------- images

def patches(dtype=np.uint8) -> np.ndarray:
    """A 32×48 RGB image of six flat 16×16 patches (saturated and neutral)."""
    colours = [(200, 40, 40), (40, 160, 60), (30, 60, 190), (128, 128, 128), (240, 200, 30), (90, 40, 120)]
    img = np.zeros((32, 48, 3), np.uint8)
    for i, c in enumerate(colours):
        y, x = divmod(i, 3)
        img[y * 16:(y + 1) * 16, x * 16:(x + 1) * 16] = c
    return img if dtype == np.uint8 else img.astype(np.uint16) * 257


def patch_centres() -> list[tuple[int, int]]:
    return [(y * 16 + 8, x * 16 + 8) for y in range(2) for x in range(3)]


def encode_pil(arr_or_im, fmt: str, **kwargs) -> bytes:
    im = arr_or_im if isinstance(arr_or_im, Image.Image) else Image.fromarray(arr_or_im)
    buf = io.BytesIO()
    im.save(buf, fmt, **kwargs)
    return buf.getvalue()


def marker_image() -> np.ndarray:
    """An upright 40 wide × 24 high grey image with a red block in the top-left corner."""
    img = np.full((24, 40, 3), 128, np.uint8)
    img[:6, :8] = (255, 0, 0)
    return img


def stored_for_orientation(upright: np.ndarray, orientation: int) -> np.ndarray:
    """The pixels a camera would store so that applying ``orientation`` yields ``upright``."""
    inverse = {1: lambda a: a, 2: lambda a: a[:, ::-1], 3: lambda a: a[::-1, ::-1], 4: lambda a: a[::-1],
               5: lambda a: a.swapaxes(0, 1), 6: lambda a: np.rot90(a, 1), 7: lambda a: a[::-1, ::-1].swapaxes(0, 1),
               8: lambda a: np.rot90(a, -1)}
    return np.ascontiguousarray(inverse[orientation](upright))


def jpeg_with_orientation(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode_pil(stored_for_orientation(marker_image(), orientation), "JPEG", quality=95, exif=exif.tobytes())


def rich_exif() -> bytes:
    """EXIF with things the default policy keeps (copyright, artist, dates, camera, lens) and drops."""
    exif = Image.Exif()
    exif[0x010F] = "Canon"
    exif[0x0110] = "EOS R5"
    exif[0x013B] = "Jo Photographer"
    exif[0x8298] = "(c) 2024 Studio North"
    exif[0x0131] = "SecretRAW 1.0"  # Software: dropped by default
    exif[0x010E] = "client brief #4411"  # ImageDescription: dropped by default
    exif[0x0112] = 6
    exif[0x8769] = {0x9003: "2024:05:06 07:08:09", 0xA434: "RF 50mm F1.2", 0xA431: "0123456789",
                    0x9286: b"ASCII\x00\x00\x00private note"}
    exif[0x8825] = {1: "N", 2: (52.0, 31.0, 12.0), 3: "E", 4: (13.0, 24.0, 36.0)}
    return exif.tobytes()


XMP_SAMPLE = (
    b'<?xpacket begin="\xef\xbb\xbf" id="W5M0MpCehiHzreSzNTczkc9d"?>'
    b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
    b'<rdf:Description rdf:about="" xmlns:dc="http://purl.org/dc/elements/1.1/" '
    b'xmlns:tiff="http://ns.adobe.com/tiff/1.0/" xmlns:exif="http://ns.adobe.com/exif/1.0/" '
    b'xmlns:xmp="http://ns.adobe.com/xap/1.0/" tiff:Orientation="6" tiff:Make="Canon" '
    b'exif:GPSLatitude="52,31.2N" xmp:CreatorTool="SecretRAW 1.0">'
    b'<dc:rights><rdf:Alt><rdf:li xml:lang="x-default">(c) 2024 Studio North</rdf:li></rdf:Alt></dc:rights>'
    b'<dc:description><rdf:Alt><rdf:li xml:lang="x-default">client brief #4411</rdf:li></rdf:Alt></dc:description>'
    b'</rdf:Description></rdf:RDF></x:xmpmeta><?xpacket end="w"?>'
)


def iptc_sample() -> bytes:
    def ds(record, dataset, value: bytes) -> bytes:
        return struct.pack(">BBBH", 0x1C, record, dataset, len(value)) + value
    return (ds(2, 0, b"\x00\x04") + ds(2, 80, b"Jo Photographer") + ds(2, 116, b"(c) 2024 Studio North")
            + ds(2, 120, b"client brief #4411") + ds(2, 90, b"Berlin"))


def png_bytes(width: int, height: int, idat: bytes, colour_type: int = 2, depth: int = 8) -> bytes:
    """A PNG assembled chunk by chunk (so its header can claim anything)."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", width, height, depth, colour_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width``×``height`` RGB pixels but whose data holds two rows."""
    return png_bytes(width, height, zlib.compress(b"\x00" * (2 * (1 + 3 * min(width, 64)))))


def palette_png_with_transparency() -> bytes:
    im = Image.new("P", (16, 8))
    im.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    im.paste(1, (8, 0, 16, 8))  # right half: palette index 1 (blue)
    return encode_pil(im, "PNG", transparency=0)  # index 0 (red, left half) fully transparent


def tiff_multipage(pages: int = 3) -> bytes:
    """Pages of one colour each (page 0: (0, 100, 200)) under a grey bar two rows high."""
    frames = [Image.new("RGB", (20, 10), (60 * i, 100, 200 - 40 * i)) for i in range(pages)]
    for frame in frames:
        frame.paste((128, 128, 128), (0, 0, 20, 2))
    return encode_pil(frames[0], "TIFF", save_all=True, append_images=frames[1:])


def tiff16(arr: np.ndarray, icc: bytes | None = None) -> bytes:
    import tifffile

    buf = io.BytesIO()
    extratags = [(34675, 7, len(icc), icc, True)] if icc else []
    tifffile.imwrite(buf, arr, photometric="rgb" if arr.ndim == 3 else "minisblack", compression="zlib",
                     extrasamples=[2] if arr.ndim == 3 and arr.shape[2] == 4 else None, extratags=extratags)
    return buf.getvalue()


def png16(arr: np.ndarray) -> bytes:
    import cv2

    bgr = arr[..., ::-1] if arr.shape[2] == 3 else arr[..., [2, 1, 0, 3]]
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(bgr))
    assert ok
    return buf.tobytes()


def gradient16(width: int = 64, height: int = 8) -> np.ndarray:
    """16-bit RGB whose values are not multiples of 257: an 8-bit round trip would change them."""
    x = np.linspace(0, 65535, width * height * 3).reshape(height, width, 3)
    return (np.rint(x).astype(np.uint16) | 1)


def make_dng(rgb_linear: np.ndarray, black: int = 0, white: int = 65535, orientation: int = 1) -> bytes:
    """A minimal uncompressed CFA (RGGB) DNG 1.4 that LibRaw decodes.

    The camera space is linear sRGB (ColorMatrix1 = XYZ→linear sRGB, D65), neutral as-shot white,
    so a linear value v decodes to sRGB-encoded v (no auto-brightening): colours are checkable.
    """
    import tifffile

    h, w, _ = rgb_linear.shape
    v = np.clip(rgb_linear, 0, 1) * (white - black) + black
    cfa = np.empty((h, w), np.uint16)
    cfa[0::2, 0::2] = v[0::2, 0::2, 0]
    cfa[0::2, 1::2] = v[0::2, 1::2, 1]
    cfa[1::2, 0::2] = v[1::2, 0::2, 1]
    cfa[1::2, 1::2] = v[1::2, 1::2, 2]
    xyz_to_cam = np.linalg.inv(rgb_to_xyz_matrix(SRGB_PRIMARIES, D65_XY))
    srational = []
    for x in xyz_to_cam.ravel():
        srational += [int(round(x * 10000)), 10000]
    extratags = [
        (254, 4, 1, 0, True),  # NewSubfileType: main image
        (274, 3, 1, orientation, True),
        (33421, 3, 2, (2, 2), True),  # CFARepeatPatternDim
        (33422, 1, 4, bytes([0, 1, 1, 2]), True),  # CFAPattern RGGB
        (50706, 1, 4, bytes([1, 4, 0, 0]), True),  # DNGVersion
        (50707, 1, 4, bytes([1, 1, 0, 0]), True),  # DNGBackwardVersion
        (50708, 2, 0, "Assetd Test Camera", True),  # UniqueCameraModel
        (50714, 3, 1, black, True),  # BlackLevel
        (50717, 3, 1, white, True),  # WhiteLevel
        (50721, 10, 9, srational, True),  # ColorMatrix1
        (50778, 3, 1, 21, True),  # CalibrationIlluminant1: D65
        (50728, 5, 3, [1, 1, 1, 1, 1, 1], True),  # AsShotNeutral
        (271, 2, 0, "Assetd", True),
        (272, 2, 0, "Test Camera", True),
        (33432, 2, 0, "(c) 2024 Studio North", True),
    ]
    buf = io.BytesIO()
    tifffile.imwrite(buf, cfa, photometric=32803, extratags=extratags)
    return buf.getvalue()


def dng_claiming(width: int, height: int) -> bytes:
    """A small DNG whose IFD claims ``width``×``height``: LibRaw allocates for the claim, then finds no data."""
    import tifffile

    data = bytearray(make_dng(np.full((64, 64, 3), 0.3)))
    with tifffile.TiffFile(io.BytesIO(bytes(data))) as tf:
        tags = {t.code: t for t in tf.pages.first.tags.values()}
        for code, value in ((256, width), (257, height)):
            fmt = "<I" if tags[code].dtype == 4 else "<H"
            struct.pack_into(fmt, data, tags[code].valueoffset, value)
    return bytes(data)


# ---------------------------------------------------------------- files holding more than one image

FRAME_COLOURS = [(200, 30, 30), (30, 160, 60), (30, 60, 190)]


def frames(size: tuple[int, int] = (32, 24)) -> list[Image.Image]:
    """Three flat frames, red, green and blue, each with a grey bar (so none is blank)."""
    out = []
    for colour in FRAME_COLOURS:
        im = Image.new("RGB", size, colour)
        im.paste((128, 128, 128), (0, 0, size[0], 4))
        out.append(im)
    return out


def heif_multi(primary: int) -> bytes:
    """A HEIF file of the three ``frames``, image ``primary`` marked as the primary image."""
    ims = frames()
    return encode_pil(ims[0], "HEIF", save_all=True, append_images=ims[1:], primary_index=primary, quality=90)


def apng16(still: np.ndarray, frame: np.ndarray) -> bytes:
    """A 16-bit animated PNG whose default image ``still`` is not part of its animation (``frame`` twice)
    (the layout of Pillow's apng/mode_16bit.png): APNG viewers play ``frame``, every other decoder shows ``still``."""
    def chunks(png: bytes):
        i = 8
        while i < len(png):
            (n,) = struct.unpack_from(">I", png, i)
            yield png[i + 4:i + 8], png[i + 8:i + 8 + n]
            i += 12 + n

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    h, w = still.shape[:2]
    out = b"\x89PNG\r\n\x1a\n"
    seq = 0
    for kind, body in chunks(png16(still)):
        if kind == b"IDAT" and b"acTL" not in out:
            out += chunk(b"acTL", struct.pack(">II", 2, 0))  # two animation frames (both ``frame``), looping
        if kind == b"IEND":
            for _ in range(2):
                out += chunk(b"fcTL", struct.pack(">IIIIIHHBB", seq, w, h, 0, 0, 1, 10, 0, 0))
                seq += 1
                for kind_f, body_f in chunks(png16(frame)):
                    if kind_f == b"IDAT":
                        out += chunk(b"fdAT", struct.pack(">I", seq) + body_f)
                        seq += 1
        out += chunk(kind, body)
    return out
