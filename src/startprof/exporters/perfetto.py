"""Chrome trace-event JSON, the format ui.perfetto.dev (and chrome://tracing) opens.

``{"traceEvents": [...], "displayTimeUnit": "ms"}``: one process per pod start, named after the
pod by a ``process_name`` metadata event; each phase is a complete event (``ph: "X"``) with
``ts``/``dur`` in µs and its span attributes as ``args``. Complete events on one thread must
nest like a call stack, but phases of a pod overlap (the bridge and loopback CNI plugins run in
parallel), so phases are laid out on as many threads ("tracks") as needed: a phase goes right
under its parent when nothing else is open there, else on the first track free at that time.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

from startprof.analysis.model import Analysis
from startprof.exporters import ExportSummary, TraceFileExporter, write_json
from startprof.exporters.spans import PodTrace, SpanDescription, describe, hex_span_id

MAIN_TRACK: Final = "phases"
ERROR_COLOR: Final = "terrible"
"""A reserved Chrome trace color name (red) for failed phases."""


def micros(ns: int) -> int:
    """Wall-clock ns → µs, floored: floor keeps every child inside its parent after rounding."""
    return ns // 1000


def assign_tracks(spans: Sequence[SpanDescription]) -> dict[int, int]:
    """Span id → track index (0 first), so that each track reads as part of the phase tree.

    On a track, events nest like a call stack or are disjoint, and an event sits directly
    inside its parent or inside nothing: a parallel sibling (the loopback plugin next to the
    bridge) never looks like a child of the sibling it overlaps. ``spans`` must list parents
    before children (as ``PodTrace.spans`` does).
    """
    # a parent outside the pod's spans (the kubelet's CRI client span) has no track here
    own = {s.span_id for s in spans}
    parent_of = {s.span_id: s.parent_span_id if s.parent_span_id in own else None for s in spans}
    depth: dict[int, int] = {}
    for s in spans:
        parent = parent_of[s.span_id]
        depth[s.span_id] = 0 if parent is None else depth[parent] + 1
    order = sorted(spans, key=lambda s: (micros(s.start_ns), -micros(s.end_ns), depth[s.span_id]))
    stacks: list[list[tuple[int, int]]] = []  # per track: (end µs, span id) of open events
    track_of: dict[int, int] = {}
    for s in order:
        start, end = micros(s.start_ns), micros(s.end_ns)
        parent = parent_of[s.span_id]
        preferred = track_of.get(parent) if parent is not None else None
        candidates = ([preferred] if preferred is not None else []) + list(range(len(stacks)))
        chosen = next((t for t in candidates if _fits(stacks[t], start, end, parent)), None)
        if chosen is None:
            stacks.append([])
            chosen = len(stacks) - 1
        stacks[chosen].append((end, s.span_id))
        track_of[s.span_id] = chosen
    return track_of


def _fits(stack: list[tuple[int, int]], start: int, end: int, parent: int | None) -> bool:
    """Whether [start, end] can go on this track: once the events that ended by ``start`` are
    closed, the innermost open one must be its parent (and enclose it), or none must be open.

    Events arrive by start time, so every open event started at or before ``start``; one that
    ended at ``start`` merely touches the new one.
    """
    while stack and stack[-1][0] <= start:
        stack.pop()
    if not stack:
        return True
    top_end, top_id = stack[-1]
    return top_id == parent and end <= top_end


def _json_value(value: object) -> object:
    return list(value) if isinstance(value, tuple) else value


def _pod_label(pod_trace: PodTrace) -> str:
    pod = pod_trace.pod
    name = f"{pod.namespace}/{pod.name}" if pod.namespace and pod.name else pod.name
    return f"pod {name or pod.sandbox_id[:12]}"


def pod_events(pod_trace: PodTrace, pid: int) -> list[dict[str, Any]]:
    """The metadata and complete events of one pod start as process ``pid``."""
    pod = pod_trace.pod
    tracks = assign_tracks(pod_trace.spans)
    events: list[dict[str, Any]] = [
        _meta("process_name", pid, 0, name=_pod_label(pod_trace)),
        _meta("process_labels", pid, 0, labels=f"{pod.host}, {pod.status}"),
        _meta("process_sort_index", pid, 0, sort_index=pid),
    ]
    for track in range(max(tracks.values(), default=-1) + 1):
        label = MAIN_TRACK if track == 0 else f"{MAIN_TRACK} (parallel {track})"
        events.append(_meta("thread_name", pid, track + 1, name=label))
        events.append(_meta("thread_sort_index", pid, track + 1, sort_index=track))
    for s in pod_trace.spans:
        start = micros(s.start_ns)
        args: dict[str, Any] = {k: _json_value(v) for k, v in s.attributes.items()}
        args["span_id"] = hex_span_id(s.span_id)
        args["status"] = "error" if s.error is not None else "ok"
        event: dict[str, Any] = {
            "name": s.name,
            "cat": s.kind,
            "ph": "X",
            "ts": start,
            "dur": micros(s.end_ns) - start,
            "pid": pid,
            "tid": tracks[s.span_id] + 1,
            "args": args,
        }
        if s.error is not None:
            args["error"] = s.error
            event["cname"] = ERROR_COLOR
        events.append(event)
    return events


def _meta(event: str, pid: int, tid: int, **args: object) -> dict[str, Any]:
    return {"name": event, "ph": "M", "pid": pid, "tid": tid, "args": args}


def perfetto_document(analysis: Analysis) -> dict[str, Any]:
    """``{"traceEvents": [...], "displayTimeUnit": "ms"}``, one process (pid 1, 2, ...) per pod."""
    events: list[dict[str, Any]] = []
    for pid, pod_trace in enumerate(describe(analysis), start=1):
        events.extend(pod_events(pod_trace, pid))
    return {"traceEvents": events, "displayTimeUnit": "ms"}


def write_perfetto(analysis: Analysis, path: Path) -> ExportSummary:
    """Write the Perfetto/Chrome trace JSON of ``analysis`` to ``path``."""
    document = perfetto_document(analysis)
    write_json(document, path)
    slices = [e for e in document["traceEvents"] if e["ph"] == "X"]
    pods = {e["pid"] for e in slices}
    return ExportSummary(traces=len(pods), spans=len(slices), target=str(path))


class PerfettoTraceExporter(TraceFileExporter):
    """``startprof export --perfetto``: the ``Exporter`` for a Chrome/Perfetto trace file."""

    hint = " (open in https://ui.perfetto.dev)"

    def write(self, analysis: Analysis, path: Path) -> ExportSummary:
        return write_perfetto(analysis, path)
