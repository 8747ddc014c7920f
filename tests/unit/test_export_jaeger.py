"""Jaeger JSON: the document's shape (what Jaeger UI's file loader reads), times, tags; and the
``startprof export`` command around the file exporters."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from factories import XSS_NAME, make_analysis

from startprof.analysis.model import Analysis
from startprof.cli import cli, main
from startprof.cli.export import export_command
from startprof.errors import ExportError
from startprof.exporters.jaeger_json import jaeger_document, tag, write_jaeger_json
from startprof.exporters.spans import describe, hex_span_id, hex_trace_id

HEX32 = re.compile(r"^[0-9a-f]{32}$")
HEX16 = re.compile(r"^[0-9a-f]{16}$")
TAG_TYPES = {"string": str, "bool": bool, "int64": int, "float64": float}


def check_tags(tags: Any) -> None:
    assert isinstance(tags, list)
    for t in tags:
        assert set(t) == {"key", "type", "value"}
        assert isinstance(t["key"], str) and t["key"]
        assert type(t["value"]) is TAG_TYPES[t["type"]], t


def check_schema(document: Any) -> None:
    """Jaeger's model/json, as jaeger-ui's "JSON File" loader reads it."""
    assert set(document) == {"data"}
    for trace in document["data"]:
        assert set(trace) == {"traceID", "spans", "processes", "warnings"}
        assert HEX32.match(trace["traceID"]) and trace["warnings"] is None
        for process in trace["processes"].values():
            assert set(process) == {"serviceName", "tags"}
            check_tags(process["tags"])
        for span in trace["spans"]:
            assert set(span) == {
                *("traceID", "spanID", "flags", "operationName", "references"),
                *("startTime", "duration", "tags", "logs", "processID", "warnings"),
            }
            assert span["traceID"] == trace["traceID"]
            assert HEX16.match(span["spanID"])
            assert isinstance(span["operationName"], str)
            assert type(span["startTime"]) is int and span["startTime"] > 0
            assert type(span["duration"]) is int and span["duration"] >= 0
            assert span["logs"] == [] and span["warnings"] is None
            assert span["processID"] in trace["processes"]
            check_tags(span["tags"])
            for ref in span["references"]:
                assert set(ref) == {"refType", "traceID", "spanID"}
                assert ref["refType"] == "CHILD_OF"


@pytest.fixture
def document(tmp_path: Path) -> dict[str, Any]:
    out = tmp_path / "pods.jaeger.json"
    summary = write_jaeger_json(make_analysis(), out)
    doc: dict[str, Any] = json.loads(out.read_text(encoding="utf-8"))
    assert (summary.traces, summary.target) == (3, str(out))
    assert summary.spans == sum(len(t["spans"]) for t in doc["data"])
    return doc


def _tags(span: dict[str, Any]) -> dict[str, Any]:
    return {t["key"]: t["value"] for t in span["tags"]}


def test_document_matches_jaegers_json_model(document: dict[str, Any]) -> None:
    check_schema(document)


def test_one_trace_per_pod_with_one_span_per_phase(document: dict[str, Any]) -> None:
    analysis = make_analysis()
    assert len(document["data"]) == len(analysis.pods)
    for trace, pod_trace in zip(document["data"], describe(analysis), strict=True):
        assert trace["traceID"] == hex_trace_id(pod_trace.trace_id)
        assert [s["operationName"] for s in trace["spans"]] == [
            p.name for p in pod_trace.pod.phases
        ]
        assert [s["spanID"] for s in trace["spans"]] == [
            hex_span_id(s.span_id) for s in pod_trace.spans
        ]


def test_every_reference_names_a_span_of_the_trace(document: dict[str, Any]) -> None:
    for trace in document["data"]:
        ids = {s["spanID"] for s in trace["spans"]}
        roots = [s for s in trace["spans"] if not s["references"]]
        assert [r["operationName"] for r in roots] == ["pod"]
        for span in trace["spans"]:
            for ref in span["references"]:
                assert ref["spanID"] in ids and ref["traceID"] == trace["traceID"]


def test_times_round_trip_to_the_microsecond(document: dict[str, Any]) -> None:
    for trace, pod_trace in zip(document["data"], describe(make_analysis()), strict=True):
        spans = {s["spanID"]: s for s in trace["spans"]}
        for d in pod_trace.spans:
            span = spans[hex_span_id(d.span_id)]
            assert 0 <= d.start_ns - span["startTime"] * 1000 < 1000
            assert 0 <= d.end_ns - (span["startTime"] + span["duration"]) * 1000 < 1000
            if d.parent_span_id is not None:  # rounding never pushes a child out of its parent
                parent = spans[hex_span_id(d.parent_span_id)]
                assert parent["startTime"] <= span["startTime"]
                assert (
                    span["startTime"] + span["duration"] <= parent["startTime"] + parent["duration"]
                )


def test_tags_are_typed_attributes_and_status(document: dict[str, Any]) -> None:
    web, db, _ = document["data"]
    bridge = _tags(next(s for s in web["spans"] if s["operationName"] == "cni.plugin bridge"))
    assert bridge["process.pid"] == 2001
    assert bridge["startprof.critical_path"] is True
    assert bridge["startprof.self_ms"] == 10.0
    assert bridge["startprof.netlink.ops.RTM_NEWLINK"] == 5
    assert json.loads(bridge["process.command_args"]) == ["/usr/lib/cni/bridge"]
    assert bridge["k8s.pod.name"] == "web-0"
    assert bridge["span.kind"] == "internal"
    assert bridge["otel.scope.name"] == "startprof"
    assert "error" not in bridge
    failed = _tags(next(s for s in db["spans"] if s["operationName"] == "cni.plugin bridge"))
    assert failed["error"] is True
    assert failed["otel.status_code"] == "ERROR"
    assert failed["otel.status_description"] == "exit code 1"


def test_process_is_startprof_on_the_pods_node(document: dict[str, Any]) -> None:
    hosts = []
    for trace in document["data"]:
        (process,) = trace["processes"].values()
        assert process["serviceName"] == "startprof"
        hosts.append({t["key"]: t["value"] for t in process["tags"]}["host.name"])
    assert hosts == ["node-a", "node-a", "node-b"]


def test_hostile_names_survive_as_data(document: dict[str, Any]) -> None:
    root = _tags(document["data"][2]["spans"][0])
    assert root["k8s.pod.name"] == XSS_NAME
    assert root["k8s.namespace.name"] == 'ns"&<x>'


def test_same_analysis_same_document() -> None:
    assert jaeger_document(make_analysis()) == jaeger_document(make_analysis())


def test_tag_types() -> None:
    assert tag("a", True) == {"key": "a", "type": "bool", "value": True}
    assert tag("a", 1) == {"key": "a", "type": "int64", "value": 1}
    assert tag("a", 1.5) == {"key": "a", "type": "float64", "value": 1.5}
    assert tag("a", ("x", "y")) == {"key": "a", "type": "string", "value": '["x", "y"]'}


def test_unwritable_output_is_an_export_error(tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="cannot write"):
        write_jaeger_json(make_analysis(), tmp_path / "missing-dir" / "out.json")


# ---- the command -------------------------------------------------------------------------------


@pytest.fixture
def export_cli(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[list[Path]]]:
    """``startprof export`` registered, with the analysis replaced by the factory's."""
    calls: list[list[Path]] = []

    def analyze_files(paths: list[Path], jobs: int | None = None) -> Analysis:
        calls.append(paths)
        return make_analysis()

    monkeypatch.setattr("startprof.pipeline.analyze_files", analyze_files)
    added = "export" not in cli.commands
    if added:
        cli.add_command(export_command)
    try:
        yield calls
    finally:
        if added:
            cli.commands.pop("export")


def test_cli_writes_jaeger_json(
    export_cli: list[list[Path]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out.json"
    assert main(["export", "a.arrows", "b.arrows", "--jaeger-json", str(out)]) == 0
    assert export_cli == [[Path("a.arrows"), Path("b.arrows")]]
    check_schema(json.loads(out.read_text()))
    assert capsys.readouterr().out.startswith("wrote 3 traces (")


def test_cli_pod_selects_one_pod(export_cli: list[list[Path]], tmp_path: Path) -> None:
    out = tmp_path / "out.json"
    for selector in ("db-0", "shop/db-0", "a9e8d7c6"):
        assert main(["export", "a.arrows", "--jaeger-json", str(out), "--pod", selector]) == 0
        (trace,) = json.loads(out.read_text())["data"]
        assert _tags(trace["spans"][0])["k8s.pod.name"] == "db-0"


def test_cli_unknown_pod_lists_the_known_ones(
    export_cli: list[list[Path]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out.json"
    assert main(["export", "a.arrows", "--jaeger-json", str(out), "--pod", "nope"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("startprof: no pod 'nope' in the recording (pods: ")
    assert "shop/web-0" in err and err.count("\n") == 1


@pytest.mark.parametrize(
    "args",
    [
        ["a.arrows"],
        ["a.arrows", "--jaeger-json", "x.json", "--perfetto", "y.json"],
        ["a.arrows", "--jaeger-json", "x.json", "--otlp"],
        ["a.arrows", "--jaeger-json", "x.json", "--otlp-protocol", "grpc"],
        ["--jaeger-json", "x.json"],
        ["a.arrows", "--otlp-protocol", "http/json", "--otlp"],
    ],
)
def test_cli_usage_errors_exit_2(
    export_cli: list[list[Path]], args: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["export", *args]) == 2
    assert "Error" in capsys.readouterr().err
    assert export_cli == []


def test_cli_no_pods_is_an_input_error(
    export_cli: list[list[Path]],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    empty = make_analysis([])
    monkeypatch.setattr("startprof.pipeline.analyze_files", lambda *a, **k: empty)
    assert main(["export", "a.arrows", "--jaeger-json", str(tmp_path / "o.json")]) == 2
    assert "nothing to export" in capsys.readouterr().err


def test_cli_otlp_before_a_file_takes_no_url(
    export_cli: list[list[Path]], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    recording = tmp_path / "pods.arrows"
    recording.write_bytes(b"")
    seen: list[str | None] = []

    def fake_export(analysis: Analysis, *, url: str | None, protocol: str | None) -> Any:
        from startprof.exporters import ExportSummary

        seen.append(url)
        return ExportSummary(traces=3, spans=1, target="nowhere")

    monkeypatch.setattr("startprof.exporters.otlp.export_otlp", fake_export)
    assert main(["export", "--otlp", str(recording)]) == 0
    assert main(["export", str(recording), "--otlp", "collector:4317"]) == 0
    assert seen == [None, "collector:4317"]
    assert export_cli == [[recording], [recording]]


def test_cli_help_has_examples(
    export_cli: list[list[Path]], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["export", "--help"]) == 0
    out = capsys.readouterr().out
    assert "Examples:" in out and "--otlp-protocol" in out and "--perfetto" in out
