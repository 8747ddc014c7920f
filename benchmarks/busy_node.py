#!/usr/bin/env python3
"""`startprof agent` on a node that is busy, and for long: what it costs, whether it keeps up.

Two modes, both on the lab (run as root under the lab lock; each brings its own lab up in a
temporary directory and down again, leaving nothing behind):

``busy``: dozens of long-lived pods (``lab run --keep``) beside the pods being started by the
grpc-go kubelet-like client (docs/kubelet-client.md), whose connection is older than the agent
(its calls reach the agent unnamed, as a kubelet's do) and which relists every pod every second
like the kubelet's PLEG. In paired, interleaved rounds the same batch starts once with the
agent running and once without; per arm the pod start (ImageStatus→running from the
client's ground truth), and with the agent: its drops, lost CRI bytes, CPU and RSS over time.
The overhead is the change of the median pod start, with its 95% bootstrap CI
(``startprof.bench.stats``), and in how many rounds the agent's half was slower.

``soak``: one pod every ``--every`` seconds for ``--minutes``; the agent's RSS sampled every
10 s, its drops, the traces a local OTLP/gRPC receiver got.

    sudo flock /tmp/startprof-lab.lock .venv/bin/python benchmarks/busy_node.py busy \\
        --idle-pods 30 --rounds 6 --round-size 5 --json busy.json
    sudo flock /tmp/startprof-lab.lock .venv/bin/python benchmarks/busy_node.py soak \\
        --minutes 20 --every 5 --json soak.json

Figures are printed as one JSON document (and written to ``--json``).
"""

from __future__ import annotations

import argparse
import json
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc
from opentelemetry.proto.collector.metrics.v1 import (
    metrics_service_pb2,
    metrics_service_pb2_grpc,
)
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from startprof.bench.stats import median, overhead
from startprof.lab.truth import read_truth
from startprof.procfs import cpu_seconds

STARTPROF = [sys.executable, "-m", "startprof"]
IMAGE_STATUS = "/runtime.v1.ImageService/ImageStatus"
START_CONTAINER = "/runtime.v1.RuntimeService/StartContainer"
SAMPLE_S = 10.0
FINAL = re.compile(r"(\d+) pod starts sent.*?(\d+) dropped, (\d+) CRI bytes lost")
REPO = Path(__file__).resolve().parents[1]


class TraceCounter(trace_service_pb2_grpc.TraceServiceServicer):
    """An OTLP/gRPC trace receiver that counts the traces it got."""

    def __init__(self) -> None:
        self.trace_ids: set[bytes] = set()
        self._lock = threading.Lock()

    def Export(self, request: Any, context: Any) -> Any:
        with self._lock:
            self.trace_ids.update(
                s.trace_id
                for rs in request.resource_spans
                for ss in rs.scope_spans
                for s in ss.spans
            )
        return trace_service_pb2.ExportTraceServiceResponse()


class MetricsSink(metrics_service_pb2_grpc.MetricsServiceServicer):
    """Takes the agent's metrics and keeps nothing (their figures are the agent's last line)."""

    def Export(self, request: Any, context: Any) -> Any:
        return metrics_service_pb2.ExportMetricsServiceResponse()


@contextmanager
def receiver() -> Iterator[tuple[str, TraceCounter]]:
    counter = TraceCounter()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(counter, server)  # type: ignore[no-untyped-call]
    metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(MetricsSink(), server)  # type: ignore[no-untyped-call]
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"http://127.0.0.1:{port}", counter
    finally:
        server.stop(grace=None)


@contextmanager
def lab() -> Iterator[tuple[Path, str]]:
    root = Path(tempfile.mkdtemp(prefix="sp-busy-", dir="/tmp"))
    try:
        subprocess.run([*STARTPROF, "lab", "up", "--dir", str(root)], check=True)
        status = subprocess.run(
            [*STARTPROF, "lab", "status", "--dir", str(root), "--json"],
            check=True,
            capture_output=True,
            text=True,
        )
        yield root, json.loads(status.stdout)["socket"]
    finally:
        subprocess.run([*STARTPROF, "lab", "down", "--dir", str(root)], check=False)


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


class RunningAgent:
    """``startprof agent`` beside the lab, with its RSS and CPU sampled from /proc."""

    def __init__(self, socket: str, url: str, log: Path) -> None:
        self.log = log
        with log.open("w") as err:
            self.proc = subprocess.Popen(
                [*STARTPROF, "agent", "--otlp", url, "--cri-socket", socket], stderr=err
            )
        deadline = time.monotonic() + 120
        while "agent following" not in log.read_text():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the agent did not start: {log.read_text()}")
            time.sleep(0.2)
        self.started = time.monotonic()
        self.samples: list[tuple[float, int, float]] = []
        """(seconds since ready, RSS kB, CPU s)"""
        self.sample()

    def sample(self) -> None:
        pid = self.proc.pid
        self.samples.append((time.monotonic() - self.started, rss_kb(pid), cpu_seconds(pid)))

    def stop(self) -> dict[str, Any]:
        self.sample()
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=120)
        final = self.log.read_text().strip().splitlines()[-1]
        match = FINAL.search(final)
        rss = [kb for _, kb, _ in self.samples]
        return {
            "exit": code,
            "final_line": final,
            "pods_sent": int(match.group(1)) if match else None,
            "drops": int(match.group(2)) if match else None,
            "cri_bytes_lost": int(match.group(3)) if match else None,
            "rss_mb": {"first": rss[0] / 1024, "last": rss[-1] / 1024, "max": max(rss) / 1024},
            "cpu_s": self.samples[-1][2],
            "samples": [
                {"t_s": round(t, 1), "rss_mb": kb / 1024, "cpu_s": c} for t, kb, c in self.samples
            ],
        }


def start_pods(root: Path, pods: int, truth: Path) -> list[float]:
    """Start ``pods`` pods with the lab's client; their ImageStatus→running times (s)."""
    subprocess.run(
        [*STARTPROF, "lab", "run", "--dir", str(root), "--pods", str(pods), "--truth", str(truth)],
        check=True,
        capture_output=True,
    )
    return pod_starts(truth)


def pod_starts(truth: Path) -> list[float]:
    """ImageStatus→running (s) per pod in a ground-truth file, which is then removed."""
    first: dict[str, int] = {}
    last: dict[str, int] = {}
    for c in read_truth(truth):
        key = c.get("pod") or c["sandbox_id"]
        if c["method"] == IMAGE_STATUS:
            first.setdefault(key, c["start_wall_ns"])
        elif c["method"] == START_CONTAINER:
            last[key] = max(last.get(key, 0), c["end_wall_ns"])
    truth.unlink()
    return [(last[k] - first[k]) / 1e9 for k in last if k in first]


def soak(args: argparse.Namespace) -> dict[str, Any]:
    with lab() as (root, socket), receiver() as (url, counter):
        agent = RunningAgent(socket, url, root / "agent.log")
        end = time.monotonic() + args.minutes * 60
        started = 0
        next_sample = time.monotonic() + SAMPLE_S
        while time.monotonic() < end:
            t0 = time.monotonic()
            start_pods(root, 1, root / "truth-soak.jsonl")
            started += 1
            while time.monotonic() < t0 + args.every:
                if time.monotonic() >= next_sample:
                    agent.sample()
                    next_sample += SAMPLE_S
                time.sleep(0.2)
        time.sleep(2)
        out = agent.stop()
        out.update(
            mode="soak", minutes=args.minutes, pods_started=started, traces=len(counter.trace_ids)
        )
        # flat: the last sample against the first after the first minute (bcc's start-up)
        warm = [s["rss_mb"] for s in out["samples"] if s["t_s"] >= 60]
        if warm:
            out["rss_mb"]["after_first_minute"] = warm[0]
            out["rss_growth_pct"] = 100 * (warm[-1] - warm[0]) / warm[0]
            out["rss_spread_pct"] = 100 * (max(warm) - min(warm)) / min(warm)
        return out


def go_client() -> str:
    """The grpc-go kubelet-like client (docs/kubelet-client.md), built or found in its cache."""
    proc = subprocess.run(
        [str(REPO / "scripts/setup-go-client.sh")], check=True, capture_output=True, text=True
    )
    return proc.stdout.strip().splitlines()[-1]


def kubelet_batch(
    client: str, root: Path, pods: int, truth: Path, with_agent: Callable[[], RunningAgent] | None
) -> tuple[list[float], RunningAgent | None]:
    """One batch from the kubelet-like client on a connection older than the agent (it ages
    the connection, prints ``aged`` and waits for SIGUSR1, polling like the PLEG throughout):
    with ``with_agent``, the agent starts in that wait, as on a node where the kubelet's
    connection is always older. The pods' ImageStatus→running times (s) from its truth."""
    out = root / "client.out"
    startprof = str(Path(sys.executable).with_name("startprof"))
    argv = [client, "--lab-dir", str(root), "--startprof", startprof,
            "--pods", str(pods), "--concurrency", "1", "--age-pods", "1", "--age-seconds", "2",
            "--truth", str(truth)]  # fmt: skip
    with out.open("w") as so:
        proc = subprocess.Popen(
            argv, stdout=so, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL
        )
    agent = None
    try:
        while "aged" not in out.read_text().split():
            if proc.poll() is not None:
                raise SystemExit(f"the kubelet client exited {proc.returncode}")
            time.sleep(0.2)
        if with_agent is not None:
            agent = with_agent()
        proc.send_signal(signal.SIGUSR1)
        if proc.wait(timeout=600) != 0:
            raise SystemExit(f"the kubelet client exited {proc.returncode}")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return pod_starts(truth), agent


def busy(args: argparse.Namespace) -> dict[str, Any]:
    client = go_client()
    rounds: list[dict[str, list[float]]] = []
    agent_runs: list[dict[str, Any]] = []
    with lab() as (root, socket), receiver() as (url, counter):
        # the long-lived pods: their shims and processes are followed, the PLEG lists them all
        subprocess.run(
            [*STARTPROF, "lab", "run", "--dir", str(root), "--pods", str(args.idle_pods),
             "--concurrency", "4", "--keep"],
            check=True,
            capture_output=True,
        )  # fmt: skip
        for r in range(args.rounds):
            got: dict[str, list[float]] = {}
            for arm in ("agent", "none") if r % 2 == 0 else ("none", "agent"):
                sampler_stop = threading.Event()

                def start(stop: threading.Event = sampler_stop, n: int = r) -> RunningAgent:
                    a = RunningAgent(socket, url, root / f"agent-{n}.log")

                    def loop() -> None:
                        while not stop.wait(1.0):
                            a.sample()

                    threading.Thread(target=loop, daemon=True).start()
                    return a

                got[arm], agent = kubelet_batch(
                    client, root, args.round_size, root / "truth-busy.jsonl",
                    start if arm == "agent" else None,
                )  # fmt: skip
                sampler_stop.set()
                if agent is not None:
                    time.sleep(1.5)
                    agent_runs.append(agent.stop())
            rounds.append(got)
    pooled = {arm: [v for r in rounds for v in r[arm]] for arm in ("agent", "none")}
    return {
        "mode": "busy",
        "idle_pods": args.idle_pods,
        "rounds": args.rounds,
        "round_size": args.round_size,
        "median_pod_start_s": {arm: median(v) for arm, v in pooled.items()},
        **overhead(pooled["none"], pooled["agent"]),
        "rounds_slower": sum(median(r["agent"]) > median(r["none"]) for r in rounds),
        "drops": sum(a["drops"] or 0 for a in agent_runs),
        "cri_bytes_lost": sum(a["cri_bytes_lost"] or 0 for a in agent_runs),
        "traces": len(counter.trace_ids),
        "pods_started_with_agent": len(pooled["agent"]),
        "agent_cpu_s_per_round": [a["cpu_s"] for a in agent_runs],
        "agent_rss_mb_max": max(a["rss_mb"]["max"] for a in agent_runs),
        "agent_runs": agent_runs,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="mode", required=True)
    b = sub.add_parser("busy")
    b.add_argument("--idle-pods", type=int, default=30)
    b.add_argument("--rounds", type=int, default=6)
    b.add_argument("--round-size", type=int, default=5)
    s = sub.add_parser("soak")
    s.add_argument("--minutes", type=float, default=20)
    s.add_argument("--every", type=float, default=5)
    for p in (b, s):
        p.add_argument("--json", type=Path)
    args = parser.parse_args()
    out = soak(args) if args.mode == "soak" else busy(args)
    text = json.dumps(out, indent=2, default=float)
    if args.json is not None:
        args.json.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
