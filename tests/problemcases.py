"""Test helper: a workspace set up for problem processes (tests/test_health.py, tests/test_inbox_away.py): only the
rules given, quick checks and immediate alerts."""
from __future__ import annotations

import time

from pipeline.store import Store

PLAIN = "lanczos, factor: 1.0"  # a step that keeps the image as it is (a rule needs one)


def rule(name: str, backend: str, channel: str, folder: str = "**") -> str:
    """A rule of one upscale step (``backend``'s options after it) writing to ``channel``, for files under ``folder``."""
    return (f"name: {name}\nmatch: {{folder: '{folder}'}}\nsteps: [{{upscale: {{backend: {backend}}}}}]\n"
            f"outputs: [{{channel: {channel}, from: upscale}}]\n")


def setup(workspace, rules: dict[str, str], problems: str = "", urls=None, extra: str = ""):
    """The workspace with only ``rules``, and a ``problems:`` section with quick checks and immediate alerts
    (``extra``: more of the config). Returns (config, rules, an open Store)."""
    for f in (workspace.root / "rules").iterdir():
        f.unlink()
    for name, text in rules.items():
        workspace.add_rule(f"{name}.yaml", text)
    settings = {"check_seconds": "0.1", "alert_after_seconds": "0", "min_free": "0"}
    settings.update(item.split(": ", 1) for item in problems.split(", ") if item)  # a key given once (YAML)
    workspace.write_config(urls=urls, extra="problems: {" + ", ".join(f"{k}: {v}" for k, v in settings.items())
                                            + "}\n" + extra)
    config, loaded = workspace.load()
    return config, loaded, Store(config.database)


def wait_for(condition, timeout: float = 10.0) -> None:
    """Poll ``condition`` until it holds; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)
