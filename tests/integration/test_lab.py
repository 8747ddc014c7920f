"""The lab against a real containerd: pods on every handler, a real pull, the CLI, and a
tear-down that leaves nothing behind (issue 3)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from startprof.lab import cri
from startprof.lab.config import LAB_CGROUP
from startprof.lab.containerd import Lab
from startprof.lab.cri import CriClient
from startprof.lab.driver import NAMESPACE, RunResult, run_pods
from startprof.lab.host import cgroup_mountpoints
from startprof.lab.leaks import find_leaks
from startprof.lab.registry import read_served, registry_log_beside
from startprof.lab.truth import TRUTH_KEYS, read_truth

if TYPE_CHECKING:
    from conftest import RunningLab

START_SEQUENCE = [cri.VERSION, cri.RUN_POD_SANDBOX, cri.IMAGE_STATUS]


def _assert_all_ok(result: RunResult) -> None:
    assert result.errors == []
    bad = [r for r in result.records if r["status"] != "ok"]
    assert bad == [], bad
    for r in result.records:
        assert tuple(r) == TRUTH_KEYS
        assert r["start_monotonic_ns"] <= r["end_monotonic_ns"]
        assert r["start_wall_ns"] <= r["end_wall_ns"]


def _pod_calls(result: RunResult, pod: str) -> list[str]:
    return [r["method"] for r in result.records if r["pod"] == pod]


def _assert_torn_down(lab: RunningLab, *results: RunResult) -> None:
    with CriClient(lab.socket) as client:
        assert client.list_pod_sandbox() == []
        assert client.list_containers() == []
    for result in results:
        for pod in result.pods:
            left = [m / LAB_CGROUP / f"pod{pod.uid}" for m in cgroup_mountpoints()]
            assert [d for d in left if d.exists()] == []


def test_up_again_reports_the_running_lab(lab: RunningLab) -> None:
    again = Lab(lab.paths).up()
    assert again.pid == lab.info.pid
    assert set(lab.handlers) >= {"runc-bridge", "runc-ptp"}
    assert len(again.images) == 2


@pytest.mark.parametrize("handler", ["runc-bridge", "runc-ptp", "crun-bridge", "crun-ptp"])
def test_three_pods_per_handler(lab: RunningLab, handler: str, tmp_path: Path) -> None:
    if handler not in lab.handlers:
        pytest.skip(f"{handler.split('-')[0]} is not installed")
    truth = tmp_path / "truth.jsonl"
    plain = run_pods(lab.socket, handler, pods=2, concurrency=2, truth_path=truth)
    multi = run_pods(lab.socket, handler, pods=1, containers=2, init_containers=1, truth_path=truth)
    for result in (plain, multi):
        _assert_all_ok(result)
        assert len(result.pod_start_ms) == len(result.pods)
        assert {r["namespace"] for r in result.records if r["pod"]} == {NAMESPACE}
    assert read_truth(truth) == plain.records + multi.records

    pod = multi.pods[0]
    calls = _pod_calls(multi, pod.name)
    assert calls[:3] == START_SEQUENCE
    counts = Counter(calls)
    assert counts[cri.CREATE_CONTAINER] == counts[cri.START_CONTAINER] == 3
    assert counts[cri.STOP_POD_SANDBOX] == counts[cri.REMOVE_POD_SANDBOX] == 1
    # The init container runs to completion before the first app container is created.
    created = [r["container"] for r in multi.records if r["method"] == cri.CREATE_CONTAINER]
    assert created == ["init-0", "app-0", "app-1"]
    # Every call from RunPodSandbox on carries the sandbox id (Version precedes it).
    ids = {r["sandbox_id"] for r in multi.records if r["pod"] == pod.name}
    assert ids == {"", pod.sandbox_id}
    assert [r["method"] for r in multi.records if not r["sandbox_id"]] == [cri.VERSION]
    _assert_torn_down(lab, plain, multi)


def test_pull_from_the_lab_registry(lab: RunningLab, tmp_path: Path) -> None:
    truth = tmp_path / "t.truth.jsonl"
    result = run_pods(lab.socket, "runc-bridge", pods=2, concurrency=2, pull=True, truth_path=truth)
    _assert_all_ok(result)
    _assert_torn_down(lab, result)
    pulls = [r for r in result.records if r["method"] == cri.PULL_IMAGE]
    assert pulls, "--pull must make a real PullImage"
    assert result.image.startswith("localhost:")
    # A new image of 3 layers: containerd fetched every blob of it, the config and 3 layers.
    fetched = [s for s in result.served if s["kind"] == "blob" and s["method"] == "GET"]
    assert len({s["digest"] for s in fetched}) == 4
    assert sum(s["bytes"] for s in fetched) > 2 << 20
    assert read_served(lab.paths.registry_log) == result.served
    assert read_served(registry_log_beside(truth)) == result.served
    with CriClient(lab.socket) as client:
        # The lab's own copy stays, the pulled one is gone.
        tags = {t for i in client.list_images() for t in i.repo_tags}
    assert set(lab.info.images) <= tags
    assert not any(t.startswith("localhost:") for t in tags)


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "startprof", "lab", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_cli_status_and_unknown_handler(lab: RunningLab) -> None:
    status = _cli("status", "--json", "--dir", str(lab.paths.root))
    assert status.returncode == 0, status.stderr
    doc = json.loads(status.stdout)
    assert doc["up"] is True
    assert doc["socket"] == lab.socket
    assert doc["handlers"] == list(lab.handlers)

    bad = _cli("run", "--runtime-handler", "nope", "--dir", str(lab.paths.root))
    assert bad.returncode == 2
    lines = bad.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "nope" in lines[0] and "runc-bridge" in lines[0]


def test_down_removes_kept_pods_and_leaves_nothing(lab: RunningLab) -> None:
    kept = run_pods(lab.socket, lab.handlers[-1], pods=2, keep=True)
    _assert_all_ok(kept)
    assert len(Lab(lab.paths).status().pods) == 2  # type: ignore[union-attr]
    lab.lab.down()
    assert find_leaks(lab.paths) == []
    assert Lab(lab.paths).status() is None
    # Back up for the tests that come after (the session fixture takes it down at the end).
    lab.info = lab.lab.up()
