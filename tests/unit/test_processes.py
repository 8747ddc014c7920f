"""The process table: lifetimes of reused pids, and what each event is attributed to."""

from __future__ import annotations

from typing import Any

import pandas as pd
import pyarrow as pa

from startprof.analysis.processes import processes
from startprof.recording import EVENT_SCHEMA


def _frame(events: list[dict[str, Any]]) -> pd.DataFrame:
    """Events as the analysis reads a recording: Arrow-backed columns of the file's schema."""
    table = pa.Table.from_batches([pa.RecordBatch.from_pylist(events, schema=EVENT_SCHEMA)])
    return table.to_pandas(types_mapper=pd.ArrowDtype)


def _exec(ts: int, pid: int, program: str) -> dict[str, Any]:
    return {"kind": "exec", "ts_ns": ts, "pid": pid, "tid": pid, "filename": program,
            "argv": [program]}  # fmt: skip


def test_a_reused_pid_is_two_processes_and_each_event_goes_to_the_one_alive_then() -> None:
    """pid 200 is born twice (pid_max wrapped); pid 300 once, and an event of it before its
    birth belongs to no lifetime of it. Both paths: the lookup for one-lifetime pids and the
    asof join for reused ones."""
    ev = _frame(
        [
            {"kind": "proc", "ts_ns": 1, "pid": 100, "ppid": 1},
            {"kind": "exec", "ts_ns": 5, "pid": 300, "tid": 300, "filename": "/early"},
            {"kind": "fork", "ts_ns": 10, "pid": 100, "child_pid": 200},
            _exec(11, 200, "/bin/first"),
            {"kind": "exit", "ts_ns": 12, "pid": 200, "tid": 200},
            {"kind": "fork", "ts_ns": 20, "pid": 100, "child_pid": 200},
            _exec(21, 200, "/bin/second"),
            {"kind": "fork", "ts_ns": 30, "pid": 100, "child_pid": 300},
            _exec(31, 300, "/bin/third"),
            {"kind": "exit", "ts_ns": 40, "pid": 200, "tid": 200},
        ]
    )
    table = processes(ev)
    lives = table[table["pid"] == 200].sort_values("start_ns")
    assert lives["filename"].tolist() == ["/bin/first", "/bin/second"]
    assert lives["end_ns"].tolist() == [12, 40]
    assert (
        lives["parent_proc"].tolist()
        == [int(table.loc[table["pid"] == 100, "proc_id"].iloc[0])] * 2
    )
    third = table[table["pid"] == 300]
    assert third["filename"].tolist() == ["/bin/third"]  # not /early: that exec came before
    ids = dict(zip(ev["ts_ns"].tolist(), ev["proc_id"].tolist(), strict=True))
    assert ids[11] == ids[12] != ids[21] == ids[40]
    assert ids[5] is pd.NA or pd.isna(ids[5])
    assert ids[31] == int(third["proc_id"].iloc[0])


def test_a_fork_without_its_child_pid_makes_no_lifetime() -> None:
    """A damaged fork row (no child pid) is left out; the rest of the tree stands."""
    ev = _frame(
        [
            {"kind": "proc", "ts_ns": 1, "pid": 100, "ppid": 1},
            {"kind": "fork", "ts_ns": 10, "pid": 100},
            {"kind": "fork", "ts_ns": 20, "pid": 100, "child_pid": 200},
            _exec(21, 200, "/bin/child"),
        ]
    )
    table = processes(ev)
    assert sorted(table["pid"].tolist()) == [100, 200]
    child = table[table["pid"] == 200]
    assert child["filename"].tolist() == ["/bin/child"]
    assert child["parent_proc"].tolist() == table.loc[table["pid"] == 100, "proc_id"].tolist()
    assert table["proc_id"].tolist() == list(range(len(table)))


def test_pids_past_pid_max_and_events_without_a_pid_are_attributed_alike() -> None:
    """The pids of a recording are coded by a table up to Linux's largest pid_max, else by a
    hash: both give the same process table and owners, an event without a pid has none, and a
    real pid 0 (the idle task's, as /proc never shows it but a damaged file may) is kept."""

    def events(offset: int) -> list[dict[str, Any]]:
        return [
            {"kind": "proc", "ts_ns": 1, "pid": 0, "ppid": 0},
            {"kind": "proc", "ts_ns": 1, "pid": 100 + offset, "ppid": 1},
            {"kind": "fork", "ts_ns": 10, "pid": 100 + offset, "child_pid": 200 + offset},
            _exec(11, 200 + offset, "/bin/child"),
            {"kind": "annotation", "ts_ns": 12, "sandbox_id": "s"},  # no pid
            {"kind": "exit", "ts_ns": 13, "pid": 200 + offset, "tid": 200 + offset},
            {"kind": "exit", "ts_ns": 14, "pid": 0, "tid": 0},
        ]

    tables, owners = [], []
    for offset in (0, 1 << 23):  # PID_LIMIT is 1 << 22
        ev = _frame(events(offset))
        table = processes(ev)
        tables.append(table.drop(columns=["pid", "ppid"]))
        owners.append([None if pd.isna(x) else int(x) for x in ev["proc_id"].tolist()])
    pd.testing.assert_frame_equal(tables[0], tables[1])
    assert owners[0] == owners[1]
    assert owners[0][4] is None and owners[0][6] is not None and owners[0][5] == owners[0][3]
