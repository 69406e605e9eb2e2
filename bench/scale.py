"""The SLA scan and the archive over a million runtimes on MariaDB: seconds, peak RSS, rows/s.

    python bench/scale.py [--runtimes 1000000] [--archive 10000] [--in-progress 100000] [--due 500]
    python bench/scale.py --database-url 'mysql+pymysql://root@127.0.0.1/bflow_bench_scale?charset=utf8mb4'

Uses only the database `bflow_bench_scale` (dropped, recreated with utf8mb4, migrated).
Seeding: through the engine, a tenant, the leave request of `tests.factories` with an SLA on
its manager review (24 h, reminders every 8 h, escalation to `boss`) and two runtimes under
the finance threshold, one approved by u1-u3, one waiting on them. Their rows are set aside,
the runtime tables emptied, and each refilled by one `INSERT ... SELECT` of the template rows
joined with `seq_1_to_N` (MariaDB's Sequence engine): into an empty table, with unique and
foreign key checks off, that is MariaDB's bulk load (indexes built by sorting; duplicate keys
still fail it). Clone k has its own ids, shaped as the engine's UUIDv7 (time-ordered) keys:
k where the time goes, since clone numbers follow the clones' times, then the MD5 of the
template row's id and k. Its document id is its own and its timestamps are shifted alike. Clones
1..`--archive` completed 1-300 days before the archive cutoff, with every row the engine
wrote; the last `--in-progress` wait on u1-u3, due in 20-24 h; the rest completed within the
retention period, with their stages and tasks but only a few log lines and events, their
start command and one viewer.

Measured: (1) `sla.scan` with nothing due, median of 5; (2) `sla.scan` once `--due` u1 tasks
are past due and `--due` others have a reminder due, each in its own runtime: seconds and
tasks/s of one scan, which must count min(due, 500) overdue, escalated and reminded (later
scans finish the rest); (3) `archiving.run` with its default batch size: seconds, runtimes/s,
rows/s (copied + deleted, from its totals) and RSS at each committed batch; then no row of
the old runtimes may be live and the archive tables must hold exactly their rows. EXPLAIN
shows how `sla.overdue_query`, `sla.reminder_query` and `archiving.due_query` read.

`--archive` defaults to 10,000 (20 batches, 0.72 M rows copied or deleted), enough to show
the batch rate and the RSS settle. A million runtimes make tables many times a 128 MB buffer
pool (MariaDB's default, and this server's); the time-ordered keys keep an old batch's rows
on few pages, so that it is read from disk page by page rather than row by row.
Exits 1 only if a correctness check fails; a missed target prints MISS.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

DEFAULT_URL = "mysql+pymysql://root@127.0.0.1/bflow_bench_scale?charset=utf8mb4"
SCAN_RUNS = 5
TABLES: tuple[str, ...] = ("runtime", "runtime_stage", "runtime_assignee", "runtime_log", "runtime_event")
TABLES += ("runtime_command", "runtime_viewer")
# The longest loads (most rows, most indexes) first, so that two at a time end together.
LOAD_ORDER = sorted(TABLES, key=lambda name: name not in ("runtime", "runtime_stage", "runtime_assignee"))
# Columns holding a runtime-local id: each clone gets its own, consistently across tables.
IDS = {"id", "runtime_id", "runtime_stage_id", "stage_id", "assignee_id", "delegated_from_id"}
# The rows a runtime that is not archived keeps (the archived ones keep every row).
FEW = {
    "runtime_log": "t.sequence <= 3",
    "runtime_event": "t.sequence <= 2",
    "runtime_command": "t.kind = 'start'",
    "runtime_viewer": "t.user = 'alice'",  # the submitter
}
# The index whose range each Beat query must read.
INDEXES = {
    "sla.overdue_query": "idx_runtime_assignee_status_due",
    "sla.reminder_query": "idx_runtime_assignee_status_reminder",
    "archiving.due_query": "idx_runtime_ended_at",
}
Checks = list[tuple[str, bool]]
Counts = dict[str, int]


def main() -> int:
    parser = argparse.ArgumentParser(description="SLA scan and archive over a million runtimes")
    parser.add_argument("--database-url", default=DEFAULT_URL)
    parser.add_argument("--runtimes", type=int, default=1_000_000)
    parser.add_argument("--archive", type=int, default=10_000, help="runtimes old enough to archive")
    parser.add_argument("--in-progress", type=int, default=100_000, help="runtimes still in progress")
    parser.add_argument("--due", type=int, default=500, help="tasks past due (and as many reminders due)")
    args = parser.parse_args()
    n, old, waiting, due = args.runtimes, args.archive, args.in_progress, args.due
    if old < 1 or due < 1 or waiting < 2 * due or old + waiting > n:
        parser.error("need --archive >= 1, --in-progress >= 2 x --due, both within --runtimes")
    os.environ["BFLOW_DATABASE_URL"] = args.database_url

    from bflow_tasks import db, migrations
    from bflow_tasks.engine import clock
    from bflow_tasks.engine.timers import archiving, sla
    from bflow_tasks.settings import settings

    keep = max(settings.archive_after_days, 2)  # the kept runtimes end between 1 and keep - 1 days ago
    reset(args.database_url)
    migrations.upgrade(args.database_url)
    engine = db.get_engine()
    checks: Checks = []
    started = time.perf_counter()
    templates, per_runtime = make_templates(engine, checks)
    rows = seed(args.database_url, templates, n=n, old=old, waiting=waiting, keep=keep)
    print(f"seeded {n:,} runtimes, {rows:,} rows, in {time.perf_counter() - started:.0f} s")
    print(f"  {old:,} to archive ({sum(per_runtime.values())} rows each), {waiting:,} in progress, ", end="")
    print(f"{n - old - waiting:,} completed within the retention period\n")

    now, before = clock.now(), archiving.cutoff(keep)
    queries = [sla.overdue_query(now, 500), sla.reminder_query(now, 500), archiving.due_query(before, 500)]
    with engine.connect() as conn:
        explained = {name: explain(conn, query) for name, query in zip(INDEXES, queries, strict=True)}
    for name, row in explained.items():
        print(f"EXPLAIN {name:<19} type={row['type']} key={row['key']} rows={row['rows']} {row['Extra']}")

    idle_runs = [timed(lambda: sla.scan(db.session_scope)) for _ in range(SCAN_RUNS)]
    idle = statistics.median(seconds for seconds, _ in idle_runs)
    checks.append(("a scan with nothing due changes nothing", not any(any(c.values()) for _, c in idle_runs)))
    busy, handled = busy_scan(engine, checks, templates["waiting"], first=n - waiting + 1, due=due)

    rss: list[float] = []

    def hook(stage: str, batch: archiving.Batch) -> None:
        if stage == "committed":
            rss.append(rss_mb())
            if batch.number % 10 == 0:
                print(f"  archive batch {batch.number}, {time.perf_counter() - began:.0f} s", file=sys.stderr)

    began = time.perf_counter()
    moved_s, moved = timed(lambda: archiving.run(db.session_scope, before=before, hook=hook))
    with engine.connect() as conn:
        checks += archive_checks(conn, moved, {t: c * old for t, c in per_runtime.items()}, templates["done"])
        live = conn.scalar(text("SELECT COUNT(*) FROM runtime"))
    checks.append((f"{n - old:,} runtimes still live", live == n - old))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    rows_moved = sum(moved["copied"].values()) + sum(moved["deleted"].values())

    figures: list[tuple[str, str, str, bool | None]] = [
        (f"SLA scan, nothing due (median of {SCAN_RUNS})", f"{idle * 1000:.1f} ms", "< 1 s", idle < 1),
        (f"SLA scan, {handled} overdue + {handled} reminders", f"{busy:.2f} s", "< 1 s", busy < 1),
        ("  tasks handled per second", f"{2 * handled / busy:,.0f} tasks/s", "", None),
        ("archive", f"{moved_s:.1f} s, {moved['batches']} batches", "", None),
        ("  runtimes per second", f"{old / moved_s:,.0f} runtimes/s", ">= 5,000/s", old / moved_s >= 5000),
        ("  rows per second (copied + deleted)", f"{rows_moved / moved_s:,.0f} rows/s", "", None),
        ("RSS at first / last archive batch", f"{rss[0]:.1f} / {rss[-1]:.1f} MB", "", None),
        ("  growth over the archive", f"{rss[-1] - rss[0]:+.1f} MB", "flat: < 10 MB", rss[-1] - rss[0] < 10),
        ("peak RSS of the process", f"{peak:.1f} MB", "", None),
    ]
    for name, row in explained.items():
        uses = row["type"] == "range" and row["key"] == INDEXES[name]
        figures.append((f"plan of {name}", f"{row['type']} {row['key']}", "range on its index", uses))
    print(f"\n{'figure':<38} {'value':>42}   {'target':<18} verdict")
    for name, value, target, met in figures:
        print(f"{name:<38} {value:>42}   {target:<18} {'' if met is None else 'PASS' if met else 'MISS'}")
    print("\ncorrectness")
    for name, ok in checks:
        print(f"  {'ok    ' if ok else 'FAILED'} {name}")
    return 0 if all(ok for _, ok in checks) else 1


def reset(url: str) -> None:
    """Drop and recreate the bench database (and only it) with utf8mb4."""
    target = make_url(url)
    server = create_engine(target.set(database=""), poolclass=NullPool)
    with server.begin() as conn:
        conn.execute(text(f"DROP DATABASE IF EXISTS `{target.database}`"))
        charset = "CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci"
        conn.execute(text(f"CREATE DATABASE `{target.database}` {charset}"))


def make_templates(engine: Engine, checks: Checks) -> tuple[dict[str, str], Counts]:
    """Run a completed and a waiting runtime through the engine; return their ids and rows per table."""
    from sqlalchemy.orm import sessionmaker

    from tests.engine.driver import Driver
    from tests.factories import leave_request_definition

    driver = Driver(sessionmaker(engine, expire_on_commit=False))
    definition = leave_request_definition()
    review = next(node for node in definition["nodes"] if node["key"] == "manager_review")
    review.update(sla_hours=24, reminder_hours=8, escalate_to="boss")
    workflow_id = driver.workflow(definition)
    done = driver.submit(workflow_id, {"amount": 400}, document_id="TEMPLATE-DONE")
    for user in ("u1", "u2", "u3"):
        driver.act(done, user)
    waiting = driver.submit(workflow_id, {"amount": 400}, document_id="TEMPLATE-WAITING")
    checks.append(("the templates ran through the engine", driver.status(done) == "completed"))
    with engine.connect() as conn:
        count = "SELECT COUNT(*) FROM {} WHERE {} = :r"
        per_runtime = {t: conn.scalar(text(count.format(t, key(t))), {"r": done}) or 0 for t in TABLES}
    return {"done": done, "waiting": waiting}, per_runtime


def seed(url: str, templates: dict[str, str], *, n: int, old: int, waiting: int, keep: int) -> int:
    """Replace the runtime tables' rows by n clones of the templates; return the rows written."""
    kept, waits = old + 1, n - waiting + 1  # the first clone number of each later group
    template = f"IF(s.seq >= {waits}, '{templates['waiting']}', '{templates['done']}')"
    shift = (
        f"CASE WHEN s.seq < {kept} THEN {spread(1, old, keep + 300, keep + 1)} "
        f"WHEN s.seq < {waits} THEN {spread(kept, waits - 1, keep - 1, 1)} "
        f"ELSE {spread(waits, n, 4 / 24, 0)} END"
    )
    # Its own unpooled engine: no connection with the checks off reaches the code measured.
    loader = create_engine(url, poolclass=NullPool)
    with loader.begin() as conn:
        if conn.scalar(text("SELECT COUNT(*) FROM seq_1_to_3")) != 3:
            raise SystemExit("MariaDB's Sequence engine is not available")
        conn.execute(text("SET SESSION foreign_key_checks = 0"))
        for name in TABLES:  # with the checks off, TRUNCATE leaves the other tables alone
            conn.execute(text(f"CREATE TABLE tpl_{name} SELECT * FROM {name}"))
            conn.execute(text(f"TRUNCATE TABLE {name}"))

    def load(name: str) -> int:
        started = time.perf_counter()
        with loader.connect() as conn:
            conn.execute(text("SET SESSION unique_checks = 0, foreign_key_checks = 0"))
            where = f"s.seq <= {old} OR {FEW[name]}" if name in FEW else "TRUE"
            rows = clone(conn, name, template, shift, n, where)
            conn.commit()
        print(f"  {name:<17} {rows:>10,} rows in {time.perf_counter() - started:4.0f} s", file=sys.stderr)
        return rows

    # A load is one statement, on one core: two at a time.
    with ThreadPoolExecutor(max_workers=2) as pool:
        rows = sum(pool.map(load, LOAD_ORDER))
    with loader.begin() as conn:
        conn.execute(text(f"DROP TABLE {', '.join(f'tpl_{name}' for name in TABLES)}"))
        conn.execute(text(f"ANALYZE TABLE {', '.join(TABLES)}")).all()
    return rows


def clone(conn: Connection, name: str, template: str, shift: str, n: int, where: str) -> int:
    """Write clones 1..n of the template rows of `name` in one statement; return the rows written."""
    from bflow_tasks.models import Base, UTCDateTime

    columns = list(Base.metadata.tables[name].columns)
    values = []
    for column in columns:
        value = f"t.`{column.name}`"
        if column.name in IDS:
            value = uid(value)
        elif isinstance(column.type, UTCDateTime):
            value = f"{value} + INTERVAL ({shift}) SECOND"
        elif column.name == "document_id":
            value = "CONCAT('DOC-', s.seq)"
        elif column.name == "dedupe_key":  # unique across runtimes
            value = f"CONCAT({value}, ':', s.seq)"
        values.append(value)
    sql = (
        f"INSERT INTO {name} ({', '.join(f'`{c.name}`' for c in columns)}) SELECT {', '.join(values)} "
        f"FROM seq_1_to_{n} s JOIN tpl_{name} t ON t.{key(name)} = {template} WHERE {where}"
    )
    return int(conn.execute(text(sql)).rowcount)


def busy_scan(engine: Engine, checks: Checks, template: str, *, first: int, due: int) -> tuple[float, int]:
    """Make u1's task due in 2 x `due` waiting clones from `first` on, then scan; return (seconds, batch)."""
    from bflow_tasks import db
    from bflow_tasks.engine import clock
    from bflow_tasks.engine.timers import sla

    now, made = clock.now(), 0
    marks = {"due_at": now - timedelta(hours=1), "next_reminder_at": now}
    with engine.begin() as conn:
        for lo, (column, at) in zip((first, first + due), marks.items(), strict=True):
            sql = (
                f"UPDATE runtime_assignee a JOIN seq_{lo}_to_{lo + due - 1} s ON a.runtime_id = {uid(':t')} "
                f"SET a.{column} = :at WHERE a.user = 'u1' AND a.status = 'pending'"
            )
            made += int(conn.execute(text(sql), {"t": template, "at": at}).rowcount)
    checks.append((f"{2 * due} tasks made due", made == 2 * due))
    busy, counts = timed(lambda: sla.scan(db.session_scope))
    handled = min(due, 500)
    expected = {"overdue": handled, "escalated": handled, "reminded": handled, "errors": 0}
    checks.append((f"the busy scan counts {expected}", {k: counts[k] for k in expected} == expected))
    totals = {k: counts[k] for k in expected}
    while counts["more"]:
        counts = sla.scan(db.session_scope)
        totals = {k: totals[k] + counts[k] for k in expected}
    done = totals == {"overdue": due, "escalated": due, "reminded": due, "errors": 0}
    after = sla.scan(db.session_scope)
    checks.append(("later scans finish the rest, then find nothing", done and not any(after.values())))
    return busy, handled


def archive_checks(conn: Connection, moved: dict[str, Any], want: Counts, template: str) -> Checks:
    from bflow_tasks.engine.timers import archiving

    """Check that the archive moved exactly the old clones' rows: none left live, none lost or doubled."""

    old = want["runtime"]
    checks = [(f"archiving.run moved {old:,} runtimes", moved["runtimes"] == old)]
    for name in TABLES:
        left = conn.scalar(text(in_set(name, name, old)), {"t": template})
        ok = moved["deleted"][name] == want[name] and left == 0
        checks.append((f"{name}: {want[name]:,} deleted, none left live", ok))
        if name in archiving.COPIED:
            twin = f"{name}_archive"
            held = conn.scalar(text(f"SELECT COUNT(*) FROM {twin}"))
            ours = conn.scalar(text(in_set(name, twin, old)), {"t": template})
            checks.append(
                (f"{twin}: exactly {want[name]:,}", moved["copied"][name] == held == ours == want[name])
            )
    return checks


def key(name: str) -> str:
    """The column that ties a table's rows to their runtime."""
    return "id" if name == "runtime" else "runtime_id"


def uid(column: str) -> str:
    """SQL for a clone's id, a UUIDv7: the clone number as its time, then an MD5 of the row's id and k."""
    # The clone numbers ascend with the clones' times (see `seed`), as the engine's keys do.
    hashed = f"CONCAT(LPAD(HEX(s.seq), 12, '0'), '7', LEFT(MD5(CONCAT({column}, ':', s.seq)), 19))"
    for at in (9, 14, 19, 24):  # NULL stays NULL
        hashed = f"INSERT({hashed}, {at}, 0, '-')"
    return hashed


def spread(first: int, last: int, oldest_days: float, newest_days: float) -> str:
    """SQL for the seconds that move clones first..last evenly from `oldest_days` to `newest_days` ago."""
    step = int((oldest_days - newest_days) * 86400 / max(last - first, 1))
    return f"{-int(oldest_days * 86400)} + (CAST(s.seq AS SIGNED) - {first}) * {step}"


def in_set(name: str, table: str, count: int) -> str:
    """SQL counting the rows of `table` that belong to clones 1..count of template :t."""
    return f"SELECT COUNT(*) FROM {table} x JOIN seq_1_to_{count} s ON x.{key(name)} = {uid(':t')}"


def explain(conn: Connection, query: Any) -> dict[str, Any]:
    """The EXPLAIN of a one-table query exactly as the engine sends it."""
    compiled = query.compile(dialect=conn.dialect, compile_kwargs={"render_postcompile": True})
    plan = conn.exec_driver_sql("EXPLAIN " + compiled.string, compiled.params).mappings().all()
    return dict(plan[0])


def timed(step: Callable[[], Any]) -> tuple[float, Any]:
    started = time.perf_counter()
    result = step()
    return time.perf_counter() - started, result


def rss_mb() -> float:
    """The resident set size of this process now, in MB."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


if __name__ == "__main__":
    sys.exit(main())
