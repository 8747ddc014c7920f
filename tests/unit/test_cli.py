"""The command line's contract: help text, exit codes, one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import click
import pytest

from startprof.cli import cli, main
from startprof.errors import InputError, StartprofError

DATA = Path(__file__).resolve().parent.parent / "data" / "recordings"


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


def _program(*args: str) -> subprocess.CompletedProcess[bytes]:
    """``startprof ARGS`` as its own process, through :func:`startprof.cli.run`."""
    return subprocess.run(
        [sys.executable, "-m", "startprof", *args], capture_output=True, check=False, timeout=120
    )


def test_one_shot_command_writes_all_its_output_before_its_fast_exit(
    capsysbinary: pytest.CaptureFixture[bytes],
) -> None:
    """``analyze`` ends with os._exit: everything it wrote must be flushed first, and the
    bytes must be those main() writes in this process."""
    recording = str(DATA / "multi-container.arrows")
    done = _program("analyze", "--json", recording)
    assert done.returncode == 0, done.stderr
    assert main(["analyze", "--json", recording]) == 0
    assert done.stdout == capsysbinary.readouterr().out
    assert json.loads(done.stdout)["pods"]


def test_one_shot_command_keeps_its_exit_code_and_error_line(tmp_path: Path) -> None:
    done = _program("analyze", str(tmp_path / "missing.arrows"))
    assert done.returncode == 2
    assert done.stderr.decode().strip() == f"startprof: {tmp_path / 'missing.arrows'}: no such file"


def test_one_shot_command_to_a_closed_pipe_exits_quietly() -> None:
    """A reader that went away (``| head -c 1``): no traceback, no 'Exception ignored'."""
    with subprocess.Popen(
        [sys.executable, "-m", "startprof", "analyze", "--json", str(DATA / "concurrent.arrows")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    ) as proc:
        assert proc.stdout is not None and proc.stderr is not None
        proc.stdout.read(1)
        proc.stdout.close()
        err = proc.stderr.read().decode()
        code = proc.wait(timeout=120)
    assert code in (0, 1)
    assert "Traceback" not in err and "Exception ignored" not in err
