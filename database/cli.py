"""`tunefleet db`: create, migrate, query, move and prune the tuning-record database.

The database URL comes from --db, else TUNEFLEET_DB_URL, else the default SQLite file; other
CLIs reuse `db_option` and `open_store` so that every command resolves it the same way.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import click

from tunefleet.database.checks import Verifier
from tunefleet.database.errors import DatabaseError
from tunefleet.database.records import TuningRecord
from tunefleet.database.store import ImportResult, RecordStore
from tunefleet.database.urls import ENV_VAR, mask_url, resolve_url

F = TypeVar("F", bound=Callable[..., Any])

db_option = click.option(
    "--db",
    "db_url",
    metavar="URL",
    default=None,
    help=f"Database URL or SQLite file path (default: ${ENV_VAR}, else "
    "~/.local/share/tunefleet/records.db).",
)
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")


def resolve_cli_url(db_url: str | None, config: str | None = None) -> str:
    """The URL a CLI should use: --db, then a config value, then $TUNEFLEET_DB_URL, then default."""
    return resolve_url(db_url, os.environ, config)


def open_store(
    db_url: str | None, *, create: bool = True, config: str | None = None
) -> RecordStore:
    """Open the store for a CLI command, turning DatabaseErrors into one-line ClickExceptions."""
    try:
        return RecordStore.open(resolve_cli_url(db_url, config), create=create)
    except DatabaseError as err:
        raise click.ClickException(str(err)) from None


def _store_command(func: F) -> F:
    """Report DatabaseErrors raised inside a command as one line (exit 1)."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except DatabaseError as err:
            raise click.ClickException(str(err)) from None

    return wrapper  # type: ignore[return-value]


@click.group(name="db")
def db() -> None:
    """Manage and query the tuning-record database."""


@db.command()
@db_option
@_store_command
def init(db_url: str | None) -> None:
    """Create the database (SQLite file or PostgreSQL schema) at the newest revision."""
    with open_store(db_url, create=True) as store:
        click.echo(f"{store.url}: ready at schema revision {store.revision()}")


@db.command()
@db_option
@_store_command
def migrate(db_url: str | None) -> None:
    """Upgrade the database schema to the newest revision (creating it if absent)."""
    url = resolve_cli_url(db_url)
    before, after = RecordStore.migrate(url)
    if before == after:
        click.echo(f"{mask_url(url)}: already at schema revision {after}")
    else:
        click.echo(f"{mask_url(url)}: upgraded schema from {before or 'empty'} to {after}")


def _pick_target(store: RecordStore, target: str | None) -> str:
    if target is not None:
        return target
    fingerprints = [t.fingerprint for t in store.targets()]
    if len(fingerprints) == 1:
        return fingerprints[0]
    if not fingerprints:
        raise click.ClickException("the database has no targets yet; nothing to query")
    raise click.UsageError(
        "several targets are recorded; pick one with --target: " + ", ".join(fingerprints)
    )


def _pick_workload(store: RecordStore, key: str) -> str:
    if store.get_workload(key) is not None:
        return key
    matches = [w.key for w in store.workloads() if w.key.startswith(key)]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise click.BadParameter(
            f"no workload with key {key!r}; 'tunefleet db list' shows them", param_hint="WORKLOAD"
        )
    raise click.BadParameter(
        f"{key!r} matches {len(matches)} workloads; give more of the key", param_hint="WORKLOAD"
    )


def _print_records(records: Sequence[TuningRecord], as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps([r.to_dict() for r in records], indent=2))
        return
    if not records:
        click.echo("no records")
        return
    click.echo(f"{'id':>8}  {'status':<12} {'median_ms':>12}  {'trace_hash':<16}  created (UTC)")
    for r in records:
        median = f"{r.median_ms:.6g}" if r.median_ms is not None else "-"
        line = f"{r.id:>8}  {r.status:<12} {median:>12}  {r.trace_hash[:16]:<16}  "
        line += r.created_at.strftime("%Y-%m-%d %H:%M:%S")
        if r.error_msg:
            line += "  " + r.error_msg.splitlines()[0][:60]
        if r.invalid_reason:
            line += "  INVALID: " + r.invalid_reason[:100]
        click.echo(line)


@db.command()
@click.argument("workload")
@click.option("--target", "-t", metavar="FINGERPRINT", help="Target (needed if several exist).")
@click.option("-k", "k", type=click.IntRange(min=1), default=1, show_default=True)
@db_option
@json_option
@_store_command
def best(workload: str, target: str | None, k: int, db_url: str | None, as_json: bool) -> None:
    """Print the k fastest ok records of WORKLOAD (a key or unique prefix) on a target."""
    with open_store(db_url, create=False) as store:
        fingerprint = _pick_target(store, target)
        key = _pick_workload(store, workload)
        _print_records(store.best(key, fingerprint, k), as_json)


@db.command()
@click.argument("workload")
@click.option("--target", "-t", metavar="FINGERPRINT", help="Target (needed if several exist).")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Only the latest N.")
@db_option
@json_option
@_store_command
def history(
    workload: str, target: str | None, limit: int | None, db_url: str | None, as_json: bool
) -> None:
    """Print every trial of WORKLOAD on a target in commit order, failures and records flagged
    invalid included."""
    with open_store(db_url, create=False) as store:
        fingerprint = _pick_target(store, target)
        key = _pick_workload(store, workload)
        _print_records(store.history(key, fingerprint, limit, include_invalid=True), as_json)


@db.command(name="list")
@click.argument("what", type=click.Choice(["workloads", "targets", "jobs"]), default="workloads")
@click.option("--target", "-t", metavar="FINGERPRINT", help="Only this target's workloads.")
@db_option
@json_option
@_store_command
def list_(what: str, target: str | None, db_url: str | None, as_json: bool) -> None:
    """List workloads with records per target (default), targets, or jobs."""
    with open_store(db_url, create=False) as store:
        if what == "targets":
            rows: list[dict[str, Any]] = [t.to_dict() for t in store.targets()]
            text = [f"{t['fingerprint']}  {t['kind']}  {t['device']}  {t['arch']}" for t in rows]
        elif what == "jobs":
            jobs = store.list_jobs()
            rows = [
                {
                    "id": j.id,
                    "name": j.name,
                    "model": j.model,
                    "target": j.target_fingerprint,
                    "budget": j.budget,
                    "status": j.status,
                    "created_at": j.created_at.isoformat(),
                }
                for j in jobs
            ]
            text = [
                f"{j['id']:>5}  {j['status']:<9} {j['name']}  {j['model']}  on {j['target']}"
                for j in rows
            ]
        else:
            pairs = store.summaries(target)
            rows = [
                {
                    "workload_key": p.workload_key,
                    "op": p.op,
                    "dtype": p.dtype,
                    "shape": dict(p.shape),
                    "target": p.target_fingerprint,
                    "records": p.records,
                    "ok_records": p.ok_records,
                    "best_ms": p.best_ms,
                }
                for p in pairs
            ]
            text = [
                f"{p['workload_key'][:16]:<16}  {p['op']:<14} {p['dtype']:<8} "
                f"{p['records']:>7} rec {p['ok_records']:>7} ok  best "
                f"{(format(p['best_ms'], '.6g') if p['best_ms'] is not None else '-'):>10} ms  "
                f"{p['target']}"
                for p in rows
            ]
        if as_json:
            click.echo(json.dumps(rows, indent=2))
        else:
            click.echo("\n".join(text) if text else f"no {what}")


@db.command()
@db_option
@json_option
@_store_command
def stats(db_url: str | None, as_json: bool) -> None:
    """Print counts of targets, workloads, records (by status), jobs and tasks."""
    with open_store(db_url, create=False) as store:
        result = store.stats()
    if as_json:
        click.echo(json.dumps(result.to_dict(), indent=2))
        return
    click.echo(f"database   {result.url} ({result.backend}, revision {result.revision})")
    click.echo(f"targets    {result.targets}")
    click.echo(f"workloads  {result.workloads}")
    by_status = ", ".join(f"{k} {v}" for k, v in sorted(result.by_status.items()))
    click.echo(f"records    {result.records}" + (f" ({by_status})" if by_status else ""))
    click.echo(f"jobs       {result.jobs} ({result.tasks} tasks)")
    for fingerprint, count in sorted(result.records_per_target.items()):
        click.echo(f"  {count:>9}  {fingerprint}")


@db.command(name="export")
@click.argument("path", type=click.Path(dir_okay=False, writable=True))
@click.option("--target", "-t", metavar="FINGERPRINT", help="Only this target's records.")
@click.option("--workload", "-w", metavar="KEY", help="Only this workload's records.")
@click.option("--force", is_flag=True, help="Overwrite PATH if it exists.")
@db_option
@_store_command
def export_(
    path: str, target: str | None, workload: str | None, force: bool, db_url: str | None
) -> None:
    """Write records to a versioned JSON-lines file (PATH) for another database."""
    if os.path.exists(path) and not force:
        raise click.ClickException(f"{path} exists; pass --force to overwrite it")
    with open_store(db_url, create=False) as store:
        end = store.export_jsonl(path, target_fingerprint=target, workload_key=workload)
    click.echo(
        f"wrote {end.records} records ({end.workloads} workloads, {end.targets} targets) to {path}"
    )


@db.command(name="import")
@click.argument("path", type=click.Path(exists=True, dir_okay=False))
@db_option
@_store_command
def import_(path: str, db_url: str | None) -> None:
    """Add the records of an export file (all or nothing; known records are skipped).

    Every record must have plausible times and a trace that replays on its workload; the first
    that does not rejects the whole file, naming its line.
    """
    with open_store(db_url, create=True) as store:
        _echo_added("imported", store.import_jsonl(path, verify=_record_verifier()))


@db.command()
@click.argument("other_url")
@db_option
@_store_command
def merge(other_url: str, db_url: str | None) -> None:
    """Add every record of the database at OTHER_URL (all or nothing), checked as by import."""
    with open_store(db_url, create=True) as store:
        _echo_added("merged", store.merge_from(other_url, verify=_record_verifier()))


@db.command()
@click.option("--target", "-t", metavar="FINGERPRINT", help="Only this target's records.")
@click.option("--workload", "-w", metavar="KEY", help="Only this workload's records.")
@db_option
@_store_command
def verify(target: str | None, workload: str | None, db_url: str | None) -> None:
    """Check stored records as imports do and flag the unsound ones, so best() skips them.

    Prints each invalid record and a count; a flag is cleared when its record passes again.
    """
    with open_store(db_url, create=False) as store:
        result = store.verify_records(
            _record_verifier(), target_fingerprint=target, workload_key=workload
        )
    for row_id, uid, key, fingerprint, reason in result.invalid:
        click.echo(f"invalid record {row_id} ({uid}) of {key[:16]} on {fingerprint}: {reason}")
    click.echo(
        f"checked {result.checked} records: {len(result.invalid)} invalid "
        f"({result.flagged} newly flagged, {result.cleared} cleared)"
    )


def _record_verifier() -> Verifier:
    """The checks of import, merge and verify: plausible times and a trace that replays (the
    IR is imported here, when a command needs it, so the database package stands alone)."""
    from tunefleet.tuner.record_checks import record_verifier

    return record_verifier()


def _echo_added(verb: str, result: ImportResult) -> None:
    """One line saying what an import or merge added and skipped."""
    click.echo(
        f"{verb} {result.records_added} records ({result.records_skipped} already present), "
        f"{result.workloads_added} new workloads, {result.targets_added} new targets"
    )


@db.command()
@click.option(
    "--keep",
    "-k",
    "k",
    type=click.IntRange(min=1),
    required=True,
    help="Records to keep per (workload, target): the fastest ok ones.",
)
@click.option("--yes", is_flag=True, help="Really delete (otherwise only count).")
@db_option
@_store_command
def prune(k: int, yes: bool, db_url: str | None) -> None:
    """Delete all but the k fastest ok records of each (workload, target), failures included."""
    with open_store(db_url, create=False) as store:
        if not yes:
            count = store.prune(k, dry_run=True)
            click.echo(f"would delete {count} records; pass --yes to delete them")
            return
        click.echo(f"deleted {store.prune(k)} records")
