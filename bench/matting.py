"""Matting benchmark of the ``studio`` remove_background backend on synthetic studio shots.

    .venv/bin/python bench/matting.py [--size 1200x800] [--count 3] [--jpeg QUALITY] [--markdown PATH]

For every backdrop kind × subject × seed, generates a shot with known alpha (pipeline.synth), cuts it
out, and reports per backdrop kind: mean IoU of alpha > 0.5, mean absolute alpha error (whole image,
and within 3 px of the true outline, where the error lives), the worst case, and time per image; then overall means against the targets (IoU ≥ 0.97, MAE ≤ 0.02).
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.config import config_from_dict  # noqa: E402
from pipeline.stages.base import Asset, StageContext  # noqa: E402
from pipeline.stages.remove_background import StudioBackground  # noqa: E402
from pipeline.synth import BACKDROPS, SUBJECTS, studio_shot  # noqa: E402

TARGET_IOU = 0.97
TARGET_MAE = 0.02


@dataclass
class Result:
    backdrop: str
    subject: str
    seed: int
    iou: float
    mae: float
    edge_mae: float
    seconds: float


def score(alpha_true: np.ndarray, alpha_out: np.ndarray) -> tuple[float, float]:
    """(IoU of alpha > 0.5, mean absolute alpha error) of an output alpha (0..1) against the truth."""
    t, o = alpha_true > 0.5, alpha_out > 0.5
    union = np.logical_or(t, o).sum()
    iou = float(np.logical_and(t, o).sum() / union) if union else 1.0
    return iou, float(np.abs(alpha_true - alpha_out).mean())


def edge_error(alpha_true: np.ndarray, alpha_out: np.ndarray, radius: int = 3) -> float:
    """Mean absolute alpha error within ``radius`` pixels of the true outline (the part that is hard)."""
    partial = ((alpha_true > 0) & (alpha_true < 1)).astype(np.uint8)
    band = cv2.dilate(partial, np.ones((2 * radius + 1, 2 * radius + 1), np.uint8)) > 0
    return float(np.abs(alpha_true - alpha_out)[band].mean()) if band.any() else 0.0


def jpeg_round_trip(rgb: np.ndarray, quality: int) -> np.ndarray:
    """The shot as a camera JPEG would deliver it (4:2:0 chroma, blocking, ringing)."""
    ok, data = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    return cv2.cvtColor(cv2.imdecode(data, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def run(size: tuple[int, int], count: int, jpeg: int | None = None) -> list[Result]:
    ctx = StageContext(config=config_from_dict({}, Path("/tmp/bench.yaml")))
    stage = StudioBackground(StudioBackground.Options(), ctx)
    results = []
    for backdrop in BACKDROPS:
        for subject in SUBJECTS:
            for seed in range(count):
                shot = studio_shot(backdrop, size, seed=seed, subject=subject)
                rgb = jpeg_round_trip(shot.rgb, jpeg) if jpeg else shot.rgb
                start = time.perf_counter()
                try:
                    (out,) = stage.run(Asset(rgb))
                    alpha = out.matte.astype(np.float32) / 255.0
                except Exception as exc:  # a failure is a result too: score it as an empty matte
                    print(f"{backdrop}/{subject}/{seed}: {exc}", file=sys.stderr)
                    alpha = np.zeros_like(shot.alpha)
                seconds = time.perf_counter() - start
                iou, mae = score(shot.alpha, alpha)
                results.append(Result(backdrop, subject, seed, iou, mae, edge_error(shot.alpha, alpha), seconds))
    return results


def table(results: list[Result], size: tuple[int, int], jpeg: int | None = None) -> str:
    lines = [f"Studio backend on synthetic shots, {size[0]}×{size[1]}, "
             f"{len({(r.subject, r.seed) for r in results})} shots per backdrop"
             + (f", through JPEG quality {jpeg}" if jpeg else ", lossless"), ""]
    lines.append("| backdrop | shots | mean IoU | mean MAE | edge MAE | worst IoU (shot) | worst MAE | s / image |")
    lines.append("|---|---:|---:|---:|---:|---|---:|---:|")
    for backdrop in BACKDROPS:
        rs = [r for r in results if r.backdrop == backdrop]
        if not rs:
            continue
        worst = min(rs, key=lambda r: r.iou)
        lines.append(
            f"| {backdrop} | {len(rs)} | {np.mean([r.iou for r in rs]):.4f} | {np.mean([r.mae for r in rs]):.4f} | "
            f"{np.mean([r.edge_mae for r in rs]):.4f} | "
            f"{worst.iou:.4f} ({worst.subject} seed {worst.seed}) | {max(r.mae for r in rs):.4f} | "
            f"{np.mean([r.seconds for r in rs]):.3f} |"
        )
    iou = float(np.mean([r.iou for r in results]))
    mae = float(np.mean([r.mae for r in results]))
    lines += ["", "| overall | value | target | |", "|---|---:|---:|---|",
              f"| mean IoU (alpha > 0.5) | {iou:.4f} | ≥ {TARGET_IOU} | {'pass' if iou >= TARGET_IOU else 'MISS'} |",
              f"| mean abs alpha error | {mae:.4f} | ≤ {TARGET_MAE} | {'pass' if mae <= TARGET_MAE else 'MISS'} |",
              f"| edge MAE (within 3 px of the outline) | {np.mean([r.edge_mae for r in results]):.4f} | | |",
              f"| time per image | {np.mean([r.seconds for r in results]):.3f} s | | |"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="1200x800", help="shot size WIDTHxHEIGHT (default 1200x800)")
    parser.add_argument("--count", type=int, default=3, help="seeds per backdrop and subject (default 3)")
    parser.add_argument("--jpeg", type=int, metavar="QUALITY", help="pass each shot through JPEG at this quality")
    parser.add_argument("--markdown", type=Path, help="also write the tables to this file")
    args = parser.parse_args(argv)
    w, h = (int(v) for v in args.size.lower().split("x"))
    results = run((w, h), args.count, args.jpeg)
    text = table(results, (w, h), args.jpeg)
    print(text)
    if args.markdown:
        args.markdown.write_text(text + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
