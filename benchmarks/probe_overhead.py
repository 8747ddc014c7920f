#!/usr/bin/env python3
"""What the probes cost a pod start: median ImageStatus→running with and without recording.

Runs on the lab (brought up if needed). Rounds alternate which arm goes first, so drift (page
cache, host-local's IP round-robin, thermal) hits both arms alike. Both arms start pods through
the same `startprof lab run` subprocess; the recording arm wraps it in `startprof record -- ...`,
which starts the command only once the probes are attached.

    sudo .venv/bin/python benchmarks/probe_overhead.py --pods 30 --handler runc-bridge

Each recorded arm's overhead comes with a 95% bootstrap confidence interval (the arms' pods are
resampled independently): an interval that contains 0 means no overhead was resolved.

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

from startprof.bench.stats import overhead
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


def run_arm(
    record_args: list[str] | None, pods: int, handler: str, workdir: Path, tag: str
) -> list[float]:
    """One round of ``pods`` pods; recorded with ``record_args`` unless it is None."""
    truth = workdir / f"truth-{tag}.jsonl"
    lab_run = [
        *STARTPROF,
        "lab",
        "run",
        "--pods",
        str(pods),
        "--runtime-handler",
        handler,
        "--truth",
        str(truth),
    ]
    if record_args is None:
        cmd = lab_run
    else:
        cmd = [
            *STARTPROF,
            "record",
            "-o",
            str(workdir / f"{tag}.arrows"),
            *record_args,
            "--",
            *lab_run,
        ]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return image_to_running_ms(read_truth(truth))


def _stats(values: list[float]) -> dict[str, float]:
    return {
        "n": len(values),
        "median_ms": round(statistics.median(values), 2),
        "p95_ms": round(statistics.quantiles(values, n=20)[-1], 2),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pods", type=int, default=30, help="pods per arm (default 30)")
    parser.add_argument("--round-size", type=int, default=5, help="pods per round (default 5)")
    parser.add_argument("--handler", default="runc-bridge")
    parser.add_argument("--json", type=Path, help="write the figures here too")
    parser.add_argument(
        "--arm",
        action="append",
        default=[],
        metavar="NAME=ARGS",
        help="another recorded arm: a name and `startprof record` arguments, e.g. "
        "'no-cri=--probe exec --probe namespaces --probe netlink' (repeatable; "
        "'all=' records with every probe, the default)",
    )
    args = parser.parse_args()
    arms: dict[str, list[str] | None] = {"without": None}
    for spec in args.arm or ["all="]:
        name, _, rest = spec.partition("=")
        arms[name] = rest.split()

    subprocess.run([*STARTPROF, "lab", "up"], check=True, stdout=subprocess.DEVNULL)
    samples: dict[str, list[float]] = {name: [] for name in arms}
    rounds = max(1, args.pods // args.round_size)
    names = list(arms)
    with tempfile.TemporaryDirectory(prefix="startprof-overhead-") as tmp:
        workdir = Path(tmp)
        run_arm(None, 2, args.handler, workdir, "warmup")  # images, page cache
        for i in range(rounds):
            # rotate the order every round so drift and warm caches hit every arm alike
            for name in names[i % len(names) :] + names[: i % len(names)]:
                samples[name] += run_arm(
                    arms[name], args.round_size, args.handler, workdir, f"{name}-{i}"
                )
            counts = " ".join(f"{n}={len(v)}" for n, v in samples.items())
            print(f"round {i + 1}/{rounds}: {counts}", file=sys.stderr)
    result: dict[str, object] = {"handler": args.handler, "arms": {}}
    for name, values in samples.items():
        entry: dict[str, object] = {**_stats(values), "record_args": arms[name]}
        if name != "without":
            entry.update(overhead(samples["without"], values))
        result["arms"][name] = entry  # type: ignore[index]
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
