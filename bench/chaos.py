"""Fault tests: restart the broker, restart the database, take a webhook receiver away.

    python bench/chaos.py [redis-restart] [mariadb-restart] [receiver-down]
        [--rate 25] [--seconds 30] [--outage-seconds 5] [--receiver-down-seconds 120] [--keep]

With no scenario named, all three run. Each scenario starts its own stack on PRIVATE
services -- never the machine's shared MariaDB (3306) or Redis (6379), which other suites
use: a `redis-server` on 127.0.0.1:6391 (broker db 0, results db 1, no persistence, so a
restart loses every queued message and chord counter) and a MariaDB on 127.0.0.1:3311 (a
fresh data directory from `mariadb-install-db`, root with an empty password). On them:
`bflow db upgrade`, the compose `worker`, `worker-maintenance`, `beat` (sweep every 1 s,
grace 3 s) and `shim` commands (see tests/e2e/stack.py). Every process, private servers
included, is killed when the scenario ends, whatever happened (also on Ctrl-C / SIGTERM).

1. redis-restart: unique documents submitted over HTTP at `--rate`/s for `--seconds` s,
   each with its own Idempotency-Key, while an approver approves every task as it appears
   (the workflow is create -> one approval -> end). Mid-load the private Redis is SIGKILLed
   for `--outage-seconds` and started again, empty. A 202 must end `completed`; a 503 must
   have left no runtime row, and retrying it with the same key once Redis is back must be
   accepted and complete too.
2. mariadb-restart: the same load while the private MariaDB is SIGKILLed (a crash, not a
   clean shutdown) and restarted. What the shim answers meanwhile is reported as it is.
3. receiver-down: a webhook endpoint on a loopback receiver (every delivery verified with
   `standardwebhooks`); the receiver is stopped for `--receiver-down-seconds` during a load
   of runtimes, then started again on the same port. Every runtime_event row of the tenant
   must arrive, verified, once per webhook-id, in `sequence` order per runtime.

Each scenario prints one `scenario=... offered=... lost=0 duplicated=0` line; the exit status
is 1 when anything was lost or duplicated (or a refusal left rows, or events came out of
order), 2 when a scenario could not run at all.
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import requests  # noqa: E402
from sqlalchemy import func, select  # noqa: E402
from standardwebhooks import Webhook  # noqa: E402

from bflow_tasks.models import (  # noqa: E402
    Runtime,
    RuntimeAssignee,
    RuntimeCommand,
    RuntimeEvent,
    RuntimeStage,
    WebhookAttempt,
    WebhookDelivery,
)
from tests.e2e.stack import (  # noqa: E402
    Proc,
    Stack,
    StackError,
    clean_env,
    free_port,
    start_served,
    wait_until,
)

REDIS_PORT = 6391
MARIADB_PORT = 3311
DATABASE = "bflow_chaos"
APPROVER = "boss"
LOAD_THREADS = 32
REQUEST_TIMEOUT = 30.0
SCENARIOS = ("redis-restart", "mariadb-restart", "receiver-down")

DEFINITION: dict[str, Any] = {
    "name": "Chaos approval",
    "document_type": "chaos_doc",
    "nodes": [
        {"key": "submit", "name": "Submit", "action": "create"},
        {
            "key": "approve",
            "name": "Approve",
            "action": "approve",
            "approvers": {"mode": "any", "sources": [{"users": [APPROVER]}]},
        },
        {"key": "done", "name": "Done", "action": "end"},
    ],
    "associations": [{"source": "submit", "dest": "approve"}, {"source": "approve", "dest": "done"}],
}


# --- private services ----------------------------------------------------------------------


def _port_free(port: int) -> None:
    with socket.socket() as probe:
        if probe.connect_ex(("127.0.0.1", port)) == 0:
            raise StackError(f"127.0.0.1:{port} is already in use (another chaos run?); not touching it")


class PrivateRedis:
    """A throw-away redis-server on 127.0.0.1:6391, no persistence: a restart starts empty."""

    def __init__(self, workdir: Path):
        self.url = f"redis://127.0.0.1:{REDIS_PORT}"
        server = shutil.which("redis-server")
        if server is None:
            raise StackError("redis-server is not installed")
        argv = [server, "--port", str(REDIS_PORT), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        argv += ["--daemonize", "no", "--dir", str(workdir)]
        self.proc = Proc("private-redis", argv, dict(os.environ), workdir / "private-redis.log", workdir)

    def start(self) -> None:
        _port_free(REDIS_PORT)
        self.proc.start()
        wait_until(self._ping, "the private redis-server to answer PING", 20)

    def _ping(self) -> bool:
        import redis

        if not self.proc.alive:
            raise StackError(f"private redis-server exited:\n{self.proc.tail()}")
        client = redis.Redis(port=REDIS_PORT, socket_timeout=1, socket_connect_timeout=1)
        try:
            return bool(client.ping())
        except redis.RedisError:
            return False
        finally:
            client.close()

    def stop(self) -> None:
        self.proc.kill()


class PrivateMariaDB:
    """A throw-away MariaDB on 127.0.0.1:3311 in its own data directory; root, empty password."""

    def __init__(self, workdir: Path):
        self.url = f"mysql+pymysql://root@127.0.0.1:{MARIADB_PORT}/{DATABASE}?charset=utf8mb4"
        path = os.environ.get("PATH", "") + ":/usr/sbin:/usr/local/sbin"
        install = shutil.which("mariadb-install-db", path=path) or shutil.which("mysql_install_db", path=path)
        server = shutil.which("mariadbd", path=path) or shutil.which("mysqld", path=path)
        if install is None or server is None:
            raise StackError("MariaDB server binaries (mariadb-install-db, mariadbd) are not installed")
        datadir = workdir / "mariadb"
        done = subprocess.run(
            [install, "--no-defaults", "--user=root", f"--datadir={datadir}"]
            + ["--auth-root-authentication-method=normal", "--skip-test-db"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        if done.returncode != 0:
            raise StackError(f"{install} failed:\n{done.stdout}\n{done.stderr}")
        argv = [server, "--no-defaults", f"--datadir={datadir}", f"--port={MARIADB_PORT}"]
        argv += ["--bind-address=127.0.0.1", f"--socket={workdir / 'mysqld.sock'}", "--user=root"]
        argv += [f"--pid-file={workdir / 'mysqld.pid'}", "--character-set-server=utf8mb4"]
        argv += ["--collation-server=utf8mb4_unicode_ci", "--max-connections=500"]
        self.proc = Proc("private-mariadb", argv, dict(os.environ), workdir / "private-mariadb.log", workdir)

    def _connect(self, database: str | None = None) -> Any:
        import pymysql

        return pymysql.connect(
            host="127.0.0.1",
            port=MARIADB_PORT,
            user="root",
            password="",
            database=database,
            connect_timeout=2,
        )

    def _login(self) -> bool:
        import pymysql

        if not self.proc.alive:
            raise StackError(f"private MariaDB exited:\n{self.proc.tail()}")
        try:
            self._connect().close()
            return True
        except pymysql.MySQLError:
            return False

    def start(self) -> None:
        if self.proc.starts == 0:
            _port_free(MARIADB_PORT)
        self.proc.start()
        wait_until(self._login, "the private MariaDB to accept a login", 60, interval=0.2)
        if self.proc.starts == 1:
            conn = self._connect()
            try:
                with conn.cursor() as cur:
                    cur.execute(
                        f"CREATE DATABASE `{DATABASE}` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci"
                    )
            finally:
                conn.close()

    def stop(self) -> None:
        self.proc.kill()


@dataclass
class Services:
    redis: PrivateRedis
    mariadb: PrivateMariaDB


def start_stack(
    workdir: Path, cleanup: ExitStack, extra_env: dict[str, str] | None = None
) -> tuple[Stack, Services]:
    """Private Redis + MariaDB, then the Bflow processes as docker-compose runs them."""
    redis_server = PrivateRedis(workdir)
    cleanup.callback(redis_server.proc.stop)
    redis_server.start()
    mariadb = PrivateMariaDB(workdir)
    cleanup.callback(mariadb.proc.stop)
    mariadb.start()
    env = clean_env(
        {
            "BFLOW_DATABASE_URL": mariadb.url,
            "BFLOW_BROKER_URL": f"{redis_server.url}/0",
            "BFLOW_RESULT_BACKEND": f"{redis_server.url}/1",
            "BFLOW_SWEEP_SECONDS": "1",
            "BFLOW_SWEEP_GRACE": "3",
            # One key for every process (no race on creating ./bflow-secret.key).
            "BFLOW_SECRET_KEY": secrets.token_urlsafe(32),
            **(extra_env or {}),
        }
    )
    stack = Stack("redis", workdir, env, broker_url=f"{redis_server.url}/0")
    cleanup.callback(stack.stop)  # runs before the services stop (ExitStack is LIFO)
    try:
        start_served(stack)
    except StackError as exc:
        raise StackError(f"{exc}\n{stack.logs()}") from None
    return stack, Services(redis_server, mariadb)


# --- HTTP ----------------------------------------------------------------------------------


class Http:
    """Thread-safe shim client: one requests.Session per thread; answers (status, body), never raises."""

    def __init__(self, base_url: str, token: str):
        self.base = base_url + "/api/v1"
        self.token = token
        self._local = threading.local()

    def _session(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = requests.Session()
            session.headers["Authorization"] = f"Bearer {self.token}"
        return session

    def request(self, method: str, path: str, **kwargs: Any) -> tuple[int | str, Any]:
        try:
            response = self._session().request(method, self.base + path, timeout=REQUEST_TIMEOUT, **kwargs)
        except requests.RequestException as exc:
            return type(exc).__name__, None
        try:
            body = response.json() if response.content else None
        except ValueError:
            body = response.text[:200]
        return response.status_code, body

    def expect(self, method: str, path: str, status: int, **kwargs: Any) -> Any:
        got, body = self.request(method, path, **kwargs)
        if got != status:
            raise StackError(f"{method} {path} answered {got}: {body}")
        return body


def answer_label(status: int | str, body: Any) -> str:
    """`202`, `503:broker_unavailable`, `ConnectionError`: how an answer is tallied."""
    if isinstance(status, int) and status >= 400 and isinstance(body, dict):
        return f"{status}:{body.get('error', {}).get('code', '?')}"
    return str(status)


@dataclass
class Doc:
    """One document of the load: its key, every answer its submits got, its runtime once accepted."""

    document_id: str
    key: str
    answers: list[str] = field(default_factory=list)
    runtime_id: str | None = None
    refused_at: float | None = None


def submit(http: Http, workflow_id: str, doc: Doc) -> None:
    body = {
        "workflow_id": workflow_id,
        "document_type": DEFINITION["document_type"],
        "document_id": doc.document_id,
        "data": {"amount": 100},
        "submitted_by": "chaos",
    }
    status, answer = http.request("POST", "/runtime/execute", json=body, headers={"Idempotency-Key": doc.key})
    doc.answers.append(answer_label(status, answer))
    if status == 202:
        doc.runtime_id = answer["runtime_id"]
    elif doc.refused_at is None:
        doc.refused_at = time.monotonic()


def offer_load(http: Http, workflow_id: str, prefix: str, rate: float, seconds: float) -> list[Doc]:
    """Submit `rate` unique documents a second for `seconds` s from a thread pool; wait for every answer."""
    docs = [Doc(f"{prefix}-{n:05d}", f"key-{prefix}-{n:05d}") for n in range(int(rate * seconds))]
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=LOAD_THREADS, thread_name_prefix="load") as pool:
        futures = []
        for n, doc in enumerate(docs):
            delay = started + n / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            futures.append(pool.submit(submit, http, workflow_id, doc))
        for future in futures:
            future.result()
    return docs


class Approver(threading.Thread):
    """Approve every pending task of APPROVER as it appears; a refused approval is tried again."""

    def __init__(self, http: Http):
        super().__init__(name="approver", daemon=True)
        self.http = http
        self.done: set[str] = set()
        self.answers: Counter[str] = Counter()
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.is_set():
            try:
                self.sweep()
            except Exception as exc:  # noqa: BLE001 - keep approving whatever one round hit
                self.answers[f"error:{type(exc).__name__}"] += 1
            self.halt.wait(0.2)

    def sweep(self) -> None:
        page = 1
        while not self.halt.is_set():
            params = {"assignee": APPROVER, "status": "pending", "page_size": 200, "page": page}
            status, body = self.http.request("GET", "/tasks", params=params)
            if status != 200:
                self.answers[f"list:{answer_label(status, body)}"] += 1
                return
            todo = [task["id"] for task in body["results"] if task["id"] not in self.done]
            with ThreadPoolExecutor(max_workers=4, thread_name_prefix="approve") as pool:
                for task_id, label in zip(todo, pool.map(self.approve, todo), strict=True):
                    self.answers[label] += 1
                    # 409: an earlier attempt whose answer we did not see was admitted after all.
                    if label.startswith(("202", "409")):
                        self.done.add(task_id)
            if not body["next"]:
                return
            page += 1

    def approve(self, task_id: str) -> str:
        body = {"action": "approve", "actor": APPROVER}
        status, answer = self.http.request("POST", f"/tasks/{task_id}/action", json=body)
        return answer_label(status, answer)

    def stop(self) -> None:
        self.halt.set()
        self.join(timeout=60)


class Outage(threading.Thread):
    """After `at` seconds: take something down, wait `seconds`, bring it back; record when."""

    def __init__(self, at: float, seconds: float, down: Callable[[], None], up: Callable[[], None]):
        super().__init__(name="outage", daemon=True)
        self.at, self.seconds, self.down, self.up = at, seconds, down, up
        self.down_at = self.up_at = 0.0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            time.sleep(self.at)
            self.down_at = time.monotonic()
            self.down()
            time.sleep(self.seconds)
            self.up()
            self.up_at = time.monotonic()
        except BaseException as exc:  # noqa: BLE001 - reported by the scenario
            self.error = exc

    def finish(self) -> None:
        self.join()
        if self.error is not None:
            raise StackError(f"the outage thread failed: {self.error!r}")


# --- accounting ----------------------------------------------------------------------------


def duplicates(stack: Stack) -> dict[str, int]:
    """Every way one piece of work could have happened twice, as counts of extra copies."""

    def extra(*columns: Any, where: Any = None) -> int:
        query = select(*columns, func.count()).group_by(*columns).having(func.count() > 1)
        if where is not None:
            query = query.where(where)
        return sum(n - 1 for *_, n in stack.rows(query))

    completed_tasks = Counter(
        row.data.get("task_id")
        for row in stack.rows(select(RuntimeEvent.data).where(RuntimeEvent.type == "task.completed"))
    )
    return {
        "runtimes_per_document": extra(Runtime.document_type, Runtime.document_id),
        "stages_per_visit": extra(RuntimeStage.runtime_id, RuntimeStage.node_key, RuntimeStage.visit),
        "tasks_per_stage_user": extra(RuntimeAssignee.runtime_stage_id, RuntimeAssignee.user),
        "task_completed_events": sum(n - 1 for n in completed_tasks.values() if n > 1),
        "events_per_sequence": extra(RuntimeEvent.runtime_id, RuntimeEvent.sequence),
    }


def _scalars(stack: Stack, query: Any) -> list[Any]:
    return [row[0] for row in stack.rows(query)]


def completed_documents(stack: Stack) -> set[str]:
    return set(_scalars(stack, select(Runtime.document_id).where(Runtime.status == "completed")))


def wait_for(probe: Callable[[], bool], timeout: float, interval: float = 0.5) -> bool:
    """Poll `probe` until true or `timeout`; tolerate a probe that fails while a service recovers."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if probe():
                return True
        except Exception:  # noqa: BLE001 - the database may still be coming back
            pass
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)


def diagnose(stack: Stack, document_ids: list[str], limit: int = 5) -> list[str]:
    """What the database holds for documents that did not complete."""
    lines = []
    for document_id in document_ids[:limit]:
        runtimes = stack.rows(select(Runtime.id, Runtime.status).where(Runtime.document_id == document_id))
        lines.append(f"  document {document_id}: runtimes {[tuple(r) for r in runtimes]}")
        for runtime_id, _ in runtimes:
            lines += stack.describe_runtime(runtime_id, indent="    ")
    return lines


class Monitor(threading.Thread):
    """Every 2 s, write to progress.log what is in flight: queue depth, commands, stages, completions."""

    def __init__(self, stack: Stack):
        super().__init__(name="monitor", daemon=True)
        self.stack = stack
        self.halt = threading.Event()
        self.lines: list[str] = []

    def run(self) -> None:
        with (self.stack.workdir / "progress.log").open("a") as log:
            while not self.halt.wait(2.0):
                try:
                    line = f"{time.strftime('%H:%M:%S')} {self.sample()}"
                except Exception as exc:  # noqa: BLE001 - a service may be down right now
                    line = f"{time.strftime('%H:%M:%S')} unavailable: {type(exc).__name__}"
                self.lines.append(line)
                log.write(line + "\n")
                log.flush()

    def sample(self) -> str:
        def count(model: Any, *where: Any) -> int:
            return self.stack.scalar(select(func.count()).select_from(model).where(*where)) or 0

        try:
            queued = self.stack.queued()
        except Exception:  # noqa: BLE001
            queued = None
        unopened = count(RuntimeStage, RuntimeStage.status == "open", RuntimeStage.started_at.is_(None))
        return (
            f"queued={queued} requested={count(RuntimeCommand, RuntimeCommand.status == 'requested')} "
            f"unopened={unopened} "
            f"runtimes={count(Runtime)} completed={count(Runtime, Runtime.status == 'completed')}"
        )

    def stop(self) -> None:
        self.halt.set()
        self.join(timeout=10)


@dataclass
class Result:
    line: str
    failed: bool
    notes: list[str] = field(default_factory=list)


def fmt(counter: Counter[str]) -> str:
    return "{" + ",".join(f"{k}:{v}" for k, v in sorted(counter.items())) + "}"


# --- scenarios -----------------------------------------------------------------------------


def restart_scenario(name: str, service: str, args: argparse.Namespace, workdir: Path) -> Result:
    """A load of submits and approvals while one private service is killed and restarted."""
    with ExitStack() as cleanup:
        stack, services = start_stack(workdir, cleanup)
        server: PrivateRedis | PrivateMariaDB = getattr(services, service)
        tenant = stack.create_tenant("chaos")
        http = Http(stack.base_url, tenant.token)
        workflow_id = http.expect("POST", "/workflows", 201, json=DEFINITION)["id"]
        approver = Approver(http)
        approver.start()
        cleanup.callback(approver.stop)
        monitor = Monitor(stack)
        monitor.start()
        cleanup.callback(monitor.stop)
        outage = Outage(args.seconds / 3, args.outage_seconds, server.stop, server.start)
        started = time.monotonic()
        outage.start()
        docs = offer_load(http, workflow_id, name, args.rate, args.seconds)
        outage.finish()
        notes = [
            f"{service} down {outage.down_at - started:.1f}s..{outage.up_at - started:.1f}s into the load"
        ]

        first = Counter(doc.answers[0] for doc in docs)
        refused = [doc for doc in docs if doc.runtime_id is None]
        when = Counter(
            "during" if outage.down_at <= (doc.refused_at or 0) <= outage.up_at + 2 else "outside"
            for doc in refused
        )
        wait_for(lambda: http.request("GET", "/health/ready")[0] == 200, 60)
        # A refusal means "not accepted": nothing of it may be in the database.
        refused_ids = [doc.document_id for doc in refused]
        written = (
            _scalars(stack, select(Runtime.document_id).where(Runtime.document_id.in_(refused_ids)))
            if refused_ids
            else []
        )
        if written:
            notes.append(f"refused but written ({len(written)}): {sorted(written)[:5]}")
            for doc in refused:
                if doc.document_id in written[:5]:
                    notes.append(f"  {doc.document_id} answers {doc.answers}")
            notes += diagnose(stack, sorted(written))

        # Retry every refused submit with its own Idempotency-Key until it is accepted.
        deadline = time.monotonic() + 60
        while (pending := [doc for doc in docs if doc.runtime_id is None]) and time.monotonic() < deadline:
            with ThreadPoolExecutor(max_workers=8) as pool:
                list(pool.map(lambda doc: submit(http, workflow_id, doc), pending))
            time.sleep(0.5)
        retry_answers = Counter(answer for doc in refused for answer in doc.answers[1:])
        accepted = [doc for doc in docs if doc.runtime_id is not None]
        never = len(docs) - len(accepted)

        wanted = {doc.document_id for doc in accepted}
        wait_for(lambda: wanted <= completed_documents(stack), args.settle_seconds)
        completed = wanted & completed_documents(stack)
        lost = sorted(wanted - completed)
        approver.stop()

        # Replaying every accepted key must name the runtime it first created.
        def replay(doc: Doc) -> bool:
            again = Doc(doc.document_id, doc.key)
            submit(http, workflow_id, again)
            return again.runtime_id == doc.runtime_id

        with ThreadPoolExecutor(max_workers=8) as pool:
            replay_mismatches = sum(not ok for ok in pool.map(replay, accepted))
        dups = duplicates(stack)
        duplicated = sum(dups.values()) + replay_mismatches
        if lost:
            notes.append(f"lost ({len(lost)}): accepted but not completed after {args.settle_seconds:.0f} s")
            notes += diagnose(stack, lost)
            notes += ["progress (every 2 s):", *monitor.lines]
        if duplicated:
            notes.append(f"duplicates: {dups} replay_mismatches={replay_mismatches}")
        notes.append(
            f"first answers {fmt(first)}; refusals {fmt(when)} the outage; retries {fmt(retry_answers)}"
        )
        notes.append(f"approver answers {fmt(approver.answers)}")
        if any(not label.startswith(("202", "503")) for label in first):
            notes.append("answers other than 202/503 during the outage: see the shim log " + str(workdir))
        line = (
            f"scenario={name} offered={len(docs)} accepted={first['202']} refused={len(refused)} "
            f"retried_accepted={len(refused) - never} never_accepted={never} completed={len(completed)} "
            f"lost={len(lost)} duplicated={duplicated} refused_written={len(written)} "
            f"outage={args.outage_seconds:g}s answers={fmt(first)}"
        )
        stack.check_alive()
        return Result(line, bool(lost or duplicated or written or never), notes)
    raise AssertionError("unreachable")


class Receiver:
    """A loopback webhook consumer on a fixed port that can be stopped and started again.

    Every delivery is verified with the endpoint's secret; each verified one is recorded raw
    (webhook-id, runtime, sequence, type) in arrival order, repeats included.
    """

    def __init__(self, port: int):
        self.port = port
        self.url = f"http://127.0.0.1:{port}/hooks"
        self.secret = ""
        self.received: list[tuple[str, str | None, int, str]] = []
        self.rejected = 0
        self.lock = threading.Lock()
        self.server: ThreadingHTTPServer | None = None

    def start(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                headers = {k.lower(): v for k, v in self.headers.items()}
                try:
                    event = Webhook(receiver.secret).verify(body, headers)
                except Exception:  # noqa: BLE001 - a bad signature is counted, not kept
                    with receiver.lock:
                        receiver.rejected += 1
                    self.send_response(400)
                    self.end_headers()
                    return
                record = (
                    headers["webhook-id"],
                    event["data"].get("runtime_id"),
                    int(event.get("sequence") or 0),
                    event["type"],
                )
                with receiver.lock:
                    receiver.received.append(record)
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True, name="receiver").start()

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None


def receiver_down(args: argparse.Namespace, workdir: Path) -> Result:
    """Runtimes whose webhooks meet a receiver that is gone for minutes, then comes back."""
    env = {"BFLOW_WEBHOOK_ALLOW_PRIVATE": "true", "BFLOW_WEBHOOK_RETRY_SCALE": str(args.retry_scale)}
    with ExitStack() as cleanup:
        stack, _ = start_stack(workdir, cleanup, env)
        tenant = stack.create_tenant("chaos")
        http = Http(stack.base_url, tenant.token)
        receiver = Receiver(free_port())
        receiver.start()
        cleanup.callback(receiver.stop)
        endpoint = http.expect("POST", "/webhooks", 201, json={"url": receiver.url})
        receiver.secret = endpoint["secret"]
        workflow_id = http.expect("POST", "/workflows", 201, json=DEFINITION)["id"]
        approver = Approver(http)
        approver.start()
        cleanup.callback(approver.stop)
        outage = Outage(3.0, args.receiver_down_seconds, receiver.stop, receiver.start)
        started = time.monotonic()
        outage.start()
        docs = offer_load(http, workflow_id, "hook", args.webhook_rate, args.webhook_seconds)
        outage.finish()
        notes = [f"receiver down {outage.down_at - started:.1f}s..{outage.up_at - started:.1f}s"]
        accepted = {doc.document_id for doc in docs if doc.runtime_id}

        def expected() -> set[tuple[str, int]]:
            rows = stack.rows(
                select(RuntimeEvent.runtime_id, RuntimeEvent.sequence).where(
                    RuntimeEvent.tenant_id == tenant.id
                )
            )
            return {(r, s) for r, s in rows}

        def arrived() -> set[tuple[str, int]]:
            with receiver.lock:
                return {(r, s) for _, r, s, _ in receiver.received if r is not None}

        def everything() -> bool:
            return accepted <= completed_documents(stack) and expected() <= arrived()

        wait_for(everything, args.settle_seconds + args.receiver_down_seconds * 0.75, interval=1)
        approver.stop()
        time.sleep(2)  # anything still in flight lands (and would show as a duplicate)
        want = expected()
        with receiver.lock:
            received = list(receiver.received)
        ids_per_event: dict[tuple[str | None, int], set[str]] = defaultdict(set)
        order: dict[str | None, list[int]] = defaultdict(list)
        seen: set[str] = set()
        for webhook_id, runtime_id, sequence, _ in received:
            ids_per_event[(runtime_id, sequence)].add(webhook_id)
            if webhook_id not in seen:
                seen.add(webhook_id)
                order[runtime_id].append(sequence)
        got = {key for key in ids_per_event if key[0] is not None}
        lost = want - got
        unexpected = got - want
        duplicated = sum(len(ids) - 1 for ids in ids_per_event.values())
        redelivered = len(received) - len(seen)
        out_of_order = sum(
            1 for seqs in order.values() for i in range(1, len(seqs)) if seqs[i] < max(seqs[:i])
        )
        deliveries = Counter(
            status
            for (status,) in stack.rows(
                select(WebhookDelivery.status).where(WebhookDelivery.endpoint_id == endpoint["id"])
            )
        )
        attempts = stack.scalar(select(func.count()).select_from(WebhookAttempt)) or 0
        not_completed = sorted(accepted - completed_documents(stack))
        if lost:
            notes.append(f"lost events (runtime, sequence): {sorted(lost)[:10]}")
            for runtime_id, sequence in sorted(lost)[:5]:
                rows = stack.rows(
                    select(
                        WebhookDelivery.status,
                        WebhookDelivery.attempts,
                        WebhookDelivery.next_attempt_at,
                        WebhookDelivery.last_error,
                    ).where(WebhookDelivery.runtime_id == runtime_id, WebhookDelivery.sequence == sequence)
                )
                notes.append(f"  {runtime_id} #{sequence}: deliveries {[tuple(r) for r in rows]}")
        if not_completed:
            notes.append(f"runtimes not completed ({len(not_completed)})")
            notes += diagnose(stack, not_completed)
        notes.append(
            f"deliveries by status {fmt(deliveries)}; attempts {attempts}; "
            f"raw deliveries {len(received)}; approver answers {fmt(approver.answers)}"
        )
        line = (
            f"scenario=receiver-down offered={len(docs)} accepted={len(accepted)} "
            f"completed={len(accepted) - len(not_completed)} events_expected={len(want)} "
            f"delivered={len(got & want)} lost={len(lost)} duplicated={duplicated} "
            f"redelivered={redelivered} out_of_order={out_of_order} unexpected={len(unexpected)} "
            f"rejected={receiver.rejected} down={args.receiver_down_seconds:g}s"
        )
        stack.check_alive()
        failed = bool(lost or duplicated or out_of_order or unexpected or receiver.rejected or not_completed)
        return Result(line, failed, notes)
    raise AssertionError("unreachable")


# --- main ----------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scenarios", nargs="*", metavar="SCENARIO", help=f"any of {', '.join(SCENARIOS)}")
    parser.add_argument("--rate", type=float, default=25.0, help="submits per second (restart scenarios)")
    parser.add_argument("--seconds", type=float, default=30.0, help="load duration (restart scenarios)")
    parser.add_argument("--outage-seconds", type=float, default=5.0)
    parser.add_argument("--receiver-down-seconds", type=float, default=120.0)
    parser.add_argument("--webhook-rate", type=float, default=10.0)
    parser.add_argument("--webhook-seconds", type=float, default=20.0)
    parser.add_argument("--retry-scale", type=float, default=0.002, help="BFLOW_WEBHOOK_RETRY_SCALE")
    parser.add_argument("--settle-seconds", type=float, default=90.0, help="bound on waiting for completion")
    parser.add_argument("--keep", action="store_true", help="keep every scenario's logs")
    args = parser.parse_args()
    unknown = set(args.scenarios) - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenario(s) {sorted(unknown)}; expected any of {', '.join(SCENARIOS)}")
    # SIGTERM unwinds like Ctrl-C, so every private server and Bflow process is killed.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    runs: dict[str, Callable[[Path], Result]] = {
        "redis-restart": lambda d: restart_scenario("redis-restart", "redis", args, d),
        "mariadb-restart": lambda d: restart_scenario("mariadb-restart", "mariadb", args, d),
        "receiver-down": lambda d: receiver_down(args, d),
    }
    status = 0
    began = time.monotonic()
    for name in args.scenarios or SCENARIOS:
        t0 = time.monotonic()
        # Short path: the MariaDB socket must fit in sun_path (108 bytes).
        workdir = Path(tempfile.mkdtemp(prefix=f"chaos-{name}-", dir="/tmp"))
        try:
            result = runs[name](workdir)
        except StackError as exc:
            print(f"scenario={name} error: {exc}\n  logs in {workdir}", flush=True)
            status = max(status, 2)
            continue
        print(result.line + f" seconds={time.monotonic() - t0:.0f}", flush=True)
        for note in result.notes:
            print(f"  {note}", flush=True)
        if result.failed:
            status = max(status, 1)
        if result.failed or args.keep:
            print(f"  logs in {workdir}", flush=True)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    print(f"total {time.monotonic() - began:.0f} s", flush=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
