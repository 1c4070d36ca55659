"""Colour: embedded profiles converted to sRGB and checked numerically (CIEDE2000 against littleCMS)."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageCms

from fixtures_images import (adobe_rgb_profile, cmyk_model, cmyk_profile, delta_e2000, display_p3_profile, encode_pil,
                             patch_centres, patches, prophoto_profile, rgb_to_xyz_matrix, srgb_to_lab, tiff16,
                             ADOBE_RGB_PRIMARIES, D65_XY, SRGB_PRIMARIES)
from pipeline import imageio
from pipeline.config import ChannelConfig, InputConfig

CFG = InputConfig()
PROFILES = {"adobe": adobe_rgb_profile, "p3": display_p3_profile, "prophoto": prophoto_profile}


def lcms_reference(img: np.ndarray, icc: bytes, intent=ImageCms.Intent.PERCEPTUAL) -> np.ndarray:
    src = ImageCms.ImageCmsProfile(io.BytesIO(icc))
    dst = ImageCms.createProfile("sRGB")
    return np.asarray(ImageCms.profileToProfile(Image.fromarray(img), src, dst, renderingIntent=intent,
                                                outputMode="RGB"))


def centres(arr: np.ndarray) -> np.ndarray:
    return np.array([arr[c] for c in patch_centres()], dtype=np.float64)


def test_adobe_rgb_patch_matches_textbook_maths():
    """Independent of littleCMS: Adobe RGB (200, 40, 40) through its matrix to sRGB by hand."""
    data = encode_pil(patches(), "PNG", icc_profile=adobe_rgb_profile())
    d = imageio.decode(data, "adobe.png", CFG)
    lin = (np.array([200, 40, 40]) / 255.0) ** (563 / 256)
    xyz = rgb_to_xyz_matrix(ADOBE_RGB_PRIMARIES, D65_XY) @ lin
    srgb_lin = np.clip(np.linalg.solve(rgb_to_xyz_matrix(SRGB_PRIMARIES, D65_XY), xyz), 0, 1)
    expected = np.where(srgb_lin <= 0.0031308, 12.92 * srgb_lin, 1.055 * srgb_lin ** (1 / 2.4) - 0.055) * 255
    got = d.pixels[8, 8].astype(float)
    assert delta_e2000(srgb_to_lab(got), srgb_to_lab(expected)) <= 1.0, (got, expected)
    assert "Adobe RGB (1998) compatible → sRGB" == d.notes["icc"]


@pytest.mark.parametrize("which", sorted(PROFILES))
@pytest.mark.parametrize("intent", ["perceptual", "relative"])
def test_eight_bit_tagged_jpeg_matches_littlecms(which, intent):
    icc = PROFILES[which]()
    img = patches()
    d = imageio.decode(encode_pil(img, "PNG", icc_profile=icc), f"{which}.png", InputConfig(colour_intent=intent))
    lcms_intent = ImageCms.Intent.PERCEPTUAL if intent == "perceptual" else ImageCms.Intent.RELATIVE_COLORIMETRIC
    ref = lcms_reference(img, icc, lcms_intent)
    assert delta_e2000(srgb_to_lab(centres(d.pixels)), srgb_to_lab(centres(ref))).max() <= 1.0
    assert not np.array_equal(d.pixels, img)  # it really was converted


@pytest.mark.parametrize("which", sorted(PROFILES))
def test_sixteen_bit_conversion_stays_16_bit_and_matches_littlecms(which):
    icc = PROFILES[which]()
    img16 = patches(np.uint16)
    d = imageio.decode(tiff16(img16, icc), f"{which}.tif", CFG)
    assert d.pixels.dtype == np.uint16 and "16-bit, matrix/TRC" in d.notes["icc"]
    ref = lcms_reference(patches(), icc)
    de = delta_e2000(srgb_to_lab(centres(d.pixels) / 257.0), srgb_to_lab(centres(ref)))
    assert de.max() <= 1.0, de
    # 16-bit precision survives: a smooth ramp stays smooth (no 8-bit steps of 257)
    ramp = np.repeat(np.linspace(20000, 20600, 64).astype(np.uint16)[None, :, None], 3, axis=2)
    out = imageio.decode(tiff16(np.ascontiguousarray(ramp), icc), "ramp.tif", CFG).pixels[0, :, 0].astype(int)
    steps = np.diff(out)
    assert (steps >= 0).all() and steps.max() < 100 and len(np.unique(out)) > 40


def test_untagged_image_is_taken_as_srgb():
    img = patches()
    d = imageio.decode(encode_pil(img, "PNG"), "plain.png", CFG)
    assert np.array_equal(d.pixels, img) and "icc" not in d.notes


def test_srgb_tagged_image_is_not_reconverted():
    img = patches()
    d = imageio.decode(encode_pil(img, "PNG", icc_profile=imageio.SRGB_ICC), "srgb.png", CFG)
    assert np.array_equal(d.pixels, img) and d.notes["icc"].endswith("(sRGB: kept)")


@pytest.mark.parametrize("fmt,name", [("JPEG", "cmyk.jpg"), ("TIFF", "cmyk.tif")])
def test_cmyk_with_profile_goes_through_the_profile(fmt, name):
    icc = cmyk_profile()
    cmyk = np.zeros((16, 32, 4), np.uint8)
    cmyk[:, :16] = (255, 0, 0, 0)  # full cyan
    cmyk[:, 16:] = (0, 128, 0, 64)
    kwargs = {"quality": 100} if fmt == "JPEG" else {}
    data = encode_pil(Image.fromarray(cmyk, "CMYK"), fmt, icc_profile=icc, **kwargs)
    d = imageio.decode(data, name, CFG)
    assert d.pixels.shape == (16, 32, 3) and "Test CMYK press → sRGB" == d.notes["icc"]
    expected = np.array([cmyk_model(np.array(c) / 255.0) for c in ([255, 0, 0, 0], [0, 128, 0, 64])])
    expected = np.where(expected <= 0.0031308, 12.92 * expected, 1.055 * expected ** (1 / 2.4) - 0.055) * 255
    got = np.array([d.pixels[8, 8], d.pixels[8, 24]], dtype=float)
    assert delta_e2000(srgb_to_lab(got), srgb_to_lab(expected)).max() <= 2.0, (got, expected)
    assert got[0, 0] > 25  # this press's cyan leaves red at ~15 %; the naive formula would give 0


def test_cmyk_without_profile_uses_the_documented_fallback():
    cmyk = np.zeros((8, 8, 4), np.uint8)
    cmyk[...] = (0, 255, 255, 0)
    cmyk[:, 6:] = 0  # a white strip: an image of one colour is refused as blank
    d = imageio.decode(encode_pil(Image.fromarray(cmyk, "CMYK"), "JPEG", quality=100), "plain_cmyk.jpg", CFG)
    assert "naive" in d.notes["icc"]
    r, g, b = d.pixels[4, 4].astype(int)
    assert r > 240 and g < 15 and b < 15


def test_outputs_always_carry_srgb():
    for fmt, bits in (("jpeg", 8), ("png", 8), ("png", 16), ("webp", 8), ("tiff", 8), ("tiff", 16)):
        ch = ChannelConfig(name="t", path=None, format=fmt, bits=bits)
        out = imageio.encode(patches(), ch, None)
        icc = Image.open(io.BytesIO(out)).info.get("icc_profile")
        assert icc == imageio.SRGB_ICC, (fmt, bits)
