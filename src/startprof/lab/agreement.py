"""The record/analyze truth check: how close ``startprof analyze`` timed each pod's ``sandbox``
and ``container.start`` to the lab client's own RunPodSandbox and StartContainer calls.

Used by the integration tests on every containerd version and by scripts/check-debian13.sh.
Works on the ``analyze --json`` document (as a user gets it) and the lab's truth lines.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from startprof.lab import cri as m

SLACK_NS = 50_000
"""containerd sees a call inside the client's window; the two clocks are read a little apart."""


@dataclass(frozen=True)
class Edge:
    """One phase edge against its truth call: how far inside the client's window (ns)."""

    pod: str
    phase: str  # sandbox, container.start
    which: str  # start, end
    inside_ns: int  # >= 0 when the phase's edge lies inside the call's window
    call_ns: int  # the call's duration as the client measured it

    @property
    def tolerance_ns(self) -> int:
        """max(1 ms, 2% of the call)."""
        return max(1_000_000, self.call_ns // 50)

    @property
    def within(self) -> bool:
        return -SLACK_NS <= self.inside_ns <= self.tolerance_ns


@dataclass(frozen=True)
class Agreement:
    expected_pods: int
    found_pods: int
    ok_pods: int
    missing: tuple[str, ...]
    edges: tuple[Edge, ...] = field(default=())

    def within_share(self, phase: str | None = None) -> float:
        mine = [e for e in self.edges if phase is None or e.phase == phase]
        return sum(e.within for e in mine) / len(mine) if mine else 0.0

    def late(self, phase: str) -> int:
        """Edges of ``phase`` outside max(1 ms, 2%)."""
        return sum(not e.within for e in self.edges if e.phase == phase)

    def passed(self, outlier_share: float = 0.25) -> bool:
        """Every pod found and complete; every edge inside the client's window; all but
        ``outlier_share`` (rounded up) of each phase's edges within max(1 ms, 2%). The Python
        lab client hears replies a few ms late on 2 busy cores, and since a reply's time is
        when its bytes reached the client's socket (docs/probes/cri.md) that lateness shows
        in full: 2 of 6 container.start edges at 1.4-4.1 ms in a clean-clone CI run, as the
        concurrent and aged recordings' three-in-four rule allows."""
        allowed = {
            p: math.ceil(outlier_share * sum(e.phase == p for e in self.edges))
            for p in ("sandbox", "container.start")
        }
        return (
            not self.missing
            and self.ok_pods == self.expected_pods
            and all(any(e.phase == p for e in self.edges) for p in allowed)
            and all(e.inside_ns >= -SLACK_NS for e in self.edges)
            and all(self.late(p) <= n for p, n in allowed.items())
        )

    def summary(self) -> str:
        parts = [f"{self.found_pods}/{self.expected_pods} pods found, {self.ok_pods} ok"]
        for phase in ("sandbox", "container.start"):
            mine = sorted(e.inside_ns for e in self.edges if e.phase == phase)
            if mine:
                parts.append(
                    f"{phase}: {sum(e.within for e in self.edges if e.phase == phase)}/"
                    f"{len(mine)} edges within max(1 ms, 2%), median "
                    f"{mine[len(mine) // 2] / 1e6:.2f} ms, max {mine[-1] / 1e6:.2f} ms"
                )
        if self.missing:
            parts.append(f"missing: {', '.join(self.missing)}")
        return "; ".join(parts)


def check(
    doc: Mapping[str, Any], truth: Sequence[Mapping[str, Any]], clock_offset_ns: int
) -> Agreement:
    """Compare an ``analyze --json`` document with the truth of the pods the lab started."""
    pods = {p["sandbox_id"]: p for p in doc.get("pods", ())}
    expected = {
        t["sandbox_id"]: t
        for t in truth
        if t["method"] == m.RUN_POD_SANDBOX and t["status"] == "ok"
    }
    missing = tuple(t["pod"] for sid, t in expected.items() if sid not in pods)
    edges: list[Edge] = []
    for sid, call in expected.items():
        pod = pods.get(sid)
        if pod is None:
            continue
        sandbox = next((p for p in pod["phases"] if p["name"] == "sandbox"), None)
        if sandbox is not None:
            edges += _edges(call["pod"], "sandbox", sandbox, call, clock_offset_ns)
        for start in truth:
            if start["sandbox_id"] != sid or start["method"] != m.START_CONTAINER:
                continue
            container = next(
                (
                    p
                    for p in pod["phases"]
                    if p["attributes"].get("container_id") == start["container_id"]
                ),
                None,
            )
            phase = next(
                (
                    p
                    for p in pod["phases"]
                    if container is not None
                    and p["parent_id"] == container["id"]
                    and p["name"] == "container.start"
                ),
                None,
            )
            if phase is None:
                missing += (f"{call['pod']}/{start['container']} container.start",)
                continue
            edges += _edges(call["pod"], "container.start", phase, start, clock_offset_ns)
    return Agreement(
        expected_pods=len(expected),
        found_pods=sum(sid in pods for sid in expected),
        ok_pods=sum(pods[sid]["status"] == "ok" for sid in expected if sid in pods),
        missing=missing,
        edges=tuple(edges),
    )


def _edges(
    pod: str,
    name: str,
    phase: Mapping[str, Any],
    call: Mapping[str, Any],
    offset: int,
) -> list[Edge]:
    start = int(call["start_monotonic_ns"]) + offset
    end = int(call["end_monotonic_ns"]) + offset
    duration = end - start
    return [
        Edge(pod, name, "start", int(phase["start_wall_ns"]) - start, duration),
        Edge(pod, name, "end", end - int(phase["end_wall_ns"]), duration),
    ]
