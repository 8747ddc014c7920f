"""Perfetto / Chrome trace-event JSON: shape, one process per pod, times, track layout."""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from factories import XSS_NAME, make_analysis, web_pod
from hypothesis import given, settings
from hypothesis import strategies as st

from startprof.errors import ExportError
from startprof.exporters.perfetto import assign_tracks, perfetto_document, write_perfetto
from startprof.exporters.spans import SpanDescription, describe, hex_span_id

METADATA = {
    "process_name",
    "process_labels",
    "process_sort_index",
    "thread_name",
    "thread_sort_index",
}


def check_schema(document: Any) -> None:
    """The trace-event format's JSON object form, as Perfetto's JSON importer reads it."""
    assert set(document) == {"traceEvents", "displayTimeUnit"}
    assert document["displayTimeUnit"] == "ms"
    for event in document["traceEvents"]:
        assert event["ph"] in ("X", "M"), event
        assert type(event["pid"]) is int and type(event["tid"]) is int
        assert isinstance(event["name"], str) and isinstance(event["args"], dict)
        if event["ph"] == "M":
            assert event["name"] in METADATA
            assert set(event) == {"name", "ph", "pid", "tid", "args"}
        else:
            assert set(event) - {"cname"} == {
                "name",
                "cat",
                "ph",
                "ts",
                "dur",
                "pid",
                "tid",
                "args",
            }
            assert type(event["ts"]) is int and type(event["dur"]) is int and event["dur"] >= 0
            assert event.get("cname", "terrible") == "terrible"


def check_nesting(slices: Sequence[dict[str, Any]]) -> None:
    """Complete events on one thread nest like a call stack or are disjoint."""
    by_thread: dict[tuple[int, int], list[tuple[int, int]]] = defaultdict(list)
    for e in slices:
        by_thread[e["pid"], e["tid"]].append((e["ts"], e["ts"] + e["dur"]))
    for intervals in by_thread.values():
        stack: list[int] = []
        for start, end in sorted(intervals, key=lambda iv: (iv[0], -iv[1])):
            while stack and stack[-1] <= start:
                stack.pop()
            assert not stack or end <= stack[-1], (start, end, stack)
            stack.append(end)


@pytest.fixture
def document(tmp_path: Path) -> dict[str, Any]:
    out = tmp_path / "pods.perfetto.json"
    summary = write_perfetto(make_analysis(), out)
    doc: dict[str, Any] = json.loads(out.read_text(encoding="utf-8"))
    assert (summary.traces, summary.target) == (3, str(out))
    assert summary.spans == len(_slices(doc))
    return doc


def _slices(document: dict[str, Any], pid: int | None = None) -> list[dict[str, Any]]:
    return [
        e for e in document["traceEvents"] if e["ph"] == "X" and (pid is None or e["pid"] == pid)
    ]


def test_document_is_trace_event_json(document: dict[str, Any]) -> None:
    check_schema(document)
    check_nesting(_slices(document))


def test_one_named_process_per_pod(document: dict[str, Any]) -> None:
    names = {
        e["pid"]: e["args"]["name"] for e in document["traceEvents"] if e["name"] == "process_name"
    }
    assert names == {1: "pod shop/web-0", 2: "pod shop/db-0", 3: f'pod ns"&<x>/{XSS_NAME}'}
    labels = [e["args"]["labels"] for e in document["traceEvents"] if e["name"] == "process_labels"]
    assert labels == ["node-a, ok", "node-a, failed", "node-b, ok"]


def test_every_phase_is_a_slice_and_times_round_trip(document: dict[str, Any]) -> None:
    for pid, pod_trace in enumerate(describe(make_analysis()), start=1):
        slices = {e["args"]["span_id"]: e for e in _slices(document, pid)}
        assert len(slices) == len(pod_trace.spans)
        for d in pod_trace.spans:
            e = slices[hex_span_id(d.span_id)]
            assert (e["name"], e["cat"]) == (d.name, d.kind)
            assert 0 <= d.start_ns - e["ts"] * 1000 < 1000
            assert 0 <= d.end_ns - (e["ts"] + e["dur"]) * 1000 < 1000


def test_overlapping_siblings_go_on_separate_tracks(document: dict[str, Any]) -> None:
    tid = {e["args"]["startprof.phase.id"]: e["tid"] for e in _slices(document, 1)}
    assert tid["sandbox/cni.add/bridge"] != tid["sandbox/cni.add/loopback"]
    # nested phases stay on their parent's track
    assert tid["pod"] == tid["sandbox"] == tid["sandbox/cni.add"] == tid["sandbox/cni.add/bridge"]
    assert tid["sandbox/cni.add/bridge/exec/1"] == tid["sandbox/cni.add/bridge"]
    threads = {
        e["tid"]: e["args"]["name"]
        for e in document["traceEvents"]
        if e["name"] == "thread_name" and e["pid"] == 1
    }
    assert threads == {1: "phases", 2: "phases (parallel 1)"}


def test_args_carry_attributes_and_errors(document: dict[str, Any]) -> None:
    bridge = next(e for e in _slices(document, 1) if e["name"] == "cni.plugin bridge")
    assert bridge["args"]["process.command_args"] == ["/usr/lib/cni/bridge"]
    assert bridge["args"]["startprof.critical_path"] is True
    assert bridge["args"]["status"] == "ok" and "cname" not in bridge
    failed = next(e for e in _slices(document, 2) if e["name"] == "cni.plugin bridge")
    assert failed["args"]["status"] == "error"
    assert failed["args"]["error"] == "exit code 1"
    assert failed["cname"] == "terrible"


def test_same_analysis_same_document() -> None:
    assert perfetto_document(make_analysis()) == perfetto_document(make_analysis())


def test_unwritable_output_is_an_export_error(tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="cannot write"):
        write_perfetto(make_analysis(), tmp_path / "missing-dir" / "out.json")


def test_cli_writes_perfetto(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from startprof.cli import cli, main
    from startprof.cli.export import export_command

    monkeypatch.setattr("startprof.pipeline.analyze_files", lambda *a, **k: make_analysis())
    added = "export" not in cli.commands
    if added:
        cli.add_command(export_command)
    out = tmp_path / "out.json"
    try:
        assert main(["export", "a.arrows", "--perfetto", str(out)]) == 0
    finally:
        if added:
            cli.commands.pop("export")
    check_schema(json.loads(out.read_text()))
    assert "ui.perfetto.dev" in capsys.readouterr().out


# ---- track layout on arbitrary phase trees -----------------------------------------------------


@st.composite
def phase_trees(draw: st.DrawFn) -> list[SpanDescription]:
    """Random trees: children anywhere inside their parent, overlapping each other freely,
    with times on and off microsecond boundaries and zero-length phases."""
    root = SpanDescription(1, 1, None, "pod", "pod", "pod", 0, 5_000_000, {}, None)
    spans = [root]
    for _ in range(draw(st.integers(0, 40))):
        parent = spans[draw(st.integers(0, len(spans) - 1))]
        a = draw(st.integers(parent.start_ns, parent.end_ns))
        b = draw(st.integers(parent.start_ns, parent.end_ns))
        if draw(st.booleans()):  # snap to whole µs: touching and equal ends are common
            a, b = a // 1000 * 1000, b // 1000 * 1000
        span_id = len(spans) + 1
        spans.append(
            SpanDescription(
                1, span_id, parent.span_id, "x", "x", str(span_id), min(a, b), max(a, b), {}, None
            )
        )
    return spans


def check_visual_parents(spans: Sequence[SpanDescription], tracks: dict[int, int]) -> None:
    """On its track, a span sits directly inside its parent or inside nothing."""
    depth: dict[int, int] = {}
    for s in spans:
        depth[s.span_id] = 0 if s.parent_span_id is None else depth[s.parent_span_id] + 1
    by_track: dict[int, list[SpanDescription]] = defaultdict(list)
    for s in spans:
        by_track[tracks[s.span_id]].append(s)
    for members in by_track.values():
        stack: list[tuple[int, int]] = []
        for s in sorted(
            members, key=lambda s: (s.start_ns // 1000, -(s.end_ns // 1000), depth[s.span_id])
        ):
            while stack and stack[-1][0] <= s.start_ns // 1000:
                stack.pop()
            assert not stack or stack[-1][1] == s.parent_span_id
            stack.append((s.end_ns // 1000, s.span_id))


@settings(max_examples=300, deadline=None)
@given(phase_trees())
def test_tracks_always_nest_under_the_parent(spans: list[SpanDescription]) -> None:
    tracks = assign_tracks(spans)
    assert set(tracks) == {s.span_id for s in spans}
    check_nesting(
        [
            {
                "pid": 1,
                "tid": tracks[s.span_id],
                "ts": s.start_ns // 1000,
                "dur": s.end_ns // 1000 - s.start_ns // 1000,
            }
            for s in spans
        ]
    )
    check_visual_parents(spans, tracks)


def test_a_chain_of_nested_phases_uses_one_track() -> None:
    pod = web_pod()
    chain = tuple(p for p in pod.phases if p.id in ("pod", "sandbox", "sandbox/cni.add"))
    (pod_trace,) = describe(make_analysis([replace(pod, phases=chain)]))
    assert set(assign_tracks(pod_trace.spans).values()) == {0}
