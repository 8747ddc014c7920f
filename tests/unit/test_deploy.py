"""deploy/daemonset.yaml against what the agent needs (docs/agent.md): the namespaces it checks
at start, the host paths bcc and the probes read, the node name, arguments the real command
line accepts, and resources that hold the measured footprint."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from startprof.cli.agent import agent_command

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
HOST_PATHS = {
    "/run/containerd": "the CRI socket and the shims' bundles (annotations)",
    "/sys/kernel/tracing": "tracefs: bcc attaches the tracepoints through it",
    "/sys/kernel/btf": "BTF",
    "/lib/modules": "bcc compiles against the node's headers (build -> /usr/src/...)",
    "/usr/src": "where /lib/modules/<release>/build points",
    "/sys/fs/cgroup": "cgroup ids and the pods' cgroups",
}
PEAK_RSS_MIB = 330
"""The agent's largest RSS measured (docs/agent.md: bcc at start-up, 65 pods, a soak)."""


@pytest.fixture(scope="module")
def pod() -> dict[str, Any]:
    docs = list(yaml.safe_load_all((DEPLOY / "daemonset.yaml").read_text()))
    (ds,) = [d for d in docs if d and d["kind"] == "DaemonSet"]
    spec: dict[str, Any] = ds["spec"]["template"]["spec"]
    return spec


def test_the_namespaces_the_agent_checks_at_start(pod: dict[str, Any]) -> None:
    assert pod["hostPID"] is True  # ensure_host_pid_namespace
    assert pod["hostNetwork"] is True  # cri_socket_in_containerd_netns reads containerd's netns
    (agent,) = pod["containers"]
    assert agent["securityContext"]["privileged"] is True


def test_every_host_path_is_mounted_where_it_is_on_the_host(pod: dict[str, Any]) -> None:
    (agent,) = pod["containers"]
    volumes = {v["name"]: v["hostPath"]["path"] for v in pod["volumes"]}
    mounted = {m["mountPath"]: volumes[m["name"]] for m in agent["volumeMounts"]}
    for path, why in HOST_PATHS.items():
        assert mounted.get(path) == path, f"{path} ({why}) is not mounted at the same path"


def test_the_node_name_comes_from_the_downward_api(pod: dict[str, Any]) -> None:
    (agent,) = pod["containers"]
    env = {e["name"]: e for e in agent["env"]}
    assert env["NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    assert "k8s.node.name=$(NODE_NAME)" in env["OTEL_RESOURCE_ATTRIBUTES"]["value"].split(",")


def test_the_arguments_are_the_agents_and_the_socket_is_mounted(pod: dict[str, Any]) -> None:
    (agent,) = pod["containers"]
    args = agent["args"]
    assert args[0] == "agent"
    ctx = agent_command.make_context("agent", list(args[1:]))
    assert ctx.params["otlp_url"] == ""  # from OTEL_EXPORTER_OTLP_ENDPOINT
    socket = ctx.params["cri_socket"]
    assert any(socket.startswith(m["mountPath"] + "/") for m in agent["volumeMounts"])
    port = ctx.params["metrics_port"]
    assert {"containerPort": port, "name": "metrics", "protocol": "TCP"} in agent["ports"]


def _mib(quantity: str) -> float:
    units = {"Ki": 1 / 1024, "Mi": 1, "Gi": 1024}
    for suffix, scale in units.items():
        if quantity.endswith(suffix):
            return float(quantity[: -len(suffix)]) * scale
    return float(quantity) / (1 << 20)


def test_the_memory_limit_holds_the_measured_peak(pod: dict[str, Any]) -> None:
    (agent,) = pod["containers"]
    resources = agent["resources"]
    assert _mib(resources["limits"]["memory"]) >= 1.25 * PEAK_RSS_MIB
    assert _mib(resources["requests"]["memory"]) <= _mib(resources["limits"]["memory"])
