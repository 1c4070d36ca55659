"""Camera RAW: a DNG written here is decoded by LibRaw in a subprocess; crashes and OOM fail one job."""
from __future__ import annotations

import sys

import numpy as np
import pytest

from fixtures_images import dng_claiming, make_dng
from pipeline import imageio
from pipeline.imageio import raw as rawdecode
from pipeline.config import InputConfig

CFG = InputConfig(raw_memory_mb=1024)


@pytest.fixture(scope="module")
def dng() -> bytes:
    img = np.zeros((64, 96, 3))
    img[:, :48] = (0.6, 0.1, 0.1)
    img[:, 48:] = (0.1, 0.1, 0.6)
    img[:16] = 0.18
    return make_dng(img)


@pytest.fixture(scope="module")
def decoded(dng) -> imageio.Decoded:
    return imageio.decode(dng, "shot.DNG", CFG)


def test_dng_decodes_to_16_bit_srgb(decoded):
    d = decoded
    assert d.format == "RAW" and d.pixels.dtype == np.uint16 and d.pixels.shape == (64, 96, 3)
    srgb = lambda v: 1.055 * v ** (1 / 2.4) - 0.055  # noqa: E731
    assert np.allclose(d.pixels[40, 10] / 65535, [srgb(0.6), srgb(0.1), srgb(0.1)], atol=0.01)
    assert np.allclose(d.pixels[40, 80] / 65535, [srgb(0.1), srgb(0.1), srgb(0.6)], atol=0.01)
    grey = d.pixels[5, 50] / 65535
    assert np.allclose(grey, srgb(0.18), atol=0.01)  # 18 % grey stays 18 % grey: white balance and exposure as shot
    assert d.notes["bits"] == 16


def test_dng_metadata_is_read(decoded):
    from pipeline.imageio import metadata

    exif = metadata.load_exif(decoded.exif)
    assert exif.get(0x010F) == "Assetd" and exif.get(0x8298) == "(c) 2024 Studio North"


def test_half_size(dng):
    d = imageio.decode(dng, "shot.dng", InputConfig(raw_half_size=True, raw_memory_mb=1024))
    assert d.pixels.shape == (32, 48, 3) and d.notes["raw_half_size"]


def test_dng_named_tif_is_still_raw(dng):
    assert imageio.sniff(dng) == "RAW"


def test_corrupt_raw_fails_that_job_only():
    with pytest.raises(imageio.InputError, match=r"^broken\.nef: .*LibRaw") as info:
        imageio.decode(b"II*\x00\x08\x00\x00\x00" + b"\x00" * 64, "broken.nef", CFG)
    assert "\n" not in str(info.value)
    with pytest.raises(imageio.InputError, match=r"^junk\.cr3: "):
        imageio.decode(b"this is not a raw file at all" * 10, "junk.cr3", CFG)


def test_raw_header_claiming_too_much_memory_runs_out_in_the_child():
    with pytest.raises(imageio.InputError, match=r"^giant\.dng: RAW decoder ran out of memory \(raw_memory_mb: 256\)"):
        imageio.decode(dng_claiming(12000, 12000), "giant.dng", InputConfig(raw_memory_mb=256))


def test_crashing_decoder_is_contained(dng):
    crash = [sys.executable, "-c",
             "import os, signal, sys; sys.stdin.buffer.read(); os.kill(os.getpid(), signal.SIGSEGV)"]
    with pytest.raises(rawdecode.RawDecodeError, match=r"RAW decoder crashed \(SIGSEGV\)"):
        rawdecode.decode_raw(dng, half_size=False, memory_mb=512, command=crash)
    hang = [sys.executable, "-c", "import time; time.sleep(30)"]
    with pytest.raises(rawdecode.RawDecodeError, match="did not finish within 1 s"):
        rawdecode.decode_raw(dng, half_size=False, memory_mb=512, command=hang, timeout_s=1)


def test_raw_with_all_sensor_values_zero_is_blank_not_black_deliverables():
    """Like IMG_1361.dng (all raw values 0): LibRaw decodes it to solid black without complaint."""
    with pytest.raises(imageio.InputError, match=r"^empty\.dng: decoded image is blank \(every pixel is #000000") as info:
        imageio.decode(make_dng(np.zeros((32, 48, 3))), "empty.dng", CFG)
    assert "\n" not in str(info.value)


def test_raw_cut_short_gives_a_clean_message():
    """LibRaw reports I/O errors as bytes; the studio must not read b'Input/output error'."""
    data = make_dng(np.random.default_rng(0).random((64, 96, 3)))
    with pytest.raises(imageio.InputError) as info:
        imageio.decode(data[: len(data) // 2], "cut.dng", CFG)
    message = str(info.value)
    assert message.startswith("cut.dng: ") and "b'" not in message and "\n" not in message
    assert "cut short" in message
