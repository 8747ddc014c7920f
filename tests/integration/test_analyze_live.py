"""`startprof analyze` on pods started and recorded just now, against the lab's ground truth."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from client_timing import Edge, edge_failures

from startprof.lab.truth import read_truth
from startprof.recording import read_recording

if TYPE_CHECKING:
    from conftest import RunningLab

STARTPROF = [sys.executable, "-m", "startprof"]
RUN_POD_SANDBOX = "/runtime.v1.RuntimeService/RunPodSandbox"
START_CONTAINER = "/runtime.v1.RuntimeService/StartContainer"


def test_fresh_pods_are_found_and_timed(lab: RunningLab, tmp_path: Path) -> None:
    out, truth_path = tmp_path / "r.arrows", tmp_path / "truth.jsonl"
    handler = "crun-bridge" if "crun-bridge" in lab.handlers else "runc-bridge"
    env = {**os.environ, "STARTPROF_LAB_DIR": str(lab.paths.root)}
    run = [
        *STARTPROF,
        "lab",
        "run",
        "--dir",
        str(lab.paths.root),
        "--runtime-handler",
        handler,
        "--pods",
        "3",
        "--containers",
        "2",
        "--init-containers",
        "1",
        "--truth",
        str(truth_path),
    ]
    proc = subprocess.run(
        [*STARTPROF, "record", "-o", str(out), "--cri-socket", lab.socket, "--", *run],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    analyzed = subprocess.run(
        [*STARTPROF, "analyze", "--json", str(out)], capture_output=True, text=True, timeout=120
    )
    assert analyzed.returncode == 0, analyzed.stderr
    doc = json.loads(analyzed.stdout)
    offset = read_recording(out).header.clock_offset_ns
    truth = read_truth(truth_path)
    pods = {p["sandbox_id"]: p for p in doc["pods"]}

    expected = {t["sandbox_id"]: t for t in truth if t["method"] == RUN_POD_SANDBOX}
    assert set(pods) == set(expected)
    edges: list[Edge] = []
    for sid, t in expected.items():
        pod = pods[sid]
        assert (pod["name"], pod["namespace"], pod["uid"]) == (t["pod"], t["namespace"], t["uid"])
        assert pod["status"] == "ok"
        assert pod["runtime_handler"] == handler
        assert pod["containers"] == ["init-0", "app-0", "app-1"]
        phases = {p["id"]: p for p in pod["phases"]}
        for p in pod["phases"]:
            if p["parent_id"] is not None:
                parent = phases[p["parent_id"]]
                assert parent["start_wall_ns"] <= p["start_wall_ns"] <= p["end_wall_ns"]
                assert p["end_wall_ns"] <= parent["end_wall_ns"]
        assert abs(sum(s["self_ms"] for s in pod["critical_path"]) - pod["duration_ms"]) <= 0.1
        sandbox = next(p for p in pod["phases"] if p["name"] == "sandbox")
        edges += _edges("sandbox", sandbox, t, offset)
        for start in (
            x for x in truth if x["sandbox_id"] == sid and x["method"] == START_CONTAINER
        ):
            container = next(
                p
                for p in pod["phases"]
                if p["attributes"].get("container_id") == start["container_id"]
            )
            phase = next(
                p
                for p in pod["phases"]
                if p["parent_id"] == container["id"] and p["name"] == "container.start"
            )
            edges += _edges("container.start", phase, start, offset)
    # containerd sees each call inside the client's window; within 1 ms for all but the lab
    # Python client's late wake-ups: test_record.py's rule (client_timing.py). 19 of 24 within
    # 1 ms failed an old 90 % rule in one of two clean-clone runs; the median was 0.54 ms in
    # another.
    failures = edge_failures(edges, share=2 / 3, median_ns=750_000)
    assert failures == [], failures


def _edges(name: str, phase: dict[str, int], truth: dict[str, object], offset: int) -> list[Edge]:
    """How far inside the client's window the phase starts and ends (ns)."""
    start = int(truth["start_monotonic_ns"]) + offset  # type: ignore[call-overload]
    end = int(truth["end_monotonic_ns"]) + offset  # type: ignore[call-overload]
    return [
        Edge(f"{name} start", phase["start_wall_ns"] - start),
        Edge(f"{name} end", end - phase["end_wall_ns"]),
    ]
