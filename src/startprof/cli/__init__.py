"""The ``startprof`` command line. The only place that prints errors and chooses exit codes."""

from __future__ import annotations

import gc
import os
import sys
import traceback
from typing import NoReturn

import click

from startprof import __version__
from startprof.cli.agent import agent_command
from startprof.cli.analyze import analyze_command
from startprof.cli.bench import bench_command
from startprof.cli.doctor import doctor_command
from startprof.cli.export import export_command
from startprof.cli.lab import lab_group
from startprof.cli.record import record_command
from startprof.cli.report import report_command
from startprof.errors import InternalError, StartprofError

EXIT_USAGE = 2
ONE_SHOT = frozenset({"analyze", "report", "export"})
"""Commands that build one analysis, write it and end: the process's heap is garbage once
they have written their output (see :func:`run`)."""


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="startprof")
@click.option(
    "--debug",
    is_flag=True,
    help="On an internal error, print the whole traceback (also: STARTPROF_DEBUG=1).",
)
def cli(debug: bool) -> None:
    """startprof: why did this pod take that long to start?

    Traces a node's container runtime from the kernel with eBPF, cuts every pod start into
    phases (sandbox, network namespace, each CNI plugin, OCI runtime, image, containers) and
    finds the critical path.

    \b
    Examples:
      sudo startprof doctor                 check this machine
      sudo startprof lab up                 start the lab's own containerd (lab run, lab down)
      sudo startprof record -o pods.arrows  record pod starts until Ctrl-C
      startprof analyze pods.arrows         critical chains of the slowest pods
      startprof report pods.arrows          a self-contained HTML report
      startprof export pods.arrows --otlp   one trace per pod start to Jaeger
      sudo startprof bench --pods 20        compare runc/crun x bridge/ptp on the lab
    """


cli.add_command(doctor_command)
cli.add_command(lab_group)
cli.add_command(record_command)
cli.add_command(analyze_command)
cli.add_command(export_command)
cli.add_command(report_command)
cli.add_command(bench_command)
cli.add_command(agent_command)


def _debug(argv: list[str] | None) -> bool:
    args = sys.argv[1:] if argv is None else argv
    commands = [i for i, a in enumerate(args) if a in cli.commands]
    before = args[: commands[0]] if commands else args  # --debug is the group's option
    return "--debug" in before or os.environ.get("STARTPROF_DEBUG", "") not in ("", "0")


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; map startprof errors to one line on stderr and an exit code. Anything else
    is a bug: one line too (exit 70), and the traceback with --debug."""
    debug = _debug(argv)
    try:
        result = cli.main(args=argv, prog_name="startprof", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("startprof: interrupted", err=True)
        return 130
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except StartprofError as exc:
        if debug and isinstance(exc, InternalError) and exc.__cause__ is not None:
            traceback.print_exception(exc.__cause__)
        click.echo(f"startprof: {exc}", err=True)
        return exc.exit_code
    except KeyboardInterrupt:
        click.echo("startprof: interrupted", err=True)
        return 130
    except BrokenPipeError:
        return 1
    except OSError as exc:
        # An output that cannot be written (a full disk, /dev/full, a closed stdout): the
        # commands turn the files they open into StartprofErrors; this is what is left.
        where = f": {exc.filename}" if exc.filename else ""
        click.echo(f"startprof: cannot write output{where}: {exc.strerror or exc}", err=True)
        return 1
    except Exception as exc:
        if debug:
            traceback.print_exception(exc)
        bug = InternalError.of("startprof", exc)
        click.echo(f"startprof: {bug}", err=True)
        return bug.exit_code
    return result if isinstance(result, int) else 0


def _command(argv: list[str]) -> str | None:
    return next((a for a in argv if a in cli.commands), None)


def run() -> NoReturn:
    """The ``startprof`` program: :func:`main`, then exit.

    A one-shot command (``analyze``, ``report``, ``export``) runs without the cycle collector,
    and the process ends without freeing its objects one by one: the analysis of 10,000 pods
    is millions of them, which the collector walked again on every full collection after the
    analysis (1 s of the command) and the interpreter's teardown freed for another 3.7 s after
    the last byte was written. Output is flushed first; nothing else of these commands waits
    for exit (no atexit handler, no thread, every file closed). Callers of :func:`main` in a
    long-lived process (the tests) keep both."""
    one_shot = _command(sys.argv[1:]) in ONE_SHOT
    if one_shot:
        gc.disable()
    code = main()
    if not one_shot:
        sys.exit(code)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (BrokenPipeError, OSError):
            code = code or 1  # a reader that went away: what a pipe's writer exits with here
    os._exit(code)


if __name__ == "__main__":
    run()
