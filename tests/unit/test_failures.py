"""A RunPodSandbox that failed still belongs to its pod (issue 9).

A failed RunPodSandbox replies no sandbox id; the analysis joins it to the sandbox whose CNI
plugins ran for the same pod uid during the call, so the pod shows the CRI error as well.
"""

from __future__ import annotations

from pathlib import Path

from startprof.analysis import Source, analyze
from startprof.pipeline import source_of
from startprof.recording import read_recording

DATA = Path(__file__).parent.parent / "data" / "recordings"
RUN_POD_SANDBOX = "/runtime.v1.RuntimeService/RunPodSandbox"


def test_failed_run_pod_sandbox_joins_its_pod_by_uid() -> None:
    src = source_of(read_recording(DATA / "runc-bridge.arrows"))
    ev = src.events.copy()
    rps = ev.index[(ev["kind"] == "cri_call") & (ev["method"] == RUN_POD_SANDBOX)][0]
    sandbox, uid = ev.at[rps, "sandbox_id"], ev.at[rps, "uid"]
    assert sandbox and uid
    ev.at[rps, "sandbox_id"] = None  # as containerd replies when the sandbox failed
    ev.at[rps, "grpc_status"] = "Unknown"
    execs = ev[(ev["kind"] == "exec") & ev["filename"].str.endswith("/bridge")]
    bridge = next(
        int(pid)
        for pid, env in zip(execs["pid"], execs["env"], strict=True)
        if f"CNI_CONTAINERID={sandbox}" in list(env)
    )
    ev.loc[(ev["kind"] == "exit_group") & (ev["pid"] == bridge), "ret"] = 1
    pods = {p.sandbox_id: p for p in analyze([Source(**{**src.__dict__, "events": ev})]).pods}
    pod = pods[sandbox]
    assert pod.status == "failed"
    assert pod.failed_phase == "cni.plugin bridge"
    phase = next(p for p in pod.phases if p.name == "sandbox")
    assert (phase.status, phase.error, phase.attributes["source"]) == (
        "error",
        "RunPodSandbox Unknown",
        "cri",
    )
