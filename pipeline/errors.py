"""One exception family for everything assetd reports to a person.

The worker decides what to do with a failure by its class alone:
``TransientError`` is retried with back-off, ``PermanentError`` fails the job at once,
``ConfigError`` stops the program before anything starts.
"""
from __future__ import annotations


class AssetdError(Exception):
    """Base class: the message is written for the studio, one line, naming the file."""


class ConfigError(AssetdError):
    """A config or rule file is wrong. ``problems`` lists every problem found, each self-contained."""

    def __init__(self, problems: list[str] | str):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("\n".join(self.problems))


class PermanentError(AssetdError):
    """Retrying cannot help (undecodable file, bomb, bad permissions): fail the job now."""


class InputError(PermanentError):
    """The input file itself is bad. The message names the file and what is wrong with it."""


class IncompleteInput(InputError):
    """The file ends before its image data does (a truncated stream): damaged, or a copy that paused longer
    than ``settle_seconds`` and is still arriving. The daemon's worker waits for a recently modified one
    (``Worker._load``); anywhere else it is an ``InputError`` like any other."""


class TransientError(AssetdError):
    """Might work later (file still changing, GPU out of memory, disk full): retry with back-off."""

    def __init__(self, message: str, delay: float | None = None):
        super().__init__(message)
        self.delay = delay


class StopRequested(AssetdError):
    """Raised between steps when the daemon is stopping; the job goes back to the queue untouched."""


class NotHeld(StopRequested):
    """The job is no longer this worker's (its claim was taken back before its run started): it is left untouched to
    whoever holds it now."""


class ProcessProblem(AssetdError):
    """The process, not the job, has a problem (a disk full, the GPU lost, a model that no longer loads):
    the job goes back to the queue uncharged and ``scope`` (a ``pipeline.health.Scope``) pauses until the
    problem clears. ``key``, ``probe`` and ``alert_after`` are ``Problems.start``'s."""

    def __init__(self, key: str, message: str, scope: object, probe: object = None, alert_after: float = 0.0,
                 trial: bool = False):
        super().__init__(message)
        self.key = key
        self.message = message
        self.scope = scope
        self.probe = probe
        self.alert_after = alert_after
        self.trial = trial
