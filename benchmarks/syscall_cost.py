#!/usr/bin/env python3
"""What the loaded probes cost processes they do not follow, per syscall.

A small C loop (compiled here with cc) times 1-byte reads of /dev/zero, getppid, a 64-byte
write+read over a unix socketpair and a fork + exec of /bin/true + wait (an exec storm outside
the followed tree, one process at a time), best of 5 rounds, while in turn:

- ``none``: nothing is loaded;
- ``cri-sock``: every probe, the cri probe reading CRI bytes at the socket tracepoints
  (the default on x86_64 with Linux >= 6.3);
- ``cri-syscalls``: every probe, the cri probe on the read/write syscall tracepoints (the
  fallback elsewhere).

The loop is not followed, so this is the price everything else on the node pays. Arms repeat
(--rounds) in rotation and the median is reported. Needs root; no lab.

    sudo .venv/bin/python benchmarks/syscall_cost.py --rounds 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from startprof.probes import PROBE_NAMES
from startprof.probes.session import ProbeSession

LOOP_C = r"""
#include <stdio.h>
#include <fcntl.h>
#include <unistd.h>
#include <time.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t);
                          return t.tv_sec * 1e9 + t.tv_nsec; }
int main(int argc, char **argv) {
    int n = argc > 1 ? atoi(argv[1]) : 1000000, fd = open("/dev/zero", O_RDONLY), sv[2];
    char b[64] = {0};
    double best[5] = {1e18, 1e18, 1e18, 1e18, 1e18}, t0, t;
    int spawns = n / 5000 > 0 ? n / 5000 : 1;
    socketpair(AF_UNIX, SOCK_STREAM, 0, sv);
    for (int r = 0; r < 5; r++) {
        t0 = now(); for (int i = 0; i < n; i++) read(fd, b, 1);
        t = (now() - t0) / n; if (t < best[0]) best[0] = t;
        t0 = now(); for (int i = 0; i < n; i++) syscall(SYS_getppid);
        t = (now() - t0) / n; if (t < best[1]) best[1] = t;
        t0 = now(); for (int i = 0; i < n / 4; i++) { write(sv[0], b, 64); read(sv[1], b, 64); }
        t = (now() - t0) / (n / 4); if (t < best[2]) best[2] = t;
        t0 = now();
        for (int i = 0; i < spawns; i++) {
            pid_t pid = fork();
            if (pid == 0) { execl("/bin/true", "true", (char *)0); _exit(127); }
            waitpid(pid, 0, 0);
        }
        t = (now() - t0) / spawns; if (t < best[3]) best[3] = t;
        t0 = now(); for (int i = 0; i < n / 4; i++) close(open("/dev/null", O_RDONLY));
        t = (now() - t0) / (n / 4); if (t < best[4]) best[4] = t;
    }
    printf("%.1f %.1f %.1f %.1f %.1f\n", best[0], best[1], best[2], best[3], best[4]);
    return 0;
}
"""
OPS = (
    "read_dev_zero_ns",
    "getppid_ns",
    "unix_write_read_pair_ns",
    "fork_exec_wait_true_ns",
    "openat_close_dev_null_ns",
)


def compile_c(text: str, workdir: Path) -> Path:
    """``text`` compiled (cc -O2) into an executable in ``workdir``; the benchmarks' C loops."""
    src, exe = workdir / "loop.c", workdir / "loop"
    src.write_text(text)
    subprocess.run(["cc", "-O2", "-o", str(exe), str(src)], check=True)
    return exe


ARMS: dict[str, bool | None] = {
    "none": None,
    "cri-sock": True,
    "cri-syscalls": False,
    "cri-sock-no-image": True,
}
"""Arm -> the cri probe on the sock tracepoints (True), on read/write (False), no probes (None);
``-no-image``: every probe but the image probe (what it costs processes it does not follow)."""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--ops", type=int, default=1_000_000, help="iterations per loop")
    parser.add_argument("--json", type=Path, help="write the figures here too")
    args = parser.parse_args()
    results: dict[str, list[list[float]]] = {arm: [] for arm in ARMS}
    with tempfile.TemporaryDirectory(prefix="startprof-syscost-") as tmp:
        exe = compile_c("#include <stdlib.h>\n" + LOOP_C, Path(tmp))
        for r in range(args.rounds):
            names = list(ARMS)
            for arm in names[r % len(names) :] + names[: r % len(names)]:
                sock_tp = ARMS[arm]
                session = None
                if sock_tp is not None:
                    # follows only init, which does none of the loop's syscalls
                    probes = [
                        p for p in PROBE_NAMES if not (arm.endswith("-no-image") and p == "image")
                    ]
                    session = ProbeSession(
                        seed_pids=[1], cri_sock_tracepoints=sock_tp, probes=probes
                    )
                    session.start()
                try:
                    out = subprocess.run(
                        [str(exe), str(args.ops)], check=True, capture_output=True, text=True
                    ).stdout
                finally:
                    if session is not None:
                        session.close()
                results[arm].append([float(x) for x in out.split()])
                print(f"round {r + 1}/{args.rounds} {arm}: {out.strip()}", file=sys.stderr)
    table = {
        arm: {op: round(statistics.median(v[i] for v in runs), 1) for i, op in enumerate(OPS)}
        for arm, runs in results.items()
    }
    print(f"{'arm':14} " + " ".join(f"{op:>24}" for op in OPS))
    for arm, row in table.items():
        print(f"{arm:14} " + " ".join(f"{row[op]:>24}" for op in OPS))
    base = table["none"]
    for arm in ("cri-sock", "cri-syscalls", "cri-sock-no-image"):
        change = {op: f"{100 * (table[arm][op] - base[op]) / base[op]:+.1f}%" for op in OPS}
        print(f"{arm + ' vs none':22} " + " ".join(f"{op}={v}" for op, v in change.items()))
    if args.json:
        args.json.write_text(json.dumps(table, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
