"""OTLP export against real receivers: a grpcio server implementing
``opentelemetry.proto.collector.trace.v1.TraceService/Export`` and an HTTP server taking
``POST /v1/traces`` protobuf bodies, both on 127.0.0.1. No root needed; no fixture from outside.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import grpc
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from startprof.analysis.model import Analysis
from startprof.errors import ExportError
from startprof.exporters.otlp import export_otlp
from startprof.exporters.spans import describe, span_id_for, trace_id_for

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))
from factories import make_analysis

pytestmark = pytest.mark.usefixtures("clean_otlp_env")

HEADER = ("x-startprof-test", "pods on node-a")


@dataclass
class Received:
    """What a receiver got: parsed requests and each request's headers/metadata."""

    requests: list[trace_service_pb2.ExportTraceServiceRequest] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(
        self, request: trace_service_pb2.ExportTraceServiceRequest, headers: dict[str, str]
    ) -> None:
        with self.lock:
            self.requests.append(request)
            self.headers.append(headers)

    def clear(self) -> None:
        with self.lock:
            self.requests.clear()
            self.headers.clear()


@dataclass
class Receiver:
    url: str
    received: Received


class _TraceService(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, received: Received) -> None:
        self.received = received

    def Export(
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: Any
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        self.received.add(request, {k: v for k, v in context.invocation_metadata()})
        return trace_service_pb2.ExportTraceServiceResponse()


@pytest.fixture(scope="module")
def grpc_receiver() -> Iterator[Receiver]:
    received = Received()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(  # type: ignore[no-untyped-call]
        _TraceService(received), server
    )
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield Receiver(f"http://127.0.0.1:{port}", received)
    finally:
        server.stop(grace=None)


@pytest.fixture(scope="module")
def http_receiver() -> Iterator[Receiver]:
    received = Received()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            if self.path != "/v1/traces":
                self.send_error(404)
                return
            body = self.rfile.read(int(self.headers["Content-Length"]))
            request = trace_service_pb2.ExportTraceServiceRequest.FromString(body)
            received.add(request, {k.lower(): v for k, v in self.headers.items()})
            reply = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        def log_message(self, format: str, *args: Any) -> None:
            """Keep the test output quiet."""

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield Receiver(f"http://127.0.0.1:{server.server_address[1]}", received)
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(params=["grpc", "http/protobuf"])
def receiver(request: pytest.FixtureRequest) -> Iterator[tuple[str, Receiver]]:
    fixture = "grpc_receiver" if request.param == "grpc" else "http_receiver"
    chosen: Receiver = request.getfixturevalue(fixture)
    chosen.received.clear()
    yield request.param, chosen


def _dead_url() -> str:
    """A loopback port nothing listens on (bound, then released)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def _value(v: AnyValue) -> Any:
    kind = v.WhichOneof("value")
    assert kind is not None
    if kind == "array_value":
        return tuple(_value(x) for x in v.array_value.values)
    return getattr(v, kind)


def _attributes(kvs: Any) -> dict[str, Any]:
    items: list[KeyValue] = list(kvs)
    return {kv.key: _value(kv.value) for kv in items}


@dataclass(frozen=True)
class Got:
    span: Span
    resource: dict[str, Any]
    attributes: dict[str, Any]


def _spans(received: Received) -> list[Got]:
    out: list[Got] = []
    for request in received.requests:
        for rs in request.resource_spans:
            resource = _attributes(rs.resource.attributes)
            for ss in rs.scope_spans:
                assert ss.scope.name == "startprof"
                out.extend(Got(s, resource, _attributes(s.attributes)) for s in ss.spans)
    return out


def _export(protocol: str, rcv: Receiver, analysis: Analysis | None = None) -> list[Got]:
    rcv.received.clear()
    summary = export_otlp(analysis or make_analysis(), url=rcv.url, protocol=protocol)
    got = _spans(rcv.received)
    assert (summary.traces, summary.spans) == (3, len(got))
    return got


def test_one_trace_per_pod_and_every_parent_exists(receiver: tuple[str, Receiver]) -> None:
    protocol, rcv = receiver
    got = _export(protocol, rcv)
    traces: dict[bytes, list[Span]] = {}
    for g in got:
        traces.setdefault(g.span.trace_id, []).append(g.span)
    analysis = make_analysis()
    assert len(traces) == len(analysis.pods)
    assert set(traces) == {
        trace_id_for(p.host, p.sandbox_id).to_bytes(16, "big") for p in analysis.pods
    }
    for spans in traces.values():
        ids = {s.span_id for s in spans}
        roots = [s for s in spans if not s.parent_span_id]
        assert [r.name for r in roots] == ["pod"]
        assert all(s.parent_span_id in ids for s in spans if s.parent_span_id)


def test_names_times_attributes_and_status_equal_the_analysis(
    receiver: tuple[str, Receiver],
) -> None:
    protocol, rcv = receiver
    got = {(g.span.trace_id, g.span.span_id): g for g in _export(protocol, rcv)}
    analysis = make_analysis()
    described = {t.pod.sandbox_id: {s.phase_id: s for s in t.spans} for t in describe(analysis)}
    assert len(got) == sum(len(p.phases) for p in analysis.pods)
    for pod in analysis.pods:
        trace_id = trace_id_for(pod.host, pod.sandbox_id).to_bytes(16, "big")
        for phase in pod.phases:
            g = got[trace_id, span_id_for(pod.host, pod.sandbox_id, phase.id).to_bytes(8, "big")]
            span = g.span
            assert span.name == phase.name
            assert span.kind == Span.SPAN_KIND_INTERNAL
            assert (span.start_time_unix_nano, span.end_time_unix_nano) == (
                phase.start_ns,
                phase.end_ns,
            )
            if phase.parent_id is not None:
                parent_id = span_id_for(pod.host, pod.sandbox_id, phase.parent_id)
                assert span.parent_span_id == parent_id.to_bytes(8, "big")
            assert g.attributes == dict(described[pod.sandbox_id][phase.id].attributes)
            assert g.attributes["startprof.critical_path"] is phase.on_critical_path
            assert g.attributes["startprof.self_ms"] == round(phase.self_ns / 1e6, 3)
            assert g.attributes["k8s.pod.name"] == pod.name
            assert g.attributes["k8s.node.name"] == pod.host
            if "pid" in phase.attributes:
                assert g.attributes["process.pid"] == phase.attributes["pid"]
            if "argv" in phase.attributes:
                assert g.attributes["process.command_args"] == tuple(phase.attributes["argv"])
            assert g.resource["service.name"] == "startprof"
            assert g.resource["host.name"] == pod.host
            if phase.status == "error":
                assert span.status.code == Status.STATUS_CODE_ERROR
                assert span.status.message == phase.error
            else:
                assert span.status.code == Status.STATUS_CODE_UNSET
    bridge = got[
        trace_id_for("node-a", analysis.pods[1].sandbox_id).to_bytes(16, "big"),
        span_id_for("node-a", analysis.pods[1].sandbox_id, "sandbox/cni.add/bridge").to_bytes(
            8, "big"
        ),
    ]
    assert (bridge.span.status.code, bridge.span.status.message) == (
        Status.STATUS_CODE_ERROR,
        "exit code 1",
    )


def test_ids_are_identical_across_two_exports(receiver: tuple[str, Receiver]) -> None:
    protocol, rcv = receiver

    def ids() -> list[tuple[bytes, bytes, bytes]]:
        return sorted(
            (g.span.trace_id, g.span.span_id, g.span.parent_span_id) for g in _export(protocol, rcv)
        )

    assert ids() == ids()


def test_headers_from_the_environment_reach_the_receiver(
    receiver: tuple[str, Receiver], monkeypatch: pytest.MonkeyPatch
) -> None:
    protocol, rcv = receiver
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", f"{HEADER[0]}={HEADER[1]},x-tenant=lab")
    _export(protocol, rcv)
    assert rcv.received.headers
    for headers in rcv.received.headers:
        assert headers[HEADER[0]] == HEADER[1]
        assert headers["x-tenant"] == "lab"


def test_endpoint_and_protocol_from_the_environment(
    receiver: tuple[str, Receiver], monkeypatch: pytest.MonkeyPatch
) -> None:
    protocol, rcv = receiver
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", rcv.url)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", protocol)
    summary = export_otlp(make_analysis())
    assert summary.spans == len(_spans(rcv.received)) > 0
    assert summary.target.startswith(rcv.url)


@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
def test_a_dead_endpoint_fails_fast_with_one_line(protocol: str) -> None:
    url = _dead_url()
    started = time.monotonic()
    with pytest.raises(ExportError) as caught:
        export_otlp(make_analysis(), url=url, protocol=protocol)
    assert time.monotonic() - started < 10
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"OTLP export to {url}")
    assert "connection refused by 127.0.0.1:" in message


def test_cli_sends_and_reports(
    grpc_receiver: Receiver, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from startprof.cli import cli, main
    from startprof.cli.export import export_command

    monkeypatch.setattr("startprof.pipeline.analyze_files", lambda *a, **k: make_analysis())
    added = "export" not in cli.commands
    if added:
        cli.add_command(export_command)
    grpc_receiver.received.clear()
    try:
        assert main(["export", "pods.arrows", "--otlp", grpc_receiver.url]) == 0
        dead = _dead_url()
        assert (
            main(["export", "pods.arrows", "--otlp", dead, "--otlp-protocol", "http/protobuf"]) == 1
        )
    finally:
        if added:
            cli.commands.pop("export")
    spans = len(_spans(grpc_receiver.received))
    out, err = capsys.readouterr()
    assert out == f"sent 3 traces ({spans} spans) to {grpc_receiver.url} over OTLP/gRPC\n"
    assert err.startswith(f"startprof: OTLP export to {dead}/v1/traces over OTLP/HTTP failed: ")
    assert err.count("\n") == 1


RECORDINGS = Path(__file__).resolve().parents[1] / "data" / "recordings"


def _kubelet_context(phase: dict[str, Any]) -> tuple[int, int, bool] | None:
    """(trace id, span id, sampled) of the kubelet's traceparent on a phase of `analyze --json`."""
    raw = phase.get("attributes", {}).get("traceparent")
    if not raw:
        return None
    _, trace, span, flags = raw.split("-")
    return int(trace, 16), int(span, 16), bool(int(flags, 16) & 1)


def test_stored_recordings_export_as_their_analysis(
    receiver: tuple[str, Receiver], capsys: pytest.CaptureFixture[str]
) -> None:
    """The real recordings through the CLI: one trace per pod, every parent present, and names,
    times and statuses equal to what `analyze --json` says."""
    import json

    from startprof.cli import main

    protocol, rcv = receiver
    files = [str(p) for p in sorted(RECORDINGS.glob("*.arrows"))]
    assert main(["analyze", "--json", *files]) == 0
    doc = json.loads(capsys.readouterr().out)
    rcv.received.clear()
    assert main(["export", *files, "--otlp", rcv.url, "--otlp-protocol", protocol]) == 0
    spans = [g.span for g in _spans(rcv.received)]
    by_trace: dict[bytes, dict[bytes, Span]] = {}
    for span in spans:
        by_trace.setdefault(span.trace_id, {})[span.span_id] = span
    assert len(by_trace) == len(doc["pods"]) >= 12
    for pod in doc["pods"]:
        # a pod whose RunPodSandbox carried the kubelet's sampled trace context joins its trace
        # (a pod seen mid-start may have no sandbox phase)
        sandbox = next((p for p in pod["phases"] if p["name"] == "sandbox"), None)
        joined = None if sandbox is None else _kubelet_context(sandbox)
        trace_id = trace_id_for(pod["host"], pod["sandbox_id"])
        if joined is not None and joined[2]:
            trace_id = joined[0]
        trace = by_trace[trace_id.to_bytes(16, "big")]
        assert len(trace) == len(pod["phases"])
        for phase in pod["phases"]:
            span = trace[
                span_id_for(pod["host"], pod["sandbox_id"], phase["id"]).to_bytes(8, "big")
            ]
            assert span.name == phase["name"]
            assert (span.start_time_unix_nano, span.end_time_unix_nano) == (
                phase["start_wall_ns"],
                phase["end_wall_ns"],
            )
            context = _kubelet_context(phase)
            if context is not None and context[2] and context[0] == trace_id:
                assert span.parent_span_id == context[1].to_bytes(8, "big")
            elif phase["parent_id"] is None:
                assert not span.parent_span_id
            else:
                assert span.parent_span_id in trace
            expected = (
                Status.STATUS_CODE_ERROR if phase["status"] == "error" else Status.STATUS_CODE_UNSET
            )
            assert span.status.code == expected
