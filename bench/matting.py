"""Matting benchmark of the default ``remove_background`` (backend ``studio``): real subjects and synthetic shapes.

    .venv/bin/python bench/matting.py [--size 1200x800] [--count 3] [--jpeg QUALITY]
                                      [--real DIR] [--real-size 2000x1500] [--markdown PATH]

Two sets, each cut out twice: with the default options (the subject prior is used when it is in the model
cache: ``assetd models pull``) and with ``prior: off`` (the backdrop model alone).

- **Real subjects** (``--real``, default ``../shared/data/u2net-dev``: photos with published masks): each
  composited onto white, grey, pastel and gradient sweeps (``pipeline.synth.composite_shot``: the mask
  hardened to an opaque object with a 1-3 px soft edge, a contact shadow, sensor noise, JPEG q90), so the
  truth is exact. Skipped with a note when the folder is not there.
- **Synthetic shapes** (``pipeline.synth.studio_shot``): bottles, boxes, mugs and shoes on five backdrop
  kinds, exact analytic truth.

Per set: mean and worst IoU of alpha > 0.5; edge MAE (mean |alpha error| within 3 px of the true outline);
the largest share of opaque (alpha > 0.5) pixels outside the true subject, relative to the subject's area;
the median colour contamination of the soft edge (0: the subject's true colour, 1: the backdrop's,
negative: backdrop colour removed beyond the subject's, a dark rim on light paper); the mean share of the
outline where the prior and the backdrop model disagree; time per image. Then two targeted checks: a
wrap-around near-white label 7 levels above white paper (``label_shot``: share of its pixels more than 2 px
inside the outline left opaque) and the paper inside mug handles (share left opaque).
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import emit  # noqa: E402

from pipeline.config import config_from_dict  # noqa: E402
from pipeline.prior import prior_file  # noqa: E402
from pipeline.stages.base import Asset, StageContext  # noqa: E402
from pipeline.stages.remove_background import StudioBackground  # noqa: E402
from pipeline.synth import (BACKDROPS, SUBJECTS, SWEEPS, Shot, composite_shot, jpeg_round_trip,  # noqa: E402
                            label_shot, studio_shot)

TARGETS = {  # real subjects, default options (the issue that introduced the prior)
    "mean IoU": 0.98, "worst IoU": 0.95, "edge MAE": 0.12, "opaque outside": 0.03,
    "synthetic mean IoU": 0.998, "label opaque": 0.99, "handle opaque": 0.01,
}
DEFAULT_REAL = ROOT.parent / "shared" / "data" / "u2net-dev"


@dataclass
class Result:
    name: str  # the shot: subject / backdrop (/ seed)
    iou: float
    edge_mae: float
    outside: float  # opaque pixels outside the true subject / the subject's area
    contamination: float  # median over the soft edge
    uncertain: float | None  # share of the outline where the prior and the backdrop model disagree
    seconds: float


def edge_error(alpha_true: np.ndarray, alpha_out: np.ndarray, radius: int = 3) -> float:
    """Mean absolute alpha error within ``radius`` pixels of the true outline (the part that is hard)."""
    partial = ((alpha_true > 0) & (alpha_true < 1)).astype(np.uint8)
    band = cv2.dilate(partial, np.ones((2 * radius + 1, 2 * radius + 1), np.uint8)) > 0
    return float(np.abs(alpha_true - alpha_out)[band].mean()) if band.any() else 0.0


def local_mean(img: np.ndarray, weight: np.ndarray, sigma: float = 3.0) -> np.ndarray:
    wf = weight.astype(np.float32)
    num = cv2.GaussianBlur(img.astype(np.float32) * wf[..., None], (0, 0), sigma)
    return num / np.maximum(cv2.GaussianBlur(wf, (0, 0), sigma), 1e-6)[..., None]


def contamination(shot: Shot, rgba: np.ndarray) -> float:
    """Median position of the output's soft-edge colours on the line from the true subject colour (0) to the
    local backdrop colour (1), where the two differ enough to tell."""
    a = rgba[..., 3].astype(np.float32) / 255.0
    soft = (a > 0.1) & (a < 0.9) & (shot.alpha > 0.1) & (shot.alpha < 0.99)
    if shot.foreground is None or not soft.any():
        return 0.0
    backdrop = local_mean(shot.rgb / 255.0, shot.alpha == 0)[soft]
    fg = shot.foreground[soft]
    d = backdrop - fg
    dd = (d * d).sum(axis=1)
    c = ((rgba[..., :3][soft] / 255.0 - fg) * d).sum(axis=1) / np.maximum(dd, 1e-6)
    tellable = dd > 0.1**2
    return float(np.median(c[tellable])) if tellable.any() else 0.0


def measure(stage: StudioBackground, name: str, shot: Shot, rgb: np.ndarray | None = None) -> Result:
    start = time.perf_counter()
    try:
        (out,) = stage.run(Asset(shot.rgb if rgb is None else rgb))
        rgba = out.pixels
    except Exception as exc:  # a failure is a result too: score it as an empty matte
        print(f"{name}: {exc}", file=sys.stderr)
        rgba, out = np.zeros(shot.rgb.shape[:2] + (4,), np.uint8), None
    seconds = time.perf_counter() - start
    a = rgba[..., 3].astype(np.float32) / 255.0
    t, o = shot.alpha > 0.5, a > 0.5
    iou = float((t & o).sum() / max(1, (t | o).sum()))
    outside = float((o & (shot.alpha == 0)).sum() / max(1, t.sum()))
    uncertain = out.notes["remove_background"].get("uncertain_outline") if out is not None else None
    return Result(name, iou, edge_error(shot.alpha, a), outside, contamination(shot, rgba), uncertain, seconds)


def real_shots(folder: Path, size: tuple[int, int]) -> Iterator[tuple[str, Shot]]:
    from PIL import Image

    for mask_path in sorted(folder.glob("*.mask.png")):
        stem = mask_path.name[: -len(".mask.png")]
        photos = [p for p in folder.glob(f"{stem}.*") if ".mask." not in p.name]
        if not photos:
            continue
        photo = np.asarray(Image.open(photos[0]).convert("RGB"))
        mask = np.asarray(Image.open(mask_path).convert("L"))
        for seed, backdrop in enumerate(SWEEPS):
            yield f"{stem} / {backdrop}", composite_shot(photo, mask, backdrop, size, seed=seed, name=stem)


def synthetic_shots(size: tuple[int, int], count: int) -> Iterator[tuple[str, Shot]]:
    for backdrop in BACKDROPS:
        for subject in SUBJECTS:
            for seed in range(count):
                yield f"{subject} / {backdrop} / {seed}", studio_shot(backdrop, size, seed=seed, subject=subject)


def stages() -> dict[str, StudioBackground]:
    ctx = StageContext(config=config_from_dict({}, ROOT / "bench.yaml"))
    return {"default": StudioBackground(StudioBackground.Options(), ctx),
            "prior: off": StudioBackground(StudioBackground.Options(prior="off"), ctx)}


def label_and_handle(stage: StudioBackground, count: int) -> tuple[float, float]:
    """(worst share of near-white label pixels kept opaque, worst share of handle paper left opaque)."""
    label_worst, handle_worst = 1.0, 0.0
    for seed in range(count):
        shot, label = label_shot(seed=seed)
        (out,) = stage.run(Asset(shot.rgb))
        inside = cv2.erode((shot.alpha >= 1).astype(np.uint8), np.ones((5, 5), np.uint8)) > 0
        label_worst = min(label_worst, float((out.pixels[..., 3][label & inside] == 255).mean()))
        for backdrop in BACKDROPS:
            mug = studio_shot(backdrop, (1200, 800), seed=seed, subject="mug")
            flood = (mug.alpha > 0).astype(np.uint8)
            cv2.floodFill(flood, np.zeros((flood.shape[0] + 2, flood.shape[1] + 2), np.uint8), (0, 0), 1)
            handle = flood == 0
            (cut,) = stage.run(Asset(mug.rgb))
            handle_worst = max(handle_worst, float((cut.pixels[..., 3][handle] == 255).mean()))
    return label_worst, handle_worst


def summary_row(label: str, results: list[Result]) -> str:
    worst = min(results, key=lambda r: r.iou)
    unc = [r.uncertain for r in results if r.uncertain is not None]
    return (f"| {label} | {len(results)} | {np.mean([r.iou for r in results]):.4f} | {worst.iou:.4f} ({worst.name}) | "
            f"{np.mean([r.edge_mae for r in results]):.4f} | {max(r.outside for r in results):.2%} | "
            f"{np.median([r.contamination for r in results]):+.3f} | "
            f"{(f'{np.mean(unc):.1%}' if unc else 'n/a')} | {np.mean([r.seconds for r in results]):.2f} s |")


def verdict(value: float, target: float, higher: bool = True) -> str:
    return "met" if (value >= target if higher else value <= target) else "MISSED"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="1200x800", help="synthetic shot size WIDTHxHEIGHT (default 1200x800)")
    parser.add_argument("--count", type=int, default=3, help="synthetic seeds per backdrop and subject (default 3)")
    parser.add_argument("--jpeg", type=int, metavar="QUALITY", help="pass each synthetic shot through JPEG")
    parser.add_argument("--real", type=Path, default=DEFAULT_REAL, help=f"photos with masks (default {DEFAULT_REAL})")
    parser.add_argument("--real-size", default="2000x1500", help="real composite size (default 2000x1500)")
    parser.add_argument("--markdown", type=Path, help="also write the tables to this file")
    args = parser.parse_args(argv)
    size = tuple(int(v) for v in args.size.lower().split("x"))
    real_size = tuple(int(v) for v in args.real_size.lower().split("x"))
    by_stage = stages()
    has_prior = prior_file(by_stage["default"].ctx.config).is_file()

    real: dict[str, list[Result]] = {k: [] for k in by_stage}
    if args.real.is_dir():
        for name, shot in real_shots(args.real, real_size):  # type: ignore[arg-type]
            for key, stage in by_stage.items():
                real[key].append(measure(stage, name, shot))
    synthetic: dict[str, list[Result]] = {k: [] for k in by_stage}
    for name, shot in synthetic_shots(size, args.count):  # type: ignore[arg-type]
        rgb = jpeg_round_trip(shot.rgb, args.jpeg) if args.jpeg else shot.rgb
        for key, stage in by_stage.items():
            synthetic[key].append(measure(stage, name, shot, rgb))
    checks = {key: label_and_handle(stage, args.count) for key, stage in by_stage.items()}

    lines = [f"Default options {'with' if has_prior else 'WITHOUT'} the subject prior in the model cache"
             + ("" if has_prior else " (run `assetd models pull`)") + "; `prior: off` for comparison.", ""]
    lines += ["| set | options | shots | mean IoU | worst IoU (shot) | edge MAE | worst opaque outside | "
              "median contamination | prior disagrees (outline) | time / image |",
              "|---|---|---:|---:|---|---:|---:|---:|---:|---:|"]
    if real["default"]:
        for key in by_stage:
            lines.append(summary_row(f"real subjects, {real_size[0]}×{real_size[1]} JPEG q90 | {key}", real[key]))
    else:
        lines.append(f"| real subjects | not measured: {args.real} not found | | | | | | | | |")
    for key in by_stage:
        lines.append(summary_row(f"synthetic shapes, {size[0]}×{size[1]}" + (f" JPEG q{args.jpeg}" if args.jpeg
                                                                            else "") + f" | {key}", synthetic[key]))
    lines += ["", "| check | options | value | target | |", "|---|---|---:|---:|---|"]
    for key, (label_kept, handle_left) in checks.items():
        lines.append(f"| near-white label kept opaque (worst of {args.count}) | {key} | {label_kept:.2%} | "
                     f"≥ {TARGETS['label opaque']:.0%} | {verdict(label_kept, TARGETS['label opaque'])} |")
        lines.append(f"| paper inside mug handles left opaque (worst of {args.count * len(BACKDROPS)}) | {key} | "
                     f"{handle_left:.2%} | ≤ {TARGETS['handle opaque']:.0%} | "
                     f"{verdict(handle_left, TARGETS['handle opaque'], higher=False)} |")
    lines += ["", "| target (default options) | value | target | |", "|---|---:|---:|---|"]
    if real["default"]:
        rs = real["default"]
        for label, value, higher in (("mean IoU", float(np.mean([r.iou for r in rs])), True),
                                     ("worst IoU", min(r.iou for r in rs), True),
                                     ("edge MAE", float(np.mean([r.edge_mae for r in rs])), False),
                                     ("opaque outside", max(r.outside for r in rs), False)):
            target = TARGETS[label]
            lines.append(f"| real subjects: {label} | {value:.4f} | {'≥' if higher else '≤'} {target} | "
                         f"{verdict(value, target, higher)} |")
    syn = float(np.mean([r.iou for r in synthetic["default"]]))
    lines.append(f"| synthetic mean IoU, default options | {syn:.4f} | ≥ {TARGETS['synthetic mean IoU']} | "
                 f"{verdict(syn, TARGETS['synthetic mean IoU'])} |")
    emit("\n".join(lines), args.markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
