"""The watcher's on_settled callback for tests, shared by the settle tests (fake clock) and the watcher's."""
from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Callable

from pipeline.config import InboxConfig


class Recorder:
    """The on_settled callback: remembers each hand-over with the file's content at that moment."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, fail_first: int = 0):
        self.calls: list[tuple[Path, bytes, float]] = []
        self.inboxes: list[InboxConfig] = []
        self._clock = clock
        self._fail_left = fail_first
        self._lock = threading.Lock()

    def __call__(self, path: Path, inbox: InboxConfig) -> None:
        with self._lock:
            if self._fail_left:
                self._fail_left -= 1
                raise RuntimeError(f"job store unavailable for {path.name}")
            self.calls.append((path, path.read_bytes(), self._clock()))
            self.inboxes.append(inbox)

    def names(self) -> list[str]:
        with self._lock:
            return sorted(p.name for p, _, _ in self.calls)

    def count(self, name: str) -> int:
        with self._lock:
            return sum(1 for p, _, _ in self.calls if p.name == name)
