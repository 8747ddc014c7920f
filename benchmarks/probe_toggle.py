#!/usr/bin/env python3
"""What recording costs a pod start, pod by pod: one recorder whose probes are attached for
some pods and detached for the others.

`probe_overhead.py` compares rounds of 20-30 pods, each with its own `startprof record`, and
on a shared 2-vCPU VM the rounds drift more than the effect: an A/A arm (the same command
unrecorded) differed by -7.5% with a 23-point CI at 300 pods per arm (docs/reliability.md).
Here one recorder runs for the whole benchmark, loaded once, and its probes are switched
between pods: a *block* starts one unit (a pod, or ``--concurrency`` pods at once) per arm, in
an order that rotates from block to block, so neighbouring pods of different arms share the
machine's state of that moment. The CI resamples whole blocks.

Arms (``--arms``, space-separated; ``without`` is always there):
- ``without``: every program detached. The recorder process lives on (its maps, bcc's LLVM,
  a 100 ms poll), but no tracepoint runs anything and no task takes the slow syscall path.
- ``all``: every program attached, the recorder decoding and writing as `startprof record`.
- ``kernel``: every program attached, but the recorder reads nothing until the unit has ended
  (it waits on the benchmark's pipe, not on the ring buffer): the kernel's share alone, so
  ``all`` minus ``kernel`` is what the recorder's user space costs the pods.
- ``none``: detached, as ``without``: an A/A control, the instrument's own resolution.
- ``floor``: only an empty program on ``syscalls:sys_enter_getppid``: what switching every
  task to the slow syscall path costs by itself.
- ``NAME=exec,netlink,...``: only those probes' tracepoints (and the core's: fork, exit,
  clone, close), from the one loaded program set.

Between units the benchmark waits until the recorder has handled everything the last unit
caused (two hand-shakes through a pipe, each answered at a poll of the recorder's loop), then
switches, so a recorded unit's decoding and writing does not spill onto the next one.

The probes see nothing while detached. Processes started then are not followed; a recorded
unit's processes are all born while attached (containerd, which is followed from the start,
forks them), and each unit opens its own CRI connection after the switch, so a recorded
unit is recorded whole.

    sudo flock /tmp/startprof-lab.lock .venv/bin/python benchmarks/probe_toggle.py \\
        --config bridge --pods 300 --arms 'all none' --json out.json

Configs are `probe_overhead.py`'s (bridge, bridge-nomasq, ptp, two-containers, concurrency5,
crun). Figures per arm against ``without``:
- ``paired_ratio_pct`` and ``paired_ratio_ci95_pct``: the geometric mean over blocks of the
  arm's unit time against the ``without`` unit of the same block, and its bootstrap CI over
  blocks (issue 19's "CI of the paired ratio"). A pod's time is ImageStatus -> running, or
  ``--metric pod``: RunPodSandbox -> running.
- ``overhead_pct`` and ``ci95_pct``: the change of the pooled median, blocks resampled. Drift of
  the host (its steal time) widens this one; the paired ratio cancels it.
- ``blocks_slower``, ``paired_median_pct`` (the median of the blocks' changes), and the change
  of each CRI call. ``starts_ms`` keeps every unit's times.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import select
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from probe_overhead import CALLS, CONFIGS, Config, config_parser, paired_change_ci, pod_times

from startprof.lab.driver import run_pods
from startprof.lab.paths import LabPaths, lab_dir
from startprof.probes.hooks import MODES, hook_of_program
from startprof.procfs import cpu_seconds, cpu_times, steal_share
from startprof.resources import bpf_dir
from startprof.stats import change_pct, median, paired_ratio

CORE = "startprof"  # startprof.bpf.c: fork, exit, clone, close: every arm that records has it
FLOOR_TP = b"syscalls:sys_enter_getppid"
HANDSHAKE_S = 10.0
FAST_POLL_MS = 5
SETTLE_S = 0.05  # after the last hand-shake, before a unit: both arms alike


def tracepoints_by_probe() -> dict[bytes, set[str]]:
    """Each hook the C defines a program for, by its tracepoint name (a syscall hook's too, as
    fentry), and the probes (file stems) defining it."""
    found: dict[bytes, set[str]] = defaultdict(set)
    for path in bpf_dir().glob("*.bpf.c"):
        text = path.read_text()
        hooks = re.findall(r"^TRACEPOINT_PROBE\((\w+),\s*(\w+)\)", text, re.M)
        hooks += [
            ("syscalls", f"sys_{edge.lower()}_{name}")
            for edge, name in re.findall(r"^SP_SYSCALL_(ENTER|EXIT)\((\w+)\)", text, re.M)
        ]
        for cat, event in hooks:
            found[f"{cat}:{event}".encode()].add(path.name.removesuffix(".bpf.c"))
    return found


# ---------------------------------------------------------------- the recorder side


def recorder_main(args: argparse.Namespace) -> int:
    """`startprof record`'s Recorder, with a session whose programs a pipe switches."""
    from startprof.probes.session import ProbeSession
    from startprof.recorder import Recorder, RecordOptions

    req = os.fdopen(args.req_fd, "rb", buffering=0)
    ack = os.fdopen(args.ack_fd, "wb", buffering=0)
    owners = tracepoints_by_probe()

    class Toggled(ProbeSession):
        """Answers the benchmark at each poll: ``set ARM`` (re-attach for ARM), ``sync``, and
        ``go`` (a unit begins: poll every 100 ms again)."""

        attached: dict[bytes, tuple[str, bytes]]  # hook -> (how, program), as bcc attached
        floor: Any = None
        between = True
        defer = False  # the kernel arm: read nothing while a unit runs

        def start(self) -> None:
            super().start()
            bpf = self._require()
            self.attached = {
                tp: ("tracepoint", b"tracepoint__" + tp.replace(b":", b"__"))
                for tp in bpf.tracepoint_fds
            }
            for how, fds in (("kfunc", bpf.kfunc_entry_fds), ("kretfunc", bpf.kfunc_exit_fds)):
                for fn in fds:
                    self.attached[(hook_of_program(fn.decode()) or fn.decode()).encode()] = (
                        how,
                        fn,
                    )
            from bcc import BPF

            self.floor = BPF(text=b"int sp_floor(void *ctx) { return 0; }")
            self.floor.load_func(b"sp_floor", BPF.TRACEPOINT)

        def close(self) -> None:
            if self.floor is not None:
                self.floor.cleanup()
                self.floor = None
            super().close()

        def _set(self, arm: str) -> None:
            bpf = self._require()
            # Each tracepoint detach waits for an RCU grace period (~65 ms here: 3.9 s for all
            # of them one by one); closed side by side, the waits overlap.
            detach = [(bpf.detach_tracepoint, tp) for tp in list(bpf.tracepoint_fds)]
            detach += [(bpf.detach_kfunc, fn) for fn in list(bpf.kfunc_entry_fds)]
            detach += [(bpf.detach_kretfunc, fn) for fn in list(bpf.kfunc_exit_fds)]
            with ThreadPoolExecutor(max_workers=16) as pool:
                list(pool.map(lambda call: call[0](call[1]), detach))
            if FLOOR_TP in self.floor.tracepoint_fds:
                self.floor.detach_tracepoint(FLOOR_TP)
            self.defer = arm == "kernel"
            if arm == "floor":
                self.floor.attach_tracepoint(tp=FLOOR_TP, fn_name=b"sp_floor")
            elif arm not in ("without", "none"):
                probes = None if arm in ("all", "kernel") else {CORE, *arm.split(",")}
                for tp, (how, fn) in self.attached.items():
                    if probes is not None and not owners.get(tp, {CORE}) & probes:
                        continue
                    if how == "tracepoint":
                        bpf.attach_tracepoint(tp=tp, fn_name=fn)
                    elif how == "kfunc":
                        bpf.attach_kfunc(fn_name=fn)
                    else:
                        bpf.attach_kretfunc(fn_name=fn)

        def poll(self, timeout_ms: int) -> list[Any]:
            if self.defer and not self.between:
                # the records wait in the ring buffer (4 MiB: many units) until the unit's end
                select.select([req], [], [], HANDSHAKE_S)
            while select.select([req], [], [], 0)[0]:
                line = req.readline().decode().strip()
                if not line:  # the benchmark went away
                    os.kill(os.getpid(), 15)
                    break
                verb, _, arm = line.partition(" ")
                if verb == "set":
                    self._set(arm)
                # between units the benchmark waits on each answer: poll often until the unit
                # begins ("go"), then as `startprof record` does
                self.between = verb != "go"
                ack.write(f"{line}\n".encode())
            return super().poll(FAST_POLL_MS if self.between else timeout_ms)

    options = RecordOptions(
        output=Path(args.output), cri_socket=args.cri_socket, syscall_hooks=args.syscall_hooks
    )

    def ready() -> None:
        ack.write(b"ready\n")

    recorder = Recorder(options, session_factory=Toggled, on_ready=ready)
    result = recorder.run()
    print(
        f"recorder: {result.stats.events_written} events, {result.stats.drops} drops",
        file=sys.stderr,
    )
    return 0


# ---------------------------------------------------------------- the benchmark side


class Switch:
    """The benchmark's end of the recorder's pipes."""

    def __init__(self, output: Path, socket: str, syscall_hooks: str = "auto") -> None:
        req_r, self._req = os.pipe()
        self._ack, ack_w = os.pipe()
        cmd = [
            sys.executable,
            __file__,
            "_recorder",
            "--req-fd",
            str(req_r),
            "--ack-fd",
            str(ack_w),
            "--output",
            str(output),
            "--cri-socket",
            socket,
            "--syscall-hooks",
            syscall_hooks,
        ]
        self.proc = subprocess.Popen(cmd, pass_fds=(req_r, ack_w))
        os.close(req_r)
        os.close(ack_w)
        self._buf = b""
        self._expect(b"ready", 120.0)

    def _expect(self, line: bytes, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._ack], [], [], left)[0]:
                raise SystemExit(f"the recorder did not answer {line.decode()!r}")
            chunk = os.read(self._ack, 4096)
            if not chunk:
                raise SystemExit(
                    f"the recorder exited ({self.proc.wait()}) before {line.decode()!r}"
                )
            self._buf += chunk
        got, _, self._buf = self._buf.partition(b"\n")
        if got != line:
            raise SystemExit(f"the recorder answered {got!r} to {line!r}")

    def ask(self, line: str) -> None:
        os.write(self._req, f"{line}\n".encode())
        self._expect(line.encode(), HANDSHAKE_S)

    def sync(self) -> None:
        """Return once the recorder has written everything the kernel held a poll ago."""
        self.ask("sync")
        self.ask("sync")

    def set(self, arm: str, until: float = 0.0) -> None:
        """Switch to ``arm`` once the recorder has handled what came before: the set is answered
        at a poll, the sync at the next one, after the first poll's batch was written. Then
        wait until the monotonic time ``until`` (at least SETTLE_S) before the unit may go."""
        self.ask(f"set {arm}")
        self.ask("sync")
        time.sleep(max(SETTLE_S, until - time.monotonic()))
        self.ask("go")

    def cpu_ms(self) -> float:
        """The recorder's CPU so far (user + system, all threads)."""
        return 1e3 * cpu_seconds(self.proc.pid)

    def close(self) -> int:
        os.close(self._req)  # EOF: the recorder stops
        try:
            return self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


def unit(socket: str, cfg: Config, metric: str) -> dict[str, dict[str, float]]:
    """One unit: ``cfg.concurrency`` pods started at once, then torn down."""
    result = run_pods(
        socket,
        cfg.handler,
        pods=cfg.concurrency,
        concurrency=cfg.concurrency,
        containers=cfg.containers,
    )
    errors = [p.error for p in result.pods if p.error]
    if errors:
        raise SystemExit(f"a pod failed: {errors[0]}")
    return pod_times(result.records, metric)


def summarize(
    blocks: list[dict[str, dict[str, dict[str, float]]]], arms: list[str]
) -> dict[str, Any]:
    def starts(block: dict[str, dict[str, dict[str, float]]], arm: str) -> list[float]:
        return [t["start"] for t in block[arm].values()]

    out: dict[str, Any] = {}
    base_all = [x for b in blocks for x in starts(b, "without")]
    out["without"] = {"pods": len(base_all), "median_ms": round(median(base_all), 2)}
    for arm in arms[1:]:
        cur_all = [x for b in blocks for x in starts(b, arm)]
        pairs = [(starts(b, "without"), starts(b, arm)) for b in blocks]
        lo, hi = paired_change_ci(pairs)
        per_block = [change_pct(median(b), median(c)) for b, c in pairs]
        ratio, ratio_lo, ratio_hi = paired_ratio([(median(b), median(c)) for b, c in pairs])
        calls = {}
        for call in CALLS:
            b = [t[call] for blk in blocks for t in blk["without"].values() if call in t]
            c = [t[call] for blk in blocks for t in blk[arm].values() if call in t]
            if b and c:
                calls[call] = round(median(c) - median(b), 2)
        out[arm] = {
            "pods": len(cur_all),
            "median_ms": round(median(cur_all), 2),
            "overhead_pct": round(change_pct(median(base_all), median(cur_all)), 2),
            "ci95_pct": [round(lo, 2), round(hi, 2)],
            "blocks_slower": f"{sum(x > 0 for x in per_block)}/{len(per_block)}",
            "paired_median_pct": round(median(per_block), 2),
            "paired_ratio_pct": round(ratio, 2),
            "paired_ratio_ci95_pct": [round(ratio_lo, 2), round(ratio_hi, 2)],
            "call_change_ms": calls,
        }
    return out


def run_config(
    name: str, args: argparse.Namespace, specs: dict[str, str], workdir: Path
) -> dict[str, Any]:
    """``specs``: each arm's name and what it attaches (``without`` first)."""
    cfg = CONFIGS[name]
    arms = list(specs)
    socket = str(LabPaths(lab_dir()).socket)
    blocks_n = max(1, -(-args.pods // cfg.concurrency))
    blocks: list[dict[str, dict[str, dict[str, float]]]] = []
    recorder_ms: dict[str, float] = dict.fromkeys(arms, 0.0)
    switch = Switch(workdir / f"{name}.arrows", socket, args.syscall_hooks)
    t0 = time.monotonic()
    ticks0 = cpu_times()
    try:
        switch.set("without")
        unit(socket, cfg, args.metric)  # warm-up: images, page cache
        ended = time.monotonic()
        for i in range(blocks_n):
            order = arms[i % len(arms) :] + arms[: i % len(arms)]
            block = {}
            for arm in order:
                switch.set(specs[arm], until=ended + args.gap)
                cpu0 = switch.cpu_ms()
                block[arm] = unit(socket, cfg, args.metric)
                ended = time.monotonic()
                switch.sync()  # what the unit cost the recorder, its drain included
                recorder_ms[arm] += switch.cpu_ms() - cpu0
            blocks.append(block)
            if (i + 1) % 10 == 0 or i + 1 == blocks_n:
                line = " ".join(
                    f"{a}={median([t['start'] for b in blocks[-10:] for t in b[a].values()]):.1f}ms"
                    for a in arms
                )
                print(
                    f"{name} block {i + 1}/{blocks_n} ({time.monotonic() - t0:.0f} s): {line}",
                    file=sys.stderr,
                    flush=True,
                )
        switch.set("without")
    finally:
        rc = switch.close()
    size = (workdir / f"{name}.arrows").stat().st_size
    (workdir / f"{name}.arrows").unlink(missing_ok=True)
    return {
        "config": name,
        "handler": cfg.handler,
        "containers": cfg.containers,
        "concurrency": cfg.concurrency,
        "metric": args.metric,
        "blocks": blocks_n,
        "minutes": round((time.monotonic() - t0) / 60, 1),
        "recording_mb": round(size / 1e6, 1),
        "recorder_exit": rc,
        "gap_s": args.gap,
        "load1": os.getloadavg()[0],
        "steal_pct": round(100 * steal_share(ticks0, cpu_times()), 1),
        "syscall_hooks": args.syscall_hooks,
        "arms": summarize(blocks, arms),
        # each block's unit times per arm (ms), for other statistics later
        "starts_ms": {
            a: [[round(t["start"], 3) for t in b[a].values()] for b in blocks] for a in arms
        },
        "recorder_cpu_ms_per_pod": {
            a: round(ms / (blocks_n * cfg.concurrency), 1) for a, ms in recorder_ms.items()
        },
    }


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "_recorder":
        inner = argparse.ArgumentParser()
        inner.add_argument("_recorder")
        for flag in ("--req-fd", "--ack-fd"):
            inner.add_argument(flag, type=int, required=True)
        inner.add_argument("--output", required=True)
        inner.add_argument("--cri-socket", required=True)
        inner.add_argument("--syscall-hooks", default="auto")
        return recorder_main(inner.parse_args())
    parser = config_parser(__doc__)
    parser.add_argument(
        "--arms",
        default="all none",
        help="arms besides 'without', space-separated: all, kernel, none, floor, or "
        "NAME=PROBE,PROBE (default 'all none')",
    )
    parser.add_argument(
        "--gap",
        type=float,
        default=0.0,
        help="seconds from one unit's end to the next one's start, whatever the switch took "
        "(a detach waits ~2.3 s for RCU, an attach 16-31 ms): e.g. 3 gives every unit the "
        "same quiet time before it, and a recorded unit's programs attached at least the "
        "gap less a detach before it (~0.7 s at 3) (default 0: as soon as the switch is done)",
    )
    parser.add_argument(
        "--syscall-hooks",
        choices=MODES,
        default="auto",
        help="how the recorder's syscall hooks attach (record --syscall-hooks; default auto)",
    )
    args = parser.parse_args()
    specs = {"without": "without"}
    known = {p for owners in tracepoints_by_probe().values() for p in owners}
    for token in args.arms.split():
        name, _, spec = token.partition("=")
        specs[name] = spec or name
        if specs[name] not in ("all", "kernel", "none", "floor", "without"):
            unknown = set(specs[name].split(",")) - known
            if unknown:
                parser.error(
                    f"unknown probe(s) {', '.join(sorted(unknown))}; known: {sorted(known)}"
                )
    subprocess.run(
        [sys.executable, "-m", "startprof", "lab", "up"], check=True, stdout=subprocess.DEVNULL
    )
    results = []
    with tempfile.TemporaryDirectory(prefix="startprof-toggle-", dir="/var/tmp") as tmp:
        for name in args.config or ["bridge"]:
            results.append(run_config(name, args, specs, Path(tmp)))
            print(json.dumps(results[-1], indent=2), flush=True)
    doc = {"started_unix": int(time.time()), "cpus": os.cpu_count(), "configs": results}
    if args.json:
        args.json.write_text(json.dumps(doc, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
