"""``startprof record``."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import click

from startprof.cli.options import (
    check_ringbuf_pages,
    cri_socket_option,
    duration_option,
    ringbuf_pages_option,
)
from startprof.config import resolve_cri_socket
from startprof.errors import InputError
from startprof.probes import PROBE_NAMES
from startprof.probes.hooks import MODES
from startprof.recording import SUFFIX

if TYPE_CHECKING:
    from startprof.recorder import RecordStats

ALL_PROBES = PROBE_NAMES


def _default_output() -> Path:
    return Path(f"startprof-{time.strftime('%Y%m%d-%H%M%S')}{SUFFIX}")


def _status_line(stats: RecordStats) -> str:
    rates = " ".join(f"{name} {rate:,.0f}/s" for name, rate in sorted(stats.rates.items()))
    drops = f"drops {stats.drops}" if not stats.drops else f"DROPS {stats.drops}"
    return (
        f"\rrecording {stats.elapsed:6.1f}s  {rates}  pods {len(stats.sandboxes)}  "
        f"cri calls {stats.cri_calls}  {drops} "
    )


@click.command(
    "record",
    context_settings={"ignore_unknown_options": False, "allow_interspersed_args": False},
)
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    help=(f"Recording file [default: startprof-DATE-TIME{SUFFIX}]."),
)
@duration_option
@cri_socket_option
@click.option(
    "--all",
    "follow_all",
    is_flag=True,
    help="Record every process on the machine, not only containerd's tree.",
)
@click.option(
    "--probe",
    "probes",
    multiple=True,
    type=click.Choice(ALL_PROBES),
    help="Load only these probes (repeatable) [default: all].",
)
@ringbuf_pages_option
@click.option(
    "--syscall-hooks",
    type=click.Choice(MODES),
    default="auto",
    show_default=True,
    help="How the syscall hooks attach: fentry programs (only the hooked syscalls pay) or "
    "syscall tracepoints (every syscall on the machine takes the kernel's slow path); auto "
    "takes fentry where the kernel loads it.",
)
@click.option("--dump-bpf", is_flag=True, help="Print the BPF C that would be loaded and exit.")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
def record_command(
    output: Path | None,
    duration: float | None,
    cri_socket: str | None,
    follow_all: bool,
    probes: tuple[str, ...],
    ringbuf_pages: int,
    syscall_hooks: str,
    dump_bpf: bool,
    command: tuple[str, ...],
) -> int:
    """Record pod starts from the kernel into a file.

    Follows the containerd behind the CRI socket (and a kubelet if one runs)
    and every process they start; stops on Ctrl-C, SIGTERM, after --duration,
    or when COMMAND exits (then exits with COMMAND's code).

    \b
    Examples:
      sudo startprof record -o pods.arrows              # until Ctrl-C
      sudo startprof record --duration 60 -o pods.arrows
      sudo startprof record -o pods.arrows -- startprof lab run --pods 10
      sudo startprof record --dump-bpf | less
    """
    check_ringbuf_pages(ringbuf_pages)
    # The recorder pulls in bcc; import it only when recording, so --help stays fast.
    from startprof.recorder import Recorder, RecordOptions

    socket_path = resolve_cri_socket(cri_socket)
    options = RecordOptions(
        output=output or _default_output(),
        cri_socket=socket_path,
        duration=duration,
        follow_all=follow_all,
        command=command,
        probes=probes or ALL_PROBES,
        ringbuf_pages=ringbuf_pages,
        syscall_hooks=syscall_hooks,
    )
    parent = options.output.parent
    if not dump_bpf and not (parent.is_dir() and os.access(parent, os.W_OK)):
        # before the probes are compiled and loaded, which takes seconds
        raise InputError(
            f"cannot write {options.output}: "
            f"{'no directory' if not parent.is_dir() else 'no write permission in'} {parent}",
            fix="pass -o with a path in a writable directory",
        )
    if dump_bpf:
        from startprof.probes.session import ProbeSession

        session = ProbeSession(
            follow_all=follow_all,
            cri_socket=socket_path,
            ringbuf_pages=ringbuf_pages,
            probes=options.probes,
            syscall_hooks=syscall_hooks,
        )
        click.echo(session.c_source())
        return 0

    live = sys.stderr.isatty()

    def on_status(stats: RecordStats) -> None:
        if live:
            click.echo(_status_line(stats), nl=False, err=True)

    target = "every process" if follow_all else f"containerd behind {socket_path}"

    def on_ready() -> None:
        stop = "until COMMAND exits" if command else "Ctrl-C to stop"
        click.echo(f"recording {target} to {options.output} ({stop})", err=True)

    result = Recorder(options, on_status=on_status, on_ready=on_ready).run()
    if live:
        click.echo(err=True)
    stats = result.stats
    per_probe = ", ".join(f"{k} {v:,}" for k, v in sorted(stats.per_probe.items()))
    click.echo(
        f"recorded {stats.elapsed:.1f}s ({result.stop_reason}): {stats.events_written:,} events "
        f"({per_probe}), {len(stats.sandboxes)} pods, {stats.cri_calls} CRI calls, "
        f"{stats.drops} dropped",
        err=True,
    )
    click.echo(f"wrote {result.path} ({result.size_bytes / 1e6:.2f} MB)", err=True)
    if stats.drops:
        click.echo(
            f"warning: the ring buffer overflowed {stats.drops} times; raise --ringbuf-pages",
            err=True,
        )
    code = result.command_exit
    if code is None:
        return 0
    return 128 - code if code < 0 else code  # killed by a signal: the shell's convention
