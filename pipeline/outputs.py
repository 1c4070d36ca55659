"""Where outputs land: channel rendering, safe file names, atomic writes, per-job manifests.

A name built from a hostile input name ("../../etc/x", newlines, control characters) can never
leave the channel folder: the stem is sanitised and the final path is checked to lie inside it.
Every write goes to a hidden temporary name in the same folder (``.<name>.….assetd-tmp``), is fsynced,
then renamed over the target, so a crash or a stop never leaves a half-written file under the real name.
A job's files are published together: all written to temporary files first, then all renamed, the manifest
last; a job whose outputs cannot all be written publishes none. Start-up removes the temporary files a dead
assetd left (``remove_temp_files``), and the files a job failed for good had published are withdrawn
(``Publisher.withdraw_failed``).

A channel with ``publish: on_approval`` gets the same files in its staging folder (``Config.staging_folder``),
under the names they will have in the channel folder; their rows claim the channel path meanwhile, and
``pipeline.approval`` publishes them there once approved.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import socket
import string
import tempfile
import time
import unicodedata
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, Iterable

import numpy as np

from . import faults
from .errors import PermanentError
from .imageio import Decoded, encode
from .pixels import flatten, resize
from .sizes import fit_problem, output_size
from .stages.base import Asset
from .stages.masks import sidecar_path
from .store import PENDING_APPROVAL, Job, ManifestRecord, OutputRecord, Store
from .text import plural, printable

if TYPE_CHECKING:
    from .config import ChannelConfig, Config
    from .rules import Rule

log = logging.getLogger("assetd.worker")  # its lines are the worker's: "worker-1: job 12 ..."

_UNSAFE = re.compile(r"[\x00-\x1f\x7f/\\:*?\"<>|]+")
FIELDS = ("stem", "folder", "ratio", "variant", "step", "rule", "channel", "ext", "hash8")
MANIFEST_SUFFIX = ".assetd.json"
NAME_TAKEN = "outputs: "  # how a review reason saying an output's name was another input's file begins
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
    """Fill a filename template. An empty ``{ratio}``, ``{folder}`` or ``{variant}`` vanishes with one separator
    beside it."""
    filled = template
    for key in ("ratio", "folder", "variant"):
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


def has_field(template: str, field: str) -> bool:
    """Whether a filename template uses ``{field}`` (a template ``template_problem`` refuses uses none)."""
    try:
        return any(f == field for _, f, _, _ in string.Formatter().parse(template))
    except ValueError:
        return False


def with_variant(template: str) -> str:
    """The template an output of a variant is named by: ``template`` itself when it has ``{variant}``, else with
    ``_{variant}`` before its extension (``{stem}_{ratio}.{ext}`` → ``{stem}_{ratio}_{variant}.{ext}``), so the
    variants of one input never share a name."""
    if has_field(template, "variant"):
        return template
    base, dot, ext = template.rpartition(".")
    if dot and base and "}" not in ext.replace("{ext}", ""):
        return f"{base}_{{variant}}.{ext}"
    return template + "_{variant}"


def output_name(channel: ChannelConfig, *, stem: str, rel_path: str | None, ratio: str | None, step: str,
                rule: str, hash8: str, variant: str | None = None) -> str:
    """The file name of one output in ``channel``: its template filled (``rel_path``, the input's path
    relative to its inbox, gives ``{folder}``; an output of a variant, ``variant``, is named by ``with_variant``),
    then made an ASCII slug when ``web_safe_names`` is set."""
    folder = folder_label(rel_path)
    label = ratio_label(ratio)
    if channel.web_safe_names:
        stem, folder, label = web_safe(stem) or "image", web_safe(folder), web_safe(label or "")
        variant = (web_safe(variant) or "variant") if variant else variant
    template = with_variant(channel.filename) if variant else channel.filename
    name = render_name(template, stem=stem, folder=folder, ratio=label, variant=variant, step=step, rule=rule,
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


class OutputSizeError(PermanentError):
    """An image is smaller than its channel needs (``size``, ``min_long_edge``): it is not written."""


class OutputsNotWritten(OutputSizeError):
    """Some of a job's outputs are smaller than their channel needs: none of the job's outputs is published."""


def render_for_channel(asset: Asset, channel: ChannelConfig) -> np.ndarray:
    """The pixels a channel gets: fitted to its exact ``size`` (a shrink, or a pixel of rounding) or shrunk to
    its ``long_edge``, never enlarged (that is the upscale step's job; ``OutputSizeError`` when the image is
    smaller than the channel needs); flattened if needed."""
    problem = fit_problem(asset.width, asset.height, channel, asset.ratio)
    if problem:
        raise OutputSizeError(f"channel {channel.name}: {problem}")
    pixels = resize(asset.pixels, output_size(asset.width, asset.height, channel, asset.ratio))
    if pixels.shape[2] == 4 and (channel.format == "jpeg" or channel.background):
        pixels = flatten(pixels, channel.background or "#ffffff")
    return pixels


TEMP_SUFFIX = ".assetd-tmp"  # assetd's own temporary files: ".<name>.<random>.<host>-<pid>.assetd-tmp"
_HOST_TAG = re.sub(r"[^A-Za-z0-9_-]+", "_", socket.gethostname())[:32] or "host"


def write_temp(path: Path, data: bytes) -> Path:
    """``data`` in a new temporary file of assetd's own pattern beside ``path``, fsynced, mode 0644 (the rename
    that publishes it comes later). Its name says which process wrote it, so start-up cleanup never takes the
    temporary file of a process still at work."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".{_HOST_TAG}-{os.getpid()}{TEMP_SUFFIX}",
                               dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
    except BaseException as exc:
        _unlink(Path(tmp))
        if isinstance(exc, OSError) and not exc.filename:  # a failed write names no file: say which output
            exc.filename = str(path)
        raise
    return Path(tmp)


def _unlink(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _fsync_folder(folder: Path) -> None:
    try:
        dir_fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)


class FileSet:
    """Files published together: each is written to its temporary file first (``add``), then all are renamed
    to their names at once, in the order they were added (``publish``); leaving the ``with`` block removes the
    temporary files not renamed. A failure before the renames publishes nothing."""

    def __init__(self) -> None:
        self._staged: list[tuple[Path, Path]] = []

    def __enter__(self) -> "FileSet":
        return self

    def __exit__(self, *exc: object) -> None:
        self.discard()

    def add(self, path: Path, data: bytes) -> None:
        self._staged.append((write_temp(path, data), path))

    def publish(self) -> None:
        folders = []
        while self._staged:
            tmp, path = self._staged[0]
            faults.point("output-write", path)
            os.replace(tmp, path)
            self._staged.pop(0)
            if path.parent not in folders:
                folders.append(path.parent)
        for folder in folders:
            _fsync_folder(folder)

    def discard(self) -> None:
        for tmp, _ in self._staged:
            _unlink(tmp)
        self._staged.clear()


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so readers only ever see the old file or the complete new one."""
    with FileSet() as files:
        files.add(path, data)
        files.publish()


def temp_owner_gone(name: str) -> bool:
    """Whether an assetd temporary file's writer is gone: a process on this host that no longer runs (a temp
    file of another host, or an unreadable name, is left alone)."""
    tag = name[: -len(TEMP_SUFFIX)].rpartition(".")[2]
    host, _, pid = tag.rpartition("-")
    if host != _HOST_TAG or not pid.isdigit():
        return False
    if int(pid) == os.getpid():
        return True  # an earlier process with our pid (a container's pid repeats): nothing of ours is written yet
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False
    return False


def remove_temp_files(config: Config) -> dict[Path, int]:
    """Remove the temporary files an assetd that died left in the folders it writes: every channel folder (outputs
    land directly in it), every channel's staging folder, the manifests folder with its per-rule folders, and the
    review page's previews cache with its folders, and (``after: move``) every inbox's error folder with its
    sub-folders, where a failed input's ``.error.txt`` is written. Only names of assetd's own pattern whose writer is gone
    (an ``assetd serve`` at work keeps its own); nothing else is touched. Returns the count removed per folder."""
    folders = {c.path for c in config.channels.values() if c.path is not None}
    folders.update(config.staging_folder(c) for c in config.channels.values())
    for parent in (config.manifest_folder, config.previews_folder):
        folders.add(parent)
        with contextlib.suppress(OSError):
            folders.update(p for p in parent.iterdir() if p.is_dir() and not p.is_symlink())
    for inbox in config.inboxes:  # the error folders, where a failed input's .error.txt is written
        if inbox.after == "move":
            for top, _, _ in os.walk(inbox.error):  # not following symlinks; small: failed inputs only
                folders.add(Path(top))
    removed: dict[Path, int] = {}
    for folder in sorted(folders):
        try:
            entries = list(os.scandir(folder))
        except OSError:
            continue
        for entry in entries:
            if (entry.name.startswith(".") and entry.name.endswith(TEMP_SUFFIX)
                    and entry.is_file(follow_symlinks=False) and temp_owner_gone(entry.name)):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)
                    removed[folder] = removed.get(folder, 0) + 1
    return removed


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def one_line(text: str) -> str:
    """Errors and review reasons are stored and notified as one line."""
    return " ".join(str(text).split())


def review_reasons(assets: Iterable[Asset]) -> list[str]:
    """The review reasons of the written assets, one line each, each once, in order of first appearance."""
    reasons = (one_line(r) for asset in assets for r in asset.review)
    return list(dict.fromkeys(r for r in reasons if r))

@dataclass
class Rendered:
    """One output encoded for its channel, before it has a name or a place (``render_outputs``): plain data, so
    that it can come back from a Ray actor (``pipeline.scaleout``) to the process that writes the outputs."""

    channel: str
    step: str  # the rule output's source step
    ratio: str | None
    variant: str | None
    width: int
    height: int
    scale: float  # resampling of the input's pixels, the channel's shrink included
    data: bytes  # the encoded file
    notes: dict[str, Any]  # the asset's step notes, for the manifest
    review: list[str]  # the asset's review reasons, one line each


def render_outputs(config: Config, rule: Rule, results: dict[str, list[Asset]], decoded: Decoded,
                   pool: Executor | None = None) -> list[Rendered]:
    """A rule's outputs from the chain's results, rendered for their channels (shrink, flatten) and encoded, in
    the rule's order; touches no store and no folder. Raises ``OutputsNotWritten`` naming every output smaller
    than its channel needs (then nothing is encoded). ``pool``: encode there, in parallel."""
    work = []
    too_small: list[str] = []  # outputs smaller than their channel needs, and why
    for spec in rule.outputs:
        channel = config.channels[spec.channel]
        for asset in results.get(spec.source, []):
            if spec.ratios is not None and asset.ratio not in spec.ratios:
                continue
            problem = fit_problem(asset.width, asset.height, channel, asset.ratio)
            if problem:
                too_small.append(_not_fitted(rule, spec.source, asset, channel, problem))
                continue
            work.append((spec, channel, asset))
    if too_small:
        total = len(too_small) + len(work)
        raise OutputsNotWritten(f"{'; '.join(too_small)}; none of its {plural(total, 'output')} "
                                f"{'was' if total == 1 else 'were'} published")

    def render(spec: Any, channel: ChannelConfig, asset: Asset) -> Rendered:
        pixels = render_for_channel(asset, channel)
        height, width = pixels.shape[:2]
        return Rendered(channel=channel.name, step=spec.source, ratio=asset.ratio, variant=asset.variant,
                        width=int(width), height=int(height), scale=round(asset.scale * width / asset.width, 4),
                        data=encode(pixels, channel, decoded), notes=asset.notes,
                        review=[r for r in (one_line(r) for r in asset.review) if r])

    if pool is None:
        return [render(*item) for item in work]
    futures = [pool.submit(render, *item) for item in work]
    try:
        return [future.result() for future in futures]
    finally:
        for future in futures:
            future.cancel()


class Publisher:
    """The one output entry point: select a rule's outputs from the chain's results → render for the channel
    (shrink, flatten) → encode → name (the channel's template; a clash gets the input's short hash) →
    reserve the path in the store → its temporary file; then every output renamed, the job's manifest last
    (``FileSet``). An output of a ``publish: on_approval`` channel is written under the same name into the
    channel's staging folder instead (its row: ``approval`` pending, ``staged_path``). ``copy_from`` writes a
    finished twin's outputs under another input's names the same way. ``withdraw_failed`` removes what a job
    failed for good had published (or staged)."""

    def __init__(self, name: str, config: Config, store: Store, pool: Executor):
        self.name = name  # the worker's, for log lines
        self.config = config
        self.store = store
        self._pool = pool  # encodes run here, beside the chain of the next job

    def _output_name(self, job: Job, rule: Rule, channel: Any, step: str, ratio: str | None,
                     variant: str | None) -> str:
        return output_name(channel, stem=safe_stem(Path(job.input_path).stem), rel_path=job.rel_path, ratio=ratio,
                           step=step, rule=rule.name, hash8=job.short_hash, variant=variant)

    def _place(self, job: Job, rule: Rule, channel: Any, step: str, ratio: str | None, variant: str | None,
               data: bytes, used: set[Path], placed: dict[Path, list[tuple[str, Path]]], files: FileSet,
               review: list[str]) -> tuple[Path, Path | None]:
        """Stage one output: named from the channel's template, reserved in the store with its hash, written
        to its temporary file (``files`` publishes it with the others). Returns its channel path and, for a
        channel publishing on approval, the staged file it is written to instead (else None). A name taken by
        another input's file adds a line to ``review`` naming both (``_free_path``)."""
        name = self._output_name(job, rule, channel, step, ratio, variant)
        target = self._free_path(channel.path, name, job, used, review, channel.name)
        folder, staged = channel.path, None
        if channel.publish == "on_approval":
            folder = self.config.staging_folder(channel)
            staged = inside(folder, target.name)
        self.store.reserve_output(job.id, str(target), channel.name, step, sha256(data), len(data),
                                  staged_path=str(staged) if staged else None, variant=variant)
        written = staged or target
        files.add(written, data)
        used.update((target, written))
        placed.setdefault(folder, []).append((name, written))
        return target, staged

    def copy_from(self, job: Job, rule: Rule, twin: Job
                        ) -> tuple[list[OutputRecord], list[ManifestRecord], list[str], int] | None:
        """Write the done twin's outputs under this job's names; None (run the chain) when they are not all
        there as recorded (deleted, edited, or replaced by a later job)."""
        sources = self.store.outputs(twin.id)
        found: list[tuple[OutputRecord, bytes]] = []
        for record in sources:
            try:  # an output not published yet is read where it waits
                data = Path(record.staged_path or record.path).read_bytes() if record.replaced_by is None else b""
            except FileNotFoundError:
                data = b""
            if sha256(data) != record.sha256 or record.channel not in self.config.channels:
                log.info("%s: job %d: the outputs of job %d (same content) are not all there as recorded; "
                         "running the chain", self.name, job.id, twin.id)
                return None
            found.append((record, data))
        if not found:
            return None
        twin_notes = self._manifest_notes(twin)
        records: list[OutputRecord] = []
        notes: list[dict[str, Any]] = []
        used: set[Path] = set()
        placed: dict[Path, list[tuple[str, Path]]] = {}
        review = [r for r in twin.review if not r.startswith(NAME_TAKEN)]  # the twin's names are not this job's
        with FileSet() as files:  # the outputs, then the manifest: renamed in that order
            for record, data in found:
                channel = self.config.channels[record.channel]
                target, staged = self._place(job, rule, channel, record.step, record.ratio, record.variant, data,
                                             used, placed, files, review)
                records.append(OutputRecord(**dict(record.as_written(), path=str(target), replaced_by=None,
                                                   **_approval_fields(staged))))
                notes.append(twin_notes.get(record.path, {}))
            manifests = self._stage_manifests(job, rule, records, notes, review, used, placed, files,
                                              copied_from=twin)
            files.publish()
        return records, manifests, review, twin.id

    def _manifest_notes(self, job: Job) -> dict[str, dict[str, Any]]:
        """Each output's step notes from a job's manifest (by output path); empty when it cannot be read."""
        for record in self.store.manifests(job.id):
            try:
                doc = json.loads(Path(record.path).read_text(encoding="utf-8"))
                return {o["path"]: o.get("steps", {}) for o in doc.get("outputs", [])}
            except (OSError, ValueError, KeyError, TypeError, AttributeError):
                continue
        return {}

    def publish(self, job: Job, rule: Rule, results: dict[str, list[Asset]],
                decoded: Any) -> tuple[list[OutputRecord], list[ManifestRecord], list[str]]:
        """Write the job's outputs and manifests together; returns (outputs, manifests, review reasons).

        Every output is encoded first (``render_outputs``, on the codec pool), then written to its temporary file,
        then all are renamed, the manifests last: a job fails with nothing published when any output cannot be
        written (``OutputsNotWritten`` naming those smaller than their channel needs, or the error of an encode
        or a write)."""
        started = time.perf_counter()
        rendered = render_outputs(self.config, rule, results, decoded, self._pool)
        return self.write(job, rule, rendered, time.perf_counter() - started)

    def write(self, job: Job, rule: Rule, rendered: list[Rendered], encode_seconds: float = 0.0
              ) -> tuple[list[OutputRecord], list[ManifestRecord], list[str]]:
        """Place encoded outputs (``render_outputs``, here or on a Ray actor) and the job's manifests: named,
        reserved in the store, written to temporary files, then all renamed (``FileSet``); returns (outputs,
        manifests, review reasons). ``encode_seconds``: the time their encoding took, recorded with the writing
        as the job's "outputs" step."""
        records: list[OutputRecord] = []
        used: set[Path] = set()
        placed: dict[Path, list[tuple[str, Path]]] = {}
        started = time.perf_counter()
        notes: list[dict[str, Any]] = []
        review = list(dict.fromkeys(r for out in rendered for r in out.review))
        with FileSet() as files:  # the outputs, then the manifests: renamed in that order
            for out in rendered:
                channel = self.config.channels[out.channel]
                target, staged = self._place(job, rule, channel, out.step, out.ratio, out.variant, out.data,
                                             used, placed, files, review)
                records.append(OutputRecord(
                    channel=channel.name, path=str(target), step=out.step, ratio=out.ratio, width=out.width,
                    height=out.height, bytes=len(out.data), sha256=sha256(out.data), scale=out.scale,
                    variant=out.variant, **_approval_fields(staged)))
                notes.append(out.notes)
            manifests = self._stage_manifests(job, rule, records, notes, review, used, placed, files)
            files.publish()
        self.store.record_step(job.id, job.attempts, "outputs", "encode",
                               encode_seconds + time.perf_counter() - started)
        return records, manifests, review

    def withdraw_failed(self) -> int:
        """Remove the files that jobs failed for good had published or staged for approval (a crash between the
        renames of a job's outputs, or a failure after them): only a file whose content is still what that job
        wrote there and that no later job has claimed. Each job's error says how many were removed. Returns that
        number."""
        total = 0
        for job, written in self.store.to_withdraw():
            removed = []
            for record in written:
                path = Path(record.path)
                owner = self.store.output_owner(record.path)
                if record.sha256 is None or owner is None or owner["job_id"] != job.id:
                    continue
                try:
                    if sha256(path.read_bytes()) != record.sha256:
                        continue
                    path.unlink()
                except OSError:  # gone, or not readable as that job's file: left alone
                    continue
                removed.append(record.path)
            note = f"removed the {plural(len(removed), 'file')} it had published"
            if self.store.withdrawn(job.id, removed, note) and removed:
                total += len(removed)
                log.warning("%s: job %d failed for good: %s (%s)", self.name, job.id, note,
                            ", ".join(printable(p) for p in removed))
        return total

    def _stage_manifests(self, job: Job, rule: Rule, records: list[OutputRecord], notes: list[dict[str, Any]],
                         review: list[str], used: set[Path], placed: dict[Path, list[tuple[str, Path]]],
                         files: FileSet, copied_from: Job | None = None) -> list[ManifestRecord]:
        """The job's manifest in ``manifests.folder``/<rule>/, and with ``manifests.beside_outputs`` in each
        channel folder it wrote to (a staging folder for outputs waiting for approval), named like the outputs
        there (a clash suffix included); staged in ``files``. It lists each output's approval and staged path."""
        stem = safe_stem(Path(job.input_path).stem)
        manifest: dict[str, Any] = {
            "input": job.input_path, "input_sha256": job.input_hash, "rule": rule.name,
            "rule_version": rule.version, "job": job.id, "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "outputs": [dict(r.as_written(), steps=n) for r, n in zip(records, notes)],
            "review": review,
        }
        if job.masks:  # the masks beside the shot are part of what the job was
            manifest["input_masks"] = _masks_used(self.store, job)
        if copied_from is not None:
            manifest["copied_from"] = {"job": copied_from.id, "input": copied_from.input_path}
        if job.rerun_of is not None:  # assetd rerun: which job it redoes, and its one-off step options
            manifest["rerun_of"] = job.rerun_of
            manifest["overrides"] = job.overrides
        body = (json.dumps(manifest, indent=2, sort_keys=True, default=str) + "\n").encode()
        names = [(self.config.manifest_folder / rule.name, stem)]
        if self.config.manifests.beside_outputs:
            slug = {folder for c in self.config.channels.values() if c.web_safe_names
                    for folder in (c.path, self.config.staging_folder(c))}
            names += [(folder, (web_safe(stem) or "image" if folder in slug else stem) + _clash_suffix(written))
                      for folder, written in sorted(placed.items())]
        manifests: list[ManifestRecord] = []
        for folder, name in names:
            target = self._free_path(folder, name + MANIFEST_SUFFIX, job, used)
            self.store.reserve_manifest(job.id, str(target), sha256(body), len(body))
            files.add(target, body)
            used.add(target)
            manifests.append(ManifestRecord(path=str(target), bytes=len(body), sha256=sha256(body)))
        return manifests

    def _free_path(self, folder: Path, name: str, job: Job, used: set[Path], review: list[str] | None = None,
                   channel: str = "") -> Path:
        """The output path. The same file's earlier outputs are replaced (its path in the inbox: a re-run, under
        a new rule version or another rule, the file dropped there again). A file of another input path (under
        any rule, even one with the same content: its masks or rule may differ), or one assetd did not write,
        is never overwritten: the name gets the input's short hash instead, and for an output (``review`` given)
        a review reason names the file kept and the name taken instead."""
        target = inside(folder, name)
        if name.endswith(MANIFEST_SUFFIX):
            stem, dot, ext = name[: -len(MANIFEST_SUFFIX)], ".", MANIFEST_SUFFIX[1:]
        else:
            stem, dot, ext = name.rpartition(".")
        short = job.short_hash
        n = 1
        kept: dict[str, Any] | None = None  # who holds the wanted name: its owner, or {} for a stranger's file
        while True:
            if target not in used:
                owner = self.store.output_owner(str(target))
                if owner is not None and owner["input_path"] == job.input_path:
                    break
                if owner is None and not target.exists():
                    break
                if n == 1:
                    kept = owner or {}
            n += 1
            target = inside(folder, f"{stem}-{short}{dot}{ext}" if n == 2 else f"{stem}-{short}-{n - 1}{dot}{ext}")
        if kept is not None and review is not None:
            self._name_taken(channel, inside(folder, name), kept, target, review)
        return target

    @staticmethod
    def _name_taken(channel: str, wanted: Path, kept: dict[str, Any], target: Path, review: list[str]) -> None:
        """Say that an output went to ``target`` because ``wanted`` holds another input's file (``kept``: its
        owner, ``output_owner``; empty: a file assetd did not write): a review reason on the job naming both (the
        worker logs it as a warning with the job's input). The studio finds two files where the template makes
        one name, and decides which is meant."""
        if kept:
            whose = (f"job {kept['job_id']}'s output ({printable(kept['rel_path'] or kept['input_path'])}, "
                     f"rule {kept['rule']})")
        else:
            whose = "a file assetd did not write"
        review.append(f"{NAME_TAKEN}channel {channel}: {printable(wanted.name)} is {whose}, left as it is; this "
                      f"job's is {printable(target.name)}")


def _approval_fields(staged: Path | None) -> dict[str, Any]:
    """An output record's approval and staged path: waiting in ``staged``, or (None) published at once."""
    return {"approval": PENDING_APPROVAL, "staged_path": str(staged)} if staged else {"approval": None,
                                                                                      "staged_path": None}


def _not_fitted(rule: Rule, step: str, asset: Asset, channel: Any, problem: str) -> str:
    """Why an output cannot be written, in one line: the channel, the ratio, what it needs, what the image has
    and why nothing enlarged it."""
    capped = asset.notes.get("upscale", {}).get("capped")
    if capped:
        why = f"upscale capped at max_factor {capped['max_factor']}"
    elif rule.step("upscale") is None:
        why = f"rule {rule.name} has no upscale step to enlarge it"
    else:
        why = f"after {step}"
    ratio = f" {asset.ratio}" if asset.ratio else ""
    return f"channel {channel.name}{ratio}: {problem} ({why})"


def _masks_used(store: Store, job: Job) -> list[dict[str, str]]:
    """The manifest's ``input_masks``: kind, file name and sha256 of each mask beside ``job``'s input that it ran
    with (``jobs.masks`` is their digest; the worker checked it before the chain ran)."""
    from .intake import mask_hashes  # intake imports rules, which import this module

    source = Path(job.input_path)
    return [{"kind": kind, "file": sidecar_path(source, kind).name, "sha256": digest}
            for kind, digest in mask_hashes(store, source).items()]


def _clash_suffix(written: list[tuple[str, Path]]) -> str:
    """The suffix ``_free_path`` added to the outputs of one folder (``-1a2b3c4d``), or ""."""
    for name, target in written:
        wanted, got = name.rsplit(".", 1)[0], target.name.rsplit(".", 1)[0]
        if got != wanted and got.startswith(wanted):
            return got[len(wanted):]
    return ""
