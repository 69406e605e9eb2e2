"""Where the external services for integration tests are, and what to do when they are not.

Each ``*_url()`` returns the service's URL when the service answers, and otherwise skips the
calling test -- or fails it when ``BFLOW_REQUIRE_SERVICES=1`` (CI sets that, so a service
that is down is a red build, never a quietly skipped suite).

    url = services.mysql_url()      # MariaDB/MySQL: a real login, database created if missing
    url = services.mysql_url(database="bflow_other_test")   # another database, same server
    url = services.redis_url()      # Redis: PING
    url = services.amqp_url()       # RabbitMQ: an AMQP login

Reachability is checked quickly (TCP connect with a 2 s timeout, then a real login) and
remembered for the rest of the test process.
"""

from __future__ import annotations

import functools
import os
import socket

import pytest
from sqlalchemy.engine import make_url

CONNECT_TIMEOUT = 2.0

DEFAULT_MYSQL_URL = "mysql+pymysql://root@127.0.0.1:3306/bflow_test?charset=utf8mb4"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
DEFAULT_AMQP_URL = "amqp://guest:guest@127.0.0.1:5672//"


def services_required() -> bool:
    """True when a missing service must fail the test instead of skipping it."""
    return os.environ.get("BFLOW_REQUIRE_SERVICES", "").strip().lower() in {"1", "true", "yes", "on"}


def require(name: str, reachable: bool, detail: str = "") -> None:
    """Skip (or, with BFLOW_REQUIRE_SERVICES=1, fail) the current test unless `reachable`."""
    if reachable:
        return
    message = f"{name} is not reachable" + (f": {detail}" if detail else "")
    if services_required():
        pytest.fail(f"{message} (BFLOW_REQUIRE_SERVICES=1, so this is a failure, not a skip)", pytrace=False)
    pytest.skip(f"{message} (set BFLOW_REQUIRE_SERVICES=1 to make this a failure)")


def _tcp_check(host: str, port: int) -> str | None:
    """None if something accepts a TCP connection at host:port, else why not."""
    try:
        with socket.create_connection((host, port), timeout=CONNECT_TIMEOUT):
            return None
    except OSError as exc:
        return f"cannot connect to {host}:{port} ({exc})"


# --- MariaDB / MySQL ---------------------------------------------------------------------


@functools.cache
def _mysql_problem(url: str) -> str | None:
    """None if we can log in to `url` and its database exists (created if missing)."""
    import pymysql

    u = make_url(url)
    host, port = u.host or "127.0.0.1", u.port or 3306
    problem = _tcp_check(host, port)
    if problem:
        return problem
    try:
        conn = pymysql.connect(
            host=host,
            port=port,
            user=u.username or "root",
            password=u.password or "",
            charset="utf8mb4",
            connect_timeout=int(CONNECT_TIMEOUT),
            read_timeout=10,
            write_timeout=10,
        )
    except pymysql.MySQLError as exc:
        return f"cannot log in to {host}:{port} as {u.username!r} ({exc})"
    try:
        if u.database:
            with conn.cursor() as cur:
                cur.execute(
                    f"CREATE DATABASE IF NOT EXISTS `{u.database}` "
                    "CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci"
                )
    except pymysql.MySQLError as exc:
        return f"database {u.database!r} is missing and cannot be created ({exc})"
    finally:
        conn.close()
    return None


def mysql_url(check: bool = True, database: str | None = None) -> str:
    """The MariaDB/MySQL test database URL (env BFLOW_TEST_MYSQL_URL), or skip/fail.

    `database` swaps in another database on the same server (created if missing), for
    suites that must not share the default one.
    """
    url = os.environ.get("BFLOW_TEST_MYSQL_URL") or DEFAULT_MYSQL_URL
    if database is not None:
        url = make_url(url).set(database=database).render_as_string(hide_password=False)
    if check:
        problem = _mysql_problem(url)
        require("MariaDB", problem is None, f"{_safe(url)}: {problem}")
    return url


# --- Redis -------------------------------------------------------------------------------


@functools.cache
def _redis_problem(url: str) -> str | None:
    import redis

    u = make_url(url.replace("rediss://", "redis://", 1))
    problem = _tcp_check(u.host or "127.0.0.1", u.port or 6379)
    if problem:
        return problem
    client = redis.Redis.from_url(url, socket_connect_timeout=CONNECT_TIMEOUT, socket_timeout=CONNECT_TIMEOUT)
    try:
        client.ping()
    except redis.RedisError as exc:
        return f"PING failed ({exc})"
    finally:
        client.close()
    return None


def redis_url(check: bool = True) -> str:
    """The Redis URL for tests (env BFLOW_TEST_REDIS_URL), or skip/fail."""
    url = os.environ.get("BFLOW_TEST_REDIS_URL") or DEFAULT_REDIS_URL
    if check:
        problem = _redis_problem(url)
        require("Redis", problem is None, f"{_safe(url)}: {problem}")
    return url


# --- RabbitMQ ----------------------------------------------------------------------------


@functools.cache
def _amqp_problem(url: str) -> str | None:
    from kombu import Connection

    u = make_url(url.replace("amqps://", "amqp://", 1))
    problem = _tcp_check(u.host or "127.0.0.1", u.port or 5672)
    if problem:
        return problem
    conn = Connection(url, connect_timeout=CONNECT_TIMEOUT)
    try:
        conn.ensure_connection(max_retries=0)
    except Exception as exc:  # kombu/amqp raise a mix of OSError and AMQP errors
        return f"AMQP login failed ({exc})"
    finally:
        conn.release()
    return None


def amqp_url(check: bool = True) -> str:
    """The RabbitMQ URL for tests (env BFLOW_TEST_AMQP_URL), or skip/fail."""
    url = os.environ.get("BFLOW_TEST_AMQP_URL") or DEFAULT_AMQP_URL
    if check:
        problem = _amqp_problem(url)
        require("RabbitMQ", problem is None, f"{_safe(url)}: {problem}")
    return url


def _safe(url: str) -> str:
    """`url` with any password hidden, for messages."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url.split("@")[-1]
