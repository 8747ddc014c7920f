"""Several recordings analysed at once (``analyze_files(jobs=N)``): the same analysis as one by
one, the same one-line errors, and no worker process left behind."""

from __future__ import annotations

import multiprocessing
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from startprof import pipeline
from startprof.analysis import parts
from startprof.cli import main
from startprof.errors import EnvironmentProblem, RecordingError
from startprof.pipeline import analyze_files
from startprof.reporters import json as json_reporter

DATA = Path(__file__).resolve().parent.parent / "data" / "recordings"
FILES = [DATA / "runc-bridge.arrows", DATA / "crun-bridge.arrows", DATA / "multi-container.arrows"]


def test_workers_give_the_analysis_of_one_process() -> None:
    one = analyze_files(FILES, jobs=1)
    several = analyze_files(FILES, jobs=3)
    assert several == one
    assert json_reporter.dumps_bytes(several) == json_reporter.dumps_bytes(one)
    assert several.recording.files == tuple(str(f) for f in FILES)
    assert not multiprocessing.active_children()


def test_a_later_file_still_wins_on_duplicates() -> None:
    files = [DATA / "runc-bridge.arrows", DATA / "runc-bridge.arrows"]
    assert analyze_files(files, jobs=2) == analyze_files(files, jobs=1)
    assert len(analyze_files(files, jobs=2).pods) == 2


def test_jobs_default_to_the_cpus_and_never_exceed_the_files() -> None:
    cpus = len(os.sched_getaffinity(0))
    assert pipeline.default_jobs(1) == 1
    assert pipeline.default_jobs(100) == cpus
    assert pipeline.default_jobs(0) == 1


def test_a_damaged_file_fails_as_it_does_in_one_process(tmp_path: Path) -> None:
    damaged = tmp_path / "damaged.arrows"
    damaged.write_bytes(b"STARTPROF" + bytes(range(256)) * 4)
    errors = []
    for jobs in (1, 2):
        with pytest.raises(RecordingError) as caught:
            analyze_files([FILES[1], damaged], jobs=jobs)
        errors.append(str(caught.value))
    assert errors[0] == errors[1] and str(damaged) in errors[0]
    assert not multiprocessing.active_children()


def test_a_damaged_file_last_stops_the_work_and_is_the_error(tmp_path: Path) -> None:
    """This process takes files from the back: the damaged last file fails first, no file is
    begun after it, and its error is the command's, without waiting for files never begun."""
    damaged = tmp_path / "damaged.arrows"
    damaged.write_bytes(b"STARTPROF" + bytes(range(256)) * 4)
    files = [*FILES, *FILES, damaged]
    with pytest.raises(RecordingError, match=r"damaged\.arrows"):
        analyze_files(files, jobs=2)
    assert not multiprocessing.active_children()


def test_a_bug_in_a_worker_names_its_file(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = str(FILES[1])
    read = pipeline.read_source

    def fails_on_one(path: str) -> object:
        if str(path) == bad:
            raise ValueError("boom")
        return read(path)

    monkeypatch.setattr("startprof.pipeline.read_source", fails_on_one)  # inherited by the fork
    assert main(["analyze", "--jobs", "2", str(FILES[0]), bad]) == 70
    assert capsys.readouterr().err.startswith(f"startprof: {bad}: analysis failed (ValueError")
    assert not multiprocessing.active_children()


def killed(path: str, folder: str) -> object:
    """A worker's end as the kernel's OOM killer leaves it (at module level: the pool pickles
    the function it runs by name)."""
    os._exit(137)


def test_a_worker_that_dies_is_one_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("startprof.pipeline._part_of_file", killed)
    with pytest.raises(EnvironmentProblem, match="worker process died"):
        analyze_files(FILES[:2], jobs=2)
    assert not multiprocessing.active_children()


def test_a_full_temporary_directory_is_one_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker hands its pods back through a file in $TMPDIR; a full disk there is the
    machine's problem, said in one line with its way out, not a bug."""

    def full(*args: object, **kwargs: object) -> object:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("startprof.pipeline.tempfile.mkstemp", full)  # inherited by the fork
    with pytest.raises(EnvironmentProblem, match="No space left on device") as caught:
        analyze_files(FILES[:2], jobs=2)
    assert "--jobs 1" in str(caught.value.fix)
    assert not multiprocessing.active_children()


def test_jobs_must_be_positive(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["analyze", "--jobs", "0", str(FILES[0])]) == 2
    assert "--jobs" in capsys.readouterr().err


@pytest.mark.parametrize("path", sorted(DATA.glob("*.arrows")), ids=lambda p: p.stem)
def test_every_stored_analysis_survives_the_trip_from_a_worker(path: Path) -> None:
    """What a worker hands back (pickled pods, their phases and critical paths) is what it
    built, field for field."""
    analysis = analyze_files([path])
    back = pickle.loads(pickle.dumps(analysis.pods, protocol=pickle.HIGHEST_PROTOCOL))
    assert back == analysis.pods
    assert [p.phases for p in back] == [p.phases for p in analysis.pods]
    # a worker's part, its pods packed as columns (model.pack_pods)
    part = next(parts(pipeline.read_source(path) for _ in range(1)))
    again = pickle.loads(pickle.dumps(part, protocol=pickle.HIGHEST_PROTOCOL))
    assert again == part
    assert [p.phases for p in again.pods] == [p.phases for p in part.pods]
    assert [p.critical_path for p in again.pods] == [p.critical_path for p in part.pods]
    assert [p.on_critical_path for pod in again.pods for p in pod.phases] == [
        p.on_critical_path for pod in part.pods for p in pod.phases
    ]


def test_ctrl_c_stops_the_command_and_its_workers() -> None:
    """Ctrl-C reaches the terminal's whole process group: the command and its workers."""
    files = [str(f) for f in sorted(DATA.glob("*.arrows"))] * 8  # a few seconds of work
    command = [sys.executable, "-m", "startprof", "analyze", "--jobs", "2", *files]
    proc = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True
    )
    deadline = time.monotonic() + 20
    while not _children(proc.pid) and time.monotonic() < deadline:  # the workers are at work
        time.sleep(0.05)
    assert proc.poll() is None, "finished before it could be interrupted"
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130 and b"interrupted" in err
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            os.killpg(proc.pid, 0)  # anyone left in its process group?
        except ProcessLookupError:
            return
        time.sleep(0.05)
    pytest.fail("a worker outlived the interrupted command")


def _children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (from /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found
