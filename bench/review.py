"""The review page's server time with 10,000 jobs in the store: the night view, the job page, the progress poll.

    .venv/bin/python bench/review.py [--jobs 10000] [--size 6000x4000] [--quick] [--markdown PATH]

Measured in-process through the real app (``create_app``, its middleware, templates and routes) with
Starlette's TestClient: ASGI calls without a socket, so the figures are the server's time plus well under a
millisecond of in-process transport, not a browser's. The store is filled as ``bench/metrics.py`` fills it
(per job five steps and five outputs; most done, some failed, queued or running; one in 17 marked for review),
over three inboxes and three rules, with one channel publishing on approval (its outputs staged, most still
pending), all within the default 24 hours the night view shows: every one of the jobs matches its first page.

- the night view (``/``): the first page, each filter (status, rule, inbox, flag), a page far back (keyset);
  target p95 ≤ 200 ms;
- ``/api/progress``: the poll the open page makes every 2 seconds (the counts, the 50 rows on screen);
- ``/metrics`` through the app (``bench/metrics.py`` measures ``exposition`` alone);
- the job page of a real job: a shot run through the shipped products rule (five outputs: cut-out, 1:1, 4:5,
  9:16, 16:9), the page's HTML and the images it loads (the input's preview, five thumbnails, the chosen
  output's preview and its "before"): cold (nothing cached: what the first view costs when the previews were
  not made at the job's end) and once they exist (target ≤ 300 ms); a cached thumbnail; and what making them
  takes (``previews.make_for_job`` and ``make_check``, what the daemon does in the background when a job ends).
"""
from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import emit  # noqa: E402
from metrics import CHANNELS, fill  # noqa: E402

from pipeline.config import config_from_dict  # noqa: E402
from pipeline.demo import example_rule  # noqa: E402
from pipeline.rules import load_rules  # noqa: E402
from pipeline.store import Store  # noqa: E402

INBOXES = ("inbox", "inbox-lifestyle", "inbox-catalogue")
FORMATS = {"cutouts": {"format": "png"}, "webshop": {"format": "jpeg", "quality": 90, "long_edge": 2000},
           "instagram": {"format": "jpeg", "quality": 88, "long_edge": 1350},
           "banners": {"format": "webp", "quality": 85, "long_edge": 1920}, "print": {"format": "tiff"}}
APPROVAL = "webshop"  # the channel publishing on approval


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(p * len(values)))]


def timed(get: Callable[[str], object], url: str, n: int) -> list[float]:
    """``n`` requests of ``url``; each one's seconds. A request that is not a 200 stops the bench."""
    times = []
    for _ in range(n):
        started = time.perf_counter()
        response = get(url)
        times.append(time.perf_counter() - started)
        if response.status_code != 200:  # type: ignore[attr-defined]
            raise SystemExit(f"{url}: HTTP {response.status_code}: {response.text[:200]}")  # type: ignore[attr-defined]
    return times


def row(label: str, times: list[float], target: float | None = None) -> str:
    ms = 1000.0
    p95 = pct(times, 0.95) * ms
    verdict = f"≤ {target:.0f} ms ({'met' if p95 <= target else 'missed'})" if target else ""
    return (f"| {label} | {len(times)} | {statistics.median(times) * ms:.1f} | **{p95:.1f}** | "
            f"{max(times) * ms:.1f} | {verdict} |")


def workspace(root: Path, size: tuple[int, int]) -> Path:
    """The config, rules, scene and one real shot under inbox/products/; returns the config file."""
    from PIL import Image

    from pipeline.synth import scene_image, studio_shot

    (root / "rules").mkdir(parents=True)
    for name in INBOXES:
        (root / name).mkdir()
    (root / "inbox" / "products").mkdir()
    Image.fromarray(scene_image((3000, 2000), seed=2)).save(root / "scene.jpg", quality=90)
    (root / "rules" / "10-products.yaml").write_text(example_rule(
        "10-products.yaml", options={"place_in_scene": {"scene": "scene.jpg"}}, without_channels=("print",)))
    (root / "rules" / "20-cutouts.yaml").write_text(example_rule("20-cutouts.yaml"))
    shot = studio_shot("gradient", size=size, seed=7, subject="bottle").rgb
    Image.fromarray(shot).save(root / "inbox" / "products" / "IMG_9001.jpg", quality=92)
    return root / "config.yaml"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--size", default="6000x4000", help="the real job's shot, WxH")
    parser.add_argument("--quick", action="store_true", help="1,000 jobs, a 1200x800 shot, fewer requests")
    parser.add_argument("--markdown", type=Path)
    args = parser.parse_args(argv)
    if args.quick:
        args.jobs, args.size = min(args.jobs, 1000), "1200x800"
    reps = 20 if args.quick else 200
    size = tuple(int(v) for v in args.size.split("x"))

    from starlette.testclient import TestClient

    from pipeline import previews
    from pipeline.oneshot import run_once
    from pipeline.web.app import create_app

    with tempfile.TemporaryDirectory(prefix="assetd-bench-") as tmp:
        root = Path(tmp)
        config_file = workspace(root, size)
        config = config_from_dict({
            "database": "state/assetd.sqlite3", "rules_dir": "rules",
            "inboxes": [{"path": name} for name in INBOXES],
            "channels": {c: {"path": f"out/{c}", **FORMATS[c], **({"publish": "on_approval"} if c == APPROVAL else {})}
                         for c in CHANNELS},
        }, config_file)
        rules = load_rules(config)
        writer = Store(config.database)
        fill(writer, args.jobs, inboxes=tuple(str(root / name) for name in INBOXES), on_approval=APPROVAL)
        writer.close()
        started = time.perf_counter()
        run_once(config, rules, [root / "inbox"])  # the real job: the products rule on one shot
        chain = time.perf_counter() - started
        store = Store(config.database)  # the page's own view: a fresh connection
        job = store.jobs()[-1]
        assert job.status.value == "done", job.error
        outputs = store.output_rows(job.id)
        app = create_app(config, store)
        with TestClient(app, base_url="http://127.0.0.1:8765") as client:
            get = client.get
            first = timed(get, "/", 1)
            since = time.time() - 24 * 3600
            page = store.night_jobs(since, config.review.page_size)
            ids = ",".join(str(j.id) for j in page)
            deep = store.night_jobs(since, 1, before=args.jobs // 2)[0].id
            night = [
                row("night view, first page (all jobs in view)", timed(get, "/", reps), 200),
                row("… status failed", timed(get, "/?status=failed", reps // 4), 200),
                row("… rule products", timed(get, "/?rule=products", reps // 4), 200),
                row(f"… inbox {INBOXES[1]}", timed(get, f"/?inbox={root / INBOXES[1]}", reps // 4), 200),
                row("… marked for review", timed(get, "/?flag=review", reps // 4), 200),
                row("… awaiting approval", timed(get, "/?flag=awaiting", reps // 4), 200),
                row(f"… a page {args.jobs // 2 // config.review.page_size} pages back (keyset)",
                    timed(get, f"/?before={deep}", reps // 4), 200),
                row("`/api/progress` (the 2 s poll, 50 rows on screen)", timed(get, f"/api/progress?ids={ids}", reps)),
                row("`/metrics` through the app", timed(get, "/metrics", reps // 10 or 5)),
            ]
            first_output = next(o["id"] for o in outputs if not o.get("replaced_by"))
            images = ([f"/files/input/{job.id}/preview"] + [f"/files/output/{o['id']}/thumb" for o in outputs]
                      + [f"/files/output/{first_output}/preview", f"/files/output/{first_output}/before"])
            cold_html = timed(get, f"/jobs/{job.id}", 1)[0]
            cold = {url: timed(get, url, 1)[0] for url in images}
            night_thumb_cold = timed(get, f"/files/job/{job.id}/thumb", 1)[0]
            html = timed(get, f"/jobs/{job.id}", reps)
            whole = []
            for _ in range(reps // 10 or 5):
                started = time.perf_counter()
                for url in [f"/jobs/{job.id}", *images]:
                    timed(get, url, 1)
                whole.append(time.perf_counter() - started)
            thumb = timed(get, f"/files/output/{outputs[1]['id']}/thumb", reps)
            shutil.rmtree(config.previews_folder)
            started = time.perf_counter()
            made = previews.make_for_job(config, store, job.id, subject_check=False)
            making = time.perf_counter() - started
            started = time.perf_counter()
            previews.make_check(config, store, job.id)
            checking = time.perf_counter() - started
            after = {url: timed(get, url, 1)[0] for url in [f"/jobs/{job.id}", *images]}
        store.close()

    ms = 1000.0
    lines = [
        f"Server time through the real app (Starlette TestClient, in-process, no socket) with {args.jobs:,} jobs "
        f"in the store ({len(CHANNELS)} outputs and 5 steps per done job, 3 inboxes, 3 rules, the `{APPROVAL}` "
        "channel on approval; every job within the night view's default 24 hours), page size "
        f"{config.review.page_size}. Times in ms.",
        "",
        "| request | n | p50 | p95 | max | target (p95) |",
        "|---|---:|---:|---:|---:|---|",
        f"| night view, very first request (new connection, cold caches) | 1 | {first[0] * ms:.1f} | | | |",
        *night,
        "",
        f"The job page of a real job: a {size[0]}×{size[1]} shot through the shipped products rule "
        f"({len(outputs)} outputs; the chain took {chain:.0f} s), the page's HTML and the {len(images)} images it "
        "loads on opening (the input's preview, a thumbnail per output, the chosen output's preview and its "
        "\"before\"), one after another (a browser fetches them in parallel).",
        "",
        "| request | n | p50 | p95 | max | target (p95) |",
        "|---|---:|---:|---:|---:|---|",
        row("job page HTML, thumbnails made", html, 300),
        row(f"job page HTML + its {len(images)} images, all cached", whole, 300),
        row("a cached thumbnail", thumb),
        "",
        "| first view, nothing cached yet | ms |",
        "|---|---:|",
        f"| job page HTML | {cold_html * ms:.0f} |",
        f"| the input's preview (decode the shot, make both sizes) | {cold[images[0]] * ms:.0f} |",
        f"| {len(outputs)} output thumbnails (decode each, make both sizes) | "
        f"{sum(cold[u] for u in images[1:1 + len(outputs)]) * ms:.0f} |",
        f"| the chosen output's preview (made with its thumbnail) | {cold[images[-2]] * ms:.0f} |",
        f"| its \"before\" (the subject check: both decoded, located, compared) | {cold[images[-1]] * ms:.0f} |",
        f"| **the whole first view** | **{(cold_html + sum(cold.values())) * ms:.0f}** |",
        f"| (the night view's thumbnail of this job, once the above exist) | {night_thumb_cold * ms:.0f} |",
    ]
    lines += [
        "",
        "What `assetd run` does instead when the page is in use (README, \"Thumbnails and previews\"): its preview "
        f"thread makes the thumbnails and previews of the {made} files as the job ends "
        f"(`previews.make_for_job`: {making:.1f} s), then the subject check of the first output "
        f"(`previews.make_check`: {checking:.1f} s), at a lower CPU priority than the workers; the first view "
        f"then took **{sum(after.values()) * ms:.0f} ms** (HTML and its {len(images)} images, one after another).",
    ]
    emit("\n".join(lines), args.markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
