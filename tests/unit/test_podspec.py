"""deploy/daemonset.yaml's pod template as the kubelet turns it into CRI configs (lab/podspec)."""

from __future__ import annotations

from pathlib import Path

import pytest

from startprof.cri.proto import api_pb2 as api
from startprof.errors import InputError
from startprof.lab.paths import LabPaths
from startprof.lab.podspec import expand, load_template, pod_configs, pod_template

DAEMONSET = Path(__file__).resolve().parents[2] / "deploy" / "daemonset.yaml"


def _pod(tmp_path: Path, **kwargs: object) -> object:
    return pod_configs(
        load_template(DAEMONSET),
        LabPaths(tmp_path),
        node="node-1",
        relocate={"/run/containerd": "/lab/run"},
        **kwargs,  # type: ignore[arg-type]
    )


def test_the_daemonset_gets_the_host_namespaces_and_privileges_it_asks_for(
    tmp_path: Path,
) -> None:
    pod = _pod(tmp_path)
    sandbox = pod.sandbox  # type: ignore[attr-defined]
    ns = sandbox.linux.security_context.namespace_options
    assert (ns.network, ns.pid, ns.ipc) == (api.NODE, api.NODE, api.POD)
    assert sandbox.linux.security_context.privileged
    assert sandbox.hostname == ""  # the kubelet leaves a hostNetwork pod's hostname empty
    assert sandbox.metadata.namespace == "startprof"
    assert sandbox.metadata.name.startswith("startprof-agent-")
    (container,) = pod.containers  # type: ignore[attr-defined]
    assert container.linux.security_context.privileged
    assert container.linux.security_context.namespace_options.pid == api.NODE
    assert container.image.image == "startprof-agent:latest"
    assert pod.grace_s == 30  # type: ignore[attr-defined]


def test_env_comes_from_the_downward_api_and_expands_as_the_kubelet_does(tmp_path: Path) -> None:
    pod = _pod(tmp_path, env={"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4317"})
    envs = {kv.key: kv.value.decode() for kv in pod.containers[0].envs}  # type: ignore[attr-defined]
    assert envs["NODE_NAME"] == "node-1"
    assert envs["OTEL_RESOURCE_ATTRIBUTES"] == "k8s.node.name=node-1"
    assert envs["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://127.0.0.1:4317"


def test_the_containerd_directory_is_relocated_everywhere_it_is_named(tmp_path: Path) -> None:
    (container,) = _pod(tmp_path).containers  # type: ignore[attr-defined]
    assert "--cri-socket=/lab/run/containerd.sock" in container.args
    mounts = {m.container_path: (m.host_path, m.readonly) for m in container.mounts}
    assert mounts["/lab/run"] == ("/lab/run", False)
    assert mounts["/sys/kernel/tracing"] == ("/sys/kernel/tracing", False)
    assert mounts["/lib/modules"] == ("/lib/modules", True)
    assert mounts["/usr/src"] == ("/usr/src", True)


def test_resources_become_shares_quota_and_a_memory_limit(tmp_path: Path) -> None:
    res = _pod(tmp_path).containers[0].linux.resources  # type: ignore[attr-defined]
    assert res.cpu_shares == 102  # 100m requested: 100 * 1024 / 1000
    assert (res.cpu_quota, res.cpu_period) == (100_000, 100_000)  # limit 1 core
    assert res.memory_limit_in_bytes == 512 * 2**20
    assert res.oom_score_adj == -997  # system-node-critical


def test_kubelet_expansion_rules() -> None:
    env = {"A": "x"}
    assert expand("$(A)-$(B)-$$(A)", env) == "x-$(B)-$(A)"


def test_what_the_lab_does_not_convert_is_refused_by_name(tmp_path: Path) -> None:
    doc = {"kind": "Pod", "metadata": {"name": "p"}, "spec": {"containers": [{"name": "c",
           "image": "i", "lifecycle": {}}], "initContainers": []}}  # fmt: skip
    with pytest.raises(InputError, match="initContainers"):
        pod_configs(pod_template(doc), LabPaths(tmp_path), node="n")
    with pytest.raises(InputError, match="no pod template"):
        pod_template({"kind": "Service"})
    bad = tmp_path / "bad.yaml"
    bad.write_text("kind: [")
    with pytest.raises(InputError, match="not YAML"):
        load_template(bad)
