#!/usr/bin/env python3
"""Re-record the aged-connection recordings in tests/data/recordings (root; issue 13).

Each client first ages its connection (pods started and removed, then polling), prints `aged`
and waits; `startprof record` then starts and its command sends the client SIGUSR1, so the
recording never sees the connection's beginning, as on a node. Beside each recording go the
client's CRI ground truth (`NAME.truth.jsonl`) and, with --traceparent, the trace context it
sent (`NAME.trace.jsonl`).

    sudo .venv/bin/python tests/tools/make_aged_recordings.py [--dir DIR] [NAME ...]

Needs the grpc-go kubelet client (scripts/setup-go-client.sh builds it).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
STARTPROF = [sys.executable, "-m", "startprof"]
AGING = ["--age-pods", "2", "--age-seconds", "10"]

SCENARIOS: dict[str, tuple[str, list[str]]] = {
    # client, its arguments after the aging ones
    "aged-py": ("lab", ["--pods", "4", "--concurrency", "2", "--poll"]),
    "aged-go": ("go", ["--pods", "5", "--concurrency", "5"]),
    "aged-go-traceparent": ("go", ["--pods", "3", "--concurrency", "3", "--traceparent"]),
}


def go_client() -> str:
    out = subprocess.run(
        [str(ROOT / "scripts" / "setup-go-client.sh")], check=True, capture_output=True, text=True
    )
    return out.stdout.strip().splitlines()[-1]


def record(name: str, out_dir: Path, lab_dir: str) -> None:
    kind, extra = SCENARIOS[name]
    truth = out_dir / f"{name}.truth.jsonl"
    arrows = out_dir / f"{name}.arrows"
    for stale in (truth, arrows, out_dir / f"{name}.trace.jsonl"):
        stale.unlink(missing_ok=True)
    if kind == "go":
        argv = [go_client(), "--lab-dir", lab_dir, *AGING, *extra, "--truth", str(truth)]
        if "--traceparent" in extra:
            argv += ["--trace-log", str(out_dir / f"{name}.trace.jsonl")]
    else:
        argv = [*STARTPROF, "lab", "run", "--dir", lab_dir, *AGING, *extra, "--truth", str(truth)]
    client = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    assert client.stdout is not None
    for line in client.stdout:
        if line.strip() == "aged":
            break
    else:
        raise SystemExit(f"{name}: the client exited {client.wait()} before it aged")
    # Reap the client as soon as it exits (tail --pid waits for a zombie forever) and keep
    # reading its output so it never blocks on a full pipe.
    reaper = threading.Thread(
        target=lambda: (client.stdout and client.stdout.read(), client.wait())
    )
    reaper.start()
    pid = client.pid
    command = f"kill -USR1 {pid}; exec tail --pid={pid} -f /dev/null"
    subprocess.run([*STARTPROF, "record", "-o", str(arrows), "--", "sh", "-c", command], check=True)
    reaper.join()
    if client.returncode != 0:
        raise SystemExit(f"{name}: the client failed ({client.returncode})")
    os.chmod(arrows, 0o644)
    print(f"{name}: {arrows.stat().st_size} bytes")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=ROOT / "tests" / "data" / "recordings")
    parser.add_argument("--lab-dir", default="/var/lib/startprof/lab")
    parser.add_argument("names", nargs="*", help=f"scenarios (default all): {', '.join(SCENARIOS)}")
    args = parser.parse_args()
    unknown = set(args.names) - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenario(s): {', '.join(sorted(unknown))}")
    args.dir.mkdir(parents=True, exist_ok=True)
    subprocess.run([*STARTPROF, "lab", "up", "--dir", args.lab_dir], check=True)
    try:
        for name in args.names or list(SCENARIOS):
            record(name, args.dir, args.lab_dir)
            time.sleep(1)
    finally:
        subprocess.run([*STARTPROF, "lab", "down", "--dir", args.lab_dir], check=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
