"""A shot's sidecar masks (``shot.remove.png``...) are part of what its job is: a retoucher who fixes a mask after the
job ran gets a new job (daemon and `assetd process`), a renamed copy with another mask is nobody's twin, a job whose
masks changed before it ran ends superseded, and `after: move` carries the masks both ways."""
from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from pathlib import Path

import numpy as np
from click.testing import CliRunner
from PIL import Image

from pipeline.cli import cli
from pipeline.daemon import Daemon
from pipeline.intake import Intake
from pipeline.store import JobStatus, Store
from pipeline.synth import studio_shot
from pipeline.worker import Worker

from conftest import Workspace

SIZE = (320, 240)
CLEAN = ("name: clean\nmatch: {name: 'shot*'}\nsteps:\n  - retouch: {remove_mask: sidecar}\n"
         "outputs:\n  - {channel: cutouts, from: retouch}\n")


def setup(workspace: Workspace, extra: str = "") -> Path:
    """The workspace with a retouch rule reading ``NAME.remove.png``; writes ``inbox/shot.png`` (lossless: outputs
    compare exactly) and returns it."""
    workspace.write_config(settle=0.2, extra=extra)
    workspace.add_rule("05-clean.yaml", CLEAN)
    path = workspace.inbox / "shot.png"
    Image.fromarray(studio_shot("grey", size=SIZE, seed=4, subject="mug").rgb).save(path)
    return path


def paint(shot: Path, box: tuple[int, int, int, int], name: str | None = None) -> Path:
    """A remove mask beside ``shot`` (or named ``name``) painting ``box`` (x0, y0, x1, y1) on the backdrop."""
    mask = np.zeros(SIZE[::-1], np.uint8)
    x0, y0, x1, y1 = box
    mask[y0:y1, x0:x1] = 255
    path = shot.with_name(name or f"{shot.stem}.remove.png")
    Image.fromarray(mask).save(path)
    return path


def process(workspace: Workspace, *paths: Path, force: bool = False) -> list[dict]:
    args = ["process", *map(str, paths), "--config", str(workspace.config_path), "--json"] + (["--force"] * force)
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)["results"]


def output_pixels(doc: dict) -> np.ndarray:
    (out,) = doc["outputs"]
    return np.asarray(Image.open(out["path"]).convert("RGB"))


def jobs(workspace: Workspace) -> list:
    config, _ = workspace.load()
    store = Store(config.database)
    try:
        return store.jobs()
    finally:
        store.close()


def test_an_edited_mask_is_a_new_job_and_an_unchanged_one_is_already_done(workspace):
    shot = setup(workspace)
    mask = paint(shot, (10, 10, 40, 40))
    (first,) = process(workspace, shot)
    assert first["status"] == "done", first
    before = output_pixels(first)

    (again,) = process(workspace, mask)  # a mask named on the command line stands for its shot
    assert again["input"] == str(shot) and again["status"] == "skipped", again
    assert again["error"].startswith("already done as job"), again

    paint(shot, (250, 180, 300, 230))  # the retoucher fixes the mask: another area
    (second,) = process(workspace, shot)  # no --force needed
    assert second["status"] == "done", second
    assert not np.array_equal(output_pixels(second), before)
    done = [j for j in jobs(workspace) if j.status is JobStatus.DONE]
    assert len(done) == 2 and done[0].masks != done[1].masks and done[0].input_hash == done[1].input_hash

    manifest = json.loads(workspace.manifest("clean", "shot").read_text())
    assert manifest["input_masks"] == [{"kind": "remove", "file": "shot.remove.png",
                                        "sha256": hashlib.sha256(mask.read_bytes()).hexdigest()}]

    mask.unlink()  # removed: a job of its own again, the shot as it is
    (third,) = process(workspace, shot)
    assert third["status"] == "done" and np.array_equal(output_pixels(third)[..., :3], np.asarray(
        Image.open(shot).convert("RGB"))), third


def test_a_renamed_copy_with_its_own_mask_is_no_twin_and_force_runs_the_chain(workspace):
    shot = setup(workspace)
    paint(shot, (10, 10, 40, 40))
    copy = shutil.copy(shot, shot.with_name("shot-copy.png"))
    paint(Path(copy), (250, 180, 300, 230))
    same = shutil.copy(shot, shot.with_name("shot-same.png"))
    shutil.copy(shot.with_name("shot.remove.png"), shot.with_name("shot-same.remove.png"))

    docs = {Path(d["input"]).name: d for d in process(workspace, shot, Path(copy), Path(same))}
    assert {d["status"] for d in docs.values()} == {"done"}, docs
    by_name = {Path(j.input_path).name: j for j in jobs(workspace)}
    assert by_name["shot-copy.png"].copied_from is None  # another mask: the chain ran
    assert by_name["shot-same.png"].copied_from == by_name["shot.png"].id  # the same mask: the twin's outputs
    assert not np.array_equal(output_pixels(docs["shot-copy.png"]), output_pixels(docs["shot.png"]))
    assert np.array_equal(output_pixels(docs["shot-same.png"]), output_pixels(docs["shot.png"]))

    (forced,) = process(workspace, Path(copy), force=True)  # its own job again: not a copy of shot.png's
    assert forced["status"] == "done"
    assert {Path(j.input_path).name: j for j in jobs(workspace)}["shot-copy.png"].copied_from is None


def test_a_job_whose_mask_changed_before_it_ran_is_superseded_naming_the_mask(workspace):
    shot = setup(workspace)
    paint(shot, (10, 10, 40, 40))
    config, rules = workspace.load()
    store = Store(config.database)
    try:
        queued = Intake(config, rules, store).submit(shot).job
        time.sleep(0.01)
        paint(shot, (250, 180, 300, 230))
        worker = Worker("test", config, store, rules)
        result = worker.process(store.claim_next(worker.owner, 60.0))  # claimed by the worker that runs it
        assert result.status is JobStatus.SUPERSEDED
        assert "shot.remove.png changed after it was queued; the new version is queued as its own job" in result.error
        assert store.get(queued.id).status is JobStatus.SUPERSEDED
        again = Intake(config, rules, store).submit(shot)  # what the watcher does when the mask settles
        assert again.created and again.job.id != queued.id
    finally:
        store.close()


def test_the_daemon_queues_the_shot_again_when_its_mask_is_edited_or_deleted(workspace, no_leaked_threads):
    shot = setup(workspace)
    paint(shot, (10, 10, 40, 40))
    config, rules = workspace.load()
    daemon = Daemon(config, rules)
    daemon.start()

    def until(count: int) -> list:
        deadline = time.monotonic() + 30
        while True:
            done = [j for j in daemon.store.jobs() if j.status is JobStatus.DONE]
            if len(done) >= count and daemon.idle():
                return done
            assert time.monotonic() < deadline, [(j.id, j.status, j.error) for j in daemon.store.jobs()]
            time.sleep(0.05)

    try:
        until(1)
        paint(shot, (250, 180, 300, 230))
        first, second = until(2)
        assert first.masks != second.masks and first.input_path == second.input_path
        shot.with_name("shot.remove.png").unlink()
        *_, third = until(3)
        assert third.masks == ""
        assert all(Path(j.input_path).name == "shot.png" for j in daemon.store.jobs())  # never the mask itself
    finally:
        daemon.stop()


def test_after_move_carries_the_masks_and_retry_brings_them_back(workspace):
    shot = setup(workspace, extra="")
    text = workspace.config_path.read_text().replace("  - path: inbox\n", "  - path: inbox\n    after: move\n")
    workspace.config_path.write_text(text)
    paint(shot, (10, 10, 40, 40))
    (workspace.inbox / "done").mkdir()
    (workspace.inbox / "done" / "shot.png").write_bytes(b"an earlier shot.png")  # a clash: shot-2.png, shot-2.remove.png

    (doc,) = process(workspace, shot)
    assert doc["status"] == "done"
    assert sorted(p.name for p in workspace.inbox.iterdir() if p.is_file()) == []
    assert sorted(p.name for p in (workspace.inbox / "done").iterdir()) == ["shot-2.png", "shot-2.remove.png",
                                                                            "shot.png"]
    (job,) = jobs(workspace)
    result = CliRunner().invoke(cli, ["retry", str(job.id), "--config", str(workspace.config_path)])
    assert result.exit_code == 0, result.output
    assert "back to" in result.output and "with shot.remove.png" in result.output
    assert sorted(p.name for p in workspace.inbox.iterdir() if p.is_file()) == ["shot.png", "shot.remove.png"]


def test_rerun_uses_the_current_masks_and_says_so(workspace):
    shot = setup(workspace)
    paint(shot, (10, 10, 40, 40))
    (first,) = process(workspace, shot)
    (job,) = jobs(workspace)
    paint(shot, (250, 180, 300, 230))
    result = CliRunner().invoke(cli, ["rerun", str(job.id), "--config", str(workspace.config_path)])
    assert result.exit_code == 0, result.output
    assert (f"job {job.id}: the masks beside {shot} changed since it ran (now: shot.remove.png); the re-run uses them "
            "as they are now, recorded in its job") in result.output
    rerun = [j for j in jobs(workspace) if j.rerun_of == job.id][0]
    assert rerun.masks and rerun.masks != job.masks


def test_explain_says_whose_mask_it_is_and_whether_its_rule_reads_it(workspace):
    shot = setup(workspace)
    mask = paint(shot, (10, 10, 40, 40))
    other = workspace.shot("inbox/bag.jpg", seed=1)
    unused = paint(other, (10, 10, 40, 40))

    result = CliRunner().invoke(cli, ["explain", str(mask), "--config", str(workspace.config_path)])
    assert result.exit_code == 0  # read by its shot's rule: fine
    assert result.output.splitlines()[0] == (f"{mask}: a remove mask for shot.png (read by retouch: remove_mask: "
                                             "sidecar); never taken as an input")
    assert "shot.png: rule 'clean' reads it (retouch)" in result.output
    assert "✓" not in result.output and "ignores" not in result.output  # no rule "takes" it

    result = CliRunner().invoke(cli, ["explain", str(unused), "--config", str(workspace.config_path)])
    assert result.exit_code == 1
    assert "bag.jpg: rule 'cutouts' has no step that reads it (needs retouch: remove_mask: sidecar); it is not " \
           "used" in result.output

    orphan = paint(shot, (10, 10, 40, 40), name="gone.remove.png")
    result = CliRunner().invoke(cli, ["explain", str(orphan), "--config", str(workspace.config_path)])
    assert result.exit_code == 1 and "gone.<image> (none lies beside it now)" in result.output


def test_a_mask_painted_after_its_shot_was_moved_says_where_it_went_and_retry_runs_with_it(workspace, caplog,
                                                                                            no_leaked_threads):
    """after: move took the done shot to done/; its mask arrives later. One line names where the shot went and the
    command; `assetd retry` moves the shot back beside the mask and the same job runs with it (not superseded, not
    "already done"); `assetd explain` on the mask says the same."""
    caplog.set_level(logging.INFO)
    shot = setup(workspace)
    text = workspace.config_path.read_text().replace("  - path: inbox\n", "  - path: inbox\n    after: move\n")
    workspace.config_path.write_text(text)
    config, rules = workspace.load()
    done_shot = workspace.inbox / "done" / "shot.png"
    daemon = Daemon(config, rules)
    daemon.start()

    def until(what, check) -> None:
        deadline = time.monotonic() + 30
        while not (check() and daemon.idle()):
            assert time.monotonic() < deadline, (what, [(j.id, j.status, j.error) for j in daemon.store.jobs()])
            time.sleep(0.05)

    try:
        until("the shot done and moved", done_shot.exists)
        (job,) = daemon.store.jobs()
        before = np.asarray(Image.open(workspace.root / "out" / "cutouts" / "shot.png").convert("RGB"))
        mask = paint(shot, (250, 180, 300, 230))  # the shot is no longer beside it
        line = (f"{mask}: no shot lies beside this remove mask: shot.png was moved to {done_shot} when job {job.id} "
                f"ended (done); to redo it with this mask: assetd retry {job.id} (it moves the shot back beside the "
                "mask)")
        until("the line", lambda: line in caplog.text)

        result = CliRunner().invoke(cli, ["explain", str(mask), "--config", str(workspace.config_path)])
        assert result.exit_code == 1 and f"shot.png was moved to {done_shot}" in result.output, result.output

        result = CliRunner().invoke(cli, ["retry", str(job.id), "--config", str(workspace.config_path)])
        assert result.exit_code == 0, result.output
        assert (f"job {job.id}: the masks beside {shot} changed since it ran (now: shot.remove.png); it runs with "
                "them, recorded in its job") in result.output
        until("the job done again", lambda: daemon.store.get(job.id).status is JobStatus.DONE and done_shot.exists())
        assert [(j.id, j.status) for j in daemon.store.jobs()] == [(job.id, JobStatus.DONE)]  # no other job
        assert daemon.store.get(job.id).masks != ""
        after = np.asarray(Image.open(workspace.root / "out" / "cutouts" / "shot.png").convert("RGB"))
        changed = (after != before).any(axis=2)
        assert changed[180:230, 250:300].any() and not changed[:170, :].any()  # the mask was used, only there
        assert (workspace.inbox / "done" / "shot.remove.png").exists()  # and went with the shot
    finally:
        daemon.stop()
