"""Drop windows: pods that overlap a ring buffer loss are incomplete, never silently ok."""

from __future__ import annotations

import json
from io import StringIO
from pathlib import Path

import pandas as pd
from rich.console import Console

from startprof.analysis import Source, analyze
from startprof.analysis.losses import drop_windows, mark_lossy
from startprof.lab.truth import read_truth
from startprof.pipeline import source_of
from startprof.recording import read_recording
from startprof.reporters.terminal import render

DATA = Path(__file__).parent.parent / "data" / "recordings"
RUN_POD_SANDBOX = "/runtime.v1.RuntimeService/RunPodSandbox"
START_CONTAINER = "/runtime.v1.RuntimeService/StartContainer"


def _drops(ts: int, total: int, since: int | None = None) -> dict[str, object]:
    attrs: dict[str, object] = {"per_cpu": [total, 0]}
    if since is not None:
        attrs["since_ns"] = since
    return {"kind": "drops", "ts_ns": ts, "ret": total, "attrs": json.dumps(attrs)}


def test_windows_are_bounded_by_the_previous_read() -> None:
    events = pd.DataFrame(
        [
            {"kind": "exec", "ts_ns": 5, "ret": None, "attrs": None},
            _drops(100, 3, since=90),  # grew between the reads at 90 and 100
            _drops(200, 3, since=190),  # the final event of a clean close: no growth
            _drops(300, 7, since=290),
            _drops(310, 9, since=300),  # adjacent windows merge
        ]
    )
    assert drop_windows(events, start_ns=0) == [(90, 100), (290, 310)]


def test_without_since_the_window_starts_at_the_previous_event_or_the_start() -> None:
    events = pd.DataFrame([_drops(100, 1), _drops(200, 1), _drops(300, 2)])
    assert drop_windows(events, start_ns=10) == [(10, 100), (200, 300)]


def test_no_drops_no_windows() -> None:
    assert drop_windows(pd.DataFrame([_drops(100, 0, since=0)]), start_ns=0) == []
    assert drop_windows(pd.DataFrame(columns=["kind", "ts_ns", "ret", "attrs"]), 0) == []


def _with_drop_at(name: str, pod_index: int) -> tuple[Source, str]:
    """A real recording with a loss injected in the middle of one pod's RunPodSandbox."""
    src = source_of(read_recording(DATA / f"{name}.arrows"))
    truth = [t for t in read_truth(DATA / f"{name}.truth.jsonl") if t["method"] == RUN_POD_SANDBOX]
    target = truth[pod_index]
    middle = (int(target["start_monotonic_ns"]) + int(target["end_monotonic_ns"])) // 2  # type: ignore[call-overload]
    drop = pd.DataFrame([_drops(middle + 1000, 4, since=middle)]).astype(
        {"ret": "int64[pyarrow]", "ts_ns": "int64[pyarrow]"}
    )
    events = pd.concat([src.events, drop], ignore_index=True)
    return Source(**{**src.__dict__, "events": events, "drops": 4}), str(target["sandbox_id"])


def test_the_pod_overlapping_a_drop_is_incomplete_and_the_others_stay_ok() -> None:
    source, hit = _with_drop_at("concurrent", 0)
    analysis = analyze([source])
    statuses = {p.sandbox_id: p.status for p in analysis.pods}
    assert statuses[hit] == "incomplete"
    pod = next(p for p in analysis.pods if p.sandbox_id == hit)
    assert pod.incomplete_reason is not None and "dropped" in pod.incomplete_reason
    # pods that do not overlap the window keep their status
    lo, hi = analysis.recording.drop_windows[0]
    for p in analysis.pods:
        if p.end_ns < lo or p.start_ns > hi:
            assert p.status == "ok", p.name
    assert analysis.summary["status"]["incomplete"] >= 1
    doc = analysis.to_dict()
    assert doc["recording"]["drop_windows"] == [{"start_wall_ns": lo, "end_wall_ns": hi}]
    assert any(p["incomplete_reason"] for p in doc["pods"])


def test_the_terminal_summary_warns_about_drops() -> None:
    source, _ = _with_drop_at("runc-bridge", 0)
    analysis = analyze([source])
    out = StringIO()
    render(analysis, analysis.pods, Console(file=out, width=200, highlight=False))
    text = out.getvalue()
    assert "drops 4" in text
    assert "warning: 4 events were dropped while recording; 1 pod(s)" in text
    assert "incomplete: events were dropped" in text


def test_failed_pods_stay_failed() -> None:
    src = source_of(read_recording(DATA / "runc-bridge.arrows"))
    ev = src.events.copy()
    bridge = ev.loc[(ev["kind"] == "exec") & ev["filename"].str.endswith("/bridge"), "pid"]
    ev.loc[(ev["kind"] == "exit_group") & (ev["pid"] == int(bridge.iloc[0])), "ret"] = 1
    pods = analyze([Source(**{**src.__dict__, "events": ev})]).pods
    everything = [(min(p.start_ns for p in pods), max(p.end_ns for p in pods))]
    marked = mark_lossy(pods, everything)
    assert sorted(p.status for p in marked) == ["failed", "incomplete"]


def test_a_sandbox_whose_start_was_lost_is_still_reported() -> None:
    """Only a late event of the sandbox is left (its CNI ADD and CRI calls were dropped): the
    pod is listed as incomplete inside the loss, and not at all without one."""
    from startprof.analysis.inputs import PodInputs, Proc
    from startprof.analysis.phases import _partial_pod

    env = {"CNI_COMMAND": "DEL", "CNI_PATH": "/usr/lib/cni", "CNI_CONTAINERID": "abc123"}
    env["CNI_ARGS"] = "K8S_POD_NAME=web-0;K8S_POD_NAMESPACE=shop;K8S_POD_UID=u-1"
    proc = Proc(1, 42, None, 1_000, 1_000, 1_100, 2_000, 0, ("/usr/lib/cni/bridge",),
                "/usr/lib/cni/bridge", env, "/usr/lib/cni/bridge", "abc123", None)  # fmt: skip
    inputs = PodInputs("abc123", procs=[proc])
    pod = _partial_pod("node-a", inputs, [(1_500, 1_600)])
    assert pod is not None
    assert (pod.status, pod.name, pod.namespace) == ("incomplete", "web-0", "shop")
    assert (pod.start_ns, pod.end_ns) == (1_000, 2_000)
    assert pod.incomplete_reason is not None and "dropped" in pod.incomplete_reason
    assert _partial_pod("node-a", inputs, [(500, 600)]) is not None  # its start may be lost
    assert _partial_pod("node-a", inputs, [(5_000, 6_000)]) is None
