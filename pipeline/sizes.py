"""Channel sizes: the pixels a channel's outputs must have, and the one fit that gives them exactly.

A channel states its pixels with three keys (``config.ChannelConfig``): ``size``, the exact pixels of its
outputs ("1080x1350", or one per ratio: {"4:5": "1080x1350", "9:16": "1080x1920"}); ``min_long_edge``, a
floor; ``long_edge``, a ceiling (it only shrinks). Enlarging is the upscale step's job: when a rule loads,
the step learns from the channels it feeds how many pixels each ratio needs (``need_long_edge``, gathered by
``stages.subject.resolve_size``). When an output renders, ``output_size`` fits the image to the channel once:
a shrink, or a rounding pixel, never an enlargement; ``fit_problem`` says why an image cannot be fitted
(its job then fails naming the channel, the ratio and both sizes, and publishes none of its outputs).
"""
from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from .stages.framing import largest_size, parse_ratio, ratio_error

if TYPE_CHECKING:
    from .config import ChannelConfig

ROUNDING = 1.0  # pixels a size may be off its ratio, and an image short of its size, and still fit
_SIZE = re.compile(r"^\s*(\d+)\s*[xX×]\s*(\d+)\s*$")


def parse_size(text: Any) -> tuple[int, int]:
    """'1080x1350' → (1080, 1350); ValueError for anything else."""
    match = _SIZE.match(str(text)) if isinstance(text, str) else None
    if not match or 0 in (int(match[1]), int(match[2])):
        raise ValueError(f"expected a size like '1080x1350' (width x height in pixels), got {text!r}")
    return int(match[1]), int(match[2])


def ratio_key(ratio: str) -> str:
    """A ratio as one key ('8:10' and '4:5' are both '4:5')."""
    w, h = parse_ratio(ratio)
    return f"{w}:{h}"


def size_ratio_problem(size: tuple[int, int], ratio: str) -> str | None:
    """Why ``size`` is not of ``ratio`` (beyond a pixel of rounding), or None."""
    rw, rh = parse_ratio(ratio)
    if ratio_error(size[0], size[1], (rw, rh)) <= ROUNDING:
        return None
    w, h = size
    fits = largest_size(w, h, (rw, rh))
    return f"{w}x{h} is not {ratio} (the largest {ratio} in it is {fits[0]}x{fits[1]})"


def check_size(value: Any) -> str | None:
    """The ``size`` key's check: one size, or a mapping of ratios to sizes, each of its ratio."""
    if isinstance(value, str):
        try:
            parse_size(value)
        except ValueError as exc:
            return str(exc)
        return None
    if not value:
        return "expected a size like '1080x1350', or ratios mapped to sizes like {'4:5': '1080x1350'}"
    for key, text in value.items():
        try:
            ratio_key(key)
        except ValueError as exc:
            hint = " (YAML reads an unquoted 4:5 as a number: put ratios in quotes)" if key.isdigit() else ""
            return f"{exc}{hint}"
        try:
            size = parse_size(text)
        except ValueError as exc:
            return f"{key!r}: {exc}"
        problem = size_ratio_problem(size, key)
        if problem:
            return f"{key!r}: {problem}"
    return None


def size_for(channel: "ChannelConfig", ratio: str | None) -> tuple[int, int] | None:
    """The exact size of ``channel``'s outputs of ``ratio``; None when it sets none (for that ratio)."""
    if channel.size is None:
        return None
    if isinstance(channel.size, str):
        return parse_size(channel.size)
    if ratio is None:
        return None
    wanted = ratio_key(ratio)
    return next((parse_size(text) for key, text in channel.size.items() if ratio_key(key) == wanted), None)


def sized_ratios(channel: "ChannelConfig") -> list[str]:
    """The ratios a per-ratio ``size`` names (empty for one size, or none)."""
    return list(channel.size) if isinstance(channel.size, dict) else []


def needs_pixels(channel: "ChannelConfig") -> bool:
    """Does the channel ask for a least number of pixels (``size`` or ``min_long_edge``)?"""
    return channel.size is not None or channel.min_long_edge is not None


def need_text(channel: "ChannelConfig", ratio: str | None) -> str:
    """What the channel needs of an output of ``ratio``, in words: '1080x1350 px' or 'a long edge of 3000 px'."""
    size = size_for(channel, ratio)
    if size is not None:
        return f"{size[0]}x{size[1]} px"
    if isinstance(channel.size, dict):
        return ", ".join(f"{text} px at {key}" for key, text in channel.size.items())
    return f"a long edge of at least {channel.min_long_edge} px (min_long_edge)"


def least_long_edge(channel: "ChannelConfig", ratio: str | None) -> int | None:
    """The long edge an output of ``ratio`` must reach for ``channel`` (its size's, else min_long_edge); None:
    any will do."""
    size = size_for(channel, ratio)
    return max(size) if size is not None else channel.min_long_edge


def need_long_edge(channel: "ChannelConfig", ratio: str | None) -> int | None:
    """The long edge the upscale step aims at for ``channel`` at ``ratio``: what it needs (``least_long_edge``),
    else its ``long_edge`` (a channel that only caps its outputs is enlarged up to its cap, as before sizes)."""
    return least_long_edge(channel, ratio) or channel.long_edge


def fit_problem(width: int, height: int, channel: "ChannelConfig", ratio: str | None) -> str | None:
    """Why an image of width × height cannot be fitted to ``channel`` without enlarging it (or distorting
    it) beyond a pixel of rounding; None when it can."""
    size = size_for(channel, ratio)
    if size is not None:
        w, h = size
        if width + ROUNDING < w or height + ROUNDING < h:
            return f"needs {w}x{h} px, the image has {width}x{height}"
        if ratio_error(w, h, (width, height)) > ROUNDING + 0.5:  # the image's own rounding, and the size's
            return f"needs {w}x{h} px, the image has {width}x{height}, another shape"
        return None
    if channel.min_long_edge is not None and max(width, height) < channel.min_long_edge:
        return (f"needs a long edge of at least {channel.min_long_edge} px (min_long_edge), "
                f"the image has {width}x{height}")
    return None


def output_size(width: int, height: int, channel: "ChannelConfig", ratio: str | None) -> tuple[int, int]:
    """The size an output of width × height is written at: the channel's exact size, else shrunk to its
    ``long_edge`` (never enlarged), else as it is. Call ``fit_problem`` first."""
    size = size_for(channel, ratio)
    if size is not None:
        return size
    if channel.long_edge and max(width, height) > channel.long_edge:
        from .pixels import fit_long_edge

        return fit_long_edge(width, height, channel.long_edge)
    return width, height


def channel_size_problems(channel: "ChannelConfig") -> list[str]:
    """What a channel's size keys cannot mean together (each without the ``channels.NAME.`` prefix)."""
    problems = []
    if channel.size is not None and channel.long_edge is not None:
        problems.append("size: set size (exact pixels) or long_edge (a ceiling), not both")
    if channel.size is not None and channel.min_long_edge is not None:
        problems.append("min_long_edge: size already gives the exact pixels; set one of them")
    if (channel.min_long_edge is not None and channel.long_edge is not None
            and channel.min_long_edge > channel.long_edge):
        problems.append(f"min_long_edge: {channel.min_long_edge} is more than long_edge {channel.long_edge}")
    return problems
