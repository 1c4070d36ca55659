"""Reading inputs and writing encoded outputs: the only package that talks to image codecs.

``reading.read_input`` takes a path and returns the file's bytes (never following symlinks);
``decoding.decode`` turns bytes into a ``Decoded`` (sRGB working space, orientation applied; of a multi-image
file, the image a viewer shows) and refuses a blank result; ``colour`` converts embedded profiles to sRGB;
``encoding.encode`` turns pixels into the bytes of a channel's format; ``metadata`` decides which EXIF / XMP /
IPTC an output keeps; ``raw`` runs LibRaw in a disposable subprocess. Which formats exist, and which are
accepted, is ``pipeline.formats``' one table.
"""
from __future__ import annotations

from ..errors import InputError
from ..formats import EXTENSION_FORMATS, INPUT_EXTENSIONS, RAW_EXTENSIONS, sniff
from ..text import printable
from .colour import SRGB_ICC
from .decoding import Decoded, check_signal, decode
from .encoding import clear_transparent, encode
from .reading import read_input

__all__ = [
    "EXTENSION_FORMATS", "INPUT_EXTENSIONS", "RAW_EXTENSIONS", "SRGB_ICC", "Decoded", "InputError", "check_signal",
    "clear_transparent", "decode", "encode", "printable", "read_input", "sniff",
]
