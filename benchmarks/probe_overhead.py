#!/usr/bin/env python3
"""What the probes cost a pod start: median ImageStatus→running with and without recording.

Runs on the lab (brought up if needed). Rounds alternate which arm goes first, so drift (page
cache, host-local's IP round-robin, thermal) hits both arms alike. Both arms start pods through
the same `startprof lab run` subprocess; the recording arm wraps it in `startprof record -- ...`,
which starts the command only once the probes are attached.

    sudo .venv/bin/python benchmarks/probe_overhead.py --pods 30 --handler runc-bridge

"ImageStatus→running" is measured from the CRI ground truth: from the start of a pod's
ImageStatus call to the end of its last StartContainer (the container runs once it returns).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

from startprof.lab.truth import read_truth

STARTPROF = [sys.executable, "-m", "startprof"]


def image_to_running_ms(truth: list[dict[str, object]]) -> list[float]:
    calls: dict[str, dict[str, list[tuple[int, int]]]] = defaultdict(lambda: defaultdict(list))
    for rec in truth:
        method = str(rec["method"]).rsplit("/", 1)[-1]
        span = (int(rec["start_monotonic_ns"]), int(rec["end_monotonic_ns"]))  # type: ignore[call-overload]
        calls[str(rec["pod"])][method].append(span)
    out = []
    for methods in calls.values():
        if methods.get("ImageStatus") and methods.get("StartContainer"):
            start = min(s for s, _ in methods["ImageStatus"])
            end = max(e for _, e in methods["StartContainer"])
            out.append((end - start) / 1e6)
    return out


def run_arm(recording: bool, pods: int, handler: str, workdir: Path, index: int) -> list[float]:
    truth = workdir / f"truth-{'rec' if recording else 'base'}-{index}.jsonl"
    lab_run = [*STARTPROF, "lab", "run", "--pods", str(pods), "--runtime-handler", handler,
               "--truth", str(truth)]  # fmt: skip
    if recording:
        out = workdir / f"rec-{index}.arrows"
        cmd = [*STARTPROF, "record", "-o", str(out), "--", *lab_run]
    else:
        cmd = lab_run
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return image_to_running_ms(read_truth(truth))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pods", type=int, default=30, help="pods per arm (default 30)")
    parser.add_argument("--round-size", type=int, default=5, help="pods per round (default 5)")
    parser.add_argument("--handler", default="runc-bridge")
    parser.add_argument("--json", type=Path, help="write the figures here too")
    args = parser.parse_args()

    subprocess.run([*STARTPROF, "lab", "up"], check=True, stdout=subprocess.DEVNULL)
    base: list[float] = []
    rec: list[float] = []
    rounds = max(1, args.pods // args.round_size)
    with tempfile.TemporaryDirectory(prefix="startprof-overhead-") as tmp:
        workdir = Path(tmp)
        run_arm(False, 2, args.handler, workdir, -1)  # warm-up: images, page cache
        for i in range(rounds):
            for recording in (i % 2 == 0, i % 2 == 1):
                target = rec if recording else base
                target += run_arm(recording, args.round_size, args.handler, workdir, i)
            print(f"round {i + 1}/{rounds}: base n={len(base)} rec n={len(rec)}", file=sys.stderr)
    med_base, med_rec = statistics.median(base), statistics.median(rec)
    result = {
        "handler": args.handler,
        "pods_per_arm": [len(base), len(rec)],
        "median_ms_without": round(med_base, 2),
        "median_ms_with": round(med_rec, 2),
        "overhead_pct": round(100 * (med_rec - med_base) / med_base, 2),
        "p95_ms_without": round(statistics.quantiles(base, n=20)[-1], 2),
        "p95_ms_with": round(statistics.quantiles(rec, n=20)[-1], 2),
    }
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
