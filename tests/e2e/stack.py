"""Launch real Bflow stacks as subprocesses for end-to-end tests, and always tear them down.

Three stacks, each a set of real processes talking over real sockets:

- ``embedded``: ``bflow dev`` alone (SQLite file, in-process memory broker, worker and Beat).
- ``redis``: MariaDB + Redis broker (db 10) + Redis results (db 11), with a ``celery
  worker``, ``celery beat`` and ``uvicorn api_shim.app:app``.
- ``rabbitmq``: MariaDB + RabbitMQ broker (a fresh vhost) + Redis results (db 12).

Every process writes to its own log file in the stack's directory; `Stack.logs()` gives
their tails for failure reports. Processes start in their own session so that a process
group (a prefork worker and its children) can be killed at once, and `launch` kills
whatever is still running when its block exits, whatever happened inside it.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import requests
import yaml
from sqlalchemy import Engine, create_engine, func, select
from sqlalchemy.engine import make_url

from bflow_tasks.demo import Client
from bflow_tasks.models import Runtime, RuntimeAssignee, RuntimeCommand, RuntimeStage
from tests import services

REPO_ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
START_TIMEOUT = 60.0
STOP_GRACE = 8.0
QUEUES = ("workflow", "webhooks", "maintenance")
# Redis databases reserved for the e2e suite (the other suites use lower numbers).
REDIS_BROKER_DB = 10
REDIS_RESULTS_DB = {"redis": 11, "rabbitmq": 12}
# The sweep runs every second and re-enqueues what has waited 3 s (docs/reliability.md).
# Webhook receivers in these tests listen on loopback, which production refuses.
SERVED_ENV = {"BFLOW_SWEEP_SECONDS": "1", "BFLOW_SWEEP_GRACE": "3", "BFLOW_WEBHOOK_ALLOW_PRIVATE": "true"}
KINDS = ("embedded", "redis", "rabbitmq")

_live: set[Proc] = set()


class StackError(RuntimeError):
    """A stack did not start, or one of its processes died."""


def suffix() -> str:
    """The per-engineer suffix for shared service names (databases, vhosts)."""
    return os.environ.get("BFLOW_TEST_DB_SUFFIX", "")


def free_port() -> int:
    """Return a loopback TCP port nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def clean_env(extra: dict[str, str]) -> dict[str, str]:
    """The parent's environment without any BFLOW_*/CELERY_* setting, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BFLOW_", "CELERY_"))}
    # The subprocesses run this checkout's code, whatever the venv's editable install points at.
    env["PYTHONPATH"] = str(REPO_ROOT)
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def command(script: str, module: str) -> list[str]:
    """The venv's console script `script`, or `python -m module` when it is not installed."""
    found = shutil.which(script, path=str(BIN))
    return [found] if found else [sys.executable, "-m", module]


def wait_until(probe: Callable[[], Any], what: str, timeout: float, interval: float = 0.1) -> Any:
    """Poll `probe` until it returns something truthy; StackError after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        found = probe()
        if found:
            return found
        if time.monotonic() > deadline:
            raise StackError(f"gave up after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


# --- processes ---------------------------------------------------------------------------


@dataclass(eq=False)
class Proc:
    """One subprocess with its log file; restartable (the worker-killing test restarts it)."""

    name: str
    argv: list[str]
    env: dict[str, str]
    log_path: Path
    cwd: Path
    popen: subprocess.Popen[bytes] | None = None
    log_offset: int = 0  # where the current run's output starts in the log
    starts: int = 0

    def start(self) -> None:
        """Start the process in its own session, appending its output to the log."""
        self.log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with self.log_path.open("ab") as log:
            log.write(f"\n=== start #{self.starts + 1}: {' '.join(self.argv)}\n".encode())
            log.flush()
            self.popen = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                cwd=self.cwd,
                start_new_session=True,
            )
        self.starts += 1
        _live.add(self)

    @property
    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def signal_group(self, sig: int) -> None:
        """Send `sig` to the process's whole group (a prefork worker and its pool)."""
        if self.popen is None:
            return
        try:
            os.killpg(self.popen.pid, sig)
        except ProcessLookupError:
            pass

    def kill(self) -> None:
        """SIGKILL the whole group and reap the process."""
        self.signal_group(signal.SIGKILL)
        if self.popen is not None:
            self.popen.wait(timeout=10)

    def terminate(self) -> None:
        """SIGTERM the group (if the process still runs) without waiting: `stop` then waits."""
        if self.popen is not None and self.popen.poll() is None:
            self.signal_group(signal.SIGTERM)

    def stop(self, grace: float = STOP_GRACE) -> None:
        """SIGTERM the group, then SIGKILL whatever is left after `grace` seconds."""
        if self.popen is None:
            return
        if self.popen.poll() is None:
            self.signal_group(signal.SIGTERM)
            try:
                self.popen.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                pass
        # Pool children may outlive a parent that exited: kill the group regardless.
        self.kill()
        _live.discard(self)

    def output(self) -> str:
        """What the current run has written so far."""
        with self.log_path.open("rb") as log:
            log.seek(self.log_offset)
            return log.read().decode(errors="replace")

    def tail(self, lines: int = 60) -> str:
        text_ = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text_.splitlines()[-lines:])

    def wait_for_output(self, needle: str, timeout: float = START_TIMEOUT) -> None:
        """Wait until the current run logs `needle`; StackError if it exits first."""

        def seen() -> bool:
            if needle in self.output():
                return True
            if not self.alive:
                raise StackError(
                    f"{self.name} exited ({self.popen and self.popen.returncode}) before '{needle}'"
                )
            return False

        wait_until(seen, f"{self.name} to log '{needle}'", timeout)


@atexit.register
def _kill_leftovers() -> None:
    # The last line of defence if a teardown never ran (an interrupted session).
    for proc in list(_live):
        proc.signal_group(signal.SIGKILL)


# --- the stack ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Tenant:
    id: str
    token: str


class E2EClient(Client):
    """The demo's HTTP client, plus raw requests for the error cases."""

    def __init__(self, base_url: str, token: str):
        super().__init__(base_url, token)
        self.base_url = base_url

    def request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        """Send a request and return the response, whatever its status."""
        return self.http.request(method, self.base + path, timeout=30, **kwargs)

    def pending_tasks(self, runtime_id: str) -> dict[str, str]:
        """user -> task id of the runtime's pending tasks."""
        found = self.call("GET", "/tasks", 200, params={"runtime_id": runtime_id, "status": "pending"})
        return {task["user"]: task["id"] for task in found["results"]}

    def wait_for_tasks(self, runtime_id: str, users: set[str]) -> dict[str, str]:
        """Wait until exactly `users` have pending tasks on the runtime (its stage is open)."""
        return wait_until(
            lambda: (found := self.pending_tasks(runtime_id)) and set(found) == users and found,
            f"pending tasks for {sorted(users)} on runtime {runtime_id}",
            timeout=60,
            interval=0.05,
        )


@dataclass
class Stack:
    kind: str
    workdir: Path
    env: dict[str, str]
    base_url: str = ""
    procs: dict[str, Proc] = field(default_factory=dict)
    broker_url: str = ""
    _engine: Engine | None = None

    @property
    def database_url(self) -> str:
        return self.env["BFLOW_DATABASE_URL"]

    # --- processes ---

    def add(self, name: str, argv: list[str]) -> Proc:
        """Start a process of this stack with the stack's environment."""
        proc = Proc(name, argv, self.env, self.workdir / f"{name}.log", self.workdir)
        self.procs[name] = proc
        proc.start()
        return proc

    def bflow(self, *args: str) -> dict[str, Any]:
        """Run a `bflow ... --json` command against this stack; return its JSON object."""
        argv = [*command("bflow", "bflow_tasks.cli"), *args, "--json"]
        done = subprocess.run(
            argv, env=self.env, cwd=self.workdir, capture_output=True, text=True, timeout=120
        )
        if done.returncode != 0:
            raise StackError(f"{' '.join(argv)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}")
        return json.loads(done.stdout.strip().splitlines()[-1])

    def create_tenant(self, name: str) -> Tenant:
        """Create a tenant with the CLI (`bflow tenant create NAME --json`)."""
        created = self.bflow("tenant", "create", name)
        return Tenant(id=created["tenant_id"], token=created["token"])

    def client(self, tenant: Tenant) -> E2EClient:
        return E2EClient(self.base_url, tenant.token)

    def check_alive(self) -> None:
        """StackError naming any process of the stack that has exited."""
        dead = [p.name for p in self.procs.values() if not p.alive]
        if dead:
            raise StackError(f"{', '.join(dead)} of the {self.kind} stack exited:\n{self.logs()}")

    def logs(self, lines: int = 60) -> str:
        """The tail of every process's log, for a failure report."""
        return "\n".join(f"----- {p.name} ({p.log_path}) -----\n{p.tail(lines)}" for p in self.procs.values())

    def stop(self) -> None:
        # The shim first (no new work), then Beat and the workers together: each warm shutdown
        # takes about a second, and one after the other they added up.
        if "shim" in self.procs:
            self.procs["shim"].stop()
        for proc in self.procs.values():
            proc.terminate()
        for proc in self.procs.values():
            proc.stop()
        if self._engine is not None:
            self._engine.dispose()

    # --- reading state directly ---

    @property
    def engine(self) -> Engine:
        """A read-only view of the stack's database (autocommit: every query sees the latest)."""
        if self._engine is None:
            url = self.database_url
            if url.startswith("sqlite"):
                self._engine = create_engine(url, connect_args={"timeout": 30})
            else:
                self._engine = create_engine(url, isolation_level="AUTOCOMMIT", pool_pre_ping=True)
        return self._engine

    def scalar(self, query: Any) -> Any:
        with self.engine.connect() as conn:
            return conn.scalar(query)

    def rows(self, query: Any) -> list[Any]:
        with self.engine.connect() as conn:
            return list(conn.execute(query).all())

    def describe_runtime(self, runtime_id: str, indent: str = "  ") -> list[str]:
        """What the database holds for one runtime: its stages, commands and tasks (for failures)."""
        queries = {
            "stage": select(
                RuntimeStage.node_key, RuntimeStage.status, RuntimeStage.created_at, RuntimeStage.started_at
            ).where(RuntimeStage.runtime_id == runtime_id),
            "command": select(RuntimeCommand.kind, RuntimeCommand.status, RuntimeCommand.created_at).where(
                RuntimeCommand.runtime_id == runtime_id
            ),
            "task": select(RuntimeAssignee.node_key, RuntimeAssignee.user, RuntimeAssignee.status).where(
                RuntimeAssignee.runtime_id == runtime_id
            ),
        }
        return [f"{indent}{kind} {tuple(row)}" for kind, query in queries.items() for row in self.rows(query)]

    def counts(self) -> dict[str, int]:
        """Rows in the tables a request writes when it is admitted."""
        return {
            model.__tablename__: self.scalar(select(func.count()).select_from(model)) or 0
            for model in (Runtime, RuntimeCommand, RuntimeAssignee)
        }

    def queued(self, queue: str = "workflow") -> int | None:
        """Messages waiting in a broker queue, or None where it cannot be seen (in-process broker)."""
        if self.kind == "redis":
            import redis

            client = redis.Redis.from_url(self.broker_url)
            try:
                return int(client.llen(queue))
            finally:
                client.close()
        if self.kind == "rabbitmq":
            from kombu import Connection

            with Connection(self.broker_url, connect_timeout=5) as conn:
                return int(conn.default_channel.queue_declare(queue=queue, passive=True).message_count)
        return None

    def busy(self) -> str | None:
        """What is still in flight (a command not applied, a stage not opened, a queued message)."""
        requested = self.scalar(
            select(func.count()).select_from(RuntimeCommand).where(RuntimeCommand.status == "requested")
        )
        unopened = self.scalar(
            select(func.count())
            .select_from(RuntimeStage)
            .where(RuntimeStage.status == "open", RuntimeStage.started_at.is_(None))
        )
        pending = self.scalar(select(func.count()).select_from(Runtime).where(Runtime.status == "pending"))
        queued = self.queued() or 0
        if requested or unopened or pending or queued:
            return (
                f"{requested} requested command(s), {unopened} unopened stage(s), "
                f"{pending} pending runtime(s), {queued} queued message(s)"
            )
        return None

    def settle(self, timeout: float = 30) -> None:
        """Wait until nothing is in flight: every command applied, every stage opened, queues empty."""
        last: list[str | None] = [None]

        def quiet() -> bool:
            last[0] = self.busy()
            return last[0] is None

        try:
            wait_until(quiet, f"the {self.kind} stack to settle", timeout)
        except StackError as exc:
            raise StackError(f"{exc}: still {last[0]}") from None


# --- launching ---------------------------------------------------------------------------


def wait_healthy(stack: Stack, timeout: float = START_TIMEOUT) -> None:
    """Wait until the shim answers GET /api/v1/health with 200."""
    url = f"{stack.base_url}/api/v1/health"

    def healthy() -> bool:
        stack.check_alive()
        try:
            return requests.get(url, timeout=5).status_code == 200
        except requests.RequestException:
            return False

    wait_until(healthy, f"{url} to answer 200", timeout, interval=0.2)


@contextmanager
def launch(kind: str, workdir: Path, extra_env: dict[str, str] | None = None) -> Iterator[Stack]:
    """Start a stack of `kind` (see KINDS) in `workdir`; stop every process when the block exits."""
    with ExitStack() as cleanup:
        stack = _prepare(kind, workdir, cleanup)
        stack.env.update(extra_env or {})
        cleanup.callback(stack.stop)
        try:
            if kind == "embedded":
                _start_embedded(stack)
            else:
                start_served(stack)
        except StackError as exc:
            raise StackError(f"{exc}\n{stack.logs()}") from None
        yield stack


def _prepare(kind: str, workdir: Path, cleanup: ExitStack) -> Stack:
    """Fresh services for the stack: an empty database, empty queues, a clean environment."""
    workdir.mkdir(parents=True, exist_ok=True)
    if kind == "embedded":
        env = clean_env(
            {"BFLOW_DATABASE_URL": f"sqlite:///{workdir / 'bflow.db'}", "BFLOW_WEBHOOK_ALLOW_PRIVATE": "true"}
        )
        return Stack(kind, workdir, env)
    if kind not in KINDS:
        raise ValueError(f"unknown stack kind {kind!r}; expected one of {KINDS}")
    database_url = fresh_mysql_database("bflow_e2e" + suffix())
    redis_base = services.redis_url()
    results_url = _redis_db(redis_base, REDIS_RESULTS_DB[kind])
    flush_redis(results_url)
    cleanup.callback(flush_redis, results_url)
    if kind == "redis":
        broker_url = _redis_db(redis_base, REDIS_BROKER_DB)
        flush_redis(broker_url)
        cleanup.callback(flush_redis, broker_url)
    else:
        vhost = "bflow_e2e" + suffix()
        broker_url = fresh_amqp_vhost(services.amqp_url(), vhost)
        if urlsplit(broker_url).path == f"/{vhost}":
            cleanup.callback(delete_amqp_vhost, vhost)
    env = clean_env(
        {
            "BFLOW_DATABASE_URL": database_url,
            "BFLOW_BROKER_URL": broker_url,
            "BFLOW_RESULT_BACKEND": results_url,
            **SERVED_ENV,
        }
    )
    return Stack(kind, workdir, env, broker_url=broker_url)


def _start_embedded(stack: Stack) -> None:
    port = free_port()
    stack.base_url = f"http://127.0.0.1:{port}"
    stack.add("dev", [*command("bflow", "bflow_tasks.cli"), "dev", "--port", str(port)])
    wait_healthy(stack)


def compose_command(service: str, **replace: str) -> list[str]:
    """The command docker-compose.yml runs for `service`, as this machine can run it.

    The tests run exactly what operators run: only the executable (this venv's), container
    paths and the listening address are substituted, by `replace` (old -> new argument).
    """
    compose = yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())
    argv = [replace.get(arg, arg) for arg in compose["services"][service]["command"]]
    program = {"celery": ["-m", "celery"], "uvicorn": ["-m", "uvicorn"], "bflow": ["-m", "bflow_tasks.cli"]}
    return [sys.executable, *program[argv[0]], *argv[1:]]


def start_served(stack: Stack) -> None:
    """Migrate, then start the worker, maintenance worker, Beat and shim as docker-compose does."""
    stack.bflow("db", "upgrade")
    start_worker(stack)
    stack.add("worker-maintenance", compose_command("worker-maintenance"))
    schedule = str(stack.workdir / "celerybeat-schedule")
    stack.add("beat", compose_command("beat", **{"/var/lib/bflow/celerybeat-schedule": schedule}))
    port = free_port()
    stack.base_url = f"http://127.0.0.1:{port}"
    stack.add("shim", compose_command("shim", **{"0.0.0.0": "127.0.0.1", "8000": str(port)}))
    # The workers first: /health caches its answer (5 s by default), so a probe that came
    # before they were ready kept the stack "unhealthy" for seconds after they were.
    stack.procs["worker"].wait_for_output(" ready.")
    stack.procs["worker-maintenance"].wait_for_output(" ready.")
    wait_healthy(stack)


def start_worker(stack: Stack) -> Proc:
    """Start (or restart) the stack's workflow + webhooks worker, as docker-compose runs it."""
    proc = stack.procs.get("worker")
    if proc is None:
        return stack.add("worker", compose_command("worker"))
    proc.start()
    return proc


# --- services ----------------------------------------------------------------------------


def fresh_mysql_database(name: str) -> str:
    """Drop and create the database `name` on the test MariaDB server; return its URL."""
    import pymysql

    url = services.mysql_url(database=name)
    u = make_url(url)
    conn = pymysql.connect(
        host=u.host or "127.0.0.1",
        port=u.port or 3306,
        user=u.username or "root",
        password=u.password or "",
        charset="utf8mb4",
    )
    try:
        with conn.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
            cur.execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci")
    finally:
        conn.close()
    return url


def _redis_db(url: str, number: int) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, f"/{number}", parts.query, parts.fragment))


def flush_redis(url: str) -> None:
    """Empty one Redis database (only the e2e suite's own numbers are ever passed here)."""
    import redis

    client = redis.Redis.from_url(url)
    try:
        client.flushdb()
    finally:
        client.close()


def fresh_amqp_vhost(base_url: str, vhost: str) -> str:
    """A RabbitMQ vhost of our own, recreated empty; else the base vhost with our queues purged."""
    parts = urlsplit(base_url)
    user = parts.username or "guest"
    ctl = shutil.which("rabbitmqctl")
    if ctl is not None:
        subprocess.run([ctl, "-q", "delete_vhost", vhost], capture_output=True, timeout=60)
        created = subprocess.run([ctl, "-q", "add_vhost", vhost], capture_output=True, text=True, timeout=60)
        granted = subprocess.run(
            [ctl, "-q", "set_permissions", "-p", vhost, user, ".*", ".*", ".*"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        if created.returncode == 0 and granted.returncode == 0:
            return urlunsplit((parts.scheme, parts.netloc, f"/{vhost}", parts.query, parts.fragment))
    from kombu import Connection

    for queue in QUEUES:
        with Connection(base_url, connect_timeout=5) as conn:
            try:
                conn.default_channel.queue_purge(queue)
            except conn.channel_errors:  # not declared yet: nothing to purge
                pass
    return base_url


def delete_amqp_vhost(vhost: str) -> None:
    """Drop a vhost made by `fresh_amqp_vhost` (its queues and messages go with it)."""
    ctl = shutil.which("rabbitmqctl")
    if ctl is not None:
        subprocess.run([ctl, "-q", "delete_vhost", vhost], capture_output=True, timeout=60)


def unique(prefix: str) -> str:
    """A document id no other test uses."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


__all__ = [
    "KINDS",
    "E2EClient",
    "Proc",
    "Stack",
    "StackError",
    "Tenant",
    "launch",
    "start_served",
    "start_worker",
    "unique",
    "wait_until",
]
