"""Make ``import torchvision`` work when its compiled ops do not match the installed torch.

spandrel imports torchvision at import time, and transformers does whenever it is installed. A
PyPI torchvision wheel is built against the CUDA torch; next to the CPU torch wheel its ``_C``
library cannot load, and ``torchvision/_meta_registrations.py`` then fails on
``operator torchvision::nms does not exist``, taking every model backend down with it.

``ensure_torchvision_importable()`` tries to load the real ``_C`` library first: on a machine with
matching torch and torchvision (any GPU install) it succeeds and nothing else happens. Only when it
cannot load are the two op schemas that the meta registrations need declared, so the pure-Python
parts of torchvision import (nothing assetd uses needs the compiled ops).
"""
from __future__ import annotations

import glob
import importlib.util
import logging
import os
import sys
import threading

log = logging.getLogger("assetd.models")
_lock = threading.Lock()
_done = False
_library = None  # keeps the fragment registration alive


def ensure_torchvision_importable() -> bool:
    """Declare torchvision's ``nms``/``qnms`` schemas when its compiled ops cannot load.

    Returns True when the shim was applied, False when nothing was needed (no torchvision,
    already imported, or its real ops loaded). Safe to call any number of times.
    """
    global _done, _library
    with _lock:
        if _done:
            return _library is not None
        _done = True
        if "torchvision" in sys.modules:
            return False
        spec = importlib.util.find_spec("torchvision")
        if spec is None or spec.origin is None:
            return False
        import torch

        libs = glob.glob(os.path.join(os.path.dirname(spec.origin), "_C.*"))
        if libs:
            try:
                torch.ops.load_library(libs[0])
                return False  # the real ops are registered now; torchvision imports as usual
            except (OSError, RuntimeError):
                pass
        try:
            torch.ops.torchvision.nms  # registered by some other means
            return False
        except (AttributeError, RuntimeError):
            pass
        lib = torch.library.Library("torchvision", "FRAGMENT")
        lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        _library = lib
        log.debug("torchvision's compiled ops do not match this torch; declared nms/qnms so it imports")
        return True
