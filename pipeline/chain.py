"""The chain of one rule: its stages built once per worker, run in order on each job's image.

This is the one place that decides what happens between stages: whether to go on (the daemon is
stopping?), what is kept for the outputs, and how a stage's unexpected exception is reported.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import numpy as np

from . import faults
from .errors import AssetdError, StopRequested, TransientError
from .models import gpu_peak_bytes, gpu_peak_start, step_device
from .rules import Rule
from .stages.base import STEPS, Asset, Stage, StageContext, stage_class
from .stages.masks import unused_masks
from .stages.subject import paste_matte

if TYPE_CHECKING:
    from .imageio import Decoded


class StepError(AssetdError):
    """A stage raised something unexpected; the message names the step."""


class ModelLoadError(AssetdError):
    """A stage's ``prepare()`` (its model load) failed: the process has a problem, not the job
    (``health``: ``model:<step>/<backend>``). The original error is ``__cause__``."""

    def __init__(self, step: str, backend: str, exc: BaseException):
        super().__init__(f"{step} ({backend}): could not prepare: {type(exc).__name__}: {exc}")
        self.step = step
        self.backend = backend


@dataclass(frozen=True)
class StepUse:
    """Where a step ran and, on CUDA, the most GPU memory torch held while it did (``/metrics``)."""
    device: str = "cpu"
    gpu_peak_bytes: int | None = None


class Chain:
    """The stages of one rule. Build once per worker and reuse: models load in ``prepare``."""

    def __init__(self, rule: Rule, ctx: StageContext):
        self.rule = rule
        self.ctx = ctx
        self.stages: list[Stage] = [stage_class(s.step, s.backend)(s.options, ctx) for s in rule.steps]
        self._needed = {o.source for o in rule.outputs}
        self._prepared = False

    def prepare(self) -> None:
        """Load each stage's heavy resources once; a failure is a ``ModelLoadError`` naming the stage, and the
        next job tries again. A load during a stage's run is one too (``run``)."""
        if not self._prepared:
            for stage in self.stages:
                try:
                    stage.prepare()
                except StopRequested:
                    raise
                except Exception as exc:
                    raise ModelLoadError(stage.step, stage.backend, exc) from exc
            self._prepared = True

    def run(self, asset: Asset, on_step: Callable[[Stage, float, StepUse], None] | None = None,
            on_matte: Callable[[np.ndarray], None] | None = None) -> dict[str, list[Asset]]:
        """Run every stage; returns the assets of each step an output asks for ("input" too). ``on_step`` is told
        each stage's seconds, device and GPU memory peak; ``on_matte`` the subject's matte as the step that cut it
        out found it, in the input's coordinates (``input_matte``), once, when there is one (the review page's
        subject check compares exactly the subject with it). A mask beside the input (``asset.source``) that no
        step of the rule reads is a review reason of every output (``stages.masks.unused_masks``).

        A model a stage loads while it runs (again after ``models.unload_after_seconds`` freed it, or an optional
        one that appeared in the cache) and that does not load raises ``ModelLoadError``, as in ``prepare``: the
        process has the problem (a file cut short, a share gone), so the daemon pauses the rules using it."""
        self.prepare()
        self.ctx.said.clear()  # a new job: its warnings are logged once each (``StageContext.once``)
        if asset.source is not None:  # a retoucher's mask no step reads changed nothing: a person should know
            asset.review.extend(f"{line}; it was not used" for line in unused_masks(self.rule, asset.source))
        kept: dict[str, list[Asset]] = {"input": [asset]} if "input" in self._needed else {}
        current = [asset]
        for stage in self.stages:
            if self.ctx.stop.is_set():
                raise StopRequested("stopping: job goes back to the queue")
            faults.point("stage", asset.source)
            device = step_device(stage)
            gpu = gpu_peak_start(device)
            started = time.perf_counter()
            given = current
            if hasattr(self.ctx.models, "failed_load"):
                self.ctx.models.failed_load = None  # type: ignore[union-attr]
            try:
                current = [out for item in current for out in stage.run(item)]
            except Exception as exc:
                if failed_load(exc, self.ctx.models):
                    raise ModelLoadError(stage.step, stage.backend, exc) from exc
                if isinstance(exc, AssetdError):
                    raise
                if isinstance(exc, MemoryError):
                    raise TransientError(f"{stage.step}: out of memory") from None
                raise StepError(f"{stage.step} ({stage.backend}) failed: {type(exc).__name__}: {exc}") from exc
            if on_step is not None:
                on_step(stage, time.perf_counter() - started, StepUse(device, gpu_peak_bytes(gpu, device)))
            if on_matte is not None and "cutout" in STEPS[stage.step].gives:
                matte = input_matte(stage.step, given, current, asset)
                if matte is not None:
                    on_matte(matte)
                    on_matte = None
            if stage.step in self._needed:
                kept[stage.step] = current
        return kept


class Chains:
    """Each rule's chain, built once per worker (a local worker's, or a Ray actor's) and reused: its models load
    once. A re-run's rule with one-off options (``Rule.with_overrides``) has its own (one per rule: the last options
    asked for), never the plain rule's; a new version of a rule gets a new chain."""

    def __init__(self, ctx: StageContext):
        self.ctx = ctx
        self._built: dict[tuple[str, bool], Chain] = {}  # (rule, with one-off options) -> its chain

    def of(self, rule: Rule) -> Chain:
        key = (rule.name, bool(rule.overrides))
        chain = self._built.get(key)
        if chain is None or chain.rule.version != rule.version or chain.rule.overrides != rule.overrides:
            chain = self._built[key] = Chain(rule, self.ctx)
        return chain


def failed_load(exc: BaseException, models: object) -> bool:
    """Whether ``exc`` is (or was raised from) the failed load the worker's model manager saw last."""
    failed = getattr(models, "failed_load", None)
    seen: set[int] = set()
    cause: BaseException | None = exc
    while failed is not None and cause is not None and id(cause) not in seen:
        if cause is failed:
            return True
        seen.add(id(cause))
        cause = cause.__cause__ or cause.__context__
    return False


def input_asset(decoded: "Decoded", source: str) -> Asset:
    """The asset a chain starts from: the decoded input, its decoding's notes kept for the manifest."""
    return Asset(pixels=decoded.pixels, notes={"input": dict(decoded.notes, format=decoded.format)}, source=source)


def input_matte(step: str, given: list[Asset], made: list[Asset], source: Asset) -> np.ndarray | None:
    """The subject's matte that ``step`` (a cut-out) found, in the coordinates of the decoded input ``source``,
    its trim undone (zero outside the trimmed box); None when it gave none, or did not run on the input as decoded
    (a step before it resized it)."""
    if len(given) != 1 or len(made) != 1 or made[0].matte is None:
        return None
    before, after = given[0], made[0]
    if before.pixels.shape[:2] != source.pixels.shape[:2] or before.scale != 1.0:
        return None
    box = (after.notes.get(step) or {}).get("trim")
    if box is not None:
        return paste_matte(after.matte, (source.width, source.height), (box[0], box[1]))
    return after.matte if after.matte.shape == source.pixels.shape[:2] else None
