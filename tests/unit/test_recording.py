"""The recording file: round trip, crash tolerance, and clear errors on anything else."""

from __future__ import annotations

import json
import os
import random
import stat
from pathlib import Path

import pyarrow as pa
import pyarrow.ipc as ipc
import pytest

from startprof.errors import RecordingError
from startprof.recording import (
    EVENT_SCHEMA,
    FORMAT_VERSION,
    META_KEY,
    RecordingHeader,
    RecordingWriter,
    events_batch,
    read_recording,
)

RECORDINGS = Path(__file__).resolve().parents[1] / "data" / "recordings"


def header(**over: object) -> RecordingHeader:
    base: dict[str, object] = dict(
        host="node-a",
        kernel="6.18.44",
        abi_version=1,
        probes=("exec", "namespaces"),
        cri_socket="/run/containerd/containerd.sock",
        clock_offset_ns=1_700_000_000_000_000_000,
        start_wall_ns=1_700_000_000_500_000_000,
        start_monotonic_ns=500_000_000,
        startprof_version="0.1.0",
    )
    base.update(over)
    return RecordingHeader(**base)  # type: ignore[arg-type]


def events(n: int, start: int = 0) -> list[dict[str, object]]:
    out: list[dict[str, object]] = []
    for i in range(start, start + n):
        out.append(
            {
                "kind": "exec",
                "ts_ns": 1_000 + i,
                "pid": 100 + i,
                "tid": 100 + i,
                "comm": "containerd",
                "filename": "/usr/lib/cni/bridge",
                "argv": ["/usr/lib/cni/bridge", f"arg{i}"],
                "env": ["CNI_COMMAND=ADD", "CNI_CONTAINERID=abc"],
            }
        )
        out.append(
            {"kind": "cri_data", "ts_ns": 2_000 + i, "conn_id": 7, "data": bytes([i % 256]) * 40}
        )
    return out


def write(path: Path, batches: int = 5, per_batch: int = 50, end: bool = True) -> None:
    w = RecordingWriter(path, header(), flush_interval=3600)
    for b in range(batches):
        w.write(events(per_batch, b * per_batch))
        w.flush()
    w.close({"drops": 0} if end else None)


def test_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "r.arrows"
    write(path)
    rec = read_recording(path)
    assert rec.header == header()
    assert rec.complete and not rec.truncated
    assert rec.end == {"drops": 0}
    assert rec.table.num_rows == 5 * 50 * 2 + 1
    df = rec.frame()
    first = df.iloc[0]
    assert first["kind"] == "exec"
    assert list(first["argv"]) == ["/usr/lib/cni/bridge", "arg0"]
    assert df[df["kind"] == "cri_data"]["data"].iloc[3] == bytes([3]) * 40
    # nullable integer columns stay integers
    assert str(df["pid"].dtype).startswith("int32")


def test_header_keeps_unknown_keys(tmp_path: Path) -> None:
    h = header(extra={"future_key": [1, 2]})
    path = tmp_path / "r.arrows"
    RecordingWriter(path, h).close({})
    assert read_recording(path).header.extra == {"future_key": [1, 2]}


def test_created_mode_0600_even_over_existing_file(tmp_path: Path) -> None:
    path = tmp_path / "r.arrows"
    path.write_bytes(b"old")
    os.chmod(path, 0o644)
    write(path, batches=1)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_without_clean_close_is_incomplete(tmp_path: Path) -> None:
    path = tmp_path / "r.arrows"
    w = RecordingWriter(path, header(), flush_interval=3600)
    w.write(events(10))
    w.flush()
    # simulate SIGKILL: the process dies without close(); the fd is dropped.
    os.close(w._file.fileno())
    rec = read_recording(path)
    assert not rec.complete
    assert rec.table.num_rows == 20


def test_flush_interval_writes_without_explicit_flush(tmp_path: Path) -> None:
    path = tmp_path / "r.arrows"
    w = RecordingWriter(path, header(), flush_interval=0.0)
    w.write(events(3))
    assert read_recording(path).table.num_rows == 6
    w.close({})


def test_cut_at_every_offset_opens_or_fails_clearly(tmp_path: Path) -> None:
    path = tmp_path / "r.arrows"
    write(path, batches=4, per_batch=5)
    data = path.read_bytes()
    cut = tmp_path / "cut.arrows"
    full_rows = read_recording(path).table.num_rows
    rows_seen = []
    for offset in range(0, len(data), max(1, len(data) // 250)):
        cut.write_bytes(data[:offset])
        try:
            rec = read_recording(cut)
        except RecordingError as exc:
            assert str(exc).startswith(str(cut))
            continue
        assert rec.table.num_rows <= full_rows
        assert not rec.complete or offset >= len(data) - 16
        rows_seen.append(rec.table.num_rows)
    # rows only grow as the cut moves later, and some cut points keep whole batches
    assert rows_seen == sorted(rows_seen)
    assert max(rows_seen) >= 30


def test_random_cut_offsets_keep_prefix(tmp_path: Path) -> None:
    path = tmp_path / "r.arrows"
    write(path, batches=6, per_batch=20)
    data = path.read_bytes()
    full = read_recording(path).frame()
    rng = random.Random(4)
    for _ in range(40):
        offset = rng.randrange(len(data) // 2, len(data))
        cut = tmp_path / "cut.arrows"
        cut.write_bytes(data[:offset])
        rec = read_recording(cut)
        part = rec.frame()
        assert list(part["ts_ns"]) == list(full["ts_ns"][: len(part)])


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "empty file"),
        (bytes(random.Random(1).randrange(256) for _ in range(4096)), "not a startprof recording"),
        (b"PK\x03\x04 a zip file", "not a startprof recording"),
    ],
)
def test_garbage_is_one_clear_error(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "bad.arrows"
    path.write_bytes(content)
    with pytest.raises(RecordingError, match=message) as err:
        read_recording(path)
    assert "\n" not in str(err.value)
    assert err.value.exit_code == 2


def test_missing_path_and_directory(tmp_path: Path) -> None:
    with pytest.raises(RecordingError, match="no such file"):
        read_recording(tmp_path / "nope.arrows")
    with pytest.raises(RecordingError, match="is a directory"):
        read_recording(tmp_path)


def test_other_programs_arrow_stream_and_file(tmp_path: Path) -> None:
    table = pa.table({"x": [1, 2, 3]})
    stream = tmp_path / "other.arrows"
    with ipc.new_stream(str(stream), table.schema) as w:
        w.write_table(table)
    with pytest.raises(RecordingError, match="not a startprof recording"):
        read_recording(stream)
    arrow_file = tmp_path / "other.arrow"
    with ipc.new_file(str(arrow_file), table.schema) as w:
        w.write_table(table)
    with pytest.raises(RecordingError, match="Arrow \\*file\\*"):
        read_recording(arrow_file)


def test_future_format_version(tmp_path: Path) -> None:
    path = tmp_path / "future.arrows"
    meta = json.loads(header().to_json())
    meta["format_version"] = FORMAT_VERSION + 1
    from startprof.recording import EVENT_SCHEMA

    with ipc.new_stream(str(path), EVENT_SCHEMA.with_metadata({META_KEY: json.dumps(meta)})):
        pass
    with pytest.raises(RecordingError, match="newer than this startprof") as err:
        read_recording(path)
    assert err.value.fix == "upgrade startprof"


def test_damaged_header(tmp_path: Path) -> None:
    from startprof.recording import EVENT_SCHEMA

    path = tmp_path / "damaged.arrows"
    with ipc.new_stream(str(path), EVENT_SCHEMA.with_metadata({META_KEY: b"{not json"})):
        pass
    with pytest.raises(RecordingError, match="damaged recording header"):
        read_recording(path)


@pytest.mark.parametrize("name", sorted(p.name for p in RECORDINGS.glob("*.arrows")))
def test_events_batch_is_what_from_pylist_gives(name: str) -> None:
    """The column-wise conversion the writer uses gives the generic converter's batch, for
    every kind of event the stored recordings hold (missing keys, lists, large integers)."""
    table = read_recording(RECORDINGS / name).table
    events = [{k: v for k, v in row.items() if v is not None} for row in table.to_pylist()]
    expected = pa.RecordBatch.from_pylist(events, schema=EVENT_SCHEMA)
    assert events_batch(events).equals(expected)
    assert events_batch([]).num_rows == 0


def test_a_clean_close_compacts_small_batches_into_few_compressed_ones(tmp_path: Path) -> None:
    path = tmp_path / "r.arrows"
    w = RecordingWriter(path, header(), flush_interval=3600)
    for i in range(50):  # fifty flushes: a recorder's small batches
        w.write([{"kind": "exec", "ts_ns": i * 10 + j, "pid": j, "argv": ["a", str(j)]}
                 for j in range(10)])  # fmt: skip
        w.flush()
    before = ipc.open_stream(pa.memory_map(str(path))).read_all()
    size = path.stat().st_size
    w.close({"drops": 0})
    assert path.stat().st_size < size / 4  # one lz4 batch instead of fifty plain ones
    reader = ipc.open_stream(pa.memory_map(str(path)))
    batches = list(reader)
    assert len(batches) == 1 and batches[0].num_rows == 501  # 500 events and the end
    rec = read_recording(path)
    assert rec.complete and rec.header == header()
    assert rec.table.slice(0, 500).equals(before)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert not (tmp_path / "r.arrows.compact").exists()


def test_a_recording_cut_short_stays_uncompressed_and_readable(tmp_path: Path) -> None:
    path = tmp_path / "r.arrows"
    w = RecordingWriter(path, header())
    w.write([{"kind": "exec", "ts_ns": 1, "pid": 2}])
    w.close()  # no end: as after a crash, nothing is rewritten
    rec = read_recording(path)
    assert not rec.complete and rec.table.num_rows == 1


def test_skipped_columns_are_left_unread_and_the_rest_match(tmp_path: Path) -> None:
    path = tmp_path / "r.arrows"
    write(path)
    full = read_recording(path).table
    rec = read_recording(path, skip={"data", "argv"})
    assert rec.complete and rec.end == {"drops": 0}
    assert rec.table.column_names == [n for n in full.column_names if n not in ("data", "argv")]
    assert rec.table.equals(full.drop_columns(["data", "argv"]))
    # a cut file keeps its whole batches, as without skip
    data = path.read_bytes()
    cut = tmp_path / "cut.arrows"
    cut.write_bytes(data[: len(data) * 2 // 3])
    whole, part = read_recording(cut), read_recording(cut, skip={"data"})
    assert part.truncated == whole.truncated and part.table.num_rows == whole.table.num_rows


def test_skip_does_not_hide_a_foreign_stream(tmp_path: Path) -> None:
    path = tmp_path / "other.arrows"
    with path.open("wb") as f, pa.ipc.new_stream(f, pa.schema([("x", pa.int64())])) as w:
        w.write_batch(pa.record_batch([pa.array([1])], names=["x"]))
    with pytest.raises(RecordingError, match="not a startprof recording"):
        read_recording(path, skip={"data"})
