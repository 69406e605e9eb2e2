"""Soak test: steady submits and approvals at half the peak rate, memory sampled.

    python bench/soak.py [--minutes 10] [--rate R] [--calibrate-seconds 40] [--drain-seconds 180] [--keep]

The stack is started as docker-compose runs it (tests/e2e/stack.py `start_served`: `bflow
db upgrade`, the `worker` (-Q workflow,webhooks -c 2), `worker-maintenance`, `beat` and
`shim` commands) on the machine's MariaDB and Redis: database `bflow_bench_soak` (recreated,
left for inspection), Redis DB 14 (broker) and 15 (results), which nothing else in the
repository uses (tests: 0, 2-3, 8-12; benches: 5-7, 13); the script refuses DBs that hold
keys and flushes both on exit. Default settings (sweep every 30 s) plus compose's (JSON logs,
a Prometheus multiprocess directory) and BFLOW_WEBHOOK_ALLOW_PRIVATE=true. The load is all
HTTP through bench/chaos.py's client, workflow (create -> one approval -> end), approver
(approves every task as it appears) and receiver (an endpoint for every event, each delivery
verified with `standardwebhooks`), so webhook delivery is load too.

1. Calibration (skipped when --rate is given): for --calibrate-seconds, 100 runtimes are
   kept in flight (submitted, not ended); runtimes completed per second after a 10 s ramp
   is the end-to-end peak, approvals and webhooks included. The soak rate is half of it.
2. Soak: unique documents offered at the rate for --minutes; a submit's latency counts
   from when it was due, so a slow shim cannot hide by slowing the offer. Every 10 s: VmRSS
   of every process of the stack (pool children apart, found through /proc), submit
   p50/p99 of the window, completions, the backlog (runtimes not ended, messages in the
   workflow/webhooks queues, deliveries pending); /metrics and /health/ready are fetched
   as Prometheus and the compose healthcheck would.
3. Drain: the offer stops; wait (at most --drain-seconds) for the backlog to reach 0.

Then: RSS per process at minute 2 (a fifth into a shorter run), at the end of the soak, max,
growth; latency per minute; chaos.py's tallies; targets as PASS/MISS (< 150 MB per process,
growth < 10 % from minute 2 to the end, submit p99 of the last third of the soak within 2x
of the p99 of its first third after minute 1, so a trend shows and one slow minute does not,
backlog back to 0). Exit 1 when work was lost or duplicated or the run
failed; missed targets only print. Every process is stopped on exit, Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import secrets
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, closing
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import redis  # noqa: E402
from sqlalchemy import func, select  # noqa: E402

from bench import chaos  # noqa: E402
from bflow_tasks.models import Runtime, RuntimeEvent, WebhookDelivery  # noqa: E402
from tests import services  # noqa: E402
from tests.e2e import stack as e2e  # noqa: E402
from tests.e2e.stack import Stack, StackError  # noqa: E402

DATABASE = "bflow_bench_soak"
BROKER_DB, RESULTS_DB = 14, 15
IN_FLIGHT = 100  # runtimes kept in flight while calibrating
RAMP_SECONDS = 10.0
SAMPLE_SECONDS = 10.0
RSS_TARGET_MB, GROWTH_TARGET_PCT, P99_SPREAD = 150.0, 10.0, 2.0


def start_stack(workdir: Path, cleanup: ExitStack) -> Stack:
    """Our own database and Redis DBs, then the processes as docker-compose runs them."""
    urls = [e2e._redis_db(services.redis_url(check=False), n) for n in (BROKER_DB, RESULTS_DB)]
    for url in urls:
        with closing(redis.Redis.from_url(url)) as client:
            if keys := client.dbsize():
                raise StackError(f"{url} holds {keys} keys (another run?); flush it by hand if stale")
        cleanup.callback(e2e.flush_redis, url)
    (workdir / "prometheus").mkdir()
    env = {
        "BFLOW_DATABASE_URL": e2e.fresh_mysql_database(DATABASE),
        "BFLOW_BROKER_URL": urls[0],
        "BFLOW_RESULT_BACKEND": urls[1],
        "BFLOW_WEBHOOK_ALLOW_PRIVATE": "true",
        "BFLOW_SECRET_KEY": secrets.token_urlsafe(32),  # one key for every process
        "BFLOW_LOG_FORMAT": "json",
        "PROMETHEUS_MULTIPROC_DIR": str(workdir / "prometheus"),
    }
    stack = Stack("redis", workdir, e2e.clean_env(env), broker_url=urls[0])
    cleanup.callback(stack.stop)
    try:
        e2e.start_served(stack)
    except StackError as exc:
        raise StackError(f"{exc}\n{stack.logs()}") from None
    return stack


class Load:
    """Unique submits over HTTP from a thread pool; keeps (time answered, latency) of each."""

    def __init__(self, http: chaos.Http, workflow_id: str):
        self.http, self.workflow_id = http, workflow_id
        self.docs: list[chaos.Doc] = []
        self.latencies: list[tuple[float, float]] = []
        self.pool = ThreadPoolExecutor(chaos.LOAD_THREADS, thread_name_prefix="load")

    def offer(self, prefix: str, due: float) -> None:
        """Submit one new document; its latency counts from `due`, when it was meant to go."""
        doc = chaos.Doc(f"{prefix}-{len(self.docs):06d}", f"key-{prefix}-{len(self.docs):06d}")
        self.docs.append(doc)
        self.pool.submit(self._send, doc, due)

    def _send(self, doc: chaos.Doc, due: float) -> None:
        chaos.submit(self.http, self.workflow_id, doc)
        self.latencies.append((time.monotonic(), time.monotonic() - due))  # list.append is atomic

    def steady(self, rate: float, seconds: float, halt: threading.Event) -> None:
        """Offer `rate` submits a second for `seconds` (or until `halt`)."""
        start = time.monotonic()
        for n in range(int(rate * seconds)):
            if halt.wait(max(0.0, start + n / rate - time.monotonic())):
                return
            self.offer("soak", start + n / rate)


def count(stack: Stack, model: Any, *where: Any) -> int:
    return int(stack.scalar(select(func.count()).select_from(model).where(*where)) or 0)


def completed(stack: Stack) -> int:
    return count(stack, Runtime, Runtime.status == "completed")


def backlog(stack: Stack) -> dict[str, int]:
    """What is accepted but not done: runtimes not ended, queued messages, pending deliveries."""
    return {
        "runtimes": count(stack, Runtime, Runtime.ended_at.is_(None)),
        "workflow_q": stack.queued("workflow") or 0,
        "webhooks_q": stack.queued("webhooks") or 0,
        "deliveries": count(stack, WebhookDelivery, WebhookDelivery.status == "pending"),
    }


def calibrate(stack: Stack, load: Load, seconds: float) -> float:
    """Completed runtimes/s, after a ramp, with IN_FLIGHT runtimes always in flight."""
    began = time.monotonic()
    mark: tuple[float, int] | None = None
    while (now := time.monotonic()) < began + seconds:
        unanswered = len(load.docs) - len(load.latencies)
        for _ in range(IN_FLIGHT - backlog(stack)["runtimes"] - unanswered):
            load.offer("calibrate", now)
        if mark is None and now >= began + RAMP_SECONDS:
            mark = (now, completed(stack))
        time.sleep(0.25)
    if mark is None:
        raise StackError(f"--calibrate-seconds must be more than the {RAMP_SECONDS:g} s ramp")
    return (completed(stack) - mark[1]) / (time.monotonic() - mark[0])


def rss_by_process(stack: Stack) -> dict[str, float]:
    """VmRSS in MB of every process of the stack, pool children apart (found through /proc)."""
    children: defaultdict[int, list[int]] = defaultdict(list)
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:  # field 4 of /proc/PID/stat, after the "(command)" that may hold spaces
            stat = Path(f"/proc/{entry}/stat").read_text()
            children[int(stat.rsplit(")", 1)[1].split()[1])].append(int(entry))
        except OSError:
            continue
    found = {}
    for name, proc in stack.procs.items():
        todo = [(f"{name} {proc.popen.pid}", proc.popen.pid)] if proc.popen and proc.alive else []
        while todo:
            label, pid = todo.pop()
            try:
                status = Path(f"/proc/{pid}/status").read_text()
            except OSError:
                continue
            if match := re.search(r"^VmRSS:\s+(\d+) kB", status, re.MULTILINE):
                found[label] = int(match.group(1)) / 1024
            todo += [(f"{name} child {child}", child) for child in children[pid]]
    return found


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return 1000 * ordered[max(0, math.ceil(q * len(ordered)) - 1)] if ordered else float("nan")


def window(pairs: list[tuple[float, float]], start: float, end: float) -> list[float]:
    return [latency for done, latency in list(pairs) if start <= done < end]


def sample(stack: Stack, load: Load, soak_start: float, last: dict[str, Any]) -> dict[str, Any]:
    """One sample: RSS per process, submit latency (ms) and completions since `last`, backlog."""
    stack.check_alive()
    for path in ("/metrics", "/health/ready"):  # as Prometheus and the compose healthcheck do
        load.http.request("GET", path)
    now = time.monotonic()
    got = window(load.latencies, soak_start + last["t"], now)
    done = completed(stack)
    return {
        "t": now - soak_start,
        "rss": rss_by_process(stack),
        "submits": len(got),
        "p50": pct(got, 0.5),
        "p99": pct(got, 0.99),
        "completed": done,
        "rate": (done - last["completed"]) / (now - soak_start - last["t"]),
        **backlog(stack),
    }


def show(s: dict[str, Any]) -> None:
    rss: defaultdict[str, list[str]] = defaultdict(list)
    for label, mb in s["rss"].items():
        rss[label.split()[0]].append(f"{mb:.0f}")
    print(
        f"  t={s['t']:4.0f}s submits={s['submits']:4d} p50={s['p50']:6.1f}ms p99={s['p99']:6.1f}ms "
        f"completed/s={s['rate']:5.1f} backlog: runtimes={s['runtimes']} queued={s['workflow_q']}"
        f"+{s['webhooks_q']} deliveries={s['deliveries']} RSS MB: "
        + " ".join(f"{name}={'/'.join(mbs)}" for name, mbs in rss.items()),
        flush=True,
    )


def report(samples: list[dict[str, Any]], load: Load, soak_start: float) -> list[str]:
    """Print RSS per process and latency per minute; return the target lines."""
    end_t = samples[-1]["t"]
    base = min(samples, key=lambda s: abs(s["t"] - min(120.0, end_t / 5)))
    print(f"\nRSS per process, MB (base: sample at {base['t']:.0f} s; end: {end_t:.0f} s)")
    print(f"  {'process':34} {'base':>7} {'end':>7} {'max':>7} {'growth':>8}")
    worst_rss, growths = 0.0, []
    for label in dict.fromkeys(label for s in samples for label in s["rss"]):
        first, last = base["rss"].get(label), samples[-1]["rss"].get(label)
        top = max(s["rss"][label] for s in samples if label in s["rss"])
        worst_rss = max(worst_rss, top)
        shown = "     n/a"  # a process that was not there at the base or at the end
        if first and last:
            growths.append((100 * (last - first) / first, label))
            shown = f"{growths[-1][0]:+7.1f}%"
        print(f"  {label:34} {first or 0:7.1f} {last or 0:7.1f} {top:7.1f} {shown}")
    print("\nper minute: submits answered, submit p50 / p99 ms, completed/s")
    for minute in range(1, math.ceil(round(end_t) / 60) + 1):
        start, end = soak_start + 60 * (minute - 1), soak_start + min(60 * minute, end_t)
        got = window(load.latencies, start, end)
        rates = [s["rate"] for s in samples if math.ceil(round(s["t"]) / 60) == minute]
        print(
            f"  minute {minute:2d}: {len(got):5d} {pct(got, 0.5):8.1f} {pct(got, 0.99):8.1f} "
            f"{statistics.mean(rates or [0]):6.1f}"
        )
    growth, grower = max(growths, default=(0.0, "-"))
    settled = min(60.0, end_t / 5)  # the first minute warms caches and pools
    third = (end_t - settled) / 3
    early = pct(window(load.latencies, soak_start + settled, soak_start + settled + third), 0.99)
    late = pct(window(load.latencies, soak_start + end_t - third, soak_start + end_t), 0.99)
    spread = late / early
    return [
        f"RSS < {RSS_TARGET_MB:.0f} MB per process: {'PASS' if worst_rss < RSS_TARGET_MB else 'MISS'}"
        f" (max {worst_rss:.1f} MB)",
        f"growth < {GROWTH_TARGET_PCT:.0f} % from {base['t']:.0f} s to the end: "
        f"{'PASS' if growth < GROWTH_TARGET_PCT else 'MISS'} (most {growth:+.1f}%, {grower})",
        f"submit p99 stable (last third within {P99_SPREAD:g}x of the first): "
        f"{'PASS' if spread <= P99_SPREAD else 'MISS'} ({early:.0f} ms then {late:.0f} ms)",
    ]


def account(stack: Stack, load: Load, receiver: chaos.Receiver) -> dict[str, Any]:
    """Lost and duplicated work: runtimes accepted but not completed, webhook events alike."""
    accepted = {doc.document_id for doc in load.docs if doc.runtime_id}
    ids: defaultdict[tuple[str | None, int], set[str]] = defaultdict(set)
    with receiver.lock:
        for webhook_id, runtime_id, sequence, _ in receiver.received:
            ids[(runtime_id, sequence)].add(webhook_id)
        raw = len(receiver.received)
    events = {tuple(row) for row in stack.rows(select(RuntimeEvent.runtime_id, RuntimeEvent.sequence))}
    return {
        "accepted": len(accepted),
        "lost": sorted(accepted - chaos.completed_documents(stack)),
        "duplicates": {
            **chaos.duplicates(stack),
            "events_per_webhook_id": sum(len(i) - 1 for i in ids.values()),
        },
        "events": len(events),
        "events_lost": len(events - set(ids)),
        "redelivered": raw - sum(len(i) for i in ids.values()),
    }


def soak(args: argparse.Namespace, workdir: Path) -> int:
    with ExitStack() as cleanup:
        stack = start_stack(workdir, cleanup)
        print("stack: " + ", ".join(f"{n} pid {p.popen.pid}" for n, p in stack.procs.items() if p.popen))
        http = chaos.Http(stack.base_url, stack.create_tenant("soak").token)
        receiver = chaos.Receiver(e2e.free_port())
        receiver.start()
        cleanup.callback(receiver.stop)
        receiver.secret = http.expect("POST", "/webhooks", 201, json={"url": receiver.url})["secret"]
        load = Load(http, http.expect("POST", "/workflows", 201, json=chaos.DEFINITION)["id"])
        cleanup.callback(load.pool.shutdown, cancel_futures=True)
        approver = chaos.Approver(http)
        approver.start()
        cleanup.callback(approver.stop)
        rate = args.rate
        if rate is None:
            peak = calibrate(stack, load, args.calibrate_seconds)
            if peak <= 0:
                raise StackError(f"no runtime completed while calibrating:\n{stack.logs(20)}")
            rate = peak / 2
            print(f"calibration: {peak:.1f} runtimes/s completed end to end at full speed; rate {rate:.1f}/s")
            if not chaos.wait_for(lambda: not any(backlog(stack).values()), args.drain_seconds):
                raise StackError(f"the calibration load did not drain: {backlog(stack)}")

        print(f"soak: {rate:.1f} submits/s for {args.minutes:g} min, a sample every {SAMPLE_SECONDS:g} s")
        halt = threading.Event()
        cleanup.callback(halt.set)
        offering = threading.Thread(target=load.steady, args=(rate, 60 * args.minutes, halt), daemon=True)
        samples = [{"t": 0.0, "completed": completed(stack)}]
        soak_start = time.monotonic()
        offering.start()
        for n in range(1, round(60 * args.minutes / SAMPLE_SECONDS) + 1):
            time.sleep(max(0.0, soak_start + n * SAMPLE_SECONDS - time.monotonic()))
            samples.append(sample(stack, load, soak_start, samples[-1]))
            show(samples[-1])
        offering.join()
        load.pool.shutdown()
        drain_start = time.monotonic()

        def drained() -> bool:
            tally = account(stack, load, receiver)
            return not any(backlog(stack).values()) and not tally["lost"] and not tally["events_lost"]

        chaos.wait_for(drained, args.drain_seconds, interval=1.0)
        drain_took = time.monotonic() - drain_start
        approver.stop()
        time.sleep(2)  # a late duplicate would still land
        stack.check_alive()
        left, tally = backlog(stack), account(stack, load, receiver)

        targets = report(samples[1:], load, soak_start)
        lost, duplicated = len(tally["lost"]), sum(tally["duplicates"].values())
        soak_docs = sum(doc.document_id.startswith("soak") for doc in load.docs)
        print(f"\nbacklog at end: {chaos.fmt(Counter(left))}, {drain_took:.0f} s after the offer stopped")
        print(
            f"offered={soak_docs} calibration_offered={len(load.docs) - soak_docs} "
            f"accepted={tally['accepted']} refused={len(load.docs) - tally['accepted']} "
            f"completed={tally['accepted'] - lost} lost={lost} duplicated={duplicated} "
            f"events={tally['events']} events_lost={tally['events_lost']} "
            f"redelivered={tally['redelivered']} bad_signatures={receiver.rejected}"
        )
        print(f"  submit answers {chaos.fmt(Counter(a for doc in load.docs for a in doc.answers))}")
        print(f"  approver answers {chaos.fmt(approver.answers)}")
        print(f"  duplicates {chaos.fmt(Counter(tally['duplicates']))}")
        if lost:
            print(f"  lost documents (first 10): {tally['lost'][:10]}")
        targets.append(f"backlog back to 0: {'PASS' if not any(left.values()) else 'MISS'}")
        print("\ntargets:\n" + "\n".join(f"  {line}" for line in targets))
        return 1 if lost or duplicated or tally["events_lost"] or receiver.rejected else 0
    raise AssertionError("unreachable")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--rate", type=float, help="submits/s (default: half the calibrated peak)")
    parser.add_argument("--calibrate-seconds", type=float, default=40.0)
    parser.add_argument("--drain-seconds", type=float, default=180.0)
    parser.add_argument("--keep", action="store_true", help="keep the process logs after a clean run")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # unwinds like Ctrl-C: everything stops
    workdir = Path(tempfile.mkdtemp(prefix="bflow-soak-"))
    began = time.monotonic()
    try:
        status = soak(args, workdir)
    except StackError as exc:
        print(f"the run failed: {exc}\n  logs in {workdir}", flush=True)
        return 1
    except KeyboardInterrupt:
        print(f"\ninterrupted: every process was stopped; logs in {workdir}", file=sys.stderr)
        return 130
    keep = status or args.keep
    print(f"\ntook {time.monotonic() - began:.0f} s" + (f"; logs in {workdir}" if keep else ""))
    if not keep:
        shutil.rmtree(workdir, ignore_errors=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
