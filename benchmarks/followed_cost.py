#!/usr/bin/env python3
"""What the probes cost the processes they follow: per process, per netlink request, per unix
socket message, probe by probe.

A pod start is some 50 processes in the followed tree (CNI plugins and their iptables, the
shim, runc and runc init, the pause and the app), each forked, exec'ed and exited once, and
some thousand netlink messages and unix socket messages of those processes and containerd.
A C loop (compiled here with cc), followed (``ProbeSession.follow``) before it starts,
repeats one unit of a workload (``--workload``), best of 5 batches, while in turn:

- ``none``: nothing is loaded;
- ``core``: only the core's programs (fork, exit, clone, close: they keep the filter right);
- one arm per probe: that probe's programs and the core's;
- ``all``: every probe.

Workloads: ``process`` forks a child that execs ``/bin/true`` with a CNI-plugin-like command
line (12 arguments) and environment (30 variables, 5 of them ``CNI_*``) and waits for it;
``netlink`` sends RTM_GETLINK for ``lo`` on a NETLINK_ROUTE socket and reads the reply and
the ack, as a CNI plugin asks for a link; ``unix`` writes and reads 64 bytes over a unix
socketpair (not a CRI connection: what containerd's other socket traffic pays).

A reader thread drains the ring buffer every 100 ms as the recorder does; ``--decode`` also
decodes each record (the recorder's user space; without it the figures are the kernel's
share). Without a CRI socket every followed exec's environment is scanned for ``CNI_*`` (the
recorder scans only where ``CNI_*`` can be), so ``exec`` here is the cost of a CNI plugin's
or helper's exec. Arms rotate (``--rounds``); each arm's median wall time per unit is printed
with its difference to ``none``, and beside it the CPU time of the loop and its children
(user + system). ``--stats`` adds one run of ``all`` with the kernel's BPF statistics on:
each program's runs and ns per unit. Needs root; no lab.

    sudo .venv/bin/python benchmarks/followed_cost.py --rounds 3
    sudo .venv/bin/python benchmarks/followed_cost.py --arms none,all --decode --stats
    sudo .venv/bin/python benchmarks/followed_cost.py --workload netlink --arms none,netlink,all
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

from syscall_cost import compile_c

from startprof.probes import PROBE_NAMES
from startprof.probes.progstats import enable_stats, prog_stats
from startprof.probes.session import ProbeSession

LOOP_C = r"""
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
static double tv(struct timeval t) { return t.tv_sec * 1e9 + t.tv_usec * 1e3; }
static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t);
                          return t.tv_sec * 1e9 + t.tv_nsec; }
static char *args[] = {"/bin/true", "-t", "nat", "-A", "CNI-HOSTPORT-DNAT", "-p", "tcp", "-m",
                       "comment", "--comment", "dnat name: \"cbr0\" id: \"0123456789abcdef\"",
                       "-j", "CNI-DN-0123456789abcdef", 0};
static char *env[31];
static int nl = -1, sv[2];
/* one unit of the workload: 0 a process (fork + exec + wait), 1 a netlink request and its
   reply and ack (RTM_GETLINK of lo, as a CNI plugin asks), 2 a 64-byte unix socket round trip */
static void one(int mode) {
    static char b[8192];
    if (mode == 0) {
        pid_t pid = fork();
        if (pid == 0) { execve(args[0], args, env); _exit(127); }
        waitpid(pid, 0, 0);
    } else if (mode == 1) {
        static unsigned seq;
        struct { struct nlmsghdr h; struct ifinfomsg i; } req;
        memset(&req, 0, sizeof(req));
        req.h.nlmsg_len = sizeof(req); req.h.nlmsg_type = RTM_GETLINK;
        req.h.nlmsg_flags = NLM_F_REQUEST | NLM_F_ACK; req.h.nlmsg_seq = ++seq;
        req.i.ifi_family = AF_UNSPEC; req.i.ifi_index = 1;
        send(nl, &req, sizeof(req), 0);
        for (int acked = 0; !acked;) {
            int len = recv(nl, b, sizeof(b), 0);
            if (len <= 0) break;
            struct nlmsghdr *h = (struct nlmsghdr *)b;
            for (; NLMSG_OK(h, len); h = NLMSG_NEXT(h, len))
                if (h->nlmsg_type == NLMSG_ERROR || h->nlmsg_type == NLMSG_DONE) acked = 1;
        }
    } else {
        write(sv[0], b, 64); read(sv[1], b, 64);
    }
}
int main(int argc, char **argv) {
    int n = atoi(argv[1]), mode = atoi(argv[2]); double best = 1e18, t0, t; char go;
    char buf[30][64];
    for (int i = 0; i < 30; i++) {
        if (i < 5) snprintf(buf[i], 64, "CNI_VAR%d=value-%d-0123456789abcdef", i, i);
        else snprintf(buf[i], 64, "SOME_VARIABLE_%d=/usr/local/bin:/usr/bin:/bin", i);
        env[i] = buf[i];
    }
    env[30] = 0;
    struct rusage self0, self1, kids0, kids1;
    double cpu, best_cpu = 1e18;
    if (read(0, &go, 1) != 1) return 1; /* followed by now: its sockets are made under the probes */
    /* only the socket its workload uses: a process that owns a netlink socket has its other
       sockets' messages looked at more closely (sp_has_fds), a shim does not */
    if (mode == 1) nl = socket(AF_NETLINK, SOCK_RAW, NETLINK_ROUTE);
    if (mode == 2) socketpair(AF_UNIX, SOCK_STREAM, 0, sv);
    for (int r = 0; r < 5; r++) {
        getrusage(RUSAGE_SELF, &self0); getrusage(RUSAGE_CHILDREN, &kids0);
        t0 = now();
        for (int i = 0; i < n; i++) one(mode);
        t = (now() - t0) / n; if (t < best) best = t;
        getrusage(RUSAGE_SELF, &self1); getrusage(RUSAGE_CHILDREN, &kids1);
        /* CPU time of the loop and its children, user + system: what the hooks add to the
           processes themselves, without the waits */
        cpu = (tv(self1.ru_utime) - tv(self0.ru_utime) + tv(self1.ru_stime) - tv(self0.ru_stime)
               + tv(kids1.ru_utime) - tv(kids0.ru_utime) + tv(kids1.ru_stime) - tv(kids0.ru_stime))
              / n;
        if (cpu < best_cpu) best_cpu = cpu;
    }
    printf("%.3f %.3f\n", best / 1000.0, best_cpu / 1000.0);
    return 0;
}
"""
WORKLOADS = {"process": 0, "netlink": 1, "unix": 2}
"""What the followed loop repeats (``LOOP_C``'s modes)."""


def _probes(arm: str) -> tuple[str, ...] | None:
    if arm == "none":
        return None
    if arm == "all":
        return PROBE_NAMES
    if arm == "core":
        return ()
    return (arm,)


def _run(
    exe: Path,
    units: int,
    mode: int,
    probes: tuple[str, ...] | None,
    decode: bool,
    stats: dict[str, tuple[int, int]] | None = None,
) -> tuple[float, float]:
    """µs per unit of the loop's workload (``mode``), wall and CPU (the loop's and its
    children's user and system time), followed by a session of ``probes``; with ``stats``,
    each program's (run time ns, runs) over the loop are added to it."""
    loop = subprocess.Popen(
        [str(exe), str(units), str(mode)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert loop.stdin is not None and loop.stdout is not None
    if probes is None:
        loop.stdin.write("g")
        loop.stdin.close()
        out = loop.stdout.read()
        loop.wait()
        return _times(out)
    stop = threading.Event()
    with ProbeSession(probes=probes) as session:
        session.follow(loop.pid)

        def reader() -> None:  # the recorder's pace: drain every 100 ms
            while not stop.is_set():
                if decode:
                    session.poll(100)
                else:
                    session._drain_raw(100)

        thread = threading.Thread(target=reader, daemon=True)
        thread.start()
        loop.stdin.write("g")
        loop.stdin.close()
        out = loop.stdout.read()
        loop.wait()
        stop.set()
        thread.join()
        drops = sum(session.drops())
        if stats is not None:
            for name, fn in session._bpf.funcs.items():
                run = prog_stats(fn.fd)
                ns, cnt = stats.get(name.decode(), (0, 0))
                stats[name.decode()] = (ns + run.run_time_ns, cnt + run.run_cnt)
    if drops:
        print(f"  {drops} records dropped: the figure is too low", file=sys.stderr)
    return _times(out)


def _times(out: str) -> tuple[float, float]:
    wall, cpu = (float(v) for v in out.split())
    return wall, cpu


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3, help="rotations of all arms")
    parser.add_argument(
        "--workload",
        choices=list(WORKLOADS),
        default="process",
        help="what the followed loop repeats: fork + exec + wait (default), a netlink "
        "request with its reply and ack, or a 64-byte unix socket round trip",
    )
    parser.add_argument(
        "--units",
        type=int,
        help="units per batch (default: 500 processes, 20,000 netlink requests, "
        "100,000 unix round trips)",
    )
    parser.add_argument(
        "--arms",
        default=",".join(("none", "core", *PROBE_NAMES, "all")),
        help="comma-separated: none, core, a probe's name, all (default: every one)",
    )
    parser.add_argument("--decode", action="store_true", help="decode every record too")
    parser.add_argument(
        "--stats",
        action="store_true",
        help="one more run of 'all' with the kernel's BPF statistics on: each program's "
        "runs and ns per unit (the statistics' own clock reads included)",
    )
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    mode = WORKLOADS[args.workload]
    units = args.units or {"process": 500, "netlink": 20_000, "unix": 100_000}[args.workload]
    arms = [a for a in args.arms.split(",") if a]
    unknown = [a for a in arms if a not in ("none", "core", "all", *PROBE_NAMES)]
    if unknown:
        parser.error(f"unknown arm(s): {', '.join(unknown)}")
    runs: dict[str, list[tuple[float, float]]] = {arm: [] for arm in arms}
    with tempfile.TemporaryDirectory(prefix="startprof-followed-") as tmp:
        exe = compile_c(LOOP_C, Path(tmp))
        for r in range(args.rounds):
            order = arms[r % len(arms) :] + arms[: r % len(arms)]
            for arm in order:
                runs[arm].append(_run(exe, units, mode, _probes(arm), args.decode))
                wall, cpu = runs[arm][-1]
                print(
                    f"round {r + 1}/{args.rounds} {arm}: {wall:.1f} µs, CPU {cpu:.1f} µs",
                    file=sys.stderr,
                )
        stats = _stats(exe, units, mode) if args.stats else None
    result: dict[str, object] = {}
    print(f"{'arm':12s} {'wall µs':>8s} {'vs none':>8s} {'CPU µs':>8s} {'vs none':>8s}   wall runs")
    base = (
        [statistics.median(v[k] for v in runs["none"]) for k in (0, 1)] if "none" in runs else None
    )
    for arm, values in runs.items():
        wall, cpu = (statistics.median(v[k] for v in values) for k in (0, 1))
        extra = None if base is None else (round(wall - base[0], 2), round(cpu - base[1], 2))
        result[arm] = {"wall_us": wall, "cpu_us": cpu, "extra_us": extra, "runs": values}
        shown = ("", "") if extra is None else (f"{extra[0]:+8.2f}", f"{extra[1]:+8.2f}")
        print(
            f"{arm:12s} {wall:8.2f} {shown[0]:>8s} {cpu:8.2f} {shown[1]:>8s}   "
            + ", ".join(f"{v[0]:.2f}" for v in values)
        )
    if stats is not None:
        result["stats"] = stats
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


def _stats(exe: Path, units: int, mode: int) -> dict[str, dict[str, float]]:
    """Per program of ``all``: runs and ns per unit of the workload (5 batches of ``units``)."""
    per: dict[str, tuple[int, int]] = {}
    fd = enable_stats()
    try:
        _run(exe, units, mode, PROBE_NAMES, False, per)
    finally:
        os.close(fd)
    done = 5 * units
    rows = {
        name: {"runs": cnt / done, "ns": ns / done}
        for name, (ns, cnt) in sorted(per.items(), key=lambda kv: -kv[1][0])
        if cnt
    }
    total = sum(r["ns"] for r in rows.values())
    print(f"\n{'program':40s} {'runs/unit':>10s} {'ns/unit':>8s}")
    for name, row in rows.items():
        print(f"{name:40s} {row['runs']:10.1f} {row['ns']:8.0f}")
    print(f"{'total':40s} {'':10s} {total:8.0f}")
    return rows


if __name__ == "__main__":
    sys.exit(main())
