"""Full-chain speed and memory on one 24-megapixel JPEG, against the unavoidable codec work.

    .venv/bin/python bench/speed.py [--size 6000x4000] [--markdown PATH]

The chain (studio cut-out → scene → four crops with outpaint → upscale to 3000 px) and the issue's outputs
(cutouts PNG, webshop JPEG 2000 px, Instagram JPEG 1350 px ×2, banners WebP 1920 px) run in a fresh
subprocess through ``assetd process`` machinery (store, worker, atomic writes), so its peak RSS is the
chain's alone. In the same run, the baseline decodes the input and encodes the same output pixels with the
same encoders and settings; the figure is the ratio of the two (target ≤ 4×) and the peak RSS (≤ 2 GB).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from pipeline.demo import example_rule  # noqa: E402 - after the path set-up above

from common import emit  # noqa: E402

CONFIG = """\
database: state/assetd.sqlite3
rules_dir: rules
channels:
  cutouts:   {path: out/cutouts,   format: png}
  webshop:   {path: out/webshop,   format: jpeg, quality: 90, long_edge: 2000, background: "#ffffff"}
  instagram: {path: out/instagram, format: jpeg, quality: 88, long_edge: 1350}
  banners:   {path: out/banners,   format: webp, quality: 85, long_edge: 1920}
"""
RULE = example_rule("10-products.yaml", options={"place_in_scene": {"scene": "scene.jpg"}},
                    without_channels=("print",))  # the shipped products rule; this workspace has no print channel


def peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def prepare(work: Path, size: tuple[int, int]) -> Path:
    from PIL import Image

    from pipeline.synth import scene_image, studio_shot

    work.mkdir(parents=True, exist_ok=True)
    (work / "rules").mkdir(exist_ok=True)
    (work / "config.yaml").write_text(CONFIG)
    (work / "rules" / "products.yaml").write_text(RULE)
    shot = work / f"shot_{size[0]}x{size[1]}.jpg"
    if not shot.exists():
        Image.fromarray(scene_image((3000, 2000), seed=2)).save(work / "scene.jpg", quality=90)
        Image.fromarray(studio_shot("gradient", size=size, seed=7, subject="bottle").rgb).save(shot, quality=92)
    return shot


def child(work: Path, shot: Path) -> dict:
    """Runs in a fresh process: the chain, then the codec baseline on the same pixels."""
    import shutil

    from pipeline.config import load_config
    from pipeline.imageio import decode, encode, read_input
    from pipeline.oneshot import run_once
    from pipeline.rules import load_rules
    from pipeline.store import Store

    for sub in ("state", "out"):
        shutil.rmtree(work / sub, ignore_errors=True)
    config = load_config(work / "config.yaml")
    rules = load_rules(config)
    t0, c0 = time.perf_counter(), time.process_time()
    (result,) = run_once(config, rules, [shot], rule_name="products")
    chain_seconds, chain_cpu = time.perf_counter() - t0, time.process_time() - c0
    assert result["status"] == "done", result
    rss_chain = peak_rss_mb()
    store = Store(config.database)
    steps = {s["step"]: round(s["seconds"], 3) for s in store.steps(store.jobs()[0].id)}
    store.close()

    # Baseline: decode the input, encode the very same output pixels with the same encoders.
    outputs = []
    for o in result["outputs"]:
        from PIL import Image

        with Image.open(o["path"]) as im:
            outputs.append((config.channels[o["channel"]], __import__("numpy").asarray(im.convert(
                "RGBA" if im.mode == "RGBA" else "RGB"))))
    t0, c0 = time.perf_counter(), time.process_time()
    decode(read_input(shot), str(shot), config.input)
    decode_seconds = time.perf_counter() - t0
    t1 = time.perf_counter()
    for channel, pixels in outputs:
        encode(pixels, channel, None)
    encode_seconds = time.perf_counter() - t1
    codec_cpu = time.process_time() - c0
    return {"chain_seconds": chain_seconds, "decode_seconds": decode_seconds, "encode_seconds": encode_seconds,
            "chain_cpu": chain_cpu, "codec_cpu": codec_cpu,
            "steps": steps, "peak_rss_mb": rss_chain, "outputs": len(outputs)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="6000x4000")
    parser.add_argument("--runs", type=int, default=2, help="chain runs (best is reported)")
    parser.add_argument("--markdown", type=Path)
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    w, h = (int(v) for v in args.size.lower().split("x"))
    work = ROOT / ".bench" / "speed"
    if args.child:
        print(json.dumps(child(work, args.child)))
        return 0
    shot = prepare(work, (w, h))
    runs = []
    for _ in range(args.runs):
        out = subprocess.run([sys.executable, __file__, "--child", str(shot), "--size", args.size],
                             capture_output=True, text=True, check=True, env=dict(os.environ, PYTHONHASHSEED="0"))
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    best = min(runs, key=lambda r: r["chain_seconds"])
    codec = best["decode_seconds"] + best["encode_seconds"]
    ratio = best["chain_seconds"] / codec
    rss = max(r["peak_rss_mb"] for r in runs)
    lines = [
        f"Input: one {w}×{h} JPEG ({w * h / 1e6:.0f} MP, q92), full chain, 4 crops with outpaint, "
        f"{best['outputs']} outputs (cutouts PNG, webshop JPEG, Instagram JPEG ×2, banners WebP); best of {len(runs)} runs.",
        "",
        "| measure | value | target |",
        "|---|---|---|",
        f"| whole job (read, decode, chain, encode, atomic writes, bookkeeping) | {best['chain_seconds']:.2f} s | |",
        f"| codec baseline: decode input + encode the same outputs | {codec:.2f} s "
        f"({best['decode_seconds']:.2f} + {best['encode_seconds']:.2f}) | |",
        f"| ratio job / codec, wall clock | **{ratio:.2f}×** | ≤ 4× ({'met' if ratio <= 4 else 'missed'}) |",
        f"| ratio job / codec, CPU time (the job encodes its outputs in parallel, the baseline one by one) | "
        f"{best['chain_cpu'] / best['codec_cpu']:.2f}× ({best['chain_cpu']:.1f} s / {best['codec_cpu']:.1f} s) | |",
        f"| peak RSS of the process | **{rss:.0f} MB** | ≤ 2048 MB ({'met' if rss <= 2048 else 'missed'}) |",
        "",
        "Per step (seconds): " + ", ".join(f"{k} {v:.2f}" for k, v in best["steps"].items()),
    ]
    emit("\n".join(lines), args.markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
