"""A real tmpfs mounted for a test (a share mounted over a folder, a small volume that fills up).

Mounting needs root (the tests run as root in CI); where ``mount`` is refused the test is skipped with the reason.
"""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest


class Tmpfs:
    """Mounts tmpfs volumes over folders and unmounts whatever is still mounted at ``close``."""

    def __init__(self) -> None:
        self.mounted: list[Path] = []

    def mount(self, folder: Path, size: str = "4m") -> None:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                              capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here (needs root): {done.stderr.strip() or done.returncode}")
        self.mounted.append(folder)

    def bind(self, source: Path, folder: Path) -> None:
        """``mount --bind``: ``source``'s files seen at ``folder`` (a share that keeps its files while unmounted)."""
        done = subprocess.run(["mount", "--bind", str(source), str(folder)], capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"cannot bind-mount here (needs root): {done.stderr.strip() or done.returncode}")
        self.mounted.append(folder)

    def unmount(self, folder: Path) -> None:
        """``umount -l``, as an admin (or a dropped network) takes a share away under a process using it."""
        subprocess.run(["umount", "-l", str(folder)], check=True, capture_output=True)
        self.mounted.remove(folder)

    def close(self) -> None:
        for folder in reversed(self.mounted):
            subprocess.run(["umount", "-l", str(folder)], capture_output=True)
        self.mounted.clear()
