"""Recording files in, analysis out: the one place that joins the file format to the analysis."""

from __future__ import annotations

import os
from collections.abc import Sequence

from startprof.analysis import Source, analyze
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


def _last_drops(rec: Recording) -> int:
    kinds = rec.table.column("kind").to_pylist()
    rets = rec.table.column("ret").to_pylist()
    found = [r for k, r in zip(kinds, rets, strict=True) if k == "drops" and r is not None]
    return int(found[-1]) if found else 0


def analyze_files(paths: Sequence[str | os.PathLike[str]]) -> Analysis:
    """The analysis of the recordings. A damaged file is a RecordingError; anything the
    analysis raises is a bug, reported as one InternalError naming the file it failed on."""
    if not paths:
        raise InputError("no recording given")
    sources = [read_source(p) for p in paths]
    try:
        return analyze(sources)
    except Exception as exc:
        culprit = _culprit(sources) if len(sources) > 1 else sources[0]
        name = culprit.name if culprit is not None else ", ".join(s.name for s in sources)
        raise InternalError.of(f"{name}: analysis", exc) from exc


def _culprit(sources: Sequence[Source]) -> Source | None:
    """The first source the analysis fails on alone (merging is not what failed otherwise)."""
    for src in sources:
        try:
            analyze([src])
        except Exception:
            return src
    return None
