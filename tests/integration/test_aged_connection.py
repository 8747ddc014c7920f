"""Issue 13's acceptance: pod starts on a CRI connection older than the recording.

20 pods at concurrency 5, on a connection aged by 2 pods and ``STARTPROF_AGE_SECONDS`` (60 by
default) of polling, recorded from after the aging on the lab's containerd, for the grpc-go
kubelet client and for ``startprof lab run``. Every pod-start CRI call must be named with its
fields, ``sandbox`` and ``container.start`` must be within max(1 ms, 2 %) of the client's own
timings for every pod, and every pod must have the phases it has on a fresh connection.

The same checks on a fresh connection (the client started by ``record``) prove the harness.
On the aged connection a call's ``:path`` is only an index into an HPACK table built before the
recording: the calls are named from evidence (docs/cri-decoding.md, analysis/cri_naming.py).
"""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import pytest
from aged import (
    MATCH_KEY,
    MS,
    Client,
    Run,
    attrs,
    go_client,
    match_calls,
    named_share,
    naming_failures,
    phase_names,
    pod_start_truth,
    record_run,
    timing_failures,
)

if TYPE_CHECKING:
    from conftest import RunningLab

RunOf = Callable[[str, bool, bool], Run]


@pytest.fixture(scope="module")
def run_of(lab: RunningLab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunOf]:
    """Runs each (client, aged, traceparent) once for the module and hands out the result."""
    done: dict[tuple[str, bool, bool], Run | BaseException] = {}
    clients: dict[str, Client] = {}

    def get(name: str, aged: bool, traceparent: bool = False) -> Run:
        key = (name, aged, traceparent)
        if key not in done:
            if name not in clients:
                clients[name] = Client("go", go_client()) if name == "go" else Client("lab")
            out = tmp_path_factory.mktemp(f"{name}-{'aged' if aged else 'fresh'}")
            try:
                run = record_run(lab, clients[name], out, aged, traceparent)
            except BaseException as exc:  # a broken run fails every test of it, once
                done[key] = exc
                raise
            done[key] = run
            named, total = named_share(run)
            print(
                f"{name} {'aged' if aged else 'fresh'}{' traceparent' if traceparent else ''}: "
                f"{run.seconds:.0f} s, {len(run.calls)} decoded calls, "
                f"{named}/{total} truth calls named",
                file=sys.stderr,
            )
        found = done[key]
        if isinstance(found, BaseException):
            pytest.fail(f"the {name} run failed before: {found}")
        return found

    yield get


def _report(problems: list[str]) -> str:
    return "\n".join(problems[:40])


@pytest.mark.parametrize("client", ["go", "lab"])
def test_fresh_connection_names_every_pod_start_call(run_of: RunOf, client: str) -> None:
    run = run_of(client, False, False)
    assert len(run.sandboxes) == 20
    assert naming_failures(run) == [], _report(naming_failures(run))


@pytest.mark.parametrize("client", ["go", "lab"])
def test_fresh_connection_phases_match_the_client(run_of: RunOf, client: str) -> None:
    run = run_of(client, False, False)
    assert timing_failures(run) == [], _report(timing_failures(run))


@pytest.mark.parametrize("client", ["go", "lab"])
def test_aged_run_starts_and_finds_every_pod(run_of: RunOf, client: str) -> None:
    """The aged run itself works: 20 pods in the ground truth, each found by the analysis."""
    run = run_of(client, True, False)
    assert len(run.sandboxes) == 20
    missing = [t["pod"] for sid, t in run.sandboxes.items() if sid not in run.pods()]
    assert missing == []


@pytest.mark.parametrize("client", ["go", "lab"])
def test_aged_connection_names_every_pod_start_call(run_of: RunOf, client: str) -> None:
    run = run_of(client, True, False)
    assert len(run.sandboxes) == 20
    assert naming_failures(run) == [], _report(naming_failures(run))


@pytest.mark.parametrize("client", ["go", "lab"])
def test_aged_connection_phases_match_the_client(run_of: RunOf, client: str) -> None:
    run = run_of(client, True, False)
    assert timing_failures(run) == [], _report(timing_failures(run))


@pytest.mark.parametrize("client", ["go", "lab"])
def test_aged_connection_has_the_phases_of_a_fresh_one(run_of: RunOf, client: str) -> None:
    fresh = Counter(phase_names(p) for p in run_of(client, False, False).analysis.pods)
    assert len(fresh) == 1, f"fresh pods differ in their phases: {fresh}"
    (expected,) = fresh
    run = run_of(client, True, False)
    pods = run.pods()
    differ = {
        t["pod"]: sorted(phase_names(pods[sid]) ^ expected) if sid in pods else "not found"
        for sid, t in run.sandboxes.items()
        if sid not in pods or phase_names(pods[sid]) != expected
    }
    assert differ == {}, differ


def test_aged_connection_carries_the_kubelet_traceparent(run_of: RunOf) -> None:
    run = run_of("go", True, True)
    by_traceparent = {t["traceparent"]: t for t in run.trace}
    assert len(by_traceparent) == len(run.trace), "a traceparent was sent twice"
    # pod-start calls pair one to one with the client's truth; tear-down calls (a container
    # stopped twice, two ImageStatus in one window) cannot always be paired, and the last check
    # below covers every decoded call anyway
    pairs, missing = match_calls(pod_start_truth(run), run.calls)
    assert missing == []
    wrong = []
    for t, c in pairs:
        sent = by_traceparent.get(attrs(c).get("traceparent", ""))
        # a call naming an id is paired exactly; ImageStatus calls name none (two per pod, five
        # pods at once) and may pair either way round: their context must be one the client
        # sent for an ImageStatus that began just before the socket saw the call
        exact = MATCH_KEY.get(t["method"]) is not None
        if (
            sent is None
            or sent["method"] != t["method"]
            or (exact and sent["start_monotonic_ns"] != t["start_monotonic_ns"])
            or not c["start_ns"] - 50 * MS <= sent["start_monotonic_ns"] <= c["start_ns"]
        ):
            wrong.append((t["method"], t["pod"], attrs(c).get("traceparent")))
    assert wrong == [], wrong[:20]
    # every call the recording decoded, polling included, was one the client made
    unknown = [c for c in run.calls if attrs(c).get("traceparent") not in by_traceparent]
    assert unknown == [], [(c["method"], c["start_ns"]) for c in unknown[:20]]
