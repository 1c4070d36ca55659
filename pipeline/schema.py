"""Build typed dataclasses from parsed YAML, collecting every problem with its key path.

Config, rules and every stage's options are plain dataclasses; this module is the one place that
turns a YAML mapping into them, so an unknown key or a bad value is reported the same way
everywhere: ``<file>: <key.path>: expected <what>, got <value>``.

Field metadata understood here:
  ``choices``  allowed values;  ``min`` / ``max``  numeric bounds;
  ``check``    a callable(value) -> str | None returning a problem description;
  ``expected`` what a value of the wrong type is told to be, instead of the type's own name;
  ``key``      the YAML key when it cannot be the field's name (``from``);
  ``doc``      one line for the manual (README / config.example.yaml stay in sync by a test).

A ``Path`` field (a value from the YAML or its default) is resolved once, here, against ``base`` (the
config file's folder) when ``build`` is given one: ``~`` expands, a relative path joins ``base``.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

_MISSING = dataclasses.MISSING


def describe(tp: Any) -> str:
    """A human name for a type annotation."""
    origin = get_origin(tp)
    if tp is bool:
        return "true or false"
    if tp is int:
        return "an integer"
    if tp is float:
        return "a number"
    if tp is str:
        return "a string"
    if tp is Path:
        return "a path"
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        return " or ".join(dict.fromkeys(describe(a) for a in args)) + (" or null" if len(args) < len(get_args(tp)) else "")
    if origin is list:
        return f"a list of {describe(get_args(tp)[0]).removeprefix('a ').removeprefix('an ')}s"
    if origin is dict:
        return "a mapping"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    return getattr(tp, "__name__", str(tp))


def resolve_path(path: Path | str, base: Path | None) -> Path:
    """``path`` with ``~`` expanded, joined to ``base`` unless absolute (or unless there is no base)."""
    p = Path(path).expanduser()
    return p if p.is_absolute() or base is None else base / p


def as_written(path: Path, base: Path) -> str:
    """A resolved path as a user would write it: relative to ``base`` when inside it (manifests, rule versions)."""
    return str(path.relative_to(base)) if path.is_relative_to(base) else str(path)


# The words YAML 1.1 reads as booleans when unquoted (PyYAML): ``remove_mask: yes`` arrives as True.
_YAML_BOOLEANS = frozenset({"yes", "no", "on", "off", "y", "n", "true", "false"})


def _boolean_hint(value: bool, choices: tuple[Any, ...] | None) -> str:
    """Why a true or false came where a word was expected, and what to write: quotes, when a word of that kind is
    a valid value (any string, or ``prior: 'off'``); else nothing more (the message says what is expected)."""
    said = f" (YAML reads an unquoted on, off, yes or no as {str(value).lower()}"
    if choices is None or _YAML_BOOLEANS & {str(c).lower() for c in choices}:
        return said + ": put the word in quotes)"
    return said + ")"


def choices_text(choices: tuple[Any, ...], optional: bool) -> str:
    """What a field with ``choices`` expects, as a message says it: "one of 'soft', 'none'" ("'sidecar' or
    nothing")."""
    words = ", ".join(map(repr, choices))
    text = f"one of {words}" if len(choices) > 1 else words
    return text + (" or nothing" if optional else "")


def _convert(tp: Any, value: Any, where: str, errors: list[str], base: Path | None = None,
             expected: str | None = None, choices: tuple[Any, ...] | None = None) -> Any:
    origin = get_origin(tp)
    bad = f"{where}: expected {expected or describe(tp)}, got {value!r}"
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            trial: list[str] = []
            out = _convert(arg, value, where, trial, base)
            if not trial:
                return out
        if isinstance(value, bool) and str in args:  # a word YAML took for a boolean
            bad += _boolean_hint(value, choices)
        errors.append(bad)
        return None
    if origin is Literal:
        if value in get_args(tp):
            return value
        errors.append(bad)
        return None
    if tp is bool:
        if isinstance(value, bool):
            return value
        errors.append(bad)
        return None
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        errors.append(bad)
        return None
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        errors.append(bad)
        return None
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, bool):  # YAML 1.1: an unquoted on/off/yes/no is a boolean
            bad += _boolean_hint(value, choices)
        errors.append(bad)
        return None
    if tp is Path:
        if isinstance(value, str) and value:
            return resolve_path(value, base)
        errors.append(bad)
        return None
    if origin is list:
        (item,) = get_args(tp)
        if isinstance(value, str) and item is str:
            value = [value]
        if not isinstance(value, list):
            errors.append(bad)
            return None
        return [_convert(item, v, f"{where}[{i}]", errors, base) for i, v in enumerate(value)]
    if origin is dict:
        key_t, val_t = get_args(tp)
        if not isinstance(value, dict):
            errors.append(bad)
            return None
        return {str(k): _convert(val_t, v, f"{where}.{k}", errors, base) for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        return build(tp, value, where, errors, base=base)
    raise TypeError(f"schema cannot convert {tp!r}")  # a programming error, not a user one


def build(cls: type, data: Any, where: str, errors: list[str], *, base: Path | None = None, **extra: Any) -> Any:
    """Instantiate dataclass ``cls`` from ``data``; append problems to ``errors``.

    ``base`` resolves ``Path`` fields (see above); ``extra`` supplies fields that do not come from the YAML
    (e.g. a channel's name).
    Returns an instance built from defaults where values were bad, so callers can keep
    checking and report everything at once.
    """
    if data is None:
        data = {}
    if not isinstance(data, dict):
        errors.append(f"{where}: expected a mapping, got {data!r}")
        data = {}
    hints = typing.get_type_hints(cls)
    fields = {yaml_key(f): f for f in dataclasses.fields(cls)
              if f.init and f.name not in extra and not f.metadata.get("internal")}  # internal: set by code
    for key in data:
        if key not in fields:
            errors.append(f"{_join(where, key)}: unknown key (known keys: {', '.join(fields)})")
    kwargs: dict[str, Any] = dict(extra)
    for key, field in fields.items():
        name, expected, choices = field.name, field.metadata.get("expected"), field.metadata.get("choices")
        key_where = _join(where, key)
        if key in data:
            before = len(errors)
            if expected is None and choices and isinstance(data[key], bool) and bool not in get_args(hints[name]) \
                    and hints[name] is not bool and not _YAML_BOOLEANS & {str(c).lower() for c in choices}:
                # a true or false where only some words are valid, none of which YAML reads as a boolean
                # (``shadow: no``): say which words, not "a string" (quoting the word would not make it valid)
                expected = choices_text(choices, type(None) in get_args(hints[name]))
            value = _convert(hints[name], data[key], key_where, errors, base, expected, choices)
            if len(errors) == before:
                problem = _check_meta(field, value)
                if problem:
                    errors.append(f"{key_where}: {problem}")
            if len(errors) == before:
                kwargs[name] = value
                continue
        if field.metadata.get("required") and key not in data:
            errors.append(f"{key_where}: required, expected {expected or describe(hints[name])}")
            kwargs[name] = None
        elif field.default is not _MISSING:
            kwargs[name] = resolve_path(field.default, base) if isinstance(field.default, Path) else field.default
        elif field.default_factory is not _MISSING:  # type: ignore[misc]
            kwargs[name] = field.default_factory()  # type: ignore[misc]
        else:
            if key not in data:
                errors.append(f"{key_where}: required, expected {expected or describe(hints[name])}")
            kwargs[name] = None
    return cls(**kwargs)


def yaml_key(field: dataclasses.Field) -> str:
    """The key a field is written as in YAML: its name, or its ``key`` metadata."""
    return field.metadata.get("key", field.name)


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else str(key)


def _check_meta(field: dataclasses.Field, value: Any) -> str | None:
    meta = field.metadata
    if value is None:
        return None
    if "choices" in meta and value not in meta["choices"]:
        return f"expected one of {', '.join(map(repr, meta['choices']))}, got {value!r}"
    if "min" in meta and isinstance(value, (int, float)) and value < meta["min"]:
        return f"expected at least {meta['min']}, got {value!r}"
    if "max" in meta and isinstance(value, (int, float)) and value > meta["max"]:
        return f"expected at most {meta['max']}, got {value!r}"
    if "check" in meta:
        return meta["check"](value)
    return None


def opt(default: Any = _MISSING, doc: str = "", **meta: Any) -> Any:
    """A dataclass field with a default (or factory for lists/dicts) and manual metadata."""
    meta["doc"] = doc
    if isinstance(default, (list, dict)):
        value = default
        return dataclasses.field(default_factory=lambda: type(value)(value), metadata=meta)
    if dataclasses.is_dataclass(default):
        template = default
        return dataclasses.field(default_factory=lambda: dataclasses.replace(template), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def options_of(cls: type, *names: str) -> type:
    """A dataclass of some of ``cls``'s fields, with their types, defaults and docs: the options a part of a step
    reads of the step's (a crops fill's of the crops options), declared once. ``of(options)`` builds one from an
    instance of ``cls``."""
    hints = typing.get_type_hints(cls)
    chosen = [f for f in dataclasses.fields(cls) if f.name in names]
    missing = sorted(set(names) - {f.name for f in chosen})
    if missing:
        raise TypeError(f"{cls.__name__} has no options {missing}")
    specs = [(f.name, hints[f.name], dataclasses.field(default=f.default, default_factory=f.default_factory,
                                                       metadata=f.metadata)) for f in chosen]
    def of(view: type, options: Any) -> Any:
        return view(**{name: getattr(options, name) for name in names})

    return dataclasses.make_dataclass(f"{cls.__name__}Of", specs, namespace={"of": classmethod(of)})


def documented_keys(cls: type, prefix: str = "") -> list[str]:
    """Every key path of a schema, for the tests that keep the manual in sync."""
    hints = typing.get_type_hints(cls)
    keys = []
    for f in dataclasses.fields(cls):
        if not f.init or f.metadata.get("internal"):
            continue
        path = f"{prefix}{yaml_key(f)}"
        keys.append(path)
        tp = hints[f.name]
        inner = [a for a in get_args(tp) if dataclasses.is_dataclass(a)] or (
            [tp] if dataclasses.is_dataclass(tp) else []
        )
        if get_origin(tp) is dict and dataclasses.is_dataclass(get_args(tp)[1]):
            inner = [get_args(tp)[1]]
        if get_origin(tp) is list and dataclasses.is_dataclass(get_args(tp)[0]):
            inner = [get_args(tp)[0]]
        for sub in inner:
            keys.extend(documented_keys(sub, path + "."))
    return keys


def read_yaml(path: Path, what: str) -> Any:
    """A YAML file's data, or ``ValueError`` with one line naming what is wrong and where: ``cannot read <what>:
    <why>``, ``not valid YAML at line L, column C: <why>``, or a key given twice in one mapping (YAML lets the
    last one win in silence; a studio's ``workers: 2`` then ``workers: 0`` must be an error, not a guess)."""
    import yaml

    class UniqueKeys(yaml.SafeLoader):
        def construct_mapping(self, node: Any, deep: bool = False) -> Any:
            seen: dict[Any, Any] = {}
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=deep)
                if isinstance(key, typing.Hashable) and key in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"key {key!r} is given twice (first at line {seen[key].line + 1}); keep one",
                        key_node.start_mark)
                if isinstance(key, typing.Hashable):
                    seen[key] = key_node.start_mark
            return super().construct_mapping(node, deep=deep)

    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ValueError(f"cannot read {what}: {exc.strerror or exc}") from None
    try:
        return yaml.load(text, Loader=UniqueKeys)  # noqa: S506 - a SafeLoader
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        context = getattr(exc, "context", None)
        why = f"{problem} ({context})" if context and "given twice" not in problem else problem
        raise ValueError(f"not valid YAML{where}: {' '.join(str(why).split())}") from None
