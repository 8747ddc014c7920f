#!/usr/bin/env python3
"""Re-record the small real recordings in tests/data/recordings (root; run under the lab lock).

Each scenario is recorded the way a user would: `startprof record -- startprof lab run ...`,
with the lab's CRI ground truth written beside the recording, and, when the run served images
from the lab registry (``--pull``, slow-pull, bad-image), what the registry served as
``NAME.registry.jsonl``. The analysis unit tests read them.
The pod kinds of issue 14 (docs/lab.md) are scenarios too; three need more than one command:

- ``cni-fail``: the bridge network's conf gets a bridge name the kernel refuses, containerd is
  restarted to read it, and restored after the run (as tests/integration/test_reliability.py).
- ``mid-start``: the recording starts while a pod's throttled pull is under way, so it never
  sees the pod's RunPodSandbox (the usual moment to reach for the tool: a pull that hangs).
- ``quiet``: two pods are left running, then a recording of two seconds sees nothing but
  their shims (a quiet node); the pods are removed afterwards.

    sudo flock /tmp/startprof-lab.lock .venv/bin/python tests/tools/make_recordings.py \\
        [--dir tests/data/recordings] [NAME ...]

The lab is brought up first and taken down at the end, leaving nothing behind.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from startprof.lab.registry import registry_log_beside

STARTPROF = [sys.executable, "-m", "startprof"]
BAD_BRIDGE = "sp-bridge-name-too-long"  # > IFNAMSIZ-1: the kernel refuses it, bridge exits 1
MID_START_PULL_S = "20"  # longer than the recorder takes to load its probes

SCENARIOS: dict[str, list[str]] = {
    "runc-bridge": ["--pods", "2", "--runtime-handler", "runc-bridge"],
    "crun-bridge": ["--pods", "2", "--runtime-handler", "crun-bridge"],
    "crun-ptp": ["--pods", "2", "--runtime-handler", "crun-ptp"],
    "multi-container": ["--pods", "1", "--runtime-handler", "runc-bridge", "--containers", "2",
                        "--init-containers", "1"],
    "pull": ["--pods", "1", "--runtime-handler", "runc-bridge", "--pull"],
    # a 3-layer pull and the registry's log of every blob served (issue 17)
    "pull-layers": ["--pods", "1", "--runtime-handler", "runc-bridge", "--pull"],
    "concurrent": ["--pods", "4", "--concurrency", "2", "--runtime-handler", "crun-bridge"],
    # the pod kinds of a real node (issue 14)
    "host-network": ["--pods", "2", "--kind", "host-network"],
    "runtime-fail": ["--kind", "runtime-fail"],
    "bad-image": ["--kind", "bad-image"],
    "no-entrypoint": ["--kind", "no-entrypoint"],
    "cni-fail": [],
    "crash-loop": ["--kind", "crash-loop"],
    "crash-then-up": ["--kind", "crash-then-up"],
    "sidecar": ["--kind", "sidecar", "--init-containers", "1", "--containers", "2"],
    "slow-pull": ["--kind", "slow-pull", "--pods", "3", "--concurrency", "3"],
    "wrapped-runtime": ["--runtime-handler", "runc-wrapped-bridge"],
    "hooked-runtime": ["--runtime-handler", "runc-hooked-bridge"],
    "ctr-namespace": ["--kind", "ctr"],
    "mid-start": ["--kind", "slow-pull", "--slow-pull-seconds", MID_START_PULL_S],
    "quiet": ["--pods", "2", "--keep"],
    # with the runtime probe's records (issue 17): the steps inside create and start
    "runc-runtime": ["--pods", "2", "--runtime-handler", "runc-bridge"],
    "crun-runtime": ["--pods", "2", "--runtime-handler", "crun-bridge"],
}  # fmt: skip
FAILING = {"runtime-fail", "bad-image", "no-entrypoint", "cni-fail", "crash-loop"}
"""Scenarios whose pod fails: `lab run` exits 1, and that is their point."""


def lab_dir() -> Path:
    out = subprocess.run([*STARTPROF, "lab", "status", "--json"], capture_output=True, text=True)
    return Path(json.loads(out.stdout)["dir"])


def record(out: Path, command: list[str], *options: str) -> int:
    return subprocess.run(
        [*STARTPROF, "record", *options, "-o", str(out), "--", *command]
    ).returncode


def plain(name: str, out: Path, truth: Path) -> int:
    return record(out, [*STARTPROF, "lab", "run", "--truth", str(truth), *SCENARIOS[name]])


def cni_fail(name: str, out: Path, truth: Path) -> int:
    from startprof.lab.containerd import Lab
    from startprof.lab.paths import LabPaths

    lab = Lab(LabPaths(lab_dir()))
    conf = next(lab.paths.cni_conf_dir("bridge").glob("*.conflist"))
    good = conf.read_text()
    doc = json.loads(good)
    doc["plugins"][0]["bridge"] = BAD_BRIDGE
    try:
        conf.write_text(json.dumps(doc))
        lab.restart_containerd()  # it reads CNI confs at start
        return plain(name, out, truth)
    finally:
        conf.write_text(good)
        lab.restart_containerd()


def mid_start(name: str, out: Path, truth: Path) -> int:
    """Start the recorder once the pod's sandbox is up and its slow pull has begun; stop it
    when the run is over."""
    run = subprocess.Popen([*STARTPROF, "lab", "run", "--truth", str(truth), *SCENARIOS[name]])
    deadline = time.monotonic() + 60
    while not (truth.exists() and "/ImageStatus" in truth.read_text()):
        if run.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"{name}: the pod did not start pulling")
        time.sleep(0.05)
    # the pull starts right after its ImageStatus; the recording must begin before it ends
    done = out.with_suffix(".done")
    done.unlink(missing_ok=True)
    wait = f"while [ ! -e {done} ]; do sleep 0.2; done"
    recorder = subprocess.Popen([*STARTPROF, "record", "-o", str(out), "--", "sh", "-c", wait])
    code = run.wait()
    done.touch()
    try:
        return recorder.wait() or code
    finally:
        done.unlink(missing_ok=True)


def quiet(name: str, out: Path, truth: Path) -> int:
    """Pods running before and after; in between, two seconds of a node doing nothing."""
    subprocess.run([*STARTPROF, "lab", "run", "--truth", str(truth), *SCENARIOS[name]], check=True)
    try:
        return subprocess.run(
            [*STARTPROF, "record", "--duration", "2", "-o", str(out)], check=False
        ).returncode
    finally:
        subprocess.run([*STARTPROF, "lab", "down"], check=True)  # removes the kept pods
        subprocess.run([*STARTPROF, "lab", "up"], check=True)


SPECIAL: dict[str, Callable[[str, Path, Path], int]] = {
    "cni-fail": cni_fail,
    "mid-start": mid_start,
    "quiet": quiet,
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=Path("tests/data/recordings"))
    parser.add_argument("names", nargs="*", help=f"scenarios (default all): {', '.join(SCENARIOS)}")
    args = parser.parse_args()
    unknown = set(args.names) - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenario(s): {', '.join(sorted(unknown))}")
    args.names = args.names or list(SCENARIOS)
    args.dir.mkdir(parents=True, exist_ok=True)
    subprocess.run([*STARTPROF, "lab", "up"], check=True)
    try:
        for name in args.names:
            out = args.dir / f"{name}.arrows"
            truth = args.dir / f"{name}.truth.jsonl"
            served = args.dir / f"{name}.registry.jsonl"
            beside = registry_log_beside(truth)  # lab run writes it there with --truth
            for stale in (truth, served, beside):
                stale.unlink(missing_ok=True)
            code = SPECIAL.get(name, plain)(name, out, truth)
            if code != (1 if name in FAILING else 0):
                raise SystemExit(f"{name}: exit code {code}")
            out.chmod(0o644)  # test data, not a node's secrets: readable by the tests' user
            if beside.exists():
                beside.replace(served)
                served.chmod(0o644)
                print(f"{name}: {served}", file=sys.stderr)
            print(f"{name}: {out} ({out.stat().st_size / 1e3:.0f} kB)", file=sys.stderr)
    finally:
        subprocess.run([*STARTPROF, "lab", "down"], check=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
