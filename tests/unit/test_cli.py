"""The command line's contract: help text, exit codes, one-line errors."""

from __future__ import annotations

import click
import pytest

from startprof.cli import cli, main
from startprof.errors import InputError, StartprofError


def test_help_lists_commands_with_descriptions(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "doctor" in out
    for name, command in cli.commands.items():
        assert command.get_short_help_str(), name


def test_unknown_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["no-such-command"]) == 2
    assert "No such command" in capsys.readouterr().err


def test_startprof_errors_become_one_line_and_their_exit_code(
    capsys: pytest.CaptureFixture[str],
) -> None:
    @cli.command("raise-for-test", hidden=True)
    def _raise() -> None:
        raise InputError("recording x.arrow is truncated", fix="record again")

    try:
        assert main(["raise-for-test"]) == 2
    finally:
        cli.commands.pop("raise-for-test")
    err = capsys.readouterr().err
    assert err == "startprof: recording x.arrow is truncated (record again)\n"


def test_error_hierarchy_exit_codes() -> None:
    assert StartprofError("x").exit_code == 1
    assert InputError("x").exit_code == 2
    assert issubclass(InputError, StartprofError)
    assert click.ClickException("x").exit_code == 1
