"""``make bench``: every CPU benchmark, then BENCHMARKS.md's measured sections rewritten with the machine.

    .venv/bin/python bench/run.py [--quick]

Each benchmark writes its Markdown to .bench/; this script stitches them between the
``<!-- BEGIN bench: NAME -->`` / ``<!-- END bench: NAME -->`` markers of BENCHMARKS.md, with the date and
the machine (CPU model, cores, memory) they were measured on. Text outside the markers is kept.
"""
from __future__ import annotations

import argparse
import re
import subprocess
import sys
import time
from pathlib import Path

from common import machine as common_machine

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / ".bench"


def machine() -> str:
    return common_machine("no GPU used")


def run(name: str, args: list[str]) -> str:
    target = OUT / f"{name}.md"
    print(f"== {name}: {' '.join(args)}", flush=True)
    subprocess.run([sys.executable, *args, "--markdown", str(target)], cwd=ROOT, check=True)
    return target.read_text()


def splice(text: str, name: str, body: str) -> str:
    pattern = re.compile(rf"(<!-- BEGIN bench: {name} -->\n)(.*?)(<!-- END bench: {name} -->)", re.S)
    if not pattern.search(text):
        return text + f"\n<!-- BEGIN bench: {name} -->\n{body}<!-- END bench: {name} -->\n"
    return pattern.sub(lambda m: m.group(1) + body + m.group(3), text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes (a smoke run; not for BENCHMARKS.md)")
    parser.add_argument("--splice", nargs=2, metavar=("NAME", "FILE"),
                        help="only put FILE (a benchmark's Markdown) into the NAME section of BENCHMARKS.md")
    args = parser.parse_args(argv)
    OUT.mkdir(exist_ok=True)
    path = ROOT / "BENCHMARKS.md"
    if args.splice:
        name, source = args.splice
        text = path.read_text() if path.exists() else "# Benchmarks\n"
        path.write_text(splice(text, name, f"Measured {time.strftime('%Y-%m-%d')}.\n\n" + Path(source).read_text()))
        print(f"updated the {name} section of {path}")
        return 0
    stamp = f"Measured {time.strftime('%Y-%m-%d')} on: {machine()}.\n\n"
    results = {
        "matting": run("matting", ["bench/matting.py"] + (["--count", "1", "--size", "600x400"] if args.quick else [])),
        "cutout": run("cutout", ["bench/cutout.py"] + (["--size", "1200x800", "--runs", "1"] if args.quick else [])),
        "speed": run("speed", ["bench/speed.py"] + (["--size", "2400x1600", "--runs", "1"] if args.quick else [])),
        "edits": run("edits", ["bench/edits.py"] + (["--quick"] if args.quick else [])),
        "overhead": run("overhead", ["bench/overhead.py"] + (["--files", "1000"] if args.quick else [])),
        "seams": run("seams", ["bench/seams.py"] + (["--composite-size", "600x450"] if args.quick else [])),
        "framing": run("framing", ["bench/framing.py"] + (["--quick"] if args.quick else [])),
        "metrics": run("metrics", ["bench/metrics.py"] + (["--jobs", "1000", "--scrapes", "5"] if args.quick else [])),
        "review": run("review", ["bench/review.py"] + (["--quick"] if args.quick else [])),
        "scaleout": run("scaleout", ["bench/scaleout.py"] + (["--quick"] if args.quick else [])),
    }
    if args.quick:
        print("quick run: BENCHMARKS.md left unchanged")
        return 0
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    for name, body in results.items():
        text = splice(text, name, stamp + body)
    path.write_text(text)
    print(f"updated {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
