"""What the driver sends and how it summarises, without a containerd."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from startprof.cri.proto import api_pb2 as api
from startprof.errors import InputError, LabError
from startprof.lab.driver import (
    PodResult,
    RunResult,
    run_pods,
    sandbox_config,
)
from startprof.lab.paths import LabPaths


def test_sandbox_config_is_what_the_kubelet_sends() -> None:
    c = sandbox_config(LabPaths(Path("/l")), "sp-x-000", "uid-1", "x")
    assert (c.metadata.name, c.metadata.uid, c.metadata.namespace) == (
        "sp-x-000",
        "uid-1",
        "startprof",
    )
    assert c.hostname == "sp-x-000"
    assert c.log_directory == "/l/pods/startprof_sp-x-000_uid-1"
    assert c.linux.cgroup_parent == "/startprof-lab/poduid-1"
    assert c.linux.security_context.namespace_options.network == api.POD
    assert c.labels["io.kubernetes.pod.uid"] == "uid-1"
    # Round-trips through the wire format with the upstream field numbers.
    assert api.PodSandboxConfig.FromString(c.SerializeToString()) == c


def _rec(method: str, ms: float, status: str = "ok") -> dict[str, Any]:
    return {
        "method": f"/runtime.v1.RuntimeService/{method}",
        "start_monotonic_ns": 0,
        "end_monotonic_ns": int(ms * 1e6),
        "status": status,
    }


def test_stats_per_method_and_pod_start() -> None:
    result = RunResult(
        handler="runc-bridge",
        records=[
            _rec("RunPodSandbox", 70),
            _rec("RunPodSandbox", 80),
            _rec("StartContainer", 40),
            _rec("StartContainer", 999, status="DEADLINE_EXCEEDED"),
        ],
        pods=[PodResult("a", "u", "s", 120.0, None), PodResult("b", "u", "s", None, "boom")],
    )
    stats = {s.label: s for s in result.stats()}
    assert list(stats) == ["RunPodSandbox", "StartContainer", "pod start"]
    assert stats["RunPodSandbox"].median_ms == 75.0 and stats["RunPodSandbox"].count == 2
    assert stats["StartContainer"].count == 1  # failed calls are not latencies
    assert stats["pod start"].median_ms == 120.0
    assert result.errors == ["b: boom"]


def test_bad_counts_are_input_errors() -> None:
    with pytest.raises(InputError, match="--pods"):
        run_pods("/nonexistent/run/containerd.sock", "runc-bridge", pods=0)
    with pytest.raises(InputError, match="--concurrency"):
        run_pods("/nonexistent/run/containerd.sock", "runc-bridge", concurrency=0)


def test_lab_not_up_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(LabError, match="the lab is not up"):
        run_pods(str(tmp_path / "run" / "containerd.sock"), "runc-bridge")


def test_lab_commands_need_root(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from startprof.errors import PrivilegeError
    from startprof.lab.containerd import Lab

    monkeypatch.setattr("os.geteuid", lambda: 1000)
    with pytest.raises(PrivilegeError, match="lab up needs root"):
        Lab(LabPaths(tmp_path)).up()
    with pytest.raises(PrivilegeError, match="lab down needs root"):
        Lab(LabPaths(tmp_path)).down()
    assert Lab(LabPaths(tmp_path)).status() is None
