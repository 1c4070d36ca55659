"""Thumbnails and previews made once per file through the chain's own decode, never served for a file that
changed, and the subject check: a real chain output equals its input over the subject, a painted one does not."""
from __future__ import annotations

import hashlib
import io
import shutil
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
