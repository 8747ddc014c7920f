"""Options several commands share, declared once so their names, types and help agree."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import click

from startprof.errors import InputError
from startprof.exporters.otlp import PROTOCOLS

FC = TypeVar("FC", bound=Callable[..., object])

cri_socket_option = click.option(
    "--cri-socket",
    metavar="PATH",
    help=(
        "containerd's CRI socket [default: $STARTPROF_CRI_SOCKET, the lab's when it is up, "
        "else /run/containerd/containerd.sock]."
    ),
)
otlp_protocol_option = click.option(
    "--otlp-protocol",
    type=click.Choice(PROTOCOLS),
    help="OTLP transport [default: $OTEL_EXPORTER_OTLP_TRACES_PROTOCOL, "
    "$OTEL_EXPORTER_OTLP_PROTOCOL, else grpc].",
)
DEFAULT_ENDPOINT = ""
"""``--otlp`` given without a URL: the endpoint comes from the environment or the default."""


def otlp_option(sends: str, note: str = "") -> Callable[[FC], FC]:
    """``--otlp [URL]``; ``sends`` says what goes there, ``note`` how this command parses it."""
    return click.option(
        "--otlp",
        "otlp_url",
        is_flag=False,
        flag_value=DEFAULT_ENDPOINT,
        default=None,
        metavar="[URL]",
        help=(
            f"Send {sends} over OTLP to URL [default: $OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, "
            "$OTEL_EXPORTER_OTLP_ENDPOINT, else localhost:4317 (gRPC) or "
            f"localhost:4318/v1/traces (HTTP)].{' ' + note if note else ''}"
        ),
    )


duration_option = click.option(
    "--duration",
    type=click.FloatRange(min=0, min_open=True),
    metavar="S",
    help="Stop after S seconds.",
)

ringbuf_pages_option = click.option(
    "--ringbuf-pages",
    default=1024,
    show_default=True,
    type=click.IntRange(min=1),
    help="Ring buffer size in pages (a power of two).",
)


def check_ringbuf_pages(pages: int) -> None:
    """The kernel's BPF ring buffer is a power of two of pages."""
    if pages & (pages - 1):
        raise InputError(f"--ringbuf-pages must be a power of two, not {pages}")


jobs_option = click.option(
    "-j",
    "--jobs",
    type=click.IntRange(min=1),
    metavar="N",
    help=(
        "Analyse N recordings at once, in this process and N-1 workers [default: one per "
        "CPU, at most one per file]; 1 analyses them one by one here, with the least memory."
    ),
)
