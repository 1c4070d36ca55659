"""``make reliability``: fault injection against the real ``assetd run`` process; writes RELIABILITY.md.

    .venv/bin/python bench/reliability.py [--size full|reduced] [--only NAME[,NAME...]] [--markdown PATH]

Each scenario builds a small studio workspace in a temporary folder (small synthetic shots, a cheap rule: a
cut-out and two pad crops, about 0.1 s a job), runs ``assetd run`` on it as a separate process, does
something bad to it (SIGKILL, failpoints from ``pipeline/faults.py`` through ``ASSETD_FAULTS``, hostile
writers, a vanishing inbox, poison files, a full volume, a dead notification target, a rule saved while
running, a long soak), restarts it when it died, waits for the queue to drain and audits what a studio
would find the next morning:

- lost: a good input without a done job holding all its outputs and its manifest, or a poison file without
  a failed job giving a reason;
- duplicated: an input with two done jobs, or a job whose chain finished twice (the daemon's log);
- stray: a file in a channel or manifest folder that no finished job's record accounts for (a failed job's
  partial deliverables, a second copy);
- corrupt: an output or manifest that does not decode or does not match its recorded SHA-256;
- innocent failed: a failed job for a good input (its final content);
- temp files: any hidden ``.*tmp*`` file left in a channel or manifest folder;
- alerts: problem alerts (not a failed job's alert, not the digest) received by a local json:// webhook,
  ``on``/``off`` against the problem outages the scenario caused (each must alert once on and once off).

Every scenario prints one line of figures and returns a result dict; ``problems(result)`` lists what breaks
the promises above (``tests/test_reliability.py`` runs the reduced sizes and asserts it is empty).
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import io
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from common import machine as common_machine  # noqa: E402
from PIL import Image  # noqa: E402

from pipeline.store import JobStatus, Store  # noqa: E402
from pipeline.synth import BACKDROPS, SUBJECTS, studio_shot  # noqa: E402

SHOT_SIZE = (200, 150)  # about 0.1 s a job with the rule below
SOAK_SIZE = (128, 96)
OUTPUTS_PER_JOB = 3
OUTAGE_SECONDS = 3.5  # how long a problem lasts: past problems.alert_after_seconds (1) and a few checks
CHANNEL_FOLDERS = ("out/cutouts", "out/square", "out/wide")

RULE = """\
name: shots
steps:
  - remove_background: {prior: "off"}
  - crops: {ratios: ["1:1", "16:9"], fill: pad%s}
outputs:
  - {channel: cutouts, from: remove_background}
  - {channel: square, from: crops, ratios: ["1:1"]}
  - {channel: wide, from: crops, ratios: ["16:9"]}
"""

CONFIG = """\
database: state/assetd.sqlite3
workers: {workers}
rules_dir: rules
max_attempts: 3
retry_delay_seconds: 0.2
lease_seconds: 60
rescan_seconds: 2
inboxes:
  - path: inbox
    settle_seconds: {settle}
    polling: {polling}
    poll_interval_seconds: 0.2
channels:
  cutouts: {{path: out/cutouts, format: png}}
  square:  {{path: out/square, format: jpeg, quality: 85}}
  wide:    {{path: out/wide, format: webp, quality: 80}}
notify:
  urls: {urls}
  digest_after_idle_seconds: {digest}
  timeout_seconds: 2
  retry_seconds: 0.5
"""

# The problems section (issue 11, health helper): present only once the daemon knows the key.
PROBLEMS = """\
problems:
  min_free: {min_free}
  check_seconds: 1
  alert_after_seconds: 1
"""


def feature(name: str) -> bool:
    """Whether this checkout's config knows a top-level key (features of issue 11 land one by one)."""
    from pipeline.config import Config

    return name in {f.name for f in dataclasses.fields(Config)}


# -- inputs ---------------------------------------------------------------------------------------------
_shots: dict[tuple[int, tuple[int, int]], bytes] = {}


def shot(i: int, size: tuple[int, int] = SHOT_SIZE) -> bytes:
    """A distinct small studio shot (JPEG bytes), made once per process."""
    key = (i, size)
    if key not in _shots:
        rgb = studio_shot(BACKDROPS[i % len(BACKDROPS)], size=size, seed=i, subject=SUBJECTS[i % len(SUBJECTS)]).rgb
        buf = io.BytesIO()
        Image.fromarray(rgb).save(buf, "JPEG", quality=88)
        _shots[key] = buf.getvalue()
    return _shots[key]


def poison_files() -> dict[str, bytes]:
    """Files that must fail with a reason and take nothing else down with them."""
    good = shot(999)
    bomb = io.BytesIO()
    Image.new("L", (1, 1)).save(bomb, "PNG")
    data = bytearray(bomb.getvalue())
    data[16:24] = (200_000).to_bytes(4, "big") * 2  # IHDR says 200000×200000 (40 gigapixels); the CRC is off too
    return {
        "poison_truncated.jpg": good[: len(good) // 3],
        "poison_empty.jpg": b"",
        "poison_text.jpg": b"this is a text file with a .jpg name\n" * 20,
        "poison_bomb.png": bytes(data),
    }


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# -- writers (how files arrive) ------------------------------------------------------------------------
def write_at_once(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def write_slowly(path: Path, data: bytes, chunks: int = 6, pause: float = 0.1) -> None:
    """A slow share: chunks with pauses shorter than settle_seconds."""
    path.parent.mkdir(parents=True, exist_ok=True)
    step = len(data) // chunks + 1
    with open(path, "wb") as fh:
        for i in range(0, len(data), step):
            fh.write(data[i:i + step])
            fh.flush()
            time.sleep(pause)


def write_renamed(path: Path, data: bytes) -> None:
    """Write NAME.part slowly, then rename it to NAME (most copy tools and browsers)."""
    part = path.with_name(path.name + ".part")
    write_slowly(part, data)
    os.replace(part, path)


def write_in_place(path: Path, data: bytes, chunks: int = 6, pause: float = 0.1) -> None:
    """rsync --inplace: an existing file rewritten from the start in chunks, then cut to the new length."""
    with open(path, "r+b") as fh:
        step = len(data) // chunks + 1
        for i in range(0, len(data), step):
            fh.seek(i)
            fh.write(data[i:i + step])
            fh.flush()
            time.sleep(pause)
        fh.truncate(len(data))


def write_paused(path: Path, data: bytes, pause: float) -> None:
    """Half the file, a pause longer than settle_seconds (a stalled share), then the rest."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fh:
        fh.write(data[: len(data) // 2])
        fh.flush()
        time.sleep(pause)
        fh.write(data[len(data) // 2:])


# -- a notification target -----------------------------------------------------------------------------
class Receiver:
    """A local webhook (apprise json:// target) that can be down, or answer late.

    ``answered`` holds the messages it answered in time to be delivered (``delay`` below the daemon's
    notify.timeout_seconds); ``arrived`` every post, answered or not."""

    def __init__(self, port: int = 0, delay: float = 0.0) -> None:
        self.delay = delay
        self.arrived: list[dict] = []
        self.answered: list[dict] = []
        self.server: ThreadingHTTPServer | None = None
        self.port = port or free_port()

    def start(self) -> "Receiver":
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                outer.arrived.append(body)
                delay = outer.delay
                if delay:
                    time.sleep(delay)
                self.send_response(200)
                self.end_headers()
                if not delay:
                    outer.answered.append(body)

            def log_message(self, *args: Any) -> None:
                pass

        ThreadingHTTPServer.allow_reuse_address = True
        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True, name="reliability-webhook").start()
        return self

    @property
    def url(self) -> str:
        return f"json://127.0.0.1:{self.port}/hook"

    def close(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None

    def problem_alerts(self, about: str = "") -> tuple[int, int]:
        """(on, off): problem alerts answered, not a failed job's alert nor a digest; ``about``: only those
        mentioning this text."""
        on = off = 0
        for m in self.answered:
            title, body = str(m.get("title", "")), str(m.get("message", ""))
            if ": failed: " in title or "batch finished" in title or about not in title + body:
                continue
            if m.get("type") == "failure":
                on += 1
            elif m.get("type") == "success":
                off += 1
        return on, off


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- the workspace and its daemon ----------------------------------------------------------------------
class Studio:
    """A temporary studio workspace and its ``assetd run`` process (restarted as scenarios need)."""

    def __init__(self, root: Path, *, workers: int = 1, settle: float = 0.2, polling: bool = False,
                 urls: list[str] | None = None, digest: float = 600.0, min_free: str = "1", extra: str = "",
                 receiver: bool = True) -> None:
        self.root = root
        for sub in ("rules", "inbox", "state"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        self.receiver = Receiver().start() if receiver else None
        urls = list(urls or []) + ([self.receiver.url] if self.receiver else [])
        self.settle = settle
        text = CONFIG.format(workers=workers, settle=settle, polling=str(polling).lower(), urls=json.dumps(urls),
                             digest=digest)
        if feature("problems"):
            text += PROBLEMS.format(min_free=min_free)
        (root / "config.yaml").write_text(text + extra)
        self.write_rule()
        self.proc: subprocess.Popen | None = None
        self.starts = 0
        self.kills = 0
        self.expected: dict[Path, str] = {}  # good input → sha256 of its final content
        self.poison: set[Path] = set()
        self.superseded: set[str] = set()  # hashes of contents an input had before its final one

    # files
    @property
    def inbox(self) -> Path:
        return self.root / "inbox"

    @property
    def database(self) -> Path:
        return self.root / "state" / "assetd.sqlite3"

    @property
    def log_path(self) -> Path:
        return self.root / "daemon.log"

    def write_rule(self, extra_options: str = "") -> None:
        (self.root / "rules" / "10-shots.yaml").write_text(RULE % extra_options)

    def drop(self, name: str, data: bytes, writer: Callable[[Path, bytes], None] = write_at_once,
             poison: bool = False) -> Path:
        path = self.inbox / name
        if path in self.expected:
            self.superseded.add(self.expected[path])
        writer(path, data)
        if poison:  # left there a while: a file cut short that changed within a minute may be a copy still arriving
            os.utime(path, (time.time() - 3600,) * 2)
            self.poison.add(path)
        else:
            self.expected[path] = sha(data)
        return path

    # the process
    def start(self, faults: str | None = None, seed: int | None = None, wait: bool = True) -> subprocess.Popen:
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        env.pop("ASSETD_FAULTS", None)
        if faults:
            env["ASSETD_FAULTS"] = faults
            env["ASSETD_FAULTS_SEED"] = str(seed if seed is not None else self.starts)
        self.starts += 1
        with open(self.log_path, "a") as log:
            log.write(f"=== reliability: start {self.starts} (ASSETD_FAULTS={faults or ''})\n")
            log.flush()
            self.proc = subprocess.Popen([sys.executable, "-m", "pipeline", "run", "--config",
                                          str(self.root / "config.yaml")], cwd=self.root, env=env, stdout=log,
                                         stderr=subprocess.STDOUT)
        if wait:
            self.wait_log(lambda text: "assetd running" in text, 60, "the daemon to start", since=self.starts)
        return self.proc

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        if self.alive():
            self.proc.send_signal(signal.SIGKILL)
            self.kills += 1
        if self.proc is not None:
            self.proc.wait(30)

    def stop(self) -> int | None:
        """SIGTERM and wait; returns the exit code (None when there was no process)."""
        if self.proc is None:
            return None
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(30)
        return self.proc.returncode

    def close(self) -> None:
        self.stop()
        if self.receiver is not None:
            self.receiver.close()

    def log_text(self, since: int = 1) -> str:
        """The daemon log from the ``since``-th start on."""
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        marker = f"=== reliability: start {since} "
        return text[text.find(marker):] if marker in text else text

    def wait_log(self, predicate: Callable[[str], bool], timeout: float, what: str, since: int = 1) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate(self.log_text(since)):
                return
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"assetd exited ({self.proc.returncode}) while waiting for {what}; "
                                   f"see {self.log_path}")
            time.sleep(0.05)
        raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}; see {self.log_path}")

    # the store, read from outside (a second connection, as `assetd jobs` does)
    def query(self, fn: Callable[[Store], Any]) -> Any:
        if not self.database.exists():
            return None
        store = Store(self.database)
        try:
            return fn(store)
        finally:
            store.close()

    def counts(self) -> dict[str, int]:
        return self.query(lambda s: s.counts()) or {s.value: 0 for s in JobStatus}

    def settled_inputs(self) -> int:
        """How many of the dropped inputs have a finished job for their final content."""
        def count(store: Store) -> int:
            jobs = store.jobs()
            finished = {(j.input_path, j.input_hash) for j in jobs if j.status in (JobStatus.DONE, JobStatus.FAILED)}
            failed_paths = {j.input_path for j in jobs if j.status is JobStatus.FAILED}
            return (sum((str(p), h) in finished for p, h in self.expected.items())
                    + sum(str(p) in failed_paths for p in self.poison))
        return self.query(count) or 0

    def drained(self) -> bool:
        counts = self.counts()
        return (self.settled_inputs() >= len(self.expected) + len(self.poison)
                and not counts["queued"] and not counts["running"])

    def wait_drained(self, timeout: float, restart: Callable[[], None] | None = None) -> bool:
        """Until every dropped input has its finished job and nothing is queued or running. ``restart``:
        called when the daemon died (a failpoint killed it); without it, a death ends the wait."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.drained():
                return True
            if not self.alive():
                if restart is None:
                    return False
                restart()
                if not self.alive():  # restart gave up (or the new process died at once)
                    return False
            time.sleep(0.2)
        return False

    def wait_for_alerts(self, outages: int, timeout: float = 10.0) -> None:
        """Until ``outages`` problem alerts on and off came in (or ``timeout``: the audit reports the count)."""
        deadline = time.monotonic() + timeout
        while self.receiver is not None and time.monotonic() < deadline:
            if min(self.receiver.problem_alerts()) >= outages:
                return
            time.sleep(0.1)

    def wait_for_job_count(self, n: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and sum(self.counts().values()) < n:
            time.sleep(0.05)

    def sample(self) -> dict[str, float]:
        """The daemon's resident memory (MB), threads and open file descriptors, from /proc."""
        pid = self.proc.pid
        status = Path(f"/proc/{pid}/status").read_text()
        rss = int(re.search(r"VmRSS:\s+(\d+)", status).group(1)) / 1024
        threads = int(re.search(r"Threads:\s+(\d+)", status).group(1))
        fds = len(os.listdir(f"/proc/{pid}/fd"))
        return {"rss": rss, "threads": threads, "fds": fds}

    # the audit
    def audit(self) -> dict[str, Any]:
        audit = self.query(self._audit) or _empty_audit()
        audit["temp_files"] = [str(p.relative_to(self.root)) for p in self._temp_files()]
        audit["completions"] = self._completions_twice()
        audit["duplicated"] += len(audit["completions"])
        return audit

    def _audit(self, store: Store) -> dict[str, Any]:
        a = _empty_audit()
        jobs = store.jobs()
        by_path: dict[str, list] = {}
        for job in jobs:
            by_path.setdefault(job.input_path, []).append(job)
        recorded: set[str] = set()
        for job in jobs:
            # a done job's outputs, and those a failed job recorded as written (some too small for a channel);
            # not the paths a crashed job had only reserved: what they left published is stray
            if job.status not in (JobStatus.DONE, JobStatus.FAILED):
                continue
            for o in store.outputs(job.id):
                if o.replaced_by is None and (job.status is JobStatus.DONE or o.sha256):
                    recorded.add(str(Path(o.path).resolve()))
                    if job.status is JobStatus.DONE and not _intact(Path(o.path), o.sha256, image=True):
                        a["corrupt"] += 1
                        a["details"].append(f"corrupt output {o.path} (job {job.id})")
            for m in store.manifests(job.id):
                if job.status is JobStatus.FAILED and not m.sha256:
                    continue
                recorded.add(str(Path(m.path).resolve()))
                latest = (store.output_owner(m.path) or {}).get("job_id") == job.id  # else a later job's now
                if job.status is JobStatus.DONE and latest and not _intact(Path(m.path), m.sha256, image=False):
                    a["corrupt"] += 1
                    a["details"].append(f"corrupt manifest {m.path} (job {job.id})")
        for path, digest in self.expected.items():
            mine = [j for j in by_path.get(str(path), []) if j.input_hash == digest]
            done = [j for j in mine if j.status is JobStatus.DONE]
            failed = [j for j in mine if j.status is JobStatus.FAILED]
            if len(done) > 1:
                a["duplicated"] += len(done) - 1
                a["details"].append(f"{path.name}: {len(done)} done jobs")
            if failed:
                a["innocent_failed"] += len(failed)
                a["details"].append(f"{path.name}: innocent job {failed[0].id} failed: {failed[0].error}")
            current = [o for j in done for o in store.outputs(j.id) if o.replaced_by is None]
            if not done or len(current) < OUTPUTS_PER_JOB or not any(store.manifests(j.id) for j in done):
                a["lost"] += 1
                a["details"].append(f"{path.name}: no done job with all its outputs "
                                    f"({', '.join(f'job {j.id} {j.status.value}' for j in mine) or 'no job'})")
            else:
                a["done"] += 1
        for path in self.poison:
            failed = [j for j in by_path.get(str(path), []) if j.status is JobStatus.FAILED and j.error]
            if failed:  # with its reason (the quarantine reason names no file: the job is the file's)
                a["poison_failed"] += 1
                a["reasons"][path.name] = failed[-1].error
            else:
                a["lost"] += 1
                a["details"].append(f"{path.name}: poison file without a failed job naming it")
        # every file in a channel or manifest folder is accounted for by a finished job's record
        for folder in self._audited_folders():
            for p in folder.rglob("*"):
                if p.is_file() and not p.name.startswith(".") and str(p.resolve()) not in recorded:
                    a["stray"] += 1
                    a["details"].append(f"stray file {p.relative_to(self.root)} (no finished job records it)")
        a["jobs"] = len(jobs)
        a["failed_jobs"] = sum(j.status is JobStatus.FAILED for j in jobs)
        return a

    def _audited_folders(self) -> list[Path]:
        return [self.root / f for f in CHANNEL_FOLDERS] + [self.root / "state" / "manifests"]

    def _temp_files(self) -> list[Path]:
        return [p for folder in self._audited_folders() if folder.exists() for p in folder.rglob(".*")
                if "tmp" in p.name and p.is_file()]

    def _completions_twice(self) -> list[str]:
        """Jobs the daemon's log says finished their chain more than once (across restarts)."""
        seen: dict[str, int] = {}
        for m in re.finditer(r": job (\d+) (?:done in|copied from)", self.log_text()):
            seen[m.group(1)] = seen.get(m.group(1), 0) + 1
        return [f"job {job} finished {n} times" for job, n in seen.items() if n > 1]


def _empty_audit() -> dict[str, Any]:
    return {"done": 0, "poison_failed": 0, "lost": 0, "duplicated": 0, "corrupt": 0, "innocent_failed": 0,
            "stray": 0, "jobs": 0, "failed_jobs": 0, "details": [], "reasons": {}}


def _intact(path: Path, digest: str | None, image: bool) -> bool:
    try:
        data = path.read_bytes()
    except OSError:
        return False
    if digest and sha(data) != digest:
        return False
    try:
        if image:
            with Image.open(io.BytesIO(data)) as im:
                im.load()
        else:
            json.loads(data)
    except Exception:  # noqa: BLE001 - any decode error is corruption
        return False
    return True


# -- results --------------------------------------------------------------------------------------------
def result(name: str, studio: Studio | None, figures: str, *, outages: int = 0, about: str = "",
           skipped: str | None = None, **extra: Any) -> dict[str, Any]:
    """A scenario's result: its audit, its problem alerts and one line of figures (printed)."""
    out: dict[str, Any] = {"name": name, "skipped": skipped, "outages": outages, **extra}
    if studio is not None and skipped is None:
        out.update(studio.audit())
        out["alerts_on"], out["alerts_off"] = studio.receiver.problem_alerts(about) if studio.receiver else (0, 0)
        out["starts"], out["kills"] = studio.starts, studio.kills
    if skipped is not None:
        out["line"] = f"{name}: skipped: {skipped}"
    else:
        out["line"] = (f"{name}: {figures}; {out['done']} done, {out['poison_failed']} poison failed, "
                       f"{out['lost']} lost, {out['duplicated']} duplicated, {out['corrupt']} corrupt, "
                       f"{out['innocent_failed']} innocent failed, {out['stray']} stray, "
                       f"{len(out['temp_files'])} temp files, alerts {out['alerts_on']} on / "
                       f"{out['alerts_off']} off for {outages} outage(s)")
    print(out["line"], flush=True)
    return out


def problems(res: dict[str, Any]) -> list[str]:
    """What in a scenario's result breaks the suite's promises (empty: it held)."""
    if res.get("skipped"):
        return []
    if res.get("harness_error"):
        return [f"harness error: {res['harness_error']}"]
    found = [f"{k}: {res[k]}" for k in ("lost", "duplicated", "corrupt", "innocent_failed", "stray") if res[k]]
    if res["temp_files"]:
        found.append(f"temp files left: {res['temp_files'][:5]}")
    if (res["alerts_on"], res["alerts_off"]) != (res["outages"], res["outages"]):
        found.append(f"problem alerts {res['alerts_on']} on / {res['alerts_off']} off, expected "
                     f"{res['outages']} / {res['outages']}")
    found += res.get("failures", [])
    if found:
        found += res["details"][:10]
    return found


# -- scenarios ------------------------------------------------------------------------------------------
SIZES = {
    "full": {"batch": 60, "random_kills": 6, "phase_kills": 2, "neighbours": 8, "writers": 4, "poison_good": 30,
             "notify_delay": 30.0, "soak": 2000, "disk_jobs": 16},
    "reduced": {"batch": 12, "random_kills": 2, "phase_kills": 1, "neighbours": 4, "writers": 1, "poison_good": 6,
                "notify_delay": 3.0, "soak": 150, "disk_jobs": 10},
}


def kill_random(root: Path, size: str) -> dict[str, Any]:
    """SIGKILL at random moments while a batch is processed; restart after each kill."""
    s = SIZES[size]
    studio = Studio(root)
    rng = random.Random(11)
    try:
        for i in range(s["batch"]):
            studio.drop(f"shot{i:03d}.jpg", shot(i))
        started = time.monotonic()
        for _ in range(s["random_kills"]):
            # after the job the last kill interrupted has finished (it runs first, alone): two kills in one
            # job's run are a crash loop to the daemon, and quarantine it (the crash-loop scenario)
            done = studio.counts()["done"]
            studio.start()
            deadline = time.monotonic() + 60
            while studio.counts()["done"] < done + 2 and studio.alive() and time.monotonic() < deadline:
                time.sleep(0.02)
            time.sleep(rng.uniform(0.0, 0.8))
            studio.kill()
        studio.start()
        drained = studio.wait_drained(120 + s["batch"] * 2)
        elapsed = time.monotonic() - started
    finally:
        studio.close()
    return result("kill at random moments", studio, f"{s['batch']} shots, {studio.kills} SIGKILLs, drained "
                  f"{'in %.0fs' % elapsed if drained else 'NOT in time'}",
                  failures=[] if drained else ["the queue did not drain"])


PHASES = ("decode", "stage", "output-write", "db-commit")
HITS_PER_JOB = {"decode": 1, "stage": 2, "output-write": 4, "db-commit": 1}  # output-write: 3 outputs, a manifest


def kill_phases(root: Path, size: str) -> dict[str, Any]:
    """SIGKILL aimed at each phase (failpoints) of a different job each time, in one batch; restart after each
    kill. The figures count the crashes charged to a job no kill was aimed at: a kill while the next file is
    decoded ahead (decode) charges neither it nor the job whose run was going (the death is either's); both run
    alone next, so a next death is charged to the culprit."""
    s = SIZES[size]
    studio = Studio(root)
    rng = random.Random(12)
    landed: dict[str, int] = {}
    targets: list[str] = []
    try:
        for i in range(s["batch"]):
            studio.drop(f"shot{i:03d}.jpg", shot(i))
        studio.start()  # the batch queued (a few jobs done), then a clean stop
        studio.wait_for_job_count(s["batch"], 60)
        studio.stop()
        for phase in PHASES:
            for _ in range(s["phase_kills"]):
                # one of the next jobs in the queue, not killed before (a job killed twice is quarantined, rightly)
                waiting = [Path(j.input_path).stem for j in studio.query(lambda st: st.jobs())
                           if j.status in (JobStatus.QUEUED, JobStatus.RUNNING)]
                waiting = [w for w in waiting if w not in targets]
                if not waiting:
                    break
                target = rng.choice(waiting[:2])
                targets.append(target)
                nth = rng.randint(1, HITS_PER_JOB[phase])  # output-write: between two renames of the set, too
                studio.start(f"{phase}=kill@{nth}@name:{target}[._]*", wait=False)
                deadline = time.monotonic() + 120
                while studio.alive() and time.monotonic() < deadline and not studio.drained():
                    time.sleep(0.05)
                if studio.proc.poll() == -signal.SIGKILL:
                    landed[phase] = landed.get(phase, 0) + 1
                    studio.kills += 1
                else:
                    studio.kill()
        studio.start()
        drained = studio.wait_drained(120 + s["batch"] * 2)
    finally:
        studio.close()
    misplaced = _crashes_charged_elsewhere(studio, targets)
    failed = [] if drained else ["the queue did not drain"]
    failed += [f"no kill landed at {p}" for p in PHASES if not landed.get(p)]
    return result("kill aimed at each phase", studio, f"{s['batch']} shots, kills landed: "
                  + ", ".join(f"{p} {landed.get(p, 0)}" for p in PHASES)
                  + f", {len(misplaced)} crash(es) charged to a job that was not killed", failures=failed)


def _crashes_charged_elsewhere(studio: Studio, killed: list[str]) -> list[str]:
    """Jobs charged a crash (``jobs.crashes``, where the store has it) though no kill was aimed at them."""
    jobs = studio.query(lambda st: st.jobs()) or []
    return [f"job {j.id} ({Path(j.input_path).name}) charged {j.crashes} crash(es) it did not cause"
            for j in jobs if getattr(j, "crashes", 0) and Path(j.input_path).stem not in killed]


def crash_loop(root: Path, size: str) -> dict[str, Any]:
    """One file kills the daemon at every output write; restarted each time, it must be quarantined and its
    neighbours finish."""
    return _killer(root, size, "crash loop at output write", "output-write")


def poison_kill(root: Path, size: str) -> dict[str, Any]:
    """A poison file that kills the worker process (in a stage) among good ones."""
    return _killer(root, size, "a file that kills the process in a stage", "stage")


def decode_kill(root: Path, size: str) -> dict[str, Any]:
    """A poison file that kills the process while it is decoded (a codec crash), often while it is read ahead
    during its neighbour's run: the neighbour must not pay for it."""
    return _killer(root, size, "a file that kills the process in its decoder", "decode")


def _killer(root: Path, size: str, name: str, phase: str) -> dict[str, Any]:
    s = SIZES[size]
    studio = Studio(root)
    faults = f"{phase}=kill@name:killer*"
    try:
        n = s["neighbours"]
        for i in range(n // 2):
            studio.drop(f"before{i:02d}.jpg", shot(i))
        killer = studio.drop("killer.jpg", shot(500), poison=True)
        for i in range(n // 2, n):
            studio.drop(f"after{i:02d}.jpg", shot(i))
        studio.start(faults, wait=False)
        drained = studio.wait_drained(60 + 20 * n,
                                      restart=lambda: studio.start(faults, wait=False) if studio.starts < 12 else None)
        deaths = studio.log_text().count("assetd fault: kill")
        studio.kills = deaths
    finally:
        studio.close()
    reason = studio.query(lambda st: next((j.error for j in st.jobs() if j.input_path == str(killer)), None)) or ""
    reason = reason.removeprefix(f"{killer}: ")  # the figures name the file once
    failures = [] if drained else ["the queue did not drain"]
    if "quarantined" not in reason:
        failures.append(f"killer.jpg not quarantined: {reason or 'no reason'}")
    elsewhere = _crashes_charged_elsewhere(studio, ["killer"])
    return result(name, studio, f"{n} neighbours, the daemon died {deaths} time(s), {len(elsewhere)} crash(es) "
                  f"charged to a neighbour, killer.jpg: {reason or 'no reason'}", failures=failures)


def writers(root: Path, size: str) -> dict[str, Any]:
    """Slow, renamed (.part), rsync --inplace and paused-then-growing writers, while the daemon runs."""
    s = SIZES[size]
    studio = Studio(root, settle=0.4)
    torn: list[str] = []
    try:
        studio.start()
        k = 100
        for i in range(s["writers"]):
            studio.drop(f"slow{i}.jpg", shot(k + i), write_slowly)
            studio.drop(f"renamed{i}.jpg", shot(k + 10 + i), write_renamed)
            old = studio.drop(f"inplace{i}.jpg", shot(k + 20 + i))
            studio.wait_drained(30)
            studio.drop(old.name, shot(k + 30 + i), write_in_place)
            studio.drop(f"paused{i}.jpg", shot(k + 40 + i), lambda p, d: write_paused(p, d, studio.settle + 1.0))
        drained = studio.wait_drained(60)
        known = set(studio.expected.values()) | studio.superseded
        # a job for content that never was a whole file: a torn read (the paused file's first half is a
        # whole file too: it sat unchanged past settle_seconds)
        for job in studio.query(lambda st: st.jobs()):
            if job.input_hash not in known and job.status is JobStatus.DONE:
                torn.append(f"job {job.id} ({Path(job.input_path).name}) ran on content no writer left whole")
        partial = studio.query(lambda st: sum(j.status is JobStatus.SUPERSEDED for j in st.jobs()
                                              if Path(j.input_path).name.startswith("paused")))
    finally:
        studio.close()
    return result("slow, renamed, in-place and paused writers", studio,
                  f"{4 * s['writers']} files, {len(torn)} torn reads, {partial} paused file(s) taken half-written, "
                  "waited for and superseded by the whole file", failures=torn + ([] if drained else ["not drained"]))


def poison(root: Path, size: str) -> dict[str, Any]:
    """Poison files (truncated JPEG, zero bytes, text named .jpg, a decompression bomb header) among good ones."""
    s = SIZES[size]
    studio = Studio(root)
    try:
        bad = list(poison_files().items())
        for i in range(s["poison_good"]):
            studio.drop(f"good{i:03d}.jpg", shot(200 + i))
            if i % max(1, s["poison_good"] // len(bad)) == 0 and bad:
                studio.drop(*bad.pop(), poison=True)
        for name, data in bad:
            studio.drop(name, data, poison=True)
        studio.start()
        drained = studio.wait_drained(60 + 2 * s["poison_good"])
    finally:
        studio.close()
    res = result("poison files", studio, f"{s['poison_good']} good, {len(studio.poison)} poison",
                 failures=[] if drained else ["not drained"])
    return res


def inbox_away(root: Path, size: str) -> dict[str, Any]:
    """The inbox (polling mode) renamed away, then deleted and recreated, while the daemon runs: never
    recreated by assetd; files dropped meanwhile are taken when it is back; one alert on and off each time."""
    s = SIZES[size]
    studio = Studio(root, polling=True)
    failures: list[str] = []
    away = root / "inbox.away"
    try:
        studio.start()
        for i in range(2):
            studio.drop(f"first{i}.jpg", shot(300 + i))
        studio.wait_drained(30)
        os.rename(studio.inbox, away)
        time.sleep(OUTAGE_SECONDS)  # several polls and problem checks, past alert_after_seconds
        if studio.inbox.exists():
            failures.append("assetd recreated the inbox that was renamed away")
        for i in range(s["writers"] + 1):
            write_at_once(away / f"during{i}.jpg", shot(310 + i))
        os.rename(away, studio.inbox)
        for i in range(s["writers"] + 1):
            studio.expected[studio.inbox / f"during{i}.jpg"] = sha(shot(310 + i))
        if not studio.wait_drained(30):
            failures.append("files dropped while the inbox was away were not taken after it came back")
        shutil.rmtree(studio.inbox)
        time.sleep(OUTAGE_SECONDS)
        if studio.inbox.exists():
            failures.append("assetd recreated the inbox that was deleted")
        studio.inbox.mkdir(exist_ok=True)
        for i in range(2):
            studio.drop(f"after{i}.jpg", shot(320 + i))
        if not studio.wait_drained(30):
            failures.append("files dropped in the recreated inbox were not taken")
        studio.wait_for_alerts(2)
    finally:
        studio.close()
    return result("inbox renamed away, deleted and recreated (polling)", studio,
                  f"{len(studio.expected)} files", outages=2, about="inbox", failures=failures)


DISK_FULL_SECONDS = 6.0


def disk_full(root: Path, size: str) -> dict[str, Any]:
    """The output volume (a small tmpfs) fills up mid-batch, then space comes back: work pauses and resumes,
    no attempt is charged, one alert on and one off."""
    s = SIZES[size]
    out = root / "out"
    cannot = _mount_tmpfs(out, "160k")
    if cannot:
        return result("disk full", None, "", skipped=cannot)
    try:
        studio = Studio(root, min_free="16384")
        try:
            for i in range(s["disk_jobs"]):
                studio.drop(f"disk{i:02d}.jpg", shot(400 + i))
            studio.start()
            full = False
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and not full:
                st = os.statvfs(out)
                full = st.f_bavail * st.f_frsize < 32768 or studio.drained()
                time.sleep(0.1)
            # full for longer than the retries of a disk error last (max_attempts 3, 0.2 s doubling): a daemon
            # that charges attempts for it fails jobs for good; one that pauses does not
            time.sleep(DISK_FULL_SECONDS)
            subprocess.run(["mount", "-o", "remount,size=16m", str(out)], check=True)
            drained = studio.wait_drained(60)
            studio.wait_for_alerts(1)
        finally:
            studio.close()
        charged = studio.query(lambda st: sum(max(j.attempts - 1, 0) for j in st.jobs()))
        failures = [] if drained else ["not drained"]
        if charged:
            failures.append(f"{charged} attempt(s) charged to jobs for the full disk")
        return result("disk full", studio, f"{s['disk_jobs']} shots on a 160 KB tmpfs, full for "
                      f"{DISK_FULL_SECONDS:.0f}s, then 16 MB; {charged} attempt(s) charged for it",
                      outages=1, about="", failures=failures)
    finally:
        subprocess.run(["umount", "-l", str(out)], capture_output=True)


def database_full(root: Path, size: str) -> dict[str, Any]:
    """The database volume (a tmpfs holding the database and the manifests) fills up while jobs run (another
    program's file takes the space), then the file goes: work pauses and resumes, no job is left running or
    charged, one alert on and one off."""
    s = SIZES[size]
    state = root / "state"
    cannot = _mount_tmpfs(state, "16m")
    if cannot:
        return result("database volume full", None, "", skipped=cannot)
    filler = state / "filler.bin"
    try:
        studio = Studio(root, min_free="16384")
        try:
            for i in range(s["disk_jobs"]):
                studio.drop(f"db{i:02d}.jpg", shot(450 + i))
            studio.start()
            deadline = time.monotonic() + 60
            while studio.counts()["done"] < 2 and time.monotonic() < deadline:
                time.sleep(0.05)
            try:
                with open(filler, "wb", buffering=0) as fh:  # every byte left, as another program's file would
                    while True:
                        fh.write(b"\0" * 65536)
            except OSError:  # full
                pass
            time.sleep(DISK_FULL_SECONDS)
            filler.unlink()
            drained = studio.wait_drained(60)
            studio.wait_for_alerts(1)
        finally:
            studio.close()
        charged = studio.query(lambda st: sum(max(j.attempts - 1, 0) for j in st.jobs()))
        failures = [] if drained else [f"not drained: {studio.counts()}"]
        if charged:
            failures.append(f"{charged} attempt(s) charged to jobs for the full database volume")
        return result("database volume full", studio, f"{s['disk_jobs']} shots, the database volume full for "
                      f"{DISK_FULL_SECONDS:.0f}s; {charged} attempt(s) charged for it", outages=1, about="",
                      failures=failures)
    finally:
        filler.unlink(missing_ok=True)
        subprocess.run(["umount", "-l", str(state)], capture_output=True)


def _mount_tmpfs(folder: Path, size: str) -> str | None:
    """Mount a tmpfs of ``size`` on ``folder``; returns why it cannot be done (the scenario is skipped)."""
    folder.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        return "needs root to mount a small tmpfs"
    if shutil.which("mount") is None:
        return "no mount command to mount a small tmpfs"
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        return f"mount -t tmpfs failed: {mounted.stderr.strip() or mounted.returncode}"
    return None


def notify_down(root: Path, size: str) -> dict[str, Any]:
    """The notification target is down, then answers late (after its timeout), then comes back: no job waits
    on it, and every message is delivered in the end."""
    s = SIZES[size]
    target = Receiver(delay=s["notify_delay"])  # not started: down
    studio = Studio(root, urls=[target.url], digest=0.5, receiver=False)
    failures: list[str] = []
    try:
        studio.start()
        started = time.monotonic()
        for i in range(s["poison_good"]):
            studio.drop(f"n{i:03d}.jpg", shot(600 + i))
        studio.drop("poison_truncated.jpg", poison_files()["poison_truncated.jpg"], poison=True)
        drained_down = studio.wait_drained(60 + 2 * s["poison_good"])
        down_seconds = time.monotonic() - started
        time.sleep(1.0)
        target.start()  # up, but answering after notify.timeout_seconds
        for i in range(2):
            studio.drop(f"late{i}.jpg", shot(650 + i))
        drained_slow = studio.wait_drained(60)
        deadline = time.monotonic() + 15  # a post reached the slow target and went unanswered in time
        while time.monotonic() < deadline and not target.arrived:
            time.sleep(0.1)
        target.delay = 0.0  # answers in time again
        deadline = time.monotonic() + 120  # the outbox backs off (retry_seconds doubling): the next try may be late
        while time.monotonic() < deadline and studio.query(lambda st: st.undelivered()):
            time.sleep(0.2)
        undelivered = studio.query(lambda st: st.undelivered())
        if not (drained_down and drained_slow):
            failures.append("jobs did not finish while the target was down or slow")
        if undelivered:
            failures.append(f"{undelivered} message(s) still undelivered after the target came back")
        if not any(": failed: " in str(m.get("title")) for m in target.answered):
            failures.append("the failed job's alert never arrived")
    finally:
        studio.close()
        target.close()
    return result("notification target down, then answering after its timeout", studio,
                  f"{s['poison_good'] + 3} files done in {down_seconds:.1f}s while down, "
                  f"{len(target.arrived)} posts seen, {len(target.answered)} delivered once it answered",
                  failures=failures)


def reload_rules(root: Path, size: str) -> dict[str, Any]:
    """A rule edited while running applies to the next files; a broken rule saved while running is logged and
    alerted, the last good rules keep running, and fixing it clears the alert."""
    studio = Studio(root)
    failures: list[str] = []
    versions: dict[str, str] = {}
    survived = False
    try:
        studio.start()
        studio.drop("before.jpg", shot(700))
        studio.wait_drained(30)
        reloads = studio.log_text().count("reloaded: ")
        studio.write_rule(", subject_fill: 0.7")
        studio.wait_log(lambda text: text.count("reloaded: ") > reloads, 30, "the reload of the edited rule")
        studio.drop("edited.jpg", shot(701))
        studio.wait_drained(30)
        versions = studio.query(lambda st: {Path(j.input_path).name: j.rule_version for j in st.jobs()})
        if versions.get("before.jpg") == versions.get("edited.jpg"):
            failures.append("the edited rule did not apply to the next file")
        (root / "rules" / "10-shots.yaml").write_text("name: shots\nsteps: [remove_background\n")  # broken YAML
        time.sleep(OUTAGE_SECONDS)
        survived = studio.alive()
        if not survived:
            failures.append(f"a broken rule stopped the daemon (exit {studio.proc.returncode})")
            studio.start()
        studio.drop("while_broken.jpg", shot(702))
        if not studio.wait_drained(30):
            failures.append("files were not processed with the last good rules while the rule file was broken")
        studio.write_rule(", subject_fill: 0.7")
        studio.wait_for_alerts(1)  # the reload of the fixed rule clears the problem
    finally:
        studio.close()
    return result("rule edited and broken rule saved while running", studio,
                  f"rule version {versions.get('before.jpg')} before the edit, {versions.get('edited.jpg')} after; "
                  f"the daemon {'ran on' if survived else 'exited'} after the broken save",
                  outages=1, about="", failures=failures)


def soak(root: Path, size: str) -> dict[str, Any]:
    """Many small jobs through one daemon, dropped in waves: resident memory after warm-up, threads and fds
    stay flat."""
    n = SIZES[size]["soak"]
    studio = Studio(root, settle=0.1, digest=1.0)
    samples: list[tuple[int, dict[str, float]]] = []
    try:
        studio.start()
        wave = 50
        started = time.monotonic()
        for first in range(0, n, wave):
            for i in range(first, min(n, first + wave)):
                studio.drop(f"soak{i:05d}.jpg", shot(10_000 + i, SOAK_SIZE))
            while studio.counts()["done"] < first:  # the previous wave is being processed
                samples.append((studio.counts()["done"], studio.sample()))
                time.sleep(0.5)
        drained = studio.wait_drained(600)
        elapsed = time.monotonic() - started
        time.sleep(1.5)  # the digest goes out; the codec threads idle
        samples.append((studio.counts()["done"], studio.sample()))
    finally:
        studio.close()
    warm = next((smp for done, smp in samples if done >= max(wave, n // 10)), samples[0][1])
    last = samples[-1][1]
    peak_rss = max(smp["rss"] for _, smp in samples)
    growth = peak_rss - warm["rss"]
    failures = [] if drained else ["not drained"]
    if growth >= 50:
        failures.append(f"resident memory grew {growth:.0f} MB after warm-up (limit 50 MB)")
    if last["threads"] > warm["threads"] + 2:  # a delivery or codec thread may be alive at a sample
        failures.append(f"threads grew from {warm['threads']} to {last['threads']}")
    if last["fds"] > warm["fds"] + 2:
        failures.append(f"file descriptors grew from {warm['fds']} to {last['fds']}")
    return result("soak", studio, f"{n} jobs in {elapsed:.0f}s ({n / elapsed:.1f}/s), RSS {warm['rss']:.0f} MB "
                  f"after warm-up → peak {peak_rss:.0f} MB (+{growth:.1f}), threads {warm['threads']} → "
                  f"{last['threads']}, fds {warm['fds']} → {last['fds']}", failures=failures,
                  rss_growth_mb=growth)


SCENARIOS: dict[str, Callable[[Path, str], dict[str, Any]]] = {
    "kill-random": kill_random,
    "kill-phases": kill_phases,
    "crash-loop": crash_loop,
    "poison": poison,
    "poison-kill": poison_kill,
    "decode-kill": decode_kill,
    "writers": writers,
    "inbox-away": inbox_away,
    "disk-full": disk_full,
    "database-full": database_full,
    "notify-down": notify_down,
    "reload": reload_rules,
    "soak": soak,
}


def machine() -> str:
    return common_machine()


def markdown(results: list[dict[str, Any]], size: str, seconds: float) -> str:
    held = sum(not problems(r) for r in results)
    lines = [
        "# Reliability",
        "",
        f"Generated by `make reliability` (`bench/reliability.py --size {size}`): fault injection against the real",
        "`assetd run` process. Do not edit by hand; run it again. See README, \"Reliability\", for how to read it.",
        "",
        f"- date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        f"- machine: {machine()}",
        f"- size: {size}; {len(results)} scenarios in {seconds / 60:.1f} min; {held} held every promise",
        "",
        "| scenario | held | figures | what broke |",
        "|---|---|---|---|",
    ]
    for r in results:
        broke = "; ".join(problems(r)[:4]).replace("|", "\\|")
        status = "skipped" if r.get("skipped") else ("yes" if not problems(r) else "**no**")
        figures = r["line"].split(": ", 1)[1].replace("|", "\\|")
        lines.append(f"| {r['name']} | {status} | {figures} | {broke} |")
    return "\n".join(lines) + "\n"


def run(names: list[str], size: str, workdir: Path | None = None) -> list[dict[str, Any]]:
    results = []
    with tempfile.TemporaryDirectory(prefix="assetd-reliability-", dir=workdir) as tmp:
        for name in names:
            try:
                results.append(SCENARIOS[name](Path(tmp) / name, size))
            except Exception as exc:  # noqa: BLE001 - one scenario's harness failure is reported, the rest run
                print(f"{name}: harness error: {type(exc).__name__}: {exc}", flush=True)
                results.append({"name": name, "skipped": None, "line": f"{name}: harness error: {exc}",
                                "harness_error": f"{type(exc).__name__}: {exc}"})
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="full")
    parser.add_argument("--only", help="comma-separated scenario names: " + ", ".join(SCENARIOS))
    parser.add_argument("--markdown", type=Path, help="write the report here (make reliability: RELIABILITY.md)")
    args = parser.parse_args(argv)
    names = args.only.split(",") if args.only else list(SCENARIOS)
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenario(s) {', '.join(unknown)}; known: {', '.join(SCENARIOS)}")
    started = time.monotonic()
    results = run(names, args.size)
    if args.markdown:
        args.markdown.write_text(markdown(results, args.size, time.monotonic() - started), encoding="utf-8")
        print(f"wrote {args.markdown}")
    return 0 if all(not problems(r) for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
