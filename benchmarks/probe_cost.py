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
import ctypes as ct
import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, ClassVar

from startprof.config import resolve_cri_socket
from startprof.probes.session import ProbeSession
from startprof.recorder import Recorder, RecordOptions

STARTPROF = [sys.executable, "-m", "startprof"]
SYS_BPF = 321  # x86_64
BPF_OBJ_GET_INFO_BY_FD = 15
BPF_ENABLE_STATS = 32
BPF_STATS_RUN_TIME = 0
PROG_INFO_SIZE = 232  # struct bpf_prog_info up to and including run_cnt (kernel 5.1+) and more
RUN_TIME_OFF, RUN_CNT_OFF = 192, 200

_libc = ct.CDLL(None, use_errno=True)
_libc.syscall.restype = ct.c_long


def _bpf(cmd: int, attr: ct.Array[ct.c_char]) -> int:
    ret = int(_libc.syscall(SYS_BPF, cmd, attr, ct.sizeof(attr)))
    if ret < 0:
        raise OSError(ct.get_errno(), os.strerror(ct.get_errno()))
    return ret


def enable_stats() -> int:
    """An fd that keeps the kernel's BPF run-time statistics on until it is closed."""
    attr = ct.create_string_buffer(8)
    ct.c_uint32.from_buffer(attr).value = BPF_STATS_RUN_TIME
    return _bpf(BPF_ENABLE_STATS, attr)


def prog_run_stats(fd: int) -> tuple[int, int]:
    """(run_time_ns, run_cnt) of the program behind ``fd``."""
    info = ct.create_string_buffer(PROG_INFO_SIZE)
    attr = ct.create_string_buffer(16)  # bpf_fd, info_len, info (u64)
    ct.c_uint32.from_buffer(attr, 0).value = fd
    ct.c_uint32.from_buffer(attr, 4).value = PROG_INFO_SIZE
    ct.c_uint64.from_buffer(attr, 8).value = ct.addressof(info)
    _bpf(BPF_OBJ_GET_INFO_BY_FD, attr)
    return (
        ct.c_uint64.from_buffer(info, RUN_TIME_OFF).value,
        ct.c_uint64.from_buffer(info, RUN_CNT_OFF).value,
    )


class StatsSession(ProbeSession):
    """A ProbeSession that reads every program's run-time statistics just before it detaches."""

    last: ClassVar[dict[str, tuple[int, int]]] = {}

    def close(self) -> None:
        bpf: Any = self._bpf
        if bpf is not None:
            StatsSession.last = {
                name.decode(): prog_run_stats(fn.fd) for name, fn in bpf.funcs.items()
            }
        super().close()


FLOOR_FUNC = b"tracepoint__syscalls__sys_enter_close"
FLOOR_PROGRAM = "TRACEPOINT_PROBE(syscalls, sys_enter_close) { return 0; }"


def hook_name(func: str) -> str:
    """tracepoint__syscalls__sys_enter_read -> syscalls:sys_enter_read"""
    parts = func.split("__")
    return ":".join(parts[1:]) if parts[0] == "tracepoint" else func


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pods", type=int, default=20)
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--handler", default="runc-bridge")
    parser.add_argument("--dispatch-ns", type=float, default=150.0)
    parser.add_argument("--probe", action="append", help="record only these probes")
    parser.add_argument(
        "--pull", action="store_true", help="the run pulls its image first (lab run --pull)"
    )
    parser.add_argument("--json", type=Path, help="write the figures here too")
    args = parser.parse_args()

    subprocess.run([*STARTPROF, "lab", "up"], check=True, stdout=subprocess.DEVNULL)
    from bcc import BPF

    floor_bpf = BPF(text=FLOOR_PROGRAM)
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
    floor_ns, floor_hits = prog_run_stats(floor_bpf.funcs[FLOOR_FUNC].fd)
    os.close(stats_fd)
    floor_bpf.cleanup()
    floor = floor_ns / floor_hits if floor_hits else 0.0

    rows = []
    for func, (run_ns, hits) in StatsSession.last.items():
        net_ns = max(0.0, run_ns - hits * floor)
        total_ms = (net_ns + hits * args.dispatch_ns) / 1e6
        rows.append(
            {
                "hook": hook_name(func),
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
                    "dispatch_ns": args.dispatch_ns,
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
