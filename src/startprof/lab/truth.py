"""CRI ground truth: one JSON line per CRI call the lab driver made.

The profiler's pod attribution and phase timings are checked against these lines. Times are
taken right around each gRPC call: ``*_monotonic_ns`` with ``time.monotonic_ns()``, which is
CLOCK_MONOTONIC like ``bpf_ktime_get_ns()``, so they compare directly with kernel timestamps;
``*_wall_ns`` with ``time.time_ns()``.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO, Any

from startprof.errors import InputError

# The exact key set of a truth line (issue 3). Order is the order written.
TRUTH_KEYS: tuple[str, ...] = (
    "pod",
    "namespace",
    "uid",
    "sandbox_id",
    "container",
    "container_id",
    "method",
    "start_monotonic_ns",
    "end_monotonic_ns",
    "start_wall_ns",
    "end_wall_ns",
    "status",
    "error",
)
_INT_KEYS = frozenset(k for k in TRUTH_KEYS if k.endswith("_ns"))
STATUS_OK = "ok"


def validate_record(record: object, where: str) -> dict[str, Any]:
    """Check one parsed line; raise :class:`InputError` naming ``where`` (file:line)."""
    if not isinstance(record, dict):
        raise InputError(f"{where}: a truth line must be a JSON object")
    keys = set(record)
    missing = [k for k in TRUTH_KEYS if k not in keys]
    if missing:
        raise InputError(f"{where}: missing key(s) {', '.join(missing)}")
    extra = sorted(keys - set(TRUTH_KEYS))
    if extra:
        raise InputError(f"{where}: unknown key(s) {', '.join(extra)}")
    for k in TRUTH_KEYS:
        value = record[k]
        if k in _INT_KEYS:
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise InputError(f"{where}: {k} must be a non-negative integer, got {value!r}")
        elif not isinstance(value, str):
            raise InputError(f"{where}: {k} must be a string, got {value!r}")
    if not record["method"].startswith("/"):
        raise InputError(f"{where}: method must be a full gRPC method, got {record['method']!r}")
    if record["end_monotonic_ns"] < record["start_monotonic_ns"]:
        raise InputError(f"{where}: end_monotonic_ns is before start_monotonic_ns")
    return record


def read_json_lines(
    path: str | Path, noun: str, validate: Callable[[object, str], dict[str, Any]]
) -> list[dict[str, Any]]:
    """All records of a JSON-lines file the lab wrote (``noun`` names it in errors), in file
    order, each checked by ``validate(record, "file:line")``. Blank lines are skipped; a damaged
    line is one :class:`InputError` naming ``file:line``."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise InputError(f"cannot read {noun} {p}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise InputError(f"{p}: not a {noun} (not UTF-8 at byte {exc.start})") from exc
    records = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            parsed = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InputError(f"{p}:{n}: not JSON: {exc.msg}") from exc
        records.append(validate(parsed, f"{p}:{n}"))
    return records


def read_truth(path: str | Path) -> list[dict[str, Any]]:
    """All records of a truth file, in file order. Blank lines are skipped."""
    return read_json_lines(path, "truth file", validate_record)


class TruthWriter:
    """Appends records to one or more JSONL files; safe to call from many driver threads."""

    def __init__(self, paths: Iterable[Path]) -> None:
        self._lock = threading.Lock()
        self._files: list[IO[str]] = []
        for p in dict.fromkeys(Path(x) for x in paths):
            p.parent.mkdir(parents=True, exist_ok=True)
            self._files.append(p.open("a", encoding="utf-8"))

    def write(self, record: dict[str, Any]) -> None:
        line = json.dumps({k: record[k] for k in TRUTH_KEYS}, separators=(",", ":")) + "\n"
        with self._lock:
            for f in self._files:
                f.write(line)
                # Flushed per line: a run that is interrupted keeps every finished call.
                f.flush()

    def close(self) -> None:
        with self._lock:
            for f in self._files:
                f.close()
            self._files.clear()

    def __enter__(self) -> TruthWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
