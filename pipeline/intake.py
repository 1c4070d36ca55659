"""Turning a settled file into a job: match a rule, hash the content (the image's, and the digest of the masks a
retoucher put beside it: both are what the job is), enqueue once.

Called by the watcher's settle loop (daemon), by ``assetd process`` and ``assetd reprocess``.
Nothing here decodes an image; the worker does that. A file no rule takes is remembered and logged,
never touched. With ``on_rule_change: new_files`` (the default) a file that an earlier version of its
rule already took is not redone when the rule changes; ``reprocess=True`` (``assetd reprocess``) does.
"""
from __future__ import annotations

import hashlib
import logging
import os
import stat
import threading
import time
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from .config import Config, InboxConfig
from .formats import INPUT_EXTENSIONS
from .rules import Rule, match_rule
from .stages.masks import mask_kind, masks_beside
from .store import FINISHED, UNREADABLE, Job, Store
from .text import printable

log = logging.getLogger("assetd.intake")


@dataclass
class Submitted:
    path: Path
    rule: Rule | None
    job: Job | None = None
    created: bool = False
    reason: str | None = None  # why no job was made, or why the job already existed
    earlier: Job | None = None  # no job: the rule took this file under an earlier version (on_rule_change)


def file_hash(path: Path) -> str:
    """SHA-256 of the file's content, read in chunks (never following a symlink)."""
    h = hashlib.sha256()
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    with os.fdopen(fd, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def content_hash(store: Store, path: Path, st: os.stat_result) -> str:
    """The input_hash of the file at ``path`` (``st``: its ``lstat``): its content's SHA-256, remembered by path,
    size and mtime so an unchanged file is read once; for a file that cannot be read (a link, a device, no
    permission) a token, so it is still a job whose failure is recorded. FileNotFoundError when it vanished."""
    if stat.S_ISREG(st.st_mode):
        digest = store.known_hash(str(path), st.st_size, st.st_mtime_ns)
        if digest is not None:
            return digest
        try:
            digest = file_hash(path)
        except FileNotFoundError:
            raise
        except OSError:
            return unreadable_token(path, st)
        store.remember_file(str(path), st.st_size, st.st_mtime_ns, digest)
        return digest
    return unreadable_token(path, st)


def mask_hashes(store: Store, source: Path) -> dict[str, str]:
    """{kind: sha256} of the masks beside the shot at ``source`` now (``NAME.remove.png``...), read through the same
    remembered-hash cache as inputs, so an unchanged mask is not read again at every rescan. A mask that cannot be
    read counts by a token (it fails the job when a step reads it); one that vanished meanwhile is not there."""
    found = {}
    for kind, path in masks_beside(source).items():
        try:
            found[kind] = content_hash(store, path, os.lstat(path))
        except FileNotFoundError:
            continue
    return found


def mask_digest(hashes: dict[str, str]) -> str:
    """``jobs.masks``: sha256 over ``kind:sha256`` lines of the masks present, sorted by kind; '' when there are none
    (a shot without masks keeps the identity it had before masks were part of it)."""
    if not hashes:
        return ""
    return hashlib.sha256("\n".join(f"{kind}:{hashes[kind]}" for kind in sorted(hashes)).encode()).hexdigest()


def where_its_shot_went(store: Store, mask: Path) -> str | None:
    """For a mask with no shot beside it: where its shot went, as one line naming the command that redoes the shot
    with the mask ("Late.jpg was moved to hot/done/Late.jpg when job 18 ended (done); to redo it with this mask:
    assetd retry 18 ..."), or None when no shot of its name was moved out of that folder (``after: move``). A mask
    painted after its shot was done and moved would otherwise lie there unread, with no job and no word."""
    kind = mask_kind(mask)
    if kind is None:
        return None
    stem = mask.name[:-len(f".{kind}.png")]
    for move in store.moved_from(str(mask.parent / stem) + "."):
        source = Path(move.source)
        if source.stem == stem and source.suffix.lower().lstrip(".") in INPUT_EXTENSIONS:
            return (f"{printable(source.name)} was moved to {printable(move.dest)} when job {move.job_id} ended "
                    f"({move.kind}); to redo it with this mask: assetd retry {move.job_id} (it moves the shot back "
                    "beside the mask)")
    return None


def unreadable_token(path: Path, st: os.stat_result) -> str:
    """The input_hash of a file that could not be read (a link, a device, no permission): a token from its
    path, size, mtime and mode, so it is still a job whose failure is recorded."""
    token = f"{path}\0{st.st_size}\0{st.st_mtime_ns}\0{st.st_mode}".encode()
    return UNREADABLE + hashlib.sha256(token).hexdigest()


def inbox_of(config: Config, path: Path) -> InboxConfig | None:
    """The inbox a file belongs to: the innermost one holding it (as the watcher decides), or None."""
    holding = [i for i in config.inboxes if path.is_relative_to(os.path.abspath(i.path))]
    return max(holding, key=lambda i: len(Path(os.path.abspath(i.path)).parts), default=None)


def relative_path(config: Config, path: Path, root: Path | None) -> PurePosixPath:
    """The path rules match: relative to the inbox it belongs to, else to ``root`` (the folder given
    to ``process``), else the name alone. The daemon, ``process`` and ``explain`` all use this."""
    inbox = inbox_of(config, path)
    for base in ([Path(os.path.abspath(inbox.path))] if inbox is not None else []) + ([root] if root else []):
        try:
            return PurePosixPath(path.relative_to(base).as_posix())
        except ValueError:
            continue
    return PurePosixPath(path.name)


class Intake:
    def __init__(self, config: Config, rules: list[Rule], store: Store):
        self.config = config
        self.rules = rules
        self.store = store
        self._lock = threading.Lock()
        self.swap_lock = threading.Lock()  # held while a file is queued, and while a reload swaps the rules
        self._seen_again: list[tuple[Path, str, bool]] = []  # (file, why, taken under an earlier rule version)
        self._seen_at = 0.0

    def submit(self, path: Path, root: Path | None = None, rule_name: str | None = None, *,
               reprocess: bool = False) -> Submitted:
        """Enqueue ``path`` under the first matching rule (or ``rule_name``).

        Unless ``reprocess`` (or ``on_rule_change: reprocess``), a file this rule took under an earlier
        version is not queued again: a changed rule applies to new files."""
        path = Path(os.path.abspath(path))
        inbox = inbox_of(self.config, path)
        if inbox is not None and inbox.sets_aside(path):
            return Submitted(path=path, rule=None, reason=f"{printable(str(path))}: in the done or error folder of "
                                                          f"inbox {printable(str(inbox.path))} (after: move); "
                                                          "never taken")
        rel = relative_path(self.config, path, root)
        if rule_name is not None:
            rule = next((r for r in self.rules if r.name == rule_name), None)
            ext = path.suffix.lower().lstrip(".")
            if ext not in INPUT_EXTENSIONS:  # a forced rule skips matching, not the question "is it an image?"
                return Submitted(path=path, rule=None, reason=f"{printable(str(path))}: .{ext or '(no extension)'} "
                                                              "is not an image type assetd reads")
        else:
            rule = match_rule(self.rules, rel)
        if rule is None:
            reason = f"{printable(str(path))}: no rule matches {printable(str(rel))!r} (see `assetd explain`)"
            return Submitted(path=path, rule=None, reason=reason)
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return Submitted(path=path, rule=rule, reason=f"{printable(str(path))}: file disappeared before it was queued")
        except OSError as exc:
            return Submitted(path=path, rule=rule, reason=f"{printable(str(path))}: cannot stat file: {exc.strerror}")
        try:
            digest = content_hash(self.store, path, st)
        except FileNotFoundError:
            return Submitted(path=path, rule=rule, reason=f"{printable(str(path))}: file disappeared before it was queued")
        masks = mask_digest(mask_hashes(self.store, path)) if not digest.startswith(UNREADABLE) else ""
        if not reprocess and self.config.on_rule_change == "new_files":
            earlier = self.store.earlier_version_job(digest, rule.name, rule.version, str(path), masks)
            if earlier is not None:
                reason = (f"rule {rule.name!r} took it under an earlier version (job {earlier.id}, "
                          f"{earlier.status.value}); a changed rule applies to new files "
                          f"(redo with: assetd reprocess --rule {rule.name})")
                return Submitted(path=path, rule=rule, reason=reason, earlier=earlier)
        job, created = self.store.enqueue(
            input_hash=digest, rule=rule.name, rule_version=rule.version, input_path=str(path),
            rel_path=str(rel), max_attempts=self.config.max_attempts, masks=masks,
        )
        reason = None if created else f"already {job.status.value} as job {job.id}"
        return Submitted(path=path, rule=rule, job=job, created=created, reason=reason)

    def on_settled(self, path: Path, inbox: InboxConfig) -> None:
        """The watcher's callback: enqueue and log. Must be quick and must not raise for bad files.

        Files seen again and not reprocessed (every file in the inboxes at each start) are logged one
        by one at debug level and summarised by ``flush_summary``. One whose job already ended for good is
        handed to its inbox's ``after`` option like the first copy was (``inboxflow.after_job``): with
        ``after: move`` the same file dropped again, or left behind while its inbox was away when its job
        ended, goes to done/ or error/ instead of staying in the inbox."""
        with self.swap_lock:
            result = self.submit(path, inbox.path)
        if result.created and result.job is not None:
            log.info("queued job %d: %s (rule %s)", result.job.id, printable(str(path)), result.rule.name if result.rule else "-")
        elif result.job is not None or result.earlier is not None:
            log.debug("not reprocessed: %s: %s", printable(str(path)), result.reason)
            with self._lock:  # a shot is offered twice at start when a mask lies beside it: counted once
                if all(seen != path for seen, _, _ in self._seen_again[-8:]):
                    self._seen_again.append((path, str(result.reason), result.earlier is not None))
                self._seen_at = time.monotonic()
            ended = result.job if result.job is not None else result.earlier
            if inbox.after == "move" and ended is not None and ended.status in FINISHED:
                from .inboxflow import after_job  # inboxflow imports this module

                after_job(self.config, self.store, ended, ended.status, ended.error)
        else:
            log.info("%s", result.reason)

    def on_mask_alone(self, mask: Path, inbox: InboxConfig) -> None:
        """The watcher's callback for a mask that settled with no shot beside it: one line, naming where its shot
        went and the command that redoes it with the mask when ``after: move`` moved it (a warning: the
        retoucher's work is unread until then), else that the mask waits for its shot."""
        kind = mask_kind(mask)
        where = where_its_shot_went(self.store, mask)
        if where is not None:
            log.warning("%s: no shot lies beside this %s mask: %s", printable(str(mask)), kind, where)
        else:
            stem = mask.name[:-len(f".{kind}.png")] if kind else mask.stem
            log.info("%s: no shot lies beside this %s mask (%s.<image>); it is read when its shot arrives",
                     printable(str(mask)), kind, printable(stem))

    def flush_summary(self, quiet_seconds: float = 2.0) -> None:
        """Log the files seen again since the last summary, once no new one came for ``quiet_seconds``:
        one line for one file, else a count."""
        with self._lock:
            if not self._seen_again or time.monotonic() - self._seen_at < quiet_seconds:
                return
            seen, self._seen_again = self._seen_again, []
        if len(seen) == 1:
            log.info("not reprocessed: %s: %s", printable(str(seen[0][0])), seen[0][1])
        else:
            earlier = sum(1 for _, _, under_earlier in seen if under_earlier)
            detail = f" ({earlier} taken under an earlier version of their rule)" if earlier else ""
            log.info("%d file(s) in the inboxes already have a job (done, failed or waiting) and are not "
                     "reprocessed%s; `assetd jobs` lists them (log_level: debug names each)", len(seen), detail)
