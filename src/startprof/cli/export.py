"""``startprof export``."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import click

from startprof.cli.options import DEFAULT_ENDPOINT, jobs_option, otlp_option, otlp_protocol_option
from startprof.errors import InputError

if TYPE_CHECKING:
    from startprof.analysis.model import Analysis
    from startprof.exporters import Exporter, ExportSummary


@click.command("export")
@click.argument("files", nargs=-1, metavar="FILE...", type=click.Path(path_type=Path))
@otlp_option("one trace per pod start", note="Without URL, put --otlp after the files.")
@otlp_protocol_option
@click.option(
    "--jaeger-json",
    "jaeger_out",
    type=click.Path(dir_okay=False, writable=True, path_type=Path),
    metavar="OUT",
    help="Write the JSON file Jaeger UI opens (Search → JSON File).",
)
@click.option(
    "--perfetto",
    "perfetto_out",
    type=click.Path(dir_okay=False, writable=True, path_type=Path),
    metavar="OUT",
    help="Write Chrome/Perfetto trace-event JSON (open it at https://ui.perfetto.dev).",
)
@click.option(
    "--pod",
    "pod_name",
    metavar="NAME",
    help="Export only this pod: NAME, NAMESPACE/NAME or a sandbox id prefix.",
)
@jobs_option
def export_command(
    files: tuple[Path, ...],
    otlp_url: str | None,
    otlp_protocol: str | None,
    jaeger_out: Path | None,
    perfetto_out: Path | None,
    pod_name: str | None,
    jobs: int | None,
) -> int:
    """Export pod starts as traces: OTLP (Jaeger, a Collector), Jaeger JSON or Perfetto.

    One trace per pod start, one span per phase, with the critical path flagged
    (startprof.critical_path) and failed phases in ERROR status. Trace and span ids
    derive from (host, sandbox id, phase): exporting a recording twice gives the same
    ids. OTLP honours the standard OTEL_EXPORTER_OTLP_* variables (endpoint, headers,
    protocol, insecure, certificate); an explicit URL wins. Choose exactly one output.

    \b
    Examples:
      startprof export pods.arrows --otlp
      startprof export pods.arrows --otlp http://jaeger:4317
      startprof export pods.arrows --otlp http://jaeger:4318 --otlp-protocol http/protobuf
      OTEL_EXPORTER_OTLP_HEADERS='authorization=Bearer T' \\
        startprof export node-*.arrows --otlp https://otlp.example.com:4317
      startprof export pods.arrows --jaeger-json pods.jaeger.json --pod web-0
      startprof export pods.arrows --perfetto pods.perfetto.json
    """
    files, otlp_url = _file_taken_as_url(files, otlp_url)
    chosen = [o for o in (otlp_url, jaeger_out, perfetto_out) if o is not None]
    if len(chosen) != 1:
        raise click.UsageError(
            "choose exactly one of --otlp [URL], --jaeger-json OUT, --perfetto OUT"
        )
    if otlp_protocol is not None and otlp_url is None:
        raise click.UsageError("--otlp-protocol applies to --otlp only")
    if not files:
        raise click.UsageError("give at least one recording FILE")

    from startprof.analysis import without_cycle_collection

    with without_cycle_collection():  # until the traces are out (see ``analyze``)
        analysis = _analyze(list(files), jobs)
        if pod_name is not None:
            from startprof.analysis.selection import find_pods

            analysis = replace(analysis, pods=tuple(find_pods(analysis, pod_name)))
        if not analysis.pods:
            raise InputError(
                "no pod starts in " + ", ".join(str(f) for f in files) + ": nothing to export",
                fix="record while pods start, e.g. with `startprof lab run`",
            )
        for exporter in _exporters(otlp_url, otlp_protocol, jaeger_out, perfetto_out):
            summary = exporter.export(analysis)
            click.echo(f"{exporter.verb} {_traces(summary)} to {summary.target}{exporter.hint}")
        del analysis  # freed here: the collector would walk it once more
    return 0


def _exporters(
    otlp_url: str | None,
    otlp_protocol: str | None,
    jaeger_out: Path | None,
    perfetto_out: Path | None,
) -> list[Exporter]:
    """The exporters the options chose, imported only when chosen (OTLP pulls in the SDK)."""
    exporters: list[Exporter] = []
    if otlp_url is not None:
        from startprof.exporters.otlp import OtlpTraceExporter

        exporters.append(OtlpTraceExporter(url=otlp_url or None, protocol=otlp_protocol))
    if jaeger_out is not None:
        from startprof.exporters.jaeger_json import JaegerJsonTraceExporter

        exporters.append(JaegerJsonTraceExporter(jaeger_out))
    if perfetto_out is not None:
        from startprof.exporters.perfetto import PerfettoTraceExporter

        exporters.append(PerfettoTraceExporter(perfetto_out))
    return exporters


def _traces(summary: ExportSummary) -> str:
    traces = f"{summary.traces} trace{'s' if summary.traces != 1 else ''}"
    return f"{traces} ({summary.spans} span{'s' if summary.spans != 1 else ''})"


def _file_taken_as_url(
    files: tuple[Path, ...], otlp_url: str | None
) -> tuple[tuple[Path, ...], str | None]:
    """``export --otlp pods.arrows``: click hands the file to --otlp as its URL. A value that
    is an existing file and no URL (no scheme, no port) is a FILE, and --otlp has no URL."""
    if otlp_url and "://" not in otlp_url and ":" not in otlp_url and Path(otlp_url).is_file():
        return (Path(otlp_url), *files), DEFAULT_ENDPOINT
    return files, otlp_url


def _analyze(paths: list[Path], jobs: int | None) -> Analysis:
    # imported here: the analysis pulls in pandas and pyarrow, which --help should not pay for
    from startprof.pipeline import analyze_files

    return analyze_files(paths, jobs)
