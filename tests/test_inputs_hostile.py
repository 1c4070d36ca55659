"""Bad input fails cleanly: InputError (or TransientError when a retry can help), one line, naming the file."""
from __future__ import annotations

import os
import re
import threading

import numpy as np
import pytest
from PIL import Image

from fixtures_images import encode_pil, marker_image, png_claiming
from pipeline import imageio
from pipeline.config import InputConfig
from pipeline.errors import InputError, TransientError

CFG = InputConfig()


def fails(data: bytes, name: str, cfg: InputConfig = CFG) -> str:
    with pytest.raises(InputError) as info:
        imageio.decode(data, name, cfg)
    message = str(info.value)
    assert "\n" not in message and message.startswith(imageio.printable(name) + ":"), message
    return message


def test_zero_byte_file(tmp_path):
    p = tmp_path / "empty.jpg"
    p.write_bytes(b"")
    with pytest.raises(InputError, match="empty.jpg: file is empty"):
        imageio.read_input(p)
    assert "empty" in fails(b"", "empty.jpg")


@pytest.mark.parametrize("fmt,name", [("JPEG", "t.jpg"), ("PNG", "t.png"), ("TIFF", "t.tif")])
def test_truncated_files_are_errors_not_grey_halves(fmt, name):
    rng = np.random.default_rng(0)
    data = encode_pil(rng.integers(0, 255, (200, 300, 3), dtype=np.uint8), fmt)
    message = fails(data[: len(data) * 2 // 3], name)
    assert "damaged" in message or "truncated" in message


def test_text_file_named_jpg_is_not_an_image():
    assert "not an image" in fails(b"Dear studio,\nhere are the shots.\n" * 10, "letter.jpg")


@pytest.mark.parametrize("data,what", [
    (b"%PDF-1.7\n1 0 obj\n", "PDF"), (b"%!PS-Adobe-3.0 EPSF-3.0\n", "PostScript"),
    (b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg"/>', "SVG"), (b"GIF89a" + b"\x00" * 20, "GIF"),
])
def test_formats_outside_the_allow_list_are_refused(data, what):
    assert "not accepted" in fails(data, "shot.jpg") and what in fails(data, "shot.jpg")


def test_bmp_is_refused_even_though_pillow_reads_it():
    assert "not accepted" in fails(encode_pil(marker_image(), "BMP"), "shot.bmp")


def test_decompression_bomb_refused_from_header():
    data = encode_pil(np.arange(30000, dtype=np.uint8).reshape(100, 100, 3), "PNG")
    cfg = InputConfig(max_pixels=5000)
    message = fails(data, "bomb.png", cfg)
    assert "exceeds input.max_pixels" in message
    # Pillow's own check is off (ours reads the declared size), so it can never merely warn about an image we accept
    assert Image.MAX_IMAGE_PIXELS is None
    imageio.decode(data, "ok.png", InputConfig(max_pixels=10_000))


def test_png_header_claiming_100k_by_100k():
    message = fails(png_claiming(100_000, 100_000), "huge.png")
    assert "10,000 megapixels exceeds input.max_pixels (250 megapixels)" in message


def test_png_header_claiming_more_than_its_bytes_hold_is_damage_found_by_decoding():
    # under max_pixels, so the header is believed; decoding then runs out of data: damaged, not a half image
    message = fails(png_claiming(10_000, 5_000), "forged.png")
    assert "image data is damaged" in message


def test_symlink_is_never_followed(tmp_path):
    target = tmp_path / "real.png"
    target.write_bytes(encode_pil(marker_image(), "PNG"))
    link = tmp_path / "link.png"
    link.symlink_to(target)
    with pytest.raises(InputError, match="symbolic link"):
        imageio.read_input(link)


def test_directory_and_fifo_are_not_regular_files(tmp_path):
    with pytest.raises(InputError, match="not a regular file"):
        imageio.read_input(tmp_path)
    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)
    with pytest.raises(InputError, match="not a regular file"):
        imageio.read_input(fifo)


def test_missing_file(tmp_path):
    with pytest.raises(InputError, match="disappeared"):
        imageio.read_input(tmp_path / "gone.jpg")


def test_unreadable_file(tmp_path, monkeypatch):
    p = tmp_path / "secret.jpg"
    p.write_bytes(b"x")
    p.chmod(0)
    if os.geteuid() == 0:  # root reads anything: simulate the kernel's refusal instead
        real_open = os.open

        def deny(path, flags, *args, **kw):
            if str(path) == str(p):
                raise PermissionError(13, "Permission denied")
            return real_open(path, flags, *args, **kw)

        monkeypatch.setattr(os, "open", deny)
    with pytest.raises(InputError, match="no permission"):
        imageio.read_input(p)


def test_file_growing_while_read_is_transient(tmp_path, monkeypatch):
    p = tmp_path / "copying.jpg"
    p.write_bytes(b"a" * 1000)
    real_read = os.read
    appended = threading.Event()

    def read_and_grow(fd, n):
        chunk = real_read(fd, n)
        if not appended.is_set():
            appended.set()
            with open(p, "ab") as fh:  # another process keeps copying the file in
                fh.write(b"b" * 1000)
        return chunk

    monkeypatch.setattr(os, "read", read_and_grow)
    with pytest.raises(TransientError, match="changed while it was read"):
        imageio.read_input(p)


def test_file_replaced_while_read_is_transient(tmp_path, monkeypatch):
    p = tmp_path / "swap.jpg"
    p.write_bytes(b"a" * 1000)
    real_read = os.read
    done = threading.Event()

    def read_and_replace(fd, n):
        chunk = real_read(fd, n)
        if not done.is_set():
            done.set()
            other = tmp_path / "other.jpg"
            other.write_bytes(b"c" * 1000)
            os.replace(other, p)  # the same name now points at a different file
        return chunk

    monkeypatch.setattr(os, "read", read_and_replace)
    with pytest.raises(TransientError, match="replaced"):
        imageio.read_input(p)


def test_file_removed_while_read_is_transient(tmp_path, monkeypatch):
    p = tmp_path / "vanish.jpg"
    p.write_bytes(b"a" * 1000)
    real_read = os.read

    def read_and_remove(fd, n):
        chunk = real_read(fd, n)
        if p.exists():
            p.unlink()
        return chunk

    monkeypatch.setattr(os, "read", read_and_remove)
    with pytest.raises(TransientError, match="removed"):
        imageio.read_input(p)


def test_hostile_names_stay_on_one_line(tmp_path):
    name = "evil\nname\x1b[31m../../etc.jpg"
    message = fails(b"not an image at all", name)
    assert "evil\\nname\\x1b[31m../../etc.jpg" in message
    p = tmp_path / "line\nbreak.jpg"
    p.write_bytes(b"")
    with pytest.raises(InputError) as info:
        imageio.read_input(p)
    assert "\n" not in str(info.value) and "line\\nbreak.jpg" in str(info.value)


def test_corrupt_heic_fails_cleanly():
    data = encode_pil(marker_image(), "HEIF", quality=90)
    message = fails(data[: len(data) // 2], "cut.heic")
    assert "HEIF decoder refused it" in message and "meta" in message


def test_heic_over_the_pixel_limit_is_refused_from_its_header():
    data = encode_pil(np.zeros((64, 64, 3), np.uint8), "HEIF", quality=50)
    assert "max_pixels" in fails(data, "big.heic", InputConfig(max_pixels=1000))


def test_heic_tripping_libheif_security_limits_fails_cleanly(monkeypatch):
    """libheif refuses images beyond its security limits; the error reaches the studio as InputError.

    A real over-limit HEIC would be gigapixels; simulate libheif's refusal at open instead."""
    import pillow_heif

    data = encode_pil(marker_image(), "HEIF", quality=90)

    def refuse(*args, **kwargs):
        raise RuntimeError("Memory allocation error: Security limit exceeded: image size 100000x100000 "
                           "exceeds the maximum image size of 32768x32768")

    monkeypatch.setattr(pillow_heif.heif, "HeifFile", refuse)
    monkeypatch.setattr(pillow_heif.as_plugin, "HeifFile", refuse)
    message = fails(data, "limit.heic")
    assert "Security limit exceeded" in message


# ---------------------------------------------------------------- decoded, but no picture

def test_constant_image_is_blank_and_the_message_says_what_was_measured():
    message = fails(encode_pil(np.full((60, 90, 3), (40, 90, 200), np.uint8), "PNG"), "flat.png")
    assert "decoded image is blank" in message
    assert "every pixel is #285ac8" in message and "input.min_signal" in message


def test_constant_sixteen_bit_image_is_blank():
    from fixtures_images import tiff16

    message = fails(tiff16(np.full((20, 30, 3), 40000, np.uint16)), "flat16.tif")
    assert "decoded image is blank" in message and "every pixel is" in message


def test_near_constant_image_is_blank_with_its_measured_deviation():
    img = np.full((100, 100, 3), 128, np.uint8)
    img[:10, :10] = 129  # 1 % of the pixels one level up: std 0.1 of 255 levels
    message = fails(encode_pil(img, "PNG"), "almost.png")
    assert "decoded image is blank" in message and "0.10" in message and "under input.min_signal (0.5)" in message


def test_blank_check_can_be_turned_off():
    d = imageio.decode(encode_pil(np.zeros((8, 8, 3), np.uint8), "PNG"), "black.png", InputConfig(min_signal=0))
    assert d.pixels.shape == (8, 8, 3)


# ---------------------------------------------------------------- messages are for people, not Python

_INTERNALS = re.compile(r"<[^<>]* at 0x[0-9a-fA-F]+>|\bb'|\bb\"|_io\.|object at")


@pytest.mark.parametrize("data,name", [
    (b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, "broken.png"),
    (b"II*\x00\x08\x00\x00\x00" + b"\x00" * 30, "broken.tif"),
    (b"\xff\xd8\xff\xe0" + b"garbage" * 20, "broken.jpg"),
    (b"RIFF\x00\x00\x00\x00WEBPVP8 " + b"\x00" * 30, "broken.webp"),
], ids=["png", "tiff", "jpeg", "webp"])
def test_damaged_headers_give_a_clean_message(data, name):
    message = fails(data, name)
    assert not _INTERNALS.search(message), message
    assert "not a readable image" in message
