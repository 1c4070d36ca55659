"""Rules: which files a rule takes, which steps it runs, where its outputs go.

One YAML file per rule in ``rules_dir``; rules are tried in file-name order and the first match
wins. Loading validates everything (steps, backends, their options, channels, ratios) so that
``assetd check`` catches a mistake before the daemon starts. Matching is pure: no I/O.
"""
from __future__ import annotations

import copy
import hashlib
import json
import re
from fnmatch import fnmatchcase
from dataclasses import MISSING, asdict, dataclass, field, fields, is_dataclass
from pathlib import Path, PurePosixPath
from typing import Any


from .config import Config
from .errors import ConfigError
from .formats import ACCEPTED_SHOWN, INPUT_EXTENSIONS, REFUSED_EXTENSIONS
from .outputs import OutputPathError, output_name
from .schema import as_written, build, opt, read_yaml, resolve_path
from .sizes import least_long_edge, need_text, needs_pixels, size_for, size_ratio_problem, sized_ratios
from .stages.base import FACTS, INPUT_FACTS, INPUT_MAY, stage_class, steps as known_steps

DEFAULT_EXTENSIONS = list(INPUT_EXTENSIONS)  # every extension the decoder reads: one table, in formats



def folder_matches(pattern: str, folder: str) -> bool:
    """Does a folder (relative to its inbox, "" for the root) match a glob?

    ``*`` and ``?`` stay inside one folder name, ``**`` spans any number of folders, so
    ``products/**`` takes ``products`` itself and everything below it, and ``**`` takes all.
    """
    pat = [p for p in pattern.strip("/").split("/") if p]
    parts = [p for p in folder.split("/") if p]

    def rec(i: int, j: int) -> bool:
        if i == len(pat):
            return j == len(parts)
        if pat[i] == "**":
            return any(rec(i + 1, k) for k in range(j, len(parts) + 1))
        return j < len(parts) and fnmatchcase(parts[j], pat[i]) and rec(i + 1, j + 1)

    return rec(0, 0)


@dataclass
class MatchSpec:
    folder: str = "**"
    extensions: list[str] = field(default_factory=lambda: list(DEFAULT_EXTENSIONS))
    name: str = "*"

    def __post_init__(self) -> None:
        self.extensions = list(dict.fromkeys(e.lower().lstrip(".") for e in (self.extensions or [])))


@dataclass
class StepSpec:
    step: str
    backend: str
    options: Any

    def as_dict(self) -> dict[str, Any]:
        opts = asdict(self.options) if is_dataclass(self.options) else dict(self.options or {})
        return {"step": self.step, "backend": self.backend, "options": opts}


@dataclass
class OutputSpec:
    # channel and source are checked by parse_rule against the config and the rule's steps (a str once loaded)
    channel: Any = opt(None)
    source: Any = opt(None, key="from")  # a step name or "input"; default: the rule's last step
    ratios: list[str] | None = opt(None, expected="a list of ratios like ['1:1']")


def _check_name(value: Any) -> str | None:
    ok = isinstance(value, str) and re.fullmatch(r"[A-Za-z0-9_.-]+", value)
    return None if ok else f"expected letters, digits, '_', '.', '-', got {value!r}"


@dataclass
class RuleFile:
    """A rule file as written, read by ``schema.build``; ``parse_rule`` checks it against the config."""

    name: Any = opt(None, check=_check_name)
    description: Any = opt("")
    match: MatchSpec = opt(MatchSpec())
    steps: Any = opt(None)  # [{step: {backend: ..., option: ...}}]: each step's options are its backend's Options
    outputs: Any = opt(None)  # [{channel: ..., from: ..., ratios: ...}]: each an OutputSpec


@dataclass
class Rule:
    name: str
    path: Path
    match: MatchSpec
    steps: list[StepSpec]
    outputs: list[OutputSpec]
    description: str = ""
    version: str = ""
    written: dict[str, Any] | None = field(default=None, repr=False, compare=False)  # the file's YAML mapping
    overrides: dict[str, dict[str, Any]] = field(default_factory=dict)  # one-off options (``with_overrides``)

    def step(self, name: str) -> StepSpec | None:
        return next((s for s in self.steps if s.step == name), None)

    def with_overrides(self, overrides: dict[str, dict[str, Any]] | None, config: Config) -> "Rule":
        """This rule with some steps' options changed for one job (``assetd rerun --set``), validated as the rule
        file is: the step's options through its schema and checks (each problem named ``STEP.OPTION: ...``), then
        the whole rule (sizes, names, resolved defaults) as ``parse_rule`` does. A path is relative to the config
        file's folder, as in a rule file. Raises ConfigError listing every problem; a step the rule does not
        have is one. The result has its own version (a chain built for it is never the plain rule's)."""
        if not overrides:
            return self
        if self.written is None:
            raise ConfigError(f"rule {self.name!r} was not read from a file; its options cannot be overridden")
        data = copy.deepcopy(self.written)
        items = data.get("steps") or []
        names = [item if isinstance(item, str) else next(iter(item)) for item in items]
        problems: list[str] = []
        for step, values in overrides.items():
            if step not in names:
                problems.append(f"{step}: rule {self.name!r} has no step {step!r} (its steps: {', '.join(names)})")
                continue
            if not isinstance(values, dict) or not values:
                problems.append(f"{step}: expected options like {step}.OPTION=VALUE, got {values!r}")
                continue
            i = names.index(step)
            written = items[i] if isinstance(items[i], dict) else {step: {}}
            base = dict(written[step] or {})
            try:
                cls = stage_class(step, values.get("backend", base.get("backend")))
            except KeyError as exc:
                problems.append(f"{step}.backend: {exc.args[0]}")
                continue
            for group in cls.one_of:  # another scene for a rule with a colour: the colour goes
                if group & values.keys():
                    for key in group - values.keys():
                        base.pop(key, None)
            merged = dict(base, **values)
            items[i] = {step: merged}
            step_problems: list[str] = []
            options = build(cls.Options, {k: v for k, v in merged.items() if k != "backend"}, step, step_problems,
                            base=config.base_dir)
            if not step_problems:
                step_problems.extend(cls.validate(options, step, config))
            problems.extend(step_problems)
        if problems:
            raise ConfigError(problems)
        errors: list[str] = []
        rule = parse_rule(data, self.path, config, errors)
        if rule is None:
            raise ConfigError([f"rule {self.name!r} with these options: {e.removeprefix(f'{self.path}: ')}"
                               for e in errors])
        rule.overrides = copy.deepcopy(overrides)
        return rule

    def why_not(self, rel_path: PurePosixPath) -> str | None:
        """None when this rule takes ``rel_path`` (relative to its inbox); else the reason."""
        ext = rel_path.suffix.lower().lstrip(".")
        if ext not in self.match.extensions:
            return f"extension .{ext} is not one of {', '.join(self.match.extensions)}"
        folder = str(rel_path.parent) if str(rel_path.parent) != "." else ""
        if not folder_matches(self.match.folder, folder):
            return f"folder {folder or '(inbox root)'!r} does not match {self.match.folder!r}"
        if not fnmatchcase(rel_path.name.lower(), self.match.name.lower()):
            return f"name {rel_path.name!r} does not match {self.match.name!r}"
        return None


def match_rule(rules: list[Rule], rel_path: PurePosixPath) -> Rule | None:
    """The first rule (in file-name order) that takes the file, or None."""
    return next((r for r in rules if r.why_not(rel_path) is None), None)


def load_rules(config: Config, only: str | None = None) -> list[Rule]:
    """All rules of ``config.rules_dir`` in file-name order; ConfigError lists every problem."""
    rules_dir = config.rules_dir
    if not rules_dir.is_dir():
        raise ConfigError(f"{config.source}: rules_dir: folder {rules_dir} does not exist")
    errors: list[str] = []
    rules: list[Rule] = []
    files = sorted(p for p in rules_dir.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file())
    for path in files:
        try:
            data = read_yaml(path, "rule")
        except ValueError as exc:
            errors.append(f"{path}: {exc}")
            continue
        rule = parse_rule(data, path, config, errors)
        if rule is not None:
            rules.append(rule)
    seen: dict[str, Path] = {}
    for rule in rules:
        if rule.name in seen:
            errors.append(f"{rule.path}: name: {rule.name!r} is already used by {seen[rule.name]}")
        seen[rule.name] = rule.path
    if not files:
        errors.append(f"{rules_dir}: no rule files (*.yaml)")
    if errors:
        raise ConfigError(errors)
    if only is not None:
        rules = [r for r in rules if r.name == only]
        if not rules:
            raise ConfigError(f"no rule named {only!r} (known: {', '.join(seen)})")
    return rules


def refused_extensions(match: MatchSpec) -> list[str]:
    """Extensions of a format the decoder refuses (``formats.REFUSED``): every file the rule took by one would
    fail its job at run time, so the rule is refused when it loads instead."""
    return [f"match.extensions: {ext}: {REFUSED_EXTENSIONS[ext].shown} files are not accepted (only "
            f"{ACCEPTED_SHOWN}); every such file would fail its job: remove {ext} from the list"
            for ext in match.extensions if ext in REFUSED_EXTENSIONS]


def parse_rule(data: Any, path: Path, config: Config, errors: list[str]) -> Rule | None:
    before = len(errors)
    if not isinstance(data, dict):
        errors.append(f"{path}: expected a mapping with name, match, steps, outputs")
        return None
    file_errors: list[str] = []
    written: RuleFile = build(RuleFile, data, "", file_errors)
    if data.get("name") is None:  # missing or null (the check sees only values)
        file_errors.insert(0, f"name: {_check_name(None)}")
    if isinstance(written.match, MatchSpec):
        file_errors.extend(refused_extensions(written.match))
    errors.extend(f"{path}: {e}" for e in file_errors)
    name = written.name if isinstance(written.name, str) else path.stem
    steps = _parse_steps(written.steps, path, config, errors)
    after = facts_after([s.step for s in steps])
    crops = next((s for s in steps if s.step == "crops"), None)
    crop_ratios = list(getattr(crops.options, "ratios", []) or []) if crops else []
    outputs = _parse_outputs(written.outputs, path, config, after, crop_ratios, errors)
    if len(errors) != before:
        return None
    errors.extend(f"{path}: {p}" for p in _size_problems(steps, outputs, config, after, crop_ratios))
    for i, spec in enumerate(steps):  # no errors so far: steps[i] is the YAML's steps[i]
        try:
            spec.options = stage_class(spec.step, spec.backend).resolve(spec.options, f"steps[{i}].{spec.step}",
                                                                        outputs, config)
        except ConfigError as exc:
            errors.extend(f"{path}: {p}" for p in exc.problems)
    errors.extend(f"{path}: {p}" for p in _name_clashes(name, outputs, config, after, crop_ratios))
    if len(errors) != before:
        return None
    rule = Rule(name=name, path=path, match=written.match, steps=steps, outputs=outputs,
                description=str(written.description or ""), written=data)
    rule.version = rule_version(rule, config)
    return rule


def _size_problems(steps: list[StepSpec], outputs: list[OutputSpec], config: Config,
                   after: dict[str, frozenset[str]], crop_ratios: list[str]) -> list[str]:
    """What the channels' sizes (``pipeline.sizes``) cannot get from this rule, known before any input: a size
    for an image with no fixed ratio, a ratio it has no size for, a size of another ratio, and pixels the
    upscale step cannot give (the channel takes an earlier step, or the step's own long_edge is smaller)."""
    problems = []
    upscale = next((i for i, s in enumerate(steps) if s.step == "upscale"), None)
    for i, spec in enumerate(outputs):
        channel = config.channels[spec.channel]
        has_ratio = "ratio" in after.get(spec.source, ())
        ratios = (spec.ratios or crop_ratios) if has_ratio else [None]
        if channel.size is not None and not has_ratio:
            problems.append(f"outputs[{i}]: channel {channel.name} has a size, but {spec.source}'s image has no fixed "
                            "ratio: take it from crops (or a later step), or give the channel min_long_edge or "
                            "long_edge instead")
            continue
        for ratio in ratios if channel.size is not None else []:
            size = size_for(channel, ratio)
            if size is None:
                problems.append(f"outputs[{i}]: channel {channel.name} has no size for {ratio} (sizes for "
                                f"{', '.join(sized_ratios(channel))}): add one, or leave {ratio} out of this "
                                "output's ratios")
            elif size_ratio_problem(size, ratio):
                problems.append(f"outputs[{i}]: channel {channel.name} takes {ratio}, but its size "
                                f"{size_ratio_problem(size, ratio)}: give a size per ratio, like size: "
                                f"{{'{ratio}': ...}}")
        if not needs_pixels(channel) or upscale is None:
            continue  # without an upscale step, an image smaller than needed fails its output (checks warns)
        step = steps[upscale]
        if spec.source != "upscale":
            if after.get(spec.source, INPUT_FACTS) == after["upscale"]:  # the same image, enlarged, is there
                problems.append(f"outputs[{i}]: channel {channel.name} needs {need_text(channel, ratios[0])}, but "
                                f"takes {spec.source}, which the upscale step does not enlarge: take it from upscale")
            continue  # an image upscale does not give (a cut-out before crops): as without one (checks warns)
        wanted = max((least_long_edge(channel, r) or 0 for r in ratios), default=0)
        long_edge = getattr(step.options, "long_edge", None)
        if long_edge is not None and long_edge < wanted:
            problems.append(f"steps[{upscale}].upscale.long_edge: {long_edge} is less than the "
                            f"{wanted} px long edge channel {channel.name} needs: leave it out (each ratio is "
                            "then enlarged as far as its channels need) or raise it")
    return problems


def _name_clashes(rule: str, outputs: list[OutputSpec], config: Config, after: dict[str, frozenset[str]],
                  crop_ratios: list[str]) -> list[str]:
    """Names that would clash within one job: every image a channel gets from one input needs a name of
    its own (else they differ only by assetd's hash suffix). Tried on a sample input, at the inbox root
    and in a sub-folder."""
    images = []  # (output index, channel, step, ratio) of every image one job writes
    for i, spec in enumerate(outputs):
        has_ratios = "ratio" in after.get(spec.source, ())
        for ratio in (spec.ratios or crop_ratios) if has_ratios else [None]:
            images.append((i, config.channels[spec.channel], spec.source, ratio))
    problems: dict[tuple, str] = {}  # one problem per image (or pair of images), the first sample's
    for rel in ("shot.jpg", "folder/shot.jpg"):
        named: dict[tuple[str, str], tuple[int, str, str, str | None]] = {}  # (folder, name) -> first image
        for i, channel, step, ratio in images:
            what = f"{step} {ratio}" if ratio else step
            try:
                name = output_name(channel, stem="shot", rel_path=rel, ratio=ratio, step=step, rule=rule,
                                   hash8="0123abcd")
            except OutputPathError as exc:
                problems.setdefault((i, step, ratio), f"outputs[{i}]: channel {channel.name}: {exc} "
                                                      f"(for {what} of an input {rel})")
                continue
            first = named.setdefault((str(channel.path), name), (i, channel.name, step, ratio))
            j, channel_j, step_j, ratio_j = first
            if first == (i, channel.name, step, ratio):
                continue
            if (channel_j, step_j, ratio_j) == (channel.name, step, ratio):
                problems.setdefault(first, f"outputs[{j}] and outputs[{i}] both send {what} to channel {channel.name}")
                continue
            where = (f"channel {channel.name} (filename {channel.filename!r})" if channel_j == channel.name else
                     f"folder {channel.path} (channels {channel_j} and {channel.name})")
            fields = [f for f, differs in (("ratio", ratio_j != ratio), ("step", step_j != step),
                                           ("channel", channel_j != channel.name)) if differs]
            problems.setdefault((first, i, step, ratio),
                                f"outputs: {f'{step_j} {ratio_j}' if ratio_j else step_j} and {what} would both be "
                                f"named {name!r} in {where}: put {' or '.join(f'{{{f}}}' for f in fields)} in "
                                f"{'its filename' if channel_j == channel.name else 'their filenames'}")
    return list(problems.values())


def _parse_steps(raw: Any, path: Path, config: Config, errors: list[str]) -> list[StepSpec]:
    if not isinstance(raw, list) or not raw:
        errors.append(f"{path}: steps: expected a list of steps ({', '.join(known_steps())})")
        return []
    before = len(errors)
    steps: list[StepSpec] = []
    places: list[int] = []  # each parsed step's index in the YAML list
    for i, item in enumerate(raw):
        where = f"steps[{i}]"
        if isinstance(item, str):
            item = {item: {}}
        if not isinstance(item, dict) or len(item) != 1:
            errors.append(f"{path}: {where}: expected one step name mapped to its options, got {item!r}")
            continue
        (step, opts), = item.items()
        if step not in known_steps():
            errors.append(f"{path}: {where}: unknown step {step!r} (known: {', '.join(known_steps())})")
            continue
        opts = dict(opts or {}) if isinstance(opts, dict) or opts is None else opts
        if not isinstance(opts, dict):
            errors.append(f"{path}: {where}.{step}: expected a mapping of options, got {opts!r}")
            continue
        backend = opts.pop("backend", None)
        try:
            cls = stage_class(step, backend)
        except KeyError as exc:
            errors.append(f"{path}: {where}.{step}.backend: {exc.args[0]}")
            continue
        opt_errors: list[str] = []
        options = build(cls.Options, opts, f"{where}.{step}", opt_errors, base=config.base_dir)
        if not opt_errors:
            opt_errors.extend(cls.validate(options, f"{where}.{step}", config))
        errors.extend(f"{path}: {e}" for e in opt_errors)
        steps.append(StepSpec(step=step, backend=cls.backend, options=options))
        places.append(i)
    names = [s.step for s in steps]
    if len(set(names)) != len(names):
        errors.append(f"{path}: steps: each step may appear once, got {names}")
    else:
        errors.extend(f"{path}: {p}" for p in order_problems(names, places))
    if len(errors) == before:  # every step and its options valid: the variants they make can be named
        errors.extend(f"{path}: {p}" for p in variant_clashes(steps))
    return steps


def variant_clashes(steps: list[StepSpec]) -> list[str]:
    """Two combinations of the steps' variants that make the same name (a colourway ``green`` on the scene
    ``Morning Kitchen.jpg`` and a colourway ``green-morning`` on ``Kitchen.jpg`` are both ``green-morning-kitchen``):
    their outputs would have the same file names, and the second would get a hash suffix nobody asked for.
    Refused when the rule loads, naming both combinations."""
    made: dict[str, str] = {}  # variant name → how it was made, by the steps' order
    for spec in steps:
        new = stage_class(spec.step, spec.backend).variants(spec.options)
        if not new:
            continue
        scenes = getattr(spec.options, "scenes", None) or []
        labels = [f"{spec.step} {as_named(scenes[i]) if len(scenes) == len(new) else name}"
                  for i, name in enumerate(new)]
        combined: dict[str, str] = {}
        for name, label in zip(new, labels):
            for before, how in (made.items() if made else [("", "")]):
                variant, what = (f"{before}-{name}", f"{how} × {label}") if before else (name, label)
                if variant in combined:
                    return [f"steps: {combined[variant]} and {what} both make the variant {variant}: their outputs "
                            "would have the same names; rename one of them"]
                combined[variant] = what
        made = combined
    return []


def as_named(scene: Any) -> str:
    """A scene file for a message: its name, in quotes when it has spaces."""
    name = Path(str(scene)).name
    return repr(name) if " " in name else name


def order_problems(names: list[str], places: list[int] | None = None) -> list[str]:
    """Steps placed where what they need does not hold (``stages.base.STEPS``), one line each; ``places``:
    their indices in the rule's steps (default 0, 1, ...)."""
    holds, may = set(INPUT_FACTS), set(INPUT_MAY)
    taken_by: dict[str, str] = {}
    problems = []
    for i, name in zip(places or range(len(names)), names):
        step = known_steps()[name]
        for fact in sorted(step.needs - holds - may):
            if fact in taken_by:
                problems.append(f"steps[{i}].{name}: needs {FACTS[fact]}, which {taken_by[fact]} takes away: "
                                f"must run in the order {name} → {taken_by[fact]}, got {' → '.join(names)}")
            else:
                givers = [s.name for s in known_steps().values() if fact in s.gives]
                problems.append(f"steps[{i}].{name}: needs {FACTS[fact]}: put {' or '.join(givers)} before it")
        holds = (holds - step.takes) | step.gives
        may -= step.takes
        taken_by.update((fact, name) for fact in step.takes)
    return problems


def facts_after(names: list[str]) -> dict[str, frozenset[str]]:
    """What holds of the image after each step of a rule (in its order; the input's maybes left out)."""
    holds, out = set(INPUT_FACTS), {}
    for name in names:
        step = known_steps().get(name)
        if step is not None:
            holds = (holds - step.takes) | step.gives
            out[name] = frozenset(holds)
    return out


def _parse_outputs(raw: Any, path: Path, config: Config, after: dict[str, frozenset[str]], crop_ratios: list[str],
                   errors: list[str]) -> list[OutputSpec]:
    if not isinstance(raw, list) or not raw:
        errors.append(f"{path}: outputs: expected a list like [{{channel: webshop, from: crops}}]")
        return []
    outputs: list[OutputSpec] = []
    for i, item in enumerate(raw):
        where = f"{path}: outputs[{i}]"
        if not isinstance(item, dict):
            errors.append(f"{where}: expected a mapping with channel, from and optional ratios, got {item!r}")
            continue
        item_errors: list[str] = []
        spec: OutputSpec = build(OutputSpec, item, f"outputs[{i}]", item_errors)
        errors.extend(f"{path}: {e}" for e in item_errors)
        if spec.channel not in config.channels:
            errors.append(f"{where}.channel: {spec.channel!r} is not a configured channel "
                          f"(configured: {', '.join(config.channels) or 'none'})")
        if spec.source is None:
            spec.source = list(after)[-1] if after else "input"
        if spec.source != "input" and spec.source not in after:
            errors.append(f"{where}.from: {spec.source!r} is not a step of this rule "
                          f"(steps: {', '.join(after) or 'none'}, or input)")
        if spec.ratios is not None:
            if "ratio" not in after.get(spec.source, ()):
                errors.append(f"{where}.ratios: only outputs from crops (or a later step) have ratios")
            for r in spec.ratios:
                if r not in crop_ratios:
                    errors.append(f"{where}.ratios: {r!r} is not one of the crops step's ratios "
                                  f"({', '.join(crop_ratios) or 'none'})")
        outputs.append(spec)
    return outputs


def _set_values(obj: Any, base: Path) -> dict[str, Any]:
    """A dataclass's fields that differ from their defaults (an option added by an upgrade, left at its
    default, does not change the version of every rule). A path counts as written: relative to ``base``
    (the config's folder) when inside it, so resolving it when it loads leaves the version alone."""
    out: dict[str, Any] = {}
    for f in fields(obj):
        value = getattr(obj, f.name)
        if f.default is not MISSING:
            default = f.default
        elif f.default_factory is not MISSING:  # type: ignore[misc]
            default = f.default_factory()  # type: ignore[misc]
        else:
            default = MISSING
        if isinstance(default, Path):
            default = resolve_path(default, base)
        if value != default:
            if isinstance(value, list) and value and all(isinstance(v, Path) for v in value):  # scenes: [...]
                out[f.name] = str([as_written(v, base) for v in value])
            else:
                out[f.name] = as_written(value, base) if isinstance(value, Path) else str(value)
    return out


def rule_version(rule: Rule, config: Config) -> str:
    """A short hash of everything that decides a rule's outputs: its steps' options, its outputs and its
    channels' settings, each without the values left at their defaults."""
    base = config.base_dir
    channels = {o.channel: {k: v for k, v in _set_values(config.channels[o.channel], base).items() if k != "path"}
                for o in rule.outputs}
    doc = {
        "steps": [{"step": s.step, "backend": s.backend,
                   "options": _set_values(s.options, base) if is_dataclass(s.options) else dict(s.options or {})}
                  for s in rule.steps],
        "outputs": [asdict(o) for o in rule.outputs],
        "channels": channels,
    }
    blob = json.dumps(doc, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:12]
