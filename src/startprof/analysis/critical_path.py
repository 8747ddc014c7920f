"""The critical path of a pod start, and the bottleneck in words.

Definition (docs/architecture.md; the one Jaeger's trace view uses, applied at kernel
granularity): start at the end of a span and walk backwards; at each instant follow the child
that is still running latest, recurse into it, and charge time covered by no child to the span
itself. Every instant of the pod is charged to exactly one span, so the self-times on the path
sum to the pod's duration."""

from __future__ import annotations

from bisect import bisect_left
from collections import defaultdict
from collections.abc import Mapping, Sequence
from operator import itemgetter

from startprof.analysis.model import CriticalStep, Phase, mark_on_path

_start = itemgetter(0)


def _children(phases: Sequence[Phase]) -> dict[str | None, list[Phase]]:
    out: dict[str | None, list[Phase]] = defaultdict(list)
    for p in phases:
        out[p.parent_id].append(p)
    return out


def critical_segments(phases: Sequence[Phase]) -> list[tuple[str, int, int]]:
    """``(phase id, start, end)`` pieces of the critical path, latest first, tiling the root."""
    # each parent's children as (start, end, id) once: the walk scans them at every step
    children: dict[str | None, list[tuple[int, int, str]]] = defaultdict(list)
    for p in phases:
        children[p.parent_id].append((p.start_ns, p.end_ns, p.id))
    roots = children.get(None, [])
    if not roots:
        return []
    segments: list[tuple[str, int, int]] = []
    start, end, root = roots[0]
    _walk(children, segments, root, start, end)
    return segments


def _walk(
    children: Mapping[str | None, list[tuple[int, int, str]]],
    segments: list[tuple[str, int, int]],
    node: str,
    lo: int,
    hi: int,
) -> None:
    """:func:`critical_segments` of ``node`` over ``[lo, hi)``, appended to ``segments``. A
    module function, not a closure: a recursive closure is a reference cycle, and every pod's
    children and segments then waited for the cycle collector (0.7 s at 10,000 pods)."""
    t = hi
    # the children by start, and for each prefix the one that ends last (ties: the first):
    # each step looks up its candidate instead of scanning every child (a bridge plugin
    # has some 25 netlink and exec children, walked one by one)
    kids = sorted(children.get(node, ()), key=_start)
    starts = [kid[0] for kid in kids]
    latest: list[tuple[int, int, str]] = []
    top: tuple[int, int, str] | None = None
    for kid in kids:
        if top is None or kid[1] > top[1]:
            top = kid
        latest.append(top)
    while t > lo:
        n = bisect_left(starts, t)  # the children that started before t
        best: tuple[int, int, str] | None = None
        best_end = lo
        if n:
            last = latest[n - 1]
            if last[1] >= t:
                # several may run at t: the one that started first covers more of the window
                best_end = t
                best = next(kid for kid in kids if kid[1] >= t)
            elif last[1] > lo:
                best, best_end = last, last[1]
        if best is None:
            segments.append((node, lo, t))
            return
        if best_end < t:
            segments.append((node, best_end, t))
        child_lo = max(best[0], lo)
        if best[2] in children:
            _walk(children, segments, best[2], child_lo, best_end)
        elif best_end > child_lo:  # a leaf holds its whole window (most phases are leaves)
            segments.append((best[2], child_lo, best_end))
        t = child_lo  # strictly smaller than before: best started before t


def apply_critical_path(
    phases: Sequence[Phase], *, in_place: bool = False
) -> tuple[tuple[Phase, ...], tuple[CriticalStep, ...]]:
    """Phases with ``on_critical_path``/``self_ns`` set, and the path's steps in time order.

    ``in_place``: the caller owns ``phases`` (the pod builder, before any pod holds them), so
    their fields are set on the objects themselves instead of on copies."""
    segments = critical_segments(phases)
    self_ns: dict[str, int] = defaultdict(int)
    first_seen: dict[str, int] = {}
    for phase_id, lo, hi in segments:
        self_ns[phase_id] += hi - lo
        first_seen[phase_id] = min(first_seen.get(phase_id, lo), lo)
    on_path = set(self_ns)
    by_id = {p.id: p for p in phases}
    # a span whose descendant holds the path is on it too, even with no self time
    for phase_id in list(on_path):
        parent = by_id[phase_id].parent_id
        while parent is not None and parent not in on_path:
            on_path.add(parent)
            parent = by_id[parent].parent_id
    updated = []
    for p in phases:
        # most phases are off the path and already say so: those stay as they are
        if p.id in on_path or p.on_critical_path or p.self_ns:
            if in_place:
                mark_on_path(p, p.id in on_path, self_ns.get(p.id, 0))
            else:
                p = p.on_path(p.id in on_path, self_ns.get(p.id, 0))
        updated.append(p)
    steps = tuple(
        CriticalStep(pid, by_id[pid].name, self_ns[pid])
        for pid in sorted(self_ns, key=lambda k: (first_seen[k], k))
        if self_ns[pid] > 0
    )
    return tuple(updated), steps


def subtree_path_ns(phases: Sequence[Phase]) -> dict[str, int]:
    """Critical time held by each phase's whole subtree (its own self time and its descendants').

    Phases come parents first, so one pass from the end sums children into parents.
    """
    total = {p.id: p.self_ns for p in phases}
    for p in reversed(phases):
        if p.parent_id is not None and p.parent_id in total:
            total[p.parent_id] += total[p.id]
    return total


def _subtree_ids(children: Mapping[str | None, Sequence[Phase]], root_id: str) -> list[str]:
    out, queue = [], [root_id]
    while queue:
        pid = queue.pop()
        out.append(pid)
        queue.extend(k.id for k in children.get(pid, []))
    return out


def _ms(ns: int) -> str:
    ms = ns / 1e6
    return f"{ms:.1f} ms" if ms < 10 else f"{ms:.0f} ms"


COUNTED: tuple[tuple[str, str], ...] = (
    ("mounts", "mounts"),
    ("cgroups_made", "cgroups"),
    ("files", "files"),
)
"""Phase attributes the bottleneck sentence repeats after a step's name: (attribute, noun)."""


def _counts(phase: Phase) -> str:
    """`` (14 mounts)`` for a step that counted what it did, else nothing."""
    found = [f"{phase.attributes[k]} {noun}" for k, noun in COUNTED if phase.attributes.get(k)]
    return f" ({', '.join(found)})" if found else ""


def bottleneck(phases: Sequence[Phase]) -> str:
    """A sentence such as ``61% of 112 ms in sandbox: cni.plugin bridge 19 ms, of which
    11 ms in 9 iptables execs``.

    Expects phases on which :func:`apply_critical_path` ran.
    """
    if not phases:
        return ""
    root = phases[0]
    total = root.duration_ns
    if total <= 0:
        return ""
    by_id = {p.id: p for p in phases}
    top_children = [p for p in phases if p.parent_id == root.id]
    if not top_children:
        return f"100% of {_ms(total)} in {root.name}"

    subtree = subtree_path_ns(phases)

    def path_ns(phase_id: str) -> int:
        return subtree[phase_id]

    top = max(top_children, key=lambda p: (path_ns(p.id), -p.start_ns))
    top_ns = path_ns(top.id)
    text = f"{100 * top_ns / total:.0f}% of {_ms(total)} in {top.name}{_counts(top)}"
    # descend while one child holds at least half of the current span's critical time
    children = _children(phases)
    focus = top
    while True:
        kids = [k for k in children.get(focus.id, []) if path_ns(k.id) > 0]
        if not kids:
            break
        best = max(kids, key=lambda k: (path_ns(k.id), -k.start_ns))
        if focus is not top and 2 * path_ns(best.id) < path_ns(focus.id):
            break
        focus = best
    if focus is top:
        return text
    text += f": {focus.name} {_ms(path_ns(focus.id))}{_counts(focus)}"
    groups: dict[str, list[Phase]] = defaultdict(list)
    for i in _subtree_ids(children, focus.id):
        if i != focus.id:
            groups[by_id[i].name].append(by_id[i])
    if groups:
        name, members = max(groups.items(), key=lambda kv: sum(path_ns(m.id) for m in kv[1]))
        group_ns = sum(path_ns(m.id) for m in members)
        if group_ns > 0:
            if len(members) == 1:
                text += f", of which {_ms(group_ns)} in {name}{_counts(members[0])}"
            else:
                kind, _, subject = name.partition(" ")
                label = f"{subject} {kind}s" if subject else f"{kind}s"
                text += f", of which {_ms(group_ns)} in {len(members)} {label}"
    return text
