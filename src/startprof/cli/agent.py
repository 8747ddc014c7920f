"""``startprof agent``."""

from __future__ import annotations

import os
import re
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import click

from startprof.cli.options import (
    check_ringbuf_pages,
    cri_socket_option,
    duration_option,
    otlp_option,
    otlp_protocol_option,
    ringbuf_pages_option,
)
from startprof.config import resolve_cri_socket
from startprof.errors import InputError

if TYPE_CHECKING:
    from startprof.incremental import Emitted

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)i?b?\s*$", re.IGNORECASE)


def parse_size(text: str) -> int:
    """``500M``, ``2G``, ``1048576`` → bytes (powers of 1024)."""
    match = _SIZE.match(text)
    if match is None:
        raise click.BadParameter(f"{text!r} is no size (e.g. 500M, 2G)")
    scale = 1024 ** " kmgt".index((match.group(2) or " ").lower())
    return int(float(match.group(1)) * scale)


@click.command("agent")
@otlp_option("each pod start's trace, and the metrics,")
@otlp_protocol_option
@click.option(
    "--metrics-port",
    type=click.IntRange(1, 65535),
    metavar="PORT",
    help="Also serve the metrics for Prometheus at http://0.0.0.0:PORT/metrics.",
)
@click.option(
    "--keep",
    "keep_dir",
    type=click.Path(file_okay=False, path_type=Path),
    metavar="DIR",
    help="Also keep rotating recordings in DIR, for analyze/report later.",
)
@click.option(
    "--max-size",
    default="1G",
    show_default=True,
    metavar="SIZE",
    help="Most that --keep DIR holds; a file is closed at a quarter of it.",
)
@click.option(
    "--pod-timeout",
    default=120.0,
    show_default=True,
    type=click.FloatRange(min=0, min_open=True),
    metavar="S",
    help="Send a pod start that is still not over S seconds after it began, as incomplete.",
)
@duration_option
@cri_socket_option
@click.option(
    "--no-idle",
    is_flag=True,
    help="Run at nice 10 instead of SCHED_IDLE: on a node whose CPUs are saturated while pods "
    "start, SCHED_IDLE delays the traces by seconds.",
)
@ringbuf_pages_option
def agent_command(
    otlp_url: str | None,
    otlp_protocol: str | None,
    metrics_port: int | None,
    keep_dir: Path | None,
    max_size: str,
    pod_timeout: float,
    duration: float | None,
    cri_socket: str | None,
    no_idle: bool,
    ringbuf_pages: int,
) -> int:
    """Profile every pod start on this node, always: one OTLP trace per pod start, sent
    as soon as the start is over, plus metrics.

    Records like `record` (same probes, SCHED_IDLE), analyses what it holds every
    0.3 s, and sends a pod start once it is over (all containers started or one
    failed, then 0.3 s without news of it) or --pod-timeout passed. Spans are those
    `export` gives from a recording. Stops on SIGTERM or Ctrl-C: pods still starting
    are sent as incomplete, exit 0.
    OTLP honours OTEL_EXPORTER_OTLP_* (endpoint, headers, protocol, insecure,
    certificate) and OTEL_RESOURCE_ATTRIBUTES (e.g. k8s.node.name).

    \b
    Examples:
      sudo startprof agent --otlp http://collector:4317
      sudo startprof agent --otlp --metrics-port 9464
      sudo OTEL_EXPORTER_OTLP_ENDPOINT=https://otlp.example.com:4317 \\
           OTEL_EXPORTER_OTLP_HEADERS='authorization=Bearer T' startprof agent --otlp
      sudo startprof agent --keep /var/lib/startprof --max-size 2G
      sudo startprof agent --otlp --duration 60    # one minute, then flush and exit
    """
    check_ringbuf_pages(ringbuf_pages)
    if otlp_protocol is not None and otlp_url is None:
        raise click.UsageError("--otlp-protocol applies to --otlp only")
    if otlp_url is None and keep_dir is None and metrics_port is None:
        raise click.UsageError("give at least one of --otlp [URL], --metrics-port, --keep DIR")
    size = parse_size(max_size)
    if keep_dir is not None:
        keep_dir.mkdir(parents=True, exist_ok=True)
        if not os.access(keep_dir, os.W_OK):
            raise InputError(f"cannot write in {keep_dir}", fix="choose another --keep DIR")
    # the agent pulls in bcc and the SDK: imported only when it runs, so --help stays fast
    from startprof.agent import Agent, AgentOptions

    options = AgentOptions(
        cri_socket=resolve_cri_socket(cri_socket),
        otlp_url=otlp_url,
        otlp_protocol=otlp_protocol,
        keep_dir=keep_dir,
        max_size=size,
        duration=duration,
        pod_timeout=pod_timeout,
        metrics_port=metrics_port,
        ringbuf_pages=ringbuf_pages,
        idle=not no_idle,
    )

    def say(message: str) -> None:
        click.echo(f"{time.strftime('%H:%M:%S')} {message}", err=True)

    def on_ready() -> None:
        where = []
        if otlp_url is not None:
            where.append("OTLP")
        if metrics_port is not None:
            where.append(f"metrics on :{metrics_port}")
        if keep_dir is not None:
            where.append(f"recordings in {keep_dir}")
        say(f"agent following containerd behind {options.cri_socket} ({', '.join(where)})")

    def on_sent(sent: Sequence[Emitted]) -> None:
        for e in sent:
            pod = e.pod
            name = f"{pod.namespace or '?'}/{pod.name or pod.sandbox_id[:12]}"
            say(f"pod {name} {pod.status} in {pod.duration_ns / 1e6:.0f} ms ({e.reason})")

    agent = Agent(options, on_message=say, on_ready=on_ready, on_sent=on_sent)
    summary = agent.run_agent()
    latency = sorted(summary.export_latency_s)
    after = (
        f", sent {latency[len(latency) // 2]:.2f}s (median) and {latency[-1]:.2f}s (max) "
        "after their last event"
        if latency
        else ""
    )
    say(
        f"stopped ({summary.stop_reason}): {summary.pods_sent} pod starts sent{after}, "
        f"{summary.pods_lost} not sent, "
        f"{summary.export_failures} failed exports, {summary.drops} dropped, "
        f"{summary.cri_bytes_lost} CRI bytes lost, "
        f"{summary.analysis_s:.1f}s in {summary.analyses} analyses"
    )
    sys.stderr.flush()
    return 0
