"""Options several commands share, declared once so their names, types and help agree."""

from __future__ import annotations

import click

from startprof.exporters.otlp import PROTOCOLS

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
