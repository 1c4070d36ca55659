"""Output names can never escape their channel folder; writes are atomic; channels shrink and flatten."""
from __future__ import annotations

import os

import numpy as np
import pytest

from pipeline.config import ChannelConfig
from pipeline.outputs import (OutputPathError, atomic_write, inside, render_for_channel, render_name, safe_stem)
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
