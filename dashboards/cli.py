"""`tunefleet dashboards export|push` and `tunefleet report`.

    tunefleet dashboards export DIR
    tunefleet dashboards push --grafana-url URL [--token-file PATH] --prometheus-url URL
                              [--db URL]
    tunefleet report JOB_ID --out report.html [--db URL]

The Grafana token comes from $TUNEFLEET_GRAFANA_TOKEN or --token-file, never from an argument,
so it stays out of shell history; both are read here and nowhere deeper.
"""

from __future__ import annotations

import os
from pathlib import Path

import click

from tunefleet.database.cli import db_option, open_store
from tunefleet.database.errors import DatabaseError

TOKEN_ENV = "TUNEFLEET_GRAFANA_TOKEN"


@click.group(name="dashboards")
def dashboards() -> None:
    """Export or push tunefleet's Grafana dashboards."""


@dashboards.command(name="export")
@click.argument("folder", type=click.Path(file_okay=False, path_type=Path))
def export_command(folder: Path) -> None:
    """Write the dashboards' JSON and Grafana's provisioning files under FOLDER."""
    from tunefleet.dashboards.grafana_json import export

    try:
        written = export(folder)
    except OSError as err:
        raise click.ClickException(
            f"cannot write under {folder}: {err.strerror or err}; pick a writable folder"
        ) from None
    for path in written:
        click.echo(str(path))


@dashboards.command(name="push")
@click.option("--grafana-url", required=True, metavar="URL", help="Grafana, e.g. http://HOST:3000.")
@click.option("--token-file", type=click.Path(dir_okay=False, path_type=Path),
              help=f"A file holding the Grafana token (else ${TOKEN_ENV}).")  # fmt: skip
@click.option("--prometheus-url", required=True, metavar="URL",
              help="Where Grafana reaches the Prometheus that scrapes the jobs.")  # fmt: skip
@click.option("--db", "db_url", metavar="URL",
              help="The PostgreSQL record database the Records dashboard reads.")  # fmt: skip
def push_command(
    grafana_url: str, token_file: Path | None, prometheus_url: str, db_url: str | None
) -> None:
    """Create or update the datasources and dashboards in Grafana's `tunefleet` folder."""
    from grafana_client import GrafanaApi

    from tunefleet.dashboards.push import PushConfig, PushError, push

    token = _token(token_file)
    if db_url is not None and not db_url.startswith("postgresql"):
        raise click.BadParameter("the Records dashboard reads PostgreSQL: give a postgresql:// "
                                 "URL", param_hint="--db")  # fmt: skip
    if not grafana_url.startswith(("http://", "https://")):
        raise click.BadParameter("give an http:// or https:// URL", param_hint="--grafana-url")
    api = GrafanaApi.from_url(grafana_url, credential=token, timeout=10.0)
    try:
        done = push(api, PushConfig(prometheus_url=prometheus_url, postgres_url=db_url))
    except PushError as err:
        raise click.ClickException(str(err)) from None
    for line in done:
        click.echo(line)


def _token(token_file: Path | None) -> str:
    """The Grafana token from --token-file, else the environment (usage error if neither)."""
    if token_file is not None:
        try:
            token = token_file.read_text().strip()
        except OSError as err:
            raise click.BadParameter(f"cannot read {token_file}: {err.strerror or err}",
                                     param_hint="--token-file") from None  # fmt: skip
        if not token:
            raise click.BadParameter(f"{token_file} is empty", param_hint="--token-file")
        return token
    token = os.environ.get(TOKEN_ENV, "").strip()
    if not token:
        raise click.UsageError(f"no Grafana token: set ${TOKEN_ENV} or give --token-file PATH")
    return token


@click.command(name="report")
@click.argument("job_id", type=int)
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="The HTML file to write.")  # fmt: skip
@db_option
def report(job_id: int, out: Path, db_url: str | None) -> None:
    """Write one self-contained HTML file with a job's charts."""
    from tunefleet.coordinator.jobs import JobError
    from tunefleet.dashboards.report import write_report

    with open_store(db_url) as store:
        try:
            charts = write_report(store, job_id, out)
        except (JobError, DatabaseError) as err:
            raise click.ClickException(str(err)) from None
        except OSError as err:
            raise click.ClickException(
                f"cannot write {out}: {err.strerror or err}; pick a writable path with --out"
            ) from None
    click.echo(f"{out}: job {job_id}, {charts} charts")
