"""Framing by subject fill: how steady the subject's presence is across ratios, and how much canvas is invented.

    .venv/bin/python bench/framing.py [--data DIR] [--quick] [--markdown PATH]

Geometry only (``GeometryCrops.frame`` with the crops step's default options: subject_fill 0.8, fill_range
[0.6, 0.9], max_new_canvas 0.25, optical_center 0.47, fill outpaint), each shot framed in 1:1, 4:5, 9:16 and 16:9:

* real photos: the photos of ``--data`` (``../shared/data/u2net-dev``: photo + mask), the mask as the subject's
  matte, framed as shot (many subjects there are cut by the photo's edges);
* real composites: the same subjects put on a white sweep, 2000×1500 (``synth.composite_shot``), its alpha as matte;
* synthetic: ``synth.studio_shot`` products (bottle, box, mug, shoe) at 1200×800 and 800×1200, their alpha as matte.

Per shot: the spread of the subject's fill of the limiting side across the four ratios (max − min; target ≤ 0.05).
Per output: the share of new canvas (target: none over 25 % without a scene or generate) and what the framing did.
"""
from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import emit  # noqa: E402

RATIOS = ["1:1", "4:5", "9:16", "16:9"]
FILL_SPREAD_TARGET = 0.05
NEW_CANVAS_TARGET = 0.25
FRAMINGS = ("framed", "fitted", "edge", "tightened", "loosened", "capped")


def real_shots(data: Path, composite: bool) -> list[tuple[str, np.ndarray]]:
    """(name, matte) of each photo of ``data`` with its mask; put on a white sweep when ``composite``."""
    import cv2

    from pipeline.synth import composite_shot

    shots = []
    for mask_path in sorted(data.glob("*.mask.png")):
        stem = mask_path.name[:-len(".mask.png")]
        photo_path = next(p for p in data.glob(stem + ".*") if not p.name.endswith(".mask.png"))
        mask = cv2.imread(str(mask_path), cv2.IMREAD_GRAYSCALE)
        if composite:
            photo = cv2.cvtColor(cv2.imread(str(photo_path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
            shot = composite_shot(photo, mask, "white", size=(2000, 1500), seed=0, name=stem, jpeg=None)
            mask = np.rint(shot.alpha * 255).astype(np.uint8)
        shots.append((stem, mask))
    return shots


def synthetic_shots(quick: bool) -> list[tuple[str, np.ndarray]]:
    from pipeline.synth import SUBJECTS, studio_shot

    shots = []
    for size in ((1200, 800), (800, 1200)):
        for subject in SUBJECTS:
            for seed in range(1 if quick else 3):
                shot = studio_shot("white", size=size, seed=seed, subject=subject, noise=False)
                shots.append((f"{subject} {size[0]}x{size[1]} #{seed}", np.rint(shot.alpha * 255).astype(np.uint8)))
    return shots


def on_a_scene(shots: list[tuple[str, np.ndarray]]) -> list[tuple[str, np.ndarray]]:
    """The subjects as the products rule composes them: trimmed to their box, placed by ``place_in_scene``'s
    geometry on a 3:2 scene (scale 0.6, margin 0.05, anchor bottom); the matte in the composite's coordinates."""
    from pipeline.stages.framing import place_subject, subject_box
    from pipeline.stages.subject import SUBJECT_THRESHOLD, cut_edges

    placed = []
    for name, matte in shots:
        box = subject_box(matte, SUBJECT_THRESHOLD)
        cut = cut_edges(matte)
        part = matte[box.y0:box.y1, box.x0:box.x1]
        p = place_subject(box.width, box.height, 1.5, 0.6, 0.05, "bottom", cut)
        composite = np.zeros((p.out_h, p.out_w), np.uint8)
        composite[p.y:p.y + box.height, p.x:p.x + box.width] = part
        placed.append((name, composite))
    return placed


def measure(shots: list[tuple[str, np.ndarray]], when_capped: str) -> dict:
    from pipeline.stages.crops import CropsOptions
    from pipeline.stages.framing import frame_by_fill, parse_ratio, subject_box
    from pipeline.stages.subject import SUBJECT_THRESHOLD

    o = CropsOptions()
    spreads, steady, canvas, framings, by_ratio = [], [], [], Counter(), {r: [] for r in RATIOS}
    worst = ("", 0.0)
    for name, matte in shots:
        subject = subject_box(matte, SUBJECT_THRESHOLD)
        h, w = matte.shape
        fills, kept = [], []
        for ratio in RATIOS:
            scene = when_capped == "scene"  # canvas past a composite is more of the scene: no limit (crops)
            frame = frame_by_fill(w, h, subject, parse_ratio(ratio), o.fill_for(ratio), fill_range=tuple(o.fill_range),
                                  max_new_canvas=1.0 if scene else o.max_new_canvas, optical_center=o.optical_center,
                                  margin=o.margin, anchor=o.anchor, when_capped="extend" if scene else when_capped)
            fills.append(frame.subject_fill)
            if frame.framing != "capped":
                kept.append(frame.subject_fill)
            canvas.append(frame.new_canvas)
            by_ratio[ratio].append(frame.new_canvas)
            framings[frame.framing] += 1
        spreads.append(max(fills) - min(fills))
        steady.append(max(kept) - min(kept) if kept else 0.0)
        if spreads[-1] > worst[1]:
            worst = (name, spreads[-1])
    return {"spreads": np.array(spreads), "steady": np.array(steady), "canvas": np.array(canvas),
            "framings": framings, "by_ratio": by_ratio, "worst": worst, "shots": len(shots)}


def report(sets: dict[str, dict]) -> str:
    lines = ["Framing by subject fill (crops defaults: subject_fill 0.8, fill_range [0.6, 0.9], max_new_canvas 0.25, "
             "optical_center 0.47), four ratios per shot; geometry only. A capped frame (over 25 % new canvas at "
             "every fill of fill_range) either extends at the least new canvas, or is cut inside the image.", "",
             "| set | capped | shots | fill spread: median | max | shots ≤ 0.05 | max, capped left out "
             "| new canvas: median | p90 | max | outputs > 25 % | " + " | ".join(FRAMINGS) + " |",
             "|---|---|---|---|---|---|---|---|---|---|---|" + "---|" * len(FRAMINGS)]
    for (name, capped), m in sets.items():
        s, c = m["spreads"], m["canvas"]
        lines.append(
            f"| {name} | {capped} | {m['shots']} | {np.median(s):.3f} | {s.max():.3f} | "
            f"{int((s <= FILL_SPREAD_TARGET + 1e-9).sum())}/{len(s)} | {m['steady'].max():.3f} | {np.median(c):.1%} | "
            f"{np.percentile(c, 90):.1%} | {c.max():.1%} | {int((c > NEW_CANVAS_TARGET + 1e-9).sum())}/{len(c)} | "
            + " | ".join(str(m["framings"][f]) for f in FRAMINGS) + " |")
    lines += ["", "New canvas by ratio (median / max, capped frames extended) and the shot with the widest fill spread:",
              "", "| set | " + " | ".join(RATIOS) + " | widest spread |", "|---|" + "---|" * (len(RATIOS) + 1)]
    for (name, capped), m in sets.items():
        if capped == "crop":
            continue
        cells = [f"{np.median(v):.1%} / {max(v):.1%}" for v in m["by_ratio"].values()]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {m['worst'][0]} ({m['worst'][1]:.3f}) |")
    lines += ["", "Fill spread: max − min over the four ratios of the subject's fill of the frame's limiting side "
              f"(target ≤ {FILL_SPREAD_TARGET}); 'capped left out': the same over the ratios that were not capped. "
              f"New canvas: the share of an output's area that is not the image's pixels (target: none over "
              f"{NEW_CANVAS_TARGET:.0%} without a scene or generate). `edge`: the photo cuts the subject on two "
              "opposite sides, which sets the frame. 'scene': the products rule (place_in_scene before crops), where "
              "the canvas past the composite is more of the scene, composed anew, not invented."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "u2net-dev")
    parser.add_argument("--quick", action="store_true", help="fewer synthetic shots")
    parser.add_argument("--markdown", type=Path)
    args = parser.parse_args(argv)
    shots = {}
    if args.data.is_dir() and any(args.data.glob("*.mask.png")):
        shots["real photos, as shot"] = real_shots(args.data, composite=False)
        shots["real subjects on a white sweep"] = real_shots(args.data, composite=True)
    else:
        print(f"no photos with masks in {args.data}: real subjects not measured", file=sys.stderr)
    shots["synthetic products"] = synthetic_shots(args.quick)
    sets = {(name, capped): measure(s, capped) for name, s in shots.items() for capped in ("extend", "crop")}
    if "real photos, as shot" in shots:
        sets[("real subjects placed on a 3:2 scene", "scene")] = measure(on_a_scene(shots["real photos, as shot"]),
                                                                         "scene")
    emit(report(sets), args.markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
