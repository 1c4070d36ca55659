"""publish: on_approval: a channel's outputs wait in its staging folder until `assetd approve` publishes them (or
`assetd reject` records why not), while the job's other channels publish at once."""
from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from pipeline import approval
from pipeline.cli import cli
from pipeline.config import load_config
from pipeline.health import Problems
from pipeline.outputs import TEMP_SUFFIX, Publisher, remove_temp_files, write_temp
from pipeline.store import APPROVED, PENDING_APPROVAL, REJECTED, JobStatus, Store

from conftest import Workspace
from approvalcases import TWO_CHANNELS
from daemons import run_until_idle

def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def files_in(folder: Path) -> list[str]:
    """Every name in ``folder``, hidden ones (temporary files) included."""
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


@pytest.fixture
def studio(workspace: Workspace) -> Workspace:
    text = workspace.config_path.read_text().replace(
        "cutouts:   {path: out/cutouts,   format: png}",
        "cutouts:   {path: out/cutouts,   format: png, publish: on_approval}")
    workspace.config_path.write_text(text)
    workspace.add_rule("20-cutouts.yaml", TWO_CHANNELS)
    return workspace


def staging(ws: Workspace) -> Path:
    return ws.root / "state" / "staging" / "cutouts"


def process(ws: Workspace, name: str = "a.jpg", seed: int = 1) -> None:
    ws.shot(f"inbox/{name}", "white", size=(320, 240), seed=seed, subject="bottle")
    result = invoke("process", ws.inbox / name, "--config", ws.config_path)
    assert result.exit_code == 0, result.output
    assert "awaits approval; staged at" in result.output


def open_store(ws: Workspace) -> Store:
    return Store(ws.root / "state" / "assetd.sqlite3")


def test_the_at_once_channel_publishes_and_the_staged_output_only_on_approve(studio):
    process(studio)
    assert files_in(studio.out("webshop")) == ["a.jpg"]  # at once, as before
    assert files_in(studio.out("cutouts")) == []
    assert files_in(staging(studio)) == ["a.png"]  # the name it will have
    staged = (staging(studio) / "a.png").read_bytes()
    manifest = json.loads(studio.manifest("cutouts", "a").read_text())
    assert {(o["channel"], o["approval"], o["staged_path"]) for o in manifest["outputs"]} == {
        ("cutouts", "pending", str((staging(studio) / "a.png").resolve())), ("webshop", None, None)}

    listed = invoke("jobs", "--config", studio.config_path)
    assert "◷ 1 awaits approval" in listed.output and "1 output awaits approval" in listed.output, listed.output

    result = invoke("approve", "1", "--config", studio.config_path)
    assert result.exit_code == 0, result.output
    assert result.output.strip() == f"job 1 (a.jpg): 1 output published to {studio.out('cutouts').resolve()}"
    assert files_in(studio.out("cutouts")) == ["a.png"]  # no temporary file left beside it
    assert (studio.out("cutouts") / "a.png").read_bytes() == staged
    assert files_in(staging(studio)) == []
    assert "await" not in invoke("jobs", "--config", studio.config_path).output

    store = open_store(studio)
    try:
        by_channel = {o.channel: o for o in store.outputs(1)}
        assert by_channel["cutouts"].approval == APPROVED and by_channel["cutouts"].staged_path is None
        assert by_channel["webshop"].approval is None
        assert [(d["verdict"], d["by"]) for d in store.decisions(1)] == [("approved", "cli")]
    finally:
        store.close()


def test_approving_twice_publishes_once(studio):
    process(studio)
    assert invoke("approve", "1", "--config", studio.config_path).exit_code == 0
    published = studio.out("cutouts") / "a.png"
    stamp = published.stat().st_mtime_ns
    again = invoke("approve", "1", "--config", studio.config_path)
    assert again.exit_code == 0, again.output
    assert again.output.strip() == "job 1: already approved; its outputs are published"
    output_id = open_store(studio).outputs(1)[0].id
    by_id = invoke("approve", "--output", output_id, "--config", studio.config_path)
    assert by_id.exit_code == 0 and "already approved by cli at" in by_id.output, by_id.output
    assert published.stat().st_mtime_ns == stamp


def test_two_approvals_at_once_publish_once(studio):
    """The command line and the review page approving the same job at the same moment: one publishes."""
    process(studio)
    config = load_config(studio.config_path)
    stores = [open_store(studio), open_store(studio)]
    start = threading.Barrier(2)
    decisions = []

    def decide(store: Store, by: str) -> None:
        start.wait()
        decisions.append(approval.approve(config, store, job_ids=[1], by=by))

    threads = [threading.Thread(target=decide, args=(s, by)) for s, by in zip(stores, ("cli", "review page"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    try:
        assert sorted(len(d.done) for d in decisions) == [0, 1]
        assert all(not d.problems for d in decisions), [d.problems for d in decisions]
        assert [d["verdict"] for d in stores[0].decisions(1)] == ["approved"]
        assert files_in(studio.out("cutouts")) == ["a.png"]
    finally:
        for s in stores:
            s.close()


def test_a_rejected_output_is_never_published_and_its_reason_is_recorded(studio):
    process(studio)
    assert invoke("reject", "1", "--config", studio.config_path).exit_code == 2  # --reason is required
    result = invoke("reject", "1", "--reason", "shadow cut off on the left", "--config", studio.config_path)
    assert result.exit_code == 0, result.output
    assert result.output.startswith("job 1 (a.jpg): 1 output rejected (shadow cut off on the left); never published")
    assert files_in(studio.out("cutouts")) == []
    assert files_in(staging(studio)) == ["a.png"]  # kept where it was: the page shows it

    approve_job = invoke("approve", "1", "--config", studio.config_path)
    assert approve_job.exit_code == 1
    store = open_store(studio)
    try:
        (output,) = [o for o in store.outputs(1) if o.channel == "cutouts"]
        assert output.approval == REJECTED
        assert [(d["verdict"], d["reason"]) for d in store.decisions(1)] == [("rejected", "shadow cut off on the left")]
    finally:
        store.close()
    assert f"job 1: no output awaits approval; 1 output rejected (to approve anew: --output {output.id})" \
        in approve_job.output
    assert files_in(studio.out("cutouts")) == []
    assert invoke("reject", "1", "--reason", "again", "--config", studio.config_path).output.strip() == \
        "job 1: already rejected (1 output: %d)" % output.id

    anew = invoke("approve", "--output", output.id, "--config", studio.config_path)  # a second look: it is fine
    assert anew.exit_code == 0, anew.output
    assert files_in(studio.out("cutouts")) == ["a.png"]
    taken_back = invoke("reject", "--output", output.id, "--reason", "no", "--config", studio.config_path)
    assert taken_back.exit_code == 1
    assert "already approved by cli at" in taken_back.output
    assert "a published file is not taken back" in taken_back.output


@pytest.mark.parametrize("damage", ["changed", "missing"])
def test_a_staged_file_changed_or_missing_is_not_published(studio, damage):
    process(studio)
    staged = staging(studio) / "a.png"
    if damage == "changed":
        staged.write_bytes(staged.read_bytes() + b"edited")
    else:
        staged.unlink()
    result = invoke("approve", "1", "--config", studio.config_path)
    assert result.exit_code == 1
    output_id = open_store(studio).outputs(1)[0].id
    what = "changed since the job wrote it (its sha256 differs)" if damage == "changed" else "is missing"
    assert result.output.strip() == (f"job 1: its output was not published: output {output_id}'s staged file "
                                     f"{staged.resolve()} {what}; re-run the job to stage it anew (assetd retry 1)")
    assert files_in(studio.out("cutouts")) == []
    assert open_store(studio).outputs(1)[0].approval == PENDING_APPROVAL


def test_a_file_put_at_the_channel_path_meanwhile_is_not_overwritten(studio):
    process(studio)
    staged = (staging(studio) / "a.png").read_bytes()
    stranger = studio.out("cutouts") / "a.png"
    stranger.parent.mkdir(parents=True)
    stranger.write_bytes(b"a retoucher's file")
    result = invoke("approve", "1", "--config", studio.config_path)
    assert result.exit_code == 1
    assert result.output.strip() == (f"job 1: its output was not published: {stranger.resolve()} holds a file assetd "
                                     "did not write (put there or edited since); not overwritten: move it away, then "
                                     "approve again")
    assert stranger.read_bytes() == b"a retoucher's file"
    stranger.unlink()
    assert invoke("approve", "1", "--config", studio.config_path).exit_code == 0
    assert stranger.read_bytes() == staged


def test_the_same_bytes_under_another_name_copy_the_staged_output_and_wait_too(studio):
    """A renamed copy of a shot takes its twin's outputs without running the chain, from where they are: the
    staged file of an output still waiting."""
    process(studio, "a.jpg")
    (studio.inbox / "b.jpg").write_bytes((studio.inbox / "a.jpg").read_bytes())
    result = invoke("process", studio.inbox / "b.jpg", "--config", studio.config_path)
    assert result.exit_code == 0 and "awaits approval" in result.output, result.output
    assert files_in(staging(studio)) == ["a.png", "b.png"]
    assert (staging(studio) / "b.png").read_bytes() == (staging(studio) / "a.png").read_bytes()
    store = open_store(studio)
    try:
        assert store.get(2).copied_from == 1
        assert [o.approval for o in store.outputs(2) if o.channel == "cutouts"] == [PENDING_APPROVAL]
    finally:
        store.close()
    assert invoke("approve", "2", "--config", studio.config_path).exit_code == 0
    assert files_in(studio.out("cutouts")) == ["b.png"]


def test_a_later_job_of_the_same_file_replaces_the_published_one_when_approved(studio):
    process(studio, seed=1)
    assert invoke("approve", "1", "--config", studio.config_path).exit_code == 0
    first = (studio.out("cutouts") / "a.png").read_bytes()
    process(studio, seed=2)  # the file shot again: a second job of the same input path
    second_staged = (staging(studio) / "a.png").read_bytes()
    assert second_staged != first
    assert (studio.out("cutouts") / "a.png").read_bytes() == first  # still the approved one

    store = open_store(studio)
    try:
        old = {o.channel: o for o in store.outputs(1)}
        assert old["webshop"].replaced_by == 2  # at once: replaced when job 2 ended
        assert old["cutouts"].replaced_by is None  # not yet: job 2's waits for approval
        result = invoke("approve", "2", "--config", studio.config_path)
        assert result.exit_code == 0, result.output
        assert (studio.out("cutouts") / "a.png").read_bytes() == second_staged
        assert files_in(studio.out("cutouts")) == ["a.png"]
        assert {o.channel: o.replaced_by for o in store.outputs(1)} == {"cutouts": 2, "webshop": 2}
        assert store.awaiting_total() == 0
    finally:
        store.close()
    stale = invoke("approve", "--output", old["cutouts"].id, "--config", studio.config_path)
    assert stale.exit_code == 1 and "replaced by job 2's output" in stale.output, stale.output


def test_a_done_job_run_again_stages_anew_and_its_approval_replaces_its_own_earlier_file(studio):
    """`assetd process --force` (or `assetd retry`) runs the same job again: its earlier record goes, and the
    published file, no longer recorded, is still replaced on approval (it was there when the job ended)."""
    process(studio)
    assert invoke("approve", "1", "--config", studio.config_path).exit_code == 0
    forced = invoke("process", studio.inbox / "a.jpg", "--config", studio.config_path, "--force")
    assert forced.exit_code == 0 and "awaits approval" in forced.output, forced.output
    assert [j.id for j in open_store(studio).jobs()] == [1]
    result = invoke("approve", "--all-pending", "--config", studio.config_path)
    assert result.exit_code == 0, result.output
    assert "job 1 (a.jpg): 1 output published" in result.output
    assert files_in(studio.out("cutouts")) == ["a.png"] and files_in(staging(studio)) == []


SQUARES = """\
name: squares
match: {folder: "misc/**"}
steps:
  - remove_background: {}
  - crops: {ratios: ["1:1", "4:5"], fill: pad}
outputs:
  - {channel: cutouts, from: crops}
"""


def test_a_rerun_under_another_rule_replaces_the_first_jobs_files_once_approved(studio):
    """`assetd rerun --rule`: the re-run's staged outputs have other names; the first job's published files stay
    until the re-run is approved, then go (the at-once channel's went when the re-run ended)."""
    studio.add_rule("15-squares.yaml", SQUARES)
    studio.shot("inbox/misc/a.jpg", "white", size=(320, 240), seed=2)
    (first,) = run_until_idle(*studio.load(), 1)
    assert first.rule == "squares" and first.status is JobStatus.DONE, first.error
    assert invoke("approve", first.id, "--config", studio.config_path).exit_code == 0
    assert files_in(studio.out("cutouts")) == ["a_1x1.png", "a_4x5.png"]
    assert invoke("rerun", first.id, "--rule", "cutouts", "--config", studio.config_path).exit_code == 0

    jobs = run_until_idle(*studio.load(), 2)
    assert [(j.rule, j.status, j.rerun_of) for j in jobs] == [("squares", JobStatus.DONE, None),
                                                              ("cutouts", JobStatus.DONE, first.id)]
    assert files_in(studio.out("cutouts")) == ["a_1x1.png", "a_4x5.png"]  # the re-run's waits for approval
    assert files_in(staging(studio)) == ["a.png"]
    result = invoke("approve", jobs[1].id, "--config", studio.config_path)
    assert result.exit_code == 0, result.output
    assert f"job 2: removed {studio.out('cutouts').resolve() / 'a_1x1.png'}: job 1's output, replaced by re-run job 2" \
        in result.output.splitlines()
    assert files_in(studio.out("cutouts")) == ["a.png"]
    store = open_store(studio)
    try:
        assert {o.replaced_by for o in store.outputs(first.id)} == {2}
    finally:
        store.close()


def test_unknown_ids_and_outputs_published_at_once(studio):
    assert invoke("approve", "--config", studio.config_path).exit_code == 2  # nothing named
    process(studio)
    result = invoke("approve", "7", "--output", "99", "--config", studio.config_path)
    assert result.exit_code == 1
    assert result.output.splitlines() == ["job 7: no such job", "output 99: no such output"]
    store = open_store(studio)
    webshop = [o.id for o in store.outputs(1) if o.channel == "webshop"][0]
    store.close()
    at_once = invoke("approve", "--output", webshop, "--config", studio.config_path)
    assert at_once.exit_code == 0
    assert "published when its job ended (channel webshop publishes at once); nothing to approve" in at_once.output
    assert invoke("reject", "--output", webshop, "--reason", "x", "--config", studio.config_path).exit_code == 1
    everything = invoke("approve", "--all-pending", "--config", studio.config_path)
    assert everything.exit_code == 0 and "1 output published" in everything.output
    assert invoke("approve", "--all-pending", "--config", studio.config_path).output.strip() == \
        "no output awaits approval"
    assert invoke("retry", "1", "--config", studio.config_path).exit_code == 0  # queued to run again
    queued = invoke("reject", "1", "--reason", "x", "--config", studio.config_path)
    assert queued.exit_code == 1
    assert queued.output.strip() == "job 1 is queued; its outputs can be rejected once it is done"


def test_the_daemon_stages_and_approve_publishes_while_it_runs(studio):
    """`assetd run` as a process: the shot's at-once output lands, its staged one waits; `assetd approve`
    from another process publishes it while the daemon keeps running."""
    proc = subprocess.Popen([sys.executable, "-m", "pipeline", "run", "--config", str(studio.config_path)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        studio.shot("inbox/b.jpg", "white", size=(320, 240), seed=3, subject="mug")
        deadline = time.monotonic() + 60
        while not (studio.out("webshop") / "b.jpg").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert (studio.out("webshop") / "b.jpg").exists()
        while open_store(studio).awaiting_total() == 0 and time.monotonic() < deadline:  # the job is recorded
            time.sleep(0.1)
        assert files_in(studio.out("cutouts")) == [] and files_in(staging(studio)) == ["b.png"]
        result = invoke("approve", "--all-pending", "--config", studio.config_path)
        assert result.exit_code == 0, result.output
        assert files_in(studio.out("cutouts")) == ["b.png"]
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out.decode(errors="replace")[-2000:]
    assert "b.jpg → 1 output published, 1 staged for approval" in out.decode(errors="replace")  # not "2 outputs"


def test_a_job_failed_for_good_withdraws_its_staged_files(studio):
    """A job that staged its outputs and then failed for good (a crash after the renames) leaves no staged file."""
    config = load_config(studio.config_path)
    store = open_store(studio)
    try:
        job, _ = store.enqueue(input_hash="h" * 64, rule="cutouts", rule_version="1", input_path="/in/a.jpg",
                               rel_path="a.jpg", max_attempts=1)
        store.claim_next("w", 60)
        staged = write_temp(staging(studio) / "a.png", b"staged bytes").rename(staging(studio) / "a.png")
        store.reserve_output(job.id, str(studio.out("cutouts") / "a.png"), "cutouts", "remove_background",
                             hashlib.sha256(b"staged bytes").hexdigest(), 12, staged_path=str(staged))
        store.fail(job.id, "/in/a.jpg: the worker stopped while processing it")
        assert Publisher("worker-1", config, store, None).withdraw_failed() == 1
        assert not staged.exists()
        assert "removed the 1 file it had published" in store.get(job.id).error
    finally:
        store.close()


def test_staging_folders_are_cleaned_measured_and_checked(studio, tmp_path):
    config, rules = studio.load()
    folder = config.staging_folder(config.channels["cutouts"])
    ours = write_temp(folder / "a.png", b"half")
    tag = ours.name[: -len(TEMP_SUFFIX)].rpartition(".")[2].rpartition("-")[0]
    ours.unlink()
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    left = folder / f".b.png.x1y2.{tag}-{proc.pid}{TEMP_SUFFIX}"  # an assetd that died while staging
    left.write_bytes(b"x")
    assert remove_temp_files(config) == {folder: 1} and not left.exists()

    volumes = Problems(None, None, config, rules=rules).volumes()
    assert any(folder in v.folders and "cutouts" in v.rules for v in volumes), volumes

    assert invoke("check", "--config", studio.config_path).exit_code == 0
    text = studio.config_path.read_text()
    studio.config_path.write_text(text.replace("publish: on_approval}",
                                               "publish: on_approval, staging: out/cutouts/wait}"))
    overlapping = invoke("check", "--config", studio.config_path)
    assert overlapping.exit_code == 1
    assert (f"channels.cutouts.staging: {studio.root / 'out/cutouts/wait'} overlaps the folder of channel cutouts"
            in overlapping.output), overlapping.output
    blocked = tmp_path / "a-file"  # a file where the folder should be: nothing can be created under it
    blocked.write_text("not a folder")
    studio.config_path.write_text(text.replace("publish: on_approval}",
                                               f"publish: on_approval, staging: {blocked}/x}}"))
    unwritable = invoke("check", "--config", studio.config_path)
    assert unwritable.exit_code == 1
    assert f"channels.cutouts.staging: {blocked}/x is not writable" in unwritable.output, unwritable.output


@pytest.fixture
def both_wait(studio: Workspace) -> Workspace:
    """Both channels wait for approval: each job has two outputs awaiting a decision."""
    text = studio.config_path.read_text().replace('background: "#ffffff"}',
                                                  'background: "#ffffff", publish: on_approval}')
    studio.config_path.write_text(text)
    return studio


def output_ids(ws: Workspace, job_id: int) -> dict[str, int]:
    store = open_store(ws)
    try:
        return {o.channel: o.id for o in store.outputs(job_id)}
    finally:
        store.close()


def test_outputs_given_by_id_are_the_selection_and_the_jobs_beside_them_only_scope_them(both_wait):
    """`assetd approve 1 --output ID` decides about that output alone, never the rest of job 1; an output of
    another job is refused; and the hint for rejected outputs is a command that works as printed."""
    process(both_wait, "a.jpg", seed=1)
    process(both_wait, "b.jpg", seed=2)
    a, b = output_ids(both_wait, 1), output_ids(both_wait, 2)

    one = invoke("approve", "1", "--output", a["cutouts"], "--config", both_wait.config_path)
    assert one.exit_code == 0, one.output
    assert one.output.strip() == f"job 1 (a.jpg): 1 output published to {both_wait.out('cutouts').resolve()}"
    assert files_in(both_wait.out("cutouts")) == ["a.png"] and files_in(both_wait.out("webshop")) == []

    stranger = invoke("approve", "1", "--output", b["cutouts"], "--config", both_wait.config_path)
    assert stranger.exit_code == 1
    assert stranger.output.splitlines() == [
        f"output {b['cutouts']} (job 2, b.png): not an output of job 1; nothing done to it (the jobs named beside "
        "--output only say whose outputs they are)",
        "job 1: none of the --output ids is one of its outputs; nothing done to it (to approve every output of it "
        "awaiting approval, give the job without --output)"]
    assert files_in(both_wait.out("cutouts")) == ["a.png"] and files_in(both_wait.out("webshop")) == []

    rejected = invoke("reject", "2", "--output", b["webshop"], "--reason", "too dark", "--config",
                      both_wait.config_path)
    assert rejected.exit_code == 0, rejected.output
    assert rejected.output.startswith("job 2 (b.jpg): 1 output rejected (too dark)")
    assert invoke("reject", "2", "--reason", "label cut off", "--config", both_wait.config_path).exit_code == 0
    store = open_store(both_wait)
    try:
        assert {o.channel: o.approval for o in store.outputs(2)} == {"cutouts": REJECTED, "webshop": REJECTED}
        assert {o.channel: o.approval for o in store.outputs(1)} == {"cutouts": APPROVED, "webshop": PENDING_APPROVAL}
    finally:
        store.close()

    listed = invoke("jobs", "--config", both_wait.config_path).output.splitlines()
    assert "✗ 2 rejected" in listed[3] and "◷ 1 awaits approval" in listed[2], listed  # job 2's row, job 1's
    assert listed[-1].endswith("1 output awaits approval (assetd approve), 2 outputs rejected (assetd jobs --status "
                               "rejected)"), listed
    only = invoke("jobs", "--status", "rejected", "--config", both_wait.config_path).output.splitlines()
    assert [line.split()[0] for line in only[2:-1]] == ["2"], only

    hint = invoke("approve", "2", "--config", both_wait.config_path)
    assert hint.exit_code == 1
    ids = sorted(b.values())
    options = f"--output {ids[0]} --output {ids[1]}"
    assert hint.output.strip() == f"job 2: no output awaits approval; 2 outputs rejected (to approve anew: {options})"
    typed = invoke("approve", "2", *options.split(), "--config", both_wait.config_path)  # as the hint says
    assert typed.exit_code == 0, typed.output
    assert sorted(typed.output.splitlines()) == [
        f"job 2 (b.jpg): 2 outputs published to {both_wait.out('cutouts').resolve()}, "
        f"{both_wait.out('webshop').resolve()}"]
    assert files_in(both_wait.out("cutouts")) == ["a.png", "b.png"] and files_in(both_wait.out("webshop")) == ["b.jpg"]
    assert "rejected" not in invoke("jobs", "--config", both_wait.config_path).output
