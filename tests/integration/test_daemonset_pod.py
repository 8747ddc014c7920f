"""Issue 18: deploy/daemonset.yaml's pod spec runs on the lab as a pod (`startprof lab daemonset`:
the agent's image built from this machine, the pod started over CRI the kubelet's way, privileged
with the host's pid and network namespaces and the manifest's hostPath mounts), and the agent
inside it records the lab's other pods: a real OTLP/gRPC receiver gets one trace per pod, with
the node's name from the downward API. Ctrl-C stops the pod with its grace period: the agent
exits 0 on SIGTERM and leaves no probe in the kernel.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from test_agent_live import Received, receiver  # noqa: F401 (the fixture)
from test_reliability import tracepoint_programs

from startprof.lab.agent_image import REFERENCE
from startprof.lab.cri import CriClient
from startprof.lab.teardown import quiet_call
from startprof.lab.truth import read_truth

if TYPE_CHECKING:
    from conftest import RunningLab

pytestmark = pytest.mark.usefixtures("clean_otlp_env")

STARTPROF = [sys.executable, "-m", "startprof"]
ROOT = Path(__file__).resolve().parents[2]
RUN_POD_SANDBOX = "/runtime.v1.RuntimeService/RunPodSandbox"
PODS = 5


def _wait_for(what: str, log: Path, proc: subprocess.Popen[bytes], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while what not in log.read_text():
        assert proc.poll() is None, log.read_text()
        assert time.monotonic() < deadline, f"no {what!r} within {seconds:g}s:\n{log.read_text()}"
        time.sleep(0.2)


def test_the_daemonset_pod_runs_the_agent_and_it_records_the_labs_pods(
    lab: RunningLab,
    receiver: tuple[str, Received],  # noqa: F811
    tmp_path: Path,
) -> None:
    url, received = receiver
    log, truth_path = tmp_path / "daemonset.log", tmp_path / "truth.jsonl"
    before = tracepoint_programs()
    t0 = time.monotonic()
    with log.open("w") as err:
        pod = subprocess.Popen(
            [*STARTPROF, "lab", "daemonset", "--dir", str(lab.paths.root), "--otlp", url],
            cwd=ROOT,  # --manifest defaults to deploy/daemonset.yaml
            stderr=err,
        )
    try:
        _wait_for("agent following containerd", log, pod, 300)  # image built, probes attached
        ready_s = time.monotonic() - t0
        run = subprocess.run(
            [
                *STARTPROF,
                "lab",
                "run",
                "--dir",
                str(lab.paths.root),
                "--pods",
                str(PODS),
                "--truth",
                str(truth_path),
            ],
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert run.returncode == 0, run.stderr
        names = {t["pod"] for t in read_truth(truth_path) if t["method"] == RUN_POD_SANDBOX}
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with received.lock:
                got = {a.get("k8s.pod.name") for a in received.span_attrs.values()}
            if names <= got:
                break
            time.sleep(0.2)
    finally:
        pod.send_signal(signal.SIGINT)
        code = pod.wait(timeout=120)
        with CriClient(lab.socket) as client:  # the lab's own two images, as other tests expect
            quiet_call(partial(client.remove_image, REFERENCE))
    text = log.read_text()
    print(f"daemonset pod ready in {ready_s:.1f}s (image build and import included)")
    assert code == 0, text
    assert "container exit codes: 0" in text, text
    assert tracepoint_programs() - before == set(), "probes left in the kernel"
    with received.lock:
        pods = {a.get("k8s.pod.name") for a in received.span_attrs.values()}
        nodes = {r.get("k8s.node.name") for r in received.resources.values()}
    assert names <= pods, (names, pods)
    assert nodes == {os.uname().nodename}  # the downward API's spec.nodeName
