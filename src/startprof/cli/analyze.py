"""``startprof analyze``."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from startprof.cli.options import jobs_option


@click.command("analyze")
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the analysis as a JSON document.")
@click.option(
    "--pod", "pod_name", metavar="NAME", help="Only this pod (name or sandbox id prefix)."
)
@click.option(
    "--top",
    default=5,
    show_default=True,
    type=click.IntRange(min=0),
    help="Show the critical chain of the N slowest pods (failed ones first).",
)
@jobs_option
def analyze_command(
    files: tuple[Path, ...], as_json: bool, pod_name: str | None, top: int, jobs: int | None
) -> int:
    """Cut each pod start into phases and show its critical path.

    Several recordings (e.g. one per node) merge; pods are keyed by host
    and sandbox id, and one recording per CPU is analysed at once (--jobs).
    --json prints every pod (or the one --pod names).

    \b
    Examples:
      startprof analyze pods.arrows
      startprof analyze --top 20 node-a.arrows node-b.arrows
      startprof analyze --jobs 1 nodes/*.arrows
      startprof analyze pods.arrows --pod web-0
      startprof analyze --json pods.arrows | jq '.pods[] | {name, duration_ms, bottleneck}'
    """
    from rich.console import Console

    from startprof.analysis import without_cycle_collection
    from startprof.analysis.selection import select_pods
    from startprof.pipeline import analyze_files
    from startprof.reporters import json as json_reporter
    from startprof.reporters.terminal import render

    # no cycle collection until the output is written and the pods are let go of: its first
    # pass after the analysis would walk every object of every pod (1.3 s at 10,000 pods)
    with without_cycle_collection():
        analysis = analyze_files(list(files), jobs)
        pods = select_pods(analysis, None if as_json else top, pod_name)
        if as_json:
            # The bytes as they are, a pod at a time, unless stdout is a text-only stream (a
            # StringIO a caller redirected it to), which takes only text.
            if hasattr(sys.stdout, "buffer"):
                sys.stdout.flush()
                json_reporter.write(sys.stdout.buffer, analysis, pods)
                sys.stdout.buffer.write(b"\n")
                sys.stdout.buffer.flush()
            else:
                click.echo(json_reporter.dumps(analysis, pods))
        else:
            render(analysis, pods, Console(highlight=False))
        del analysis, pods  # freed here: the collector would walk them once more
    return 0
