"""The ignore rules: which names an inbox never hands over (pure, no files needed)."""
from __future__ import annotations

from pathlib import Path

import pytest

import pipeline.watcher
from pipeline.ignore import is_ignored

ROOT = Path("/srv/inbox")


@pytest.mark.parametrize("name", [
    ".hidden.jpg", ".DS_Store", "._shot.jpg", ".~lock.sheet.ods#", "~$report.docx", "shot.jpg~",
    "shot.tmp", "shot.TMP", "shot.jpg.part", "shot.jpg.partial", "shot.jpg.crdownload", "Thumbs.db",
    "THUMBS.DB", "desktop.ini",
])
def test_is_ignored_temp_and_system_names(name: str) -> None:
    assert is_ignored(Path(name))
    assert is_ignored(ROOT / "client" / name)
    assert is_ignored(ROOT / "client" / name, ROOT)


@pytest.mark.parametrize("rel", [
    ".git/config", ".sync/shot.jpg", "@eaDir/shot.jpg/SYNOFILE_THUMB_XL.jpg", "$RECYCLE.BIN/shot.jpg",
    "a/b/.cache/shot.jpg", "#recycle/shot.jpg",
])
def test_is_ignored_files_inside_ignored_folders(rel: str) -> None:
    assert is_ignored(ROOT / rel, ROOT)


@pytest.mark.parametrize("rel", [
    "shot.jpg", "Shot 01.CR3", "client/2024/shot.tif", "shot.tmp.jpg", "part.png", "thumbs.db.jpg",
    "my~file.png", "a.b.c.jpeg",
])
def test_is_ignored_keeps_real_files(rel: str) -> None:
    assert not is_ignored(Path(rel))
    assert not is_ignored(ROOT / rel, ROOT)


def test_is_ignored_never_looks_above_the_inbox() -> None:
    root = Path("/home/studio/.assetd/inbox")
    assert not is_ignored(root / "shot.jpg")
    assert not is_ignored(root / "shot.jpg", root)
    assert is_ignored(root / ".partial" / "shot.jpg", root)


def test_the_watcher_still_exports_is_ignored() -> None:
    assert pipeline.watcher.is_ignored is is_ignored  # cli.py and oneshot.py import it from there
