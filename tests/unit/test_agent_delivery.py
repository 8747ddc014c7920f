"""The agent's trace delivery keeps what a receiver failed and sends it again: a real OTLP/gRPC
receiver that is down, then up."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from concurrent import futures
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

import grpc
from factories import web_pod
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from startprof import agent
from startprof.agent import TraceSink
from startprof.incremental import Emitted


class _Traces(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self) -> None:
        self.trace_ids: set[bytes] = set()

    def Export(
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: Any
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        for resource in request.resource_spans:
            for scope in resource.scope_spans:
                self.trace_ids.update(span.trace_id for span in scope.spans)
        return trace_service_pb2.ExportTraceServiceResponse()


@contextmanager
def _receiver(port: int) -> Iterator[_Traces]:
    traces = _Traces()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(traces, server)  # type: ignore[no-untyped-call]
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    try:
        yield traces
    finally:
        server.stop(grace=None)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _pods(n: int, first: int = 0) -> list[Emitted]:
    return [
        Emitted(replace(web_pod(), sandbox_id=f"{i:064x}", name=f"web-{i}"), "done", 0)
        for i in range(first, first + n)
    ]


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_what_a_receiver_failed_goes_again_in_order_once_it_is_up() -> None:
    port, clock = _free_port(), _Clock()
    sink = TraceSink(f"http://127.0.0.1:{port}", "grpc", clock=clock)
    try:
        sent, error = sink.deliver(_pods(2))  # nothing listens
        assert sent == [] and error is not None and "refused" in str(error)
        assert len(sink.waiting) == 2
        with _receiver(port) as traces:
            assert sink.deliver([]) == ([], None)  # its backoff has not passed
            clock.now += agent.RETRY_FIRST_S
            sent, error = sink.deliver([])
            assert error is None
            assert [e.pod.name for e in sent] == ["web-0", "web-1"]
            assert len(traces.trace_ids) == 2
            # the next ones go at once
            sent, error = sink.deliver(_pods(1, first=2))
            assert [e.pod.name for e in sent] == ["web-2"] and error is None
        assert sink.waiting == [] and sink.lost == 0
    finally:
        sink.close()


def test_at_most_unsent_max_wait_and_the_oldest_are_lost(monkeypatch: Any) -> None:
    monkeypatch.setattr(agent, "UNSENT_MAX", 3)
    port, clock = _free_port(), _Clock()
    sink = TraceSink(f"http://127.0.0.1:{port}", "grpc", clock=clock)
    try:
        sink.deliver(_pods(2))
        sink.deliver(_pods(2, first=2))  # new pods go at once, backoff or not, and fail
        assert [e.pod.name for e in sink.waiting] == ["web-1", "web-2", "web-3"]
        assert sink.lost == 1
        # the agent stops: a last export fails, and what waited is lost
        assert sink.deliver([], final=True)[0] == []
        assert sink.waiting == [] and sink.lost == 4
    finally:
        sink.close()
