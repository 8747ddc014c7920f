"""Pure analysis of recorded events: process tree, pod attribution, phases, critical path.

Imports neither bcc, click nor the file format: callers hand in :class:`Source` objects (events
as a DataFrame plus what the recording says about itself), so everything here is unit-tested
from stored recordings or small factories. ``startprof.pipeline`` joins files to this.
"""

from __future__ import annotations

import gc
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import Any

import pandas as pd

from startprof.analysis.cri_naming import name_calls
from startprof.analysis.losses import drop_windows, mark_lossy
from startprof.analysis.model import Analysis, Pod, RecordingInfo, pack_pods, unpack_pods
from startprof.analysis.phases import Prepared, build_prepared, prepare
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


SOURCE_NOTE = "startprof_source"
"""The attribute ``analyze`` sets on an exception raised while it analysed one source: that
source's name (``failed_source``)."""


def note_source(exc: BaseException, name: str) -> None:
    """Mark ``exc`` as raised while source ``name`` was read or analysed (``failed_source``)."""
    with suppress(AttributeError):  # an exception type that takes no attributes stays unnamed
        setattr(exc, SOURCE_NOTE, name)


def failed_source(exc: BaseException) -> str | None:
    """The name of the source whose analysis raised ``exc``; None when it came from merging."""
    name = getattr(exc, SOURCE_NOTE, None)
    return name if isinstance(name, str) else None


def analyze(sources: Iterable[Source]) -> Analysis:
    """Pods of every source, keyed by (host, sandbox id); later files win on duplicates.

    Sources are analysed one at a time, and the analysis lets go of each one's events before
    it builds that source's pods: given an iterator that yields each source as it is read,
    only one recording's events are in memory at a time (at 10,000 pods in one file, 1.5 GB
    released before the pod builder runs). An exception raised while one source is analysed
    names it (``failed_source``)."""
    with without_cycle_collection():
        return merge(parts(sources))


@dataclass(frozen=True)
class _Seen:
    """What the merge needs of one source once its pods are built."""

    name: str
    host: str
    kernel: str
    start_ns: int
    end_ns: int
    drops: int
    complete: bool


@dataclass(frozen=True)
class Part:
    """The analysis of one source, before the merge (``parts``, ``merge``): plain data that
    pickles, so a source can be analysed in another process."""

    pods: list[Pod]
    """Marked lossy where they touch one of ``windows``."""
    windows: list[tuple[int, int]]
    foreign_containers: dict[str, int]
    seen: _Seen

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        """Pickled with its pods as columns (``model.pack_pods``): half the time to hand back."""
        return _part, (pack_pods(self.pods), self.windows, self.foreign_containers, self.seen)


def _part(
    packed: tuple[Any, ...],
    windows: list[tuple[int, int]],
    foreign_containers: dict[str, int],
    seen: _Seen,
) -> Part:
    """A ``Part`` unpickled (``Part.__reduce__``)."""
    return Part(unpack_pods(packed), windows, foreign_containers, seen)


def parts(sources: Iterable[Source]) -> Iterator[Part]:
    """Each source's ``Part``, one source at a time; its events are let go of before its pods
    are built. An exception names the source it was raised for (``failed_source``)."""
    for src in sources:
        name = src.name
        try:
            prepared, windows, about = _prepare(src)
            # the loop's own reference: with it gone (and the caller's, when it passed an
            # iterator), the source's events are freed before its pods are built
            del src
            built = build_prepared(prepared, about.host, windows)
        except Exception as exc:
            note_source(exc, name)
            raise
        del prepared
        yield Part(mark_lossy(built.pods, windows), windows, built.foreign_containers, about)


def merge(parts: Iterable[Part]) -> Analysis:
    """One analysis of the sources' parts, in their order: pods keyed by (host, sandbox id),
    a later part's winning on duplicates."""
    pods: dict[tuple[str, str], Pod] = {}
    seen: list[_Seen] = []
    lossy: list[tuple[int, int]] = []
    foreign: dict[str, int] = {}
    for part in parts:
        lossy += part.windows
        for pod in part.pods:
            pods[pod.key] = pod
        for namespace, n in part.foreign_containers.items():
            foreign[namespace] = foreign.get(namespace, 0) + n
        seen.append(part.seen)
    ordered = tuple(sorted(pods.values(), key=lambda p: (p.start_ns, p.host, p.sandbox_id)))
    info = RecordingInfo(
        files=tuple(s.name for s in seen),
        hosts=tuple(sorted({s.host for s in seen})),
        kernels=tuple(sorted({s.kernel for s in seen})),
        start_ns=min((s.start_ns for s in seen), default=0),
        end_ns=max((s.end_ns for s in seen), default=0),
        drops=sum(s.drops for s in seen),
        complete=all(s.complete for s in seen),
        drop_windows=tuple(sorted(lossy)),
        foreign_containers=foreign,
    )
    return Analysis(recording=info, pods=ordered, summary=summarize(ordered, info))


def _prepare(src: Source) -> tuple[Prepared, list[tuple[int, int]], _Seen]:
    """One source prepared for its pods (Python objects only, no frame), its drop windows
    (wall clock) and what the merge needs of it."""
    offset = src.clock_offset_ns
    # calls on connections older than the recording are named before anything reads them
    own = name_calls(timed(src.events))[0]
    windows = [(lo + offset, hi + offset) for lo, hi in drop_windows(own, src.start_monotonic_ns)]
    last = src.end_monotonic_ns
    if last is None:
        last = int(own["ts_ns"].max()) if len(own) else src.start_monotonic_ns
    seen = _Seen(
        name=src.name,
        host=src.host,
        kernel=src.kernel,
        start_ns=src.start_monotonic_ns + offset,
        end_ns=last + offset,
        drops=src.drops,
        complete=src.complete,
    )
    return prepare(to_wall_clock(own, offset)), windows, seen
