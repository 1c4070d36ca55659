"""Where the review page listens, and uvicorn serving it: in a thread beside the daemon (``assetd run`` with
``review.listen``) or in the foreground (``assetd serve``)."""
from __future__ import annotations

import contextlib
import ipaddress
import logging
import signal
import threading
import time
from typing import Any

DEFAULT_LISTEN = "127.0.0.1:8765"
log = logging.getLogger("assetd.review")


def parse_listen(value: str) -> tuple[str, int]:
    """``"HOST:PORT"`` (``[::1]:8765`` for IPv6) as (host, port); ValueError saying what is wrong."""
    host, sep, port = str(value).strip().rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"expected HOST:PORT like 127.0.0.1:8765, got {value!r}")
    return host.strip("[]"), int(port)


def is_loopback(host: str) -> bool:
    """Only this machine can reach ``host`` (127.0.0.0/8, ::1, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class ReviewServer:
    """uvicorn serving ``app`` on ``listen`` in a thread; ``start`` returns once it accepts connections."""

    def __init__(self, app: Any, listen: str):
        import uvicorn

        host, port = parse_listen(listen)
        self.app = app
        self.server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning",
                                                    access_log=False, lifespan="off",
                                                    timeout_graceful_shutdown=3))
        self.server.install_signal_handlers = lambda: None  # the daemon owns SIGINT/SIGTERM
        self.thread = threading.Thread(target=self.server.run, name="assetd-review", daemon=True)
        self.url = f"http://{'[' + host + ']' if ':' in host else host}:{port}/"

    def start(self, timeout: float = 10.0) -> None:
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise OSError(f"the review page could not listen on {self.url}")
            time.sleep(0.02)
        log.info("review page at %s", self.url)

    def stop(self, timeout: float = 5.0) -> None:
        self.server.should_exit = True
        self.thread.join(timeout)


def serve_forever(config: Any, listen: str) -> None:
    """``assetd serve``: the review app on ``listen`` in the foreground until SIGINT/SIGTERM (uvicorn's own
    handlers); OSError when it cannot listen there."""
    import uvicorn

    from ..store import Store
    from .app import create_app

    host, port = parse_listen(listen)
    store = Store(config.database, config.quarantine_after_crashes)
    server = uvicorn.Server(uvicorn.Config(create_app(config, store), host=host, port=port, log_level="warning",
                                           access_log=False, lifespan="off", timeout_graceful_shutdown=5))
    url = f"http://{'[' + host + ']' if ':' in host else host}:{port}/"

    def on_signal(signum: int, frame: Any) -> None:  # as `assetd run`: stop cleanly and exit 0; again: at once
        server.force_exit = server.should_exit
        server.should_exit = True

    server.capture_signals = contextlib.nullcontext  # uvicorn's would re-raise the signal after stopping
    for s in (signal.SIGINT, signal.SIGTERM):
        signal.signal(s, on_signal)
    log.info("review page at %s (Ctrl-C stops it)", url)
    try:
        server.run()
    except SystemExit:  # uvicorn exits when it cannot bind (it has logged why)
        pass
    finally:
        store.close()
    if not server.started:
        raise OSError(f"could not listen on {url} (the address is taken, or not this machine's)")
    log.info("review page stopped")
