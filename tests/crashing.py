"""Test helper: `assetd` with a stage that kills its own process (SIGKILL) mid-chain, as a crash would.

Run as a script (``python tests/crashing.py run --config ...``) it registers the ``upscale`` backend ``killer``
and runs the CLI; tests import ``KillerUpscale`` to load rules that use it."""
from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

from pipeline.schema import opt
from pipeline.stages.base import Asset, Stage


@dataclass
class KillerOptions:
    kill_if: str = opt("", doc="SIGKILL the process when the input's path contains this")
    times: int = opt(0, doc="at most this many times in all (0: every time), counted in ``tally``")
    tally: str = opt("", doc="file counting the kills so far")
    quiet: bool = opt(False, doc="kill only once no decode ahead is going (up to 10 s), so the death is this "
                                 "stage's alone (a decode going beside it would make it either's)")


class KillerUpscale(Stage):
    """Leaves the image as it is, or kills the whole process: a file that crashes assetd."""

    step = "upscale"
    backend = "killer"
    Options = KillerOptions

    def run(self, asset: Asset) -> list[Asset]:
        if self.options.kill_if and self.options.kill_if in asset.source:
            tally = Path(self.options.tally)
            kills = int(tally.read_text()) if tally.exists() else 0
            if not self.options.times or kills < self.options.times:
                tally.write_text(str(kills + 1))
                if self.options.quiet:
                    self._wait_for_decodes_ahead()
                os.kill(os.getpid(), signal.SIGKILL)
        return [asset]

    def _wait_for_decodes_ahead(self) -> None:
        from pipeline.store import Store

        store = Store(self.ctx.config.database)
        try:
            deadline = time.monotonic() + 10
            while any(j.reading_since for j in store.jobs("running")) and time.monotonic() < deadline:
                time.sleep(0.01)
        finally:
            store.close()


if __name__ == "__main__":
    from pipeline.cli import main
    from pipeline.stages.base import registered

    with registered(KillerUpscale):
        main()
