"""Shared by the benchmark scripts."""
from __future__ import annotations

import os
import platform
from pathlib import Path


def emit(text: str, markdown: Path | None) -> None:
    """Print a benchmark's Markdown and, when asked, write it where ``bench/run.py`` collects it."""
    print(text)
    if markdown:
        markdown.parent.mkdir(parents=True, exist_ok=True)
        markdown.write_text(text + "\n", encoding="utf-8")


def machine(note: str = "") -> str:
    """The CPU, cores, memory and Python of this machine, for a benchmark's header (``note`` appended)."""
    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        mem = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                   if line.startswith("MemTotal"))
        mem_text = f"{mem / 1024 / 1024:.0f} GiB RAM"
    except (OSError, StopIteration):
        mem_text = "unknown RAM"
    return f"{cpu}, {os.cpu_count()} cores, {mem_text}, Python {platform.python_version()}, {note or platform.system()}"
