"""The fault-injection suite at its reduced size (``make reliability`` runs the full one and writes RELIABILITY.md).

Each scenario runs the real ``assetd run`` process on a small workspace and does something bad to it (see
``bench/reliability.py``); the audit must find 0 lost, 0 duplicated, 0 corrupt, 0 innocent jobs failed, 0 temp
files left, no stray deliverables, and one problem alert on and one off per outage. The failpoints the
scenarios aim with (``pipeline/faults.py``) are tested first.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

import reliability  # noqa: E402

from pipeline import faults  # noqa: E402

# Scenarios whose promise does not hold yet: they run, and are expected to fail until it is fixed (then remove
# the entry).
NEEDS: dict[str, str] = {}


def _param(name: str):
    if name in NEEDS:
        return pytest.param(name, marks=pytest.mark.xfail(reason=NEEDS[name], strict=False))
    return name


@pytest.mark.parametrize("name", [_param(n) for n in reliability.SCENARIOS])
def test_scenario_holds_every_promise(name, tmp_path):
    result = reliability.SCENARIOS[name](tmp_path / name, "reduced")
    if result["skipped"]:
        pytest.skip(result["skipped"])
    assert reliability.problems(result) == [], result["line"]


# -- the failpoints themselves -----------------------------------------------------------------------------
@pytest.fixture
def failpoints():
    yield faults.configure
    faults.configure(os.environ.get(faults.ENV))


def test_failpoints_do_nothing_when_unset(failpoints):
    failpoints(None)
    for name in faults.POINTS:
        assert faults.point(name, "/inbox/a.jpg") is None


def test_a_failpoint_fires_at_the_nth_hit_of_the_file_it_names(failpoints):
    failpoints("decode=raise-enospc@2@name:bad*")
    faults.point("decode", "/inbox/good.jpg")  # not counted: another file
    faults.point("decode", "/inbox/bad.jpg")  # the first hit
    with pytest.raises(OSError) as raised:
        faults.point("decode", "/inbox/bad.jpg")
    assert raised.value.errno == 28 and raised.value.filename == "/inbox/bad.jpg"
    faults.point("decode", "/inbox/bad.jpg")  # @N fires once


def test_a_full_disk_at_the_database_commit_is_what_sqlite_raises(failpoints):
    """A full database volume names no input file: SQLite says "database or disk is full", and the problem that
    pauses work is the database's volume, not the input's (the trial's pause read "disk:/ ... writing a.jpg")."""
    import sqlite3

    failpoints("db-commit=raise-enospc@1")
    with pytest.raises(sqlite3.OperationalError, match="database or disk is full"):
        faults.point("db-commit", "/inbox/a.jpg")


def test_probability_draws_repeat_with_the_same_seed(failpoints):
    def fired(seed: int) -> list[int]:
        failpoints("stage=raise-enospc%0.3", seed=seed)
        hits = []
        for i in range(40):
            try:
                faults.point("stage")
            except OSError:
                hits.append(i)
        return hits

    assert fired(7) == fired(7) and 0 < len(fired(7)) < 40


def test_a_bad_failpoint_spec_names_the_entry():
    for spec in ("decode", "unknown=kill", "stage=explode", "stage=kill@0", "stage=kill%2"):
        with pytest.raises(faults.FaultSpecError, match="ASSETD_FAULTS"):
            faults.parse(spec)


def test_kill_ends_the_process_with_sigkill_and_says_where(tmp_path):
    code = "from pipeline import faults; faults.point('output-write', '/out/a.png'); print('survived')"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60,
                          env=dict(os.environ, PYTHONPATH=str(ROOT), ASSETD_FAULTS="output-write=kill"))
    assert done.returncode == -9 and "survived" not in done.stdout
    assert "assetd fault: kill at output-write #1 (a.png)" in done.stderr
