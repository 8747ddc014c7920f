#!/usr/bin/env python3
"""Re-record the small real recordings in tests/data/recordings (root, lab up).

Each scenario is recorded the way a user would: `startprof record -- startprof lab run ...`,
with the lab's CRI ground truth written beside the recording. The analysis unit tests read them.

    sudo .venv/bin/python tests/tools/make_recordings.py [--dir tests/data/recordings] [NAME ...]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

STARTPROF = [sys.executable, "-m", "startprof"]

SCENARIOS: dict[str, list[str]] = {
    "runc-bridge": ["--pods", "2", "--runtime-handler", "runc-bridge"],
    "crun-bridge": ["--pods", "2", "--runtime-handler", "crun-bridge"],
    "crun-ptp": ["--pods", "2", "--runtime-handler", "crun-ptp"],
    "multi-container": ["--pods", "1", "--runtime-handler", "runc-bridge", "--containers", "2",
                        "--init-containers", "1"],
    "pull": ["--pods", "1", "--runtime-handler", "runc-bridge", "--pull"],
    "concurrent": ["--pods", "4", "--concurrency", "2", "--runtime-handler", "crun-bridge"],
}  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=Path("tests/data/recordings"))
    parser.add_argument("names", nargs="*", help=f"scenarios (default all): {', '.join(SCENARIOS)}")
    args = parser.parse_args()
    unknown = set(args.names) - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenario(s): {', '.join(sorted(unknown))}")
    args.names = args.names or list(SCENARIOS)
    args.dir.mkdir(parents=True, exist_ok=True)
    subprocess.run([*STARTPROF, "lab", "up"], check=True)
    for name in args.names:
        out = args.dir / f"{name}.arrows"
        truth = args.dir / f"{name}.truth.jsonl"
        truth.unlink(missing_ok=True)
        run = [*STARTPROF, "lab", "run", "--truth", str(truth), *SCENARIOS[name]]
        subprocess.run([*STARTPROF, "record", "-o", str(out), "--", *run], check=True)
        out.chmod(0o644)  # test data, not a node's secrets: readable by the tests' user
        print(f"{name}: {out} ({out.stat().st_size / 1e3:.0f} kB)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
