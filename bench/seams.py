"""Seamless outpainting of ``crops``: seam scores of extended bands and the crops that fell back, on real photos.

    .venv/bin/python bench/seams.py [--real DIR] [--samples DIR] [--composite-size 1200x900] [--markdown PATH]

Every input is cropped to the four ratios (1:1, 4:5, 9:16, 16:9) by ``crops`` (backend ``geometry``, fill
``outpaint``) three ways: **before** (outpaint fills every frame, the behaviour before seams), **default**
(``fallback: crop``: outpaint only as far as the border stays seamless, a tighter frame beyond) and
**fallback: pad** (the frame is kept; outpaint as far as seamless, the pad colour beyond).

- **Real photos** (``--real``, default ``../shared/data/u2net-dev``): each photo as shot, its published mask as
  the matte; the backdrops are real scenes (harbour, trees, road, street).
- **Real-subject composites**: the same subjects on a white and a gradient sweep (plain backdrops, extended as
  far as needed) at ``--composite-size`` (``pipeline.synth.composite_shot``, matte = the true alpha).
- **Photos without a subject** (``--samples``, default ``../shared/data/public-samples``): a few JPEGs with no
  matte; where no subject is found, crops cuts inside the image.

The seam score (``pipeline.stages.seams.seam_score``) is the step across the seam between original and new
pixels ÷ the typical step inside the original band, per side with new canvas (target ≤ 1.2); the subject is left
out where it reaches the seam. As a reference, the photos' own pixels are scored along lines 10 % inside each
edge (no seam at all): that is what a perfect extension would score.
"""
from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import emit  # noqa: E402

from pipeline.config import Config  # noqa: E402
from pipeline.schema import build  # noqa: E402
from pipeline.stages.base import Asset, StageContext  # noqa: E402
from pipeline.stages.crops import CropsOptions, GeometryCrops, build_canvas, fill_class  # noqa: E402
from pipeline.stages.framing import Box, frame_for_ratio, parse_ratio  # noqa: E402
from pipeline.stages.seams import SEAMLESS_SCORE, seam_score  # noqa: E402
from pipeline.stages.subject import find_subject, paste_matte  # noqa: E402

RATIOS = ["1:1", "4:5", "9:16", "16:9"]
DEFAULT_REAL = ROOT.parent / "shared" / "data" / "u2net-dev"
DEFAULT_SAMPLES = ROOT.parent / "shared" / "data" / "public-samples"
SAMPLES = ("flower.jpg", "progressive_1500.jpg", "adobergb_reagan.jpg", "icc_big.jpg", "cmyk.jpg")
VARIANTS = ("before", "default", "fallback: pad")


@dataclass
class Tally:
    """What one set × variant produced."""

    outputs: int = 0
    extended: int = 0
    scores: list[float] = field(default_factory=list)  # one per extended side
    detail: list[float] = field(default_factory=list)  # one per extended side
    new_canvas: list[float] = field(default_factory=list)  # one per output
    fell_back: int = 0
    cut_subject: int = 0
    reasons: Counter = field(default_factory=Counter)
    seconds: float = 0.0


def stage(**options: object) -> GeometryCrops:
    errors: list[str] = []
    opts = build(CropsOptions, dict(options, ratios=RATIOS), "crops", errors)
    assert not errors, errors
    return GeometryCrops(opts, StageContext(config=Config(source=ROOT / "config.yaml")))


def reason(why: str) -> list[str]:
    """The fallback's reasons, one per side, without the numbers."""
    out = []
    for part in why.split("; "):
        side = part.split(":", 1)[0]
        if "seam showed" in part:
            out.append("the extension's seam still showed (score over 2): done again without outpaint")
        elif "cuts the subject" in part:
            out.append("the photo's edge cuts the subject: new canvas would show the cut")
        elif "seamless for 0 px" in part:
            out.append("too little clean backdrop beside the subject (textured)")
        else:
            out.append(f"textured border, frame needs more than stays seamless ({side})")
    return out


def before(asset: Asset) -> list[Asset]:
    """The behaviour before seams: outpaint fills the whole frame, whatever the border."""
    subject, matte, _ = find_subject(asset)
    fill = fill_class("outpaint")
    outs = []
    for text in RATIOS:
        frame = frame_for_ratio(asset.width, asset.height, subject, parse_ratio(text))
        pixels, _ = build_canvas(asset.pixels, frame, fill(fill.Options(), None), matte=matte)
        l, t, r, b = frame.outside
        out = asset.derive(pixels, None, ratio=text)
        out.notes["crops"] = {"box": frame.box.as_list(), "fill": "outpaint" if frame.extended else "none",
                              "extended": {"left": l, "top": t, "right": r, "bottom": b} if frame.extended else None,
                              "cut_subject": frame.cuts_subject}
        outs.append(out)
    return outs


def score(out: Asset, asset: Asset, matte: np.ndarray | None) -> dict[str, float]:
    note = out.notes["crops"]
    if note.get("seam_score") is not None:
        return note["seam_score"]
    box = Box(*note["box"])
    known = box.intersect(Box(0, 0, asset.width, asset.height)).shift(-box.x0, -box.y0)
    framed = paste_matte(matte, box.size, (-box.x0, -box.y0)) if matte is not None else None
    return seam_score(out.pixels, known, framed)


def detail_kept(canvas: np.ndarray, known: Box, matte: np.ndarray | None, extended: dict[str, int]) -> list[float]:
    """Per extended side: the fine detail (median |high-pass|) of the new canvas ÷ that of the original band of
    the same depth beside it (subject left out). About 1: the texture goes on; near 0: a smear or a pad."""
    grey = canvas[..., :3].astype(np.float32).mean(axis=2)
    high = np.abs(grey - cv2.GaussianBlur(grey, (0, 0), 2.0))
    subject = matte > 0 if matte is not None else np.zeros(grey.shape, bool)
    out = []
    for side, depth in extended.items():
        if depth <= 0:
            continue
        d = min(depth, known.height if side in ("top", "bottom") else known.width)
        k = known
        new, old = {
            "top": ((slice(k.y0 - depth, k.y0), slice(k.x0, k.x1)), (slice(k.y0, k.y0 + d), slice(k.x0, k.x1))),
            "bottom": ((slice(k.y1, k.y1 + depth), slice(k.x0, k.x1)), (slice(k.y1 - d, k.y1), slice(k.x0, k.x1))),
            "left": ((slice(k.y0, k.y1), slice(k.x0 - depth, k.x0)), (slice(k.y0, k.y1), slice(k.x0, k.x0 + d))),
            "right": ((slice(k.y0, k.y1), slice(k.x1, k.x1 + depth)), (slice(k.y0, k.y1), slice(k.x1 - d, k.x1))),
        }[side]
        backdrop = ~subject[old]
        if backdrop.sum() < 64:
            continue
        reference = float(np.median(high[old][backdrop]))
        if reference > 0.25:
            out.append(float(np.median(high[new])) / reference)
    return out


def run_variant(tally: Tally, variant: str, asset: Asset, per_ratio: dict[str, Tally] | None = None) -> None:
    started = time.perf_counter()
    if variant == "before":
        outs = before(asset)
    else:
        outs = stage(fallback="pad" if variant == "fallback: pad" else "crop").run(asset)
    tally.seconds += time.perf_counter() - started
    _, matte, _ = find_subject(asset)
    for out in outs:
        count(tally, out, asset, matte)
        if per_ratio is not None:
            count(per_ratio.setdefault(out.ratio, Tally()), out, asset, matte)


def count(tally: Tally, out: Asset, asset: Asset, matte: np.ndarray | None) -> None:
    """Add one output's figures to ``tally``."""
    note = out.notes["crops"]
    tally.outputs += 1
    tally.cut_subject += bool(note.get("cut_subject"))
    if note.get("fallback"):
        tally.fell_back += 1
        tally.reasons.update(reason(note["fallback"]["why"]))
    if note.get("fill", "").startswith("none (subject unknown"):
        tally.fell_back += 1
        tally.reasons["no subject found: cut inside the image"] += 1
    box = Box(*note["box"])
    known = box.intersect(Box(0, 0, asset.width, asset.height)).shift(-box.x0, -box.y0)
    tally.new_canvas.append(1.0 - known.width * known.height / (box.width * box.height))
    if note["extended"]:
        tally.extended += 1
        tally.scores.extend(score(out, asset, matte).values())
        framed = paste_matte(matte, box.size, (-box.x0, -box.y0)) if matte is not None else None
        tally.detail.extend(detail_kept(out.pixels, known, framed, note["extended"]))


def real_photos(folder: Path) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
    from PIL import Image

    for mask_path in sorted(folder.glob("*.mask.png")):
        stem = mask_path.name[: -len(".mask.png")]
        photos = [p for p in folder.glob(f"{stem}.*") if ".mask." not in p.name]
        if photos:
            photo = np.asarray(Image.open(photos[0]).convert("RGB"))
            mask = np.asarray(Image.open(mask_path).convert("L"))
            yield stem, photo, np.where(mask > 127, 255, 0).astype(np.uint8)


def reference_scores(photo: np.ndarray, mask: np.ndarray) -> list[float]:
    """The photo's own pixels scored along lines 10 % inside each edge: no seam at all."""
    h, w = photo.shape[:2]
    known = Box(w // 10, h // 10, w - w // 10, h - h // 10)
    return list(seam_score(photo, known, mask).values())


def median(values: list[float]) -> str:
    return f"{np.median(values):.2f}" if values else "–"


def canvas(shares: list[float]) -> str:
    """Mean and largest share of new canvas per output."""
    return f"{np.mean(shares):.0%} / {np.max(shares):.0%}" if shares else "–"


def summary(scores: list[float]) -> str:
    if not scores:
        return "– | – | –"
    a = np.array(scores)
    return f"{np.median(a):.2f} | {np.percentile(a, 90):.2f} | {(a <= SEAMLESS_SCORE).mean():.0%}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--real", type=Path, default=DEFAULT_REAL, help=f"photos with masks (default {DEFAULT_REAL})")
    parser.add_argument("--samples", type=Path, default=DEFAULT_SAMPLES,
                        help=f"photos without a matte (default {DEFAULT_SAMPLES})")
    parser.add_argument("--composite-size", default="1200x900", help="composite size WIDTHxHEIGHT (default 1200x900)")
    parser.add_argument("--markdown", type=Path, help="also write the tables to this file")
    args = parser.parse_args(argv)
    size = tuple(int(v) for v in args.composite_size.lower().split("x"))
    from PIL import Image

    from pipeline.synth import composite_shot

    sets: dict[str, list[Asset]] = {}
    reference: list[float] = []
    notes: list[str] = []
    if args.real.is_dir():
        photos = list(real_photos(args.real))
        sets["real photos (u2net-dev, their masks)"] = [Asset(p, m, source=n) for n, p, m in photos]
        sets[f"real-subject composites on white and gradient sweeps, {size[0]}×{size[1]}"] = [
            Asset(shot.rgb, (shot.alpha * 255).round().astype(np.uint8), source=f"{n} / {sweep}")
            for n, p, m in photos for i, sweep in enumerate(("white", "gradient"))
            for shot in [composite_shot(p, m, sweep, size, seed=i, name=n)]]
        reference = [s for _, p, m in photos for s in reference_scores(p, m)]
    else:
        notes.append(f"{args.real} is not here: the real photos and composites were not measured.")
    samples = [args.samples / name for name in SAMPLES if (args.samples / name).is_file()]
    if samples:
        sets["photos without a matte (public-samples JPEGs)"] = [
            Asset(np.asarray(Image.open(p).convert("RGB")), None, source=p.name) for p in samples]

    rows, why_rows, ratio_rows = [], [], []
    per_ratio: dict[str, Tally] = {}  # the real photos, default options
    for name, assets in sets.items():
        for variant in VARIANTS:
            tally = Tally()
            for asset in assets:
                first = name.startswith("real photos") and variant == "default"
                run_variant(tally, variant, asset, per_ratio if first else None)
            rows.append(f"| {name} | {variant} | {tally.outputs} | {tally.extended} | {len(tally.scores)} | "
                        f"{summary(tally.scores)} | {median(tally.detail)} | {canvas(tally.new_canvas)} | "
                        f"{tally.fell_back / max(1, tally.outputs):.0%} | "
                        f"{tally.cut_subject / max(1, tally.outputs):.0%} | "
                        f"{1000 * tally.seconds / max(1, tally.outputs):.0f} ms |")
            if variant == "default":
                for why, count in tally.reasons.most_common():
                    why_rows.append(f"| {name} | {why} | {count} |")
        print(f"{name}: done", file=sys.stderr, flush=True)
    if reference:
        rows.append(f"| reference: the real photos' own pixels (no seam) | – | – | – | {len(reference)} | "
                    f"{summary(reference)} | – | – | – | – | – |")
    for text, tally in per_ratio.items():
        ratio_rows.append(f"| {text} | {tally.outputs} | {tally.extended} | {summary(tally.scores)} | "
                          f"{tally.fell_back / max(1, tally.outputs):.0%} | "
                          f"{tally.cut_subject / max(1, tally.outputs):.0%} |")

    lines = ["Seam score per extended side (target ≤ 1.2): median, 90th percentile and the share at or under "
             "1.2. \"detail kept\": the fine detail of the new canvas ÷ that of the original band beside it, "
             "median per extended side (about 1: the texture goes on; near 0: a smear or a pad). \"new canvas\": "
             "share of an output's area that is not original pixels, mean / largest. \"fell back\": outputs "
             "where outpaint would not have stayed seamless (or no subject was found) and the fallback applied; "
             "\"cut subject\": outputs whose frame cuts the subject.", "",
             "| set | variant | outputs | extended | extended sides | seam median | seam p90 | ≤ 1.2 | detail kept | "
             "new canvas | fell back | cut subject | time / output |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|", *rows, ""]
    if ratio_rows:
        lines += ["Real photos, default options (`fallback: crop`), per ratio:", "",
                  "| ratio | outputs | extended | seam median | seam p90 | ≤ 1.2 | fell back | cut subject |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|", *ratio_rows, ""]
    if why_rows:
        lines += ["Why the default options fell back (one count per side):", "",
                  "| set | why | sides |", "|---|---|---:|", *why_rows, ""]
    lines += notes
    emit("\n".join(lines).rstrip() + "\n", args.markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
