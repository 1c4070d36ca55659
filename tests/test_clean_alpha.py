"""Outputs that keep alpha carry RGB 0 wherever alpha is 0; every other pixel, and flattened outputs, stay as they were.

Each file goes the worker's way (``render_for_channel``, ``encode``, ``atomic_write``) and is read
back with a decoder that is not ours (OpenCV, tifffile, Pillow), so neither side can hide the other's bug.
"""
from __future__ import annotations

import io
from pathlib import Path

import cv2
import numpy as np
import pytest
import tifffile
from PIL import Image

from pipeline import imageio
from pipeline.config import ChannelConfig, config_from_dict
from pipeline.errors import ConfigError
from pipeline.outputs import atomic_write, render_for_channel
from pipeline.pixels import flatten, to_dtype
from pipeline.stages.base import Asset

H, W = 96, 128


def cutout(dtype: type = np.uint8) -> np.ndarray:
    """A subject (smooth colours, opaque core, soft edge) on junk: random RGB under alpha 0."""
    rng = np.random.default_rng(3)
    px = np.zeros((H, W, 4), np.float64)
    px[..., :3] = rng.integers(0, 256, (H, W, 3))  # the backdrop left under the transparent area
    ys, xs = np.mgrid[0:H, 0:W]
    d = np.hypot((xs - 64) / 40, (ys - 48) / 30)
    alpha = np.clip((1.1 - d) / 0.2, 0, 1)  # 1 inside, a 0..1 ramp at the edge, 0 outside
    px[alpha > 0, 0] = 40 + xs[alpha > 0]
    px[alpha > 0, 1] = 60 + ys[alpha > 0]
    px[alpha > 0, 2] = 150
    px[..., 3] = np.rint(alpha * 255)
    out = px.astype(np.uint8)
    out[5, 5, 3] = 1  # a lone, barely visible pixel keeps its junk colour: alpha > 0 is never touched
    return out.astype(np.uint16) * 257 if dtype == np.uint16 else out


def write(tmp_path: Path, pixels: np.ndarray, channel: ChannelConfig) -> Path:
    """The worker's path from an asset to a file."""
    path = tmp_path / f"out.{channel.extension}"
    atomic_write(path, imageio.encode(render_for_channel(Asset(pixels=pixels), channel), channel, None))
    return path


def read_back(path: Path) -> np.ndarray:
    """RGBA in file order, decoded by OpenCV (PNG), tifffile (TIFF) or Pillow (WebP)."""
    if path.suffix == ".tif":
        return tifffile.imread(path)
    if path.suffix == ".png":
        return cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_UNCHANGED), cv2.COLOR_BGRA2RGBA)
    with Image.open(path) as im:
        return np.asarray(im.convert("RGBA"))


@pytest.mark.parametrize("fmt, bits, source", [
    ("png", 8, np.uint8), ("png", 16, np.uint8), ("png", 16, np.uint16), ("png", 8, np.uint16),
    ("tiff", 8, np.uint8), ("tiff", 16, np.uint8), ("tiff", 16, np.uint16),
])
def test_lossless_outputs_clear_rgb_under_alpha_zero_and_keep_every_other_pixel(tmp_path, fmt, bits, source):
    src = cutout(source)
    before = src.copy()
    src.setflags(write=False)  # encode may never write into the asset's pixels
    channel = ChannelConfig(name="c", path=tmp_path, format=fmt, bits=bits)
    got = read_back(write(tmp_path, src, channel))
    expected = to_dtype(before, np.uint16 if bits == 16 else np.uint8)
    assert got.dtype == expected.dtype and got.shape == (H, W, 4)
    hidden = expected[..., 3] == 0
    assert hidden.sum() > 1000 and expected[hidden][:, :3].any()  # there was junk to clear
    assert not got[hidden].any()  # RGB 0 (and alpha 0) wherever alpha is 0
    assert np.array_equal(got[~hidden], expected[~hidden])  # alpha > 0: every value as it was
    assert np.array_equal(src, before)


def test_webp_clears_rgb_under_alpha_zero(tmp_path):
    src = cutout()
    channel = ChannelConfig(name="c", path=tmp_path, format="webp", quality=90)
    got = read_back(write(tmp_path, src, channel))
    assert np.array_equal(got[..., 3], src[..., 3])  # alpha is coded losslessly
    hidden = src[..., 3] == 0
    # lossy: the subject's colour may bleed into its edge's macroblocks (chroma at half resolution),
    # but nothing of the backdrop (random 0..255 here) is left, and beyond one macroblock all is 0
    near = cv2.dilate((~hidden).astype(np.uint8), np.ones((33, 33), np.uint8)) > 0
    assert not got[hidden & ~near].any()
    assert got[hidden][:, :3].mean() < 2.0 and (got[hidden][:, :3] > 0).mean() < 0.25


def test_flattened_outputs_are_unaffected(tmp_path):
    src = cutout()
    cleared = src.copy()
    cleared[src[..., 3] == 0] = 0
    jpeg = ChannelConfig(name="j", path=tmp_path, format="jpeg", quality=95)
    data = imageio.encode(render_for_channel(Asset(pixels=src), jpeg), jpeg, None)
    assert data == imageio.encode(render_for_channel(Asset(pixels=cleared), jpeg), jpeg, None)
    with Image.open(io.BytesIO(data)) as im:
        assert im.mode == "RGB"
        assert np.abs(np.asarray(im, np.int16) - flatten(src, "#ffffff")).mean() < 2.0
    onto = ChannelConfig(name="p", path=tmp_path, format="png", background="#336699")
    got = cv2.cvtColor(cv2.imread(str(write(tmp_path, src, onto)), cv2.IMREAD_UNCHANGED), cv2.COLOR_BGR2RGB)
    assert np.array_equal(got, flatten(src, "#336699"))  # lossless and flattened: exactly the composite


def test_clear_transparent_copies_only_when_it_must():
    src = cutout()
    src.setflags(write=False)
    out = imageio.clear_transparent(src)
    assert out is not src and not out[src[..., 3] == 0].any()
    assert np.array_equal(out[src[..., 3] > 0], src[src[..., 3] > 0])
    assert imageio.clear_transparent(out) is out  # already clear: no copy
    opaque = np.full((4, 4, 4), 255, np.uint8)
    assert imageio.clear_transparent(opaque) is opaque
    rgb = np.zeros((4, 4, 3), np.uint16)
    assert imageio.clear_transparent(rgb) is rgb
    view = src[:, 8:]  # a crop of a wider array: rows are not contiguous
    assert np.array_equal(imageio.clear_transparent(view), out[:, 8:])
    mine = cutout()
    assert imageio.clear_transparent(mine, in_place=True) is mine and not mine[mine[..., 3] == 0].any()


def test_png_compression_changes_size_not_pixels(tmp_path):
    src = np.tile(cutout(), (4, 4, 1))
    sizes = {}
    for level in (1, 9):
        channel = ChannelConfig(name="c", path=tmp_path, format="png", png_compression=level)
        path = write(tmp_path, src, channel)
        sizes[level] = path.stat().st_size
        got = read_back(path)
        visible = src[..., 3] > 0
        assert np.array_equal(got[visible], src[visible]) and not got[~visible].any()
    assert sizes[9] < sizes[1]


@pytest.mark.parametrize("level", [0, 10, "fast"])
def test_png_compression_is_checked(level):
    with pytest.raises(ConfigError, match="png_compression"):
        config_from_dict({"channels": {"c": {"path": "out", "png_compression": level}}}, Path("/tmp/c.yaml"))
