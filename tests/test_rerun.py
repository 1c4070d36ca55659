"""`assetd rerun`: a finished job done again under another rule or with one-off step options, as a new job linked
to the first, replacing the first job's files once its own are published."""
from __future__ import annotations

import json
import logging
import shutil

import numpy as np
from click.testing import CliRunner
from PIL import Image

from conftest import decode
from daemons import run_until_idle as daemon_run_until_idle
from pipeline.cli import cli
from pipeline.rerun import parse_set
from pipeline.store import JobStatus, Store
from pipeline.synth import scene_image

SQUARES = """\
name: squares
match: {folder: "misc/**"}
steps:
  - remove_background: {}
  - crops: {ratios: ["1:1", "4:5"]}
outputs:
  - {channel: cutouts, from: crops}
"""


def run_until_idle(workspace, expected_jobs: int) -> list:
    return daemon_run_until_idle(*workspace.load(), expected_jobs)


def assetd(workspace, *args: str):
    return CliRunner().invoke(cli, [*args, "--config", str(workspace.config_path)], catch_exceptions=False)


def store_of(workspace) -> Store:
    return Store(workspace.root / "state" / "assetd.sqlite3")


def outputs_of(store: Store, job_id: int) -> dict[str, object]:
    return {o.path: o for o in store.outputs(job_id)}


def test_a_rerun_with_another_scene_replaces_the_first_jobs_files_when_it_finishes(workspace, caplog):
    shot = workspace.shot("inbox/products/a.jpg", "white", seed=1)
    (first,) = run_until_idle(workspace, 1)
    assert first.status is JobStatus.DONE
    webshop, cutout = workspace.out("webshop") / "a_1x1.jpg", workspace.out("cutouts") / "a.png"
    before = {p: p.read_bytes() for p in (webshop, cutout)}
    Image.fromarray(scene_image((900, 600), seed=7)).save(workspace.root / "scenes" / "linen.jpg", quality=90)

    queued = assetd(workspace, "rerun", str(first.id), "--set", "place_in_scene.scene=scenes/linen.jpg")
    assert queued.exit_code == 0, queued.output
    assert f"queued job 2: re-run of job {first.id}" in queued.output
    assert "place_in_scene.scene: scenes/marble.jpg → scenes/linen.jpg" in queued.output
    assert {p: p.read_bytes() for p in before} == before  # nothing replaced before the re-run has published

    jobs = run_until_idle(workspace, 2)
    assert [(j.status, j.rerun_of) for j in jobs] == [(JobStatus.DONE, None), (JobStatus.DONE, first.id)]
    assert jobs[1].overrides == {"place_in_scene": {"scene": "scenes/linen.jpg"}}
    assert cutout.read_bytes() == before[cutout]  # the cut-out comes before the scene: the same file
    assert webshop.read_bytes() != before[webshop]  # placed on the other scene, under the same name
    old, new = decode_bytes(before[webshop]), decode(webshop)
    assert old.shape == new.shape and np.abs(old.astype(int) - new.astype(int)).max() > 40
    store = store_of(workspace)
    assert all(o.replaced_by == 2 for o in store.outputs(first.id))  # every file written again by the re-run
    manifest = json.loads(workspace.manifest("products", "a").read_text())
    assert manifest["job"] == 2 and manifest["rerun_of"] == first.id
    assert manifest["overrides"] == {"place_in_scene": {"scene": "scenes/linen.jpg"}}
    store.close()
    listing = assetd(workspace, "jobs")
    assert "re-run of 1" in listing.output.splitlines()[3], listing.output
    assert "outputs replaced by job 2" in listing.output.splitlines()[2], listing.output  # job 1's row says so
    from pipeline.web.night import rows as night_rows

    store = store_of(workspace)
    notes = {r["id"]: r["note"] for r in night_rows(store, store.jobs(), workspace.root)}
    store.close()
    assert notes[first.id].startswith("outputs replaced by job 2; ") and "replaced" not in notes[2]

    # re-running the re-run keeps its scene and adds another option
    again = assetd(workspace, "rerun", "2", "--set", "place_in_scene.anchor=top")
    assert again.exit_code == 0, again.output
    assert "queued job 3: re-run of job 2" in again.output and "place_in_scene.anchor: bottom → top" in again.output
    placed_low = webshop.read_bytes()
    jobs = run_until_idle(workspace, 3)
    assert (jobs[2].status, jobs[2].rerun_of) == (JobStatus.DONE, 2), jobs[2].error
    assert jobs[2].overrides == {"place_in_scene": {"scene": "scenes/linen.jpg", "anchor": "top"}}
    assert webshop.read_bytes() != placed_low

    # the same bytes dropped again: still the first job's file, not a new job; a restart requeues nothing
    latest = webshop.read_bytes()
    shot.write_bytes(shot.read_bytes())
    with caplog.at_level(logging.DEBUG, logger="assetd.intake"):
        jobs = run_until_idle(workspace, 3)
    seen = [r.getMessage() for r in caplog.records if r.getMessage().startswith("not reprocessed")]
    assert seen and seen[0].endswith("a.jpg: already done as job 1"), seen
    assert [(j.id, j.status) for j in jobs] == [(1, JobStatus.DONE), (2, JobStatus.DONE), (3, JobStatus.DONE)]
    assert webshop.read_bytes() == latest

    # the same bytes under another name: a twin of the first job, never of a re-run with other options
    shutil.copy(shot, workspace.inbox / "products" / "b.jpg")
    jobs = run_until_idle(workspace, 4)
    assert (jobs[3].status, jobs[3].rerun_of) == (JobStatus.DONE, None), jobs[3].error
    assert (workspace.out("webshop") / "b_1x1.jpg").read_bytes() == before[webshop]  # on marble, as the rule says


def decode_bytes(data: bytes) -> np.ndarray:
    import io

    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGB"))


def test_a_rerun_under_another_rule_removes_the_first_jobs_other_outputs_unless_changed(workspace):
    workspace.add_rule("15-squares.yaml", SQUARES)
    workspace.shot("inbox/misc/a.jpg", "white", seed=2)
    (first,) = run_until_idle(workspace, 1)
    assert first.rule == "squares" and first.status is JobStatus.DONE, first.error
    square, portrait = workspace.out("cutouts") / "a_1x1.png", workspace.out("cutouts") / "a_4x5.png"
    assert square.is_file() and portrait.is_file()
    queued = assetd(workspace, "rerun", str(first.id), "--rule", "cutouts")
    assert queued.exit_code == 0 and "rule squares → cutouts" in queued.output, queued.output
    portrait.write_bytes(portrait.read_bytes() + b"edited by hand")  # no longer the file assetd wrote

    jobs = run_until_idle(workspace, 2)
    assert [(j.rule, j.status, j.rerun_of) for j in jobs] == [("squares", JobStatus.DONE, None),
                                                              ("cutouts", JobStatus.DONE, first.id)]
    assert (workspace.out("cutouts") / "a.png").is_file()  # the other rule's name
    assert not square.exists()  # the first job's file, as it wrote it: gone
    assert portrait.read_bytes().endswith(b"edited by hand")  # changed since: left where it is
    store = store_of(workspace)
    assert {o.path: o.replaced_by for o in store.outputs(first.id)} == {str(square): 2, str(portrait): 2}
    store.close()


def test_a_bad_override_fails_naming_it_and_queues_nothing(workspace):
    shot = workspace.shot("inbox/products/a.jpg", "white", seed=3)
    store = store_of(workspace)
    config, rules = workspace.load()
    products = next(r for r in rules if r.name == "products")
    job, _ = store.enqueue(input_hash="0" * 64, rule="products", rule_version=products.version,
                           input_path=str(shot), rel_path="products/a.jpg", max_attempts=2)
    store.fail(job.id, "made up for this test")
    store.close()
    cases = {
        "upscaler.factor=2": "upscaler: rule 'products' has no step 'upscaler'",
        "place_in_scene.tint=red": "place_in_scene.tint: unknown key",
        "place_in_scene.scale=huge": "place_in_scene.scale: expected a number, got 'huge'",
        "place_in_scene.scene=scenes/nowhere.jpg": "place_in_scene.scene",
        "crops.anchor=sideways": "crops.anchor",
        "remove_background.backend=nope": "remove_background.backend: unknown backend 'nope'",
        "place_in_scene": "--set 'place_in_scene': expected STEP.OPTION=VALUE",
    }
    for value, named in cases.items():
        result = assetd(workspace, "rerun", str(job.id), "--set", value)
        assert result.exit_code == 1, (value, result.output)
        (line,) = result.output.strip().splitlines()
        assert line.startswith("assetd: error: ") and named in line, (value, line)
    unknown_rule = assetd(workspace, "rerun", str(job.id), "--rule", "nope")
    assert unknown_rule.exit_code == 1 and "no rule named 'nope'" in unknown_rule.output
    store = store_of(workspace)
    assert [j.id for j in store.jobs()] == [job.id]  # nothing queued
    store.close()


def test_parse_set_reads_yaml_scalars():
    assert parse_set(["place_in_scene.scene=scenes/b.jpg", "place_in_scene.scale=0.5", "crops.ratios=['1:1']",
                      "remove_background.trim=true", "place_in_scene.scene=", "place_in_scene.colour=#ffffff"]) == {
        "place_in_scene": {"scene": None, "scale": 0.5, "colour": "#ffffff"},
        "crops": {"ratios": ["1:1"]}, "remove_background": {"trim": True}}


def test_a_rerun_brings_back_an_input_moved_to_done(workspace):
    workspace.write_config(extra="")
    text = workspace.config_path.read_text().replace("    settle_seconds: 0.3\n",
                                                     "    settle_seconds: 0.3\n    after: move\n")
    workspace.config_path.write_text(text)
    shot = workspace.shot("inbox/misc/a.jpg", "white", seed=4)
    (first,) = run_until_idle(workspace, 1)
    done = workspace.inbox / "done" / "misc" / "a.jpg"
    assert first.status is JobStatus.DONE and done.is_file() and not shot.exists()
    queued = assetd(workspace, "rerun", str(first.id), "--set", "remove_background.trim=true")
    assert queued.exit_code == 0, queued.output
    assert f"job {first.id}: moved {done} back to {shot}" in queued.output
    jobs = run_until_idle(workspace, 2)
    assert (jobs[1].status, jobs[1].rerun_of) == (JobStatus.DONE, first.id), jobs[1].error
    assert done.is_file() and not shot.exists()  # moved to done again when the re-run ended
    with Image.open(workspace.out("cutouts") / "a.png") as im:
        assert im.size != (480, 360)  # trimmed to the subject this time


def test_another_scene_replaces_whichever_background_the_rule_set(workspace):
    """A rule with a colour, or with several scenes, re-run with one scene: the override replaces the rule's own
    choice (a rule sets one of scene, scenes, colour or gradient), instead of failing as 'set exactly one'."""
    workspace.add_rule("30-colour.yaml", """\
name: colour
match: {folder: "colour/**"}
steps:
  - remove_background: {}
  - place_in_scene: {colour: "#f0e8e0"}
outputs:
  - {channel: cutouts, from: place_in_scene}
""")
    workspace.add_rule("40-scenes.yaml", """\
name: scenes
match: {folder: "scenes/**"}
steps:
  - remove_background: {}
  - place_in_scene: {scenes: [scenes/marble.jpg, scenes/linen.jpg]}
outputs:
  - {channel: cutouts, from: place_in_scene}
""")
    shutil.copy(workspace.root / "scenes" / "marble.jpg", workspace.root / "scenes" / "linen.jpg")
    config, rules = workspace.load()
    by_name = {r.name: r for r in rules}
    for name in ("colour", "scenes"):
        changed = by_name[name].with_overrides({"place_in_scene": {"scene": "scenes/marble.jpg"}}, config)
        options = changed.step("place_in_scene").options
        assert options.scene is not None and options.scenes is None and options.colour is None, name
        assert changed.version != by_name[name].version
