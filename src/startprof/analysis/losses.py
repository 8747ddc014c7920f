"""When the recording lost events, and which pods that makes unreliable.

The kernel counts every ring buffer reserve that failed; the recorder reads the counters about
once a second and writes a ``drops`` event (cumulative total in ``ret``) whenever they grew,
with ``attrs.since_ns`` = when it read them before. A loss therefore happened inside
``(since_ns, ts_ns]``: a *drop window*. A pod whose span touches a drop window may miss any of
its events, so it is reported ``incomplete`` instead of ``ok`` with phases that might be wrong.
A pod that failed keeps ``failed``: a non-zero exit code or CRI error was seen, not inferred.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import pandas as pd

from startprof.analysis.frames import rows_where
from startprof.analysis.model import Pod
from startprof.events import attrs_of

LOST_EVENTS = "events were dropped while it started (ring buffer full)"


def drop_windows(events: pd.DataFrame, start_ns: int) -> list[tuple[int, int]]:
    """``(first_ns, last_ns)`` monotonic intervals in which events were lost.

    ``events`` are as recorded (monotonic ns, like ``attrs.since_ns``). ``start_ns`` is when
    the recording began: a window starts there, or at the previous ``drops`` event, when the
    event does not say when the counters were read before (older recordings).
    """
    if events.empty or "kind" not in events:
        return []
    wanted = (events["kind"] == "drops") & events["ret"].notna()
    drops = rows_where(events, wanted, ["ts_ns", "ret", "attrs"])  # not all 40 columns
    if drops.empty:
        return []
    drops = drops.sort_values("ts_ns", kind="stable")
    windows: list[tuple[int, int]] = []
    total, previous_ts = 0, start_ns
    for ts, ret, raw in zip(drops["ts_ns"], drops["ret"], drops["attrs"], strict=True):
        ts, ret = int(ts), int(ret)
        since = _since(raw)
        if ret > total:
            windows.append((since if since is not None else previous_ts, ts))
        total, previous_ts = max(total, ret), ts
    return _merged(windows)


def mark_lossy(pods: Sequence[Pod], windows: Sequence[tuple[int, int]]) -> list[Pod]:
    """The pods, with ``ok`` ones that overlap a drop window turned ``incomplete``."""
    if not windows:
        return list(pods)
    out = []
    for pod in pods:
        hit = next((w for w in windows if pod.start_ns <= w[1] and w[0] <= pod.end_ns), None)
        if hit is not None and pod.status == "ok":
            pod = replace(
                pod,
                status="incomplete",
                incomplete_reason=LOST_EVENTS,
            )
        out.append(pod)
    return out


def _since(raw: object) -> int | None:
    value = attrs_of(raw).get("since_ns")
    return int(value) if isinstance(value, int) else None


def _merged(windows: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for lo, hi in sorted(windows):
        if out and lo <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        else:
            out.append((lo, hi))
    return out
