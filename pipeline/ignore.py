"""Which names in an inbox are never taken: temporary, hidden and system files and folders.

Pure name rules, no I/O. The watcher applies them to events and scans; ``assetd process`` and
``assetd explain`` apply the same rules (through ``pipeline.watcher.is_ignored``).
"""
from __future__ import annotations

from pathlib import Path, PurePath

__all__ = ["is_ignored", "is_ignored_name", "is_sidecar_mask"]

_IGNORED_SUFFIXES = (".tmp", ".part", ".partial", ".crdownload")
# Masks a retoucher puts beside a shot for its steps (``NAME.recolor.png``...: ``pipeline.stages.masks``): read by
# the step, never taken as inputs of their own.
SIDECAR_MASKS = ("recolor", "protect", "remove")
_SIDECAR_SUFFIXES = tuple(f".{kind}.png" for kind in SIDECAR_MASKS)
# Windows shell files, and NAS housekeeping folders (Synology thumbnails and recycle bins, Windows bins).
_IGNORED_NAMES = frozenset({"thumbs.db", "desktop.ini", "@eadir", "#recycle", "$recycle.bin",
                            "system volume information"})


def is_ignored_name(name: str) -> bool:
    """True when one file or folder name (not a path) is ignored."""
    lower = name.lower()
    return (
        lower.startswith(".")  # dotfiles, .DS_Store, ._AppleDouble, .~lock.* (LibreOffice)
        or lower.startswith("~$")  # Office owner files
        or lower.endswith("~")  # editor backups
        or lower.endswith(_IGNORED_SUFFIXES)  # downloads and copies in progress
        or lower.endswith(_SIDECAR_SUFFIXES)  # a step's mask beside its shot (NAME.remove.png)
        or lower in _IGNORED_NAMES
    )


def is_sidecar_mask(path: Path, root: Path | None = None) -> bool:
    """True for a step's mask beside a shot (``shot.remove.png``) in a folder that is not ignored: never taken as an
    input, but watched: when it changes, its shot is offered to the intake again (the masks are part of what the
    shot's job is; ``pipeline.stages.masks.shots_of``)."""
    path = PurePath(path)
    parts = path.relative_to(root).parts if root is not None else (path.name,)
    name = parts[-1].lower() if parts else ""
    return name.endswith(_SIDECAR_SUFFIXES) and not name.startswith(".") and not any(map(is_ignored_name, parts[:-1]))


def is_ignored(path: Path, root: Path | None = None) -> bool:
    """True for temporary, hidden and system files that must never be taken from an inbox.

    Without ``root`` only the name of ``path`` is checked, so absolute paths are safe to pass (a
    ``~/.assetd/inbox`` does not hide everything in it). With ``root`` (the inbox), every component
    of ``path`` below it is checked too, so a file inside a dot-folder is ignored. Ignored, case-
    insensitively: names starting with '.' (dotfiles, dot-folders, ``.DS_Store``, ``._*``,
    ``.~lock*``), ``~$*``, names ending in '~', ``*.tmp``, ``*.part``, ``*.partial``,
    ``*.crdownload``, ``Thumbs.db``, ``desktop.ini`` and the NAS/Windows housekeeping folders
    ``@eaDir``, ``#recycle``, ``$RECYCLE.BIN`` and ``System Volume Information``, and the masks a step reads
    beside a shot (``*.recolor.png``, ``*.protect.png``, ``*.remove.png``).
    """
    path = PurePath(path)
    if root is None:
        return is_ignored_name(path.name)
    return any(is_ignored_name(part) for part in path.relative_to(root).parts)
