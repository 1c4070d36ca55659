"""Output names can never escape their channel folder; writes are atomic; channels shrink and flatten."""
from __future__ import annotations

import os

import numpy as np
import pytest

from pipeline.config import ChannelConfig
from pipeline.outputs import (OutputPathError, atomic_write, inside, output_name, render_for_channel, render_name,
                              safe_stem, template_problem)
from pipeline.stages.base import Asset


@pytest.mark.parametrize("name, expected", [
    ("shot", "shot"),
    ("../../etc/passwd", "etc_passwd"),
    ("a/b\\c", "a_b_c"),
    ("line\nbreak\r", "line_break"),
    ("..", "image"),
    (".hidden", "hidden"),
    ("", "image"),
    ("tab\there", "tab_here"),
    ("weird:*?<>|name", "weird_name"),
    ("Café", "Café"),
])
def test_safe_stem(name, expected):
    assert safe_stem(name) == expected


def test_safe_stem_limits_length_in_bytes():
    assert len(safe_stem("é" * 300).encode()) <= 120


def test_render_name_drops_missing_ratio_and_sanitises_fields():
    assert render_name("{stem}_{ratio}.{ext}", stem="shoe", ratio="4x5", ext="jpg") == "shoe_4x5.jpg"
    assert render_name("{stem}_{ratio}.{ext}", stem="shoe", ratio=None, ext="png") == "shoe.png"
    assert render_name("{rule}-{stem}.{ext}", stem="../x", rule="p", ext="png") == "p-x.png"
    with pytest.raises(OutputPathError, match="unknown field"):
        render_name("{nope}.{ext}", stem="a", ext="png")


def test_inside_refuses_to_leave_the_folder(tmp_path):
    assert inside(tmp_path, "a.png") == tmp_path.resolve() / "a.png"
    for bad in ("../a.png", "sub/a.png", "/etc/passwd"):
        with pytest.raises(OutputPathError):
            inside(tmp_path, bad)


def test_atomic_write_replaces_and_leaves_no_temp_files(tmp_path):
    target = tmp_path / "ch" / "a.jpg"
    atomic_write(target, b"one")
    atomic_write(target, b"two")
    assert target.read_bytes() == b"two"
    assert os.listdir(target.parent) == ["a.jpg"]


def test_atomic_write_failure_keeps_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "a.jpg"
    atomic_write(target, b"old")

    def boom(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        atomic_write(target, b"new")
    assert target.read_bytes() == b"old" and os.listdir(tmp_path) == ["a.jpg"]


def test_render_for_channel_shrinks_never_enlarges_and_flattens():
    rgba = np.zeros((300, 600, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[100:200, 200:400, 3] = 255
    asset = Asset(pixels=rgba)
    jpeg = ChannelConfig(name="w", path=None, format="jpeg", long_edge=300)
    out = render_for_channel(asset, jpeg)
    assert out.shape == (150, 300, 3)
    assert tuple(out[0, 0]) == (255, 255, 255)  # transparent → white for formats without alpha
    assert tuple(out[75, 150]) == (200, 0, 0)
    png = ChannelConfig(name="p", path=None, format="png", long_edge=2000)
    assert render_for_channel(asset, png).shape == (300, 600, 4)
    coloured = ChannelConfig(name="c", path=None, format="png", background="#00ff00")
    assert tuple(render_for_channel(asset, coloured)[0, 0]) == (0, 255, 0)


def name_in(channel: ChannelConfig, rel_path: str = "shoe.jpg", ratio: str | None = "4:5", step: str = "crops") -> str:
    return output_name(channel, stem=safe_stem(rel_path.rsplit("/", 1)[-1].rsplit(".", 1)[0]), rel_path=rel_path,
                       ratio=ratio, step=step, rule="products", hash8="0123abcd")


def test_folder_field_is_the_inputs_folder_under_its_inbox_joined_by_dashes():
    channel = ChannelConfig(name="web", path=None, format="jpeg", filename="{folder}_{stem}_{ratio}.{ext}")
    assert name_in(channel, "products/shoes/red/shoe.jpg") == "products-shoes-red_shoe_4x5.jpg"
    assert name_in(channel, "odd:name/sub dir/shoe.jpg") == "odd_name-sub dir_shoe_4x5.jpg"
    # at the inbox root {folder} is empty, and the separator beside it goes with it
    assert name_in(channel, "shoe.jpg") == "shoe_4x5.jpg"
    assert name_in(channel, "shoe.jpg", ratio=None) == "shoe.jpg"
    tail = ChannelConfig(name="web", path=None, format="png", filename="{stem}-{folder}.{ext}")
    assert name_in(tail, "a/b/shoe.jpg") == "shoe-a-b.png" and name_in(tail, "shoe.jpg") == "shoe.png"


def test_web_safe_names_are_lower_case_ascii_slugs():
    channel = ChannelConfig(name="web", path=None, format="jpeg", filename="{folder}_{stem}_{ratio}.{ext}",
                            web_safe_names=True)
    assert name_in(channel, "Été 2026/Café #1 & Co?.jpg") == "ete-2026_cafe-1-co_4x5.jpg"
    assert name_in(channel, "Straße 100%.jpg", ratio=None) == "strasse-100.jpg"
    assert name_in(channel, "北京.jpg") == "image_4x5.jpg"
    plain = ChannelConfig(name="web", path=None, format="jpeg", filename="{stem}_{ratio}.{ext}")
    assert name_in(plain, "Café #1.jpg") == "Café #1_4x5.jpg"  # default: the studio's own names, only made safe


def test_template_problems_name_the_unknown_field_and_the_known_ones():
    assert template_problem("{stem}_{folder}_{ratio}_{step}_{rule}_{channel}_{hash8}.{ext}") is None
    assert template_problem("{sku}_{ratio}.{ext}") == (
        "unknown field {sku} (known: stem, folder, ratio, variant, step, rule, channel, ext, hash8)")
    assert "unknown field {stem.upper}" in template_problem("{stem.upper}.{ext}")
    assert "unknown field {}" in template_problem("{}.{ext}")
    assert "Unknown format code" in template_problem("{stem:d}.{ext}")
    assert "unexpected '{' in field name" in template_problem("{stem.{ext}")
