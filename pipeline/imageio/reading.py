"""Reading an input file's bytes safely: never through a symlink, never a file that changes while read."""
from __future__ import annotations

import os
import stat
from pathlib import Path

from ..errors import InputError, TransientError
from ..text import printable


def read_input(path: Path) -> bytes:
    """The file's bytes; InputError for anything that is not a readable regular file.

    Symlinks are refused (lstat, then O_NOFOLLOW on open, then fstat to check it is the same
    inode); a file replaced or resized while being read raises TransientError (retry later).
    """
    shown = printable(str(path))
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        raise InputError(f"{shown}: file disappeared before it could be read") from None
    except OSError as exc:
        raise InputError(f"{shown}: cannot stat file: {exc.strerror}") from None
    if stat.S_ISLNK(st.st_mode):
        raise InputError(f"{shown}: is a symbolic link; links are never followed")
    if not stat.S_ISREG(st.st_mode):
        raise InputError(f"{shown}: not a regular file")
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    except PermissionError:
        raise InputError(f"{shown}: no permission to read the file") from None
    except FileNotFoundError:
        raise TransientError(f"{shown}: file disappeared while it was being opened") from None
    except OSError as exc:
        if exc.errno == getattr(os, "ELOOP", -1):
            raise InputError(f"{shown}: is a symbolic link; links are never followed") from None
        raise InputError(f"{shown}: cannot open file: {exc.strerror}") from None
    try:
        fst = os.fstat(fd)
        if (fst.st_ino, fst.st_dev) != (st.st_ino, st.st_dev) or not stat.S_ISREG(fst.st_mode):
            raise TransientError(f"{shown}: file was replaced while it was being opened")
        chunks = []
        while True:
            try:
                chunk = os.read(fd, 1 << 22)
            except OSError as exc:
                raise InputError(f"{shown}: read error: {exc.strerror}") from None
            if not chunk:
                break
            chunks.append(chunk)
        data = b"".join(chunks)
        after = os.fstat(fd)
    finally:
        os.close(fd)
    if len(data) != st.st_size or after.st_size != st.st_size or after.st_mtime_ns != st.st_mtime_ns:
        raise TransientError(f"{shown}: file changed while it was read "
                             f"({st.st_size} → {len(data)} bytes); will retry once it settles")
    try:
        now = os.lstat(path)
    except FileNotFoundError:
        raise TransientError(f"{shown}: file was removed while it was read") from None
    if (now.st_ino, now.st_dev) != (st.st_ino, st.st_dev):
        raise TransientError(f"{shown}: file was replaced while it was read")
    if not data:
        raise InputError(f"{shown}: file is empty (0 bytes)")
    return data
