"""`startprof agent --otlp URL` beside `lab run --pods 20 --concurrency 4` (issue 18's acceptance):
a real OTLP/gRPC receiver (traces and metrics services on grpcio) gets one trace per pod, each
streamed while the pods run (the latency after its pod's last StartContainer reply in the lab's
truth is printed against the 2 s target; on a loaded 2-core machine it is a figure, not an
assertion), with the spans `export`
gives for the agent's own --keep recording of the same pods; the pod-start histogram counts 20;
SIGTERM exits 0 and leaves no probe in the kernel.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
import pytest
from opentelemetry.proto.collector.metrics.v1 import (
    metrics_service_pb2,
    metrics_service_pb2_grpc,
)
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from test_reliability import tracepoint_programs

from startprof.exporters.spans import describe
from startprof.lab.truth import read_truth
from startprof.pipeline import analyze_files

if TYPE_CHECKING:
    from conftest import RunningLab

pytestmark = pytest.mark.usefixtures("clean_otlp_env")

STARTPROF = [sys.executable, "-m", "startprof"]
RUN_POD_SANDBOX = "/runtime.v1.RuntimeService/RunPodSandbox"
START_CONTAINER = "/runtime.v1.RuntimeService/StartContainer"
PODS = 20
LATENCY_S = 2.0
"""Issue 18's target, reported here; a figure on a loaded 2-core machine, not an assertion."""
STREAMED_S = 10.0
"""What the test holds the agent to: a trace streamed while the pods run, not at shutdown."""
AGENT_FLAGS: list[str] = []


@dataclass
class Received:
    spans: dict[tuple[bytes, bytes], tuple[str, int, int]] = field(default_factory=dict)
    first_seen_ns: dict[bytes, int] = field(default_factory=dict)
    """trace id -> wall ns the receiver first got a span of it."""
    metrics: list[metrics_service_pb2.ExportMetricsServiceRequest] = field(default_factory=list)
    span_attrs: dict[tuple[bytes, bytes], dict[str, str]] = field(default_factory=dict)
    """(trace id, span id) -> the span's string attributes."""
    resources: dict[bytes, dict[str, str]] = field(default_factory=dict)
    """trace id -> its resource's string attributes."""
    lock: threading.Lock = field(default_factory=threading.Lock)


def _strings(attributes: Any) -> dict[str, str]:
    return {a.key: a.value.string_value for a in attributes if a.value.HasField("string_value")}


class _Traces(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, received: Received) -> None:
        self.received = received

    def Export(
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: Any
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        now = time.time_ns()
        with self.received.lock:
            for rs in request.resource_spans:
                resource = _strings(rs.resource.attributes)
                for ss in rs.scope_spans:
                    for s in ss.spans:
                        self.received.first_seen_ns.setdefault(s.trace_id, now)
                        self.received.resources[s.trace_id] = resource
                        key = (s.trace_id, s.span_id)
                        self.received.span_attrs[key] = _strings(s.attributes)
                        self.received.spans[key] = (
                            s.name,
                            s.start_time_unix_nano,
                            s.end_time_unix_nano,
                        )
        return trace_service_pb2.ExportTraceServiceResponse()


class _Metrics(metrics_service_pb2_grpc.MetricsServiceServicer):
    def __init__(self, received: Received) -> None:
        self.received = received

    def Export(
        self, request: metrics_service_pb2.ExportMetricsServiceRequest, context: Any
    ) -> metrics_service_pb2.ExportMetricsServiceResponse:
        with self.received.lock:
            self.received.metrics.append(request)
        return metrics_service_pb2.ExportMetricsServiceResponse()


@pytest.fixture
def receiver() -> Iterator[tuple[str, Received]]:
    received = Received()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(  # type: ignore[no-untyped-call]
        _Traces(received), server
    )
    metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(  # type: ignore[no-untyped-call]
        _Metrics(received), server
    )
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"http://127.0.0.1:{port}", received
    finally:
        server.stop(grace=None)


def _id(value: int, size: int) -> bytes:
    return value.to_bytes(size, "big")


def _pod_start_count(requests: list[metrics_service_pb2.ExportMetricsServiceRequest]) -> int:
    """Observations of the pod-start histogram in the last export (cumulative temporality)."""
    counts = [
        sum(p.count for p in m.histogram.data_points)
        for r in requests
        for rm in r.resource_metrics
        for sm in rm.scope_metrics
        for m in sm.metrics
        if m.name == "startprof.pod.start.duration"
    ]
    return counts[-1] if counts else 0


def test_agent_streams_each_pod_start_as_it_ends(
    lab: RunningLab, receiver: tuple[str, Received], tmp_path: Path
) -> None:
    url, received = receiver
    keep, truth_path, log = tmp_path / "keep", tmp_path / "truth.jsonl", tmp_path / "agent.log"
    env = {**os.environ, "STARTPROF_LAB_DIR": str(lab.paths.root)}
    before = tracepoint_programs()
    with log.open("w") as err:
        agent = subprocess.Popen(
            [
                *STARTPROF,
                "agent",
                "--otlp",
                url,
                "--cri-socket",
                lab.socket,
                "--keep",
                str(keep),
                *AGENT_FLAGS,
            ],
            env=env,
            stderr=err,
        )
    try:
        deadline = time.monotonic() + 60
        while "agent following" not in log.read_text():  # the probes are attached
            assert agent.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "the agent never became ready"
            time.sleep(0.2)
        run = subprocess.run(
            [
                *STARTPROF,
                "lab",
                "run",
                "--dir",
                str(lab.paths.root),
                "--pods",
                str(PODS),
                "--concurrency",
                "4",
                "--truth",
                str(truth_path),
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert run.returncode == 0, run.stderr
        truth = read_truth(truth_path)
        sandboxes = {t["sandbox_id"] for t in truth if t["method"] == RUN_POD_SANDBOX}
        assert len(sandboxes) == PODS
        deadline = time.monotonic() + 10
        while len(received.first_seen_ns) < PODS and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        stopped_ns = time.time_ns()
        agent.send_signal(signal.SIGTERM)
        code = agent.wait(timeout=60)
    assert code == 0, log.read_text()
    assert tracepoint_programs() - before == set(), "probes left in the kernel"
    print(log.read_text().splitlines()[-1])  # the agent's own figures: latency, analyses

    # the same spans as `export` gives for a recording of the same pods
    analysis = analyze_files(sorted(keep.glob("*.arrows")))
    expected = {
        (d.trace_id.to_bytes(16, "big"), d.span_id.to_bytes(8, "big")): (
            d.name,
            d.start_ns,
            d.end_ns,
        )
        for t in describe(analysis)
        for d in t.spans
        if t.pod.sandbox_id in sandboxes
    }
    got = {k: v for k, v in received.spans.items() if k[0] in {t for t, _ in expected}}
    assert len({t for t, _ in got}) == PODS
    assert got == expected

    # each trace streamed soon after its pod's last StartContainer reply, before the SIGTERM
    by_trace = {
        _id(t.trace_id, 16): t.pod.sandbox_id
        for t in describe(analysis)
        if t.pod.sandbox_id in sandboxes
    }
    latency = {}
    for trace_id, sandbox_id in by_trace.items():
        last_start = max(
            t["end_wall_ns"]
            for t in truth
            if t["sandbox_id"] == sandbox_id and t["method"] == START_CONTAINER
        )
        assert received.first_seen_ns[trace_id] < stopped_ns, "sent only at shutdown"
        latency[sandbox_id[:12]] = (received.first_seen_ns[trace_id] - last_start) / 1e9
    ranked = sorted(latency.values())
    print(
        f"agent latency after the last StartContainer: median {ranked[len(ranked) // 2]:.2f}s, "
        f"max {ranked[-1]:.2f}s, {sum(v <= LATENCY_S for v in ranked)}/{len(ranked)} "
        f"within {LATENCY_S:g}s"
    )
    late = {k: round(v, 3) for k, v in latency.items() if not 0 < v <= STREAMED_S}
    assert late == {}, f"traces not streamed within {STREAMED_S}s: {late}"

    assert _pod_start_count(received.metrics) == PODS
