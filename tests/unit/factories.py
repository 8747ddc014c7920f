"""Realistic analyses built by hand, for exporter and reporter tests.

Shapes and timings follow a runc + bridge pod start measured on this kind of machine
(docs/stack.md, "What a pod start looks like from the kernel"). Critical-path flags and self times
are written out by hand; ``test_factories_critical_self_times_tile_each_pod`` checks them
against ``startprof.analysis.critical_path``. Wall-clock times carry sub-microsecond parts on
purpose, so that exporters' µs rounding is exercised.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from startprof.analysis.model import Analysis, CriticalStep, Phase, Pod, RecordingInfo

T0 = 1_764_000_000_123_456_789
"""Wall clock (ns) of the first pod's first event; 2025-11-24, with odd sub-µs digits."""

XSS_NAME = "<script>alert(1)</script>"

WEB_SANDBOX = "5b1f0e7a2c3d4e5f60718293a4b5c6d7e8f90123456789abcdef0123456789ab"
DB_SANDBOX = "a9e8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b3a2f1e0d9c8b7a6f5e4d3c2b1a09f8e"
XSS_SANDBOX = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
APP_CONTAINER = "c0ffee00c0ffee00c0ffee00c0ffee00c0ffee00c0ffee00c0ffee00c0ffee00"


@dataclass(frozen=True)
class Row:
    """One phase, times in ms from the pod's start."""

    id: str
    parent: str | None
    name: str
    start_ms: float
    end_ms: float
    self_ms: float = 0.0
    critical: bool = False
    attributes: Mapping[str, Any] = field(default_factory=dict)
    error: str | None = None


def _ns(ms: float) -> int:
    return round(ms * 1_000_000)


def _iptables(pid: int, *args: str) -> dict[str, Any]:
    return {
        "pid": pid,
        "filename": "/usr/sbin/iptables",
        "argv": ["iptables", *args],
        "source": "kernel",
    }


def _runc(pid: int, verb: str, container_id: str) -> dict[str, Any]:
    return {
        "pid": pid,
        "filename": "/usr/sbin/runc",
        "argv": ["runc", verb, "--bundle", f"/run/containerd/k8s.io/{container_id}", container_id],
        "runtime": "runc",
        "source": "kernel",
    }


def sandbox_rows(sandbox_id: str) -> list[Row]:
    """RunPodSandbox of a runc + bridge pod: netns, CNI (bridge || loopback), shim, runc."""
    return [
        Row("sandbox", "pod", "sandbox", 0.3, 69.1, 13.9, True, {"source": "cri"}),
        Row("sandbox/netns", "sandbox", "sandbox.netns", 2.7, 3.5, 0.8, True, {"pid": 1000}),
        Row("sandbox/cni.add", "sandbox", "cni.add", 4.0, 26.5, 3.1, True),
        Row(
            "sandbox/cni.add/bridge",
            "sandbox/cni.add",
            "cni.plugin bridge",
            4.1,
            23.5,
            10.0,
            True,
            {
                "pid": 2001,
                "ppid": 1000,
                "filename": "/usr/lib/cni/bridge",
                "argv": ["/usr/lib/cni/bridge"],
                "cni_plugin": "bridge",
                "netlink_ops": {"RTM_NEWLINK": 5, "RTM_GETLINK": 8, "RTM_NEWADDR": 1},
                "exit_code": 0,
                "source": "kernel",
            },
        ),
        Row(
            "sandbox/cni.add/bridge/netlink/1",
            "sandbox/cni.add/bridge",
            "netlink RTM_NEWLINK",
            7.5,
            8.4,
            0.9,
            True,
            {"count": 5, "link_kind": "veth", "ack_ms": 0.12},
        ),
        Row(
            "sandbox/cni.add/bridge/exec/1",
            "sandbox/cni.add/bridge",
            "exec iptables",
            12.0,
            14.0,
            2.0,
            True,
            _iptables(2010, "-t", "nat", "-N", "CNI-abc"),
        ),
        Row(
            "sandbox/cni.add/bridge/exec/2",
            "sandbox/cni.add/bridge",
            "exec iptables",
            15.0,
            17.5,
            2.5,
            True,
            _iptables(2011, "-t", "nat", "-C", "POSTROUTING", "-j", "CNI-abc"),
        ),
        Row(
            "sandbox/cni.add/bridge/exec/3",
            "sandbox/cni.add/bridge",
            "exec iptables",
            18.0,
            22.0,
            4.0,
            True,
            _iptables(2012, "-t", "nat", "-A", "POSTROUTING", "-j", "CNI-abc"),
        ),
        Row(
            "sandbox/cni.add/loopback",
            "sandbox/cni.add",
            "cni.plugin loopback",
            4.2,
            6.0,
            attributes={
                "pid": 2002,
                "filename": "/usr/lib/cni/loopback",
                "argv": ["/usr/lib/cni/loopback"],
                "cni_plugin": "loopback",
                "netlink_ops": {"RTM_NEWADDR": 1, "RTM_SETLINK": 1},
            },
        ),
        Row(
            "sandbox/shim",
            "sandbox",
            "runtime.shim",
            30.3,
            33.5,
            3.2,
            True,
            {
                "pid": 3000,
                "filename": "/usr/bin/containerd-shim-runc-v2",
                "argv": ["containerd-shim-runc-v2", "-namespace", "k8s.io", "-id", sandbox_id],
            },
        ),
        Row(
            "sandbox/runtime.create",
            "sandbox",
            "runtime.create",
            37.6,
            62.3,
            24.7,
            True,
            _runc(3100, "create", sandbox_id),
        ),
        Row(
            "sandbox/runtime.start",
            "sandbox",
            "runtime.start",
            64.5,
            68.2,
            3.7,
            True,
            _runc(3200, "start", sandbox_id),
        ),
    ]


def container_rows(container: str, container_id: str) -> list[Row]:
    """CreateContainer + StartContainer of one container, with runc and the entrypoint's exec."""
    cid = f"container/{container}"
    return [
        Row("wait/1", "pod", "wait", 69.1, 69.3, 0.2, True),
        Row("image", "pod", "image", 69.3, 69.5, 0.2, True, {"source": "cri", "pulled": False}),
        Row(
            cid,
            "pod",
            f"container {container}",
            69.6,
            112.7,
            0.0,
            True,
            {"container": container, "container_id": container_id},
        ),
        Row(f"{cid}/create", cid, "container.create", 69.6, 73.6, 4.0, True, {"source": "cri"}),
        Row(f"{cid}/start", cid, "container.start", 73.6, 112.7, 18.6, True, {"source": "cri"}),
        Row(
            f"{cid}/start/runtime.create",
            f"{cid}/start",
            "runtime.create",
            79.7,
            95.5,
            15.8,
            True,
            _runc(4100, "create", container_id),
        ),
        Row(
            f"{cid}/start/runtime.start",
            f"{cid}/start",
            "runtime.start",
            106.5,
            111.1,
            4.6,
            True,
            _runc(4200, "start", container_id),
        ),
        Row(
            f"{cid}/start/exec",
            f"{cid}/start",
            "process.exec",
            111.1,
            111.2,
            0.1,
            True,
            {"pid": 4300, "filename": "/app", "argv": ["/app", "--port", "8080"]},
        ),
    ]


def failed_sandbox_rows() -> list[Row]:
    """RunPodSandbox that fails: the bridge plugin's last iptables exits 1, so does bridge."""
    return [
        Row(
            "sandbox",
            "pod",
            "sandbox",
            0.3,
            26.8,
            3.7,
            True,
            {"source": "cri"},
            error="RunPodSandbox: plugin type=bridge failed (add): exit code 1",
        ),
        Row("sandbox/netns", "sandbox", "sandbox.netns", 2.7, 3.5, 0.8, True, {"pid": 1000}),
        Row("sandbox/cni.add", "sandbox", "cni.add", 4.0, 26.0, 1.1, True),
        Row(
            "sandbox/cni.add/bridge",
            "sandbox/cni.add",
            "cni.plugin bridge",
            4.1,
            25.0,
            7.5,
            True,
            {
                "pid": 2101,
                "filename": "/usr/lib/cni/bridge",
                "argv": ["/usr/lib/cni/bridge"],
                "cni_plugin": "bridge",
                "netlink_ops": {"RTM_NEWLINK": 5},
                "exit_code": 1,
            },
            error="exit code 1",
        ),
        Row(
            "sandbox/cni.add/bridge/netlink/1",
            "sandbox/cni.add/bridge",
            "netlink RTM_NEWLINK",
            7.5,
            8.4,
            0.9,
            True,
            {"count": 5},
        ),
        Row(
            "sandbox/cni.add/bridge/exec/1",
            "sandbox/cni.add/bridge",
            "exec iptables",
            12.0,
            24.5,
            12.5,
            True,
            {**_iptables(2110, "-t", "nat", "-A", "POSTROUTING"), "exit_code": 1},
        ),
        Row(
            "sandbox/cni.add/loopback",
            "sandbox/cni.add",
            "cni.plugin loopback",
            4.2,
            6.0,
            attributes={"pid": 2102, "cni_plugin": "loopback", "argv": ["/usr/lib/cni/loopback"]},
        ),
    ]


def build_pod(
    rows: Sequence[Row],
    *,
    host: str,
    sandbox_id: str,
    name: str | None,
    namespace: str | None,
    uid: str | None,
    start_ns: int,
    pod_self_ms: float,
    runtime: str = "runc",
    runtime_handler: str = "runc",
    containers: tuple[str, ...] = (),
) -> Pod:
    """A Pod whose root ``pod`` phase spans ``rows``; the pod fails if any row has an error."""
    end_ms = max(r.end_ms for r in rows)
    root = Row("pod", None, "pod", 0.0, end_ms, pod_self_ms, True, {"source": "kernel"})
    phases = tuple(
        Phase(
            id=r.id,
            parent_id=r.parent,
            name=r.name,
            start_ns=start_ns + _ns(r.start_ms),
            end_ns=start_ns + _ns(r.end_ms),
            status="error" if r.error else "ok",
            error=r.error,
            on_critical_path=r.critical,
            self_ns=_ns(r.self_ms),
            attributes=dict(r.attributes),
        )
        for r in (root, *rows)
    )
    failed = next((p for p in reversed(phases) if p.status == "error"), None)
    path = tuple(CriticalStep(p.id, p.name, p.self_ns) for p in phases if p.self_ns > 0)
    top = max(path, key=lambda s: s.self_ns)
    return Pod(
        host=host,
        sandbox_id=sandbox_id,
        name=name,
        namespace=namespace,
        uid=uid,
        status="failed" if failed else "ok",
        start_ns=phases[0].start_ns,
        end_ns=phases[0].end_ns,
        phases=phases,
        critical_path=path,
        bottleneck=f"{top.name} {top.self_ns / 1e6:.1f} ms",
        runtime_handler=runtime_handler,
        runtime=runtime,
        failed_phase=failed.name if failed else None,
        containers=containers,
    )


def web_pod(start_ns: int = T0) -> Pod:
    """A runc + bridge pod with one container ``app``, started fine in 112.7 ms."""
    return build_pod(
        [*sandbox_rows(WEB_SANDBOX), *container_rows("app", APP_CONTAINER)],
        host="node-a",
        sandbox_id=WEB_SANDBOX,
        name="web-0",
        namespace="shop",
        uid="0d4c2a51-7e3b-4f6a-9c1d-2b8e5f7a9c01",
        start_ns=start_ns,
        pod_self_ms=0.4,
        containers=("app",),
    )


def failed_pod(start_ns: int = T0 + 250_000_000) -> Pod:
    """A pod whose sandbox fails in ``cni.plugin bridge`` with ``exit code 1``."""
    return build_pod(
        [*failed_sandbox_rows(), Row("wait/1", "pod", "wait", 26.8, 27.0, 0.2, True)],
        host="node-a",
        sandbox_id=DB_SANDBOX,
        name="db-0",
        namespace="shop",
        uid="7f3e9b12-0a4c-4d8e-b6f1-3c5a7e9d1b02",
        start_ns=start_ns,
        pod_self_ms=0.3,
    )


def xss_pod(start_ns: int = T0 + 500_000_789) -> Pod:
    """A crun pod on another node whose name and namespace are hostile markup."""
    return build_pod(
        [*sandbox_rows(XSS_SANDBOX), *container_rows("<b>side</b>", APP_CONTAINER[::-1])],
        host="node-b",
        sandbox_id=XSS_SANDBOX,
        name=XSS_NAME,
        namespace='ns"&<x>',
        uid=None,
        start_ns=start_ns,
        pod_self_ms=0.4,
        runtime="crun",
        runtime_handler="crun",
        containers=("<b>side</b>",),
    )


def make_analysis(pods: Sequence[Pod] | None = None) -> Analysis:
    """Three pod starts on two nodes: one fine, one failed in CNI, one with a hostile name."""
    chosen = tuple(pods) if pods is not None else (web_pod(), failed_pod(), xss_pod())
    return Analysis(
        recording=RecordingInfo(
            files=("node-a.arrows", "node-b.arrows"),
            hosts=tuple(sorted({p.host for p in chosen})),
            kernels=("6.18.0-amd64",),
            start_ns=min((p.start_ns for p in chosen), default=T0) - 1_000_000_000,
            end_ns=max((p.end_ns for p in chosen), default=T0) + 1_000_000_000,
            drops=0,
            complete=True,
        ),
        pods=chosen,
        summary={"pods": len(chosen)},
    )
