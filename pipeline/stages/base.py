"""The stage interface every backend implements, and the registry that finds backends by name.

A *step* is one thing a rule can ask for (``STEPS``: what each needs, gives and takes away, which
decides where a rule may list it); a *backend* is one way of doing it (``studio`` or ``rembg`` for
``remove_background``...). A backend is a ``Stage`` subclass decorated with ``@register``; its options
are a dataclass (``Options``) validated by ``pipeline.schema`` when rules load, so a typo fails
``assetd check`` rather than a job at 2 a.m.
A backend that runs a model declares it (``model_kind``, or ``model_ref`` for anything else): that
one ref is what ``assetd models pull/check`` fetch and check and what the stage loads.

What flows between stages is an ``Asset``: the pixels plus the subject's matte in the same
coordinates. Stages never change the subject's opaque pixels except ``upscale`` (which records
its factor in ``Asset.scale``) and the edits a rule asks for by name, each bounded and recorded (``recolor``'s
region, ``tone_match``: ``changes_subject``, ``retouch`` where a painted remove mask covers it:
``subject_pixels``): that is the product's promise, and the tests check it.
"""
from __future__ import annotations

import contextlib

import dataclasses
import importlib
import logging
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Iterator

import numpy as np

if TYPE_CHECKING:
    from ..config import Config
    from ..models import ModelKind, ModelRef

FACTS = {  # what may hold of the image between steps; a step's needs, gives and takes name these
    "cutout": "a cut-out (the subject on a transparent background)",
    "uncropped": "the whole image (not yet cropped to ratios)",
    "ratio": "one image per crop ratio",
    "placed": "the subject placed on a scene, a colour or a gradient (what is around it is that scene)",
}
INPUT_FACTS = frozenset({"uncropped"})  # what every input is
INPUT_MAY = frozenset({"cutout"})  # what an input may be (a PNG with transparency): not refused when rules load


@dataclass(frozen=True)
class Step:
    """A step a rule can ask for. A rule may list it wherever its ``needs`` hold, given what the input is and
    what the steps before it give and take away; a new step is one module that calls ``define_step`` and
    registers its backends."""

    name: str
    default_backend: str
    needs: frozenset[str] = frozenset()  # facts that must hold when it starts
    gives: frozenset[str] = frozenset()  # facts that hold after it
    takes: frozenset[str] = frozenset()  # facts that no longer hold after it
    doc: str = ""


STEPS: dict[str, Step] = {}  # by name, as their modules declare them; steps() gives the manual's order


def define_step(name: str, default_backend: str, needs: tuple[str, ...] = (), gives: tuple[str, ...] = (),
                takes: tuple[str, ...] = (), doc: str = "") -> Step:
    """Declare a step: the first four below; a new one in its own module, before its backends' ``@register``."""
    unknown = sorted((set(needs) | set(gives) | set(takes)) - set(FACTS))
    if unknown:
        raise ValueError(f"step {name}: unknown facts {unknown} (known: {', '.join(FACTS)})")
    step = Step(name, default_backend, frozenset(needs), frozenset(gives), frozenset(takes), doc)
    STEPS[name] = step
    return step


# The steps are declared in their modules (remove_background, place_in_scene, tone_match, crops, upscale: the order
# of STAGE_MODULES is the manual's order).


PARTS: dict[str, str] = {}  # parts of a step whose ways are backends too (crops' ``fill``), by name


def define_part(name: str, doc: str = "") -> None:
    """Declare a part of a step that has backends of its own (``fill`` of ``crops``): they register with
    ``@register`` like a step's backends, with ``step`` set to the part's name, and ``backends(name)`` lists them."""
    PARTS[name] = doc

# Modules that register backends, the one list to add a backend to; a model-backed one also holds its
# ``ModelKind`` (how its model loads and is fetched) and imports its heavy libraries lazily.
STAGE_MODULES = [
    "pipeline.stages.retouch",
    "pipeline.stages.remove_background",
    "pipeline.stages.recolor",
    "pipeline.stages.place_in_scene",
    "pipeline.stages.tone_match",
    "pipeline.stages.crops",
    "pipeline.stages.upscale",
    "pipeline.stages.rembg_backend",
    "pipeline.stages.diffusion",
    "pipeline.stages.instruct",
    "pipeline.stages.spandrel_upscale",
]


@dataclass
class Asset:
    """One image travelling through the chain.

    pixels:  H×W×3 (RGB) or H×W×4 (RGBA, straight alpha), uint8 or uint16, sRGB working space.
    matte:   H×W uint8 coverage of the subject (255 = subject) in the same coordinates, or None
             when nothing has told us where the subject is yet.
    ratio:   the crop ratio this asset was framed for ("4:5"), None before ``crops``.
    scale:   resampling factor applied to the input's pixels so far (1.0: untouched).
    notes:   what each step did, for the manifest ({"crops": {"fill": "outpaint", ...}}).
    review:  reasons a human should look at this asset before it is used, one line each, naming the
             step ("remove_background: matte uncertain on 14% of the outline (review_above 10%)").
             A stage appends to it instead of failing when its result is usable but doubtful; the
             outputs are still written, and the job is marked for review (``assetd jobs --status
             review``, the manifest, the digest). Empty: nothing to look at.
    backdrop: set by ``place_in_scene`` (its ``Backdrop``): lets ``crops`` compose a frame that reaches past the
             composite on the same scene instead of extending it; None elsewhere.
    """

    pixels: np.ndarray
    matte: np.ndarray | None = None
    ratio: str | None = None
    scale: float = 1.0
    notes: dict[str, Any] = field(default_factory=dict)
    review: list[str] = field(default_factory=list)
    backdrop: Any = None  # place_in_scene's Backdrop: how to compose a crop reaching past the composite anew
    source: str | None = None  # the input file, for log lines (None: not from a file)
    variant: str | None = None  # which variant this is when a step made several (a colourway, a scene, a seed): the
    # channels' ``{variant}``; None: the only one

    @property
    def height(self) -> int:
        return int(self.pixels.shape[0])

    @property
    def width(self) -> int:
        return int(self.pixels.shape[1])

    @property
    def has_alpha(self) -> bool:
        return self.pixels.ndim == 3 and self.pixels.shape[2] == 4

    def derive(self, pixels: np.ndarray, matte: np.ndarray | None, **changes: Any) -> "Asset":
        """A new asset from this one: notes and review reasons are copied (not shared), other fields
        overridable. The backdrop is not carried over unless given: it describes the pixels of the step that
        made it, and a crop composed from it would drop whatever a later step did to them."""
        changes.setdefault("backdrop", None)
        return dataclasses.replace(self, pixels=pixels, matte=matte, notes=dict(self.notes),
                                   review=list(self.review), **changes)


@dataclass
class StageContext:
    """What a stage may use besides its options. One per worker; shared by its stages."""

    config: "Config"
    models: Any = None  # pipeline.models.ModelManager (per worker), created lazily by model-backed stages
    stop: threading.Event = field(default_factory=threading.Event)
    log: logging.Logger = field(default_factory=lambda: logging.getLogger("assetd.stage"))
    said: set[Any] = field(default_factory=set)  # what was logged once for the job running (``Chain.run`` clears it)

    def once(self, key: Any) -> bool:
        """True the first time ``key`` is asked about during the job running: a warning that every variant or ratio
        of one job would repeat (a scene enlarged for each colourway) is logged once per job."""
        if key in self.said:
            return False
        self.said.add(key)
        return True


class Stage:
    """Base class of every backend. Subclasses set ``step``, ``backend`` and ``Options``."""

    step: ClassVar[str]
    backend: ClassVar[str]
    Options: ClassVar[type]
    needs_models: ClassVar[bool] = False  # True: needs the models extra (torch...) and a model's weights
    # Options of which a rule sets one (place_in_scene's scene, scenes, colour, gradient): a one-off override of one
    # of them (``assetd rerun --set``) replaces whichever the rule set.
    one_of: ClassVar[tuple[frozenset[str], ...]] = ()
    model_kind: ClassVar["type[ModelKind] | None"] = None  # the kind of model its ``model`` option names

    def __init__(self, options: Any, ctx: StageContext):
        self.options = options
        self.ctx = ctx

    @classmethod
    def validate(cls, options: Any, where: str, ctx_config: "Config") -> list[str]:
        """Extra checks needing the config (files exist...). Problems, each prefixed by ``where``."""
        return []

    @classmethod
    def resolve(cls, options: Any, where: str, outputs: list[Any], config: "Config") -> Any:
        """Fill defaults that depend on the rule (``outputs``: its OutputSpecs) when the rule loads, before
        its version is computed. Returns the options; raises ConfigError (prefixed by ``where``) when a
        default cannot be resolved."""
        return options

    @classmethod
    def variants(cls, options: Any) -> list[str]:
        """The variants a step with these options makes of each asset, by name (each output of one is named with
        its ``{variant}``; ``assetd check`` says how); [] when it makes one. By default the names of a ``variants``
        option (a list of items with a ``name``, as ``recolor``'s colourways)."""
        items = getattr(options, "variants", None) or []
        return [str(item.get("name") if isinstance(item, dict) else getattr(item, "name", item)) for item in items]

    @classmethod
    def runs_model(cls, options: Any) -> bool:
        """Whether a step with these options runs a model backend (needs the models extra and weights)."""
        return cls.needs_models

    @classmethod
    def model_ref(cls, options: Any, config: "Config") -> "ModelRef | None":
        """The model a step with these options runs (None: none): ``model_kind`` with the ``model`` option or
        its default. ``assetd models pull/check`` and the stage itself load it through this one ref."""
        return cls.model_kind.ref(config, getattr(options, "model", None)) if cls.model_kind else None

    def prepare(self) -> None:
        """Load heavy resources (models). Called once per worker before the first job."""

    def run(self, asset: Asset) -> list[Asset]:
        """Transform one asset into one or more (``crops`` yields one per ratio)."""
        raise NotImplementedError


_REGISTRY: dict[tuple[str, str], type[Stage]] = {}
_loaded = False


def register(cls: type[Stage]) -> type[Stage]:
    """Class decorator: make a backend findable by (step, backend)."""
    if cls.step not in STEPS and cls.step not in PARTS:
        raise ValueError(f"unknown step {cls.step!r} (define_step or define_part it first)")
    _REGISTRY[(cls.step, cls.backend)] = cls
    return cls


@contextlib.contextmanager
def registered(cls: type[Stage]) -> Iterator[type[Stage]]:
    """A backend findable only inside the ``with`` (a test's stand-in: the README lists the real ones); one
    it stands in for is findable again after."""
    _load_all()
    key = (cls.step, cls.backend)
    before = _REGISTRY.get(key)
    register(cls)
    try:
        yield cls
    finally:
        if before is None:
            _REGISTRY.pop(key, None)
        else:
            _REGISTRY[key] = before


def _load_all() -> None:
    global _loaded
    if not _loaded:
        for name in STAGE_MODULES:
            importlib.import_module(name)
        _loaded = True


def steps() -> dict[str, Step]:
    """Every step, in the manual's order (that of ``STAGE_MODULES``, whatever imported first)."""
    _load_all()
    order = {name: i for i, name in enumerate(STAGE_MODULES)}

    def place(step: Step) -> int:
        cls = _REGISTRY.get((step.name, step.default_backend))
        return order.get(cls.__module__, len(order)) if cls else len(order)

    return {step.name: step for step in sorted(STEPS.values(), key=place)}


def backends(step: str) -> list[str]:
    _load_all()
    return sorted(b for (s, b) in _REGISTRY if s == step)


def stage_class(step: str, backend: str | None) -> type[Stage]:
    """The backend class for a step; KeyError with the valid names when unknown."""
    _load_all()
    backend = backend or STEPS[step].default_backend
    try:
        return _REGISTRY[(step, backend)]
    except KeyError:
        raise KeyError(f"unknown backend {backend!r} for {step} (known: {', '.join(backends(step))})") from None


