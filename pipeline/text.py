"""Text fit for a one-line message: file names with control characters escaped, library messages cleaned.

Plain string functions with no dependencies, so the notifier and the CLI can escape a name without loading codecs.
"""
from __future__ import annotations

import re


def printable(name: str) -> str:
    """A file name safe to put in a one-line message: control characters escaped (\\n, \\x1b)."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(name))


def format_duration(seconds: float) -> str:
    """``45s``, ``3m 07s``, ``1h 02m 05s``."""
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h {m:02d}m {s:02d}s" if h else f"{m}m {s:02d}s" if m else f"{s}s"


def plural(n: int, word: str) -> str:
    """``1 output``, ``2 outputs``."""
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


_OBJECT_REPR = re.compile(r"\s*<[^<>]* at 0x[0-9a-fA-F]+>")  # "<_io.BytesIO object at 0x7f…>"
_BYTES_REPR = re.compile(r"""\bb(['"])(.*?)\1""")  # b'Input/output error'


def clean_text(text: str) -> str:
    """A library's message fit for a one-line error: no object or bytes reprs, whitespace collapsed."""
    text = _BYTES_REPR.sub(lambda m: m.group(2), _OBJECT_REPR.sub("", text))
    return " ".join(text.split())


def reason(exc: BaseException) -> str:
    """An exception as "Type: message" for a one-line error (cleaned, at most 200 characters of message)."""
    text = clean_text(str(exc)) or "no detail"
    return f"{type(exc).__name__}: {text[:200]}"
