#!/usr/bin/env python3
"""How many CRI calls on an aged connection get named, as a function of how long the recording
ran (issue 13).

Takes recordings made on connections older than themselves (default: the stored aged ones in
tests/data/recordings), cuts each at increasing times after its start, runs the analysis's
naming pass on every prefix, and prints the share of all CRI calls named (polling included) and
of the pod-start calls, with the time the naming pass took.

    .venv/bin/python benchmarks/cri_naming.py [RECORDING ...] [--json]

To make a longer recording on the lab (root), age a grpc-go kubelet client's connection, then
record while it starts pods and keeps polling (tests/integration/aged.py does the same):

    build/kubelet-client/bin/kubelet-client-* --lab-dir /var/lib/startprof/lab --pods 20 \\
        --age-pods 2 --age-seconds 60 --truth t.jsonl &   # prints "aged", waits for SIGUSR1
    startprof record -o aged.arrows -- sh -c 'kill -USR1 PID; exec tail --pid=PID -f /dev/null'
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from startprof.analysis import timed
from startprof.analysis.cri_naming import name_calls
from startprof.cri.api import short_method
from startprof.recording import read_recording

ROOT = Path(__file__).resolve().parent.parent
DEFAULTS = sorted((ROOT / "tests" / "data" / "recordings").glob("aged-*.arrows"))
POD_START = {
    "RunPodSandbox",
    "PodSandboxStatus",
    "ImageStatus",
    "PullImage",
    "CreateContainer",
    "StartContainer",
    "ContainerStatus",
}
CUTS_S = (1.0, 2.0, 5.0, 10.0, 20.0, 40.0, 80.0)


def shares(path: Path) -> list[dict[str, Any]]:
    rec = read_recording(path)
    events = timed(rec.frame())
    start = rec.header.start_monotonic_ns
    last = int(events["ts_ns"].max())
    rows = []
    for cut in (*[c for c in CUTS_S if start + c * 1e9 < last], (last - start) / 1e9):
        prefix = events[events["ts_ns"] <= start + int(cut * 1e9)].reset_index(drop=True)
        t0 = time.perf_counter()
        named, stats = name_calls(prefix)
        seconds = time.perf_counter() - t0
        calls = named[named["kind"] == "cri_call"]
        methods = [short_method(m) for m in calls["method"].dropna()]
        rows.append(
            {
                "recording": path.name,
                "seconds": round(cut, 1),
                "calls": len(calls),
                "named": len(methods),
                "named_share": round(len(methods) / len(calls), 4) if len(calls) else None,
                "pod_start_named": sum(m in POD_START for m in methods),
                "unnamed_keys": stats.ambiguous_keys,
                "naming_ms": round(seconds * 1e3, 1),
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("recordings", nargs="*", type=Path, default=DEFAULTS)
    parser.add_argument("--json", action="store_true", help="one JSON document instead of a table")
    args = parser.parse_args()
    rows = [row for path in args.recordings for row in shares(path)]
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    head = ("s", "calls", "named", "share", "keys?", "ms")
    print(f"{'recording':24} " + " ".join(f"{h:>6}" for h in head))
    for r in rows:
        share = "-" if r["named_share"] is None else f"{100 * r['named_share']:.1f}%"
        print(
            f"{r['recording']:24} {r['seconds']:6.1f} {r['calls']:6d} {r['named']:6d} "
            f"{share:>6} {r['unnamed_keys']:6d} {r['naming_ms']:6.1f}"
        )


if __name__ == "__main__":
    main()
