"""The `tunefleet` command line.

Subcommands live in the package that owns them and are imported only when invoked, so
`tunefleet --help` stays fast and a missing optional piece never breaks the others.
"""

from __future__ import annotations

import importlib
import signal
import sys
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version

import click

from .interrupts import Interrupted, exit_code, stop_on_signals


@dataclass(frozen=True)
class CommandSpec:
    """Where a subcommand is defined and the one line `--help` shows for it."""

    target: str  # "module:attribute"
    summary: str


COMMANDS: dict[str, CommandSpec] = {
    "ops": CommandSpec("tunefleet.ir.cli:ops", "List the operator library."),
    "show": CommandSpec("tunefleet.ir.cli:show", "Print an operator's IR or generated source."),
    "targets": CommandSpec("tunefleet.workers.cli:targets", "Detect and fingerprint targets."),
    "measure": CommandSpec("tunefleet.workers.cli:measure", "Build, check and time one schedule."),
    "tune": CommandSpec("tunefleet.tuner.cli:tune", "Tune an operator or a model."),
    "tasks": CommandSpec("tunefleet.coordinator.tasks_cli:tasks", "Split a model into tasks."),
    "job": CommandSpec("tunefleet.coordinator.job_cli:job", "List, inspect and resume jobs."),
    "db": CommandSpec("tunefleet.database.cli:db", "Manage and query the tuning-record database."),
    "compile": CommandSpec("tunefleet.runtime.cli:compile_cmd", "Compile a model to run."),
    "run": CommandSpec("tunefleet.runtime.cli:run_cmd", "Run a compiled model (prefill, decode)."),
    "dashboards": CommandSpec("tunefleet.dashboards.cli:dashboards", "Export or push dashboards."),
    "report": CommandSpec("tunefleet.dashboards.cli:report", "Write a job's HTML report."),
}


def _package_version() -> str:
    try:
        return version("tunefleet")
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "0+unknown"


class LazyGroup(click.Group):
    """A click group whose subcommands are imported on first use from `COMMANDS`."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        spec = COMMANDS.get(cmd_name)
        if spec is None:
            return None
        module_name, attr = spec.target.split(":")
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as err:
            if err.name is None or not module_name.startswith(err.name):
                raise
            return _unavailable(cmd_name, spec.summary)
        return getattr(module, attr)

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt as stop:  # kept from click, which would print a blank line
            raise CommandStopped(stop) from stop

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, COMMANDS[name].summary) for name in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


class CommandStopped(Exception):
    """Carries a command's KeyboardInterrupt (Ctrl-C, SIGTERM) out past click's own handling."""

    def __init__(self, stop: KeyboardInterrupt) -> None:
        super().__init__(str(stop))
        self.stop = stop


def _unavailable(name: str, summary: str) -> click.Command:
    """A placeholder for a subcommand whose module is not part of this build yet."""

    @click.command(name=name, help=summary, context_settings={"ignore_unknown_options": True})
    @click.argument("args", nargs=-1, type=click.UNPROCESSED)
    def command(args: tuple[str, ...]) -> None:
        raise click.ClickException(f"'{name}' is not available in tunefleet {_package_version()}")

    return command


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(_package_version(), "--version", prog_name="tunefleet")
def cli() -> None:
    """tunefleet: tune the tensor programs of large language models across a fleet."""


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; usage errors print one line and exit 2, other failures one line and exit 1.

    SIGINT and SIGTERM stop the command cleanly (see `interrupts`) and exit 130 and 143.
    """
    with stop_on_signals():
        try:
            rv = cli.main(args=argv, prog_name="tunefleet", standalone_mode=False)
        except click.exceptions.NoArgsIsHelpError as err:
            click.echo(err.format_message(), err=True)
            return 2
        except click.UsageError as err:
            hint = f" (see 'tunefleet{_subcommand_path(err.ctx)} --help')"
            click.echo(f"tunefleet: error: {err.format_message()}{hint}", err=True)
            return 2
        except click.ClickException as err:
            click.echo(f"tunefleet: error: {err.format_message()}", err=True)
            return err.exit_code
        except click.exceptions.Exit as err:
            return err.exit_code
        except CommandStopped as err:
            return _report_stop(err.stop)
        except click.Abort as err:
            if isinstance(err.__cause__, KeyboardInterrupt):
                return _report_stop(err.__cause__)
            click.echo("tunefleet: aborted", err=True)
            return 130
    return rv if isinstance(rv, int) else 0


def _report_stop(stop: KeyboardInterrupt) -> int:
    """Print the one line for a stopped command and return 130 (SIGINT) or 143 (SIGTERM)."""
    signum = signal.SIGINT
    detail = ""
    cause: BaseException | None = stop
    while cause is not None:
        if isinstance(cause, Interrupted):
            signum = cause.signum
            break
        detail = detail or str(cause)
        cause = cause.__cause__ or cause.__context__
    name = signal.Signals(signum).name
    click.echo(f"tunefleet: stopped by {name}" + (f": {detail}" if detail else ""), err=True)
    return exit_code(signum)


def _subcommand_path(ctx: click.Context | None) -> str:
    names: list[str] = []
    while ctx is not None and ctx.parent is not None:
        names.append(ctx.info_name or "")
        ctx = ctx.parent
    return "".join(f" {n}" for n in reversed(names))


if __name__ == "__main__":
    sys.exit(main())
