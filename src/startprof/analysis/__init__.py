"""Pure analysis of recorded events: process tree, pod attribution, phases, critical path.

Imports neither bcc, click nor the file format: callers hand in :class:`Source` objects (events
as a DataFrame plus what the recording says about itself), so everything here is unit-tested
from stored recordings or small factories. ``startprof.pipeline`` joins files to this.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import pandas as pd

from startprof.analysis.cri_naming import name_calls
from startprof.analysis.losses import drop_windows, mark_lossy
from startprof.analysis.model import Analysis, Pod, RecordingInfo
from startprof.analysis.phases import build
from startprof.analysis.summary import summarize

TIME_COLUMNS = ("ts_ns", "start_ns", "end_ns")


@dataclass(frozen=True)
class Source:
    """One recording, as the analysis needs it."""

    name: str
    host: str
    kernel: str
    clock_offset_ns: int
    start_monotonic_ns: int
    end_monotonic_ns: int | None
    drops: int
    complete: bool
    events: pd.DataFrame


def to_wall_clock(events: pd.DataFrame, offset_ns: int) -> pd.DataFrame:
    """The events with every monotonic time column moved to wall-clock ns."""
    # a new frame that shares every other column with ``events`` (pandas copies on write):
    # a deep copy was all 1.8 GB of a 10,000-pod recording once more
    return events.assign(**{c: events[c] + offset_ns for c in TIME_COLUMNS if c in events})


def timed(events: pd.DataFrame) -> pd.DataFrame:
    """The events that carry a time. A row without ``ts_ns`` (a note written by an older
    recorder, or a damaged row) says nothing about when anything happened, and every step of
    the analysis orders events by time."""
    if "ts_ns" not in events:
        return events.iloc[0:0]
    keep = events["ts_ns"].notna()
    return events if bool(keep.all()) else events.loc[keep].reset_index(drop=True)


@contextmanager
def without_cycle_collection() -> Iterator[None]:
    """The analysis makes millions of small objects (a process, a phase, a dict of attributes
    each) and keeps most of them until it returns, so every full collection of the cycle
    collector walks all of them again: its cost grew with the square of the recording
    (1.3x per pod at 10,000 pods, and 40% of the CPU time at 1,000). Reference counting still
    frees what the analysis drops; cycles wait for the next collection after it. Writers of
    the analysis' documents use it too: the JSON of 10,000 pods is 610,000 dicts."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def analyze(sources: Sequence[Source]) -> Analysis:
    """Pods of every source, keyed by (host, sandbox id); later files win on duplicates."""
    with without_cycle_collection():
        return _analyze(sources)


def _analyze(sources: Sequence[Source]) -> Analysis:
    pods: dict[tuple[str, str], Pod] = {}
    starts, ends = [], []
    lossy: list[tuple[int, int]] = []
    foreign: dict[str, int] = {}
    for src in sources:
        # calls on connections older than the recording are named before anything reads them
        own, _ = name_calls(timed(src.events))
        events = to_wall_clock(own, src.clock_offset_ns)
        windows = [
            (lo + src.clock_offset_ns, hi + src.clock_offset_ns)
            for lo, hi in drop_windows(own, src.start_monotonic_ns)
        ]
        lossy += windows
        built = build(events, src.host, windows)
        for pod in mark_lossy(built.pods, windows):
            pods[pod.key] = pod
        for namespace, n in built.foreign_containers.items():
            foreign[namespace] = foreign.get(namespace, 0) + n
        starts.append(src.start_monotonic_ns + src.clock_offset_ns)
        last = src.end_monotonic_ns
        if last is None:
            last = int(own["ts_ns"].max()) if len(own) else src.start_monotonic_ns
        ends.append(last + src.clock_offset_ns)
    ordered = tuple(sorted(pods.values(), key=lambda p: (p.start_ns, p.host, p.sandbox_id)))
    info = RecordingInfo(
        files=tuple(s.name for s in sources),
        hosts=tuple(sorted({s.host for s in sources})),
        kernels=tuple(sorted({s.kernel for s in sources})),
        start_ns=min(starts, default=0),
        end_ns=max(ends, default=0),
        drops=sum(s.drops for s in sources),
        complete=all(s.complete for s in sources),
        drop_windows=tuple(sorted(lossy)),
        foreign_containers=foreign,
    )
    return Analysis(recording=info, pods=ordered, summary=summarize(ordered, info))
