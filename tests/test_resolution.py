"""Print resolution: an input's dpi reaches every output format that carries one, unless the channel sets ``dpi``.

Outputs are read back the way a print shop's tools would: Pillow's ``info["dpi"]`` (JPEG JFIF density, PNG
pHYs), the EXIF resolution tags, and tifffile's XResolution / YResolution / ResolutionUnit.
"""
from __future__ import annotations

import io

import numpy as np
import pytest
import tifffile
from PIL import Image

from fixtures_images import encode_pil, marker_image, rich_exif
from pipeline import imageio
from pipeline.config import ChannelConfig, InputConfig

CFG = InputConfig()
X_RES, Y_RES, RES_UNIT = 0x011A, 0x011B, 0x0128


def exif_at(dpi: float, unit: int = 2, base: bytes | None = None) -> bytes:
    exif = Image.Exif()
    if base:
        exif.load(base)
    exif[X_RES] = dpi
    exif[Y_RES] = dpi
    exif[RES_UNIT] = unit
    return exif.tobytes()


def source_with(dpi_how: str) -> bytes:
    img = marker_image()
    if dpi_how == "jpeg jfif":
        return encode_pil(img, "JPEG", quality=95, dpi=(300, 300))
    if dpi_how == "jpeg exif only":  # JFIF says "aspect ratio only"; the EXIF has the resolution
        return encode_pil(img, "JPEG", quality=95, exif=exif_at(300))
    if dpi_how == "jpeg exif in cm":
        return encode_pil(img, "JPEG", quality=95, exif=exif_at(118.11, unit=3))
    if dpi_how == "png phys":
        return encode_pil(img, "PNG", dpi=(300, 300))
    if dpi_how == "tiff inch":
        return encode_pil(img, "TIFF", dpi=(300, 300))
    if dpi_how == "tiff cm":
        return encode_pil(img, "TIFF", resolution=118.11, resolution_unit="cm")
    if dpi_how == "webp exif":
        return encode_pil(img, "WEBP", lossless=True, exif=exif_at(300))
    raise ValueError(dpi_how)


def channel(fmt: str, metadata: str = "default", dpi: float | None = None) -> ChannelConfig:
    return ChannelConfig(name="t", path=None, format=fmt, metadata=metadata, dpi=dpi)


def written_dpi(data: bytes, fmt: str) -> tuple[float, float] | None:
    """The resolution an output states in its format's own place (EXIF aside)."""
    if fmt == "tiff":
        with tifffile.TiffFile(io.BytesIO(data)) as tf:
            tags = tf.pages.first.tags
            unit = int(tags["ResolutionUnit"].value)
            x, y = tags["XResolution"].value, tags["YResolution"].value
        assert unit == 2, f"ResolutionUnit {unit}: expected inches"
        return x[0] / x[1], y[0] / y[1]
    with Image.open(io.BytesIO(data)) as im:
        if fmt == "jpeg":
            if im.info.get("jfif_unit") == 0:
                return None
            assert im.info["jfif_unit"] == 1
        return im.info.get("dpi") if fmt != "webp" else None


def exif_dpi(data: bytes) -> tuple[float, float] | None:
    with Image.open(io.BytesIO(data)) as im:
        exif = im.getexif()
    if X_RES not in exif:
        return None
    assert exif.get(RES_UNIT, 2) == 2
    return float(exif[X_RES]), float(exif[Y_RES])


@pytest.mark.parametrize("dpi_how", ["jpeg jfif", "jpeg exif only", "jpeg exif in cm", "png phys", "tiff inch",
                                     "tiff cm", "webp exif"])
def test_input_resolution_is_read(dpi_how):
    d = imageio.decode(source_with(dpi_how), "in", CFG)
    assert d.dpi == pytest.approx((300, 300), abs=0.05)


def test_no_stated_resolution_is_none():
    for data in (encode_pil(marker_image(), "JPEG"), encode_pil(marker_image(), "PNG"),
                 encode_pil(marker_image(), "JPEG", exif=exif_at(1, unit=1))):  # unit "none": an aspect ratio
        assert imageio.decode(data, "in", CFG).dpi is None
    with io.BytesIO() as buf:  # tifffile's default: 1×1, no unit
        tifffile.imwrite(buf, marker_image(), photometric="rgb")
        assert imageio.decode(buf.getvalue(), "in.tif", CFG).dpi is None


@pytest.mark.parametrize("fmt", ["jpeg", "png", "tiff"])
@pytest.mark.parametrize("metadata", ["default", "keep", "strip"])
def test_input_resolution_reaches_every_format(fmt, metadata):
    d = imageio.decode(source_with("jpeg jfif"), "in.jpg", CFG)
    out = imageio.encode(d.pixels, channel(fmt, metadata), d)
    assert written_dpi(out, fmt) == pytest.approx((300, 300), abs=0.03)


@pytest.mark.parametrize("fmt", ["jpeg", "png", "webp"])
@pytest.mark.parametrize("metadata", ["default", "keep"])
def test_exif_written_with_an_output_states_its_resolution(fmt, metadata):
    """A 72 in the EXIF next to a 300 in JFIF is how a JPEG came out '72 dpi'; WebP has only EXIF for it."""
    src = encode_pil(marker_image(), "JPEG", quality=95, dpi=(300, 300), exif=rich_exif())
    d = imageio.decode(src, "in.jpg", CFG)
    out = imageio.encode(d.pixels, channel(fmt, metadata), d)
    assert exif_dpi(out) == pytest.approx((300, 300))
    with Image.open(io.BytesIO(out)) as im:
        assert im.info.get("dpi", (300, 300)) == pytest.approx((300, 300), abs=0.03)


def test_webp_from_a_source_without_exif_still_states_its_resolution():
    d = imageio.decode(source_with("png phys"), "in.png", CFG)
    assert exif_dpi(imageio.encode(d.pixels, channel("webp"), d)) == pytest.approx((300, 300), abs=0.03)
    assert exif_dpi(imageio.encode(d.pixels, channel("webp", "strip"), d)) is None  # strip writes no EXIF at all


@pytest.mark.parametrize("fmt", ["jpeg", "png", "tiff", "webp"])
def test_channel_dpi_replaces_the_inputs(fmt):
    src = encode_pil(marker_image(), "JPEG", quality=95, dpi=(300, 300), exif=exif_at(300, base=rich_exif()))
    d = imageio.decode(src, "in.jpg", CFG)
    out = imageio.encode(d.pixels, channel(fmt, "keep", dpi=150), d)
    if fmt != "webp":
        assert written_dpi(out, fmt) == pytest.approx((150, 150), abs=0.03)
    if fmt != "tiff":
        assert exif_dpi(out) == pytest.approx((150, 150))  # the kept EXIF is patched to agree


@pytest.mark.parametrize("fmt", ["jpeg", "png", "webp"])
def test_no_input_resolution_writes_none(fmt):
    d = imageio.decode(encode_pil(marker_image(), "PNG"), "in.png", CFG)
    out = imageio.encode(d.pixels, channel(fmt), d)
    assert written_dpi(out, fmt) is None and exif_dpi(out) is None


def test_tiff_without_an_input_resolution_states_72_dpi():
    """TIFF requires a resolution: 72 pixels per inch, not tifffile's 1×1 without a unit."""
    d = imageio.decode(encode_pil(marker_image(), "PNG"), "in.png", CFG)
    assert written_dpi(imageio.encode(d.pixels, channel("tiff"), d), "tiff") == (72, 72)
    assert written_dpi(imageio.encode(d.pixels, channel("tiff"), None), "tiff") == (72, 72)


def test_sixteen_bit_outputs_carry_the_resolution_too():
    d = imageio.decode(source_with("tiff inch"), "in.tif", CFG)
    for fmt in ("png", "tiff"):
        out = imageio.encode(d.pixels, ChannelConfig(name="t", path=None, format=fmt, bits=16), d)
        assert written_dpi(out, fmt) == pytest.approx((300, 300), abs=0.03)


def test_different_horizontal_and_vertical_resolutions_stay_apart():
    d = imageio.decode(encode_pil(marker_image(), "TIFF", dpi=(300, 150)), "in.tif", CFG)
    assert d.dpi == pytest.approx((300, 150))
    for fmt in ("jpeg", "png", "tiff"):
        assert written_dpi(imageio.encode(d.pixels, channel(fmt), d), fmt) == pytest.approx((300, 150), abs=0.03)


def test_png_resolution_round_trips_exactly():
    """pHYs counts pixels per metre: 300 dpi is 11811 px/m, read back as 299.9994; it is 300 again."""
    d = imageio.decode(source_with("png phys"), "in.png", CFG)
    assert d.dpi == (300, 300)
    again = imageio.decode(imageio.encode(d.pixels, channel("png"), d), "out.png", CFG)
    assert again.dpi == (300, 300)
    assert np.array_equal(again.pixels, d.pixels)


def test_a_quarter_turn_swaps_the_horizontal_and_vertical_resolution():
    from fixtures_images import stored_for_orientation

    exif = Image.Exif()
    exif[0x0112] = 6
    data = encode_pil(stored_for_orientation(marker_image(), 6), "JPEG", quality=95, dpi=(300, 150),
                      exif=exif.tobytes())
    d = imageio.decode(data, "turned.jpg", CFG)
    assert d.notes["orientation"] == 6 and d.dpi == (150, 300)
