#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""The record/analyze truth check from the command line (scripts/check-debian13.sh uses it).

usage: truth_check.py RECORDING ANALYSIS_JSON TRUTH_JSONL [--pods N]
Exits 0 when every pod was found and complete and `sandbox`/`container.start` agree with the
lab's CRI ground truth within max(1 ms, 2%) (startprof.lab.agreement), 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from startprof.lab.agreement import check
from startprof.lab.truth import read_truth
from startprof.recording import read_recording


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recording", type=Path)
    parser.add_argument("analysis", type=Path)
    parser.add_argument("truth", type=Path)
    parser.add_argument("--pods", type=int, default=None, help="pods the run must have started")
    args = parser.parse_args()
    doc = json.loads(args.analysis.read_text())
    offset = read_recording(args.recording).header.clock_offset_ns
    result = check(doc, read_truth(args.truth), offset)
    print(f"truth check: {result.summary()}")
    if args.pods is not None and result.expected_pods != args.pods:
        print(f"truth check: the run started {result.expected_pods} pods, not {args.pods}")
        return 1
    return 0 if result.passed() else 1


if __name__ == "__main__":
    sys.exit(main())
