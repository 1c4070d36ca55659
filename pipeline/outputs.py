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
import string
import tempfile
import unicodedata
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import PermanentError
from .pixels import fit_long_edge, flatten, resize
from .stages.base import Asset

if TYPE_CHECKING:
    from .config import ChannelConfig

_UNSAFE = re.compile(r"[\x00-\x1f\x7f/\\:*?\"<>|]+")
FIELDS = ("stem", "folder", "ratio", "step", "rule", "channel", "ext", "hash8")
MANIFEST_SUFFIX = ".assetd.json"
_ASCII_EXTRA = str.maketrans({"ß": "ss", "æ": "ae", "Æ": "AE", "œ": "oe", "Œ": "OE", "ø": "o", "Ø": "O",
                              "ł": "l", "Ł": "L", "đ": "d", "Đ": "D", "þ": "th", "Þ": "TH", "ı": "i"})


class OutputPathError(PermanentError, ValueError):
    """A template produced a name that is empty or would leave the channel folder."""


def safe_stem(name: str, limit: int = 120) -> str:
    """A file-name-safe version of an input's stem: no separators, control characters or leading dots."""
    text = unicodedata.normalize("NFC", name)
    text = _UNSAFE.sub("_", text)
    text = re.sub(r"_+", "_", text.replace("..", "_")).strip(" ._")
    if len(text.encode("utf-8")) > limit:
        text = text.encode("utf-8")[:limit].decode("utf-8", "ignore").rstrip(" ._")
    return text or "image"


def folder_label(rel_path: str | None) -> str:
    """``{folder}``: the input's folder relative to its inbox, each part made safe, joined by ``-``; "" at the root."""
    parts = PurePosixPath(rel_path or "").parent.parts
    return "-".join(safe_stem(p) for p in parts if p not in ("", ".", "..", "/"))


def web_safe(text: str) -> str:
    """An ASCII slug: accents dropped (é → e, ß → ss), lower case, runs of anything but letters, digits,
    ``.``, ``_`` and ``-`` turned into one ``-``; "" when nothing is left."""
    text = unicodedata.normalize("NFKD", text.translate(_ASCII_EXTRA)).encode("ascii", "ignore").decode()
    text = re.sub(r"[^a-z0-9._-]+", "-", text.lower())
    return re.sub(r"-{2,}", "-", text).strip("-._ ")


def _drop_empty(template: str, field: str) -> str:
    """Remove ``{field}`` and one separator beside it: the one before, else the one after (not a dot)."""
    before = re.sub(r"[-_. ]\{" + field + r"\}", "", template, count=1)
    if before != template:
        return _drop_empty(before, field)
    after = re.sub(r"\{" + field + r"\}[-_ ]?", "", template, count=1)
    return template if after == template else _drop_empty(after, field)


def template_problem(template: str) -> str | None:
    """What is wrong with a channel's filename template, or None: fields are checked by name, then the
    template is filled once with sample values (a bad format spec shows up here, not in a job)."""
    try:
        names = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    except ValueError as exc:
        return str(exc)
    for name in names:
        if name not in FIELDS:
            return f"unknown field {{{name}}} (known: {', '.join(FIELDS)})"
    try:
        template.format(**{f: "x" for f in FIELDS})
    except (ValueError, TypeError) as exc:
        return str(exc)
    return None


def render_name(template: str, **fields: Any) -> str:
    """Fill a filename template. An empty ``{ratio}`` or ``{folder}`` vanishes with one separator beside it."""
    filled = template
    for key in ("ratio", "folder"):
        if not fields.get(key):
            filled = _drop_empty(filled, key)
            fields.pop(key, None)
    values = {k: safe_stem(str(v)) if k != "ext" else str(v) for k, v in fields.items() if v is not None}
    try:
        name = filled.format(**values)
    except (KeyError, IndexError, AttributeError, ValueError, TypeError) as exc:
        raise OutputPathError(f"filename template {template!r}: {template_problem(template) or exc}") from None
    if not name or name.startswith(".") or "/" in name or "\\" in name or name in (".", ".."):
        raise OutputPathError(f"filename template {template!r} gave an unusable name {name!r}")
    return name


def output_name(channel: ChannelConfig, *, stem: str, rel_path: str | None, ratio: str | None, step: str,
                rule: str, hash8: str) -> str:
    """The file name of one output in ``channel``: its template filled (``rel_path``, the input's path
    relative to its inbox, gives ``{folder}``), then made an ASCII slug when ``web_safe_names`` is set."""
    folder = folder_label(rel_path)
    label = ratio_label(ratio)
    if channel.web_safe_names:
        stem, folder, label = web_safe(stem) or "image", web_safe(folder), web_safe(label or "")
    name = render_name(channel.filename, stem=stem, folder=folder, ratio=label, step=step, rule=rule,
                       channel=channel.name, ext=channel.extension, hash8=hash8)
    if channel.web_safe_names:
        base, dot, ext = name.rpartition(".")
        name = f"{web_safe(base) or 'image'}{dot}{web_safe(ext)}" if dot else (web_safe(name) or "image")
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
