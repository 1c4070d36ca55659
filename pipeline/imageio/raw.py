"""Camera RAW decoding (LibRaw via rawpy) in a disposable subprocess with a memory limit.

LibRaw is a large C++ parser of dozens of vendor formats; a corrupt file can crash it
(segfault, abort) or make it allocate without bound. So it never runs in the daemon: each RAW
is decoded by a fresh ``python raw.py`` child whose address space is capped
(``RLIMIT_AS`` = ``input.raw_memory_mb``, set by the child itself before it imports rawpy, so
no ``preexec_fn`` runs in a threaded parent). A crash or an out-of-memory fails that job only.

Protocol: the parent writes the file's bytes to the child's stdin and closes it; the child
answers one JSON line on stdout, then (on success) the pixels as raw native-endian uint16
H×W×3 bytes. Exit status 0: decoded; 2: LibRaw refused the file (JSON "error");
3: out of memory; killed by a signal: crashed.

Decoding: camera white balance, AHD demosaic, 16 bits per channel, sRGB primaries with the
sRGB tone curve (gamma 2.4 / slope 12.92), no auto-brightening (the exposure as shot,
colorimetric: a linear 0.18 grey lands on sRGB 0.46), orientation
(the RAW's flip) applied by LibRaw. ``half_size`` skips demosaicing (2×2 bins), 4× fewer pixels.

This file is also the child's script: it imports nothing from ``pipeline`` so it runs alone.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass, field
from typing import Any, Sequence

# Exit statuses of the child.
EXIT_REFUSED = 2
EXIT_NO_MEMORY = 3
DEFAULT_TIMEOUT_S = 600.0


class RawDecodeError(Exception):
    """The RAW could not be decoded; the message is for the studio (the caller adds the file name)."""


@dataclass
class RawResult:
    pixels: Any  # np.ndarray H×W×3 uint16, sRGB, upright
    notes: dict[str, Any] = field(default_factory=dict)


def child_command(half_size: bool, memory_mb: int) -> list[str]:
    """The command line of a decoding child (``-I``: ignore PYTHON* variables and user site)."""
    cmd = [sys.executable, "-I", os.path.abspath(__file__), "--memory-mb", str(memory_mb)]
    if half_size:
        cmd.append("--half-size")
    return cmd


def _child_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "LANG", "LC_ALL", "TMPDIR", "HOME")}
    # RLIMIT_AS counts virtual memory: keep thread stacks and malloc arenas from eating the budget.
    env.update(OMP_NUM_THREADS="2", OPENBLAS_NUM_THREADS="1", MALLOC_ARENA_MAX="2")
    return env


def decode_raw(data: bytes, *, half_size: bool, memory_mb: int, timeout_s: float = DEFAULT_TIMEOUT_S,
               command: Sequence[str] | None = None) -> RawResult:
    """Decode RAW bytes in a child process. Raises RawDecodeError with a one-line reason.

    ``command`` replaces the child's command line (tests inject crashing children with it).
    """
    import numpy as np

    cmd = list(command) if command is not None else child_command(half_size, memory_mb)
    with tempfile.TemporaryFile() as errfile:
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=errfile,
                                env=_child_env(), close_fds=True, start_new_session=True)
        timed_out = threading.Event()

        def _kill() -> None:
            timed_out.set()
            proc.kill()

        timer = threading.Timer(timeout_s, _kill)
        timer.start()
        pixels = None
        header: dict[str, Any] = {}
        try:
            try:
                assert proc.stdin is not None and proc.stdout is not None
                proc.stdin.write(data)
                proc.stdin.close()
            except BrokenPipeError:  # the child died before reading everything; its status says why
                pass
            line = proc.stdout.readline()
            try:
                header = json.loads(line) if line.strip() else {}
            except ValueError:
                header = {}
            if "shape" in header:
                pixels = np.empty(tuple(header["shape"]), dtype=np.uint16)
                view = memoryview(pixels).cast("B")
                got = 0
                while got < len(view):
                    n = proc.stdout.readinto(view[got:])
                    if not n:
                        break
                    got += n
                if got < len(view):
                    pixels = None
            proc.stdout.close()
            status = proc.wait()
        finally:
            timer.cancel()
            timer.join()
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        errfile.seek(0)
        stderr_tail = errfile.read()[-2000:].decode("utf-8", "replace").strip().splitlines()
    last = stderr_tail[-1] if stderr_tail else ""
    if timed_out.is_set():
        raise RawDecodeError(f"RAW decoder did not finish within {timeout_s:.0f} s")
    if status < 0:
        sig = signal.Signals(-status).name if -status in signal.valid_signals() else str(-status)
        raise RawDecodeError(f"RAW decoder crashed ({sig}): corrupt file, or it ran out of memory "
                             f"(raw_memory_mb: {memory_mb})")
    if status == EXIT_NO_MEMORY:
        raise RawDecodeError(f"RAW decoder ran out of memory (raw_memory_mb: {memory_mb})")
    if status == EXIT_REFUSED:
        raise RawDecodeError(str(header.get("error") or "not a RAW file LibRaw can read"))
    if status != 0 or pixels is None:
        detail = f": {last}" if last else ""
        raise RawDecodeError(f"RAW decoder failed (exit status {status}){detail}")
    notes = {k: v for k, v in header.items() if k != "shape"}
    return RawResult(pixels=pixels, notes=notes)


# ---------------------------------------------------------------- the child

def _child_main(argv: list[str]) -> int:
    import argparse
    import resource

    parser = argparse.ArgumentParser()
    parser.add_argument("--memory-mb", type=int, required=True)
    parser.add_argument("--half-size", action="store_true")
    args = parser.parse_args(argv)
    limit = args.memory_mb * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    out = sys.stdout.buffer

    def answer(status: int, **header: Any) -> int:
        out.write(json.dumps(header).encode() + b"\n")
        out.flush()
        return status

    try:
        data = sys.stdin.buffer.read()
        import io

        import numpy as np
        import rawpy

        try:
            with rawpy.imread(io.BytesIO(data)) as raw:
                rgb = raw.postprocess(
                    use_camera_wb=True,
                    output_bps=16,
                    output_color=rawpy.ColorSpace.sRGB,
                    gamma=(2.4, 12.92),
                    half_size=args.half_size,
                    demosaic_algorithm=rawpy.DemosaicAlgorithm.AHD,
                    no_auto_bright=True,
                )
                info = {
                    "flip": int(raw.sizes.flip),
                    "raw_size": [int(raw.sizes.raw_width), int(raw.sizes.raw_height)],
                    "camera_wb": [round(float(v), 4) for v in raw.camera_whitebalance],
                }
        except (rawpy.LibRawUnsufficientMemoryError, rawpy.LibRawMemPoolOverflowError, rawpy.LibRawTooBigError,
                MemoryError):
            return answer(EXIT_NO_MEMORY, error="out of memory")
        except rawpy.LibRawFileUnsupportedError:
            return answer(EXIT_REFUSED, error="not a RAW format LibRaw knows (unsupported or not a RAW file)")
        except rawpy.LibRawIOError as exc:
            return answer(EXIT_REFUSED, error=f"LibRaw could not read the image data ({_libraw_text(exc)}): "
                                              "the file is cut short, or holds metadata only")
        except rawpy.LibRawError as exc:
            return answer(EXIT_REFUSED, error=f"LibRaw could not decode it ({type(exc).__name__}: "
                                              f"{_libraw_text(exc)})")
        rgb = np.ascontiguousarray(rgb, dtype=np.uint16)
        answer(0, shape=list(rgb.shape), **info)
        out.write(memoryview(rgb).cast("B"))
        out.flush()
        return 0
    except MemoryError:
        return answer(EXIT_NO_MEMORY, error="out of memory")


def _libraw_text(exc: BaseException) -> str:
    """LibRaw's message: rawpy passes it as bytes, whose repr (b'...') must not reach the studio."""
    arg = exc.args[0] if len(exc.args) == 1 else None
    text = arg.decode("utf-8", "replace") if isinstance(arg, bytes) else str(exc)
    return " ".join(text.split()) or type(exc).__name__


if __name__ == "__main__":
    sys.exit(_child_main(sys.argv[1:]))
