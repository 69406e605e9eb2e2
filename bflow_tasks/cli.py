"""The `bflow` command line (docs/operations.md). Every command that prints a result takes --json."""

from __future__ import annotations

import io
import json
import sys
from datetime import datetime
from typing import Any

import click
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError

from bflow_tasks.engine.domain_errors import BflowError
from bflow_tasks.settings import settings

# Commands that bring the schema up themselves: a missing table there is a bug to show whole.
MIGRATING_COMMANDS = frozenset({"db", "demo", "dev"})


def _emit(as_json: bool, payload: dict[str, Any], text: str) -> None:
    click.echo(json.dumps(payload, default=str) if as_json else text)


def schema_problem(url: str) -> str | None:
    """Say why the database at `url` lacks this bflow's schema (none, or an older one), or None."""
    from alembic.script import ScriptDirectory

    from bflow_tasks import migrations

    at = migrations.current(url)
    heads = ScriptDirectory.from_config(migrations.alembic_config()).get_heads()
    where = make_url(url).render_as_string(hide_password=True)
    if at is None:
        return f"the database at {where} has no Bflow schema: run `bflow db upgrade` first"
    if at not in heads:
        return (
            f"the database at {where} is at revision {at}, this bflow needs {', '.join(heads)}:"
            " run `bflow db upgrade` first"
        )
    return None


class CliError(click.ClickException):
    """A refusal: one `Error: ...` line, and with --json its stable code (the API's codes)."""

    def __init__(self, message: str, *, code: str, details: Any = None):
        super().__init__(message)
        self.code = code
        self.details = details


class BflowGroup(click.Group):
    """The top-level group: a failure is one line on stderr, and one JSON object with --json."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        # Known before anything can fail, a usage error in the subcommand included.
        ctx.meta["bflow.json"] = "--json" in args[: args.index("--") if "--" in args else None]
        try:
            return super().parse_args(ctx, args)
        except click.UsageError as exc:  # before `invoke`: an unknown option of `bflow` itself
            if ctx.meta["bflow.json"]:
                _emit_error("usage_error", exc.format_message())
            raise

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return self._invoke_explaining_database_errors(ctx)
        except (click.exceptions.Exit, click.Abort):
            raise
        except click.ClickException as exc:
            if ctx.meta.get("bflow.json"):
                code = exc.code if isinstance(exc, CliError) else _click_error_code(exc)
                _emit_error(code, exc.format_message(), getattr(exc, "details", None))
            raise
        except Exception as exc:
            if ctx.meta.get("bflow.json"):  # the traceback still goes to stderr
                _emit_error("internal_error", f"{type(exc).__name__}: {exc}")
            raise

    def _invoke_explaining_database_errors(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except BflowError as exc:  # an engine refusal: its message and its code, as the API gives them
            raise CliError(exc.message, code=exc.code, details=exc.details) from None
        except DBAPIError as exc:
            from bflow_tasks.db import is_missing_schema, is_unreachable

            if is_unreachable(exc):
                where = make_url(settings.database_url).render_as_string(hide_password=True)
                raise CliError(
                    f"cannot use the database at {where}: {exc.orig}", code="database_unavailable"
                ) from None
            if ctx.invoked_subcommand in MIGRATING_COMMANDS or not is_missing_schema(exc):
                raise
            try:
                problem = schema_problem(settings.database_url)
            except Exception:  # cannot even read the revision: the original error says more
                problem = None
            if problem is None:  # the schema is current, so the missing table is a bug: show it
                raise
            raise CliError(problem, code="schema_missing") from None


def _click_error_code(exc: click.ClickException) -> str:
    return "usage_error" if isinstance(exc, click.UsageError) else "error"


def _emit_error(code: str, message: str, details: Any = None) -> None:
    """Print the one JSON object a failed --json command promises (on stdout, where its result goes)."""
    click.echo(json.dumps({"error": {"code": code, "message": message, "details": details}}, default=str))


@click.group(cls=BflowGroup)
def main() -> None:
    """Bflow: approval workflows for ERP documents, carried by Celery."""


# --- database ---------------------------------------------------------------------------------


@main.group()
def db() -> None:
    """Database schema."""


@db.command("upgrade")
@click.option("--revision", default="head", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def db_upgrade(revision: str, as_json: bool) -> None:
    """Apply the Alembic migrations to BFLOW_DATABASE_URL."""
    from alembic.util import CommandError

    from bflow_tasks import migrations

    try:
        migrations.upgrade(settings.database_url, revision)
    except CommandError as exc:  # an unknown --revision
        raise CliError(str(exc), code="invalid_input") from None
    at = migrations.current(settings.database_url)
    _emit(as_json, {"revision": at}, f"database at revision {at}")


# --- tenants and workflows ----------------------------------------------------------------------


@main.group()
def tenant() -> None:
    """Tenants and their API tokens."""


@tenant.command("create")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def tenant_create(name: str, as_json: bool) -> None:
    """Create a tenant and print its API token (shown this once only)."""
    from bflow_tasks.db import session_scope
    from bflow_tasks.engine import tenants

    with session_scope() as session:
        created, token = tenants.create_tenant(session, name=name)
        tenant_id = created.id
    _emit(
        as_json,
        {"tenant_id": tenant_id, "token": token},
        f"tenant {name} created: {tenant_id}\nAPI token (shown once, keep it safe): {token}",
    )


@tenant.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def tenant_list(as_json: bool) -> None:
    """List the tenants, with their number of live (unrevoked, unexpired) tokens."""
    from bflow_tasks.db import session_scope
    from bflow_tasks.engine import tenants

    with session_scope() as session:
        rows = [
            {"id": t.id, "name": t.name, "created_at": _iso(t.created_at), "live_tokens": live}
            for t, live in tenants.list_tenants(session)
        ]
    lines = [
        f"{r['id']}  {r['name']}  created {r['created_at']}  live tokens {r['live_tokens']}" for r in rows
    ]
    _emit(as_json, {"tenants": rows}, "\n".join(lines) or "no tenants")


@main.group()
def token() -> None:
    """A tenant's API tokens: create, list, revoke."""


@token.command("create")
@click.option("--tenant", "tenant_id", required=True, help="The tenant id the token acts for.")
@click.option("--name", default="default", show_default=True, help="A label for the token.")
@click.option("--expires-in", "expires_in", type=int, help="Days until it expires (default: never).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def token_create(tenant_id: str, name: str, expires_in: int | None, as_json: bool) -> None:
    """Issue a new API token for a tenant and print it (shown this once only)."""
    from bflow_tasks.db import session_scope
    from bflow_tasks.engine import tenants

    if expires_in is not None and expires_in < 1:
        raise CliError(f"--expires-in must be 1 day or more, not {expires_in}", code="invalid_input")
    with session_scope() as session:
        row, secret = tenants.create_token(
            session, tenant_id=tenant_id, name=name, expires_in_days=expires_in
        )
        payload = {
            "token_id": row.id,
            "tenant_id": tenant_id,
            "token": secret,
            "expires_at": _iso(row.expires_at),
        }
    expiry = f"expires {payload['expires_at']}" if row.expires_at else "never expires"
    _emit(
        as_json,
        payload,
        f"token {payload['token_id']} created ({expiry})\nAPI token (shown once, keep it safe): {secret}",
    )


@token.command("list")
@click.option("--tenant", "tenant_id", required=True, help="The tenant id.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def token_list(tenant_id: str, as_json: bool) -> None:
    """List a tenant's tokens (never the tokens themselves)."""
    from bflow_tasks.db import session_scope
    from bflow_tasks.engine import tenants

    with session_scope() as session:
        rows = [_token_fields(found) for found in tenants.list_tokens(session, tenant_id=tenant_id)]
    lines = [
        f"{r['id']}  {r['name']}  created {r['created_at']}  expires {r['expires_at'] or 'never'}"
        + (f"  revoked {r['revoked_at']}" if r["revoked_at"] else "")
        for r in rows
    ]
    _emit(as_json, {"tenant_id": tenant_id, "tokens": rows}, "\n".join(lines) or "no tokens")


@token.command("revoke")
@click.argument("token_id")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def token_revoke(token_id: str, as_json: bool) -> None:
    """Revoke a token (again: no change). Shims refuse it within their 30 s token cache."""
    from bflow_tasks.db import session_scope
    from bflow_tasks.engine import tenants

    with session_scope() as session:
        fields = _token_fields(tenants.revoke_token(session, token_id=token_id))
    _emit(as_json, fields, f"token {token_id} revoked at {fields['revoked_at']}")


def _token_fields(found: Any) -> dict[str, Any]:
    """What the CLI shows of an ApiToken: never the token nor its hash."""
    return {
        "id": found.id,
        "tenant_id": found.tenant_id,
        "name": found.name,
        "created_at": _iso(found.created_at),
        "expires_at": _iso(found.expires_at),
        "revoked_at": _iso(found.revoked_at),
    }


def _iso(value: datetime | None) -> str | None:
    """A stored (naive UTC) time as ISO 8601 with its Z, or None."""
    return None if value is None else value.isoformat() + "Z"


@main.group()
def workflow() -> None:
    """Workflow definitions."""


@workflow.command("import")
@click.argument("file", type=click.File("r", encoding="utf-8"))
@click.option("--tenant", "tenant_id", required=True, help="The tenant id that owns the workflow.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def workflow_import(file: Any, tenant_id: str, as_json: bool) -> None:
    """Validate a definition (JSON file) and store it as a new workflow."""
    from bflow_tasks.db import session_scope
    from bflow_tasks.engine.definitions import workflow_store
    from bflow_tasks.engine.definitions.language import DefinitionError
    from bflow_tasks.models import Tenant

    try:
        raw = json.load(file)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError, nesting
        reason = "nested too deeply" if isinstance(exc, RecursionError) else exc
        raise CliError(f"{file.name} is not UTF-8 JSON: {reason}", code="invalid_input") from None
    try:
        with session_scope() as session:
            if session.get(Tenant, tenant_id) is None:
                raise CliError(f"unknown tenant {tenant_id}", code="not_found")
            created, version = workflow_store.create_workflow(session, tenant_id=tenant_id, raw=raw)
            result = {"id": created.id, "name": created.name, "version": version.version}
    except DefinitionError as exc:
        problems = [{"path": p.path, "message": p.message} for p in exc.problems]
        lines = "\n".join(f"  {p['path']}: {p['message']}" for p in problems)
        raise CliError(
            f"the definition is invalid:\n{lines}", code="invalid_definition", details=problems
        ) from None
    _emit(
        as_json, result, f"workflow {result['name']} imported: {result['id']} (version {result['version']})"
    )


@workflow.command("show")
@click.argument("workflow_id")
@click.option("--mermaid", is_flag=True, help="Print the graph as a Mermaid flowchart.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def workflow_show(workflow_id: str, mermaid: bool, as_json: bool) -> None:
    """Show a workflow's current definition."""
    from sqlalchemy import select

    from bflow_tasks.db import session_scope
    from bflow_tasks.engine.definitions import workflow_store
    from bflow_tasks.engine.definitions.diagram import to_mermaid
    from bflow_tasks.models import Workflow

    with session_scope() as session:
        found = session.scalars(select(Workflow).where(Workflow.id == workflow_id)).one_or_none()
        if found is None:
            raise CliError(f"workflow {workflow_id} not found", code="not_found")
        definition = workflow_store.load_definition(
            session, workflow_store.current_version(session, found).id
        )
    if as_json:
        payload = {"id": workflow_id, "definition": definition.model_dump(mode="json", exclude_none=True)}
        if mermaid:
            payload["mermaid"] = to_mermaid(definition)
        click.echo(json.dumps(payload))
    elif mermaid:
        click.echo(to_mermaid(definition))
    else:
        click.echo(json.dumps(definition.model_dump(mode="json", exclude_none=True), indent=2))


# --- running it ---------------------------------------------------------------------------------


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
@click.option("--loglevel", default="info", show_default=True)
def dev(host: str, port: int, loglevel: str) -> None:
    """Run the shim, a worker and Beat in one process (the embedded default)."""
    import uvicorn

    from bflow_tasks import migrations
    from bflow_tasks.worker.embedded import worker_and_beat

    migrations.upgrade(settings.database_url)
    with worker_and_beat(loglevel=loglevel.upper()):
        uvicorn.run("api_shim.app:app", host=host, port=port, log_level=loglevel)


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of the timeline.")
def demo(as_json: bool) -> None:
    """Seed a tenant and a workflow, drive documents through it over HTTP, print the timeline."""
    from bflow_tasks.demo import run_demo

    sys.exit(run_demo(as_json=as_json))


# --- maintenance ----------------------------------------------------------------------------------


@main.command("archive")
@click.option("--dry-run", is_flag=True, help="Count what would move; change nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def archive_command(dry_run: bool, as_json: bool) -> None:
    """Move runtimes that ended over BFLOW_ARCHIVE_AFTER_DAYS ago into the archive tables."""
    from bflow_tasks.db import session_scope
    from bflow_tasks.engine.timers import archiving

    before = archiving.cutoff(settings.archive_after_days)
    with session_scope() as session:
        due = archiving.count_due(session, before=before)
    rows = ", ".join(f"{name} {n}" for name, n in due.items() if name != "runtime")
    if dry_run:
        text = f"would archive {due['runtime']} runtime(s) ended before {before:%Y-%m-%d %H:%M} UTC ({rows})"
        _emit(as_json, {"dry_run": True, "before": before.isoformat(), "due": due}, text)
        return
    # The bar goes to stderr (nowhere with --json): stdout holds only the result.
    with click.progressbar(
        length=due["runtime"], label="archiving", file=io.StringIO() if as_json else sys.stderr
    ) as bar:
        moved = archiving.run(
            session_scope,
            before=before,
            batch_size=settings.archive_batch_size,
            hook=lambda phase, batch: bar.update(batch.runtimes) if phase == "committed" else None,
        )
    _emit(
        as_json,
        {"dry_run": False, "before": before.isoformat(), **moved},
        f"archived {moved['runtimes']} runtime(s) in {moved['batches']} batch(es)",
    )


if __name__ == "__main__":
    main()
