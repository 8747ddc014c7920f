"""The recording file: the only module that reads or writes it.

A recording is one Apache Arrow IPC *stream* (``.arrows``): a schema whose metadata holds the
recording's header, then record batches of events (columns from :mod:`startprof.events`).
The writer appends a batch and fsyncs at least once a second, so a SIGKILL or power loss costs
at most the last second, and the stream format needs no footer: a file cut anywhere still opens
up to its last complete batch. A clean close appends one ``end`` event; its absence tells the
reader the recording was cut short.

While recording, batches are small (a flush's worth) and uncompressed: compressing them costs
the recorder CPU while pods start, and a file of thousands of small compressed batches reads
slowly (a 1,000-pod recording in 300-event lz4 batches: 2.0 s; in 65,536-event batches: 0.19 s).
A clean close then *compacts* the file: the same events rewritten in large lz4 batches to a
temporary file, fsynced and renamed over the original, so a crash meanwhile leaves the
uncompressed original whole. A file cut short stays uncompressed (about 6x larger, and read
without decompressing at all).

Read it elsewhere with ``pyarrow.ipc.open_stream(path).read_all()`` (or duckdb/pandas).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Final

import pyarrow as pa
import pyarrow.ipc as ipc

from startprof.errors import RecordingError
from startprof.events import COLUMNS, Event, attrs_of

FORMAT_VERSION: Final = 1
META_KEY: Final = b"startprof"
SUFFIX: Final = ".arrows"

_TYPES: Final[dict[str, pa.DataType]] = {
    "dictionary": pa.string(),
    "string": pa.string(),
    "binary": pa.binary(),
    "bool": pa.bool_(),
    "int32": pa.int32(),
    "int64": pa.int64(),
    "uint32": pa.uint32(),
    "uint64": pa.uint64(),
    "list<string>": pa.list_(pa.string()),
}

EVENT_SCHEMA: Final = pa.schema([pa.field(name, _TYPES[kind]) for name, kind in COLUMNS])
_FIELDS: Final = tuple((f.name, f.type) for f in EVENT_SCHEMA)


def events_batch(events: Sequence[Event]) -> pa.RecordBatch:
    """Events (dicts, missing keys null) as one record batch of the recording's schema.

    Built column by column: ``RecordBatch.from_pylist`` walks every dict once per column
    through the generic converter and cost the recorder 21 us per event, this 2.3 (on a stored
    recording's 2,748 events), against about 9 us to decode a record."""
    return pa.RecordBatch.from_arrays(
        [pa.array([e.get(name) for e in events], type=typ) for name, typ in _FIELDS],
        schema=EVENT_SCHEMA,
    )


@dataclass(frozen=True)
class RecordingHeader:
    """What a recording says about itself. ``extra`` keeps keys this version does not know."""

    host: str
    kernel: str
    abi_version: int
    probes: tuple[str, ...]
    cri_socket: str
    clock_offset_ns: int
    start_wall_ns: int
    start_monotonic_ns: int
    follow_all: bool = False
    startprof_version: str = ""
    format_version: int = FORMAT_VERSION
    extra: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> bytes:
        doc = {k: v for k, v in self.__dict__.items() if k != "extra"}
        doc["probes"] = list(self.probes)
        return json.dumps({**self.extra, **doc}).encode()

    @classmethod
    def from_json(cls, raw: bytes, path: Path) -> RecordingHeader:
        try:
            doc = json.loads(raw)
            version = int(doc["format_version"])
        except (ValueError, KeyError, TypeError) as exc:
            raise RecordingError(f"{path}: damaged recording header") from exc
        if version > FORMAT_VERSION:
            raise RecordingError(
                f"{path}: recording format {version} is newer than this startprof reads "
                f"({FORMAT_VERSION})",
                fix="upgrade startprof",
            )
        known = set(cls.__dataclass_fields__) - {"extra"}
        try:
            return cls(
                **{k: v for k, v in doc.items() if k in known and k != "probes"},
                probes=tuple(doc.get("probes", ())),
                extra={k: v for k, v in doc.items() if k not in known},
            )
        except TypeError as exc:
            raise RecordingError(f"{path}: damaged recording header ({exc})") from exc


def _create_private(path: Path) -> int:
    """A file opened for writing, truncated, mode 0600 (it holds the node's command lines and
    CNI arguments) even when it existed before with another mode."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # O_CREAT's mode does not apply to an existing file
    return fd


class RecordingWriter:
    """Appends events to a recording; flushes to disk at least every ``flush_interval`` seconds.

    The file is created mode 0600: it holds command lines and CNI arguments of the node.
    """

    def __init__(
        self, path: str | os.PathLike[str], header: RecordingHeader, flush_interval: float = 0.5
    ) -> None:
        self.path = Path(path)
        self.header = header
        self.flush_interval = flush_interval
        self.events_written = 0
        self._pending: list[Event] = []
        self._last_flush = time.monotonic()
        try:
            fd = _create_private(self.path)
        except OSError as exc:
            raise RecordingError(f"cannot create {self.path}: {exc.strerror}") from exc
        self._file: BinaryIO = os.fdopen(fd, "wb")
        schema = EVENT_SCHEMA.with_metadata({META_KEY: header.to_json()})
        self._writer = ipc.new_stream(self._file, schema)  # uncompressed until compact()
        self._sync()

    def write(self, events: Iterable[Event]) -> None:
        self._pending.extend(events)
        if time.monotonic() - self._last_flush >= self.flush_interval:
            self.flush()

    def flush(self) -> None:
        """Write pending events as one batch and fsync."""
        if self._pending:
            batch = events_batch(self._pending)
            self._writer.write_batch(batch)
            self.events_written += len(self._pending)
            self._pending = []
        self._sync()
        self._last_flush = time.monotonic()

    def write_batch(self, batch: pa.RecordBatch) -> None:
        """Append events that are already columns (tools that rewrite recordings); flushes."""
        self.flush()
        self._writer.write_batch(
            batch.cast(EVENT_SCHEMA) if batch.schema != EVENT_SCHEMA else batch
        )
        self.events_written += batch.num_rows
        self._sync()

    def close(self, end: Mapping[str, Any] | None = None) -> None:
        """Flush, append the ``end`` event (a clean end) and close; a clean end also
        compacts the file (module docstring). Idempotent."""
        if self._file.closed:
            return
        if end is not None:
            self._pending.append(
                {"kind": "end", "ts_ns": time.monotonic_ns(), "attrs": json.dumps(dict(end))}
            )
        self.flush()
        self._writer.close()
        self._file.close()
        if end is not None:
            compact(self.path)

    def _sync(self) -> None:
        self._file.flush()
        os.fsync(self._file.fileno())

    def __enter__(self) -> RecordingWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


COMPACT_ROWS: Final = 65_536
COMPRESSION: Final = "lz4"
"""lz4, not zstd: a 10,000-pod recording (1.8 GB of columns) reads in 1.3-2.0 s instead of
5.3-9.8 s for 1.6x the file size."""


def compact(path: Path) -> None:
    """Rewrite a recording in batches of COMPACT_ROWS events, lz4-compressed, in place
    (through a temporary file renamed over it); the events and header stay the same."""
    tmp = path.with_name(path.name + ".compact")
    try:
        reader = ipc.open_stream(pa.memory_map(str(path)))
        with os.fdopen(_create_private(tmp), "wb") as f:
            options = ipc.IpcWriteOptions(compression=COMPRESSION)
            with ipc.new_stream(f, reader.schema, options=options) as writer:
                pending: list[pa.RecordBatch] = []
                rows = 0
                for batch in reader:
                    pending.append(batch)
                    rows += batch.num_rows
                    if rows >= COMPACT_ROWS:
                        _write_combined(writer, pending)
                        pending, rows = [], 0
                _write_combined(writer, pending)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except (OSError, pa.ArrowException) as exc:
        tmp.unlink(missing_ok=True)
        raise RecordingError(f"{path}: recorded, but compacting it failed: {exc}") from exc


def _write_combined(writer: ipc.RecordBatchStreamWriter, batches: list[pa.RecordBatch]) -> None:
    if batches:
        table = pa.Table.from_batches(batches).combine_chunks()
        writer.write_table(table, max_chunksize=max(COMPACT_ROWS, table.num_rows))


@dataclass(frozen=True)
class Recording:
    path: Path
    header: RecordingHeader
    table: pa.Table
    complete: bool
    """True when the recorder closed the file cleanly (an ``end`` event is present)."""
    truncated: bool
    """True when the file ends inside a batch (e.g. the recorder was killed mid-write)."""
    end: Mapping[str, Any]

    def frame(self) -> Any:
        """The events as a pandas DataFrame with nullable Arrow-backed columns."""
        import pandas as pd

        return self.table.to_pandas(types_mapper=pd.ArrowDtype)


TABLE_POOL = pa.system_memory_pool()
"""Where a read table's buffers live: the C library's malloc, in ordinary pages. Arrow's
default pool (mimalloc) asks for transparent huge pages, which this project's VM hands out at
about 3 s per GB against 0.6 s in 4 KiB pages: reading 10,000 pods took 3.5 s that way and
0.9 s this way, and the whole ``analyze`` peaked 0.4 GB lower (docs/analyze.md). The
analysis' own Arrow work stays in the default pool, which is faster for it."""


def read_recording(path: str | os.PathLike[str], skip: Collection[str] = ()) -> Recording:
    """Open a recording, tolerating a cut-off tail; raise RecordingError on anything else.
    The columns named in ``skip`` are not read, nor checked: the table has the others only,
    checked against the format's schema (a column read is decompressed into fresh memory,
    which on a VM costs more than the decompression: docs/analyze.md)."""
    p = Path(path)
    try:
        size = p.stat().st_size
        source = pa.memory_map(str(p))
    except FileNotFoundError:
        raise RecordingError(f"{p}: no such file") from None
    except IsADirectoryError:
        raise RecordingError(f"{p}: is a directory, not a recording") from None
    except OSError as exc:
        raise RecordingError(f"{p}: cannot open: {exc.strerror or exc}") from None
    if size == 0:
        raise RecordingError(f"{p}: empty file, not a recording")
    try:
        reader = ipc.open_stream(source, options=_options(source, skip), memory_pool=TABLE_POOL)
    except (pa.ArrowInvalid, pa.ArrowException, OSError, UnicodeDecodeError) as exc:
        hint = " (an Arrow *file*, not a startprof stream)" if _is_arrow_file(p) else ""
        raise RecordingError(f"{p}: not a startprof recording{hint}: {_first_line(exc)}") from None
    metadata = reader.schema.metadata or {}
    if META_KEY not in metadata:
        raise RecordingError(f"{p}: an Arrow stream, but not a startprof recording")
    header = RecordingHeader.from_json(metadata[META_KEY], p)
    expected = pa.schema([f for f in EVENT_SCHEMA if f.name not in skip])
    if not reader.schema.equals(expected, check_metadata=False):
        raise RecordingError(f"{p}: recording columns do not match format {header.format_version}")

    batches: list[pa.RecordBatch] = []
    truncated = False
    while True:
        try:
            batch = reader.read_next_batch()
            # A damaged batch can be well-framed yet point outside its buffers; reading its
            # columns would then crash the process, not raise. Keep what precedes it.
            batch.validate(full=True)
        except StopIteration:
            break
        except (pa.ArrowInvalid, pa.ArrowException, OSError):
            truncated = True
            break
        batches.append(batch)
    table = pa.Table.from_batches(batches, schema=reader.schema)
    end = _end_attrs(table)
    return Recording(p, header, table, end is not None, truncated, end or {})


def _options(source: pa.MemoryMappedFile, skip: Collection[str]) -> ipc.IpcReadOptions | None:
    """Read options that leave out the ``skip`` columns (None: read them all). Naming the
    columns decodes them: a damaged name raises UnicodeDecodeError, a damaged file."""
    if not skip:
        return None
    names = ipc.open_stream(source).schema.names
    source.seek(0)
    return ipc.IpcReadOptions(included_fields=[i for i, n in enumerate(names) if n not in skip])


def _end_attrs(table: pa.Table) -> dict[str, Any] | None:
    if table.num_rows == 0:
        return None
    kinds = table.column("kind")
    last = table.num_rows - 1
    if kinds[last].as_py() != "end":
        return None
    return attrs_of(table.column("attrs")[last].as_py())


def _is_arrow_file(path: Path) -> bool:
    with path.open("rb") as f:
        return f.read(6) == b"ARROW1"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def events_frame(events: Sequence[Event]) -> Any:
    """Events as the DataFrame ``Recording.frame()`` gives for the same events in a file: the
    agent analyses what it holds in memory exactly as ``analyze`` would read it back."""
    import pandas as pd

    table = pa.Table.from_batches([events_batch(events)], schema=EVENT_SCHEMA)
    return table.to_pandas(types_mapper=pd.ArrowDtype)
