"""The analysis leaves no reference cycles: it runs with the cycle collector off, so a cycle
made per pod (a recursive closure, say) would hold every pod's scratch until the collector's
next pass, and that pass walks every object of every pod (0.7 s at 10,000 pods)."""

from __future__ import annotations

import gc
from pathlib import Path

import pytest

from startprof import pipeline
from startprof.analysis import parts, without_cycle_collection

DATA = Path(__file__).resolve().parent.parent / "data" / "recordings"


@pytest.mark.parametrize("path", sorted(DATA.glob("*.arrows")), ids=lambda p: p.stem)
def test_analysing_a_recording_leaves_no_cyclic_garbage(path: Path) -> None:
    source = pipeline.read_source(path)
    gc.collect()
    with without_cycle_collection():
        part = next(parts([source]))
        unreachable = gc.collect()
    assert part.seen.name == str(path)
    assert unreachable == 0
