"""Recording files in, analysis out: the one place that joins the file format to the analysis."""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

from startprof.analysis import (
    Part,
    Source,
    failed_source,
    merge,
    note_source,
    parts,
    without_cycle_collection,
)
from startprof.analysis.model import Analysis
from startprof.errors import EnvironmentProblem, InputError, InternalError
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


def default_jobs(files: int) -> int:
    """How many files ``analyze_files`` analyses at once unless told: one per CPU this process
    may run on, at most one per file."""
    return max(1, min(len(os.sched_getaffinity(0)), files))


def analyze_files(paths: Sequence[str | os.PathLike[str]], jobs: int | None = None) -> Analysis:
    """The analysis of the recordings, each read when its turn comes: only one file's events
    are in memory at a time in each process (a rollout's files from 100 nodes merge in the
    memory of one pod list).

    ``jobs``: how many files are analysed at once, each by a worker process that hands back
    its pods (``default_jobs``); with 1, or one file, they are analysed one by one in this
    process. The result is the same either way: parts are merged in the order of ``paths``.

    A damaged file is a RecordingError; anything the analysis raises is a bug, reported as one
    InternalError naming the file it failed on."""
    if not paths:
        raise InputError("no recording given")
    workers = default_jobs(len(paths)) if jobs is None else max(1, min(jobs, len(paths)))
    if workers == 1:
        found = parts(_each_source(paths))
    else:
        found = _worker_parts([str(p) for p in paths], workers)
    try:
        with without_cycle_collection():
            return merge(found)
    except InputError:  # a damaged or missing file (RecordingError): one line, exit 2
        raise
    except BrokenProcessPool as exc:
        raise EnvironmentProblem(
            "an analysis worker process died (killed, e.g. for lack of memory)",
            fix="rerun with --jobs 1 to analyse one file at a time in one process",
        ) from exc
    except Exception as exc:
        name = failed_source(exc) or ", ".join(str(p) for p in paths)
        raise InternalError.of(f"{name}: analysis", exc) from exc


def _worker_parts(paths: list[str], workers: int) -> Iterator[Part]:
    """Each file's part, analysed by ``workers`` processes, in the order of ``paths``. Forked
    before any file is read, so each starts with the modules loaded and no events; an error
    cancels the files not begun yet, and an interrupt stops the workers."""
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"))
    try:
        yield from pool.map(_part_of_file, paths)
    except BaseException as exc:
        if not isinstance(exc, Exception):  # KeyboardInterrupt, SystemExit, a closed generator
            for child in multiprocessing.active_children():
                child.terminate()
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _part_of_file(path: str) -> Part:
    """One file's part, in a worker process (``_worker_parts``)."""
    with without_cycle_collection():
        return next(parts(_each_source([path])))
