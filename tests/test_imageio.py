"""imageio: reading files safely, decoding every accepted format, encoding every channel format."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageFile, ImageOps

from fixtures_images import (encode_pil, gradient16, jpeg_with_orientation, marker_image, palette_png_with_transparency,
                             png16, tiff16, tiff_multipage)
from pipeline import imageio
from pipeline.config import ChannelConfig, InputConfig
from pipeline.errors import InputError, TransientError

CFG = InputConfig()


def channel(fmt: str = "png", bits: int = 8, metadata: str = "default", **kw) -> ChannelConfig:
    return ChannelConfig(name="t", path=None, format=fmt, bits=bits, metadata=metadata, **kw)


def test_read_input_returns_bytes(tmp_path):
    p = tmp_path / "a.jpg"
    p.write_bytes(b"hello")
    assert imageio.read_input(p) == b"hello"


def test_truncated_images_stay_errors_after_import():
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_applied_like_pillow(orientation):
    data = jpeg_with_orientation(orientation)
    d = imageio.decode(data, "o.jpg", CFG)
    reference = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data))))
    assert d.pixels.shape == (24, 40, 3) == reference.shape
    assert np.array_equal(d.pixels, reference)
    # the red marker is top-left, whatever the camera stored
    assert d.pixels[:6, :8, 0].mean() > 200 and d.pixels[:6, :8, 2].mean() < 60
    assert d.pixels[-6:, -8:, 0].mean() < 160
    assert (d.notes.get("orientation") == orientation) == (orientation != 1)
    if d.exif:
        assert imageio.metadata.exif_orientation(d.exif) == 1  # pixels are upright: nobody may rotate again


def test_sixteen_bit_png_and_tiff_keep_every_value():
    src = gradient16()
    for data, name in ((png16(src), "g.png"), (tiff16(src), "g.tif")):
        d = imageio.decode(data, name, CFG)
        assert d.pixels.dtype == np.uint16 and np.array_equal(d.pixels, src), name
        assert d.notes["bits"] == 16
        for fmt in ("png", "tiff"):
            out = imageio.encode(d.pixels, channel(fmt, bits=16), d)
            back = imageio.decode(out, f"out.{fmt}", CFG)
            assert back.pixels.dtype == np.uint16 and np.array_equal(back.pixels, src), (name, fmt)


def test_sixteen_bit_rgba_tiff_keeps_alpha():
    src = np.dstack([gradient16(), np.full((8, 64), 30000, np.uint16)])
    d = imageio.decode(tiff16(src), "a.tif", CFG)
    assert d.pixels.shape[2] == 4 and np.array_equal(d.pixels, src)


def test_eight_bit_channel_from_sixteen_bit_source_rounds_correctly():
    src = gradient16()
    out = imageio.encode(src, channel("png", bits=8), None)
    back = np.asarray(Image.open(io.BytesIO(out)))
    assert back.dtype == np.uint8 and np.abs(back.astype(int) - np.rint(src / 257)).max() <= 1


def test_palette_png_with_transparency_becomes_rgba():
    d = imageio.decode(palette_png_with_transparency(), "p.png", CFG)
    assert d.pixels.shape == (8, 16, 4)
    assert (d.pixels[:, :8, 3] == 0).all() and (d.pixels[:, 8:, 3] == 255).all()
    assert tuple(d.pixels[0, 12, :3]) == (0, 0, 255)


def test_multipage_tiff_uses_first_page_and_counts_pages():
    d = imageio.decode(tiff_multipage(3), "m.tif", CFG)
    assert d.notes["pages"] == 3
    assert tuple(d.pixels[5, 5]) == (0, 100, 200)


def test_webp_and_avif_decode():
    img = marker_image()
    d = imageio.decode(encode_pil(img, "WEBP", lossless=True), "w.webp", CFG)
    assert d.format == "WEBP" and np.array_equal(d.pixels, img)
    d = imageio.decode(encode_pil(img, "AVIF", quality=95), "w.avif", CFG)
    assert d.format == "AVIF" and d.pixels.shape == img.shape
    assert d.pixels[:6, :8, 0].mean() > 200


def test_heic_decodes_with_orientation():
    img = marker_image()
    exif = Image.Exif()
    exif[0x0112] = 6
    stored = np.ascontiguousarray(np.rot90(img, 1))
    try:
        data = encode_pil(stored, "HEIF", quality=95, exif=exif.tobytes())
    except (KeyError, OSError, RuntimeError) as exc:  # pragma: no cover - depends on libheif build
        pytest.skip(f"pillow-heif cannot encode HEIC here: {exc}")
    d = imageio.decode(data, "h.heic", CFG)
    assert d.format == "HEIF" and d.pixels.shape == img.shape
    assert d.pixels[:6, :8, 0].mean() > 180 and d.pixels[-6:, -8:, 0].mean() < 160


def test_png_named_jpg_decodes_and_is_noted():
    d = imageio.decode(encode_pil(marker_image(), "PNG"), "liar.jpg", CFG)
    assert d.format == "PNG" and "named .jpg but the content is PNG" in d.notes["content"]


def test_jpeg_output_flattens_alpha_and_embeds_srgb():
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., 3] = 0
    out = imageio.encode(rgba, channel("jpeg", quality=95), None)
    im = Image.open(io.BytesIO(out))
    assert im.mode == "RGB" and np.asarray(im).min() >= 250
    assert im.info["icc_profile"] == imageio.SRGB_ICC


@pytest.mark.parametrize("fmt", ["jpeg", "png", "webp", "tiff"])
def test_every_format_round_trips(fmt):
    img = marker_image()
    out = imageio.encode(img, channel(fmt, quality=95), None)
    d = imageio.decode(out, f"x.{fmt}", CFG)
    assert d.pixels.shape == img.shape
    assert np.abs(d.pixels.astype(int) - img).mean() < 3
    assert d.icc == imageio.SRGB_ICC and "kept" in d.notes["icc"]  # our own sRGB is recognised, not reconverted


# ---------------------------------------------------------------- the input-class table (docs/input-classes.md)

def _input_classes():
    import fixtures_images as fx
    from PIL import Image as PILImage

    rng = np.random.default_rng(1)
    noise = rng.integers(0, 255, (120, 160, 3), dtype=np.uint8)
    jpeg = encode_pil(noise, "JPEG")
    png = encode_pil(noise, "PNG")
    tif = encode_pil(noise, "TIFF")
    ink = np.full((16, 16, 4), (0, 128, 0, 64), np.uint8)
    ink[:, 8:] = (255, 0, 0, 0)
    cmyk = PILImage.fromarray(ink, "CMYK")
    grey_card = np.full((32, 48, 3), 0.18)
    grey_card[:, 24:] = 0.5
    dng = fx.make_dng(grey_card)
    small = InputConfig(max_pixels=1000)
    return [
        # class, file name, bytes, config, expected outcome
        ("JPEG, sRGB / untagged", "shot.jpg", encode_pil(marker_image(), "JPEG"), CFG, "decoded"),
        ("JPEG, EXIF orientation 6", "rotated.jpg", jpeg_with_orientation(6), CFG, "decoded"),
        ("JPEG, Adobe RGB (1998) profile", "adobe.jpg", encode_pil(fx.patches(), "JPEG", icc_profile=fx.adobe_rgb_profile()), CFG, "decoded"),
        ("JPEG, Display P3 profile", "p3.jpg", encode_pil(fx.patches(), "JPEG", icc_profile=fx.display_p3_profile()), CFG, "decoded"),
        ("PNG, ProPhoto profile", "prophoto.png", encode_pil(fx.patches(), "PNG", icc_profile=fx.prophoto_profile()), CFG, "decoded"),
        ("CMYK JPEG with profile", "cmyk.jpg", encode_pil(cmyk, "JPEG", icc_profile=fx.cmyk_profile()), CFG, "decoded"),
        ("CMYK TIFF with profile", "cmyk.tif", encode_pil(cmyk, "TIFF", icc_profile=fx.cmyk_profile()), CFG, "decoded"),
        ("CMYK JPEG without profile", "cmyk_plain.jpg", encode_pil(cmyk, "JPEG"), CFG, "decoded"),
        ("PNG 16-bit RGB", "deep.png", png16(gradient16()), CFG, "decoded"),
        ("TIFF 16-bit RGB, Adobe RGB profile", "deep.tif", fx.tiff16(gradient16(), fx.adobe_rgb_profile()), CFG, "decoded"),
        ("TIFF multi-page", "pages.tif", tiff_multipage(3), CFG, "decoded"),
        ("PNG palette + transparency", "palette.png", palette_png_with_transparency(), CFG, "decoded"),
        ("WebP", "shot.webp", encode_pil(marker_image(), "WEBP"), CFG, "decoded"),
        ("AVIF", "shot.avif", encode_pil(marker_image(), "AVIF"), CFG, "decoded"),
        ("HEIC", "shot.heic", encode_pil(marker_image(), "HEIF"), CFG, "decoded"),
        ("Camera RAW (DNG)", "shot.dng", dng, InputConfig(raw_memory_mb=512), "decoded"),
        ("PNG named .jpg", "liar.jpg", encode_pil(marker_image(), "PNG"), CFG, "decoded"),
        ("PNG palette, two flat colours (232 bytes for 900×600)", "bands.png", _bands_png(), CFG, "decoded"),
        ("BigTIFF", "big.tif", _bigtiff(), CFG, "decoded"),
        ("HEIC with 3 images, the primary is image 2", "burst.heic", fx.heif_multi(2), CFG, "decoded"),
        ("one flat colour (blank)", "flat.png", encode_pil(np.full((60, 90, 3), 200, np.uint8), "PNG"), CFG,
         "InputError"),
        ("Camera RAW with all sensor values 0 (blank)", "zero.dng", fx.make_dng(np.zeros((32, 48, 3))),
         InputConfig(raw_memory_mb=512), "InputError"),
        ("zero-byte file", "empty.jpg", b"", CFG, "InputError"),
        ("truncated JPEG", "cut.jpg", jpeg[: len(jpeg) // 2], CFG, "IncompleteInput"),
        ("truncated PNG", "cut.png", png[: len(png) // 2], CFG, "IncompleteInput"),
        ("truncated TIFF", "cut.tif", tif[: len(tif) // 2], CFG, "IncompleteInput"),
        ("text file named .jpg", "letter.jpg", b"Dear studio,\nthe shots are late.\n", CFG, "InputError"),
        ("PDF named .jpg", "doc.jpg", b"%PDF-1.7\n%\xe2\xe3\n1 0 obj\n", CFG, "InputError"),
        ("SVG", "logo.svg", b'<svg xmlns="http://www.w3.org/2000/svg"/>', CFG, "InputError"),
        ("BMP (not on the allow-list)", "old.bmp", encode_pil(marker_image(), "BMP"), CFG, "InputError"),
        ("decompression bomb (over max_pixels)", "bomb.png", encode_pil(np.zeros((100, 100, 3), np.uint8), "PNG"),
         small, "InputError"),
        ("PNG header claiming 100k×100k", "huge.png", fx.png_claiming(100_000, 100_000), CFG, "InputError"),
        ("PNG header claiming more than its bytes hold", "forged.png", fx.png_claiming(10_000, 5_000), CFG,
         "IncompleteInput"),
        ("corrupt RAW", "broken.nef", b"II*\x00\x08\x00\x00\x00" + b"\x00" * 64, InputConfig(raw_memory_mb=512), "InputError"),
        ("RAW over raw_memory_mb", "giant.dng", fx.dng_claiming(12000, 12000), InputConfig(raw_memory_mb=256), "InputError"),
        ("truncated HEIC", "cut.heic", encode_pil(marker_image(), "HEIF")[:300], CFG, "InputError"),
        ("control characters in the name", "bad\nname.jpg", b"nope", CFG, "InputError"),
    ]


def _bands_png() -> bytes:
    im = Image.new("P", (900, 600), 0)
    im.putpalette([255, 255, 255, 200, 30, 30])
    im.paste(1, (0, 400, 900, 600))
    return encode_pil(im, "PNG")


def _bigtiff() -> bytes:
    import tifffile

    buf = io.BytesIO()
    tifffile.imwrite(buf, marker_image(), bigtiff=True, photometric="rgb")
    return buf.getvalue()


def test_input_class_table(tmp_path):
    """Every input class through read_input + decode (+ encode): asserts each outcome, then writes the doc."""
    from pathlib import Path

    rows = []
    for cls, name, data, cfg, expected in _input_classes():
        path = tmp_path / name.replace("\n", "_")
        path.write_bytes(data)
        try:
            raw = imageio.read_input(path)
            d = imageio.decode(raw, name, cfg)
            out = imageio.encode(d.pixels, channel("png", bits=16 if d.pixels.dtype == np.uint16 else 8), d)
            assert imageio.decode(out, "out.png", CFG).pixels.shape == d.pixels.shape
            notes = "; ".join(f"{k}: {v}" for k, v in d.notes.items()) or "—"
            kind = "RGBA" if d.pixels.shape[2] == 4 else "RGB"
            outcome, mode = "decoded", f"{kind} {d.pixels.dtype.itemsize * 8}-bit {d.pixels.shape[1]}×{d.pixels.shape[0]}"
        except (InputError, TransientError) as exc:
            outcome, mode, notes = type(exc).__name__, "—", str(exc).replace(f"{tmp_path}/", "")
            assert "\n" not in notes
        assert outcome == expected, (cls, outcome, notes)
        rows.append((cls, imageio.printable(name), outcome, mode, notes.replace("|", "\\|")))
    lines = [
        "# Input classes",
        "",
        "Generated by `tests/test_imageio.py::test_input_class_table` (do not edit by hand): every class of",
        "input is built in the test, read with `read_input`, decoded with `decode` and, when decoded, encoded",
        "to PNG and read back. *Notes* is what decoding recorded (`Decoded.notes`) or the exact error message.",
        "",
        "| class | example file | outcome | decoded as | notes / error message |",
        "|---|---|---|---|---|",
    ]
    lines += [f"| {c} | `{n}` | {o} | {m} | {t} |" for c, n, o, m, t in rows]
    doc = Path(__file__).resolve().parent.parent / "docs" / "input-classes.md"
    doc.parent.mkdir(exist_ok=True)
    doc.write_text("\n".join(lines) + "\n", encoding="utf-8")


# ---------------------------------------------------------------- valid files that used to be refused

def test_bigtiff_decodes():
    """BigTIFF (64-bit offsets), as Pillow opens it: little-endian (Pillow 13 cannot open big-endian BigTIFF)."""
    import tifffile

    buf = io.BytesIO()
    tifffile.imwrite(buf, marker_image(), bigtiff=True, byteorder="<", photometric="rgb")
    d = imageio.decode(buf.getvalue(), "big.tif", CFG)
    assert d.format == "TIFF" and np.array_equal(d.pixels, marker_image())
    deep = gradient16()
    buf = io.BytesIO()
    tifffile.imwrite(buf, deep, bigtiff=True, byteorder="<", photometric="rgb")
    d = imageio.decode(buf.getvalue(), "big16.tif", CFG)
    assert d.pixels.dtype == np.uint16 and np.array_equal(d.pixels, deep)
    # its first IFD is read too: a BigTIFF that says it is a DNG goes to the RAW decoder
    buf = io.BytesIO()
    tifffile.imwrite(buf, marker_image(), bigtiff=True, extratags=[(50706, 1, 4, bytes([1, 4, 0, 0]), True)])
    assert imageio.sniff(buf.getvalue()) == "RAW" and imageio.sniff(b"II+\x00" + b"\x00" * 12) == "TIFF"


def test_small_flat_palette_png_is_not_taken_for_a_forged_header():
    """A 900×600 two-colour palette PNG compresses to ~230 bytes: that is deflate doing well, not damage."""
    im = Image.new("P", (900, 600), 0)
    im.putpalette([255, 255, 255, 200, 30, 30])
    im.paste(1, (0, 400, 900, 600))  # a red band under white
    data = encode_pil(im, "PNG")
    assert len(data) < 400
    d = imageio.decode(data, "bands.png", CFG)
    assert d.pixels.shape == (600, 900, 3)
    assert tuple(d.pixels[0, 0]) == (255, 255, 255) and tuple(d.pixels[-1, -1]) == (200, 30, 30)


# ---------------------------------------------------------------- files holding more than one image

def _colour_at(d: imageio.Decoded) -> tuple[int, ...]:
    return tuple(int(v) for v in d.pixels[16, 16, :3])


def _near(a, b, tol: int = 12) -> bool:
    return all(abs(int(x) - int(y)) <= tol for x, y in zip(a, b))


@pytest.mark.parametrize("primary", [0, 2])
def test_multi_image_heif_uses_the_primary_image_and_says_so(primary):
    from fixtures_images import FRAME_COLOURS, heif_multi

    d = imageio.decode(heif_multi(primary), "burst.heic", CFG)
    assert _near(_colour_at(d), FRAME_COLOURS[primary]), _colour_at(d)
    assert d.notes["images"] == 3 and d.notes["image"] == f"{primary} (primary)"


def test_mpo_uses_its_primary_image_and_counts_the_others():
    from fixtures_images import FRAME_COLOURS, frames

    ims = frames()
    d = imageio.decode(encode_pil(ims[0], "MPO", save_all=True, append_images=ims[1:], quality=95), "stereo.mpo", CFG)
    assert _near(_colour_at(d), FRAME_COLOURS[0])
    assert d.notes["images"] == 3 and d.notes["image"] == "0 (primary)"


@pytest.mark.parametrize("fmt,name", [("WEBP", "anim.webp"), ("PNG", "anim.png")])
def test_animation_uses_its_first_frame_and_counts_frames(fmt, name):
    from fixtures_images import FRAME_COLOURS, frames

    ims = frames()
    d = imageio.decode(encode_pil(ims[0], fmt, save_all=True, append_images=ims[1:], lossless=True), name, CFG)
    assert tuple(d.pixels[16, 16]) == FRAME_COLOURS[0]
    assert d.notes["frames"] == 3 and d.notes["frame"] == "0 (first)"


def test_sixteen_bit_animated_png_uses_its_default_image():
    """16-bit PNG goes through OpenCV, which plays APNG: it would hand back the animation's frame, not the still
    image every PNG decoder shows (and Pillow's frame 0 for 8-bit APNG)."""
    from fixtures_images import apng16

    red = np.zeros((24, 32, 3), np.uint16)
    red[..., 0] = 50001
    red[:4] = 30001
    blue = np.zeros((24, 32, 3), np.uint16)
    blue[..., 2] = 60001
    d = imageio.decode(apng16(red, blue), "deep_anim.png", CFG)
    assert d.pixels.dtype == np.uint16 and np.array_equal(d.pixels, red)
    assert d.notes["frames"] == 3 and d.notes["frame"] == "0 (the default image, not part of the animation)"


def test_multipage_tiff_says_which_page_is_used():
    d = imageio.decode(tiff_multipage(3), "m.tif", CFG)
    assert d.notes["pages"] == 3 and d.notes["page"] == "0 (first)"


# ---------------------------------------------------------------- flat-ish but real pictures are not blank

def test_white_product_on_white_paper_is_not_blank():
    """Paper at 250, a white product at 255 filling a tenth of the frame, a faint contact shadow (-6 levels)."""
    img = np.full((400, 600, 3), 250, np.uint8)
    img[150:330, 250:350] = 255
    img[330:345, 230:370] = 244
    d = imageio.decode(encode_pil(img, "JPEG", quality=92), "white_on_white.jpg", CFG)
    assert d.pixels.shape == img.shape


def test_flat_colour_graphics_with_two_or_three_colours_are_not_blank():
    for colours in ([(255, 255, 255), (200, 30, 30)], [(255, 255, 255), (200, 30, 30), (30, 30, 200)]):
        im = Image.new("P", (900, 600), 0)
        im.putpalette([v for c in colours for v in c])
        im.paste(1, (0, 400, 900, 600))
        if len(colours) == 3:
            im.paste(2, (300, 100, 600, 400))
        d = imageio.decode(encode_pil(im, "PNG"), "graphic.png", CFG)
        assert len(np.unique(d.pixels.reshape(-1, 3), axis=0)) == len(colours)


def test_one_colour_cut_out_with_a_shaped_alpha_is_not_blank():
    """A logo: every pixel black, its shape only in the alpha channel."""
    rgba = np.zeros((40, 60, 4), np.uint8)
    rgba[10:30, 15:45, 3] = 255
    d = imageio.decode(encode_pil(rgba, "PNG"), "logo.png", CFG)
    assert d.pixels.shape == (40, 60, 4)


def test_a_rule_without_extensions_takes_every_file_the_decoder_reads():
    """One table: a .pef decodes, so a default rule must take it (it did not: 8 RAW types against 22)."""
    from pathlib import PurePosixPath

    from pipeline.rules import MatchSpec, Rule

    rule = Rule(name="all", path=None, match=MatchSpec(), steps=[], outputs=[])
    for ext in (*imageio.EXTENSION_FORMATS, *imageio.RAW_EXTENSIONS):
        assert rule.why_not(PurePosixPath(f"shots/IMG_0001{ext.upper()}")) is None, ext
    assert "gif" not in MatchSpec().extensions


def test_dark_sixteen_bit_picture_is_not_blank():
    """Like gray16_bug1044.tif, a fluorescence micrograph: a picture in the lowest 1 % of the 16-bit range. In
    levels of 255 it measures about 0.2, yet it holds tens of levels of 65535: at its own depth, it is no blank."""
    from fixtures_images import tiff16

    y, x = np.mgrid[0:48, 0:64]
    cells = 200 + 300 * (np.sin(x / 3.0) * np.cos(y / 4.0) > 0.8)
    deep = np.repeat(cells[..., None], 3, axis=2).astype(np.uint16)
    assert deep.std() / 257 < 0.5
    d = imageio.decode(tiff16(deep), "micrograph.tif", CFG)
    assert np.array_equal(d.pixels, deep)
