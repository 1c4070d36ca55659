"""Shared by the benchmark scripts."""
from __future__ import annotations

from pathlib import Path


def emit(text: str, markdown: Path | None) -> None:
    """Print a benchmark's Markdown and, when asked, write it where ``bench/run.py`` collects it."""
    print(text)
    if markdown:
        markdown.parent.mkdir(parents=True, exist_ok=True)
        markdown.write_text(text + "\n", encoding="utf-8")
