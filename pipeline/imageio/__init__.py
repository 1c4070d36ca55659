"""Reading inputs and writing encoded outputs: the only package that talks to image codecs."""
from __future__ import annotations

from ..errors import InputError
from .decode import (
    EXTENSION_FORMATS,
    INPUT_EXTENSIONS,
    RAW_EXTENSIONS,
    SRGB_ICC,
    Decoded,
    check_signal,
    clear_transparent,
    decode,
    encode,
    printable,
    read_input,
    sniff,
)

__all__ = [
    "EXTENSION_FORMATS", "INPUT_EXTENSIONS", "RAW_EXTENSIONS", "SRGB_ICC", "Decoded", "InputError", "check_signal",
    "clear_transparent", "decode", "encode", "printable", "read_input", "sniff",
]
