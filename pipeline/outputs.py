"""Where outputs land: channel rendering, safe file names, atomic writes, per-job manifests.

A name built from a hostile input name ("../../etc/x", newlines, control characters) can never
leave the channel folder: the stem is sanitised and the final path is checked to lie inside it.
Every write goes to a hidden temporary name in the same folder, is fsynced, then renamed over
the target, so a crash or a stop never leaves a half-written file under the real name.
"""
from __future__ import annotations

import hashlib
import os
import re
import tempfile
import unicodedata
from pathlib import Path
from typing import Any

import numpy as np

from .config import ChannelConfig
from .pixels import fit_long_edge, flatten, resize
from .stages.base import Asset

_UNSAFE = re.compile(r"[\x00-\x1f\x7f/\\:*?\"<>|]+")
_FIELDS = ("stem", "ratio", "step", "rule", "channel", "ext", "hash8")
MANIFEST_SUFFIX = ".assetd.json"


class OutputPathError(ValueError):
    """A template produced a name that is empty or would leave the channel folder."""


def safe_stem(name: str, limit: int = 120) -> str:
    """A file-name-safe version of an input's stem: no separators, control characters or leading dots."""
    text = unicodedata.normalize("NFC", name)
    text = _UNSAFE.sub("_", text)
    text = re.sub(r"_+", "_", text.replace("..", "_")).strip(" ._")
    if len(text.encode("utf-8")) > limit:
        text = text.encode("utf-8")[:limit].decode("utf-8", "ignore").rstrip(" ._")
    return text or "image"


def render_name(template: str, **fields: Any) -> str:
    """Fill a channel's filename template. With no ratio, ``{ratio}`` and one separator before it vanish."""
    if fields.get("ratio") is None:
        template = re.sub(r"[-_. ]?\{ratio\}", "", template)
    values = {k: safe_stem(str(v)) if k != "ext" else str(v) for k, v in fields.items() if v is not None}
    try:
        name = template.format(**values)
    except (KeyError, IndexError, ValueError) as exc:
        raise OutputPathError(f"filename template {template!r}: unknown field {exc} (known: {', '.join(_FIELDS)})")
    if not name or name.startswith(".") or "/" in name or "\\" in name or name in (".", ".."):
        raise OutputPathError(f"filename template {template!r} gave an unusable name {name!r}")
    return name


def inside(folder: Path, name: str) -> Path:
    """``folder / name``, guaranteed to stay inside ``folder``."""
    root = folder.resolve()
    target = (root / name).resolve()
    if target.parent != root:
        raise OutputPathError(f"output name {name!r} would leave the channel folder {root}")
    return target


def ratio_label(ratio: str | None) -> str | None:
    return ratio.replace(":", "x") if ratio else None


def render_for_channel(asset: Asset, channel: ChannelConfig) -> np.ndarray:
    """The pixels a channel gets: shrunk to its long edge (never enlarged), flattened if needed."""
    pixels = asset.pixels
    if channel.long_edge and max(asset.width, asset.height) > channel.long_edge:
        pixels = resize(pixels, fit_long_edge(asset.width, asset.height, channel.long_edge))
    if pixels.shape[2] == 4 and (channel.format == "jpeg" or channel.background):
        pixels = flatten(pixels, channel.background or "#ffffff")
    return pixels


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so readers only ever see the old file or the complete new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    try:
        dir_fd = os.open(path.parent, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
