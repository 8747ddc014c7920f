"""Recording files in, analysis out: the one place that joins the file format to the analysis."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence

from startprof.analysis import Source, analyze, failed_source, note_source
from startprof.analysis.model import Analysis
from startprof.errors import InputError, InternalError
from startprof.recording import Recording, read_recording

UNREAD = frozenset(
    [
        "address",
        "argv_truncated",
        "cgroup_id",
        "data",
        "direction",
        "fd",
        "netns_target",
        "nl_flags",
        "old_comm",
        "stream_id",
    ]
)
"""The recording's columns the analysis never reads (the socket probe's raw bytes and stream,
the argv cut-off flag, the cgroup id, netlink flags, ...): 17% of a 10,000-pod recording's
1.8 GB, left compressed."""


def source_of(rec: Recording) -> Source:
    end = rec.end.get("end_monotonic_ns") if rec.complete else None
    drops = int(rec.end.get("drops", 0)) if rec.complete else _last_drops(rec)
    return Source(
        name=str(rec.path),
        host=rec.header.host,
        kernel=rec.header.kernel,
        clock_offset_ns=rec.header.clock_offset_ns,
        start_monotonic_ns=rec.header.start_monotonic_ns,
        end_monotonic_ns=None if end is None else int(end),
        drops=drops,
        complete=rec.complete,
        events=rec.frame(),
    )


def read_source(path: str | os.PathLike[str]) -> Source:
    """The recording at ``path`` as the analysis needs it (its unread columns left out)."""
    return source_of(read_recording(path, skip=UNREAD))


def _each_source(paths: Sequence[str | os.PathLike[str]]) -> Iterator[Source]:
    """Each file's source in turn; a bug while reading one names that file (``failed_source``)."""
    for path in paths:
        try:
            # yielded, not bound to a name: a local would hold the events until the next file
            yield read_source(path)
        except InputError:
            raise
        except Exception as exc:
            note_source(exc, str(path))
            raise


def _last_drops(rec: Recording) -> int:
    kinds = rec.table.column("kind").to_pylist()
    rets = rec.table.column("ret").to_pylist()
    found = [r for k, r in zip(kinds, rets, strict=True) if k == "drops" and r is not None]
    return int(found[-1]) if found else 0


def analyze_files(paths: Sequence[str | os.PathLike[str]]) -> Analysis:
    """The analysis of the recordings, each read when its turn comes: only one file's events
    are in memory at a time (a rollout's files from 100 nodes merge in the memory of one).
    A damaged file is a RecordingError; anything the analysis raises is a bug, reported as one
    InternalError naming the file it failed on."""
    if not paths:
        raise InputError("no recording given")
    try:
        return analyze(_each_source(paths))
    except InputError:  # a damaged or missing file (RecordingError): one line, exit 2
        raise
    except Exception as exc:
        name = failed_source(exc) or ", ".join(str(p) for p in paths)
        raise InternalError.of(f"{name}: analysis", exc) from exc
