"""Time and memory of each edit step on one 24-megapixel shot; and the README's before/after pictures.

    .venv/bin/python bench/edits.py [--size 6000x4000] [--runs 2] [--quick] [--markdown PATH]
    .venv/bin/python bench/edits.py --pictures docs/edits/

The shot is synthetic (``pipeline.synth``: a tan shoe on white paper) with 60 specks of dust planted on the paper
and a clamp at the top of the sweep that ``shot.remove.png`` paints; the scenes are synthetic too. Each step runs
in a fresh subprocess with the real stage classes and options (as a rule builds them): what comes before it in a
chain (decoding, ``remove_background``, a ``place_in_scene``) runs first, untimed; then the process's peak-RSS
mark is reset (``/proc/self/clear_refs``) and the step runs alone. The figures are its wall-clock and CPU seconds,
the process's peak RSS while it ran (its input, the interpreter and the libraries included) and how much that
peak is above what the process held just before it (the step's own working memory and outputs).

``--pictures DIR`` writes the small PNGs the README shows ("Colourways and retouching"), made by the same steps
from small synthetic shots and scenes.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import emit  # noqa: E402 - after the path set-up above

COLOURWAYS = [{"name": "green", "colour": "#1f4d3a"}, {"name": "burgundy", "colour": "#5a1a24"}]
SPECKS = 60
# each step, its options, and what runs before it (untimed) to give it its input
STEPS: dict[str, dict[str, Any]] = {
    "retouch": {"options": {"backdrop_spots": True, "remove_mask": "sidecar"}, "before": [],
                "what": f"classical (Telea), backdrop_spots ({SPECKS} specks planted) + remove_mask (a painted clamp)"},
    "recolor": {"options": {"variants": COLOURWAYS}, "before": ["remove_background"],
                "what": "2 colourways (green, burgundy) of the cut-out, region found by colour"},
    "place_in_scene": {"options": {"scenes": ["marble.jpg", "wood.jpg"]}, "before": ["remove_background"],
                       "what": "composite on 2 scenes (2 variants), the scenes' decoding included"},
    "tone_match": {"options": {}, "before": ["remove_background", "place_in_scene"],
                   "what": "global, default options (strength 0.5, max ΔE2000 5), after place_in_scene on wood"},
}


# ------------------------------------------------------------------------------------ inputs


def plant_dust(rgb: np.ndarray, allowed: np.ndarray, n: int, seed: int, radius: tuple[float, float] = (1.5, 3.0),
               ) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """``rgb`` with ``n`` soft-edged dark specks where ``allowed`` (each drawn in its own small window: quick at
    any size); and where they are (x, y)."""
    rng = np.random.default_rng(seed)
    h, w = rgb.shape[:2]
    out = rgb.copy()
    placed: list[tuple[int, int]] = []
    while len(placed) < n:
        x, y = int(rng.integers(16, w - 16)), int(rng.integers(16, h - 16))
        if not allowed[y, x] or any(abs(x - a) + abs(y - b) < 40 for a, b in placed):
            continue
        r, level = float(rng.uniform(*radius)), float(rng.uniform(40, 90))
        yy, xx = np.mgrid[y - 8:y + 9, x - 8:x + 9]
        cover = np.clip(r + 1 - np.hypot(yy - y, xx - x), 0, 1)[..., None]
        window = out[y - 8:y + 9, x - 8:x + 9].astype(np.float32)
        out[y - 8:y + 9, x - 8:x + 9] = np.clip(np.rint(window - level * cover), 0, 255).astype(np.uint8)
        placed.append((x, y))
    return out, placed


def add_clamp(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A dark metal A-clamp holding the sweep at its top edge, left of the subject; and the mask a retoucher would
    paint over it (a little larger than the clamp, as a brush is)."""
    import cv2

    h, w = rgb.shape[:2]
    s = min(w, h) / 400  # sizes relative to a 600×400 shot
    x0, y0 = int(0.12 * w), 0
    out = rgb.copy()
    clamp = np.zeros((h, w), np.uint8)
    cv2.rectangle(clamp, (x0, y0), (x0 + int(26 * s), int(34 * s)), 255, -1)  # the jaw over the paper's edge
    cv2.rectangle(clamp, (x0 + int(8 * s), int(34 * s)), (x0 + int(18 * s), int(58 * s)), 255, -1)  # the handle
    shade = np.linspace(60, 110, w, dtype=np.float32)[None, :]  # brushed metal: a gradient across
    metal = np.dstack([shade, shade * 0.98, shade * 0.95])
    inside = clamp > 0
    out[inside] = np.broadcast_to(metal, (h, w, 3))[inside].astype(np.uint8)
    painted = cv2.dilate(clamp, np.ones((max(3, int(6 * s)) | 1,) * 2, np.uint8))
    return out, painted


def prepare(work: Path, size: tuple[int, int]) -> Path:
    """The shot (with its dust and clamp), its remove mask and two scenes in a folder of ``work`` for the size, made
    once."""
    import cv2
    from PIL import Image

    from pipeline.synth import scene_image, studio_shot

    work = work / f"{size[0]}x{size[1]}"
    work.mkdir(parents=True, exist_ok=True)
    shot = work / "shot.jpg"
    if shot.exists() and (work / "wood.jpg").exists() and (work / "specks.json").exists():
        return shot
    synth = studio_shot("white", size=size, seed=2, subject="shoe")  # a tan shoe on white paper
    clear = cv2.dilate((synth.alpha > 0).astype(np.uint8), np.ones((61, 61), np.uint8)) == 0
    rgb, specks = plant_dust(synth.rgb, clear & (synth.shadow < 0.02), SPECKS, seed=5)
    rgb, painted = add_clamp(rgb)
    (work / "specks.json").write_text(json.dumps(specks))  # where they are: how many retouch removed
    Image.fromarray(rgb).save(shot, quality=92)
    Image.fromarray(painted).save(shot.with_suffix(".remove.png"))
    Image.fromarray(scene_image(size, seed=1, kind="marble")).save(work / "marble.jpg", quality=90)
    Image.fromarray(scene_image(size, seed=2, kind="wood")).save(work / "wood.jpg", quality=90)
    return shot


# ------------------------------------------------------------------------------------ the steps


def make_stage(step: str, options: dict[str, Any], work: Path) -> Any:
    """The step's default backend as a rule builds it: options checked, paths relative to ``work``."""
    from pipeline.config import Config
    from pipeline.schema import build
    from pipeline.stages.base import StageContext, stage_class

    cls = stage_class(step, None)
    errors: list[str] = []
    config = Config(source=work / "config.yaml")
    opts = build(cls.Options, options, step, errors, base=work)
    errors += cls.validate(opts, step, config)
    if errors:
        raise SystemExit(f"bench/edits.py: {step}: {'; '.join(errors)}")
    stage = cls(opts, StageContext(config=config))
    stage.prepare()
    return stage


def memory() -> dict[str, float]:
    """This process's resident set and its peak since the last reset, in MB."""
    values = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(("VmRSS:", "VmHWM:")):
            values[line[:5]] = int(line.split()[1]) / 1024
    return {"rss": values["VmRSS"], "peak": values["VmHWM"]}


def child(step: str, shot: Path) -> dict[str, Any]:
    """Runs in a fresh process: the steps before ``step`` untimed, then ``step`` alone, measured."""
    from PIL import Image

    from pipeline.stages.base import Asset

    work = shot.parent
    spec = STEPS[step]
    with Image.open(shot) as im:
        assets = [Asset(np.asarray(im.convert("RGB")).copy(), source=str(shot))]
    for earlier in spec["before"]:
        options = {"scene": "wood.jpg"} if earlier == "place_in_scene" else {}
        stage = make_stage(earlier, options, work)
        assets = [out for a in assets for out in stage.run(a)]
    stage = make_stage(step, spec["options"], work)
    gc.collect()
    try:  # memory the steps before freed goes back to the system, so "above RSS before" is the step's own
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    before = memory()["rss"]
    reset = True
    try:
        Path("/proc/self/clear_refs").write_text("5")  # the peak-RSS mark back to the current RSS
    except OSError:
        reset = False
    t0, c0 = time.perf_counter(), time.process_time()
    outputs = [out for a in assets for out in stage.run(a)]
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    after = memory()
    notes = [o.notes.get(step, {}) for o in outputs]
    if step == "retouch":  # the planted specks whose centre the step changed (under the painted clamp or found)
        specks = json.loads((work / "specks.json").read_text())
        notes[0]["specks_removed"] = sum(bool((outputs[0].pixels[y, x] != assets[0].pixels[y, x]).any())
                                         for x, y in specks)
    return {"seconds": seconds, "cpu": cpu, "rss_before": before, "peak": after["peak"], "reset": reset,
            "outputs": len(outputs), "input": f"{assets[0].width}×{assets[0].height}",
            "summary": summarise(step, notes)}


def summarise(step: str, notes: list[dict[str, Any]]) -> str:
    """What the step did, from its manifest notes: proof that it did its work, not just returned."""
    first = notes[0] if notes else {}
    if step == "retouch":
        spots = first.get("backdrop_spots", {})
        return (f"{first.get('specks_removed', '?')} of {SPECKS} planted specks removed ({spots.get('spots', '?')} "
                f"spots found), {first.get('removed_pixels', '?')} px in all")
    if step == "recolor":
        return ", ".join(f"{n.get('variant')} lands ΔE2000 {n.get('delta_e', '?')} from its colour" for n in notes)
    if step == "tone_match":
        return f"gains {first.get('gains')}, max ΔE {first.get('delta_e_max')}"
    return f"{len(notes)} variants"


# ------------------------------------------------------------------------------------ the README's pictures


def on_white(pixels: np.ndarray) -> np.ndarray:
    """An RGBA cut-out over white paper (RGB unchanged)."""
    if pixels.shape[2] == 3:
        return pixels
    a = pixels[..., 3:4].astype(np.float32) / 255
    return np.rint(pixels[..., :3] * a + 255 * (1 - a)).astype(np.uint8)


def strip(panels: list[tuple[str, np.ndarray]], width: int) -> np.ndarray:
    """Panels side by side, each scaled to ``width`` px wide, a caption band above each."""
    import cv2
    from PIL import Image, ImageDraw, ImageFont

    try:
        font = ImageFont.load_default(size=15)
    except TypeError:  # an older Pillow: its fixed bitmap font
        font = ImageFont.load_default()
    cells = []
    for caption, pixels in panels:
        h = round(pixels.shape[0] * width / pixels.shape[1])
        body = cv2.resize(on_white(pixels), (width, h), interpolation=cv2.INTER_AREA)
        band = Image.new("RGB", (width, 26), "white")
        ImageDraw.Draw(band).text((6, 5), caption, fill=(40, 40, 40), font=font)
        cells.append(np.vstack([np.asarray(band), body]))
    gap = np.full((cells[0].shape[0], 6, 3), 255, np.uint8)
    out = [cells[0]]
    for cell in cells[1:]:
        out += [gap, cell]
    return np.hstack(out)


def write_pictures(folder: Path) -> list[Path]:
    """The README's before/after PNGs, from small synthetic shots and scenes through the real steps."""
    from PIL import Image

    from pipeline.stages.base import Asset
    from pipeline.synth import scene_image, studio_shot

    folder.mkdir(parents=True, exist_ok=True)
    work = ROOT / ".bench" / "edits-pictures"
    work.mkdir(parents=True, exist_ok=True)
    Image.fromarray(scene_image((900, 600), seed=1, kind="marble")).save(work / "marble.jpg", quality=95)
    Image.fromarray(scene_image((900, 600), seed=2, kind="wood")).save(work / "wood.jpg", quality=95)
    # noise-free shots: the PNGs stay small (sensor noise does not compress)
    synth = studio_shot("white", size=(720, 480), seed=2, subject="shoe", noise=False)
    shot = work / "shoe.png"
    Image.fromarray(synth.rgb).save(shot)
    cutout = make_stage("remove_background", {}, work).run(Asset(synth.rgb, source=str(shot)))[0]
    written = []

    def save(name: str, pixels: np.ndarray) -> None:
        path = folder / name
        Image.fromarray(pixels).save(path, optimize=True)
        written.append(path)

    ways = make_stage("recolor", {"variants": COLOURWAYS}, work).run(cutout)
    save("colourways.png", strip([("the shot (tan)", synth.rgb)] + [
        (f"recolor: {w.variant} {way['colour']}", w.pixels) for w, way in zip(ways, COLOURWAYS)], 300))

    clear = __import__("cv2").dilate((synth.alpha > 0).astype(np.uint8), np.ones((61, 61), np.uint8)) == 0
    dusty, _ = plant_dust(synth.rgb, clear & (synth.shadow < 0.02), 25, seed=5, radius=(2.0, 3.2))
    dusty, painted = add_clamp(dusty)
    shot = work / "dusty.png"
    Image.fromarray(dusty).save(shot)
    Image.fromarray(painted).save(work / "dusty.remove.png")
    clean = make_stage("retouch", STEPS["retouch"]["options"], work).run(Asset(dusty, source=str(shot)))[0].pixels
    changed = (clean != dusty).any(axis=2)
    shown = dusty.copy()
    shown[changed] = (230, 30, 30)
    save("retouch.png", strip([("before: dust and a clamp", dusty), ("removed (red)", shown),
                               ("after: retouch", clean)], 300))

    placed = make_stage("place_in_scene", {"scenes": ["marble.jpg", "wood.jpg"]}, work).run(cutout)
    save("scenes.png", strip([(f"place_in_scene: {a.variant}", a.pixels) for a in placed], 420))
    # a light grey mug shows a warm scene's light best (a tan shoe is warm already)
    mug = studio_shot("grey", size=(720, 480), seed=0, subject="mug", noise=False)
    mug_cut = make_stage("remove_background", {}, work).run(Asset(mug.rgb, source=str(work / "mug.png")))[0]
    warm = make_stage("place_in_scene", {"scene": "wood.jpg"}, work).run(mug_cut)[0]
    toned = [make_stage("tone_match", options, work).run(warm)[0].pixels
             for options in ({}, {"strength": 1.0, "max_delta_e": 10.0})]
    save("tone_match.png", strip([("placed on wood", warm.pixels), ("tone_match (default options)", toned[0]),
                                  ("strength 1, max_delta_e 10", toned[1])], 300))
    return written


def load_average() -> float:
    return os.getloadavg()[0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="6000x4000", help="the shot's size, WxH (default 24 MP)")
    parser.add_argument("--runs", type=int, default=2, help="runs of each step, each in a fresh process")
    parser.add_argument("--quick", action="store_true", help="a 1200×800 shot, one run (a smoke run)")
    parser.add_argument("--markdown", type=Path)
    parser.add_argument("--pictures", type=Path, metavar="DIR", help="write the README's pictures to DIR instead")
    parser.add_argument("--child", nargs=2, metavar=("STEP", "SHOT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child[0], Path(args.child[1]))))
        return 0
    if args.pictures:
        for path in write_pictures(args.pictures):
            print(f"{path} ({path.stat().st_size // 1024} KB)")
        return 0
    size = "1200x800" if args.quick else args.size
    runs = 1 if args.quick else args.runs
    w, h = (int(v) for v in size.lower().split("x"))
    shot = prepare(ROOT / ".bench" / "edits", (w, h))
    loads = [load_average()]
    rows, reset = [], True
    for step, spec in STEPS.items():
        results = []
        for _ in range(runs):
            out = subprocess.run([sys.executable, __file__, "--child", step, str(shot)], capture_output=True,
                                 text=True, env=dict(os.environ, PYTHONHASHSEED="0"))
            if out.returncode:
                raise SystemExit(f"bench/edits.py: {step} failed:\n{out.stderr}")
            results.append(json.loads(out.stdout.strip().splitlines()[-1]))
        loads.append(load_average())
        reset = reset and all(r["reset"] for r in results)
        best = min(results, key=lambda r: r["seconds"])
        peak = max(r["peak"] for r in results)
        growth = max(r["peak"] - r["rss_before"] for r in results)
        times = " / ".join(f"{r['seconds']:.2f}" for r in results)
        rows.append(f"| `{step}` | {spec['what']} | {best['input']} | **{best['seconds']:.2f} s** ({times}) | "
                    f"{best['cpu']:.2f} s | {peak:.0f} MB | +{growth:.0f} MB | {best['outputs']} | {best['summary']} |")
        print(rows[-1], flush=True)
    lines = [
        f"Input: one {w}×{h} synthetic shot ({w * h / 1e6:.0f} MP JPEG q92: a tan shoe on white paper, "
        f"{SPECKS} specks of dust planted, a clamp at the top of the sweep painted in `shot.remove.png`); "
        "scenes of the same size. "
        f"Each step in a fresh process, {runs} run{'s' if runs > 1 else ''} each: the best wall-clock time in bold, "
        "every run's in brackets; CPU seconds of the best run. The steps before it in a chain run first, untimed.",
        "",
        "| step | what | input px | wall clock (runs) | CPU | peak RSS while it ran | above RSS before it | outputs "
        "| what it did |",
        "|---|---|---|---|---|---|---|---|---|",
        *rows,
        "",
        "Peak RSS is the whole process's (interpreter, numpy/OpenCV, the step's input already decoded) while the step "
        + ("ran: the mark is reset just before it. " if reset else
           "ran; the peak mark could not be reset here, so it includes the steps before it. ")
        + "\"Above RSS before it\" is that peak minus the process's RSS just before the step: what the step itself "
        "holds at its worst, its outputs included. "
        f"1-minute load average on this {os.cpu_count()}-core machine during the runs: "
        f"{min(loads):.1f} to {max(loads):.1f}"
        + (" (more than its cores: other processes shared the CPUs, so these times are longer than on an idle machine)."
           if max(loads) > (os.cpu_count() or 1) else "."),
    ]
    emit("\n".join(lines), args.markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
