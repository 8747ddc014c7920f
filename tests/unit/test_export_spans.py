"""The mapping from an analysis to spans, and through the SDK with its in-memory exporter."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import pytest
from factories import (
    APP_CONTAINER,
    WEB_SANDBOX,
    XSS_NAME,
    failed_pod,
    make_analysis,
    web_pod,
    xss_pod,
)
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from startprof.analysis.model import Pod
from startprof.errors import ExportError, InputError
from startprof.exporters.otlp import export_otlp, resolve_endpoint, resolve_protocol
from startprof.exporters.spans import (
    PodTrace,
    SpanDescription,
    attribute_value,
    describe,
    describe_pod,
    span_id_for,
    trace_id_for,
)


def _by_phase(pod_trace: PodTrace) -> dict[str, SpanDescription]:
    return {s.phase_id: s for s in pod_trace.spans}


# ---- the factories themselves -----------------------------------------------------------------


@pytest.mark.parametrize("make", [web_pod, failed_pod, xss_pod])
def test_factories_critical_self_times_tile_each_pod(make: Any) -> None:
    from startprof.analysis.critical_path import apply_critical_path

    pod = make()
    assert sum(p.self_ns for p in pod.phases) == pod.duration_ns
    walked, _ = apply_critical_path(
        [replace(p, on_critical_path=False, self_ns=0) for p in pod.phases]
    )
    assert [(p.id, p.on_critical_path, p.self_ns) for p in walked] == [
        (p.id, p.on_critical_path, p.self_ns) for p in pod.phases
    ]


# ---- ids ---------------------------------------------------------------------------------------


def test_ids_are_derived_from_host_sandbox_and_phase() -> None:
    tid = trace_id_for("node-a", WEB_SANDBOX)
    assert tid == trace_id_for("node-a", WEB_SANDBOX)
    assert 0 < tid < 2**128 and tid.bit_length() > 64
    assert tid != trace_id_for("node-b", WEB_SANDBOX)
    sid = span_id_for("node-a", WEB_SANDBOX, "sandbox")
    assert 0 < sid < 2**64
    assert sid != span_id_for("node-a", WEB_SANDBOX, "sandbox/cni.add")
    assert sid != span_id_for("node-b", WEB_SANDBOX, "sandbox")
    # the separator keeps ("a", "b\0c") apart from ("a\0b", "c")-like concatenations
    assert span_id_for("n", "ab", "c") != span_id_for("n", "a", "bc")


def test_a_zero_hash_never_becomes_an_invalid_id(monkeypatch: pytest.MonkeyPatch) -> None:
    class ZeroDigest:
        def __init__(self, data: bytes, digest_size: int, person: bytes) -> None:
            self.size = digest_size

        def digest(self) -> bytes:
            return bytes(self.size)

    monkeypatch.setattr("startprof.exporters.spans.hashlib.blake2b", ZeroDigest)
    assert trace_id_for("h", "s") == 1
    assert span_id_for("h", "s", "p") == 1


def test_every_phase_is_one_span_with_its_parent_and_times() -> None:
    pod = web_pod()
    pod_trace = describe_pod(pod)
    assert pod_trace.trace_id == trace_id_for(pod.host, pod.sandbox_id)
    assert [s.phase_id for s in pod_trace.spans] == [p.id for p in pod.phases]
    ids = {s.phase_id: s.span_id for s in pod_trace.spans}
    assert len(set(ids.values())) == len(pod.phases)
    for phase, span in zip(pod.phases, pod_trace.spans, strict=True):
        assert span.trace_id == pod_trace.trace_id
        assert span.name == phase.name
        assert (span.start_ns, span.end_ns) == (phase.start_ns, phase.end_ns)
        assert span.parent_span_id == (ids[phase.parent_id] if phase.parent_id else None)
    assert pod_trace.resource == {
        "service.name": "startprof",
        "service.version": pod_trace.resource["service.version"],
        "host.name": "node-a",
    }


# ---- attributes --------------------------------------------------------------------------------


def test_semantic_convention_attributes_from_phase_attributes() -> None:
    spans = _by_phase(describe_pod(web_pod()))
    bridge = spans["sandbox/cni.add/bridge"].attributes
    assert bridge["process.pid"] == 2001
    assert bridge["process.parent_pid"] == 1000
    assert bridge["process.executable.path"] == "/usr/lib/cni/bridge"
    assert bridge["process.command_args"] == ("/usr/lib/cni/bridge",)
    assert bridge["process.exit.code"] == 0
    assert bridge["startprof.cni.plugin"] == "bridge"
    assert bridge["startprof.netlink.ops.RTM_NEWLINK"] == 5
    assert bridge["startprof.netlink.ops.RTM_GETLINK"] == 8
    assert "startprof.netlink_ops" not in bridge
    assert bridge["startprof.source"] == "kernel"
    assert bridge["startprof.phase"] == "cni.plugin"
    assert bridge["startprof.phase.id"] == "sandbox/cni.add/bridge"
    assert bridge["startprof.critical_path"] is True
    assert bridge["startprof.self_ms"] == 10.0
    iptables = spans["sandbox/cni.add/bridge/exec/2"].attributes
    assert iptables["process.command_args"] == (
        "iptables",
        *("-t", "nat", "-C", "POSTROUTING", "-j", "CNI-abc"),
    )
    netlink = spans["sandbox/cni.add/bridge/netlink/1"].attributes
    assert (netlink["startprof.count"], netlink["startprof.ack_ms"]) == (5, 0.12)
    loopback = spans["sandbox/cni.add/loopback"].attributes
    assert loopback["startprof.critical_path"] is False
    assert loopback["startprof.self_ms"] == 0.0
    runc = spans["sandbox/runtime.create"].attributes
    assert runc["container.runtime.name"] == "runc"
    assert "container.name" not in runc  # the pause container's create: no app container


def test_pod_identity_on_every_span_and_pod_details_on_the_root() -> None:
    pod = web_pod()
    pod_trace = describe_pod(pod)
    for span in pod_trace.spans:
        assert span.attributes["k8s.pod.name"] == "web-0"
        assert span.attributes["k8s.namespace.name"] == "shop"
        assert span.attributes["k8s.pod.uid"] == pod.uid
        assert span.attributes["k8s.node.name"] == "node-a"
    root = pod_trace.spans[0].attributes
    assert root["startprof.sandbox.id"] == WEB_SANDBOX
    assert root["startprof.pod.status"] == "ok"
    assert root["container.runtime.name"] == "runc"
    assert root["startprof.runtime_handler"] == "runc"
    assert root["startprof.containers"] == ("app",)
    assert root["startprof.bottleneck"] == pod.bottleneck
    assert "startprof.sandbox.id" not in pod_trace.spans[1].attributes


def test_container_attributes_are_inherited_by_the_phases_under_the_container() -> None:
    spans = _by_phase(describe_pod(web_pod()))
    for phase_id in (
        "container/app",
        "container/app/start",
        "container/app/start/runtime.create",
        "container/app/start/exec",
    ):
        assert spans[phase_id].attributes["container.name"] == "app", phase_id
        assert spans[phase_id].attributes["container.id"] == APP_CONTAINER, phase_id
    assert spans["container/app/start/exec"].attributes["process.executable.path"] == "/app"


def test_failed_phase_has_its_reason_and_others_none() -> None:
    spans = _by_phase(describe_pod(failed_pod()))
    assert spans["sandbox/cni.add/bridge"].error == "exit code 1"
    assert spans["sandbox"].error == "RunPodSandbox: plugin type=bridge failed (add): exit code 1"
    assert spans["sandbox/cni.add/loopback"].error is None
    root = spans["pod"].attributes
    assert (root["startprof.pod.status"], root["startprof.failed_phase"]) == (
        "failed",
        "cni.plugin bridge",
    )


def test_an_error_without_a_reason_still_fails_the_span() -> None:
    pod = web_pod()
    phases = list(pod.phases)
    phases[1] = replace(phases[1], status="error", error=None)
    span = describe_pod(replace(pod, phases=tuple(phases))).spans[1]
    assert span.error == "failed"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        (True, True),
        (3, 3),
        (2.5, 2.5),
        ("x", "x"),
        (b"r\xc3\xa9", "ré"),
        ([1, 2], (1, 2)),
        (("a", None, "b"), ("a", "b")),
        ([True, False], (True, False)),
        ([1.5, 2.0], (1.5, 2.0)),
        ([1, "x"], ("1", "x")),
        (2**63, str(2**63)),
        ([2**64, 1], (str(2**64), "1")),
        (object, str(object)),
    ],
)
def test_attribute_values_are_what_otlp_can_carry(value: Any, expected: Any) -> None:
    assert attribute_value(value) == expected


def test_unknown_mappings_are_flattened_and_none_dropped() -> None:
    pod = web_pod()
    phases = list(pod.phases)
    phases[1] = replace(phases[1], attributes={"cgroup": {"path": "/k8s/x", "id": 7}, "gone": None})
    attributes = describe_pod(replace(pod, phases=tuple(phases))).spans[1].attributes
    assert attributes["startprof.cgroup.path"] == "/k8s/x"
    assert attributes["startprof.cgroup.id"] == 7
    assert "startprof.gone" not in attributes


def _with_phases(pod: Pod, phases: Sequence[Any]) -> Pod:
    return replace(pod, phases=tuple(phases))


def test_a_child_before_its_parent_is_an_export_error() -> None:
    pod = web_pod()
    swapped = [pod.phases[0], pod.phases[2], pod.phases[1], *pod.phases[3:]]
    with pytest.raises(ExportError, match="before its parent"):
        describe_pod(_with_phases(pod, swapped))


def test_duplicate_phase_ids_and_second_roots_are_export_errors() -> None:
    pod = web_pod()
    with pytest.raises(ExportError, match="share the id"):
        describe_pod(_with_phases(pod, [*pod.phases, pod.phases[-1]]))
    second_root = replace(pod.phases[0], id="pod#2")
    with pytest.raises(ExportError, match="second root"):
        describe_pod(_with_phases(pod, [*pod.phases, second_root]))


def test_pods_without_phases_are_left_out() -> None:
    analysis = make_analysis([web_pod(), replace(failed_pod(), phases=())])
    assert [t.pod.name for t in describe(analysis)] == ["web-0"]


# ---- through the SDK (in-memory exporter) ------------------------------------------------------


def _sdk_spans(**kwargs: Any) -> tuple[ReadableSpan, ...]:
    memory = InMemorySpanExporter()
    summary = export_otlp(make_analysis(), exporter=memory, **kwargs)
    spans = memory.get_finished_spans()
    assert (summary.traces, summary.spans) == (3, len(spans))
    return spans


def test_sdk_spans_carry_the_mapping() -> None:
    spans = _sdk_spans()
    described = {s.span_id: s for t in describe(make_analysis()) for s in t.spans}
    assert len(spans) == len(described)
    for span in spans:
        context = span.get_span_context()
        assert context is not None
        d = described[context.span_id]
        assert context.trace_id == d.trace_id
        assert context.trace_flags.sampled
        assert span.name == d.name
        assert (span.start_time, span.end_time) == (d.start_ns, d.end_ns)
        assert span.parent is None if d.parent_span_id is None else span.parent is not None
        if span.parent is not None:
            assert (span.parent.trace_id, span.parent.span_id) == (d.trace_id, d.parent_span_id)
        assert dict(span.attributes or {}) == dict(d.attributes)
        if d.error is None:
            assert span.status.status_code is StatusCode.UNSET
        else:
            assert span.status.status_code is StatusCode.ERROR
            assert span.status.description == d.error
        assert span.instrumentation_scope is not None
        assert span.instrumentation_scope.name == "startprof"


def test_sdk_resource_is_startprof_on_each_node() -> None:
    hosts = {}
    for span in _sdk_spans():
        attrs = span.resource.attributes
        assert attrs["service.name"] == "startprof"
        hosts[span.attributes["k8s.pod.name"] if span.attributes else None] = attrs["host.name"]
    assert hosts == {"web-0": "node-a", "db-0": "node-a", XSS_NAME: "node-b"}


def test_sdk_failed_phase_is_error_with_the_reason() -> None:
    errors = {s.name: s.status.description for s in _sdk_spans() if not s.status.is_ok}
    assert errors["cni.plugin bridge"] == "exit code 1"
    assert set(errors) == {"cni.plugin bridge", "sandbox"}


def test_sdk_ids_are_stable_across_runs() -> None:
    def ids() -> list[tuple[int, int, int | None]]:
        return [
            (
                s.context.trace_id,
                s.context.span_id,
                s.parent.span_id if s.parent is not None else None,
            )
            for s in _sdk_spans()
        ]

    assert ids() == ids()


def test_sdk_roots_ignore_a_callers_active_span() -> None:
    provider = TracerProvider(shutdown_on_exit=False)
    with provider.get_tracer("caller").start_as_current_span("outer"):
        roots = [s for s in _sdk_spans() if s.name == "pod"]
    assert len(roots) == 3 and all(s.parent is None for s in roots)


def test_sdk_sampler_from_the_environment_does_not_drop_pods(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "always_off")
    assert len([s for s in _sdk_spans() if s.name == "pod"]) == 3


def test_sdk_disabled_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    with pytest.raises(ExportError, match="OTEL_SDK_DISABLED"):
        export_otlp(make_analysis(), exporter=InMemorySpanExporter())


def test_a_refused_batch_is_an_export_error() -> None:
    memory = InMemorySpanExporter()
    memory.shutdown()  # a shut-down exporter answers FAILURE
    with pytest.raises(ExportError, match="failed"):
        export_otlp(make_analysis(), exporter=memory)


def test_a_batch_refused_midway_says_how_much_was_sent(monkeypatch: pytest.MonkeyPatch) -> None:
    class RefusesSecond(InMemorySpanExporter):
        def export(self, spans: Sequence[ReadableSpan]) -> Any:
            if self.get_finished_spans():
                self.shutdown()
            return super().export(spans)

    monkeypatch.setattr("startprof.exporters.otlp.BATCH_SPANS", 10)
    with pytest.raises(ExportError, match=r"failed after 10 of \d+ spans: the exporter gave"):
        export_otlp(make_analysis(), exporter=RefusesSecond())


def test_large_exports_go_in_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []

    class Counting(InMemorySpanExporter):
        def export(self, spans: Sequence[ReadableSpan]) -> Any:
            calls.append(len(spans))
            return super().export(spans)

    monkeypatch.setattr("startprof.exporters.otlp.BATCH_SPANS", 10)
    pods = [replace(xss_pod(), sandbox_id=f"{i:064x}") for i in range(3)]
    summary = export_otlp(make_analysis(pods), exporter=Counting())
    assert sum(calls) == summary.spans and max(calls) == 10 and len(calls) > 3


# ---- protocol and endpoint resolution ----------------------------------------------------------

_OTLP_ENV = (
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_PROTOCOL",
    "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
)


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in _OTLP_ENV:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_protocol_from_flag_then_environment_then_grpc(clean_env: pytest.MonkeyPatch) -> None:
    assert resolve_protocol() == "grpc"
    clean_env.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
    assert resolve_protocol() == "http/protobuf"
    clean_env.setenv("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "grpc")
    assert resolve_protocol() == "grpc"
    assert resolve_protocol("http/protobuf") == "http/protobuf"
    clean_env.setenv("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/json")
    with pytest.raises(InputError, match="http/json"):
        resolve_protocol()


def test_default_endpoints(clean_env: pytest.MonkeyPatch) -> None:
    assert resolve_endpoint("grpc") == "http://localhost:4317"
    assert resolve_endpoint("http/protobuf") == "http://localhost:4318/v1/traces"


def test_endpoint_from_environment(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "https://collector:4318/")
    assert resolve_endpoint("http/protobuf") == "https://collector:4318/v1/traces"
    assert resolve_endpoint("grpc") == "https://collector:4318/"
    clean_env.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "https://traces:9999/custom")
    assert resolve_endpoint("http/protobuf") == "https://traces:9999/custom"
    assert resolve_endpoint("grpc") == "https://traces:9999/custom"


def test_an_explicit_url_wins(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "https://traces:9999/custom")
    assert resolve_endpoint("grpc", "jaeger:4317") == "http://jaeger:4317"
    assert resolve_endpoint("http/protobuf", "http://jaeger:4318") == "http://jaeger:4318/v1/traces"
    assert resolve_endpoint("http/protobuf", "http://j:4318/otlp/v1/traces") == (
        "http://j:4318/otlp/v1/traces"
    )


# ---- joining the kubelet's trace (issue 13) ----------------------------------------------------
KUBELET_TRACE = 0x4BF92F3577B34DA6A3CE929D0E0E4736
RPS_SPAN, START_SPAN = 0x00F067AA0BA902B7, 0x1111111111111111


def _traced(pod: Pod, sampled: bool = True, start_trace: int = KUBELET_TRACE) -> Pod:
    flags = "01" if sampled else "00"
    parents = {
        "sandbox": f"00-{KUBELET_TRACE:032x}-{RPS_SPAN:016x}-{flags}",
        "container.start": f"00-{start_trace:032x}-{START_SPAN:016x}-{flags}",
    }
    phases = [
        replace(p, attributes={**p.attributes, "traceparent": parents[p.kind]})
        if p.kind in parents
        else p
        for p in pod.phases
    ]
    return _with_phases(pod, phases)


def test_a_sampled_kubelet_trace_is_joined_under_its_cri_client_spans() -> None:
    pod_trace = describe_pod(_traced(web_pod()))
    assert pod_trace.trace_id == KUBELET_TRACE
    assert {s.trace_id for s in pod_trace.spans} == {KUBELET_TRACE}
    by_kind = {s.kind: s for s in pod_trace.spans}
    assert by_kind["sandbox"].parent_span_id == RPS_SPAN
    assert by_kind["container.start"].parent_span_id == START_SPAN
    assert by_kind["pod"].parent_span_id is None
    # the rest of the tree is unchanged
    own = {s.span_id for s in pod_trace.spans}
    joined = {"pod", "sandbox", "container.start"}
    assert all(s.parent_span_id in own for s in pod_trace.spans if s.kind not in joined)
    assert not any(s.links for s in pod_trace.spans)


def test_an_unsampled_or_foreign_kubelet_span_is_a_link() -> None:
    unsampled = describe_pod(_traced(web_pod(), sampled=False))
    assert unsampled.trace_id == trace_id_for(web_pod().host, WEB_SANDBOX)
    sandbox = next(s for s in unsampled.spans if s.kind == "sandbox")
    assert sandbox.links == ((KUBELET_TRACE, RPS_SPAN),)
    assert sandbox.parent_span_id == span_id_for(web_pod().host, WEB_SANDBOX, "pod")
    other = describe_pod(_traced(web_pod(), start_trace=KUBELET_TRACE + 1))
    start = next(s for s in other.spans if s.kind == "container.start")
    assert start.links == ((KUBELET_TRACE + 1, START_SPAN),)


def test_jaeger_perfetto_and_the_sdk_carry_the_join(tmp_path: Any) -> None:
    from startprof.exporters.jaeger_json import jaeger_trace
    from startprof.exporters.perfetto import perfetto_document

    joined = make_analysis([_traced(web_pod()), _traced(failed_pod(), sampled=False)])
    traces = describe(joined)
    spans = jaeger_trace(traces[0])["spans"]
    sandbox = next(s for s in spans if s["operationName"] == "sandbox")
    assert sandbox["references"] == [
        {"refType": "CHILD_OF", "traceID": f"{KUBELET_TRACE:032x}", "spanID": f"{RPS_SPAN:016x}"}
    ]
    linked = next(s for s in jaeger_trace(traces[1])["spans"] if s["operationName"] == "sandbox")
    assert {"refType": "FOLLOWS_FROM", "traceID": f"{KUBELET_TRACE:032x}",
            "spanID": f"{RPS_SPAN:016x}"} in linked["references"]  # fmt: skip
    assert perfetto_document(joined)["traceEvents"]
    memory = InMemorySpanExporter()
    export_otlp(joined, exporter=memory)
    sdk = memory.get_finished_spans()
    joined_sandbox = next(
        s for s in sdk if s.name == "sandbox" and s.context.trace_id == KUBELET_TRACE
    )
    assert joined_sandbox.parent is not None and joined_sandbox.parent.span_id == RPS_SPAN
    linked_sandbox = next(
        s for s in sdk if s.name == "sandbox" and s.context.trace_id != KUBELET_TRACE
    )
    assert [(ln.context.trace_id, ln.context.span_id) for ln in linked_sandbox.links] == [
        (KUBELET_TRACE, RPS_SPAN)
    ]
