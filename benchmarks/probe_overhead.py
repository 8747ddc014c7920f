#!/usr/bin/env python3
"""What recording costs a pod start: paired, interleaved rounds with and without `startprof record`.

Every round starts ``--round-size`` pods once per arm, in an order that rotates from round to
round: the arm ``without`` (no probes loaded) and one or more recorded arms (``all``: every
probe; ``exec``, ``exec,netlink``, ...: only those probes). Each arm runs the same
``startprof lab run`` subprocess; a recorded arm wraps it in ``startprof record -- ...``, which
starts the command only once the probes are attached, so load and detach times are not in the
figures. The recorded arm of a round is paired with that round's ``without``: drift (page cache,
host-local's address round-robin, other load on the machine) hits both halves of a pair alike.

    sudo flock /tmp/startprof-lab.lock .venv/bin/python benchmarks/probe_overhead.py \\
        --config bridge --pods 300 --round-size 20 --arms all --json out.json

Figures per recorded arm:

An arm ``NAME=none`` runs the same command unrecorded: its "overhead" against ``without`` is
the benchmark's own noise (an A/A test), the resolution any recorded arm's figure has.

- ``overhead_pct``: change of the median pod start over all its pods against the median over all
  ``without`` pods (the metric a reviewer computes);
- ``paired_ci95_pct``: 95% bootstrap CI of that change with the *rounds* resampled (each
  resample takes whole rounds, with both arms of each round: a cluster bootstrap that keeps the
  pairing), and ``rounds_slower`` (in how many rounds the recorded arm's median was slower);
- ``calls``: the same change per CRI call (RunPodSandbox, CreateContainer, StartContainer):
  where on the critical path the time went;
- ``stack_cpu_per_pod_ms``, and for recorded arms ``stack_cpu_change_pct`` with its
  round-resampled ``stack_cpu_ci95_pct``: CPU time of the container stack per pod (the lab's
  containerd, moved into ``startprof-lab/bench-stack`` for the run, with every shim, runc and
  CNI plugin it starts, and the pods' cgroups; ``StackCgroup``). The probes' kernel work runs in
  those tasks, so this is what they cost the pods, without the wall-clock noise of a shared VM;
- ``cpu``: per pod, CPU used by the whole machine (``/proc/stat``), by the arm's process tree
  (``record`` + ``lab run``; the difference between arms is the recorder's), by the lab's
  containerd (all threads, ``/proc/PID/task/*/schedstat``: run time and run-queue wait), and the
  machine's load average: what else ran.

The pod start is "ImageStatus→running" from the CRI ground truth (start of the pod's ImageStatus
call to the end of its last StartContainer), the figure the project reports;
``--metric pod`` takes RunPodSandbox→running instead (the CNI plugins' work included).

Configs (``--config``, repeatable; the lab's runtime handlers, docs/lab.md):

| config | handler | network | pods |
|---|---|---|---|
| bridge | runc-bridge | bridge, ``ipMasq: true`` (per-pod nat rules) + portmap | 1, one at a time |
| bridge-nomasq | runc-bridge-nomasq | bridge without masquerade + portmap | 1, one at a time |
| ptp | runc-ptp | ptp, masquerade + portmap | 1, one at a time |
| two-containers | runc-bridge | as bridge | 2 app containers |
| concurrency5 | runc-bridge | as bridge | 5 pods starting at once |
| crun | crun-bridge | as bridge | 1, one at a time |
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from startprof.lab.config import LAB_CGROUP
from startprof.lab.truth import read_truth
from startprof.stats import RESAMPLES, change_pct, median, p95

STARTPROF = [sys.executable, "-m", "startprof"]
CALLS = ("RunPodSandbox", "CreateContainer", "StartContainer")


@dataclass(frozen=True)
class Config:
    handler: str
    containers: int = 1
    concurrency: int = 1


CONFIGS: dict[str, Config] = {
    "bridge": Config("runc-bridge"),
    "bridge-nomasq": Config("runc-bridge-nomasq"),
    "ptp": Config("runc-ptp"),
    "two-containers": Config("runc-bridge", containers=2),
    "concurrency5": Config("runc-bridge", concurrency=5),
    "crun": Config("crun-bridge"),
}


def pod_times(truth: list[dict[str, Any]], metric: str) -> dict[str, dict[str, float]]:
    """Per pod: its start (``metric``) and the duration of each CRI call in CALLS, in ms."""
    calls: dict[str, dict[str, list[tuple[int, int]]]] = defaultdict(lambda: defaultdict(list))
    for rec in truth:
        method = str(rec["method"]).rsplit("/", 1)[-1]
        span = (int(rec["start_monotonic_ns"]), int(rec["end_monotonic_ns"]))
        calls[str(rec["pod"])][method].append(span)
    out: dict[str, dict[str, float]] = {}
    first = "ImageStatus" if metric == "image" else "RunPodSandbox"
    for pod, methods in calls.items():
        if not (methods.get(first) and methods.get("StartContainer")):
            continue
        start = min(s for s, _ in methods[first])
        end = max(e for _, e in methods["StartContainer"])
        times = {"start": (end - start) / 1e6}
        for call in CALLS:
            if methods.get(call):
                times[call] = sum(e - s for s, e in methods[call]) / 1e6
        out[pod] = times
    return out


# ---- what the machine did meanwhile ----


def _proc_stat() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs."""
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    idle = fields[3] + fields[4]
    return sum(fields) - idle, sum(fields)


def _schedstat(pid: int) -> tuple[int, int]:
    """(run ns, run-queue wait ns) summed over every thread of pid."""
    run = wait = 0
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0, 0
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                r, w, _ = f.read().split()
        except (OSError, ValueError):
            continue
        run += int(r)
        wait += int(w)
    return run, wait


def _lab_containerd() -> int | None:
    proc = subprocess.run([*STARTPROF, "lab", "status", "--json"], capture_output=True, text=True)
    try:
        return int(json.loads(proc.stdout)["pid"])
    except (ValueError, KeyError, TypeError):
        return None


class StackCgroup:
    """CPU time of the container stack the pods start on, the recorder's own left out.

    The lab's containerd is moved into a cgroup of its own, ``startprof-lab/bench-stack``,
    for the run; the shims, runc and CNI plugins it starts are born in it, and runc init
    finishes in the pod's cgroup under ``startprof-lab``. The CPU usage of ``startprof-lab``
    (cpuacct on cgroup v1, ``cpu.stat`` on v2: both count descendants, removed ones too) is
    then the whole stack's. The probes' kernel work runs in these tasks, so a recorded arm's
    extra stack CPU is what the probes cost the pods, undiluted by scheduling noise.
    """

    def __init__(self, containerd: int) -> None:
        self.containerd = containerd
        self.root = _cpu_hierarchy()
        self.lab = self.root / LAB_CGROUP if self.root else None
        self.stack = self.lab / "bench-stack" if self.lab else None
        self.active = False

    def __enter__(self) -> StackCgroup:
        if self.stack is None:
            return self
        try:
            self.stack.mkdir(parents=True, exist_ok=True)
            (self.stack / "cgroup.procs").write_text(str(self.containerd))
            self.active = True
        except OSError as exc:
            print(f"stack CPU not measured: {exc}", file=sys.stderr)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.stack is None or not self.stack.exists() or self.root is None:
            return
        for pid in (self.stack / "cgroup.procs").read_text().split():
            with contextlib.suppress(OSError):  # exited meanwhile
                (self.root / "cgroup.procs").write_text(pid)
        try:
            self.stack.rmdir()
        except OSError as exc:
            print(f"{self.stack} left ({exc}); lab down removes it", file=sys.stderr)

    def usage_ms(self) -> float | None:
        if not self.active or self.lab is None:
            return None
        if (self.lab / "cpuacct.usage").exists():
            return int((self.lab / "cpuacct.usage").read_text()) / 1e6
        stat = dict(line.split() for line in (self.lab / "cpu.stat").read_text().splitlines())
        return int(stat["usage_usec"]) / 1e3


def _cpu_hierarchy() -> Path | None:
    """The cgroup v1 cpuacct hierarchy, else the v2 one; None without either."""
    v2 = None
    with open("/proc/mounts") as f:
        for line in f:
            _, where, fstype, options = line.split()[:4]
            if fstype == "cgroup" and "cpuacct" in options.split(","):
                return Path(where)
            if fstype == "cgroup2":
                v2 = Path(where)
    return v2


@dataclass
class ArmRun:
    times: dict[str, dict[str, float]]
    machine_busy_ms: float
    tree_cpu_ms: float
    containerd_run_ms: float
    containerd_wait_ms: float
    stack_cpu_ms: float | None
    wall_s: float
    load1: float


def run_arm(
    probes: str | None,
    cfg: Config,
    pods: int,
    workdir: Path,
    tag: str,
    metric: str,
    containerd: int | None,
    recordings: Path | None = None,
    stack: StackCgroup | None = None,
) -> ArmRun:
    """One round of ``pods`` pods; recorded with these probes (comma list, or ``all``) unless
    ``probes`` is None."""
    truth = workdir / f"truth-{tag}.jsonl"
    lab_run = [
        *STARTPROF,
        "lab",
        "run",
        "--pods",
        str(pods),
        "--concurrency",
        str(cfg.concurrency),
        "--containers",
        str(cfg.containers),
        "--runtime-handler",
        cfg.handler,
        "--truth",
        str(truth),
    ]
    env = None
    if probes is None:
        cmd = lab_run
    elif probes.startswith("tp:"):  # only empty programs on these tracepoints: the floor
        floor = Path(__file__).with_name("tp_floor.py")
        cmd = [sys.executable, str(floor), *probes[3:].split(","), "--", *lab_run]
    else:
        probes, _, source = probes.partition("@")
        if source:  # another checkout's startprof records (before/after in the same rounds)
            env = {**os.environ, "PYTHONPATH": source}
        chosen = [] if probes == "all" else [a for p in probes.split(",") for a in ("--probe", p)]
        output = (recordings or workdir) / f"{tag}.arrows"
        cmd = [*STARTPROF, "record", "-o", str(output), *chosen, "--", *lab_run]
    busy0, _ = _proc_stat()
    cd0 = _schedstat(containerd) if containerd else (0, 0)
    stack0 = stack.usage_ms() if stack else None
    t0 = time.monotonic()
    log = workdir / f"{tag}.log"
    with log.open("wb") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, env=env)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.monotonic() - t0
    busy1, _ = _proc_stat()
    cd1 = _schedstat(containerd) if containerd else (0, 0)
    stack1 = stack.usage_ms() if stack else None
    stderr = log.read_text(errors="replace")
    log.unlink()
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{stderr[-2000:]}")
    if probes is not None:
        ((recordings or workdir) / f"{tag}.arrows").unlink(missing_ok=True)  # MBs per round
    hz = os.sysconf("SC_CLK_TCK")
    return ArmRun(
        times=pod_times(read_truth(truth), metric),
        machine_busy_ms=1e3 * (busy1 - busy0) / hz,
        tree_cpu_ms=1e3 * (usage.ru_utime + usage.ru_stime),
        containerd_run_ms=(cd1[0] - cd0[0]) / 1e6,
        containerd_wait_ms=(cd1[1] - cd0[1]) / 1e6,
        stack_cpu_ms=None if stack0 is None or stack1 is None else stack1 - stack0,
        wall_s=wall,
        load1=os.getloadavg()[0],
    )


# ---- statistics ----


def paired_change_ci(
    rounds: list[tuple[list[float], list[float]]], *, seed: int = 19, level: float = 0.95
) -> tuple[float, float]:
    """Bootstrap CI (percent) of the change of the pooled median, resampling whole rounds:
    each round contributes its baseline and recorded pods together, so round-to-round drift
    cancels within a pair instead of widening (or biasing) the interval."""
    rng = np.random.default_rng(seed)
    n = len(rounds)
    base = [np.asarray(b, dtype=float) for b, _ in rounds]
    cur = [np.asarray(c, dtype=float) for _, c in rounds]
    changes = np.empty(RESAMPLES)
    for i in range(RESAMPLES):
        pick = rng.integers(0, n, size=n)
        b = np.median(np.concatenate([base[j] for j in pick]))
        c = np.median(np.concatenate([cur[j] for j in pick]))
        changes[i] = 100.0 * (c - b) / b
    tail = (1 - level) / 2
    lo, hi = np.quantile(changes, [tail, 1 - tail])
    return float(lo), float(hi)


def paired_ratio_ci(
    rounds: list[tuple[float, float]], *, seed: int = 19, level: float = 0.95
) -> tuple[float, float]:
    """95% CI of the % change of sum(current) / sum(base) over rounds, resampled whole."""
    rng = np.random.default_rng(seed)
    base = np.asarray([b for b, _ in rounds], dtype=float)
    cur = np.asarray([c for _, c in rounds], dtype=float)
    pick = rng.integers(0, len(rounds), size=(RESAMPLES, len(rounds)))
    changes = 100.0 * (cur[pick].sum(axis=1) / base[pick].sum(axis=1) - 1)
    tail = (1 - level) / 2
    lo, hi = np.quantile(changes, [tail, 1 - tail])
    return float(lo), float(hi)


def summarize(runs: dict[str, list[ArmRun]], pods_per_round: int) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    base_runs = runs["without"]

    def values(rs: list[ArmRun], key: str) -> list[float]:
        return [t[key] for r in rs for t in r.times.values() if key in t]

    for arm, rs in runs.items():
        starts = values(rs, "start")
        n_pods = max(1, len(starts))
        entry: dict[str, Any] = {
            "n": len(starts),
            "median_ms": round(median(starts), 2),
            "p95_ms": round(p95(starts), 2),
            "calls_median_ms": {c: round(median(values(rs, c)), 2) for c in CALLS if values(rs, c)},
            "cpu_per_pod_ms": {
                "machine_busy": round(sum(r.machine_busy_ms for r in rs) / n_pods, 1),
                "arm_process_tree": round(sum(r.tree_cpu_ms for r in rs) / n_pods, 1),
                "containerd_run": round(sum(r.containerd_run_ms for r in rs) / n_pods, 2),
                "containerd_runqueue_wait": round(
                    sum(r.containerd_wait_ms for r in rs) / n_pods, 2
                ),
            },
            "stack_cpu_per_pod_ms": (
                round(sum(r.stack_cpu_ms or 0 for r in rs) / n_pods, 2)
                if all(r.stack_cpu_ms is not None for r in rs)
                else None
            ),
            "load1_mean": round(sum(r.load1 for r in rs) / len(rs), 2),
        }
        if arm != "without":
            pairs = [
                ([t["start"] for t in b.times.values()], [t["start"] for t in c.times.values()])
                for b, c in zip(base_runs, rs, strict=True)
            ]
            lo, hi = paired_change_ci(pairs)
            base_starts = values(base_runs, "start")
            entry["overhead_pct"] = round(change_pct(median(base_starts), median(starts)), 2)
            entry["paired_ci95_pct"] = [round(lo, 2), round(hi, 2)]
            entry["rounds_slower"] = sum(median(c) > median(b) for b, c in pairs)
            entry["rounds"] = len(pairs)
            entry["calls_change_ms"] = {
                c: round(median(values(rs, c)) - median(values(base_runs, c)), 2)
                for c in CALLS
                if values(rs, c) and values(base_runs, c)
            }
            stack = [
                (b.stack_cpu_ms, c.stack_cpu_ms)
                for b, c in zip(base_runs, rs, strict=True)
                if b.stack_cpu_ms is not None and c.stack_cpu_ms is not None
            ]
            if stack:
                base_sum, cur_sum = sum(b for b, _ in stack), sum(c for _, c in stack)
                entry["stack_cpu_change_pct"] = round(change_pct(base_sum, cur_sum), 2)
                entry["stack_cpu_ci95_pct"] = [round(v, 2) for v in paired_ratio_ci(stack)]
                entry["stack_cpu_rounds_higher"] = sum(c > b for b, c in stack)
            base_tree = sum(r.tree_cpu_ms for r in base_runs) / max(1, len(base_starts))
            entry["recorder_cpu_per_pod_ms"] = round(
                entry["cpu_per_pod_ms"]["arm_process_tree"] - base_tree, 1
            )
        out[arm] = entry
    return out


def _rounds(
    name: str,
    cfg: Config,
    args: argparse.Namespace,
    workdir: Path,
    arms: list[tuple[str, str | None]],
    rounds: int,
    runs: dict[str, list[ArmRun]],
    containerd: int | None,
    stack: StackCgroup | None,
) -> None:
    for i in range(rounds):
        order = arms[i % len(arms) :] + arms[: i % len(arms)]
        for arm, probes in order:
            runs[arm].append(
                run_arm(
                    probes,
                    cfg,
                    args.round_size,
                    workdir,
                    f"{name}-{arm}-{i}",
                    args.metric,
                    containerd,
                    args.recordings,
                    stack,
                )
            )
        line = " ".join(
            f"{a}={median([t['start'] for t in r[-1].times.values()]):.1f}ms"
            for a, r in runs.items()
        )
        print(f"{name} round {i + 1}/{rounds}: {line}", file=sys.stderr, flush=True)


def run_config(name: str, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    cfg = CONFIGS[name]
    arms: list[tuple[str, str | None]] = [("without", None)]
    arms += [(a.partition("=")[0], a.partition("=")[2]) if "=" in a else (a, a) for a in args.arms]
    # 'NAME=none': the same command unrecorded, a second control (A/A: the benchmark's noise)
    arms = [(a, None if p == "none" else p) for a, p in arms]
    rounds = max(1, -(-args.pods // args.round_size))
    runs: dict[str, list[ArmRun]] = {a: [] for a, _ in arms}
    containerd = _lab_containerd()
    # images, page cache
    run_arm(None, cfg, 2, workdir, f"{name}-warmup", args.metric, containerd)
    with StackCgroup(containerd) if containerd else contextlib.nullcontext() as stack:
        _rounds(name, cfg, args, workdir, arms, rounds, runs, containerd, stack)
    return {
        "config": name,
        "handler": cfg.handler,
        "containers": cfg.containers,
        "concurrency": cfg.concurrency,
        "metric": args.metric,
        "round_size": args.round_size,
        "arms": summarize(runs, args.round_size),
        "per_round_median_ms": {
            a: [round(median([t["start"] for t in r.times.values()]), 2) for r in rs]
            for a, rs in runs.items()
        },
    }


def config_parser(doc: str | None) -> argparse.ArgumentParser:
    """The options both overhead benchmarks take: --config, --pods, --metric, --json."""
    parser = argparse.ArgumentParser(
        description=(doc or "").splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n".join((doc or "").splitlines()[1:]),
    )
    parser.add_argument(
        "--config",
        action="append",
        choices=sorted(CONFIGS),
        help="lab set-up to measure (repeatable; default bridge)",
    )
    parser.add_argument("--pods", type=int, default=100, help="pods per arm (default 100)")
    parser.add_argument("--metric", choices=("image", "pod"), default="image")
    parser.add_argument("--json", type=Path, help="write the figures here too")
    return parser


def main() -> int:
    parser = config_parser(__doc__)
    parser.add_argument("--round-size", type=int, default=20, help="pods per arm and round")
    parser.add_argument(
        "--arms",
        type=lambda s: [a for a in s.split() if a],
        default=["all"],
        help="recorded arms, space-separated: 'all' or comma lists of probes, e.g. "
        "'all exec namespaces,exec netlink cri' (default: all); 'NAME=PROBES@SRC' records "
        "with the startprof under SRC (PYTHONPATH), e.g. 'before=all@/tmp/head/src after=all'; "
        "'NAME=tp:CAT:EVENT,...' loads only empty programs there (benchmarks/tp_floor.py); "
        "'NAME=none' records nothing: an A/A control that shows the benchmark's own noise",
    )
    parser.add_argument(
        "--recordings",
        type=Path,
        help="where recorded arms write (default: a temporary dir in /var/tmp, on the lab's "
        "file system; /dev/shm takes the recording's fsyncs off the disk containerd uses)",
    )
    args = parser.parse_args()
    configs = args.config or ["bridge"]

    subprocess.run([*STARTPROF, "lab", "up"], check=True, stdout=subprocess.DEVNULL)
    started = time.time()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    results = []
    with tempfile.TemporaryDirectory(prefix="startprof-overhead-", dir="/var/tmp") as tmp:
        for name in configs:
            results.append(run_config(name, args, Path(tmp)))
    doc = {
        "started_unix": int(started),
        "minutes": round((time.time() - started) / 60, 1),
        "cpus": os.cpu_count(),
        "children_cpu_s": round(
            resource.getrusage(resource.RUSAGE_CHILDREN).ru_utime - before.ru_utime, 1
        ),
        "configs": results,
    }
    print(json.dumps(doc, indent=2))
    if args.json:
        args.json.write_text(json.dumps(doc, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
