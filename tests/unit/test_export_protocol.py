"""The ``Exporter`` protocol: every output of ``startprof export`` is one, and each gives what its
function gives (the CLI only loops over them)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from factories import make_analysis
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from startprof.analysis.model import Analysis
from startprof.exporters import Exporter, ExportSummary
from startprof.exporters.jaeger_json import JaegerJsonTraceExporter, jaeger_document
from startprof.exporters.otlp import OtlpTraceExporter, export_otlp
from startprof.exporters.perfetto import PerfettoTraceExporter, perfetto_document


def test_file_exporters_write_their_documents(tmp_path: Path) -> None:
    analysis = make_analysis()
    cases: list[tuple[Exporter, Path, dict[str, object]]] = [
        (
            JaegerJsonTraceExporter(tmp_path / "j.json"),
            tmp_path / "j.json",
            jaeger_document(analysis),
        ),
        (
            PerfettoTraceExporter(tmp_path / "p.json"),
            tmp_path / "p.json",
            perfetto_document(analysis),
        ),
    ]
    for exporter, path, document in cases:
        summary = exporter.export(analysis)
        assert json.loads(path.read_text()) == document
        assert summary.target == str(path) and summary.traces == 3
        assert exporter.verb == "wrote" and exporter.hint.startswith(" (")


def test_otlp_exporter_passes_url_and_protocol(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[str | None, str | None]] = []

    def fake(analysis: Analysis, *, url: str | None, protocol: str | None) -> ExportSummary:
        seen.append((url, protocol))
        return export_otlp(analysis, exporter=InMemorySpanExporter())

    monkeypatch.setattr("startprof.exporters.otlp.export_otlp", fake)
    exporter: Exporter = OtlpTraceExporter(url="http://collector:4318", protocol="http/protobuf")
    summary = exporter.export(make_analysis())
    assert seen == [("http://collector:4318", "http/protobuf")]
    assert summary.traces == 3 and exporter.verb == "sent" and exporter.hint == ""
