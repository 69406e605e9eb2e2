"""Two `celery beat` processes started by mistake, one worker, one Redis: each slot still runs once.

Real processes: a worker on the maintenance queue and two Beats, with the SLA scan and the
sweep every second (a one-second slot), for BFLOW_BEAT_TEST_SECONDS once the worker is ready
and both Beats send. Both Beats send every job; the worker's log shows which firing claimed
its slot and which found it taken. Redis databases 8 (broker) and 9 (results) and MariaDB
`bflow_beat<suffix>` belong to this test.

CI runs 8 seconds (8 slots of each job). The long form, 60 seconds, is one flag away (or
set BFLOW_BEAT_TEST_SECONDS to any length):

    BFLOW_LONG_TESTS=1 pytest tests/beat/test_two_beats.py -s
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import redis
from sqlalchemy import delete, select

from bflow_tasks import db, migrations
from bflow_tasks.models import JobRun
from tests import services

REPO_ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
LONG = os.environ.get("BFLOW_LONG_TESTS", "").strip().lower() in {"1", "true", "yes", "on"}
DURATION = float(os.environ.get("BFLOW_BEAT_TEST_SECONDS") or (60 if LONG else 8))
JOBS = ("maintenance.sla_scan", "maintenance.sweep")
LINE = re.compile(r"job (?P<job>\S+) slot (?P<slot>\S+): (?P<outcome>claimed|already fired, skipped)")
SENT = re.compile(r"Sending due task (?P<job>maintenance\.\w+) ")


def script(name: str) -> str:
    return shutil.which(name, path=str(BIN)) or name


def redis_db(number: int) -> str:
    parts = urlsplit(services.redis_url())
    return parts._replace(path=f"/{number}").geturl()


class Procs:
    """Subprocesses in their own sessions, each logging to a file; all stopped on exit."""

    def __init__(self, directory: Path, env: dict[str, str]):
        self.directory, self.env = directory, env
        self.running: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, *argv: str) -> Path:
        log = self.directory / f"{name}.log"
        with log.open("wb") as out:
            self.running[name] = subprocess.Popen(
                argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self.env,
                cwd=self.directory,
                start_new_session=True,
            )
        return log

    def stop(self, name: str, timeout: float = 20) -> None:
        proc = self.running.pop(name)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)

    def stop_all(self) -> None:
        for name in list(self.running):
            self.stop(name)


def wait_for(probe, what: str, timeout: float) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not probe():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.2)


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Procs]:
    broker, backend = redis_db(8), redis_db(9)
    database = services.mysql_url(database="bflow_beat" + os.environ.get("BFLOW_TEST_DB_SUFFIX", ""))
    for url in (broker, backend):
        redis.Redis.from_url(url).flushdb()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BFLOW_", "CELERY_"))} | {
        "PYTHONPATH": str(REPO_ROOT),
        "PYTHONUNBUFFERED": "1",
        "BFLOW_DATABASE_URL": database,
        "BFLOW_BROKER_URL": broker,
        "BFLOW_RESULT_BACKEND": backend,
        "BFLOW_SLA_SCAN_SECONDS": "1",
        "BFLOW_SWEEP_SECONDS": "1",
    }
    migrations.upgrade(database)
    engine = db.make_engine(database)
    with engine.begin() as conn:
        conn.execute(delete(JobRun))
    engine.dispose()
    running = Procs(tmp_path, env | {"DATABASE": database})
    try:
        yield running
    finally:
        running.stop_all()
        for url in (broker, backend):
            redis.Redis.from_url(url).flushdb()


def test_two_beats_fire_every_slot_of_every_job_exactly_once(procs: Procs) -> None:
    celery = script("celery")
    worker_log = procs.start(
        "worker",
        *(celery, "-A", "bflow_tasks", "worker", "-Q", "maintenance", "-c", "4", "--loglevel", "INFO"),
        *("-n", "beat-test@%h", "--without-gossip", "--without-mingle", "--without-heartbeat"),
    )
    # The Beats start while the worker does (a firing it is not ready for in time expires, and the
    # window below opens once it is ready and both Beats send).
    beat_logs = [
        procs.start(name, celery, "-A", "bflow_tasks", "beat", "-s", f"{name}-schedule", "--loglevel", "INFO")
        for name in ("beat-a", "beat-b")
    ]
    wait_for(lambda: "ready." in worker_log.read_text(), "the worker", 60)
    wait_for(lambda: all(SENT.search(log.read_text()) for log in beat_logs), "both Beats to send", 60)
    time.sleep(DURATION)
    for name in ("beat-a", "beat-b"):
        procs.stop(name)
    # Let the worker finish what the Beats sent (every message taken and acknowledged), then stop it.
    queue = redis.Redis.from_url(procs.env["BFLOW_BROKER_URL"])

    def idle() -> bool:
        return queue.llen("maintenance") == 0 and queue.hlen("unacked") == 0

    wait_for(lambda: idle() and not time.sleep(0.2) and idle(), "the worker to finish every message", 30)
    procs.stop("worker")

    sent = Counter(m["job"] for log in beat_logs for m in SENT.finditer(log.read_text()))
    attempts = [m.groupdict() for m in LINE.finditer(worker_log.read_text())]
    engine = db.make_engine(procs.env["DATABASE"])
    with engine.connect() as conn:
        runs = conn.execute(select(JobRun.job, JobRun.slot, JobRun.finished_at, JobRun.result)).all()
    engine.dispose()

    for job in JOBS:
        slots = sorted(slot for name, slot, _, _ in runs if name == job)
        claimed = Counter(a["slot"] for a in attempts if a["job"] == job and a["outcome"] == "claimed")
        skipped = Counter(a["slot"] for a in attempts if a["job"] == job and a["outcome"] != "claimed")
        starts = [datetime.fromisoformat(slot) for slot in slots]
        gaps = sum(round((b - a).total_seconds()) - 1 for a, b in zip(starts, starts[1:], strict=False))
        summary = f"{job}: sent {sent[job]}, slots {len(slots)}, skipped {sum(skipped.values())}, gaps {gaps}"
        print(summary)
        # Every slot in job_run ran exactly once, to the end, and nothing ran without its row.
        assert len(slots) >= DURATION * 0.7, summary
        assert gaps <= 1, summary  # a second Beat neither doubles nor loses firings
        assert claimed == Counter(slots), summary
        assert all(
            finished is not None and "error" not in (result or {}) for name, _, finished, result in runs
        )
        # The other Beat's copies did reach the worker, and each found its slot already taken.
        assert set(skipped) <= set(slots), summary
        assert sum(skipped.values()) >= len(slots) * 0.7, summary
        # Each firing either ran or was skipped (an expired message does neither).
        assert sum(claimed.values()) + sum(skipped.values()) <= sent[job], summary
        assert sent[job] >= 2 * len(slots) * 0.8, summary
