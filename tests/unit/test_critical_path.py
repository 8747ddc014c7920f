"""Critical path and bottleneck sentence on hand-built phase trees with known answers."""

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from startprof.analysis.critical_path import apply_critical_path, bottleneck, critical_segments
from startprof.analysis.model import Phase

MS = 1_000_000


def ph(pid: str, parent: str | None, name: str, start: float, end: float) -> Phase:
    return Phase(pid, parent, name, int(start * MS), int(end * MS))


def pod_tree() -> list[Phase]:
    return [
        ph("pod", None, "pod", 0, 100),
        ph("sb", "pod", "sandbox", 0, 60),
        ph("cni", "sb", "cni.add", 5, 40),
        ph("br", "cni", "cni.plugin bridge", 5, 40),
        *[ph(f"ipt{i}", "br", "exec iptables", 10 + 3 * i, 12 + 3 * i) for i in range(9)],
        ph("lo", "cni", "cni.plugin loopback", 5, 8),
        ph("rc", "sb", "runtime.create", 42, 55),
        ph("img", "pod", "image", 61, 62),
        ph("ctr", "pod", "container app", 62, 100),
        ph("cs", "ctr", "container.start", 65, 100),
    ]


def test_segments_tile_the_pod_latest_first() -> None:
    segments = critical_segments(pod_tree())
    assert segments[0][2] == 100 * MS
    assert segments[-1][1] == 0
    for (_, lo, _), (_, _, hi) in itertools.pairwise(segments):
        assert hi == lo  # contiguous, no overlap
    assert sum(hi - lo for _, lo, hi in segments) == 100 * MS


def test_self_times_sum_to_duration_and_flags() -> None:
    phases, steps = apply_critical_path(pod_tree())
    by = {p.id: p for p in phases}
    assert sum(s.self_ns for s in steps) == 100 * MS
    # loopback finished while bridge was still running: never on the path
    assert not by["lo"].on_critical_path
    assert by["br"].on_critical_path and by["cni"].on_critical_path
    assert by["cni"].self_ns == 0  # fully covered by the bridge
    assert by["ipt8"].self_ns == 2 * MS
    assert by["cs"].self_ns == 35 * MS
    assert by["ctr"].self_ns == 3 * MS
    assert by["pod"].self_ns == 1 * MS  # 60..61: between sandbox and image
    assert [s.name for s in steps][:3] == ["sandbox", "cni.plugin bridge", "exec iptables"]


def test_overlapping_children_follow_the_one_running_latest() -> None:
    phases = [
        ph("root", None, "pod", 0, 10),
        ph("a", "root", "a", 0, 8),
        ph("b", "root", "b", 5, 10),
    ]
    _, steps = apply_critical_path(phases)
    assert [(s.name, s.self_ns) for s in steps] == [("a", 5 * MS), ("b", 5 * MS)]


def test_children_outside_the_parent_are_clipped() -> None:
    phases = [ph("root", None, "pod", 0, 10), ph("a", "root", "a", -5, 20)]
    _, steps = apply_critical_path(phases)
    assert [(s.name, s.self_ns) for s in steps] == [("a", 10 * MS)]


def test_bottleneck_sentence() -> None:
    phases, _ = apply_critical_path(pod_tree())
    assert bottleneck(phases) == (
        "60% of 100 ms in sandbox: cni.plugin bridge 35 ms, of which 18 ms in 9 iptables execs"
    )


def test_bottleneck_of_a_leaf_pod() -> None:
    phases, _ = apply_critical_path([ph("root", None, "pod", 0, 4)])
    assert bottleneck(phases) == "100% of 4.0 ms in pod"


@st.composite
def trees(draw: st.DrawFn) -> list[Phase]:
    n = draw(st.integers(1, 25))
    phases = [Phase("0", None, "pod", 0, draw(st.integers(1, 10_000)))]
    for i in range(1, n):
        parent = phases[draw(st.integers(0, len(phases) - 1))]
        start = draw(st.integers(parent.start_ns - 50, parent.end_ns))
        end = draw(st.integers(start, parent.end_ns + 50))
        phases.append(Phase(str(i), parent.id, f"p{i % 4}", start, end))
    return phases


@settings(max_examples=300, deadline=None)
@given(trees())
def test_path_always_sums_to_the_pod(phases: list[Phase]) -> None:
    updated, steps = apply_critical_path(phases)
    assert sum(s.self_ns for s in steps) == phases[0].duration_ns
    assert sum(p.self_ns for p in updated) == phases[0].duration_ns
    assert all(p.self_ns >= 0 for p in updated)
    bottleneck(updated)


def _scanned(phases: list[Phase]) -> list[tuple[str, int, int]]:
    """The definition, step by step: at each instant t (from the end back) take the child that
    still runs latest before t, ties to the first started, then the first listed; scan every
    child at every step."""
    kids: dict[str | None, list[Phase]] = {}
    for p in phases:
        kids.setdefault(p.parent_id, []).append(p)
    out: list[tuple[str, int, int]] = []

    def walk(node: str, lo: int, hi: int) -> None:
        t = hi
        while t > lo:
            best, best_end = None, lo
            for k in kids.get(node, []):
                if k.start_ns < t and k.end_ns > lo:
                    end = min(k.end_ns, t)
                    if end > best_end or (best and end == best_end and k.start_ns < best.start_ns):
                        best, best_end = k, end
            if best is None:
                out.append((node, lo, t))
                return
            if best_end < t:
                out.append((node, best_end, t))
            walk(best.id, max(best.start_ns, lo), best_end)
            t = max(best.start_ns, lo)

    walk(phases[0].id, phases[0].start_ns, phases[0].end_ns)
    return out


@settings(max_examples=400, deadline=None)
@given(trees())
def test_segments_follow_the_definition(phases: list[Phase]) -> None:
    assert critical_segments(phases) == _scanned(phases)


def test_segments_break_ties_as_defined() -> None:
    # two children end at the parent's end, two end together before it; one starts at its end
    phases = [
        ph("pod", None, "pod", 0, 100),
        ph("a", "pod", "a", 50, 100),
        ph("b", "pod", "b", 40, 100),
        ph("c", "pod", "c", 10, 40),
        ph("d", "pod", "d", 20, 40),
        ph("e", "pod", "e", 40, 40),
        ph("f", "pod", "f", 10, 40),
    ]
    assert critical_segments(phases) == _scanned(phases)
    assert [s[0] for s in critical_segments(phases)] == ["b", "c", "pod"]
