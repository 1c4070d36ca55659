"""Test helper: an inbox that empties itself (``after: move``) and what its folders hold (tests/test_inboxflow_e2e.py,
tests/test_arrivals_e2e.py)."""
from __future__ import annotations

from pathlib import Path

from conftest import Workspace


def moving(workspace: Workspace) -> None:
    """The workspace's inbox with ``after: move``."""
    text = workspace.config_path.read_text().replace("  - path: inbox\n", "  - path: inbox\n    after: move\n")
    workspace.config_path.write_text(text)


def files_under(folder: Path) -> list[str]:
    """The files under ``folder``, relative to it, sorted."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
