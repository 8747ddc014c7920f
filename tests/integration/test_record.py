"""`startprof record` against real pods in the lab (issue 4).

Each test records a real `startprof lab run` through the CLI, exactly as a user would, then checks
the recording against the lab's CRI ground truth.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
import pytest
from client_timing import Edge, edge_failures

from startprof.lab.truth import read_truth
from startprof.recording import read_recording

if TYPE_CHECKING:
    from conftest import RunningLab

STARTPROF = [sys.executable, "-m", "startprof"]
CLONE_NEWNET = 0x40000000
RUN_POD_SANDBOX = "/runtime.v1.RuntimeService/RunPodSandbox"
CREATE_CONTAINER = "/runtime.v1.RuntimeService/CreateContainer"
START_CONTAINER = "/runtime.v1.RuntimeService/StartContainer"
PODS = 5


def record(
    lab: RunningLab, out: Path, *command: str, extra: tuple[str, ...] = ()
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "STARTPROF_LAB_DIR": str(lab.paths.root)}
    return subprocess.run(
        [*STARTPROF, "record", "-o", str(out), "--cri-socket", lab.socket, *extra, "--", *command],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def lab_run(lab: RunningLab, truth: Path, handler: str, *more: str) -> list[str]:
    return [*STARTPROF, "lab", "run", "--dir", str(lab.paths.root), "--runtime-handler", handler,
            "--truth", str(truth), *more]  # fmt: skip


def frame(path: Path) -> pd.DataFrame:
    df = read_recording(path).frame().astype(object)
    df = df.where(df.notna(), None)
    for column in ("argv", "env"):  # list cells as plain lists, [] when empty
        df[column] = [list(v) if v is not None else [] for v in df[column]]
    return df


def rows(df: pd.DataFrame, kind: str) -> list[dict[str, Any]]:
    return df[df["kind"] == kind].to_dict("records")  # type: ignore[return-value]


def within(ts: int, window: tuple[int, int]) -> bool:
    return window[0] <= ts <= window[1]


@pytest.mark.parametrize("handler", ["runc-bridge", "crun-bridge"])
def test_recording_holds_every_step_of_every_pod(
    lab: RunningLab, handler: str, tmp_path: Path
) -> None:
    runtime = handler.split("-")[0]
    if handler not in lab.handlers:
        pytest.skip(f"{runtime} is not installed")
    out, truth_path = tmp_path / "r.arrows", tmp_path / "truth.jsonl"
    # 5 pods: the 90 % rule below then allows 3 late replies of 30, not 1 of 18 (the lab client
    # hears ~1 reply in 40 late; with 3 pods a full run failed on 2 of 18 now and then)
    proc = record(lab, out, *lab_run(lab, truth_path, handler, "--pods", str(PODS)))
    assert proc.returncode == 0, proc.stderr
    assert "0 dropped" in proc.stderr
    rec = read_recording(out)
    assert rec.complete
    assert rec.end["drops"] == 0
    df = frame(out)
    truth = read_truth(truth_path)
    sandboxes = {t["pod"]: t for t in truth if t["method"] == RUN_POD_SANDBOX}
    assert len(sandboxes) == PODS

    execs = rows(df, "exec")
    done = rows(df, "exec_done")
    calls = rows(df, "cri_call")
    edges: list[Edge] = []
    for pod, rps in sandboxes.items():
        sid = rps["sandbox_id"]
        window = (rps["start_monotonic_ns"], rps["end_monotonic_ns"])
        cni_env = {"CNI_COMMAND=ADD", f"CNI_CONTAINERID={sid}"}
        for plugin in ("bridge", "host-local"):
            assert any(
                e["filename"].endswith(f"/{plugin}") and cni_env <= set(e["env"]) for e in execs
            ), (pod, plugin)
        # containerd makes the pod's network namespace
        assert any(
            r["comm"] == "containerd" and r["flags"] & CLONE_NEWNET and within(r["ts_ns"], window)
            for r in rows(df, "unshare")
        ), pod
        # the OCI runtime creates and starts the sandbox
        for verb in ("create", "start"):
            assert any(
                os.path.basename(e["argv"][0]) == runtime and verb in e["argv"] and sid in e["argv"]
                for e in execs
            ), (pod, verb)
        # the runtime's init joins the pod's network namespace
        assert any(
            r["nstype"] in (0, CLONE_NEWNET)
            and r["ret"] == 0
            and (r["comm"] or "").startswith(("runc:", "crun"))
            and within(r["ts_ns"], window)
            for r in rows(df, "setns")
        ), pod
        # the CNI plugin makes the veth pair
        assert any(
            r["nl_type"] == 16 and r["link_kind"] == "veth" and within(r["ts_ns"], window)
            for r in rows(df, "nl_send")
        ), pod
        # `runc start` returns once init has read the exec fifo, so the exec of /pause can land
        # just after RunPodSandbox replied (seen once on a loaded machine): allow 1 s of slack
        late = (window[0], window[1] + 1_000_000_000)
        assert any(r["filename"] == "/pause" and within(r["ts_ns"], late) for r in done), pod

        # CRI calls decoded from the socket agree with what the client measured
        pod_truth = [t for t in truth if t["pod"] == pod]
        for method in (RUN_POD_SANDBOX, CREATE_CONTAINER, START_CONTAINER):
            expected = [t for t in pod_truth if t["method"] == method]
            assert expected, (pod, method)
            for t in expected:
                key = "sandbox_id" if method == RUN_POD_SANDBOX else "container_id"
                match = [c for c in calls if c["method"] == method and c[key] == t[key]]
                assert len(match) == 1, (pod, method, match)
                c = match[0]
                assert c["grpc_status"] == "OK"
                # containerd reads the request after the client began the call and answers
                # before the client sees the reply (50 us: the clocks are read a little apart).
                # The reply's time is when its bytes reached the client's socket, before the
                # wake-up (sk_data_ready), so on loaded CPUs too.
                assert t["start_monotonic_ns"] - 50_000 <= c["start_ns"], (pod, method)
                assert c["end_ns"] <= t["end_monotonic_ns"] + 50_000, (pod, method)
                edges.append(Edge(f"{method} start", c["start_ns"] - t["start_monotonic_ns"]))
                edges.append(Edge(f"{method} end", t["end_monotonic_ns"] - c["end_ns"]))
    app_execs = [r for r in done if r["filename"] == "/app"]
    assert len(app_execs) == PODS
    # Within 1 ms of the client's own timestamps, but for the lab client's late wake-ups
    # (client_timing.py): two in three, a median within 0.75 ms (0.547 ms on crun-bridge in a
    # clean-clone CI run; test_analyze_live's rule), and no kind of edge late for every pod.
    # No call leaves the client's window (asserted above).
    failures = edge_failures(edges, share=2 / 3, median_ns=750_000)
    assert failures == [], failures


def test_all_lifts_the_filter(lab: RunningLab, tmp_path: Path) -> None:
    marker = f"sp-marker-{os.getpid()}"
    loop = ["sh", "-c", f"for i in 1 2 3 4 5; do /bin/true {marker}; done"]
    followed = record(lab, tmp_path / "followed.arrows", *loop)
    everything = record(lab, tmp_path / "all.arrows", *loop, extra=("--all",))
    assert followed.returncode == 0, followed.stderr
    assert everything.returncode == 0, everything.stderr

    def marked(path: Path) -> int:
        return sum(marker in e["argv"] for e in rows(frame(path), "exec"))

    assert marked(tmp_path / "followed.arrows") == 0
    assert marked(tmp_path / "all.arrows") == 5
    assert read_recording(tmp_path / "all.arrows").header.follow_all


def test_command_exit_code_is_passed_through(lab: RunningLab, tmp_path: Path) -> None:
    proc = record(lab, tmp_path / "r.arrows", "sh", "-c", "exit 7")
    assert proc.returncode == 7, proc.stderr
    assert read_recording(tmp_path / "r.arrows").end["stop_reason"] == "command exited"


SCHED_OTHER, SCHED_IDLE = 0, 5


def _policy_and_nice(stat: str) -> tuple[int, int]:
    """Scheduling policy and nice from a /proc/PID/stat line (fields 41 and 19)."""
    fields = stat.rsplit(")", 1)[1].split()  # after the comm, field 3 is fields[0]
    return int(fields[41 - 3]), int(fields[19 - 3])


def test_recorder_runs_idle_and_the_command_keeps_its_priority(
    lab: RunningLab, tmp_path: Path
) -> None:
    seen = tmp_path / "seen"
    script = f"sleep 1; cat /proc/$PPID/stat > {seen}.recorder; cat /proc/$$/stat > {seen}.command"
    proc = record(lab, tmp_path / "r.arrows", "sh", "-c", script)
    assert proc.returncode == 0, proc.stderr
    assert _policy_and_nice(Path(f"{seen}.recorder").read_text())[0] == SCHED_IDLE
    assert _policy_and_nice(Path(f"{seen}.command").read_text()) == (SCHED_OTHER, 0)
    assert read_recording(tmp_path / "r.arrows").end["recorder_priority"] == "idle"


def test_sigkill_leaves_a_readable_file(lab: RunningLab, tmp_path: Path) -> None:
    out, truth = tmp_path / "killed.arrows", tmp_path / "truth.jsonl"
    env = {**os.environ, "STARTPROF_LAB_DIR": str(lab.paths.root)}
    recorder = subprocess.Popen(
        [*STARTPROF, "record", "-o", str(out), "--cri-socket", lab.socket],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert recorder.stderr is not None
        # the recorder says where it writes once the probes are attached
        deadline = time.monotonic() + 60
        while out.stat().st_size == 0 if out.exists() else True:
            assert time.monotonic() < deadline, "the recorder never started writing"
            time.sleep(0.1)
        subprocess.run(lab_run(lab, truth, "runc-bridge"), check=True, capture_output=True)
        time.sleep(1.5)  # at least one flush interval after the pod
    finally:
        recorder.send_signal(signal.SIGKILL)
        recorder.wait()
    rec = read_recording(out)
    assert not rec.complete
    df = frame(out)
    sandbox = next(t for t in read_truth(truth) if t["method"] == RUN_POD_SANDBOX)["sandbox_id"]
    assert any(f"CNI_CONTAINERID={sandbox}" in e["env"] for e in rows(df, "exec")), (
        "the pod's CNI execs are in the file"
    )


def test_no_listener_is_one_clear_line(tmp_path: Path) -> None:
    proc = subprocess.run(
        [*STARTPROF, "record", "-o", str(tmp_path / "x.arrows"),
         "--cri-socket", str(tmp_path / "none.sock"), "--duration", "1"],
        capture_output=True,
        text=True,
        timeout=60,
    )  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1
    assert "nothing listens on the CRI socket" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_syscall_hooks_are_chosen_and_recorded(lab: RunningLab, tmp_path: Path) -> None:
    """auto takes fentry where the kernel loads it, else tracepoints, and says which; fentry
    asked for on a kernel that refuses it is one clear line (this CI VM answers EPERM)."""
    from startprof.probes import hooks

    auto = record(lab, tmp_path / "auto.arrows", "true")
    assert auto.returncode == 0, auto.stderr
    chosen = read_recording(tmp_path / "auto.arrows").header.extra["syscall_hooks"]
    assert chosen == ("fentry" if hooks.fentry_usable() else "tracepoint")
    forced = record(lab, tmp_path / "tp.arrows", "true", extra=("--syscall-hooks", "tracepoint"))
    assert forced.returncode == 0, forced.stderr
    assert read_recording(tmp_path / "tp.arrows").header.extra["syscall_hooks"] == "tracepoint"
    if not hooks.fentry_usable():
        refused = record(lab, tmp_path / "f.arrows", "true", extra=("--syscall-hooks", "fentry"))
        assert refused.returncode == 1, refused.stderr  # EnvironmentProblem
        lines = [ln for ln in refused.stderr.splitlines() if ln.startswith("startprof:")]
        assert len(lines) == 1 and "fentry" in lines[0], refused.stderr
        assert "Traceback" not in refused.stderr
