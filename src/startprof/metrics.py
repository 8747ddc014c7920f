"""The agent's OpenTelemetry metrics: pod-start and phase histograms, the recorder's own cost.

One ``MeterProvider`` with up to two readers: a periodic OTLP exporter (the traces' endpoint,
protocol, headers and TLS, from the same ``OTEL_EXPORTER_OTLP_*`` rules) and, with
``--metrics-port``, the Prometheus exporter's scrape endpoint. Instruments:

- ``startprof.pod.start.duration`` (s): one observation per pod start sent;
- ``startprof.phase.duration`` and ``startprof.phase.critical.duration`` (s): per pod start and
  phase kind (``cni.plugin``, ``runtime.create``, ...), the phase's total time and the time it
  held the critical path; all three labelled ``startprof.runtime_handler``,
  ``k8s.namespace.name`` and ``startprof.pod.status``;
- counters: ``startprof.pods`` (pod starts sent), ``startprof.drops`` (ring buffer records lost),
  ``startprof.kernel.errors`` (other in-kernel losses, by kind), ``startprof.cri.lost_bytes``
  (CRI bytes that moved on the socket and never reached the decoder),
  ``startprof.cri.unnamed_calls`` (calls on aged connections that could not be named),
  ``startprof.export.failures`` and ``startprof.recorder.cpu.time`` (s, user + system).
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Final

from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    MetricExporter,
    MetricReader,
    PeriodicExportingMetricReader,
)
from opentelemetry.sdk.metrics.view import ExplicitBucketHistogramAggregation, View
from opentelemetry.sdk.resources import Resource
from opentelemetry.semconv.attributes.k8s_attributes import K8S_NAMESPACE_NAME

from startprof import __version__
from startprof.analysis.model import Pod
from startprof.exporters.otlp import OtlpProtocol
from startprof.exporters.spans import POD_STATUS, resource_attributes

POD_START: Final = "startprof.pod.start.duration"
PHASE_TOTAL: Final = "startprof.phase.duration"
PHASE_CRITICAL: Final = "startprof.phase.critical.duration"
RUNTIME_HANDLER: Final = "startprof.runtime_handler"
PHASE_KIND: Final = "startprof.phase"
KERNEL_ERROR: Final = "startprof.kernel_error"
CRI_LOST_BYTES: Final = "startprof.cri.lost_bytes"
BUCKETS_S: Final = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
)
"""Pod starts run from tens of ms (a warm pod) to minutes (a pull); phases from µs up."""
EXPORT_INTERVAL_MS: Final = 10_000


class AgentMetrics:
    """The instruments; ``observe`` each pod start sent, ``shutdown`` exports what is left."""

    def __init__(self, host: str, readers: Sequence[MetricReader]) -> None:
        self._drops = 0
        self._unnamed = 0
        self._kernel_errors: dict[str, int] = {}
        self._cri_bytes_lost = 0
        buckets = ExplicitBucketHistogramAggregation(boundaries=BUCKETS_S)
        self.provider = MeterProvider(
            metric_readers=list(readers),
            resource=Resource.create(resource_attributes(host)),
            views=[View(instrument_name="startprof.*.duration", aggregation=buckets)],
            shutdown_on_exit=False,
        )
        meter = self.provider.get_meter("startprof", __version__)
        self.pod_start = meter.create_histogram(POD_START, unit="s", description="Pod start")
        self.phase_total = meter.create_histogram(
            PHASE_TOTAL, unit="s", description="Time in a phase kind, per pod start"
        )
        self.phase_critical = meter.create_histogram(
            PHASE_CRITICAL,
            unit="s",
            description="Time a phase kind held the critical path, per pod start",
        )
        self.pods = meter.create_counter("startprof.pods", description="Pod starts sent")
        self.export_failures = meter.create_counter(
            "startprof.export.failures", description="Trace exports that failed"
        )
        meter.create_observable_counter(
            "startprof.drops",
            [self._observe_drops],
            description="Ring buffer records lost (the kernel could not reserve space)",
        )
        meter.create_observable_counter(
            "startprof.kernel.errors",
            [self._observe_kernel_errors],
            description="Other in-kernel losses, by kind: a full follow or pairing map, "
            "failed reads of user memory (CRI bytes lost among them)",
        )
        meter.create_observable_counter(
            CRI_LOST_BYTES,
            [self._observe_cri_bytes_lost],
            unit="By",
            description="CRI bytes read or written on the socket that never reached the "
            "decoder: unreadable user memory, past the chunk limit, or no room in the ring buffer",
        )
        meter.create_observable_counter(
            "startprof.cri.unnamed_calls",
            [self._observe_unnamed],
            description="CRI calls on aged connections the analysis could not name",
        )
        meter.create_observable_counter(
            "startprof.recorder.cpu.time",
            [_observe_cpu],
            unit="s",
            description="CPU time of the agent (user + system)",
        )

    def set_drops(self, total: int) -> None:
        self._drops = total

    def set_kernel_errors(self, errors: dict[str, int]) -> None:
        self._kernel_errors = dict(errors)

    def set_cri_bytes_lost(self, total: int) -> None:
        self._cri_bytes_lost = total

    def add_unnamed(self, n: int) -> None:
        self._unnamed += n

    def observe(self, pods: Iterable[Pod]) -> None:
        for pod in pods:
            labels = {
                RUNTIME_HANDLER: pod.runtime_handler or "",
                K8S_NAMESPACE_NAME: pod.namespace or "",
                POD_STATUS: pod.status,
            }
            self.pod_start.record(pod.duration_ns / 1e9, labels)
            self.pods.add(1, labels)
            total: dict[str, int] = defaultdict(int)
            critical: dict[str, int] = defaultdict(int)
            for phase in pod.phases[1:]:
                total[phase.kind] += phase.duration_ns
                critical[phase.kind] += phase.self_ns
            for kind, ns in total.items():
                with_kind = {**labels, PHASE_KIND: kind}
                self.phase_total.record(ns / 1e9, with_kind)
                self.phase_critical.record(critical[kind] / 1e9, with_kind)

    def shutdown(self) -> None:
        self.provider.shutdown()

    def _observe_drops(self, _options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(self._drops)]

    def _observe_kernel_errors(self, _options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(n, {KERNEL_ERROR: k}) for k, n in sorted(self._kernel_errors.items())]

    def _observe_cri_bytes_lost(self, _options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(self._cri_bytes_lost)]

    def _observe_unnamed(self, _options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(self._unnamed)]


def _observe_cpu(_options: CallbackOptions) -> Iterable[Observation]:
    t = os.times()
    return [Observation(t.user + t.system)]


def otlp_metric_reader(
    protocol: OtlpProtocol, traces_endpoint: str, interval_ms: int = EXPORT_INTERVAL_MS
) -> MetricReader:
    """A periodic OTLP metric reader for the endpoint the traces go to (``/v1/metrics`` in
    place of ``/v1/traces`` over HTTP); headers and TLS come from ``OTEL_EXPORTER_OTLP_*``."""
    exporter: MetricExporter
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import (
            OTLPMetricExporter as GrpcMetricExporter,
        )

        exporter = GrpcMetricExporter(endpoint=traces_endpoint, timeout=5)
    else:
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import (
            OTLPMetricExporter as HttpMetricExporter,
        )

        endpoint = traces_endpoint.removesuffix("/v1/traces") + "/v1/metrics"
        exporter = HttpMetricExporter(endpoint=endpoint, timeout=5)
    return PeriodicExportingMetricReader(exporter, export_interval_millis=interval_ms)


def prometheus_reader(port: int, addr: str = "0.0.0.0") -> MetricReader:
    """The Prometheus exporter's reader, served at ``http://<addr>:<port>/metrics``."""
    from opentelemetry.exporter.prometheus import PrometheusMetricReader
    from prometheus_client import start_http_server

    start_http_server(port, addr=addr)
    return PrometheusMetricReader()
