#!/usr/bin/env python3
"""What one hooked syscall costs in dispatch alone, and whether raw syscall tracepoints would
cost less than the per-syscall tracepoints the probes use where fentry is refused.

A C loop (compiled here with cc) times ``close(-1)`` (a hooked syscall: the probes hook close)
and ``getppid()`` (one no probe hooks), best of 7 rounds of N calls each, while in turn:

- ``none``: nothing is loaded;
- ``tracepoint``: ``syscalls:sys_enter_close``, a program that looks the caller up in a
  followed-style hash map (a miss) and returns: the probes' filter, nothing more;
- ``tracepoint-pair``: the same on ``sys_exit_close`` too (the probes pair most hooks);
- ``raw``: one ``raw_syscalls:sys_enter`` program for every syscall, which returns at once
  unless the syscall is close, then does the same lookup;
- ``raw-pair``: the same on ``raw_syscalls:sys_exit`` too.

The program bodies are the same, so the differences are the dispatch: building the
tracepoint's record per hit (``perf_syscall_enter``) against a raw program that every syscall
of every process enters. Arms rotate (``--rounds``); the median of each is printed. Needs
root; no lab.

    sudo .venv/bin/python benchmarks/dispatch_cost.py --rounds 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bcc import BPF
from syscall_cost import compile_c

LOOP_C = r"""
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>
#include <sys/syscall.h>
static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t);
                          return t.tv_sec * 1e9 + t.tv_nsec; }
int main(int argc, char **argv) {
    int n = atoi(argv[1]); double hooked = 1e18, other = 1e18, t0, t;
    for (int r = 0; r < 7; r++) {
        t0 = now(); for (int i = 0; i < n; i++) syscall(SYS_close, -1);
        t = (now() - t0) / n; if (t < hooked) hooked = t;
        t0 = now(); for (int i = 0; i < n; i++) syscall(SYS_getppid);
        t = (now() - t0) / n; if (t < other) other = t;
    }
    printf("%.2f %.2f\n", hooked, other);
    return 0;
}
"""

FILTER = """
BPF_HASH(followed, u32, u8, 16384);
static __always_inline int lookup(void)
{
    u32 tgid = bpf_get_current_pid_tgid() >> 32;
    return followed.lookup(&tgid) != NULL;
}
"""
TRACEPOINT = "TRACEPOINT_PROBE(syscalls, sys_enter_close) { return lookup(); }\n"
TRACEPOINT_EXIT = "TRACEPOINT_PROBE(syscalls, sys_exit_close) { return lookup(); }\n"
# raw_syscalls: args[1] is the syscall number at entry; at exit it is read from the registers,
# which costs a kernel read, so the exit program checks the cheaper thing first: the filter
RAW = """
RAW_TRACEPOINT_PROBE(sys_enter) {
    if (ctx->args[1] != 3) return 0;  // __NR_close on x86_64
    return lookup();
}
"""
RAW_EXIT = """
RAW_TRACEPOINT_PROBE(sys_exit) { return lookup(); }
"""
ARMS = {
    "none": None,
    "tracepoint": FILTER + TRACEPOINT,
    "tracepoint-pair": FILTER + TRACEPOINT + TRACEPOINT_EXIT,
    "raw": FILTER + RAW,
    "raw-pair": FILTER + RAW + RAW_EXIT,
}


def _time(exe: Path, calls: int, text: str | None) -> tuple[float, float]:
    bpf = BPF(text=text) if text else None
    try:
        time.sleep(0.3)  # attached: let the first hits settle
        out = subprocess.run([str(exe), str(calls)], capture_output=True, text=True, check=True)
        hooked, other = (float(v) for v in out.stdout.split())
        return hooked, other
    finally:
        if bpf is not None:
            bpf.cleanup()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="rotations of all arms")
    parser.add_argument("--calls", type=int, default=2_000_000, help="calls per timed loop")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="startprof-dispatch-") as tmp:
        exe = compile_c(LOOP_C, Path(tmp))
        runs: dict[str, list[tuple[float, float]]] = {arm: [] for arm in ARMS}
        for r in range(args.rounds):
            for arm, text in ARMS.items():
                runs[arm].append(_time(exe, args.calls, text))
            print(f"round {r + 1}/{args.rounds} done", file=sys.stderr)
    base_hooked = statistics.median(h for h, _ in runs["none"])
    base_other = statistics.median(o for _, o in runs["none"])
    result = {}
    print(f"{'arm':16s} {'close(-1) ns':>13s} {'+ns':>7s} {'getppid ns':>11s} {'+ns':>7s}")
    for arm, values in runs.items():
        hooked = statistics.median(h for h, _ in values)
        other = statistics.median(o for _, o in values)
        result[arm] = {
            "hooked_ns": hooked,
            "hooked_extra_ns": round(hooked - base_hooked, 1),
            "other_ns": other,
            "other_extra_ns": round(other - base_other, 1),
        }
        print(
            f"{arm:16s} {hooked:13.1f} {hooked - base_hooked:+7.1f} "
            f"{other:11.1f} {other - base_other:+7.1f}"
        )
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
