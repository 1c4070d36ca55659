"""Thumbnails and previews made once per file through the chain's own decode, never served for a file that
changed, and the subject check: a real chain output equals its input over the subject, a painted one does not."""
from __future__ import annotations

import hashlib
import io
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from pipeline import previews
from pipeline.cli import cli
from pipeline.config import load_config
from pipeline.imageio import decode
from pipeline.store import Store

SAMPLES = Path(__file__).resolve().parents[2] / "shared" / "data" / "public-samples"
PHOTOS = Path(__file__).resolve().parents[2] / "shared" / "data" / "u2net-dev"


def processed(workspace, name="a.jpg", backdrop="grey", source: Path | None = None):
    """``assetd process`` on one shot under inbox/products/ (the products rule: cut-out, scene, four crops,
    upscale); returns the config, the store and the job."""
    if source is None:
        workspace.shot(f"inbox/products/{name}", backdrop, seed=3, subject="bottle")
    else:
        (workspace.inbox / "products").mkdir(parents=True, exist_ok=True)
        shutil.copy(source, workspace.inbox / "products" / name)
    result = CliRunner().invoke(cli, ["process", str(workspace.inbox), "--config", str(workspace.config_path)],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    config = load_config(workspace.config_path)
    store = Store(config.database)
    return config, store, store.jobs()[-1]


def queued(workspace, sample: str):
    """A job for a public sample file dropped into the inbox (not run: the preview needs only the record)."""
    path = workspace.inbox / sample
    shutil.copy(SAMPLES / sample, path)
    config = load_config(workspace.config_path)
    store = Store(config.database)
    job, _ = store.enqueue(input_hash=hashlib.sha256(path.read_bytes()).hexdigest(), rule="cutouts",
                           rule_version="v", input_path=str(path), rel_path=sample, max_attempts=2)
    return config, store, job


@pytest.mark.parametrize("sample", ["16bit.tif", "Stonehenge.heic", "kodak_dc50.kdc"])
def test_an_input_of_any_format_gets_a_thumbnail_and_a_preview_made_once(workspace, monkeypatch, sample):
    if not (SAMPLES / sample).exists():
        pytest.skip(f"{SAMPLES / sample} is not here")
    config, store, job = queued(workspace, sample)
    _, source = previews.input_source(store, job.id)
    thumb = previews.view(config, source, "thumb")
    with Image.open(thumb) as im:
        assert max(im.size) <= previews.THUMB and im.getextrema() != ((0, 0),) * 3
        shown = im.size
    decoded = decode((SAMPLES / sample).read_bytes(), sample, config.input).pixels
    h, w = decoded.shape[:2]
    assert abs(shown[0] / shown[1] - w / h) < 0.02  # upright, as the chain sees it
    assert thumb.is_relative_to(config.previews_folder)

    decodes = []
    monkeypatch.setattr(previews, "decode", lambda *a, **k: decodes.append(a) or decode(*a, **k))
    assert previews.view(config, source, "thumb") == thumb
    assert previews.view(config, source, "preview").exists()
    assert decodes == []  # both sizes came from the first decode; the second request read the cache


def test_a_changed_output_is_not_served_as_the_recorded_one(workspace):
    config, store, job = processed(workspace)
    row = next(r for r in store.output_rows(job.id) if r["channel"] == "webshop")
    _, source = previews.output_source(store, row["id"])
    assert previews.view(config, source, "preview").exists()  # served, and its hash trusted from now on

    edited = np.asarray(Image.open(row["path"])).copy()
    edited[:20, :20] = 0
    buf = io.BytesIO()
    Image.fromarray(edited).save(buf, "JPEG", quality=90)
    Path(row["path"]).write_bytes(buf.getvalue())
    with pytest.raises(previews.NotServed, match="has changed since it was recorded"):
        previews.view(config, source, "preview")
    Path(row["path"]).unlink()
    with pytest.raises(previews.NotServed, match="no longer there"):
        previews.view(config, source, "thumb")


def subject_figures(config, store, job):
    """Every output's subject check, by (channel, ratio)."""
    return {(r["channel"], r["ratio"]): previews.check(config, store, r["id"])[1] for r in store.output_rows(job.id)}


def test_the_subject_of_every_chain_output_equals_the_input(workspace):
    config, store, job = processed(workspace)
    figures = subject_figures(config, store, job)
    assert set(figures) == {("cutouts", None), ("webshop", "1:1"), ("instagram", "4:5"), ("instagram", "9:16"),
                            ("banners", "16:9")}
    for key, result in figures.items():
        assert result.subject_pixels > 2000, key
        assert result.equal is not None and result.equal > 0.995, (key, result)


@pytest.mark.skipif(not PHOTOS.exists(), reason=f"{PHOTOS} (real photos) is not here")
def test_the_subject_of_a_real_photo_equals_the_input_and_a_painted_one_shows(workspace):
    from pipeline.synth import composite_shot

    photo = np.asarray(Image.open(PHOTOS / "boat.jpg").convert("RGB"))
    mask = np.asarray(Image.open(PHOTOS / "boat.mask.png").convert("L"))
    shot = workspace.root / "boat_studio.jpg"
    Image.fromarray(composite_shot(photo, mask, "white", size=(900, 675), seed=1, name="boat").rgb).save(
        shot, quality=93)
    config, store, job = processed(workspace, "boat_studio.jpg", source=shot)
    figures = subject_figures(config, store, job)
    assert all(r.equal > 0.99 for r in figures.values()), {k: r.equal for k, r in figures.items()}

    # paint a few pixels of the 1:1 output's subject: the check marks exactly there as differing
    row = next(r for r in store.output_rows(job.id) if r["ratio"] == "1:1")
    cut = next(r for r in store.output_rows(job.id) if r["ratio"] is None)
    inp = decode(shot.read_bytes(), "in.jpg", config.input).pixels
    out = decode(Path(row["path"]).read_bytes(), "out.jpg", config.input).pixels.copy()
    matte = np.asarray(Image.open(cut["path"]))[..., 3].astype(np.float32) / 255
    honest = previews.subject_check(inp, out, row["scale"], matte=matte, tolerance=previews.TOLERANCE_LOSSY)
    ox, oy = honest.offset
    overlay = np.asarray(Image.open(io.BytesIO(honest.png)).convert("RGB"))
    ys, xs = np.nonzero((np.abs(overlay.astype(int) - previews.EQUAL_COLOUR).max(axis=2) < 60))
    y, x = int(np.median(ys)), int(np.median(xs))  # a point well inside the subject, marked equal
    out[y - 3:y + 3, x - 3:x + 3, :3] = (255, 0, 0)
    painted = previews.subject_check(inp, out, row["scale"], matte=matte, tolerance=previews.TOLERANCE_LOSSY)
    assert painted.offset == honest.offset
    assert painted.equal < honest.equal
    marked = np.asarray(Image.open(io.BytesIO(painted.png)).convert("RGB"))[y - 2:y + 2, x - 2:x + 2]
    assert (marked == previews.DIFFER_COLOUR).all(axis=2).all()


def differing(png: bytes) -> np.ndarray:
    """Where an overlay marks the subject as differing from the input."""
    return (np.asarray(Image.open(io.BytesIO(png)).convert("RGB")) == previews.DIFFER_COLOUR).all(axis=2)


@pytest.mark.skipif(not PHOTOS.exists(), reason=f"{PHOTOS} (real photos) is not here")
def test_the_subject_check_compares_the_cut_out_product_not_its_photographed_shadow(workspace):
    """A real subject photographed on a light sweep with its own contact shadow, run through the shipped products
    rule without a cut-out channel (the trial's case): the check compares exactly what the chain cut out, so the
    old shadow, replaced by the scene's, is no magenta band under the product; a painted product still shows."""
    from pipeline.demo import example_rule
    from pipeline.synth import composite_shot

    workspace.add_rule("10-products.yaml", example_rule("10-products.yaml", options={"upscale": {"long_edge": 800}},
                                                        without_channels=("print", "cutouts")))
    (workspace.root / "state" / "previews").mkdir(parents=True)  # the review page is in use here
    photo = np.asarray(Image.open(PHOTOS / "0003.jpg").convert("RGB"))
    mask = np.asarray(Image.open(PHOTOS / "0003.mask.png").convert("L"))
    composite = composite_shot(photo, mask, "white", size=(900, 675), seed=2, name="alpaca")
    assert composite.shadow.max() > 0.2  # a contact shadow of its own under the product
    shot = workspace.root / "alpaca.jpg"
    Image.fromarray(composite.rgb).save(shot, quality=93)
    config, store, job = processed(workspace, "alpaca.jpg", source=shot)
    figures = subject_figures(config, store, job)
    assert set(figures) == {("webshop", "1:1"), ("instagram", "4:5"), ("instagram", "9:16"), ("banners", "16:9")}
    for key, result in figures.items():
        assert result.mask == "chain matte", key
        assert result.equal > 0.999, (key, result.equal)
        path, _ = previews.check(config, store, next(r["id"] for r in store.output_rows(job.id)
                                                     if (r["channel"], r["ratio"]) == key))
        assert differing(path.read_bytes()).sum() <= 0.001 * result.subject_pixels, key

    # a product pixel painted over in the 4:5 output shows as differing, exactly there
    row = next(r for r in store.output_rows(job.id) if r["ratio"] == "4:5")
    inp = decode(shot.read_bytes(), "in.jpg", config.input).pixels
    out = decode(Path(row["path"] if not row["staged_path"] else row["staged_path"]).read_bytes(), "out.jpg",
                 config.input).pixels.copy()
    matte = previews.chain_matte(config, job, (inp.shape[1], inp.shape[0]))
    honest = previews.subject_check(inp, out, row["scale"], matte=matte, matte_from="chain matte",
                                    tolerance=previews.TOLERANCE_LOSSY)
    overlay = np.asarray(Image.open(io.BytesIO(honest.png)).convert("RGB"))
    ys, xs = np.nonzero((np.abs(overlay.astype(int) - previews.EQUAL_COLOUR).max(axis=2) < 60))
    y, x = int(np.median(ys)), int(np.median(xs))
    out[y - 3:y + 3, x - 3:x + 3, :3] = (255, 0, 0)
    painted = previews.subject_check(inp, out, row["scale"], matte=matte, matte_from="chain matte",
                                     tolerance=previews.TOLERANCE_LOSSY)
    assert painted.offset == honest.offset and painted.equal < honest.equal
    assert differing(painted.png)[y - 2:y + 2, x - 2:x + 2].all()

    # without the kept matte (a job of an earlier assetd), the check falls back to what looks like no backdrop,
    # the paper in shadow included (no magenta band for the photographed shadow); a guess, so it compares less of
    # the product than the chain's matte, which is why that is kept
    previews.matte_file(config, job).unlink()
    fallback = previews.check(config, store, row["id"])[1]
    exact = figures[("instagram", "4:5")]
    assert fallback.mask == "not background-like" and fallback.equal > 0.99, fallback.equal
    assert fallback.subject_pixels < exact.subject_pixels


def test_the_matte_of_a_trimmed_cut_out_is_kept_in_the_inputs_place(workspace):
    """A rule whose cut-out is trimmed to the subject before the scene: the chain's matte is kept at the input's
    coordinates all the same (where the trim took it from), so the check finds and compares the whole product."""
    workspace.add_rule("10-products.yaml", """\
name: products
match: {folder: "products/**"}
steps:
  - remove_background: {trim: true, trim_margin: 3}
  - place_in_scene: {scene: scenes/marble.jpg, anchor: bottom, scale: 0.6}
  - crops: {ratios: ["1:1"], fill: outpaint, anchor: bottom}
outputs:
  - {channel: webshop, from: crops}
""")
    (workspace.root / "state" / "previews").mkdir(parents=True)
    config, store, job = processed(workspace)
    (result,) = subject_figures(config, store, job).values()
    assert result.mask == "chain matte" and result.subject_pixels > 2000
    assert result.equal > 0.999, result


def test_a_matte_that_cannot_be_kept_never_fails_the_job(workspace, monkeypatch, caplog):
    (workspace.root / "state" / "previews").mkdir(parents=True)

    def broken(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(previews, "keep_matte", broken)
    caplog.set_level("WARNING", logger="assetd.worker")
    config, store, job = processed(workspace)
    assert job.status.value == "done"
    assert (f"process: job {job.id}: its matte could not be kept for the review page's subject check (OSError: "
            "[Errno 28] No space left on device); the check finds the subject without it") in caplog.text
    # the check does without it: the job's cut-out output is the subject's matte
    assert {r.mask for r in subject_figures(config, store, job).values()} == {"cut-out matte", "output alpha"}


def test_a_job_run_before_the_page_was_first_opened_keeps_its_matte(workspace):
    """The trial's jobs ran before anyone opened the page (no cache folder yet): their checks guessed the subject
    from the backdrop. The chain's matte is kept whenever the cache folder can be made."""
    assert not previews.wanted(load_config(workspace.config_path))  # no listen, no approval channel, no cache
    config, store, job = processed(workspace)
    try:
        worker_done = previews.matte_file(config, job)
        deadline = time.monotonic() + 5  # encoded on the codec pool: closed with the worker, so there by now
        while not worker_done.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert worker_done.exists()
        assert {r.mask for r in subject_figures(config, store, job).values()} <= {"chain matte", "output alpha"}
    finally:
        store.close()


def shot_with_shadow(subject: tuple[int, int, int]) -> np.ndarray:
    """A disc of ``subject`` colour standing on grey paper with its own contact shadow, wider than the disc."""
    h, w = 300, 400
    yy, xx = np.mgrid[:h, :w]
    rng = np.random.default_rng(7)
    paper = np.array([160.0, 157.0, 156.0])
    shade = 1 - 0.55 * np.exp(-(((xx - 200) / 120.0) ** 2 + ((yy - 232) / 12.0) ** 2))  # darker paper, same tint
    rgb = paper * shade[..., None]
    disc = (xx - 200) ** 2 + (yy - 150) ** 2 < 80 ** 2
    rgb[disc] = np.array(subject, float)
    rgb += rng.normal(0, 2, rgb.shape)
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


def test_the_fallback_subject_leaves_out_the_photos_contact_shadow():
    """A job with no matte (an earlier assetd's, no cut-out output): the subject is guessed from the backdrop. The
    paper in shadow is backdrop too, so a tight crop of the product (narrower than its shadow) is found and
    compared, not "larger than the output"; a subject as neutral as the paper is kept whole."""
    rgb = shot_with_shadow((60, 81, 64))
    subject = ~previews.background_like(rgb)
    ys, xs = np.nonzero(subject)
    assert (xs.min(), xs.max(), ys.max()) == pytest.approx((120, 279, 229), abs=3)  # the disc, not its shadow
    tight = rgb[60:245, 110:290].copy()  # the output: the product cropped tight, its shadow cut at the sides
    result = previews.subject_check(rgb, tight, 1.0, tolerance=previews.TOLERANCE_LOSSLESS)
    assert result.mask == "not background-like" and not result.note, result.note
    assert result.offset is not None and result.equal > 0.999
    grey = ~previews.background_like(shot_with_shadow((90, 89, 88)))  # shadow-like itself: not cut away
    assert grey[150, 200] and grey[100:200, 130:270].mean() > 0.95
