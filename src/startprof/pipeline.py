"""Recording files in, analysis out: the one place that joins the file format to the analysis."""

from __future__ import annotations

import multiprocessing
import os
import pickle
import tempfile
from collections.abc import Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
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
    except (InputError, EnvironmentProblem):  # a damaged file, a full disk: one line
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
    """Each file's part, in the order of ``paths``, analysed by this process and ``workers - 1``
    forked ones, a file at a time each: the workers take files from the front, this process
    from the back, until they meet. A part analysed here is neither pickled nor sent (a
    worker's pods cost 0.1 ms each to pickle and 0.09 ms to load). Forked before any file is
    read, so each worker starts with the modules loaded and no events. An error is raised
    when its file's turn comes, as in one process; no file is begun after one, and if an
    earlier file was not begun yet, the first error among those analysed is raised. An
    interrupt stops the workers."""
    helpers = workers - 1
    folder = tempfile.TemporaryDirectory(prefix="startprof-parts-")
    pool = ProcessPoolExecutor(helpers, mp_context=multiprocessing.get_context("fork"))
    done: dict[int, Part | Exception] = {}
    running: dict[Future[str], int] = {}  # a worker hands back the name of its part's file
    front, back, turn = 0, len(paths), 0  # paths[front:back] not begun; ``turn`` yields next
    try:
        while turn < len(paths):
            # each worker has a file, and a second one queued behind it as long as one is left
            # for this process too: a worker never waits for this one to hand it the next
            while front < back and (
                len(running) < helpers or (len(running) < 2 * helpers and front < back - 1)
            ):
                running[pool.submit(_part_of_file, paths[front], folder.name)] = front
                front += 1
            if front < back:
                back -= 1
                try:
                    done[back] = next(parts(_each_source([paths[back]])))
                except Exception as exc:
                    done[back] = exc
                    back = front  # begin no other file here
            elif turn not in done and running:
                wait(running, return_when=FIRST_COMPLETED)
            elif turn not in done:  # never begun: a later file failed first
                raise next(e for _, e in sorted(done.items()) if isinstance(e, Exception))
            for future in [f for f in running if f.done()]:
                at = running.pop(future)
                try:
                    done[at] = _load_part(future.result())
                except OSError as exc:  # the temporary directory: full, or gone
                    done[at] = EnvironmentProblem(
                        f"an analysis worker could not hand back its pods through "
                        f"{folder.name}: {exc.strerror or exc}",
                        fix="free space in the temporary directory ($TMPDIR), or rerun with "
                        "--jobs 1",
                    )
                    back = front
                except Exception as exc:
                    done[at] = exc
                    back = front
            while turn in done:
                found = done.pop(turn)
                if isinstance(found, Exception):
                    raise found
                yield found
                turn += 1
    except BaseException as exc:
        if not isinstance(exc, Exception):  # KeyboardInterrupt, SystemExit, a closed generator
            for child in multiprocessing.active_children():
                child.terminate()
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        folder.cleanup()


def _part_of_file(path: str, folder: str) -> str:
    """One file's part, in a worker process (``_worker_parts``), pickled to a file in
    ``folder``; returns its name. Not through the pool's pipe: a worker writing the 11 MB of
    a 1,000-pod part there waits until this process's main thread, busy with a file of its
    own, lets the pool's thread read each 64 KB (1.6 s idle per file, measured)."""
    with without_cycle_collection():  # pickled before the collector can walk the part
        part = next(parts(_each_source([path])))
        fd, name = tempfile.mkstemp(suffix=".part", dir=folder)
        with os.fdopen(fd, "wb") as out:
            pickle.dump(part, out, protocol=pickle.HIGHEST_PROTOCOL)
    return name


def _load_part(name: str) -> Part:
    """The part a worker pickled to ``name``, which is then removed."""
    with open(name, "rb") as found:
        part = pickle.load(found)
    os.unlink(name)
    if not isinstance(part, Part):
        raise TypeError(f"{name}: a worker handed back {type(part).__name__}, not a Part")
    return part
