"""The mapping from an analysis to span descriptions: ids, names, times, attributes, status.

Pure and SDK-free, so every output format (OTLP through the SDK, Jaeger JSON, Perfetto) shows
the same spans with the same ids and attributes, and the mapping is tested without a network.

Ids are derived, not random: a trace id from (host, sandbox id), a span id from
(host, sandbox id, phase id). Exporting the same recording twice yields the same ids, so a
backend deduplicates a re-export instead of showing the pod twice.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from opentelemetry.semconv._incubating.attributes.container_attributes import (
    CONTAINER_NAME,
    CONTAINER_RUNTIME_NAME,
)
from opentelemetry.semconv._incubating.attributes.host_attributes import HOST_NAME
from opentelemetry.semconv._incubating.attributes.process_attributes import (
    PROCESS_COMMAND_ARGS,
    PROCESS_EXECUTABLE_NAME,
    PROCESS_EXECUTABLE_PATH,
    PROCESS_EXIT_CODE,
    PROCESS_PARENT_PID,
    PROCESS_PID,
)
from opentelemetry.semconv.attributes.container_attributes import CONTAINER_ID
from opentelemetry.semconv.attributes.k8s_attributes import (
    K8S_NAMESPACE_NAME,
    K8S_NODE_NAME,
    K8S_POD_NAME,
    K8S_POD_UID,
)
from opentelemetry.semconv.attributes.service_attributes import SERVICE_NAME, SERVICE_VERSION

from startprof import __version__
from startprof.analysis.model import Analysis, Phase, Pod
from startprof.errors import ExportError

Scalar = str | bool | int | float
AttributeValue = Scalar | tuple[str, ...] | tuple[bool, ...] | tuple[int, ...] | tuple[float, ...]
"""What OTLP, Jaeger and Perfetto can all carry (OTel's ``AttributeValue`` with tuples)."""

SERVICE: Final = "startprof"

# startprof's own attributes (no semantic convention covers them)
CRITICAL_PATH: Final = "startprof.critical_path"
SELF_MS: Final = "startprof.self_ms"
PHASE: Final = "startprof.phase"
PHASE_ID: Final = "startprof.phase.id"
CNI_PLUGIN: Final = "startprof.cni.plugin"
NETLINK_OPS_PREFIX: Final = "startprof.netlink.ops."
SANDBOX_ID: Final = "startprof.sandbox.id"
POD_STATUS: Final = "startprof.pod.status"
FAILED_PHASE: Final = "startprof.failed_phase"
BOTTLENECK: Final = "startprof.bottleneck"
RUNTIME_HANDLER: Final = "startprof.runtime_handler"
CONTAINERS: Final = "startprof.containers"
OTHER_PREFIX: Final = "startprof."

PHASE_ATTRIBUTE_KEYS: Final[Mapping[str, str]] = {
    # Phase.attributes key (analysis) -> span attribute (semantic conventions first)
    "pid": PROCESS_PID,
    "ppid": PROCESS_PARENT_PID,
    "argv": PROCESS_COMMAND_ARGS,
    "filename": PROCESS_EXECUTABLE_PATH,
    "comm": PROCESS_EXECUTABLE_NAME,
    "exit_code": PROCESS_EXIT_CODE,
    "container_id": CONTAINER_ID,
    "container": CONTAINER_NAME,
    "runtime": CONTAINER_RUNTIME_NAME,
    "cni_plugin": CNI_PLUGIN,
}
"""Keep in sync with the table in docs/export.md."""

NETLINK_OPS_KEY: Final = "netlink_ops"
"""Phase.attributes key holding ``{op: count}``, exported as ``startprof.netlink.ops.<op>``."""

_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


@dataclass(frozen=True)
class SpanDescription:
    """One span: everything an exporter needs, already in OpenTelemetry's terms."""

    trace_id: int
    """128 bits, never 0."""
    span_id: int
    """64 bits, never 0."""
    parent_span_id: int | None
    name: str
    kind: str
    """The phase kind (``cni.plugin`` for ``cni.plugin bridge``)."""
    phase_id: str
    start_ns: int
    end_ns: int
    attributes: Mapping[str, AttributeValue]
    error: str | None
    """Set when the phase failed: the span's status is ERROR with this description."""
    links: tuple[tuple[int, int], ...] = ()
    """(trace id, span id) of spans this one relates to without being their child: the
    kubelet's CRI client span when the kubelet did not sample its trace."""


@dataclass(frozen=True)
class PodTrace:
    """One pod start as one trace; ``spans`` are parents before children, ``spans[0]`` the root."""

    pod: Pod
    trace_id: int
    resource: Mapping[str, AttributeValue]
    spans: tuple[SpanDescription, ...]

    @property
    def host(self) -> str:
        return self.pod.host


def trace_id_for(host: str, sandbox_id: str) -> int:
    """The trace id of a pod start: 16 bytes of BLAKE2b over (host, sandbox id), never 0."""
    return _hash_id(16, b"startprof.trace", host, sandbox_id)


def span_id_for(host: str, sandbox_id: str, phase_id: str) -> int:
    """The span id of a phase: 8 bytes of BLAKE2b over (host, sandbox id, phase id), never 0."""
    return _hash_id(8, b"startprof.span", host, sandbox_id, phase_id)


def _hash_id(size: int, person: bytes, *parts: str) -> int:
    # NUL-joined: no part contains NUL, so distinct tuples never hash the same input
    data = "\0".join(parts).encode("utf-8", "surrogateescape")
    value = int.from_bytes(hashlib.blake2b(data, digest_size=size, person=person).digest(), "big")
    return value or 1  # 0 means "invalid" in OTel and W3C trace context


def resource_attributes(host: str) -> dict[str, AttributeValue]:
    """The OTel resource of a node's spans: startprof as the service, the node as the host."""
    return {SERVICE_NAME: SERVICE, SERVICE_VERSION: __version__, HOST_NAME: host}


def pod_identity(pod: Pod) -> dict[str, AttributeValue]:
    """Attributes put on every span of a pod, so a search for one pod matches any of its spans."""
    out: dict[str, AttributeValue] = {}
    if pod.name:
        out[K8S_POD_NAME] = pod.name
    if pod.namespace:
        out[K8S_NAMESPACE_NAME] = pod.namespace
    if pod.uid:
        out[K8S_POD_UID] = pod.uid
    out[K8S_NODE_NAME] = pod.host
    return out


def _pod_root_attributes(pod: Pod) -> dict[str, AttributeValue]:
    out: dict[str, AttributeValue] = {SANDBOX_ID: pod.sandbox_id, POD_STATUS: pod.status}
    if pod.runtime:
        out[CONTAINER_RUNTIME_NAME] = pod.runtime
    if pod.runtime_handler:
        out[RUNTIME_HANDLER] = pod.runtime_handler
    if pod.failed_phase:
        out[FAILED_PHASE] = pod.failed_phase
    if pod.bottleneck:
        out[BOTTLENECK] = pod.bottleneck
    if pod.containers:
        out[CONTAINERS] = tuple(pod.containers)
    return out


def phase_attributes(phase: Phase) -> dict[str, AttributeValue]:
    """The span attributes of a phase's own data (``Phase.attributes`` and its flags).

    Known keys map to semantic conventions (``PHASE_ATTRIBUTE_KEYS``); ``netlink_ops`` becomes
    one ``startprof.netlink.ops.<op>`` count per op; any other key is kept as ``startprof.<key>``
    (mappings flattened with dots), so nothing the analysis found is lost. ``None`` is dropped.
    """
    out: dict[str, AttributeValue] = {
        PHASE: phase.kind,
        PHASE_ID: phase.id,
        CRITICAL_PATH: phase.on_critical_path,
        SELF_MS: round(phase.self_ns / 1e6, 3),
    }
    subject = phase.name.split(" ", 1)[1] if " " in phase.name else None
    if phase.kind == "cni.plugin" and subject:
        out[CNI_PLUGIN] = subject
    if phase.kind == "container" and subject:
        out[CONTAINER_NAME] = subject
    for key in sorted(phase.attributes):
        value = phase.attributes[key]
        if key == NETLINK_OPS_KEY and isinstance(value, Mapping):
            for op in sorted(value):
                _put(out, NETLINK_OPS_PREFIX + str(op), value[op])
        elif key in PHASE_ATTRIBUTE_KEYS:
            _put(out, PHASE_ATTRIBUTE_KEYS[key], value)
        else:
            _put(out, OTHER_PREFIX + key, value)
    return out


def _put(out: dict[str, AttributeValue], key: str, value: Any) -> None:
    if isinstance(value, Mapping):
        for sub in sorted(value, key=str):
            _put(out, f"{key}.{sub}", value[sub])
        return
    converted = attribute_value(value)
    if converted is not None:
        out[key] = converted


def attribute_value(value: Any) -> AttributeValue | None:
    """``value`` as an attribute value: scalars kept, sequences as homogeneous tuples.

    A sequence of mixed types becomes a tuple of strings; integers outside int64 (which OTLP
    cannot carry) become strings; ``None`` gives ``None`` (the attribute is left out).
    """
    value = _plain(value)
    if value is None:
        return None
    if isinstance(value, bool | str | float):
        return value
    if isinstance(value, int):
        return value if _INT64_MIN <= value <= _INT64_MAX else str(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, Iterable):
        items = [_plain(v) for v in value]
        return _homogeneous([v for v in items if v is not None])
    return str(value)


def _plain(value: Any) -> Any:
    """A numpy scalar (analysis results come from DataFrames) as the Python value it holds."""
    if getattr(value, "ndim", None) == 0 and hasattr(value, "item"):
        return value.item()
    return value


def _homogeneous(items: Sequence[Any]) -> AttributeValue:
    if all(isinstance(v, bool) for v in items):
        return tuple(bool(v) for v in items)
    if all(isinstance(v, int) and not isinstance(v, bool) for v in items) and all(
        _INT64_MIN <= v <= _INT64_MAX for v in items
    ):
        return tuple(int(v) for v in items)
    if all(isinstance(v, float) for v in items):
        return tuple(float(v) for v in items)
    return tuple(v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in items)


TRACEPARENT_KEY: Final = "traceparent"
"""Phase.attributes key of the W3C ``traceparent`` the kubelet sent with the phase's CRI call."""


def kubelet_context(phase: Phase) -> tuple[int, int, bool] | None:
    """(trace id, span id, sampled) of the kubelet's client span for this phase's CRI call."""
    raw = phase.attributes.get(TRACEPARENT_KEY)
    if not isinstance(raw, str):
        return None
    parts = raw.split("-")
    if len(parts) != 4 or parts[0] == "ff":
        return None
    try:
        trace_id, span_id, flags = int(parts[1], 16), int(parts[2], 16), int(parts[3], 16)
    except ValueError:
        return None
    if not trace_id or not span_id:
        return None
    return trace_id, span_id, bool(flags & 1)


def _joined_trace_id(pod: Pod) -> int | None:
    """The kubelet's trace id, when its RunPodSandbox call carried a sampled trace context."""
    for phase in pod.phases:
        if phase.kind == "sandbox":
            context = kubelet_context(phase)
            return context[0] if context is not None and context[2] else None
    return None


def describe_pod(pod: Pod) -> PodTrace:
    """A pod start as one trace: one span per phase, parent links as in the phase tree.

    Container attributes (``container.name``, ``container.id``) are inherited from the nearest
    ``container <name>`` ancestor by the phases under it (its runtime.create, process.exec, ...)
    unless a phase carries its own.

    When the kubelet traces (its CRI requests carry ``traceparent``), the pod joins its trace:
    with a sampled RunPodSandbox the trace id is the kubelet's, and each phase of a CRI call
    (sandbox, container.create, container.start) becomes a child of the kubelet's client span
    for that call; a call of another or an unsampled trace gets a span link instead.
    """
    joined = _joined_trace_id(pod)
    trace_id = joined if joined is not None else trace_id_for(pod.host, pod.sandbox_id)
    identity = pod_identity(pod)
    span_ids: dict[str, int] = {}
    inherited: dict[str, dict[str, AttributeValue]] = {}
    spans: list[SpanDescription] = []
    for index, phase in enumerate(pod.phases):
        parent_span_id: int | None = None
        parent_container: dict[str, AttributeValue] = {}
        if phase.parent_id is not None:
            if phase.parent_id not in span_ids:
                raise ExportError(
                    f"pod {pod.name or pod.sandbox_id}: phase {phase.id!r} comes before its "
                    f"parent {phase.parent_id!r} or names an unknown one",
                    fix="this is a bug in the analysis; please report it with the recording",
                )
            parent_span_id = span_ids[phase.parent_id]
            parent_container = inherited[phase.parent_id]
        elif index != 0:
            raise ExportError(
                f"pod {pod.name or pod.sandbox_id}: phase {phase.id!r} is a second root",
                fix="this is a bug in the analysis; please report it with the recording",
            )
        own = phase_attributes(phase)
        container = {
            k: own.get(k, parent_container.get(k))
            for k in (CONTAINER_NAME, CONTAINER_ID)
            if k in own or k in parent_container
        }
        inherited[phase.id] = {k: v for k, v in container.items() if v is not None}
        attributes: dict[str, AttributeValue] = {**identity, **inherited[phase.id], **own}
        if index == 0:
            attributes.update(_pod_root_attributes(pod))
        if phase.id in span_ids:
            raise ExportError(
                f"pod {pod.name or pod.sandbox_id}: two phases share the id {phase.id!r}",
                fix="this is a bug in the analysis; please report it with the recording",
            )
        span_id = span_id_for(pod.host, pod.sandbox_id, phase.id)
        span_ids[phase.id] = span_id
        links: tuple[tuple[int, int], ...] = ()
        context = kubelet_context(phase)
        if context is not None:
            if context[2] and context[0] == trace_id:
                parent_span_id = context[1]
            else:
                links = (context[:2],)
        spans.append(
            SpanDescription(
                trace_id=trace_id,
                span_id=span_id,
                parent_span_id=parent_span_id,
                name=phase.name,
                kind=phase.kind,
                phase_id=phase.id,
                start_ns=phase.start_ns,
                end_ns=phase.end_ns,
                attributes=attributes,
                error=(phase.error or "failed") if phase.status == "error" else None,
                links=links,
            )
        )
    return PodTrace(
        pod=pod, trace_id=trace_id, resource=resource_attributes(pod.host), spans=tuple(spans)
    )


def describe(analysis: Analysis) -> tuple[PodTrace, ...]:
    """Every pod start of an analysis as a trace, in the analysis's order (pods without phases
    have nothing to show and are left out)."""
    return tuple(describe_pod(pod) for pod in analysis.pods if pod.phases)


def hex_trace_id(trace_id: int) -> str:
    return f"{trace_id:032x}"


def hex_span_id(span_id: int) -> str:
    return f"{span_id:016x}"
