"""The console script's contract: subcommands listed, one-line usage errors with exit code 2."""

from __future__ import annotations

import subprocess
import sys

from tunefleet.coordinator.cli import COMMANDS, main


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    code = "import sys; from tunefleet.coordinator.cli import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=60
    )


def test_help_lists_every_subcommand() -> None:
    result = run_cli("--help")
    assert result.returncode == 0
    for name in ("ops", "show", "measure", "targets", "tune", "tasks", "db"):
        assert name in COMMANDS
        assert f"\n  {name} " in result.stdout


def test_unknown_command_is_one_line_and_exit_2() -> None:
    result = run_cli("nonsense")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "nonsense" in lines[0]


def test_bad_option_is_one_line_and_exit_2() -> None:
    result = run_cli("--no-such-option")
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1


def test_version_prints_the_package_version() -> None:
    from importlib.metadata import version

    assert main(["--version"]) == 0
    result = run_cli("--version")
    assert version("tunefleet") in result.stdout


def test_every_registered_command_resolves_or_reports_itself() -> None:
    for name in COMMANDS:
        result = run_cli(name, "--help")
        assert result.returncode == 0, (name, result.stderr)
        assert "Traceback" not in result.stderr


def test_no_command_prints_usage_not_an_error() -> None:
    result = run_cli()
    assert result.returncode == 2
    assert result.stderr.startswith("Usage: tunefleet")
    assert "error" not in result.stderr.splitlines()[0]
