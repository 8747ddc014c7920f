"""Every kind of pod a node starts, started on the lab and recorded just now (issue 14).

One recording holds a run of each kind (`lab run --kind ...`, one after the other, so the probes
load once); each kind's pods, found by the sandbox ids and names in its own ground truth, must
get the status, phases and error text the unit tests hold the stored recordings to.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from startprof.analysis.model import Pod
from startprof.lab.truth import read_truth
from startprof.pipeline import analyze_files

if TYPE_CHECKING:
    from conftest import RunningLab

STARTPROF = [sys.executable, "-m", "startprof"]


def _ok(pods: list[Pod]) -> None:
    assert [p.status for p in pods] == ["ok"] * len(pods), [(p.name, p.error) for p in pods]


def _host_network(pods: list[Pod]) -> None:
    _ok(pods)
    assert not any(ph.name.startswith("cni.") for p in pods for ph in p.phases)


def _failed(phase: str, words: str) -> Callable[[list[Pod]], None]:
    def check(pods: list[Pod]) -> None:
        (pod,) = pods
        assert (pod.status, pod.failed_phase) == ("failed", phase), pod.error
        assert words in (pod.error or "")

    return check


def _restarted(pods: list[Pod]) -> None:
    (pod,) = pods
    assert (pod.status, pod.restarts) == ("restarted", 2)


def _sidecar(pods: list[Pod]) -> None:
    _ok(pods)
    assert pods[0].containers == ("init-0", "sidecar-0", "app-0")


def _slow_pull(pods: list[Pod]) -> None:
    _ok(pods)
    pulls = [p for p in pods for ph in p.phases if ph.attributes.get("method") == "PullImage"]
    assert len(pulls) == 1 and len(pods) == 2


def _wrapped(pods: list[Pod]) -> None:
    _ok(pods)
    creates = [ph for p in pods for ph in p.phases if ph.name == "runtime.create"]
    assert creates and {ph.attributes.get("wrapper") for ph in creates} == {
        "startprof-runc-wrapper"
    }


def _hooked(pods: list[Pod]) -> None:
    _ok(pods)
    assert any(ph.name == "runtime.hook startprof-hook" for p in pods for ph in p.phases)


KINDS: dict[str, tuple[list[str], Callable[[list[Pod]], None]]] = {
    "host-network": (["--kind", "host-network"], _host_network),
    "runtime-fail": (
        ["--kind", "runtime-fail"],
        _failed("runtime.create", "without a private UTS namespace"),
    ),
    "bad-image": (["--kind", "bad-image"], _failed("image", "not found")),
    "no-entrypoint": (["--kind", "no-entrypoint"], _failed("runtime.create", "no such file")),
    "crash-then-up": (["--kind", "crash-then-up"], _restarted),
    "sidecar": (["--kind", "sidecar", "--init-containers", "1"], _sidecar),
    "slow-pull": (
        ["--kind", "slow-pull", "--pods", "2", "--concurrency", "2", "--slow-pull-seconds", "1"],
        _slow_pull,
    ),
    "ctr": (["--kind", "ctr"], _ok),
    "wrapped": (["--runtime-handler", "runc-wrapped-bridge"], _wrapped),
    "hooked": (["--runtime-handler", "runc-hooked-bridge"], _hooked),
}


def test_every_pod_kind_is_analysed_as_what_it_is(lab: RunningLab, tmp_path: Path) -> None:
    runs = []
    for name, (args, _) in KINDS.items():
        argv = [*STARTPROF, "lab", "run", "--dir", str(lab.paths.root), *args]
        argv += ["--truth", str(tmp_path / f"{name}.jsonl")]
        runs.append(shlex.join(argv) + " || true")  # the failing kinds exit 1
    out = tmp_path / "kinds.arrows"
    env = {**os.environ, "STARTPROF_LAB_DIR": str(lab.paths.root)}
    proc = subprocess.run(
        [*STARTPROF, "record", "-o", str(out), "--cri-socket", lab.socket, "--",
         "sh", "-c", "; ".join(runs)],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    analysis = analyze_files([out])
    assert analysis.recording.foreign_containers == {"startprof-ctr": 1}
    by_name = {p.name: p for p in analysis.pods}
    for name, (_, check) in KINDS.items():
        started = sorted(
            {str(t["pod"]) for t in read_truth(tmp_path / f"{name}.jsonl") if t["pod"]}
        )
        assert started, name
        assert set(started) <= set(by_name), (name, started)
        check([by_name[n] for n in started])
    expected = sum(
        len({t["pod"] for t in read_truth(tmp_path / f"{n}.jsonl") if t["pod"]}) for n in KINDS
    )
    assert len(analysis.pods) == expected  # no phantom pod (the ctr container is none)
