"""The JSON document Jaeger UI opens from a file ("Search" → "JSON File").

Jaeger's own JSON model (``jaeger/model/json``, the shape of its query API's ``/api/traces``):
``{"data": [trace, ...]}``; a trace has ``traceID``, ``spans``, ``processes`` and ``warnings``;
a span has hex ids, ``references`` (``CHILD_OF`` its parent), ``startTime`` and ``duration`` in
µs, typed ``tags`` and a ``processID``. Tags are what Jaeger itself shows for an OTLP span with
the same attributes and status (``otel.status_code``, ``error``, ``span.kind``, scope), so a
file and an OTLP export of the same recording look alike in the UI.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

from opentelemetry.semconv.attributes.otel_attributes import (
    OTEL_SCOPE_NAME,
    OTEL_SCOPE_VERSION,
    OTEL_STATUS_CODE,
    OTEL_STATUS_DESCRIPTION,
)
from opentelemetry.semconv.attributes.service_attributes import SERVICE_NAME

from startprof import __version__
from startprof.analysis.model import Analysis
from startprof.exporters import ExportSummary, TraceFileExporter, write_json
from startprof.exporters.spans import (
    SERVICE,
    AttributeValue,
    PodTrace,
    SpanDescription,
    describe,
    hex_span_id,
    hex_trace_id,
)

PROCESS_ID: Final = "p1"
"""One process per trace: a pod start is seen from one node."""
ERROR_TAG: Final = "error"
"""Jaeger's (OpenTracing's) error flag: the UI paints spans carrying ``error=true`` red."""
SPAN_KIND_TAG: Final = "span.kind"
SAMPLED: Final = 1


def micros(ns: int) -> int:
    """Wall-clock ns → µs, floored: floor keeps every child inside its parent after rounding."""
    return ns // 1000


def tag(key: str, value: AttributeValue) -> dict[str, Any]:
    """A typed Jaeger tag. Arrays have no Jaeger type: they become a JSON string, as Jaeger
    does when it receives them over OTLP."""
    if isinstance(value, bool):
        return {"key": key, "type": "bool", "value": value}
    if isinstance(value, int):
        return {"key": key, "type": "int64", "value": value}
    if isinstance(value, float):
        return {"key": key, "type": "float64", "value": value}
    if isinstance(value, str):
        return {"key": key, "type": "string", "value": value}
    return {"key": key, "type": "string", "value": json.dumps(list(value))}


def _tags(attributes: Mapping[str, AttributeValue]) -> list[dict[str, Any]]:
    return [tag(k, v) for k, v in attributes.items()]


def jaeger_span(span: SpanDescription) -> dict[str, Any]:
    trace_hex = hex_trace_id(span.trace_id)
    tags = _tags(span.attributes)
    tags.append(tag(OTEL_SCOPE_NAME, SERVICE))
    tags.append(tag(OTEL_SCOPE_VERSION, __version__))
    tags.append(tag(SPAN_KIND_TAG, "internal"))
    if span.error is not None:
        tags.append(tag(ERROR_TAG, True))
        tags.append(tag(OTEL_STATUS_CODE, "ERROR"))
        tags.append(tag(OTEL_STATUS_DESCRIPTION, span.error))
    references = (
        [{"refType": "CHILD_OF", "traceID": trace_hex, "spanID": hex_span_id(span.parent_span_id)}]
        if span.parent_span_id is not None
        else []
    )
    references += [
        {"refType": "FOLLOWS_FROM", "traceID": hex_trace_id(t), "spanID": hex_span_id(s)}
        for t, s in span.links
    ]
    start_us = micros(span.start_ns)
    return {
        "traceID": trace_hex,
        "spanID": hex_span_id(span.span_id),
        "flags": SAMPLED,
        "operationName": span.name,
        "references": references,
        "startTime": start_us,
        "duration": micros(span.end_ns) - start_us,
        "tags": tags,
        "logs": [],
        "processID": PROCESS_ID,
        "warnings": None,
    }


def jaeger_trace(pod_trace: PodTrace) -> dict[str, Any]:
    resource = dict(pod_trace.resource)
    service = resource.pop(SERVICE_NAME, SERVICE)
    return {
        "traceID": hex_trace_id(pod_trace.trace_id),
        "spans": [jaeger_span(s) for s in pod_trace.spans],
        "processes": {PROCESS_ID: {"serviceName": str(service), "tags": _tags(resource)}},
        "warnings": None,
    }


def jaeger_document(analysis: Analysis) -> dict[str, Any]:
    """``{"data": [one trace per pod start]}``, ready for ``json.dump``."""
    return {"data": [jaeger_trace(t) for t in describe(analysis)]}


def write_jaeger_json(analysis: Analysis, path: Path) -> ExportSummary:
    """Write the Jaeger JSON file of ``analysis`` to ``path``."""
    document = jaeger_document(analysis)
    write_json(document, path)
    spans = sum(len(t["spans"]) for t in document["data"])
    return ExportSummary(traces=len(document["data"]), spans=spans, target=str(path))


class JaegerJsonTraceExporter(TraceFileExporter):
    """``startprof export --jaeger-json``: the ``Exporter`` for a Jaeger JSON file."""

    hint = " (Jaeger UI: Search → JSON File)"

    def write(self, analysis: Analysis, path: Path) -> ExportSummary:
        return write_jaeger_json(analysis, path)
