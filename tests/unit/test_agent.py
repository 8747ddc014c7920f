"""The agent's incremental core, from stored real recordings replayed in time order (no BPF),
its metrics, and the checks and options around it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from agent_replay import replay
from click.testing import CliRunner
from opentelemetry.sdk.metrics.export import HistogramDataPoint, InMemoryMetricReader

from startprof.agent import INIT_PID_NS_INO, ensure_host_pid_namespace
from startprof.cli import cli
from startprof.cli.agent import parse_size
from startprof.errors import EnvironmentProblem
from startprof.exporters.spans import describe_pod
from startprof.incremental import GIVEN_UP, LONG_LIVED_KINDS, SHUT_DOWN
from startprof.metrics import CRI_LOST_BYTES, POD_START, AgentMetrics
from startprof.recorder import RECORDER_NICE, CriByteAccount, _Priority

# every kind of pod start the stored recordings hold: fresh and aged connections, failures in
# each phase, crash loops, sidecars, pulls, pods seen mid-start
KINDS = [
    "concurrent",
    "aged-go",
    "aged-go-traceparent",
    "multi-container",
    "sidecar",
    "mid-start",
    "bad-image",
    "cni-fail",
    "runtime-fail",
    "no-entrypoint",
    "crash-loop",
    "crash-then-up",
    "host-network",
    "slow-pull",
]


@pytest.mark.parametrize("name", KINDS)
def test_each_pod_start_is_sent_once_with_the_spans_export_gives(name: str) -> None:
    r = replay(name)
    sent = [e.pod.sandbox_id for e in r.emitted]
    assert len(sent) == len(set(sent)), "a pod start was sent twice"
    whole = {p.sandbox_id: p for p in r.whole.pods}
    assert set(sent) == set(whole)
    for e in r.emitted:
        assert e.reason == "done"
        assert e.pod.status == whole[e.pod.sandbox_id].status
        assert describe_pod(e.pod) == describe_pod(whole[e.pod.sandbox_id])


@pytest.mark.parametrize("name", ["concurrent", "aged-go", "slow-pull"])
def test_a_pod_start_is_sent_after_it_settled_and_within_a_step_of_it(name: str) -> None:
    settle_s, step_s = 0.5, 0.25
    r = replay(name, step_s=step_s, settle_s=settle_s)
    for e in r.emitted:
        end_mono = e.pod.end_ns - r.offset_ns
        waited = (r.sent_at[e.pod.sandbox_id] - end_mono) / 1e9
        assert settle_s <= waited < settle_s + step_s + 1e-9


@pytest.mark.parametrize("name", ["concurrent", "aged-go"])
def test_stepping_when_a_pod_settles_sends_it_sooner_and_never_before(name: str) -> None:
    """aged-go: the replies are unnamed until an analysis names them; the first of them
    since the last analysis still brings one at its settle time."""
    settle_s, step_s = 0.3, 0.5

    def waits(at_due: bool) -> list[float]:
        r = replay(name, step_s=step_s, settle_s=settle_s, at_due=at_due)
        return sorted(
            (r.sent_at[e.pod.sandbox_id] - (e.pod.end_ns - r.offset_ns)) / 1e9 for e in r.emitted
        )

    regular, due = waits(False), waits(True)
    assert len(due) == len(regular) > 0
    assert all(settle_s <= w < settle_s + step_s + 1e-9 for w in due)
    assert sum(due) < sum(regular)


@pytest.mark.parametrize("name", ["concurrent", "aged-go", "slow-pull", "crash-loop"])
def test_the_window_is_analysed_only_when_a_decision_can_be_due(name: str) -> None:
    """Steps every 50 ms, as on a busy node: the costly analysis runs about once per pod start
    (its reply settling) plus a few reviews, not at every step (24-82 analyses before)."""
    r = replay(name, step_s=0.05, at_due=True)
    assert r.core.stats.steps > 40
    assert r.core.stats.analyses <= 2 * len(r.emitted) + 5


def test_the_window_forgets_what_no_pod_still_to_be_sent_needs() -> None:
    r = replay("slow-pull", horizon_s=0.5)
    assert r.core.stats.pruned > 0
    assert r.max_window < r.total_events
    # after the last pod went, only the long-lived events and the horizon's are left
    assert not r.core.pending
    assert r.core.stats.events < r.total_events // 4


def test_pruning_changes_no_trace() -> None:
    tight = replay("concurrent", horizon_s=0.2)
    assert tight.core.stats.pruned > 0
    loose = {e.pod.sandbox_id: describe_pod(e.pod) for e in replay("concurrent").emitted}
    assert {e.pod.sandbox_id: describe_pod(e.pod) for e in tight.emitted} == loose


def test_long_lived_events_stay() -> None:
    r = replay("concurrent", horizon_s=0.1)
    window = r.core._window()
    old = window["ts_ns"] < int(window["ts_ns"].max()) - int(0.1e9)
    assert set(window.loc[old, "kind"].dropna()) <= set(LONG_LIVED_KINDS)


def test_a_pod_start_that_never_ends_is_given_up_after_the_timeout() -> None:
    # the recording cut while its pods start: their ends never come
    r = replay("concurrent", cut_s=0.5, pod_timeout_s=0.3)
    assert r.emitted and {e.reason for e in r.emitted} == {"timeout"}
    for e in r.emitted:
        assert e.pod.status == "incomplete"
        assert e.pod.incomplete_reason == GIVEN_UP.format(timeout=0.3)


def test_pods_still_starting_at_shutdown_are_flushed_as_incomplete() -> None:
    r = replay("multi-container", settle_s=60)
    assert [e.reason for e in r.emitted] == ["shutdown"]
    assert r.emitted[0].pod.status == "ok"  # complete, only not settled: sent as it is
    r = replay("concurrent", settle_s=60, pod_timeout_s=3600, step_s=0.1)
    assert len(r.emitted) == 4 and all(e.reason == "shutdown" for e in r.emitted)


def test_nothing_is_analysed_while_nothing_happens() -> None:
    r = replay("quiet", step_s=0.1)
    assert r.emitted == []
    assert r.core.stats.analyses <= 2


def test_the_pod_start_histogram_counts_every_pod_sent() -> None:
    reader = InMemoryMetricReader()
    metrics = AgentMetrics("node-1", [reader])
    r = replay("concurrent")
    metrics.observe(e.pod for e in r.emitted)
    metrics.set_drops(3)
    metrics.set_kernel_errors({"follow_full": 0, "read_failed": 2})
    metrics.set_cri_bytes_lost(4096)
    data = reader.get_metrics_data()
    assert data is not None
    found = {
        m.name: m for rm in data.resource_metrics for sm in rm.scope_metrics for m in sm.metrics
    }
    points = found[POD_START].data.data_points
    assert sum(p.count for p in points if isinstance(p, HistogramDataPoint)) == 4
    labels = dict(next(iter(points)).attributes or {})
    assert labels["startprof.pod.status"] == "ok"
    assert labels["startprof.runtime_handler"] == r.whole.pods[0].runtime_handler
    assert labels["k8s.namespace.name"] == "startprof"
    phases = {
        dict(p.attributes or {})["startprof.phase"]
        for p in found["startprof.phase.critical.duration"].data.data_points
    }
    assert {"sandbox", "container.start"} <= phases
    assert next(iter(found["startprof.drops"].data.data_points)).value == 3
    errors = {
        dict(p.attributes or {})["startprof.kernel_error"]: p.value
        for p in found["startprof.kernel.errors"].data.data_points
    }
    assert errors == {"follow_full": 0, "read_failed": 2}
    lost = found[CRI_LOST_BYTES]
    assert lost.unit == "By" and next(iter(lost.data.data_points)).value == 4096
    assert next(iter(found["startprof.recorder.cpu.time"].data.data_points)).value > 0
    metrics.shutdown()


def test_the_agent_refuses_another_pid_namespace(tmp_path: Path) -> None:
    other = tmp_path / "pid"
    other.write_text("")
    assert os.stat(other).st_ino != INIT_PID_NS_INO
    with pytest.raises(EnvironmentProblem, match="not the host's"):
        ensure_host_pid_namespace(str(other))


@pytest.mark.parametrize(
    ("text", "size"), [("1048576", 1 << 20), ("500M", 500 << 20), ("2G", 2 << 30), ("1.5k", 1536)]
)
def test_sizes(text: str, size: int) -> None:
    assert parse_size(text) == size


def test_agent_needs_an_output_and_a_good_url() -> None:
    runner = CliRunner()
    result = runner.invoke(cli, ["agent"])
    assert result.exit_code == 2 and "at least one of" in result.output
    result = runner.invoke(cli, ["agent", "--max-size", "lots", "--keep", "/tmp"])
    assert result.exit_code == 2
    assert SHUT_DOWN  # the reason flushed pods carry is a sentence, not empty


def test_keep_rotates_and_holds_at_most_max_size(tmp_path: Path) -> None:
    from startprof.agent import RotatingRecordings
    from startprof.recording import RecordingHeader, read_recording

    def header() -> RecordingHeader:
        return RecordingHeader(
            host="node-1",
            kernel="6.18",
            abi_version=1,
            probes=("exec",),
            cri_socket="/run/containerd/containerd.sock",
            clock_offset_ns=0,
            start_wall_ns=0,
            start_monotonic_ns=0,
        )

    alive = [{"kind": "proc", "ts_ns": 1, "pid": 1, "comm": "containerd"}]
    keeper = RotatingRecordings(tmp_path, 64 * 1024, header)
    keeper.open(alive)
    for i in range(200):
        keeper.write(
            [
                {"kind": "exec", "ts_ns": i * 1000 + j, "pid": i, "argv": [os.urandom(64).hex()]}
                for j in range(50)
            ]
        )
        keeper._writer.flush()  # type: ignore[union-attr]
        keeper.rotate_if_full({"stop_reason": "rotated"}, lambda: alive)
    keeper.close({"stop_reason": "agent stopped"})
    files = sorted(tmp_path.glob("*.arrows"))
    assert len(files) > 1 and files == keeper.kept
    assert sum(f.stat().st_size for f in files) <= 64 * 1024 + 64 * 1024 // 4 * 2
    for f in files:  # each file stands alone: its own header, the processes alive, a clean end
        rec = read_recording(f)
        assert rec.complete
        assert rec.table.column("kind").to_pylist()[0] == "proc"


def _chunk(ts: int, ret: int, n: int, conn: int = 1, direction: str = "in") -> dict[str, object]:
    return {
        "kind": "cri_data",
        "ts_ns": ts,
        "conn_id": conn,
        "direction": direction,
        "ret": ret,
        "data": bytes(n),
    }


def test_cri_bytes_lost_are_what_a_syscalls_chunks_lack() -> None:
    account = CriByteAccount()
    account.add(_chunk(1, 100, 100))  # whole
    account.add(_chunk(2, 10_000, 4096))  # 4096 + 4096 of 10000 arrived: 1808 lost
    account.add(_chunk(2, 10_000, 4096))
    account.add(_chunk(3, 50, 20, direction="out"))  # still open on the other half
    account.add(_chunk(4, 30, 30))  # a new syscall on the same half closes the one before
    assert account.lost == 10_000 - 8192
    assert account.settle(before_ns=3) == 10_000 - 8192  # the syscall at 3 may still grow
    assert account.settle() == 10_000 - 8192 + 30
    account.add({"kind": "cri_data", "ts_ns": 5, "conn_id": 1, "ret": -11})  # EAGAIN: nothing
    assert account.settle() == 10_000 - 8192 + 30


def test_a_boost_leaves_sched_idle_until_relaxed_and_catch_up_is_for_good(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The scheduler calls are captured, not made: the test process keeps its own policy."""
    calls: list[str] = []
    monkeypatch.setattr(
        os, "sched_setscheduler", lambda pid, policy, param: calls.append(f"policy {policy}")
    )
    monkeypatch.setattr(os, "setpriority", lambda which, who, nice: calls.append(f"nice {nice}"))
    p = _Priority()
    p.yield_to_workload()
    assert p.mode == "idle" and calls == [f"policy {os.SCHED_IDLE}"]
    assert p.relax() is False  # nothing to relax from
    assert p.boost() is True and p.mode == f"nice {RECORDER_NICE}" and p.boosted
    assert p.boost() is False  # already out of SCHED_IDLE
    assert p.relax() is True and p.mode == "idle" and not p.boosted
    assert p.boost() is True
    assert p.catch_up() is True  # the ring buffer filled while boosted: now for good
    assert p.relax() is False and p.mode == f"nice {RECORDER_NICE}"
    assert calls[-1] == f"nice {RECORDER_NICE}"
