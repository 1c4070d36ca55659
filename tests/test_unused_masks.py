"""A mask a retoucher put beside a shot that the shot's rule does not read changes nothing: the job says so in its
review reasons, and `assetd check` warns of it in the inboxes before the night's run."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from click.testing import CliRunner
from PIL import Image

from pipeline.cli import cli
from pipeline.config import load_config
from pipeline.stages.masks import unused_masks
from pipeline.store import Store

SPOTS = "name: spots\nsteps:\n  - retouch: {backdrop_spots: true}\noutputs:\n  - {channel: cutouts, from: retouch}\n"
PAINTED = ("name: painted\nsteps:\n  - retouch: {remove_mask: sidecar}\n"
           "outputs:\n  - {channel: cutouts, from: retouch}\n")
CLUSTER = ("name: colours\nsteps:\n  - recolor: {region: cluster, variants: [{name: green, colour: '#1f4d3a'}]}\n"
           "  - remove_background: {}\noutputs:\n  - {channel: cutouts, from: remove_background}\n")


def mask_beside(shot: Path, kind: str) -> Path:
    """An all-black ``NAME.<kind>.png`` of the shot's size beside it."""
    with Image.open(shot) as im:
        size = im.size
    path = shot.with_name(f"{shot.stem}.{kind}.png")
    Image.fromarray(np.zeros((size[1], size[0]), np.uint8)).save(path)
    return path


def rule_named(workspace, name: str):
    return next(r for r in workspace.load()[1] if r.name == name)


def test_each_mask_no_step_reads_is_named_with_what_would_read_it(workspace):
    workspace.add_rule("05-spots.yaml", SPOTS.replace("name: spots", "name: spots\nmatch: {folder: spots}"))
    workspace.add_rule("06-painted.yaml", PAINTED.replace("name: painted", "name: painted\nmatch: {folder: x}"))
    workspace.add_rule("07-colours.yaml", CLUSTER.replace("name: colours", "name: colours\nmatch: {folder: y}"))
    shot = workspace.shot("inbox/spots/shot.jpg")
    assert unused_masks(rule_named(workspace, "spots"), shot) == []  # no mask, nothing to say
    for kind in ("remove", "protect", "recolor"):
        mask_beside(shot, kind)

    assert unused_masks(rule_named(workspace, "spots"), shot) == [
        "shot.recolor.png lies beside it but rule 'spots' has no recolor step with region: auto, sidecar or mask",
        "shot.remove.png lies beside it but rule 'spots' has no retouch step with remove_mask: sidecar",
    ]  # retouch reads the protect mask
    assert unused_masks(rule_named(workspace, "painted"), shot) == [
        "shot.recolor.png lies beside it but rule 'painted' has no recolor step with region: auto, sidecar or mask"]
    assert unused_masks(rule_named(workspace, "colours"), shot) == [  # region: cluster does not read it
        "shot.recolor.png lies beside it but rule 'colours' has no recolor step with region: auto, sidecar or mask",
        "shot.remove.png lies beside it but rule 'colours' has no retouch step with remove_mask: sidecar"]
    assert unused_masks(rule_named(workspace, "cutouts"), shot) == [
        "shot.protect.png lies beside it but rule 'cutouts' has no recolor or retouch step",
        "shot.recolor.png lies beside it but rule 'cutouts' has no recolor step with region: auto, sidecar or mask",
        "shot.remove.png lies beside it but rule 'cutouts' has no retouch step with remove_mask: sidecar"]


def test_a_job_whose_mask_was_not_read_is_marked_for_review(workspace):
    """`assetd process` on a shot with a remove mask, under a rule that only removes spots: the outputs are written,
    the job is marked for review with the mask named, in the store and in the manifest."""
    workspace.add_rule("05-spots.yaml", SPOTS)
    shot = workspace.shot("inbox/shot.jpg")
    mask_beside(shot, "remove")

    result = CliRunner().invoke(cli, ["process", str(workspace.inbox), "--config", str(workspace.config_path),
                                      "--json"], catch_exceptions=False)

    assert result.exit_code == 0, result.output
    (doc,) = json.loads(result.stdout)["results"]
    assert doc["input"].endswith("shot.jpg") and doc["status"] == "done", doc  # the mask is never an input
    reason = ("shot.remove.png lies beside it but rule 'spots' has no retouch step with remove_mask: sidecar; "
              "it was not used")
    store = Store(load_config(workspace.config_path).database)
    try:
        [job] = store.jobs()
        assert job.review == [reason]
    finally:
        store.close()
    assert json.loads(workspace.manifest("spots", "shot").read_text())["review"] == [reason]
    assert len(list(workspace.out("cutouts").rglob("*.png"))) == 1


def test_a_job_whose_rule_reads_the_mask_is_not_marked(workspace):
    workspace.add_rule("05-painted.yaml", PAINTED)
    shot = workspace.shot("inbox/shot.jpg")
    mask_beside(shot, "remove")
    result = CliRunner().invoke(cli, ["process", str(workspace.inbox), "--config", str(workspace.config_path)],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    store = Store(load_config(workspace.config_path).database)
    try:
        [job] = store.jobs()
        assert job.review == []
    finally:
        store.close()


def check(workspace):
    return CliRunner().invoke(cli, ["check", "--config", str(workspace.config_path)], catch_exceptions=False)


def test_check_warns_of_masks_in_the_inboxes_that_nothing_reads(workspace):
    workspace.add_rule("05-painted.yaml", PAINTED.replace("name: painted", "name: painted\nmatch: {folder: clamps}"))
    read = workspace.shot("inbox/clamps/shot.jpg")
    mask_beside(read, "remove")  # the painted rule reads it: nothing to say
    unread = workspace.shot("inbox/other/bag.jpg")
    mask_beside(unread, "remove")
    orphan = workspace.inbox / "other" / "belt.protect.png"
    Image.new("L", (8, 8)).save(orphan)
    hidden = workspace.shot("inbox/.trash/old.jpg")  # an ignored folder: not looked into
    mask_beside(hidden, "remove")

    result = check(workspace)

    assert result.exit_code == 0, result.output
    warnings = [line.strip() for line in result.output.splitlines() if line.startswith("! ")]
    assert warnings == [
        f"! {unread}: bag.remove.png lies beside it but rule 'cutouts' has no retouch step with remove_mask: sidecar; "
        "it will not be used",
        f"! {orphan}: a protect mask with no shot of its name beside it (belt.jpg, .tif...); nothing reads it",
    ], result.output
