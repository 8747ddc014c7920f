"""OTLP export through opentelemetry-sdk: gRPC or HTTP/protobuf, one trace per pod start.

Two roles, two small classes (as in the SDK's ``sdk/trace/export``):

- ``SdkSpanBuilder`` turns span descriptions into the SDK's finished spans. It drives a real
  ``TracerProvider`` (Resource ``service.name=startprof`` + ``host.name``, one provider per node)
  with explicit start and end times; ids come from the mapping through ``PlannedIdGenerator``,
  the SDK's own extension point for ids. We chose this over constructing ``ReadableSpan``
  objects by hand because the SDK documents that constructor as internal ("users should NOT be
  creating these objects directly"), while the tracer path keeps the SDK's own attribute
  validation and limits, status rules and sampled flags, and the span processor hand-off is the
  SDK's ``InMemorySpanExporter``.
- ``OtlpTraceSender`` sends finished spans with an OTLP exporter and checks every result. The
  spans do not go through a span processor to the network: a processor drops the exporter's
  result, and "the endpoint does not answer" must become one clear error.

Endpoints, headers, TLS (``*_INSECURE``, ``*_CERTIFICATE``) and protocol follow the standard
``OTEL_EXPORTER_OTLP_[TRACES_]*`` variables; an explicit URL wins. The SDK's exporters retry
with backoff until their timeout: it is bounded here (``DEFAULT_TIMEOUT_S``) so a dead endpoint
fails within seconds.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Final, Literal, cast, get_args
from urllib.parse import urlsplit

from opentelemetry import context as otel_context
from opentelemetry import trace as trace_api
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.id_generator import IdGenerator
from opentelemetry.sdk.trace.sampling import ALWAYS_ON
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, Status, StatusCode

from startprof import __version__
from startprof.analysis.model import Analysis
from startprof.errors import ExportError, InputError
from startprof.exporters import ExportSummary
from startprof.exporters.spans import PodTrace, SpanDescription, describe

OtlpProtocol = Literal["grpc", "http/protobuf"]
PROTOCOLS: Final[tuple[str, ...]] = get_args(OtlpProtocol)

DEFAULT_GRPC_ENDPOINT: Final = "http://localhost:4317"
DEFAULT_HTTP_ENDPOINT: Final = "http://localhost:4318"
TRACES_PATH: Final = "/v1/traces"
DEFAULT_TIMEOUT_S: Final = 5.0
BATCH_SPANS: Final = 512
"""Spans per export request: the SDK's batch size, far below a collector's 4 MiB request cap."""

ENV_ENDPOINT: Final = "OTEL_EXPORTER_OTLP_ENDPOINT"
ENV_TRACES_ENDPOINT: Final = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
ENV_PROTOCOL: Final = "OTEL_EXPORTER_OTLP_PROTOCOL"
ENV_TRACES_PROTOCOL: Final = "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"
ENV_INSECURE: Final = "OTEL_EXPORTER_OTLP_INSECURE"
ENV_CERTIFICATE: Final = "OTEL_EXPORTER_OTLP_CERTIFICATE"
ENV_TRACES_CERTIFICATE: Final = "OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE"
ENV_TRACES_INSECURE: Final = "OTEL_EXPORTER_OTLP_TRACES_INSECURE"

_SDK_EXPORTER_LOGGER: Final = "opentelemetry.exporter"
_PROBE_TIMEOUT_S: Final = 1.0
_MAX_REASON: Final = 200


class PlannedIdGenerator(IdGenerator):
    """Hands the SDK's tracer the ids the mapping derived, one span at a time.

    The tracer asks for a trace id only for a root span and for exactly one span id per span;
    ``SdkSpanBuilder`` plans both before each ``start_span`` and checks the span got them.
    """

    def __init__(self) -> None:
        self._trace_id: int | None = None
        self._span_id: int | None = None

    def plan(self, trace_id: int, span_id: int) -> None:
        self._trace_id, self._span_id = trace_id, span_id

    def generate_trace_id(self) -> int:
        value, self._trace_id = self._trace_id, None
        if value is None:
            raise RuntimeError("the tracer asked for an unplanned trace id")
        return value

    def generate_span_id(self) -> int:
        value, self._span_id = self._span_id, None
        if value is None:
            raise RuntimeError("the tracer asked for an unplanned span id")
        return value


class SdkSpanBuilder:
    """Span descriptions → the SDK's ``ReadableSpan`` objects, through a ``TracerProvider``."""

    def build(self, traces: Sequence[PodTrace]) -> list[ReadableSpan]:
        spans: list[ReadableSpan] = []
        by_host: dict[str, list[PodTrace]] = {}
        for pod_trace in traces:
            by_host.setdefault(pod_trace.host, []).append(pod_trace)
        for host_traces in by_host.values():
            spans.extend(self._build_host(host_traces))
        return spans

    def _build_host(self, traces: Sequence[PodTrace]) -> tuple[ReadableSpan, ...]:
        ids = PlannedIdGenerator()
        collected = InMemorySpanExporter()
        provider = TracerProvider(
            # every pod start is exported: a sampler from OTEL_TRACES_SAMPLER would drop some
            sampler=ALWAYS_ON,
            # Resource.create also merges OTEL_RESOURCE_ATTRIBUTES (e.g. k8s.cluster.name)
            resource=Resource.create(dict(traces[0].resource)),
            id_generator=ids,
            shutdown_on_exit=False,
        )
        provider.add_span_processor(SimpleSpanProcessor(collected))
        tracer = provider.get_tracer("startprof", __version__)
        try:
            for pod_trace in traces:
                for description in pod_trace.spans:
                    self._emit(tracer, ids, description)
            return collected.get_finished_spans()
        finally:
            provider.shutdown()

    @staticmethod
    def _emit(tracer: trace_api.Tracer, ids: PlannedIdGenerator, d: SpanDescription) -> None:
        # an empty Context, not the current one: a root must not attach to a caller's active span
        parent_context = otel_context.Context()
        if d.parent_span_id is not None:
            parent = SpanContext(
                d.trace_id,
                d.parent_span_id,
                is_remote=False,
                trace_flags=trace_api.TraceFlags(trace_api.TraceFlags.SAMPLED),
            )
            parent_context = trace_api.set_span_in_context(NonRecordingSpan(parent))
        ids.plan(d.trace_id, d.span_id)
        links = [
            trace_api.Link(SpanContext(trace_id, span_id, is_remote=True))
            for trace_id, span_id in d.links
        ]
        span = tracer.start_span(
            d.name,
            context=parent_context,
            kind=SpanKind.INTERNAL,
            attributes=dict(d.attributes),
            links=links,
            start_time=d.start_ns,
        )
        if not span.is_recording():
            raise ExportError(
                "the OpenTelemetry SDK is disabled: nothing to export",
                fix="unset OTEL_SDK_DISABLED",
            )
        got = span.get_span_context()
        if (got.trace_id, got.span_id) != (d.trace_id, d.span_id):
            raise RuntimeError("the SDK's tracer did not use the planned ids")
        if d.error is not None:
            span.set_status(Status(StatusCode.ERROR, d.error))
        span.end(end_time=d.end_ns)


class OtlpTraceSender:
    """Sends finished spans through one ``SpanExporter``, in batches, and checks each result."""

    def __init__(
        self, exporter: SpanExporter, target: str, address: tuple[str, int] | None = None
    ) -> None:
        self._exporter = exporter
        self.target = target
        self.address = address
        """(host, port) to probe when an export fails, to say why in plain words."""

    def send(self, spans: Sequence[ReadableSpan]) -> None:
        with _sdk_exporter_errors() as errors:
            for start in range(0, len(spans), BATCH_SPANS):
                result = self._exporter.export(spans[start : start + BATCH_SPANS])
                if result is not SpanExportResult.SUCCESS:
                    sent = f" after {start} of {len(spans)} spans" if start else ""
                    raise ExportError(
                        f"OTLP export to {self.target} failed{sent}: {self._reason(errors)}",
                        fix="is an OTLP receiver (Jaeger, an OpenTelemetry Collector) "
                        "listening there? Set --otlp URL or OTEL_EXPORTER_OTLP_ENDPOINT",
                    )

    def _reason(self, sdk_messages: Sequence[str]) -> str:
        """Why the export failed, in a few words: the connection's fate when there is none,
        else the SDK exporter's last message (an HTTP status, a gRPC code, a TLS error)."""
        if self.address is not None:
            try:
                socket.create_connection(self.address, timeout=_PROBE_TIMEOUT_S).close()
            except ConnectionRefusedError:
                return f"connection refused by {self.address[0]}:{self.address[1]}"
            except TimeoutError:
                return f"no answer from {self.address[0]}:{self.address[1]}"
            except OSError as exc:
                return f"cannot connect to {self.address[0]}:{self.address[1]}: {exc.strerror}"
        if not sdk_messages:
            return "the exporter gave no reason"
        last = sdk_messages[-1]
        return last if len(last) <= _MAX_REASON else last[: _MAX_REASON - 3] + "..."


@contextmanager
def _sdk_exporter_errors() -> Iterator[list[str]]:
    """Collect the SDK exporters' log lines instead of letting them reach stderr.

    Their retries log a warning per attempt and a traceback-like error at the end; the CLI
    prints one line instead, built from the last of these.
    """
    messages: list[str] = []

    class _Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            messages.append((record.getMessage().splitlines() or [""])[0])

    logger = logging.getLogger(_SDK_EXPORTER_LOGGER)
    handler = _Collect(logging.WARNING)
    saved = logger.propagate
    logger.addHandler(handler)
    logger.propagate = False
    try:
        yield messages
    finally:
        logger.removeHandler(handler)
        logger.propagate = saved


def resolve_protocol(protocol: str | None = None) -> OtlpProtocol:
    """``protocol``, else ``OTEL_EXPORTER_OTLP_TRACES_PROTOCOL``/``..._PROTOCOL``, else gRPC."""
    chosen = (
        protocol or os.environ.get(ENV_TRACES_PROTOCOL) or os.environ.get(ENV_PROTOCOL) or "grpc"
    ).strip()
    if chosen not in PROTOCOLS:
        raise InputError(
            f"unsupported OTLP protocol {chosen!r}",
            fix=f"use one of {', '.join(PROTOCOLS)}",
        )
    return cast(OtlpProtocol, chosen)


def resolve_endpoint(protocol: OtlpProtocol, url: str | None = None) -> str:
    """The endpoint the SDK exporter is given, by the OTLP exporter rules.

    ``url`` wins; a bare ``host:port`` means plain ``http://`` (``https://`` for gRPC when
    ``OTEL_EXPORTER_OTLP_[TRACES_]INSECURE=false``). For HTTP a URL without a path
    gets ``/v1/traces``. Without ``url``: ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` as is, else
    ``OTEL_EXPORTER_OTLP_ENDPOINT`` (plus ``/v1/traces`` for HTTP), else localhost:4317 (gRPC)
    or localhost:4318/v1/traces (HTTP).
    """
    if url:
        full = _checked(url if "://" in url else f"{_bare_scheme(protocol)}://{url}", "--otlp")
        if protocol == "http/protobuf" and urlsplit(full).path in ("", "/"):
            full = full.rstrip("/") + TRACES_PATH
        return full
    if signal := os.environ.get(ENV_TRACES_ENDPOINT):
        return _checked(signal, ENV_TRACES_ENDPOINT)
    base = os.environ.get(ENV_ENDPOINT)
    if base:
        _checked(base, ENV_ENDPOINT)
    if protocol == "grpc":
        return base or DEFAULT_GRPC_ENDPOINT
    return (base or DEFAULT_HTTP_ENDPOINT).rstrip("/") + TRACES_PATH


def _bare_scheme(protocol: OtlpProtocol) -> str:
    """The scheme of a ``host:port`` URL: plain HTTP, unless gRPC is asked to be secure with
    ``OTEL_EXPORTER_OTLP_[TRACES_]INSECURE=false`` (the variable's meaning for such URLs)."""
    insecure = os.environ.get(ENV_TRACES_INSECURE) or os.environ.get(ENV_INSECURE)
    if protocol == "grpc" and insecure is not None and insecure.strip().lower() == "false":
        return "https"
    return "http"


def _checked(endpoint: str, source: str) -> str:
    """The endpoint, if the SDK exporters can parse it; else one clear InputError (they would
    raise a bare ValueError from deep inside urllib)."""
    fix = "give a URL like http://localhost:4317 or https://collector.example.com:4317"
    try:
        parts = urlsplit(endpoint)
        _ = parts.port  # parses the port: "host:notaport" raises here
    except ValueError as exc:
        raise InputError(f"bad OTLP endpoint {endpoint!r} from {source}: {exc}", fix=fix) from None
    if "://" in endpoint and (parts.scheme not in ("http", "https") or not parts.hostname):
        raise InputError(
            f"bad OTLP endpoint {endpoint!r} from {source}: need http:// or https:// and a host",
            fix=fix,
        )
    return endpoint


def _address(endpoint: str) -> tuple[str, int] | None:
    parts = urlsplit(endpoint)
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        return None
    return (parts.hostname, port) if parts.hostname else None


def make_span_exporter(
    protocol: OtlpProtocol, endpoint: str, timeout_s: float = DEFAULT_TIMEOUT_S
) -> SpanExporter:
    """The SDK's OTLP span exporter for ``protocol``; it reads headers and TLS settings from
    ``OTEL_EXPORTER_OTLP_[TRACES_]{HEADERS,INSECURE,CERTIFICATE,...}`` itself."""
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
            OTLPSpanExporter as GrpcSpanExporter,
        )

        return GrpcSpanExporter(endpoint=endpoint, timeout=timeout_s)
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
        OTLPSpanExporter as HttpSpanExporter,
    )

    if os.environ.get(ENV_TRACES_CERTIFICATE) or os.environ.get(ENV_CERTIFICATE):
        return HttpSpanExporter(endpoint=endpoint, timeout=timeout_s, session=_ca_pinned_session())
    return HttpSpanExporter(endpoint=endpoint, timeout=timeout_s)


def _ca_pinned_session() -> Any:
    """A requests session that keeps the CA bundle the SDK gives it.

    requests replaces a session's ``verify`` with ``$REQUESTS_CA_BUNDLE``/``$CURL_CA_BUNDLE``
    on every request when those are set (as on many hosts), so the certificate named by
    ``OTEL_EXPORTER_OTLP_[TRACES_]CERTIFICATE`` would silently not be used.
    """
    import requests

    class CaPinnedSession(requests.Session):
        def merge_environment_settings(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
            merged: dict[str, Any] = super().merge_environment_settings(*args, **kwargs)
            merged["verify"] = self.verify
            return merged

    return CaPinnedSession()


class OtlpTraceExporter:
    """``startprof export --otlp``: the ``Exporter`` for an OTLP endpoint."""

    verb = "sent"
    hint = ""

    def __init__(self, url: str | None = None, protocol: str | None = None) -> None:
        self.url = url
        self.protocol = protocol

    def export(self, analysis: Analysis) -> ExportSummary:
        return export_otlp(analysis, url=self.url, protocol=self.protocol)


def export_otlp(
    analysis: Analysis,
    *,
    url: str | None = None,
    protocol: str | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    exporter: SpanExporter | None = None,
) -> ExportSummary:
    """Send one trace per pod start over OTLP; raise ``ExportError`` if the endpoint refuses.

    ``exporter`` replaces the OTLP exporter (tests pass the SDK's ``InMemorySpanExporter``).
    """
    traces = describe(analysis)
    spans = SdkSpanBuilder().build(traces)
    if exporter is not None:
        target = type(exporter).__name__
        OtlpTraceSender(exporter, target).send(spans)
        return ExportSummary(traces=len(traces), spans=len(spans), target=target)
    chosen = resolve_protocol(protocol)
    endpoint = resolve_endpoint(chosen, url)
    target = f"{endpoint} over OTLP/{'gRPC' if chosen == 'grpc' else 'HTTP'}"
    if spans:
        owned = make_span_exporter(chosen, endpoint, timeout_s)
        try:
            OtlpTraceSender(owned, target, _address(endpoint)).send(spans)
        finally:
            owned.shutdown()
    return ExportSummary(traces=len(traces), spans=len(spans), target=target)
