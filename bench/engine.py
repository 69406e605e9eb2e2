"""End-to-end runtimes through a real worker, as a ratio of the same Celery canvas of no-op tasks.

    python bench/engine.py [--runtimes 100] [--runs 3] [--concurrency 1 2] [--warmup 10] [--idle-samples 20]

Needs MariaDB and Redis (database `bflow_bench_engine`, Redis DB 7 for the broker and 13
for results: only those are dropped or flushed). The workflow is the 3-stage leave request
of `tests.factories`: submit -> 3 parallel approvers (mode all) -> finance (one approver,
only when amount >= 1000) -> end. Half of the runtimes are above the finance threshold.

For each worker concurrency (`celery -A bflow_tasks worker -Q workflow,webhooks -c N
--loglevel=INFO`, the docker-compose command with only `-c` changed; prefork; no Beat, no
maintenance worker) and each run, this script:

1. Bflow: starts a fresh worker, warms it up with a few runtimes (not measured), then
   submits every runtime at once and approves every task as it appears. Approvals are
   driven in-process exactly as the shim does it: `admission.submit` / `admission.request_action`
   in a session scope, commit, then `publishing.publish_command` (no HTTP). The driver polls
   MariaDB for pending tasks of stages whose opening chord finished (`started_at` set).
2. Baseline: starts `celery -A bench.canvas_tasks worker` with the same command line and
   the same Celery settings (copied from `celeryconfig`), and drives the same canvas of
   no-op tasks: `command | open_stages`, `open_stages` -> `chord(group(assign x3), opened)`,
   3 approval chains, then for half of them a chord of one plus a final approval chain.
   The driver watches the worker's `task-succeeded` events where Bflow's polls the DB.
Each run is a Bflow run and a baseline run back to back, each on a freshly started worker
warmed up the same way, so that both see the same background load. No webhook endpoint is
registered, so no `webhooks.deliver` message is sent (the events and outbox queries are).

Figures, per run:
- transitions/s: commands applied (start + each approval; read back from the database)
  per second of wall time from the first submit to the last runtime's `ended_at`;
- messages/s: Celery task messages the workers received (counted from the workers'
  `task-received` events, so everything the flow really sent is counted, retries
  included) per second from the first submit to the last `task-succeeded`;
- submit -> first `task.assigned`: from a runtime's `created_at` to the `created_at` of
  its first approver's task (the submitter's own "creator" row excluded), p50 and p99.
  Every runtime is submitted at once, so this includes the wait behind the burst; the
  same latency is also measured with `--idle-samples` runtimes submitted one at a time
  into the idle worker (each waits for the previous one's stage to be open).
Bflow's messages/s over the baseline's is the ratio (target >= 0.5x). Medians of `--runs`.
Every process started here is stopped on exit, Ctrl-C or failure.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench import quiet  # noqa: E402  (once the repository is on the path)

DATABASE_URL = os.environ.get(
    "BENCH_DATABASE_URL", "mysql+pymysql://root@127.0.0.1:3306/bflow_bench_engine?charset=utf8mb4"
)
BROKER_URL = os.environ.get("BENCH_BROKER_URL", "redis://127.0.0.1:6379/7")
RESULT_BACKEND = os.environ.get("BENCH_RESULT_BACKEND", "redis://127.0.0.1:6379/13")

MANAGERS = ("u1", "u2", "u3")
FINANCE = "fin1"
BIG, SMALL = 5000, 400  # finance approves amounts >= 1000
# Task messages per runtime in Bflow's canvas (and so in the baseline's):
# start_runtime, open_stages, 3 assign, stages_opened, then record_action + open_stages per
# approval (3), and for the finance stage 1 assign + stages_opened + one more approval.
MESSAGES_PER_RUNTIME = {False: 6 + 3 * 2, True: 6 + 3 * 2 + 2 + 2}
COMMANDS_PER_RUNTIME = {False: 1 + 3, True: 1 + 3 + 1}
POLL_SECONDS = 0.01
PROGRESS_SECONDS = 5.0
QUIET_SECONDS = 0.3


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runtimes", type=int, default=100)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 2])
    parser.add_argument(
        "--warmup", type=int, default=10, help="runtimes run (unmeasured) after a worker starts"
    )
    parser.add_argument(
        "--idle-samples", type=int, default=20, help="runtimes submitted one at a time for the idle latency"
    )
    parser.add_argument("--timeout", type=float, default=300, help="seconds one run may take")
    args = parser.parse_args()
    began = time.monotonic()
    os.environ.update(
        BFLOW_DATABASE_URL=DATABASE_URL, BFLOW_BROKER_URL=BROKER_URL, BFLOW_RESULT_BACKEND=RESULT_BACKEND
    )
    os.environ["BENCH_CANVAS_CONFIG"] = json.dumps(canvas_config())
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # also when started in the background

    from bench.queries import _reset_mysql
    from bflow_tasks import migrations

    results: dict[int, dict[str, list[dict[str, Any]]]] = {}
    loads: list[float] = []  # the load average before each run
    try:
        with ExitStack() as cleanup:
            workdir = Path(tempfile.mkdtemp(prefix="bflow-bench-engine-"))
            print(f"database {DATABASE_URL}\nbroker {BROKER_URL}  results {RESULT_BACKEND}\nlogs {workdir}")
            print("resetting the database and running the migrations...", flush=True)
            _reset_mysql(DATABASE_URL)
            migrations.upgrade(DATABASE_URL)
            flush_redis()
            cleanup.callback(flush_redis)
            tally = Tally()
            cleanup.enter_context(listening(tally))
            for concurrency in args.concurrency:
                results[concurrency] = {"bflow": [], "baseline": []}
                for run in range(1, args.runs + 1):
                    for flow in ("bflow", "baseline"):
                        label = f"[-c {concurrency}] run {run}/{args.runs} {flow}"
                        loads.append(quiet.load_average())
                        print(f"{label}: {quiet.describe(loads[-1])}", flush=True)
                        with worker(flow, concurrency, workdir, tally, label) as proc:
                            drive = drive_bflow if flow == "bflow" else drive_baseline
                            if args.warmup:
                                drive(args.warmup, f"warm-{concurrency}-{run}", tally, proc, args.timeout)
                                settle(tally, None, label + " warm-up")
                                print(f"{label}: warmed up with {args.warmup} runtimes", flush=True)
                            result = drive(args.runtimes, f"c{concurrency}-r{run}", tally, proc, args.timeout)
                            if flow == "bflow" and args.idle_samples:
                                result["idle"] = idle_latency(
                                    args.idle_samples, f"idle-{concurrency}-{run}", args.timeout
                                )
                                # A stage starts with its last task; its chord body may still run.
                                settle(tally, None, label + " idle samples")
                            result["errors_logged"] = proc.output().count("Traceback")
                        results[concurrency][flow].append(result)
                        print(f"{label}: {describe(flow, result)}", flush=True)
                    pair = results[concurrency]
                    ratio = pair["bflow"][-1]["messages_per_s"] / pair["baseline"][-1]["messages_per_s"]
                    shown = quiet.ratio_or_refusal(ratio, load_before=loads[0])
                    print(f"[-c {concurrency}] run {run}/{args.runs}: ratio {shown}", flush=True)
    except KeyboardInterrupt:
        print("\ninterrupted: every process this script started was stopped", file=sys.stderr)
        return 130
    report(results, args, loads)
    print(f"\ntook {time.monotonic() - began:.0f} s")
    return 0


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def canvas_config() -> dict[str, Any]:
    """Bflow's Celery settings (celeryconfig), as JSON for the baseline worker's app."""
    import celeryconfig

    config = {
        key: value
        for key, value in vars(celeryconfig).items()
        if key.islower() and not key.startswith("_") and key not in ("settings", "beat_schedule")
    }
    config["task_queues"] = [queue.name for queue in celeryconfig.task_queues]
    return config


# --- processes ----------------------------------------------------------------------------


@contextmanager
def worker(flow: str, concurrency: int, workdir: Path, tally: Tally, label: str) -> Iterator[Any]:
    """Run the compose `worker` command with `-c concurrency` (the baseline: on the no-op app)."""
    from tests.e2e.stack import Proc, clean_env, compose_command, wait_until

    replace = {"2": str(concurrency)}  # the compose command's `-c 2`
    if flow == "baseline":
        replace["bflow_tasks"] = "bench.canvas_tasks"
    argv = compose_command("worker", **replace)
    assert argv[argv.index("-c") + 1] == str(concurrency), argv
    env = clean_env(
        {
            "BFLOW_DATABASE_URL": DATABASE_URL,
            "BFLOW_BROKER_URL": BROKER_URL,
            "BFLOW_RESULT_BACKEND": RESULT_BACKEND,
            # What docker-compose.yml sets for workers.
            "BFLOW_LOG_FORMAT": "json",
            "PROMETHEUS_MULTIPROC_DIR": str(workdir / "metrics"),
            "BENCH_CANVAS_CONFIG": os.environ["BENCH_CANVAS_CONFIG"],
        }
    )
    proc = Proc(
        f"worker-{flow}-c{concurrency}", argv, env, workdir / f"worker-{flow}-c{concurrency}.log", ROOT
    )
    check_idle()
    print(f"{label}: starting {' '.join(argv[1:])}", flush=True)
    started = time.monotonic()
    proc.start()
    try:
        proc.wait_for_output(" ready.")
        # The event listener hears this worker (its heartbeat comes every 2 s).
        wait_until(lambda: tally.worker_seen > started, "the worker's events", timeout=15)
        yield proc
    finally:
        proc.stop()


def check_idle() -> None:
    """Fail if the broker still holds messages: a run must start from empty queues."""
    import redis

    client = redis.Redis.from_url(BROKER_URL)
    try:
        waiting = {queue: client.llen(queue) for queue in ("workflow", "webhooks")}
        unacked = client.hlen("unacked")
    finally:
        client.close()
    if any(waiting.values()) or unacked:
        raise SystemExit(f"the broker is not idle before a worker start: {waiting}, {unacked} unacked")


def flush_redis() -> None:
    """Empty this benchmark's two Redis databases (and only those)."""
    import redis

    for url in (BROKER_URL, RESULT_BACKEND):
        client = redis.Redis.from_url(url)
        try:
            client.flushdb()
        finally:
            client.close()


# --- counting messages from the workers' events -------------------------------------------


class Tally:
    """Counts the task events the workers send (worker_send_task_events is on in celeryconfig)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.worker_seen = 0.0
        self.error: BaseException | None = None
        self.reset()

    def reset(self) -> None:
        with self.lock:
            self.received: Counter[str] = Counter()
            self.succeeded: set[str] = set()  # task ids
            self.names: dict[str, str] = {}  # task id -> short task name
            self.busy: Counter[str] = Counter()  # seconds spent in each task's body
            self.runs: Counter[str] = Counter()
            self.finished = 0  # succeeded + failed + retried + rejected
            self.failed = 0
            self.retried = 0
            self.last_done = 0.0  # the worker's timestamp of the latest task-succeeded
            self.last_event = time.monotonic()

    def all_succeeded(self, task_ids: list[str]) -> bool:
        with self.lock:
            return all(task_id in self.succeeded for task_id in task_ids)

    def on_event(self, event: dict[str, Any]) -> None:
        kind = event.get("type", "")
        with self.lock:
            if kind.startswith("worker-"):
                self.worker_seen = time.monotonic()
                return
            if not kind.startswith("task-") or kind == "task-sent":
                return
            self.last_event = time.monotonic()
            if kind == "task-received":
                name = event["name"].rsplit(".", 1)[-1]
                self.received[name] += 1
                self.names[event["uuid"]] = name
            elif kind in ("task-succeeded", "task-failed", "task-retried", "task-rejected"):
                self.finished += 1
                if kind == "task-succeeded":
                    self.succeeded.add(event["uuid"])
                    self.last_done = max(self.last_done, float(event["timestamp"]))
                    name = self.names.get(event["uuid"], "?")
                    self.busy[name] += float(event.get("runtime") or 0)
                    self.runs[name] += 1
                elif kind == "task-retried":
                    self.retried += 1
                else:
                    self.failed += 1

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            return {
                "received": sum(self.received.values()),
                "by_task": dict(self.received),
                "task_ms": {name: 1000 * self.busy[name] / self.runs[name] for name in self.runs},
                "busy_s": sum(self.busy.values()),
                "finished": self.finished,
                "failed": self.failed,
                "retried": self.retried,
                "last_done": self.last_done,
                "idle_for": time.monotonic() - self.last_event,
            }


@contextmanager
def listening(tally: Tally) -> Iterator[None]:
    """Listen to the broker's event stream in a thread for as long as the block runs."""
    from bflow_tasks import app

    state: dict[str, Any] = {}

    def listen() -> None:
        try:
            with app.connection_for_read() as conn:
                receiver = app.events.Receiver(conn, handlers={"*": tally.on_event})
                state["receiver"] = receiver
                receiver.capture(limit=None, timeout=None, wakeup=False)
        except BaseException as exc:  # reported by the run that waits for events
            tally.error = exc

    thread = threading.Thread(target=listen, name="bench-events", daemon=True)
    thread.start()
    try:
        yield
    finally:
        if "receiver" in state:
            state["receiver"].should_stop = True
        thread.join(timeout=5)


def settle(tally: Tally, expected: int | None, label: str, timeout: float = 60) -> dict[str, Any]:
    """Wait until every task message sent so far has run (and at least `expected` were received)."""
    deadline = time.monotonic() + timeout
    while True:
        if tally.error is not None:
            raise RuntimeError(f"the event listener failed: {tally.error!r}")
        seen = tally.snapshot()
        enough = expected is None or seen["received"] >= expected
        if enough and seen["finished"] >= seen["received"] and seen["idle_for"] >= QUIET_SECONDS:
            return seen
        if time.monotonic() > deadline:
            print(
                f"{label}: WARNING: still {seen['received'] - seen['finished']} task(s) in flight, "
                f"{seen['received']} received of {expected} expected after {timeout:.0f} s"
            )
            return seen
        time.sleep(0.05)


# --- Bflow -------------------------------------------------------------------------------


def drive_bflow(n: int, tag: str, tally: Tally, proc: Any, timeout: float) -> dict[str, Any]:
    """Submit `n` runtimes at once and approve every task as it appears; return the figures."""
    from sqlalchemy import select

    from bflow_tasks import db
    from bflow_tasks.engine import tenants
    from bflow_tasks.engine.definitions import workflow_store
    from bflow_tasks.models import Runtime, RuntimeAssignee, RuntimeStage
    from tests.factories import leave_request_definition

    with db.session_scope() as session:
        tenant, _ = tenants.create_tenant(session, name=f"bench-{tag}")
        workflow, _ = workflow_store.create_workflow(
            session, tenant_id=tenant.id, raw=leave_request_definition()
        )
        tenant_id, workflow_id = tenant.id, workflow.id
    pending = (
        select(RuntimeAssignee.id, RuntimeAssignee.user)
        .join(RuntimeStage, RuntimeStage.id == RuntimeAssignee.runtime_stage_id)
        .where(
            RuntimeAssignee.tenant_id == tenant_id,
            RuntimeAssignee.status == "pending",
            RuntimeStage.started_at.is_not(None),
        )
    )
    ended = select(Runtime.id, Runtime.status).where(
        Runtime.tenant_id == tenant_id, Runtime.status.in_(("completed", "rejected", "cancelled", "error"))
    )
    big = [i % 2 == 0 for i in range(n)]
    tally.reset()
    t0 = time.time()
    for i in range(n):
        submit(tenant_id, workflow_id, f"{tag}-{i}", BIG if big[i] else SMALL)
    acted: set[str] = set()
    done: dict[str, str] = {}
    engine = db.get_engine()
    deadline = time.monotonic() + timeout
    next_progress = time.monotonic() + PROGRESS_SECONDS
    while len(done) < n:
        with engine.connect() as conn:
            tasks = conn.execute(pending).all()
            done.update((runtime_id, status) for runtime_id, status in conn.execute(ended))
        fresh = [(task_id, user) for task_id, user in tasks if task_id not in acted]
        for task_id, user in fresh:
            approve(tenant_id, task_id, user)
            acted.add(task_id)
        failed = {status for status in done.values() if status != "completed"}
        if failed:
            raise RuntimeError(f"{tag}: runtimes ended {failed}; see {proc.log_path}")
        now = time.monotonic()
        if now > deadline:
            raise RuntimeError(
                f"{tag}: {len(done)}/{n} runtimes completed after {timeout:.0f} s; {proc.log_path}"
            )
        if now > next_progress:
            next_progress = now + PROGRESS_SECONDS
            print(
                f"  {tag}: {len(done)}/{n} completed, {len(acted)} approvals sent, "
                f"{tally.snapshot()['received']} messages so far",
                flush=True,
            )
        if not fresh:
            time.sleep(POLL_SECONDS)
    expected = sum(MESSAGES_PER_RUNTIME[b] for b in big)
    seen = settle(tally, expected, tag)
    return {
        **seen,
        **bflow_figures(tenant_id, t0),
        "t0": t0,
        "expected": expected,
        "n": n,
        "expected_commands": sum(COMMANDS_PER_RUNTIME[b] for b in big),
        "messages_per_s": seen["received"] / (seen["last_done"] - t0),
    }


def submit(tenant_id: str, workflow_id: str, document_id: str, amount: int) -> None:
    """Admit a submission and publish its start, as POST /runtime/execute does."""
    from bflow_tasks import db
    from bflow_tasks.engine.runtimes import admission
    from bflow_tasks.worker import publishing

    with db.session_scope() as session:
        _, command = admission.submit(
            session,
            tenant_id=tenant_id,
            workflow_id=workflow_id,
            document_type="leave_request",
            document_id=document_id,
            data={"amount": amount, "days": 2},
            submitted_by="bench",
        )
    assert command is not None
    publishing.publish_command(command)


def approve(tenant_id: str, task_id: str, user: str) -> None:
    """Admit an approval and publish it, as POST /tasks/{id}/action does."""
    from bflow_tasks import db
    from bflow_tasks.engine.runtimes import admission
    from bflow_tasks.worker import publishing

    with db.session_scope() as session:
        command = admission.request_action(
            session, tenant_id=tenant_id, task_id=task_id, action="approve", actor=user
        )
    publishing.publish_command(command)


def bflow_figures(tenant_id: str, t0: float) -> dict[str, Any]:
    """Read back from the database what the run did: commands applied, end, latencies."""
    from sqlalchemy import func, select

    from bflow_tasks import db
    from bflow_tasks.models import Runtime, RuntimeCommand

    with db.get_engine().connect() as conn:
        commands = dict(
            conn.execute(
                select(RuntimeCommand.status, func.count())
                .join(Runtime, Runtime.id == RuntimeCommand.runtime_id)
                .where(Runtime.tenant_id == tenant_id)
                .group_by(RuntimeCommand.status)
            ).all()
        )
        last_end = conn.scalar(select(func.max(Runtime.ended_at)).where(Runtime.tenant_id == tenant_id))
    latencies = first_task_latencies(tenant_id)
    applied = commands.get("applied", 0)
    seconds = _epoch(last_end) - t0
    return {
        "applied": applied,
        "other_commands": {k: v for k, v in commands.items() if k != "applied"},
        "seconds": seconds,
        "transitions_per_s": applied / seconds,
        "p50_ms": percentile(latencies, 0.50),
        "p99_ms": percentile(latencies, 0.99),
        "latencies": len(latencies),
    }


def first_task_latencies(tenant_id: str) -> list[float]:
    """Sorted ms from each runtime's `created_at` to its first approver task's `created_at`."""
    from sqlalchemy import func, select

    from bflow_tasks import db
    from bflow_tasks.models import Runtime, RuntimeAssignee

    first_task = (
        select(RuntimeAssignee.runtime_id, func.min(RuntimeAssignee.created_at).label("assigned"))
        .where(RuntimeAssignee.tenant_id == tenant_id, RuntimeAssignee.assign_type != "creator")
        .group_by(RuntimeAssignee.runtime_id)
        .subquery()
    )
    query = select(Runtime.created_at, first_task.c.assigned).join(
        first_task, first_task.c.runtime_id == Runtime.id
    )
    with db.get_engine().connect() as conn:
        waits = conn.execute(query).all()
    return sorted((assigned - created).total_seconds() * 1000 for created, assigned in waits)


def idle_latency(samples: int, tag: str, timeout: float) -> dict[str, float]:
    """Submit runtimes one at a time into an idle worker; submit -> first task.assigned p50/p99."""
    from sqlalchemy import func, select

    from bflow_tasks import db
    from bflow_tasks.engine import tenants
    from bflow_tasks.engine.definitions import workflow_store
    from bflow_tasks.models import Runtime, RuntimeStage
    from tests.factories import leave_request_definition

    with db.session_scope() as session:
        tenant, _ = tenants.create_tenant(session, name=f"bench-{tag}")
        workflow, _ = workflow_store.create_workflow(
            session, tenant_id=tenant.id, raw=leave_request_definition()
        )
        tenant_id, workflow_id = tenant.id, workflow.id
    # Stages started (every approver has a task): the chord body, a no-op by then, may follow.
    opened = (
        select(func.count())
        .select_from(RuntimeStage)
        .join(Runtime, Runtime.id == RuntimeStage.runtime_id)
        .where(
            Runtime.tenant_id == tenant_id,
            RuntimeStage.action == "approve",
            RuntimeStage.started_at.is_not(None),
        )
    )
    engine = db.get_engine()
    for i in range(samples):
        submit(tenant_id, workflow_id, f"{tag}-{i}", SMALL)
        deadline = time.monotonic() + timeout
        while True:
            with engine.connect() as conn:
                if conn.scalar(opened) == i + 1:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"{tag}: runtime {i} not opened after {timeout:.0f} s")
            time.sleep(POLL_SECONDS)
    latencies = first_task_latencies(tenant_id)
    return {"p50_ms": percentile(latencies, 0.50), "p99_ms": percentile(latencies, 0.99), "n": len(latencies)}


def _epoch(naive_utc: datetime) -> float:
    return naive_utc.replace(tzinfo=UTC).timestamp()


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile of sorted `values`."""
    return values[max(0, math.ceil(q * len(values)) - 1)] if values else float("nan")


# --- baseline ----------------------------------------------------------------------------


def drive_baseline(n: int, tag: str, tally: Tally, proc: Any, timeout: float) -> dict[str, Any]:
    """Drive the same canvas of no-op tasks for `n` runtimes; return the figures."""

    from bench import canvas_tasks
    from bflow_tasks.worker.publishing import PUBLISH_RETRY

    def publish(runtime_id: str, plan: list[list[str]], **extra: str) -> str:
        """`command | open_stages`, the chain `publishing.command_signature` builds; return open's id."""
        open_id = f"bench-open-{uuid.uuid4()}"
        chain = canvas_tasks.command.si(
            command_id=str(uuid.uuid4()), runtime_id=runtime_id, plan=plan, **extra
        ) | canvas_tasks.open_stages.s().set(task_id=open_id)
        chain.apply_async(retry=True, retry_policy=PUBLISH_RETRY)
        return open_id

    big = [i % 2 == 0 for i in range(n)]
    flights = [
        {"id": str(uuid.uuid4()), "big": big[i], "stages": [str(uuid.uuid4()), str(uuid.uuid4())]}
        for i in range(n)
    ]
    tally.reset()
    t0 = time.time()
    for runtime in flights:
        publish(runtime["id"], [[runtime["stages"][0], user] for user in MANAGERS])
        runtime["step"] = "managers"
        runtime["waiting"] = [canvas_tasks.opened_id([runtime["stages"][0]])]
    done = 0
    deadline = time.monotonic() + timeout
    next_progress = time.monotonic() + PROGRESS_SECONDS
    while done < n:
        active = [r for r in flights if r["step"] != "done"]
        progressed = False
        for runtime in active:
            if not tally.all_succeeded(runtime["waiting"]):
                continue
            progressed = True
            if runtime["step"] == "managers":
                finance = [[runtime["stages"][1], FINANCE]] if runtime["big"] else []
                opens = [
                    publish(
                        runtime["id"],
                        finance if user == MANAGERS[-1] else [],
                        task_id=str(uuid.uuid4()),
                        action="approve",
                    )
                    for user in MANAGERS
                ]
                runtime["step"] = "finance" if runtime["big"] else "closing"
                runtime["waiting"] = (
                    [canvas_tasks.opened_id([runtime["stages"][1]])] if runtime["big"] else opens
                )
            elif runtime["step"] == "finance":
                runtime["waiting"] = [publish(runtime["id"], [], task_id=str(uuid.uuid4()), action="approve")]
                runtime["step"] = "closing"
            else:
                runtime["step"] = "done"
                done += 1
        now = time.monotonic()
        if now > deadline:
            raise RuntimeError(
                f"{tag}: {done}/{n} baseline runtimes done after {timeout:.0f} s; {proc.log_path}"
            )
        if now > next_progress:
            next_progress = now + PROGRESS_SECONDS
            print(f"  {tag}: {done}/{n} done, {tally.snapshot()['received']} messages so far", flush=True)
        if not progressed:
            time.sleep(POLL_SECONDS)
    expected = sum(MESSAGES_PER_RUNTIME[b] for b in big)
    seen = settle(tally, expected, tag)
    seconds = seen["last_done"] - t0
    return {
        **seen,
        "t0": t0,
        "expected": expected,
        "n": n,
        "seconds": seconds,
        "messages_per_s": seen["received"] / seconds,
    }


# --- reporting ---------------------------------------------------------------------------


def describe(flow: str, r: dict[str, Any]) -> str:
    checks = []
    if r["received"] != r["expected"]:
        checks.append(f"{r['received']} messages where the canvas sends {r['expected']}")
    if r["failed"] or r["retried"]:
        checks.append(f"{r['failed']} failed, {r['retried']} retried")
    if r["errors_logged"]:
        checks.append(f"{r['errors_logged']} tracebacks in the worker log")
    if flow == "bflow":
        if r["applied"] != r["expected_commands"] or r["other_commands"]:
            checks.append(
                f"{r['applied']} commands applied of {r['expected_commands']}, others {r['other_commands']}"
            )
        if r["latencies"] != r["n"]:
            checks.append(f"{r['latencies']} runtimes with a task of {r['n']}")
        text = (
            f"{r['n']} runtimes, {r['applied']} commands, {r['received']} messages; "
            f"{r['transitions_per_s']:.1f} transitions/s "
            f"({r['seconds']:.2f} s to the last runtime completed), "
            f"{r['messages_per_s']:.1f} messages/s ({r['last_done'] - r['t0']:.2f} s to the last message); "
            f"submit->first task.assigned p50 {r['p50_ms']:.0f} ms p99 {r['p99_ms']:.0f} ms"
        )
        if "idle" in r:
            idle = r["idle"]
            text += (
                f"\n    submit->first task.assigned, one runtime at a time into the idle worker "
                f"({idle['n']}): p50 {idle['p50_ms']:.0f} ms p99 {idle['p99_ms']:.0f} ms"
            )
    else:
        text = (
            f"{r['n']} runtimes, {r['received']} messages in {r['seconds']:.2f} s: "
            f"{r['messages_per_s']:.1f} messages/s"
        )
    by_task = ", ".join(
        f"{name} {count} x {r['task_ms'].get(name, 0):.1f} ms" for name, count in sorted(r["by_task"].items())
    )
    text += f"\n    messages by task (x mean time in the task body): {by_task}"
    text += f"\n    task bodies took {r['busy_s']:.2f} s of the {r['last_done'] - r['t0']:.2f} s"
    return text + ("\n    CHECK: " + "; ".join(checks) if checks else "")


def report(
    results: dict[int, dict[str, list[dict[str, Any]]]], args: argparse.Namespace, loads: list[float]
) -> None:
    print(
        f"\n=== {args.runtimes} runtimes per run (half with amount >= 1000), "
        f"{args.runs} runs per configuration; medians, then each run ==="
    )
    for concurrency, flows in results.items():
        ours, base = flows["bflow"], flows["baseline"]

        def line(label: str, values: list[float], unit: str = "", fmt: str = ".1f") -> None:
            runs = ", ".join(f"{v:{fmt}}" for v in values)
            print(f"  {label:<44} {statistics.median(values):>8{fmt}}{unit}   runs: {runs}")

        print(f"\nworker -c {concurrency} (prefork, acks_late, prefetch 1, Redis broker + results):")
        line("Bflow transitions/s (commands applied)", [r["transitions_per_s"] for r in ours])
        line("Bflow messages/s", [r["messages_per_s"] for r in ours])
        line("Bflow submit->first task.assigned p50", [r["p50_ms"] for r in ours], " ms", ".0f")
        line("Bflow submit->first task.assigned p99", [r["p99_ms"] for r in ours], " ms", ".0f")
        if all("idle" in r for r in ours):
            line(
                "  same, one at a time into an idle worker p50",
                [r["idle"]["p50_ms"] for r in ours],
                " ms",
                ".0f",
            )
            line(
                "  same, one at a time into an idle worker p99",
                [r["idle"]["p99_ms"] for r in ours],
                " ms",
                ".0f",
            )
        line("baseline messages/s (no-op canvas)", [r["messages_per_s"] for r in base])
        pairs = [o["messages_per_s"] / b["messages_per_s"] for o, b in zip(ours, base, strict=True)]
        ratio = statistics.median(r["messages_per_s"] for r in ours) / statistics.median(
            r["messages_per_s"] for r in base
        )
        if loads[0] > quiet.MAX_LOAD:
            refusal = quiet.ratio_or_refusal(ratio, load_before=loads[0])
            print(f"  {'ratio Bflow / baseline messages/s':<44} {refusal}")
            continue
        verdict = "meets" if ratio >= 0.5 else "BELOW"
        print(
            f"  {'ratio Bflow / baseline messages/s':<44} {ratio:>8.2f}x   per run: "
            + ", ".join(f"{p:.2f}x" for p in pairs)
            + f"   ({verdict} the 0.5x target)"
        )


if __name__ == "__main__":
    sys.exit(main())
