"""Every kind of pod a node starts, analysed right (issue 14).

Each recording in tests/data/recordings named here was made on the lab with `lab run --kind
...` (tests/tools/make_recordings.py), with the lab's CRI ground truth beside it; each test
holds what `analyze` says against what the lab did.
"""

from __future__ import annotations

from collections import Counter
from functools import cache
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from startprof.analysis import Source, analyze
from startprof.analysis.inputs import canonical_method
from startprof.analysis.model import STARTED_BEFORE, Analysis, Phase, Pod
from startprof.analysis.phases import STAYED_UP_NS, own_error
from startprof.lab.truth import read_truth
from startprof.pipeline import analyze_files, source_of
from startprof.recording import read_recording

DATA = Path(__file__).parent.parent / "data" / "recordings"


@cache
def analysis_of(name: str) -> Analysis:
    return analyze_files([DATA / f"{name}.arrows"])


@cache
def truth_of(name: str) -> tuple[dict[str, Any], ...]:
    return tuple(read_truth(DATA / f"{name}.truth.jsonl"))


def calls(name: str, method: str, **match: str) -> list[dict[str, Any]]:
    return [
        t
        for t in truth_of(name)
        if t["method"].endswith(f"/{method}") and all(t[k] == v for k, v in match.items())
    ]


def only_pod(name: str) -> Pod:
    (pod,) = analysis_of(name).pods
    return pod


def named(pod: Pod, name: str) -> list[Phase]:
    return [p for p in pod.phases if p.name == name]


def wall(name: str, t: dict[str, Any], key: str) -> int:
    offset = read_recording(DATA / f"{name}.arrows").header.clock_offset_ns
    return int(t[f"{key}_monotonic_ns"]) + offset


def near(a: int, b: int, of_ns: int) -> bool:
    return abs(a - b) <= max(1_000_000, 0.02 * of_ns)


def without_cri(name: str) -> Analysis:
    src = source_of(read_recording(DATA / f"{name}.arrows"))
    events = src.events[src.events["kind"] != "cri_call"].reset_index(drop=True)
    return analyze([Source(**{**src.__dict__, "events": events})])


# --- hostNetwork -----------------------------------------------------------------------------
def test_host_network_pods_have_a_sandbox_without_network_and_are_ok() -> None:
    pods = analysis_of("host-network").pods
    truth = {t["sandbox_id"]: t for t in calls("host-network", "RunPodSandbox")}
    assert {p.sandbox_id for p in pods} == set(truth)
    for pod in pods:
        assert pod.status == "ok", (pod.name, pod.error)
        names = {p.name for p in pod.phases}
        assert "sandbox" in names and "runtime.create" in names and "process.exec" in names
        assert not any(n.startswith(("cni.", "sandbox.netns", "netlink")) for n in names)
        sandbox = named(pod, "sandbox")[0]
        t = truth[pod.sandbox_id]
        assert near(sandbox.start_ns, wall("host-network", t, "start"), sandbox.duration_ns)
        assert near(sandbox.end_ns, wall("host-network", t, "end"), sandbox.duration_ns)


def test_host_network_pods_without_socket_data() -> None:
    for pod in without_cri("host-network").pods:
        assert pod.status == "ok"
        assert named(pod, "sandbox")[0].attributes["source"] == "kernel"
        assert [p.attributes["filename"] for p in named(pod, "process.exec")] == ["/app"]


# --- failing in each phase ---------------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "method", "failed_phase", "own_words"),
    [
        (
            "runtime-fail",
            "RunPodSandbox",
            "runtime.create",
            "unable to set hostname without a private UTS namespace",
        ),
        ("cni-fail", "RunPodSandbox", "cni.plugin bridge", "numerical result out of range"),
        ("bad-image", "PullImage", "image", "no-such-image:1: not found"),
        (
            "no-entrypoint",
            "StartContainer",
            "runtime.create",
            'exec: "/startprof-no-such-entrypoint": stat /startprof-no-such-entrypoint: '
            "no such file or directory",
        ),
    ],
)
def test_a_failed_pod_names_the_phase_and_the_error_in_its_own_words(
    name: str, method: str, failed_phase: str, own_words: str
) -> None:
    (truth,) = [t for t in calls(name, method) if t["status"] != "ok"]
    pod = only_pod(name)
    assert (pod.status, pod.failed_phase) == ("failed", failed_phase)
    assert (pod.name, pod.uid) == (truth["pod"], truth["uid"])
    assert own_words in truth["error"]  # what the lab's client was told
    assert pod.error is not None and own_words in pod.error
    # the failing phase says it, not only the CRI call around it
    failing = [p for p in pod.phases if p.name == failed_phase and p.status == "error"]
    assert failing and own_words in (failing[-1].error or "")
    assert analysis_of(name).summary["failures"][0]["error"] == pod.error


def test_a_runtime_failure_in_the_sandbox_joins_its_call_though_the_bundle_was_gone() -> None:
    """runc refused the sandbox before its config.json could be read: no annotations, no CNI;
    the failed RunPodSandbox (no sandbox id in the reply) still finds its sandbox."""
    pod = only_pod("runtime-fail")
    assert pod.runtime_handler == "runc-bridge"
    sandbox = named(pod, "sandbox")[0]
    assert sandbox.status == "error" and "RunPodSandbox UNKNOWN" in (sandbox.error or "")
    assert not any(p.name.startswith("cni.") for p in pod.phases)  # hostNetwork: no CNI


def test_own_error_takes_the_plugins_and_runtimes_words_out_of_containerds() -> None:
    (rps,) = calls("cni-fail", "RunPodSandbox")
    assert own_error(rps["error"]) == (
        "cni",
        "bridge",
        'failed to create bridge "sp-bridge-name-too-long": could not add '
        '"sp-bridge-name-too-long": numerical result out of range',
    )
    (rps,) = calls("runtime-fail", "RunPodSandbox")
    assert own_error(rps["error"]) == (
        "runtime",
        "create",
        "unable to set hostname without a private UTS namespace",
    )
    (pull,) = calls("bad-image", "PullImage")
    assert own_error(pull["error"]) is None  # containerd's own words: kept whole


# --- crash loops -------------------------------------------------------------------------------
def test_a_crash_loop_that_never_stays_up_fails_with_its_restarts_counted() -> None:
    pod = only_pod("crash-loop")
    creates = calls("crash-loop", "CreateContainer", container="app-0")
    assert len(creates) == 4
    assert pod.status == "failed"
    assert pod.restarts == len(creates) - 1
    assert pod.failed_phase == "container app-0"
    assert pod.error == "exited with code 1 at each of its 4 starts (crash loop)"
    attempts = [p for p in pod.phases if p.name == "container app-0"]
    assert [p.attributes.get("attempt", 0) for p in attempts] == [0, 1, 2, 3]
    assert all(p.status == "error" and p.attributes["exit_code"] == 1 for p in attempts)
    assert pod.containers == ("app-0",)


def test_a_crash_loop_that_ends_is_restarted_and_its_start_ends_at_the_start_that_stayed_up() -> (
    None
):
    pod = only_pod("crash-then-up")
    starts = calls("crash-then-up", "StartContainer", container="app-0")
    assert len(starts) == 3
    assert (pod.status, pod.restarts, pod.error) == ("restarted", 2, None)
    attempts = [p for p in pod.phases if p.name == "container app-0"]
    assert [p.status for p in attempts] == ["error", "error", "ok"]
    last_exec = [p for p in pod.phases if p.name == "process.exec"][-1]
    assert pod.end_ns == max(last_exec.end_ns, attempts[-1].end_ns)
    assert near(attempts[-1].end_ns, wall("crash-then-up", starts[-1], "end"), 50_000_000)
    # never "ok with a long start": restarted pods stay out of the start-time statistics
    summary = analysis_of("crash-then-up").summary
    assert summary["status"]["restarted"] == 1 and summary["pod_ms"]["n"] == 0
    assert summary["restarts"] == 2


def test_a_crash_is_an_exit_soon_after_the_exec_that_nobody_asked_for() -> None:
    """Containers the lab stopped (StopContainer, runc kill) are no crashes however short
    they ran: every pod of the plain recordings stays ok with no restart."""
    for name in ("runc-bridge", "crun-bridge", "concurrent", "multi-container"):
        for pod in analysis_of(name).pods:
            assert (pod.status, pod.restarts) == ("ok", 0), (name, pod.name)
    assert STAYED_UP_NS == 1_000_000_000


# --- sidecars, several containers ---------------------------------------------------------------
def test_a_sidecar_starts_between_init_and_app_containers_and_keeps_running() -> None:
    pod = only_pod("sidecar")
    assert pod.status == "ok"
    assert pod.containers == ("init-0", "sidecar-0", "app-0", "app-1")
    spans = {p.name: p for p in pod.phases if p.kind == "container"}
    init, sidecar = spans["container init-0"], spans["container sidecar-0"]
    assert init.end_ns <= sidecar.start_ns  # the init container ran to completion first
    assert sidecar.end_ns <= spans["container app-0"].start_ns  # started before the apps
    images = [p for p in pod.phases if p.name == "image"]
    assert [p.attributes["container"] for p in images] == list(pod.containers)


# --- image calls -----------------------------------------------------------------------------
def test_a_slow_pull_belongs_to_the_pod_that_pulled_and_no_other() -> None:
    pods = {p.name: p for p in analysis_of("slow-pull").pods}
    (pull,) = calls("slow-pull", "PullImage")
    assert set(pods) == {t["pod"] for t in calls("slow-pull", "RunPodSandbox")}
    for name, pod in pods.items():
        assert pod.status == "ok"
        mine = [(p.attributes["method"], p.start_ns) for p in pod.phases if p.name == "image"]
        truth = calls("slow-pull", "ImageStatus", pod=name) + calls(
            "slow-pull", "PullImage", pod=name
        )
        assert sorted(m for m, _ in mine) == sorted(t["method"].rsplit("/", 1)[1] for t in truth)
        for method, start in mine:
            (t,) = [t for t in truth if t["method"].endswith(method)]
            assert abs(start - wall("slow-pull", t, "start")) < 10_000_000, (name, method)
    slow = pods[pull["pod"]]
    (phase,) = [p for p in slow.phases if p.attributes.get("method") == "PullImage"]
    truth_ns = pull["end_monotonic_ns"] - pull["start_monotonic_ns"]
    assert truth_ns > 2e9 and abs(phase.duration_ns - truth_ns) < 5e6
    assert slow.bottleneck.startswith(tuple(f"{n}% of" for n in range(80, 101)))
    assert "in image" in slow.bottleneck


def test_concurrent_pods_each_get_their_own_image_status() -> None:
    """With two pods starting at once the old rule gave each pod every ImageStatus between its
    sandbox and its create; each pod's worker asked once."""
    for pod in analysis_of("concurrent").pods:
        assert len([p for p in pod.phases if p.name == "image"]) == 1, pod.name


# --- runtimes by what they do ---------------------------------------------------------------
def test_a_wrapper_runtime_is_recognised_by_create_bundle_and_reported_as_what_it_became() -> None:
    pod = only_pod("wrapped-runtime")
    assert (pod.status, pod.runtime, pod.runtime_handler) == (
        "ok",
        "runc",
        "runc-wrapped-bridge",
    )
    creates = named(pod, "runtime.create")
    assert len(creates) == 2 == len(named(pod, "runtime.start"))
    assert {p.attributes["wrapper"] for p in creates} == {"startprof-runc-wrapper"}
    assert [p.attributes["filename"] for p in named(pod, "process.exec")] == ["/app"]


@pytest.mark.parametrize("cri", [True, False], ids=["with-cri", "kernel-only"])
def test_oci_hooks_are_their_own_phases_and_never_the_entrypoint(cri: bool) -> None:
    (pod,) = (analysis_of("hooked-runtime") if cri else without_cri("hooked-runtime")).pods
    assert pod.status == "ok"
    hooks = [p for p in pod.phases if p.name == "runtime.hook startprof-hook"]
    assert sorted(p.attributes["argv"][1] for p in hooks) == ["createRuntime", "prestart"]
    by_id = {p.id: p for p in pod.phases}
    assert all(by_id[p.parent_id or ""].name == "runtime.create" for p in hooks)
    entry = [p for p in pod.phases if p.name == "process.exec"]
    assert [p.attributes["filename"] for p in entry] == ["/pause", "/app"][-len(entry) :]
    container = next(p for p in pod.phases if p.name == "container app-0")
    start = next(p for p in pod.phases if p.name == "runtime.start" and container.id in p.id)
    assert container.end_ns >= start.start_ns  # it did not "end" at the hook


def test_v1alpha2_calls_are_read_as_v1() -> None:
    src = source_of(read_recording(DATA / "runc-bridge.arrows"))
    ev = src.events.copy()
    methods = ev["method"].astype(object)
    ev["method"] = pd.Series(
        [
            m.replace("/runtime.v1.", "/runtime.v1alpha2.") if isinstance(m, str) else m
            for m in methods
        ],
        dtype=ev["method"].dtype,
        index=ev.index,
    )
    assert ev["method"].astype(object).dropna().str.startswith("/runtime.v1alpha2.").all()
    old = analyze([Source(**{**src.__dict__, "events": ev})])
    assert old.to_dict() == analysis_of("runc-bridge").to_dict()
    assert canonical_method("/runtime.v1alpha2.ImageService/PullImage") == (
        "/runtime.v1.ImageService/PullImage"
    )


# --- what is not a pod, or not all of one ------------------------------------------------------
def test_a_container_of_another_containerd_namespace_is_no_pod_and_is_counted() -> None:
    analysis = analysis_of("ctr-namespace")
    assert {p.sandbox_id for p in analysis.pods} == {
        t["sandbox_id"] for t in calls("ctr-namespace", "RunPodSandbox")
    }
    assert all(p.status == "ok" for p in analysis.pods)
    assert analysis.recording.foreign_containers == {"startprof-ctr": 1}
    assert analysis.summary["foreign_containers"] == {"startprof-ctr": 1}
    assert without_cri("ctr-namespace").recording.foreign_containers == {"startprof-ctr": 1}
    assert len(without_cri("ctr-namespace").pods) == 1


def test_a_pod_seen_mid_start_is_reported_as_started_before_recording() -> None:
    (pod,) = analysis_of("mid-start").pods
    (rps,) = calls("mid-start", "RunPodSandbox")
    assert pod.sandbox_id == rps["sandbox_id"]
    assert (pod.status, pod.incomplete_reason) == ("incomplete", STARTED_BEFORE)
    names = Counter(p.name for p in pod.phases)
    assert names["sandbox"] == 0  # it was made before the recording began
    assert names["container app-0"] == 1 and names["runtime.create"] >= 1
    assert [p.attributes["filename"] for p in named(pod, "process.exec")] == ["/app"]
    assert pod.start_ns >= analysis_of("mid-start").recording.start_ns


def test_a_quiet_node_has_no_pods_and_no_error() -> None:
    analysis = analysis_of("quiet")
    assert analysis.pods == ()
    assert analysis.summary["pods"] == 0
    assert read_recording(DATA / "quiet.arrows").frame()["kind"].eq("proc").sum() >= 2


def test_a_runtime_of_any_name_is_known_by_its_create_bundle() -> None:
    """runc renamed kata-runtime (its argv, filenames and re-execs): the same phases, by name."""
    src = source_of(read_recording(DATA / "runc-bridge.arrows"))
    ev = src.events.copy()

    def renamed(value: Any) -> Any:
        if isinstance(value, str):
            return value.replace("/usr/sbin/runc", "/opt/kata/bin/kata-runtime")
        if value is None or value is pd.NA:
            return value
        return [renamed(v) for v in value]

    for column in ("argv", "filename"):
        ev[column] = pd.Series(
            [renamed(v) for v in ev[column].astype(object)], dtype=ev[column].dtype, index=ev.index
        )
    kata = analyze([Source(**{**src.__dict__, "events": ev})])
    runc = analysis_of("runc-bridge")
    for pod, before in zip(kata.pods, runc.pods, strict=True):
        assert pod.runtime == "kata-runtime"
        assert [p.name for p in pod.phases] == [p.name for p in before.phases]
        assert [p.attributes["filename"] for p in named(pod, "process.exec")] == ["/app"]
