"""Metadata policy per channel: keep, default (copyright/artist/date/camera/lens; no GPS) and strip."""
from __future__ import annotations

import io

import pytest
from PIL import Image, IptcImagePlugin

from fixtures_images import XMP_SAMPLE, encode_pil, iptc_sample, marker_image, rich_exif
from pipeline import imageio
from pipeline.imageio import metadata
from pipeline.config import ChannelConfig, InputConfig

CFG = InputConfig()
OUTPUTS = [("jpeg", 8), ("png", 8), ("webp", 8), ("tiff", 8), ("png", 16), ("tiff", 16)]


@pytest.fixture(scope="module")
def source() -> imageio.Decoded:
    data = encode_pil(marker_image(), "JPEG", quality=95, exif=rich_exif(), xmp=XMP_SAMPLE)
    d = imageio.decode(data, "rich.jpg", CFG)
    d.iptc = iptc_sample()  # Pillow cannot write IPTC into a JPEG; attach it as a decoder would
    return d


def write(source, fmt, bits, policy) -> Image.Image:
    ch = ChannelConfig(name="t", path=None, format=fmt, bits=bits, metadata=policy)
    return Image.open(io.BytesIO(imageio.encode(source.pixels, ch, source)))


def xmp_of(im: Image.Image) -> bytes:
    xmp = im.info.get("xmp") or im.info.get("XML:com.adobe.xmp") or getattr(im, "tag_v2", {}).get(700) or b""
    return xmp.encode() if isinstance(xmp, str) else bytes(xmp)


def test_decoded_exif_is_upright(source):
    assert source.notes["orientation"] == 6 and metadata.exif_orientation(source.exif) == 1
    assert source.pixels.shape[:2] == (40, 24)  # stored 40×24 landscape, tag 6: portrait


@pytest.mark.parametrize("fmt,bits", OUTPUTS)
def test_default_keeps_rights_and_camera_drops_gps_and_the_rest(source, fmt, bits):
    im = write(source, fmt, bits, "default")
    exif = im.getexif()
    assert exif.get(0x8298) == "(c) 2024 Studio North" and exif.get(0x013B) == "Jo Photographer"
    assert exif.get(0x010F) == "Canon" and exif.get(0x0110) == "EOS R5"
    assert exif.get(0x0112, 1) == 1
    sub = exif.get_ifd(0x8769)
    assert sub.get(0x9003) == "2024:05:06 07:08:09" and sub.get(0xA434) == "RF 50mm F1.2"
    assert 0xA431 not in sub and 0x9286 not in sub  # serial number, user comment
    assert not exif.get_ifd(0x8825) and 0x8825 not in exif  # GPS gone
    assert 0x0131 not in exif and 0x010E not in exif  # software, description
    assert im.info.get("icc_profile") == imageio.SRGB_ICC
    xmp = xmp_of(im)
    assert b"Studio North" in xmp and b"Canon" in xmp
    assert b"GPSLatitude" not in xmp and b"client brief" not in xmp and b"SecretRAW" not in xmp


@pytest.mark.parametrize("fmt,bits", OUTPUTS)
def test_keep_copies_everything_but_orientation(source, fmt, bits):
    im = write(source, fmt, bits, "keep")
    exif = im.getexif()
    assert exif.get(0x0112, 1) == 1 and exif.get(0x0131) == "SecretRAW 1.0"
    assert exif.get_ifd(0x8825).get(1) == "N"  # GPS kept on request
    assert exif.get_ifd(0x8769).get(0xA431) == "0123456789"
    xmp = xmp_of(im)
    assert b"client brief" in xmp and b'tiff:Orientation="1"' in xmp and b'tiff:Orientation="6"' not in xmp
    assert im.info.get("icc_profile") == imageio.SRGB_ICC


@pytest.mark.parametrize("fmt,bits", OUTPUTS)
def test_strip_writes_no_metadata_but_still_the_profile(source, fmt, bits):
    im = write(source, fmt, bits, "strip")
    exif = im.getexif()
    assert not {t for t in exif if t not in metadata.TIFF_STRUCTURE_TAGS and t not in (0x0112, 0x0131)}
    assert exif.get(0x0112, 1) == 1
    assert xmp_of(im) == b""
    assert im.info.get("icc_profile") == imageio.SRGB_ICC


def test_iptc_per_policy_in_jpeg(source):
    keep = IptcImagePlugin.getiptcinfo(write(source, "jpeg", 8, "keep"))
    assert keep[(2, 80)] == b"Jo Photographer" and keep[(2, 90)] == b"Berlin"
    default = IptcImagePlugin.getiptcinfo(write(source, "jpeg", 8, "default"))
    assert default[(2, 116)] == b"(c) 2024 Studio North" and (2, 90) not in default and (2, 120) not in default
    assert IptcImagePlugin.getiptcinfo(write(source, "jpeg", 8, "strip")) is None


def test_iptc_survives_a_tiff_round_trip(source):
    ch = ChannelConfig(name="t", path=None, format="tiff", metadata="keep")
    again = imageio.decode(imageio.encode(source.pixels, ch, source), "again.tif", CFG)
    assert again.iptc and (2, 116, b"(c) 2024 Studio North") in metadata.iptc_datasets(again.iptc)


def test_iptc_reading_from_jpeg_app13(source):
    ch = ChannelConfig(name="t", path=None, format="jpeg", metadata="keep")
    again = imageio.decode(imageio.encode(source.pixels, ch, source), "again.jpg", CFG)
    assert again.iptc == source.iptc


def test_no_source_means_no_metadata():
    im = Image.open(io.BytesIO(imageio.encode(marker_image(), ChannelConfig(name="t", path=None, format="jpeg"), None)))
    assert not im.getexif() and im.info.get("icc_profile") == imageio.SRGB_ICC


def test_damaged_exif_does_not_fail_a_good_image():
    data = encode_pil(marker_image(), "JPEG", exif=b"Exif\x00\x00MM\x00*\x00\x00\xff\xff")
    d = imageio.decode(data, "odd.jpg", CFG)
    assert d.pixels.shape == (24, 40, 3)
    out = imageio.encode(d.pixels, ChannelConfig(name="t", path=None, format="jpeg"), d)
    assert Image.open(io.BytesIO(out)).size == (40, 24)


# ---------------------------------------------------------------- resolution in a kept EXIF

def test_kept_exif_gets_the_resolution_added_without_moving_a_byte():
    """keep copies EXIF byte for byte (maker notes hold offsets): the resolution is added by moving IFD0 only."""
    src = rich_exif()
    assert 0x011A not in metadata.load_exif(src)
    out = metadata.exif_resolution_patched(src, (300, 300))
    assert out[:10] == src[:10] and out[14:len(src)] == src[14:]  # all but IFD0's offset in the header
    before, after = metadata.load_exif(src), metadata.load_exif(out)
    assert (after[0x011A], after[0x011B], after[0x0128]) == (300, 300, 2)
    assert {t: v for t, v in after.items() if t not in (0x011A, 0x011B, 0x0128)} == dict(before)
    for ifd in (metadata.EXIF_IFD, metadata.GPS_IFD):
        assert dict(after.get_ifd(ifd)) == dict(before.get_ifd(ifd))


def test_kept_exif_resolution_is_patched_in_place():
    exif = metadata.load_exif(rich_exif())
    exif[0x011A], exif[0x011B], exif[0x0128] = 72.0, 72.0, 3
    src = exif.tobytes()
    out = metadata.exif_resolution_patched(src, (300, 150))
    assert len(out) == len(src)
    after = metadata.load_exif(out)
    assert (after[0x011A], after[0x011B], after[0x0128]) == (300, 150, 2)
    assert after[0x8298] == "(c) 2024 Studio North"


@pytest.mark.parametrize("fmt", ["WEBP", "PNG"])
def test_exif_read_without_its_app1_header_still_reaches_a_jpeg(fmt):
    """WebP and PNG hold EXIF without JPEG's "Exif\\0\\0" header; written as-is into a JPEG it was lost."""
    data = encode_pil(marker_image(), fmt, exif=rich_exif().removeprefix(b"Exif\x00\x00"))
    d = imageio.decode(data, f"in.{fmt.lower()}", CFG)
    im = write(d, "jpeg", 8, "keep")
    assert im.getexif().get(0x8298) == "(c) 2024 Studio North"
