#!/usr/bin/env python3
"""Where the probes' kernel time goes: hits and run time of every BPF program during pod starts.

Records a lab run exactly like ``startprof record -- startprof lab run ...`` while the kernel's
BPF run-time statistics are on (``BPF_ENABLE_STATS``: a counter the kernel keeps per program,
switched off again when this script exits), then prints, per hook, how often it ran and the
nanoseconds its program took.

Two corrections make the totals honest. The statistics cost something themselves (two clock
reads per run, expensive in a VM): an empty program attached to ``syscalls:sys_enter_close``
during the same run measures that floor, which is subtracted from every hook's ns per hit
(``prog ns`` is net of it). And they leave out the tracepoint's own dispatch (building the perf
record the program reads), a fixed cost per hit that ``--dispatch-ns`` adds back (default
150 ns: +300 ns per read(2) with an enter+exit pair and a near-empty program, measured on the
2-core dev VM with a C loop of 1-byte reads of /dev/zero).

    sudo flock /tmp/startprof-lab.lock .venv/bin/python benchmarks/probe_cost.py --pods 20

Also shows the recorder's own CPU time, so the in-kernel and user-space parts can be compared.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, ClassVar

from startprof.config import resolve_cri_socket
from startprof.probes.hooks import hook_of_program, use_fentry
from startprof.probes.progstats import enable_stats, prog_stats
from startprof.probes.session import ProbeSession
from startprof.recorder import Recorder, RecordOptions

STARTPROF = [sys.executable, "-m", "startprof"]


def _run_stats(fd: int) -> tuple[int, int]:
    stats = prog_stats(fd)
    return stats.run_time_ns, stats.run_cnt


class StatsSession(ProbeSession):
    """A ProbeSession that reads every program's run-time statistics just before it detaches."""

    last: ClassVar[dict[str, tuple[int, int]]] = {}

    def close(self) -> None:
        bpf: Any = self._bpf
        if bpf is not None:
            StatsSession.last = {name.decode(): _run_stats(fn.fd) for name, fn in bpf.funcs.items()}
        super().close()


# an empty program on close, hooked as the probes' syscall hooks are (hooks.use_fentry)
FLOOR_PROGRAM = {
    False: "TRACEPOINT_PROBE(syscalls, sys_enter_close) { return 0; }",
    True: "KFUNC_PROBE(__x64_sys_close, struct pt_regs *regs) { return 0; }",
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pods", type=int, default=20)
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--handler", default="runc-bridge")
    parser.add_argument(
        "--dispatch-ns",
        type=float,
        help="added per hit for the hook's own dispatch (default: 150 for tracepoints, "
        "20 for fentry trampolines)",
    )
    parser.add_argument("--probe", action="append", help="record only these probes")
    parser.add_argument(
        "--pull", action="store_true", help="the run pulls its image first (lab run --pull)"
    )
    parser.add_argument("--json", type=Path, help="write the figures here too")
    args = parser.parse_args()

    subprocess.run([*STARTPROF, "lab", "up"], check=True, stdout=subprocess.DEVNULL)
    from bcc import BPF

    fentry = use_fentry("auto")
    dispatch_ns = args.dispatch_ns if args.dispatch_ns is not None else (20.0 if fentry else 150.0)
    floor_bpf = BPF(text=FLOOR_PROGRAM[fentry])
    stats_fd = enable_stats()
    with tempfile.TemporaryDirectory(prefix="startprof-cost-") as tmp:
        command = [
            *STARTPROF,
            "lab",
            "run",
            "--pods",
            str(args.pods),
            "--concurrency",
            str(args.concurrency),
            "--runtime-handler",
            args.handler,
            *(["--pull"] if args.pull else []),
        ]
        extra = {"probes": tuple(args.probe)} if args.probe else {}
        options = RecordOptions(
            output=Path(tmp) / "cost.arrows",
            cri_socket=resolve_cri_socket(None),
            command=command,
            **extra,  # type: ignore[arg-type]
        )
        before = resource.getrusage(resource.RUSAGE_SELF)
        Recorder(options, session_factory=StatsSession).run()
        after = resource.getrusage(resource.RUSAGE_SELF)
    (floor_func,) = floor_bpf.funcs
    floor_ns, floor_hits = _run_stats(floor_bpf.funcs[floor_func].fd)
    os.close(stats_fd)
    floor_bpf.cleanup()
    floor = floor_ns / floor_hits if floor_hits else 0.0

    rows = []
    for func, (run_ns, hits) in StatsSession.last.items():
        net_ns = max(0.0, run_ns - hits * floor)
        total_ms = (net_ns + hits * dispatch_ns) / 1e6
        rows.append(
            {
                "hook": hook_of_program(func) or func,
                "hits": hits,
                "prog_ns_per_hit": round(net_ns / hits, 1) if hits else 0.0,
                "prog_ms": round(net_ns / 1e6, 2),
                "with_dispatch_ms": round(total_ms, 2),
                "per_pod_us": round(1e3 * total_ms / args.pods, 1),
            }
        )
    rows.sort(key=lambda r: -float(r["with_dispatch_ms"]))  # type: ignore[arg-type]
    total = sum(float(r["with_dispatch_ms"]) for r in rows)  # type: ignore[arg-type]
    recorder_cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    print(f"statistics floor (an empty program, subtracted): {floor:.0f} ns per hit")
    print(f"{'hook':42} {'hits':>9} {'ns/hit':>8} {'prog ms':>8} {'+disp ms':>9} {'µs/pod':>8}")
    for r in rows:
        print(
            f"{r['hook']:42} {r['hits']:>9} {r['prog_ns_per_hit']:>8} {r['prog_ms']:>8} "
            f"{r['with_dispatch_ms']:>9} {r['per_pod_us']:>8}"
        )
    print(
        f"kernel total {total:.1f} ms = {1e3 * total / args.pods:.0f} µs per pod; "
        f"recorder process CPU (load + decode + write) {recorder_cpu:.2f} s"
    )
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "pods": args.pods,
                    "dispatch_ns": dispatch_ns,
                    "stats_floor_ns": round(floor, 1),
                    "hooks": rows,
                    "kernel_total_ms": round(total, 1),
                    "recorder_cpu_s": round(recorder_cpu, 2),
                },
                indent=2,
            )
            + "\n"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
