"""Submit throughput and latency through the shim, as a ratio of raw Celery publishing.

    python bench/submit.py [--seconds 10] [--connections 16] [--workers 2] [--runs 3]

Needs MariaDB, Redis and `wrk` (Debian package). In one script:
1. baseline: the same chain the shim publishes for a submit, sent with `apply_async`
   sequentially from this process to Redis (no database, no HTTP): raw publishes/s;
2. the shim: `uvicorn api_shim.app:app --workers N` on MariaDB + Redis, loaded by `wrk`
   with unique documents (every request is a real submit: token check, workflow lookup,
   the runtime and its start command written, commit, publish), at full speed, then throttled to
   about half the peak rate for the latency figure;
3. the floor: `bench/floor_app.py` (the same schema check and publish behind the same
   uvicorn command, with no token check and no database), loaded the same way, to show how
   much of the gap to raw publishing the HTTP stack and the publish take by themselves;
4. a check that every 202 left its runtime row (nothing accepted was lost).
Prints medians of `--runs` runs and the ratios. No worker runs: the queue is purged after.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench import quiet  # noqa: E402  (once the repository is on the path)

DATABASE_URL = os.environ.get(
    "BENCH_DATABASE_URL", "mysql+pymysql://root@127.0.0.1:3306/bflow_bench?charset=utf8mb4"
)
BROKER_URL = os.environ.get("BENCH_BROKER_URL", "redis://127.0.0.1:6379/5")
RESULT_BACKEND = os.environ.get("BENCH_RESULT_BACKEND", "redis://127.0.0.1:6379/6")

LUA = """
local counter = 0
local thread_id = 0
local threads = {}
function setup(thread)
  thread:set("id", #threads)
  table.insert(threads, thread)
end
function init(args)
  thread_id = id
end
function delay()
  return DELAY_MS
end
request = function()
  counter = counter + 1
  local body = string.format(
    '{"workflow_id":"WORKFLOW_ID","document_type":"leave_request","document_id":"RUN-%d-%d",'
    .. '"data":{"amount":400,"days":2},"submitted_by":"bench"}', thread_id, counter)
  return wrk.format("POST", "/api/v1/runtime/execute",
    {["Content-Type"] = "application/json", ["Authorization"] = "Bearer TOKEN"}, body)
end
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--baseline-messages", type=int, default=3000)
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print("wrk is needed: apt-get install wrk")
        return 2
    os.environ.update(
        BFLOW_DATABASE_URL=DATABASE_URL, BFLOW_BROKER_URL=BROKER_URL, BFLOW_RESULT_BACKEND=RESULT_BACKEND
    )

    from bench.queries import _reset_mysql
    from bflow_tasks import db, migrations
    from bflow_tasks.engine import tenants
    from bflow_tasks.engine.definitions import workflow_store
    from tests.factories import leave_request_definition

    _reset_mysql(DATABASE_URL)
    migrations.upgrade(DATABASE_URL)
    with db.session_scope() as session:
        tenant, token = tenants.create_tenant(session, name="bench")
        workflow, _ = workflow_store.create_workflow(
            session, tenant_id=tenant.id, raw=leave_request_definition()
        )
        workflow_id = workflow.id

    raw_loads, raw_rates = [], []
    for _ in range(args.runs):
        raw_loads.append(quiet.load_average())
        raw_rates.append(raw_publish_rate(args.baseline_messages))
    purge()
    raw = statistics.median(raw_rates)

    with serving("api_shim.app:app", args.workers) as url:
        peaks = peak_runs(url, workflow_id, token, args, tag="p")
        peak = statistics.median(r["rate"] for r in peaks)
        # Throttle each connection so that together they offer about half the peak rate.
        delay_ms = max(1, int(args.connections * 1000 / (peak / 2)))
        half = load(url, workflow_id, token, args, run_tag="half", delay_ms=delay_ms)
        purge()
    accepted = sum(r["ok"] for r in peaks) + half["ok"]
    stored = count_runtimes()
    with serving("bench.floor_app:app", args.workers) as url:
        floors = peak_runs(url, workflow_id, token, args, tag="f")
    floor = statistics.median(r["rate"] for r in floors)

    print(
        f"\nraw Celery publish (same chain, sequential, one process): {raw:,.0f}/s  runs: "
        + ", ".join(
            f"{r:,.0f} ({quiet.describe(load)})" for r, load in zip(raw_rates, raw_loads, strict=True)
        )
    )
    print(f"shim POST /runtime/execute, uvicorn --workers {args.workers}, wrk -c{args.connections}:")
    for r in peaks:
        print(
            f"  peak run {r['tag']}: {r['rate']:,.0f}/s  p50 {r['p50']:.1f} ms  p99 {r['p99']:.1f} ms  "
            f"non-2xx {r['errors']}  ({quiet.describe(float(r['load']))})"
        )
    quiet_at = raw_loads[0]  # the machine's own load: the script's runs raise it for the later ones
    versus_raw = quiet.ratio_or_refusal(peak / raw, load_before=quiet_at)
    print(f"  median peak: {peak:,.0f}/s = {versus_raw} raw publish")
    print(
        f"  at ~half the peak ({half['rate']:,.0f}/s offered with {delay_ms} ms per connection): "
        f"p50 {half['p50']:.1f} ms  p99 {half['p99']:.1f} ms  non-2xx {half['errors']}"
    )
    print("floor (bench/floor_app.py: the same HTTP stack, schema and publish; no token, no database):")
    print(
        f"  median peak: {floor:,.0f}/s = {quiet.ratio_or_refusal(floor / raw, load_before=quiet_at)}"
        + " raw publish  runs: "
        + ", ".join(f"{r['rate']:,.0f} ({quiet.describe(float(r['load']))})" for r in floors)
    )
    print(f"  the shim reaches {quiet.ratio_or_refusal(peak / floor, load_before=quiet_at)} its floor")
    # wrk stops counting at its deadline while the server finishes requests in flight, so
    # rows may exceed the 202s it saw; fewer rows than 202s would be accepted work lost.
    print(f"accepted (202) {accepted:,}  runtime rows {stored:,}  lost {max(0, accepted - stored):,}")
    return 0 if stored >= accepted else 1


def raw_publish_rate(messages: int) -> float:
    """Publish the submit chain `messages` times, sequentially; return messages per second."""
    from bflow_tasks.models import RuntimeCommand
    from bflow_tasks.worker.publishing import PUBLISH_RETRY, command_signature

    command = RuntimeCommand(id="0" * 36, runtime_id="1" * 36, kind="start", payload={})
    signature = command_signature(command)
    signature.apply_async(retry=True, retry_policy=PUBLISH_RETRY)  # connect once, outside the timing
    started = time.perf_counter()
    for _ in range(messages):
        signature.apply_async(retry=True, retry_policy=PUBLISH_RETRY)
    return messages / (time.perf_counter() - started)


def load(
    url: str, workflow_id: str, token: str, args: argparse.Namespace, *, run_tag: str, delay_ms: int
) -> dict[str, float | int | str]:
    """Run wrk once and parse its rate, p50, p99 and non-2xx count."""
    script = (
        LUA.replace("WORKFLOW_ID", workflow_id).replace("TOKEN", token).replace("DELAY_MS", str(delay_ms))
    )
    script = script.replace("RUN-", f"{run_tag}-")
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as handle:
        handle.write(script)
    output = subprocess.run(
        ["wrk", "-t2", f"-c{args.connections}", f"-d{args.seconds}s", "--latency", "-s", handle.name, url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    os.unlink(handle.name)
    completed = int(re.search(r"(\d+) requests in", output).group(1))  # type: ignore[union-attr]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    failed = int(errors.group(1)) if errors else 0
    return {
        "tag": run_tag,
        "rate": float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1)),  # type: ignore[union-attr]
        "p50": _ms(re.search(r"50%\s+([\d.]+\w+)", output).group(1)),  # type: ignore[union-attr]
        "p99": _ms(re.search(r"99%\s+([\d.]+\w+)", output).group(1)),  # type: ignore[union-attr]
        "errors": failed,
        "ok": completed - failed,
    }


def _ms(value: str) -> float:
    number, unit = re.match(r"([\d.]+)(\w+)", value).groups()  # type: ignore[union-attr]
    return float(number) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def peak_runs(
    url: str, workflow_id: str, token: str, args: argparse.Namespace, *, tag: str
) -> list[dict[str, float | int | str]]:
    """Load the server at `url` at full speed `--runs` times, purging the queue after each."""
    runs = []
    for run in range(args.runs):
        before = quiet.load_average()
        runs.append(
            {**load(url, workflow_id, token, args, run_tag=f"{tag}{run}", delay_ms=0), "load": before}
        )
        purge()
    return runs


@contextmanager
def serving(app: str, workers: int) -> Iterator[str]:
    """Serve `app` with the shim's uvicorn command line; yield its URL, stop it on exit."""
    port = free_port()
    server = start_shim(app, port, workers)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.terminate()
        server.wait(timeout=20)


def start_shim(app: str, port: int, workers: int) -> subprocess.Popen[bytes]:
    shim = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            app,
            "--port",
            str(port),
            "--workers",
            str(workers),
            "--log-level",
            "warning",
            "--no-access-log",
        ],
        cwd=ROOT,
        env=os.environ.copy(),
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        # /health/ready: database and broker only (/health also wants workers; none run here).
        try:
            ready = f"http://127.0.0.1:{port}/api/v1/health/ready"
            with urllib.request.urlopen(ready, timeout=2) as response:
                if response.status == 200:
                    return shim
        except OSError:
            time.sleep(0.2)
    shim.kill()
    raise SystemExit("the shim did not become healthy within 30 s")


def purge() -> None:
    import redis

    redis.Redis.from_url(BROKER_URL).flushdb()


def count_runtimes() -> int:
    from sqlalchemy import func, select

    from bflow_tasks import db
    from bflow_tasks.models import Runtime

    with db.session_scope() as session:
        return session.scalar(select(func.count()).select_from(Runtime)) or 0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


if __name__ == "__main__":
    sys.exit(main())
