"""The reference parts of the README, generated from the code so they can't drift.

``python -m pipeline.docs`` rewrites the blocks between ``<!-- BEGIN generated: NAME -->`` and
``<!-- END generated: NAME -->`` in README.md; ``tests/test_docs.py`` fails when they are stale.
"""
from __future__ import annotations

import dataclasses
import inspect
import re
import sys
import typing
from pathlib import Path

import click

from .config import Config
from .schema import describe, yaml_key
from .stages.base import FACTS, INPUT_FACTS, INPUT_MAY, backends, stage_class, steps


def _default(field: dataclasses.Field) -> str:
    if field.default is not dataclasses.MISSING:
        value = field.default
    elif field.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        value = field.default_factory()  # type: ignore[misc]
    else:
        return "(required)"
    if field.metadata.get("required"):
        return "(required)"
    if dataclasses.is_dataclass(value):
        return "(section)"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + ", ".join(str(v) for v in value) + "]" if value else "[]"
    if isinstance(value, dict):
        return "{}"
    return str(value)


def _rows(cls: type, prefix: str = "") -> list[tuple[str, str, str, str]]:
    hints = typing.get_type_hints(cls)
    rows = []
    for f in dataclasses.fields(cls):
        if not f.init or f.metadata.get("internal"):
            continue
        tp = hints[f.name]
        rows.append((prefix + yaml_key(f), describe(tp), _default(f), f.metadata.get("doc", "")))
        inner = None
        if dataclasses.is_dataclass(tp):
            inner = tp
        elif typing.get_origin(tp) in (list, dict) and dataclasses.is_dataclass(typing.get_args(tp)[-1]):
            inner = typing.get_args(tp)[-1]
        if inner is not None:
            sep = "[]." if typing.get_origin(tp) is list else ".NAME." if typing.get_origin(tp) is dict else "."
            rows.extend(_rows(inner, prefix + yaml_key(f) + sep))
    return rows


def _table(rows: list[tuple[str, ...]], header: tuple[str, ...]) -> str:
    def cell(text: str) -> str:
        return text.replace("|", "\\|")

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def config_reference() -> str:
    rows = [(f"`{k}`", t, f"`{d}`", doc) for k, t, d, doc in _rows(Config)]
    return _table(rows, ("key", "type", "default", "what it does"))


def steps_reference() -> str:
    """The steps a rule may use, and what each needs, gives and takes away (which decides where it may go)."""
    def names(facts: frozenset[str]) -> str:
        return ", ".join(f"`{f}`" for f in FACTS if f in facts) or "-"

    rows = [(f"`{s.name}`", s.doc, names(s.needs), names(s.gives), names(s.takes), f"`{s.default_backend}`")
            for s in steps().values()]
    legend = [f"- `{f}`" + (" (every input)" if f in INPUT_FACTS else " (an input may be)" if f in INPUT_MAY else "")
              + f": {text}" for f, text in FACTS.items()]
    return _table(rows, ("step", "what it does", "needs", "gives", "takes away", "default backend")) + "\n\n" + \
        "\n".join(legend)


def stages_reference() -> str:
    parts = []
    for step, kind in steps().items():
        for backend in backends(step):
            cls = stage_class(step, backend)
            default = " (default)" if kind.default_backend == backend else ""
            models = "; needs the `models` extra and weights" if cls.needs_models else ""
            doc = (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""
            parts.append(f"#### `{step}` · backend `{backend}`{default}{models}\n\n{doc}\n")
            rows = [(f"`{k}`", t, f"`{d}`", text) for k, t, d, text in _rows(cls.Options)]
            parts.append(_table(rows, ("option", "type", "default", "what it does")) if rows else "(no options)")
            parts.append("")
    return "\n".join(parts).rstrip()


def cli_reference() -> str:
    from .cli import cli

    parts = []

    def walk(cmd: click.Command, path: list[str]) -> None:
        if isinstance(cmd, click.Group):
            for name in sorted(cmd.commands):
                walk(cmd.commands[name], path + [name])
            return
        ctx = click.Context(cmd, info_name=" ".join(path))
        usage = " ".join(cmd.collect_usage_pieces(ctx))
        parts.append(f"#### `{' '.join(path)}`\n")
        parts.append("```\n" + f"{' '.join(path)} {usage}".rstrip() + "\n```\n")
        parts.append(inspect.cleandoc(cmd.help or "") + "\n")
        opts = []
        for p in cmd.params:
            if isinstance(p, click.Option):
                opts.append((", ".join(f"`{o}`" for o in p.opts), p.help or ""))
        if opts:
            parts.append(_table(opts, ("option", "what it does")) + "\n")

    walk(cli, ["assetd"])
    return "\n".join(parts).rstrip()


GENERATORS = {"config": config_reference, "steps": steps_reference, "stages": stages_reference,
              "cli": cli_reference}
_BLOCK = re.compile(r"(<!-- BEGIN generated: (\w+) -->\n)(.*?)(<!-- END generated: \2 -->)", re.S)


def render(readme: str) -> str:
    def repl(m: re.Match[str]) -> str:
        return m.group(1) + GENERATORS[m.group(2)]() + "\n" + m.group(4)

    return _BLOCK.sub(repl, readme)


def main(argv: list[str] | None = None) -> int:
    if argv and argv[0] in ("-h", "--help"):
        print("python -m pipeline.docs [README]: regenerate the README's reference blocks from the code")
        return 0
    path = Path(argv[0] if argv else Path(__file__).resolve().parents[1] / "README.md")
    text = path.read_text(encoding="utf-8")
    new = render(text)
    if new != text:
        path.write_text(new, encoding="utf-8")
        print(f"updated {path}")
    return 0


def generated_blocks(text: str) -> dict[str, str]:
    return {m.group(2): m.group(3) for m in _BLOCK.finditer(text)}


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

