#!/usr/bin/env python3
"""What tracing costs processes that are NOT pod starts: an exec storm outside containerd's tree.

A shell runs /bin/true N times (fork + exec + wait, ~1 ms each) while, in turn:

- nothing traces (``base``);
- ``startprof record`` follows the lab's containerd (``startprof``): the storm is outside the
  followed tree, so the in-kernel filter should drop its records before the ring buffer;
- ``startprof record --all`` (``startprof-all``): the same probes without the filter;
- ``execsnoop``: bcc's ``execsnoop-bpfcc`` printing every exec, or where the kernel has no
  kprobes (as here) the same tool on tracepoints, bpftrace's ``execsnoop.bt``.

Rounds rotate the arms' order so drift hits every arm alike; each tracer is started before and
stopped after its storm, and the storm starts once the tracer is attached. Brings the lab up
(and down again at the end). Run as root while holding the lab lock:

    sudo flock /tmp/startprof-lab.lock .venv/bin/python benchmarks/exec_storm.py --execs 2000

Reported: median µs per exec per arm and each arm's overhead against ``base``, with a 95%
bootstrap confidence interval over the storms (an interval that holds 0 resolved nothing).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from startprof.bench.stats import overhead
from startprof.lab.paths import LabPaths, lab_dir

STARTPROF = [sys.executable, "-m", "startprof"]
ARMS = ("base", "startprof", "startprof-all", "execsnoop")
READY_TIMEOUT_S = 60.0


def storm(execs: int) -> float:
    """Seconds for ``execs`` fork+exec+wait of /bin/true from a shell."""
    script = f'i=0; while [ "$i" -lt {execs} ]; do /bin/true; i=$((i+1)); done'
    t0 = time.perf_counter()
    subprocess.run(["sh", "-c", script], check=True)
    return time.perf_counter() - t0


@contextmanager
def startprof(socket: str, workdir: Path, follow_all: bool) -> Iterator[None]:
    out = workdir / "storm.arrows"
    out.unlink(missing_ok=True)
    cmd = [*STARTPROF, "record", "-o", str(out), "--cri-socket", socket]
    proc = subprocess.Popen(
        cmd + (["--all"] if follow_all else []),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + READY_TIMEOUT_S
    while not (out.exists() and out.stat().st_size > 0):  # created once probes are attached
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit("startprof record did not start")
        time.sleep(0.05)
    try:
        yield
    finally:
        proc.send_signal(2)
        proc.wait(timeout=60)


def execsnoop_command() -> tuple[list[str], str]:
    """bcc's execsnoop where kprobes exist; else the same tool on tracepoints, bpftrace's
    execsnoop.bt (these kernels have no kprobes: execsnoop-bpfcc cannot attach). Returns the
    command and the header it prints once attached."""
    kprobes = any(
        Path(d, "kprobe_events").exists()
        for d in ("/sys/kernel/tracing", "/sys/kernel/debug/tracing")
    )
    bcc_tool = shutil.which("execsnoop-bpfcc") or shutil.which("/usr/sbin/execsnoop-bpfcc")
    if kprobes and bcc_tool:
        return [bcc_tool], "PCOMM"
    bt_tool = shutil.which("execsnoop.bt") or shutil.which("/usr/sbin/execsnoop.bt")
    if bt_tool is None:
        raise SystemExit("no execsnoop: apt-get install bpftrace (or bpfcc-tools with kprobes)")
    return ["bpftrace", "-B", "none", bt_tool], "TIME(ms)"


@contextmanager
def execsnoop() -> Iterator[None]:
    command, ready = execsnoop_command()
    proc = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, bufsize=1
    )
    assert proc.stdout is not None
    header = ""
    for _ in range(5):  # bpftrace says "Attaching N probes..." first
        header = proc.stdout.readline()  # the header is printed once the probes are attached
        if header.startswith(ready) or not header:
            break
    if not header.startswith(ready):
        raise SystemExit(f"{' '.join(command)} did not start: {header!r}")
    lines = [0]

    def drain() -> None:
        assert proc.stdout is not None
        for _ in proc.stdout:
            lines[0] += 1

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    try:
        yield
    finally:
        proc.send_signal(2)
        proc.wait(timeout=30)
        reader.join(timeout=5)


@contextmanager
def tracer(arm: str, socket: str, workdir: Path) -> Iterator[None]:
    if arm == "base":
        yield
    elif arm == "execsnoop":
        with execsnoop():
            yield
    else:
        with startprof(socket, workdir, follow_all=arm == "startprof-all"):
            yield


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--execs", type=int, default=2000, help="execs per storm (default 2000)")
    parser.add_argument("--rounds", type=int, default=6, help="storms per arm (default 6)")
    parser.add_argument("--json", type=Path, help="write the figures here too")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run as root: tracers load BPF programs")

    paths = LabPaths(lab_dir(None).absolute())
    subprocess.run([*STARTPROF, "lab", "up"], check=True, stdout=subprocess.DEVNULL)
    per_exec: dict[str, list[float]] = {arm: [] for arm in ARMS}
    try:
        with tempfile.TemporaryDirectory(prefix="startprof-storm-") as tmp:
            storm(200)  # warm-up: page cache, shell
            for r in range(args.rounds):
                order = ARMS[r % len(ARMS) :] + ARMS[: r % len(ARMS)]
                for arm in order:
                    with tracer(arm, str(paths.socket), Path(tmp)):
                        seconds = storm(args.execs)
                    per_exec[arm].append(seconds / args.execs * 1e6)
                print(f"round {r + 1}/{args.rounds} done", file=sys.stderr)
    finally:
        subprocess.run([*STARTPROF, "lab", "down"], check=True, stdout=subprocess.DEVNULL)
    result: dict[str, object] = {"execs_per_storm": args.execs, "rounds": args.rounds}
    for arm in ARMS:
        result[arm] = {
            "median_us_per_exec": round(statistics.median(per_exec[arm]), 1),
            **overhead(per_exec["base"], per_exec[arm]),
            "all_us_per_exec": [round(v, 1) for v in per_exec[arm]],
        }
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
