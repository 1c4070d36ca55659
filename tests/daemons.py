"""Test helper: run a real Daemon until its queue is drained."""
from __future__ import annotations

import time

from pipeline.daemon import Daemon


def run_until_idle(config, rules, expected_jobs: int, timeout: float = 60.0) -> list:
    """Start a daemon on ``config``/``rules``, wait until it holds ``expected_jobs`` jobs and is idle, stop it;
    returns its jobs."""
    daemon = Daemon(config, rules)
    daemon.start()
    try:
        deadline = time.monotonic() + timeout
        while not (len(daemon.store.jobs()) >= expected_jobs and daemon.idle()) and time.monotonic() < deadline:
            time.sleep(0.1)
        return daemon.store.jobs()
    finally:
        daemon.stop()
