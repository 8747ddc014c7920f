"""Exporters: one module per output format, all fed by the same span mapping (``spans``), each
with one class behind the small ``Exporter`` protocol (as the OpenTelemetry SDK's span
exporters are), which ``startprof export`` loops over:

- ``otlp``: ``OtlpTraceExporter``, OpenTelemetry traces over OTLP gRPC or HTTP/protobuf, through
  opentelemetry-sdk;
- ``jaeger_json``: ``JaegerJsonTraceExporter``, the JSON document Jaeger UI opens from a file;
- ``perfetto``: ``PerfettoTraceExporter``, Chrome/Perfetto trace-event JSON.

Modules are imported by whoever needs them: the OTLP one pulls in the SDK and grpcio.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from startprof.errors import ExportError

if TYPE_CHECKING:
    from startprof.analysis.model import Analysis


@dataclass(frozen=True)
class ExportSummary:
    """What an export produced, for the one line the CLI prints."""

    traces: int
    """Pod starts exported (one trace, or one Perfetto process, each)."""
    spans: int
    target: str
    """Where they went: an endpoint and protocol, or a file."""


class Exporter(Protocol):
    """One output of ``startprof export``: sends or writes every pod start of an analysis."""

    verb: str
    """What it did, for the CLI's line: ``sent`` or ``wrote``."""
    hint: str
    """Said after the target, e.g. how to open the file; may be empty."""

    def export(self, analysis: Analysis) -> ExportSummary:
        """Export one trace per pod start; raise ``ExportError`` when the target refuses."""
        ...


class TraceFileExporter:
    """An ``Exporter`` that writes one file: a subclass says how (``write``) and how to open it
    (``hint``)."""

    verb = "wrote"
    hint = ""

    def __init__(self, path: Path) -> None:
        self.path = path

    def export(self, analysis: Analysis) -> ExportSummary:
        return self.write(analysis, self.path)

    def write(self, analysis: Analysis, path: Path) -> ExportSummary:
        raise NotImplementedError


def write_json(document: Mapping[str, Any], path: Path) -> None:
    """Write ``document`` compactly to ``path``; a failure is one line, not a traceback."""
    try:
        with path.open("w", encoding="utf-8") as out:
            json.dump(document, out, separators=(",", ":"))
            out.write("\n")
    except OSError as exc:
        raise ExportError(f"cannot write {path}: {exc.strerror or exc}") from exc
