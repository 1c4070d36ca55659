"""The review page's browser tests share this: Debian's chromium driven by Playwright (Playwright's own browser
download needs a CDN), and where screenshots go (test-artifacts/screens/, to look at).

A test module calls ``needs_browser()`` at import: without /usr/bin/chromium the module skips, saying why,
except under CI=true, where the browser tests must run and the missing browser fails them."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

CHROMIUM = Path(os.environ.get("ASSETD_CHROMIUM", "/usr/bin/chromium"))
SCREENS = Path(__file__).resolve().parents[1] / "test-artifacts" / "screens"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync"]


def needs_browser() -> None:
    if not CHROMIUM.exists() and os.environ.get("CI") != "true":
        pytest.skip(f"no {CHROMIUM} (install Debian's chromium, or run `make browser` as root; under CI=true "
                    "this is a failure)", allow_module_level=True)


@pytest.fixture
def browser():
    """A headless chromium; fails (not skips) when it is missing under CI=true."""
    from playwright.sync_api import sync_playwright

    assert CHROMIUM.exists(), f"CI=true: the browser tests must run, and {CHROMIUM} is missing"
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


def screenshot(page, name: str) -> Path:
    """Save the whole page as test-artifacts/screens/NAME.png (look at it)."""
    SCREENS.mkdir(parents=True, exist_ok=True)
    path = SCREENS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServedDaemon:
    """A real daemon on a test workspace serving the review page (``review.listen`` on a free loopback port), as
    ``assetd run`` does; ``url`` is the page's root without the trailing slash. Use it as a context manager."""

    def __init__(self, workspace, *, channels_extra: str = "", review_extra: str = "", settle: float = 0.3):
        self.workspace = workspace
        self.port = free_port()
        workspace.write_config(settle=settle, extra=f"review: {{listen: '127.0.0.1:{self.port}'{review_extra}}}\n")
        if channels_extra:  # more channels (e.g. one with publish: on_approval) under the workspace's own
            text = workspace.config_path.read_text()
            workspace.config_path.write_text(text.replace("channels:\n", "channels:\n" + channels_extra, 1))
        self.url = f"http://127.0.0.1:{self.port}"
        self.daemon = None

    def __enter__(self) -> "ServedDaemon":
        from pipeline.daemon import Daemon

        config, rules = self.workspace.load()
        self.daemon = Daemon(config, rules)
        self.daemon.start()
        return self

    def __exit__(self, *exc) -> None:
        self.daemon.stop()

    @property
    def store(self):
        return self.daemon.store
