"""Replays a stored recording through the agent's incremental core, as the live agent feeds it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from startprof.analysis.model import Analysis
from startprof.incremental import Emitted, IncrementalAnalyzer
from startprof.pipeline import analyze_files, source_of
from startprof.recording import read_recording

RECORDINGS = Path(__file__).resolve().parents[1] / "data" / "recordings"


@dataclass
class Replay:
    core: IncrementalAnalyzer
    emitted: list[Emitted]
    whole: Analysis
    max_window: int
    total_events: int
    sent_at: dict[str, int]
    """sandbox id -> monotonic ns of the step that sent it."""
    offset_ns: int


def replay(
    name: str,
    step_s: float = 0.25,
    cut_s: float | None = None,
    at_due: bool = False,
    **core_options: Any,
) -> Replay:
    """Feed the events in the order they were recorded, one step's worth at a time (the time is
    the newest ``ts_ns`` seen, as the agent's clock runs ahead of every event it holds), then
    step once more a second later and flush, as a SIGTERM would. ``cut_s``: feed only the
    first seconds, as if nothing more ever happened. ``at_due``: also step when the core says a
    pending pod settles (``next_due_ns``), as the live agent does."""
    path = RECORDINGS / f"{name}.arrows"
    src = source_of(read_recording(path))
    events = src.events[src.events["kind"] != "end"].reset_index(drop=True)
    core = IncrementalAnalyzer(
        host=src.host,
        kernel=src.kernel,
        clock_offset_ns=src.clock_offset_ns,
        start_monotonic_ns=src.start_monotonic_ns,
        **core_options,
    )
    clock = events["ts_ns"].cummax()
    if cut_s is not None:
        keep = clock < int(clock.iloc[0]) + int(cut_s * 1e9)
        events, clock = events[keep], clock[keep]
    step = int(step_s * 1e9)
    start, last = int(clock.iloc[0]), int(clock.iloc[-1])
    emitted: list[Emitted] = []
    sent_at: dict[str, int] = {}
    max_window = 0
    now = start
    fed = now - step
    while now <= last + step:
        core.add(events[(clock >= fed) & (clock < now)])
        fed = now
        for e in core.step(now):
            emitted.append(e)
            sent_at.setdefault(e.pod.sandbox_id, now)
        max_window = max(max_window, core.stats.events)
        due = core.next_due_ns() if at_due else None
        now = due if due is not None and now < due < now + step else now + step
    for e in core.step(now + int(1e9)) + core.flush(now + int(1e9)):
        emitted.append(e)
        sent_at.setdefault(e.pod.sandbox_id, now + int(1e9))
    return Replay(
        core, emitted, analyze_files([path]), max_window, len(events), sent_at, src.clock_offset_ns
    )
