#!/usr/bin/env python3
"""How `startprof analyze --json` scales: replicate real pods with fresh ids and time it.

Takes a real recording (default: tests/data/recordings/concurrent.arrows), copies its events N
times with every pid, connection, sandbox and container id made unique and the times shifted,
writes that as one recording, and times `startprof analyze --json` on it in a subprocess
(reading the file included), then each step of it alone in another (import, read, analysis,
JSON). ``--keep DIR`` keeps the recordings and reuses them on the next run (and ``--source``
is then ignored for files already there). ``--nodes N`` spreads each pod count over N files
with a host each, as a rollout over N nodes records them (the command analyses one file per
CPU at once); the steps are then not timed.

    .venv/bin/python benchmarks/analyze_scale.py --pods 1000 10000
    .venv/bin/python benchmarks/analyze_scale.py --pods 10000 --keep /tmp/scale --repeat 5
    .venv/bin/python benchmarks/analyze_scale.py --pods 10000 --nodes 10 100 --keep /tmp/scale
    .venv/bin/python benchmarks/analyze_scale.py --pods 10000 --keep /tmp/scale \
        --memory-cost --warm-gb 3.5

Each run reports its wall time, its CPU time (user, system) and its peak memory. This VM
hands memory that lies free for a few seconds back to its host, and fresh memory then costs
some 2.2 s per GB to touch (``--memory-cost`` measures it); ``--warm-gb`` fills that much in
another process right before each run, as a machine without free page reporting has it.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import itertools
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import pyarrow as pa

from startprof.recording import EVENT_SCHEMA, RecordingWriter, read_recording

ROOT = Path(__file__).resolve().parent.parent
DEFAULT = ROOT / "tests" / "data" / "recordings" / "concurrent.arrows"
ID = re.compile(r"[0-9a-f]{64}")
PID_COLUMNS = ("pid", "tid", "ppid", "child_pid")
STRING_COLUMNS = ("sandbox_id", "container_id", "filename", "attrs", "pod", "uid")
LIST_COLUMNS = ("argv", "env")


def replicate(events: pd.DataFrame, copies: int, period_ns: int) -> pa.Table:
    """``copies`` copies of the events, each with fresh ids, pids and a later time."""
    tables = []
    base = events.copy()
    for copy in range(copies):
        df = base.copy()
        tag = f"{copy:08x}"
        shift = copy * period_ns
        for column in ("ts_ns", "start_ns", "end_ns"):
            df[column] = df[column] + shift
        for column in PID_COLUMNS:
            df[column] = df[column] + copy * 40_000  # int32 holds 50k copies of pid_max 32768
        df["conn_id"] = df["conn_id"] + copy * 1_000

        # every 64-hex id gets the copy's tag in its first 8 characters: unique and same length
        def retag(m: re.Match[str], tag: str = tag) -> str:
            return tag + m.group(0)[8:]

        for column in STRING_COLUMNS:
            df[column] = df[column].str.replace(ID, retag, regex=True)
            if column in ("pod", "uid"):
                df[column] = df[column] + f"-{tag}"
        for column in LIST_COLUMNS:
            df[column] = [
                None if v is None else [ID.sub(retag, s) for s in v]
                for v in df[column].astype(object).where(df[column].notna(), None)
            ]
        tables.append(pa.Table.from_pandas(df, schema=EVENT_SCHEMA, preserve_index=False))
    return pa.concat_tables(tables)


def build(source: Path, pods: int, out: Path, host: str | None = None) -> int:
    """A recording of ``pods`` copies of the source's pods at ``out``, from ``host`` (default:
    the source's); the number of pods it holds."""
    rec = read_recording(source)
    events = rec.frame()
    events = events[~events["kind"].isin(["end", "drops"])].reset_index(drop=True)
    base_pods = _pods_in(source)
    copies = max(1, pods // base_pods)
    span = int(events["ts_ns"].max() - events["ts_ns"].min())
    table = replicate(events, copies, span + 10_000_000)
    header = rec.header if host is None else dataclasses.replace(rec.header, host=host)
    writer = RecordingWriter(out, header, flush_interval=3600)
    for batch in table.to_batches(max_chunksize=50_000):
        writer.write_batch(batch)
    writer.close({"drops": 0, "end_monotonic_ns": int(table.column("ts_ns").to_numpy().max())})
    return copies * base_pods


@functools.cache
def _pods_in(source: Path) -> int:
    return len(json.loads(_analyze_json(source))["pods"])


STEPS = """
import json, os, sys, time
t0 = time.perf_counter()
from startprof.pipeline import read_source
from startprof.analysis import analyze
from startprof.reporters import json as json_reporter
t1 = time.perf_counter()
sources = [read_source(sys.argv[1])]
t2 = time.perf_counter()
# handed over as the command does (an iterator): the events are freed before the pod builder
analysis = analyze(sources.pop() for _ in range(1))
t3 = time.perf_counter()
with open(os.devnull, "wb") as sink:
    json_reporter.write(sink, analysis)
t4 = time.perf_counter()
print(json.dumps({"import": t1 - t0, "read": t2 - t1, "analysis": t3 - t2, "json": t4 - t3}))
"""


def _steps(path: Path) -> dict[str, float]:
    """Seconds of each step of the command, timed inside one process."""
    proc = subprocess.run(
        [sys.executable, "-c", STEPS, str(path)], capture_output=True, text=True, check=True
    )
    return {k: round(v, 2) for k, v in json.loads(proc.stdout).items()}


def _analyze_json(path: Path) -> str:
    return _timed_analyze_json([path]).text


@dataclasses.dataclass(frozen=True)
class Run:
    """One timed ``startprof analyze --json``: wall and CPU seconds, peak memory, its output."""

    seconds: float
    user: float
    system: float
    peak_mb: float
    text: str


def _timed_analyze_json(paths: list[Path]) -> Run:
    """``startprof analyze --json`` with its stdout to a file, timed, and that output. Only
    the command is timed: reading 320 MB back through a pipe as text and parsing it in this
    process (10 s at 10,000 pods, on the same 2 cores) is not the command's time."""
    with tempfile.TemporaryFile() as out:
        t0 = time.perf_counter()
        child = subprocess.Popen(
            [sys.executable, "-m", "startprof", "analyze", "--json", *map(str, paths)],
            stdout=out,
        )
        _, status, usage = os.wait4(child.pid, 0)
        seconds = time.perf_counter() - t0
        child.returncode = os.waitstatus_to_exitcode(status)
        if child.returncode:
            raise subprocess.CalledProcessError(child.returncode, child.args)
        out.seek(0)
        return Run(
            seconds, usage.ru_utime, usage.ru_stime, usage.ru_maxrss / 1024, out.read().decode()
        )


TOUCH = """
import sys, time, numpy
t = time.perf_counter()
filled = numpy.ones(int(float(sys.argv[1]) * 2**27))
print(time.perf_counter() - t)
"""


def touch_memory(gb: float) -> float:
    """Seconds a new process takes to fill ``gb`` GB of fresh memory. On this project's VM
    (Firecracker, free page reporting) memory that has lain free for a few seconds is handed
    back to the host, and touching it again costs some 2.2 s per GB; right after another
    process let it go, 0.2 s (docs/analyze.md). Run right before a command, it leaves that
    much memory warm for it, as a machine without page reporting has it."""
    proc = subprocess.run(
        [sys.executable, "-c", TOUCH, str(gb)], capture_output=True, text=True, check=True
    )
    return float(proc.stdout)


def _recordings(args: argparse.Namespace, folder: Path, pods: int, nodes: int) -> list[Path]:
    """The files of ``pods`` pods over ``nodes`` nodes, made unless kept from a run before."""
    if nodes == 1:
        paths = [folder / f"{pods}.arrows"]
    else:
        paths = [folder / f"{pods}-over-{nodes}" / f"node-{i:03d}.arrows" for i in range(nodes)]
    for i, path in enumerate(paths):
        if not (args.keep and path.exists()):
            path.parent.mkdir(parents=True, exist_ok=True)
            build(args.source, pods // nodes, path, None if nodes == 1 else f"node-{i:03d}")
    return paths


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pods", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument(
        "--nodes", type=int, nargs="+", default=[1], help="spread the pods over N files"
    )
    parser.add_argument("--source", type=Path, default=DEFAULT)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--keep", type=Path, help="keep the recordings here, and reuse them")
    parser.add_argument(
        "--warm-gb",
        type=float,
        default=0.0,
        help="fill this much memory in another process right before each run (touch_memory)",
    )
    parser.add_argument(
        "--memory-cost",
        action="store_true",
        help="first measure the seconds per GB of fresh memory, after a pause and right after",
    )
    args = parser.parse_args()
    results: list[dict[str, object]] = []
    if args.memory_cost:
        time.sleep(10)
        cold = touch_memory(1)
        warm = touch_memory(1)
        results.append(
            {
                "fresh_memory_s_per_gb": {
                    "after 10 s idle": round(cold, 2),
                    "right after": round(warm, 2),
                }
            }
        )
        print(json.dumps(results[-1]), file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="startprof-scale-") as tmp:
        folder = args.keep or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        for pods, nodes in itertools.product(args.pods, args.nodes):
            paths = _recordings(args, folder, pods, nodes)
            runs = []
            for _ in range(args.repeat):
                if args.warm_gb:
                    touch_memory(args.warm_gb)
                runs.append(_timed_analyze_json(paths))
            made = len(json.loads(runs[-1].text)["pods"])
            best = min(runs, key=lambda r: r.seconds)
            result = {
                "pods": made,
                "nodes": nodes,
                "events": sum(read_recording(p).table.num_rows for p in paths),
                "file_mb": round(sum(p.stat().st_size for p in paths) / 1e6, 1),
                "warm_gb": args.warm_gb,
                "seconds_best": round(best.seconds, 2),
                "seconds_all": [round(r.seconds, 2) for r in runs],
                "cpu_user_system_all": [[round(r.user, 2), round(r.system, 2)] for r in runs],
                "peak_mb_best": round(best.peak_mb),
                "ms_per_pod": round(1000 * best.seconds / made, 3),
            }
            del runs, best
            if nodes == 1:  # the steps of one process reading one file
                steps = [_steps(paths[0]) for _ in range(args.repeat)]
                analysis = [s["analysis"] for s in steps]
                result["steps_best"] = min(steps, key=lambda s: s["analysis"])
                result["analysis_all"] = analysis
                result["analysis_ms_per_pod"] = round(1000 * min(analysis) / made, 3)
            results.append(result)
            print(json.dumps(results[-1]), file=sys.stderr)
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
