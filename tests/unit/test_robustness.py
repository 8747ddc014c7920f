"""Robustness as a property (issue 14): no stored recording, and no damaged copy of one, makes
`analyze --json`, `report` or any `export` raise.

Every real recording in tests/data/recordings is taken as it is, with each event kind it holds
removed, with each probe missing (its events gone and its name off the header, as a recorder
run without it would leave it), and cut at random byte offsets (a recorder killed mid-write,
a file copied half-way). Each variant goes through every command, in-process through the
real CLI entry point. A command either succeeds or says what is wrong in one line and exits 2
(a file it cannot read, nothing to export); an internal error (exit 70) fails the test with the
file it failed on. Each analysis that succeeds must also keep the phase tree's invariants.

The commands share one analysis per variant (``analyze_files`` is memoized per variant), and
the variants are checked on every CPU at once; the count of combinations is printed with -s.
"""

from __future__ import annotations

import contextlib
import io
import json
import multiprocessing
import os
import random
import tempfile
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.ipc as ipc
import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from startprof import pipeline
from startprof.analysis.image_steps import IMAGE_KINDS
from startprof.analysis.model import Analysis
from startprof.analysis.runtime_steps import RUNTIME_OP_KINDS
from startprof.cli import main
from startprof.errors import InternalError
from startprof.exporters import otlp
from startprof.recording import META_KEY

DATA = Path(__file__).parent.parent / "data" / "recordings"
RECORDINGS = sorted(DATA.glob("*.arrows"))
PROBE_KINDS = {
    # which events each probe yields (startprof.events.KINDS, by its comments)
    "exec": ("exec", "exec_ret", "exec_done", "fork", "exit_group", "exit"),
    "namespaces": ("clone", "unshare", "setns"),
    "netlink": ("nl_socket", "nl_send", "nl_ack"),
    "cri": ("cri_accept", "cri_data", "cri_call"),
    "runtime": (*RUNTIME_OP_KINDS, "rename"),
    "image": IMAGE_KINDS,
}
CUTS = 3
UNREAD = frozenset({"cri_accept", "cri_data", "nl_socket", "clone", "exec_ret", "note"})
"""Kinds the analysis never reads (the recorder decodes CRI bytes into cri_call; netlink work
is read from sends and acks): removing one alone changes nothing, so only their probe's removal
is run."""
COMMANDS = ("analyze", "report", "jaeger", "perfetto", "otlp")


def _table(path: Path) -> tuple[pa.Schema, pa.Table]:
    reader = ipc.open_stream(str(path))
    return reader.schema, reader.read_all()


def _write(out: Path, schema: pa.Schema, table: pa.Table) -> None:
    with ipc.new_stream(str(out), schema) as writer:
        writer.write_table(table)


def _without(kinds: tuple[str, ...], probe: str | None = None) -> Callable[[Path, Path], None]:
    def make(src: Path, out: Path) -> None:
        schema, table = _table(src)
        keep = pc.invert(pc.is_in(table.column("kind"), value_set=pa.array(kinds)))
        if probe is not None:
            meta = dict(schema.metadata)
            header = json.loads(meta[META_KEY])
            header["probes"] = [p for p in header.get("probes", []) if p != probe]
            meta[META_KEY] = json.dumps(header).encode()
            schema = schema.with_metadata(meta)
        _write(out, schema, table.filter(pc.fill_null(keep, True)))

    return make


def _cut(at: int) -> Callable[[Path, Path], None]:
    def make(src: Path, out: Path) -> None:
        out.write_bytes(src.read_bytes()[:at])

    return make


def variants(path: Path) -> list[tuple[str, Callable[[Path, Path], None]]]:
    """(label, maker) for every damaged copy of one recording."""
    _, table = _table(path)
    kinds = sorted(set(table.column("kind").to_pylist()) - {None})
    out: list[tuple[str, Callable[[Path, Path], None]]] = [("as-is", _cut(path.stat().st_size))]
    out += [(f"no-{kind}", _without((kind,))) for kind in kinds if kind not in UNREAD]
    out += [(f"no-probe-{name}", _without(k, name)) for name, k in PROBE_KINDS.items()]
    rng = random.Random(path.name)  # the same cuts every run
    size = path.stat().st_size
    out += [(f"cut-{at}", _cut(at)) for at in sorted(rng.sample(range(1, size), CUTS))]
    return out


CASES = [(rec, label, make) for rec in RECORDINGS for label, make in variants(rec)]


def run(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


def argv_of(command: str, path: Path, tmp: Path) -> list[str]:
    return {
        "analyze": ["analyze", "--json", str(path)],
        "report": ["report", str(path), "-o", str(tmp / "r.html")],
        "jaeger": ["export", str(path), "--jaeger-json", str(tmp / "j.json")],
        "perfetto": ["export", str(path), "--perfetto", str(tmp / "p.json")],
        "otlp": ["export", str(path), "--otlp", "http://127.0.0.1:1"],
    }[command]


def invariant_problems(analysis: Analysis) -> list[str]:
    problems = []
    for pod in analysis.pods:
        by_id = {p.id: p for p in pod.phases}
        if len(by_id) != len(pod.phases):
            problems.append(f"{pod.sandbox_id[:12]}: duplicate phase ids")
        if pod.phases[0].name != "pod":
            problems.append(f"{pod.sandbox_id[:12]}: first phase is {pod.phases[0].name}")
        for p in pod.phases[1:]:
            parent = by_id.get(p.parent_id or "")
            if parent is None or not parent.start_ns <= p.start_ns <= p.end_ns <= parent.end_ns:
                problems.append(f"{pod.sandbox_id[:12]}: {p.id} outside its parent")
        total = sum(s.self_ns for s in pod.critical_path)
        if pod.critical_path and abs(total - pod.duration_ns) > 100_000:
            problems.append(f"{pod.sandbox_id[:12]}: critical path {total} != {pod.duration_ns}")
    return problems


def check_variant(case: int) -> list[str]:
    """Every command on one variant; the problems found (none: the property holds)."""
    recording, label, make = CASES[case]
    seen: dict[str, Analysis | BaseException] = {}
    original = pipeline.analyze_files

    def cached(paths: list[str | Path], jobs: int | None = None) -> Analysis:
        key = "\0".join(str(p) for p in paths)
        if key not in seen:
            try:
                seen[key] = original(paths, jobs)
            except BaseException as exc:  # replayed for every command, as each would meet it
                seen[key] = exc
        found = seen[key]
        if isinstance(found, BaseException):
            raise found
        return found

    problems: list[str] = []
    with tempfile.TemporaryDirectory() as tmp, pytest.MonkeyPatch.context() as mp:
        mp.setattr(pipeline, "analyze_files", cached)
        mp.setattr(otlp, "make_span_exporter", lambda *a, **k: InMemorySpanExporter())
        path = Path(tmp) / f"{recording.stem}-{label}.arrows"
        make(recording, path)
        for command in COMMANDS:
            code, out, err = run(argv_of(command, path, Path(tmp)))
            lines = err.splitlines()
            if code == InternalError.exit_code or "Traceback" in err:
                problems.append(f"{command}: {err.strip()}")
            elif code == 2 and not (len(lines) == 1 and lines[0].startswith("startprof: ")):
                problems.append(f"{command}: exit 2 without one clear line: {err!r}")
            elif code not in (0, 2):
                problems.append(f"{command}: exit {code}: {err.strip()}")
            elif code == 0 and command == "analyze":
                json.loads(out)
        found = seen.get(str(path))
        if isinstance(found, Analysis):
            problems += invariant_problems(found)
    return problems


@pytest.fixture(scope="module")
def results() -> dict[int, list[str]]:
    """Every variant checked once, on every CPU: the property is the slowest unit test."""
    workers = max(1, min(len(os.sched_getaffinity(0)), 4))
    context = multiprocessing.get_context("fork")
    with ProcessPoolExecutor(workers, mp_context=context) as pool:
        found = pool.map(check_variant, range(len(CASES)), chunksize=4)
        return dict(enumerate(found))


@pytest.mark.parametrize(
    "case", range(len(CASES)), ids=[f"{r.stem}-{label}" for r, label, _ in CASES]
)
def test_no_command_raises_on_any_variant(case: int, results: dict[int, list[str]]) -> None:
    recording, label, _ = CASES[case]
    assert results[case] == [], f"{recording.stem} {label}"


def test_the_property_covers_every_recording_and_mutation() -> None:
    """How many combinations the property runs (recordings x variants x commands)."""
    assert len(RECORDINGS) >= 6
    per_recording = {rec.stem: sum(1 for r, _, _ in CASES if r == rec) for rec in RECORDINGS}
    assert all(n >= 1 + len(PROBE_KINDS) + CUTS for n in per_recording.values())
    assert len(CASES) >= 10 * len(RECORDINGS)
    print(
        f"\n{len(RECORDINGS)} recordings, {len(CASES)} variants, "
        f"{len(CASES) * len(COMMANDS)} command runs"
    )


def _good() -> Path:
    return DATA / "runc-bridge.arrows"


def test_an_internal_error_is_one_line_naming_the_file(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A bug inside the analysis: one line naming the file, exit 70; --debug adds the
    traceback."""

    def broken(*_: object, **__: object) -> None:
        raise ZeroDivisionError("division by zero")

    monkeypatch.setattr("startprof.pipeline.merge", broken)
    assert main(["analyze", str(_good())]) == 70
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert err.startswith(f"startprof: {_good()}: analysis failed (ZeroDivisionError")
    assert "--debug" in err and "Traceback" not in err
    assert main(["--debug", "analyze", str(_good())]) == 70
    err = capsys.readouterr().err
    assert "Traceback" in err and "ZeroDivisionError" in err
    assert err.splitlines()[-1].startswith("startprof: ")


def test_an_internal_error_of_several_files_names_the_one_it_failed_on(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from startprof import analysis as real

    bad = str(DATA / "crun-bridge.arrows")
    prepare = real._prepare

    def fails_on_one(src: real.Source) -> object:
        if src.name == bad:
            raise KeyError("boom")
        return prepare(src)

    monkeypatch.setattr("startprof.analysis._prepare", fails_on_one)
    assert main(["analyze", str(_good()), bad]) == 70
    assert capsys.readouterr().err.startswith(f"startprof: {bad}: analysis failed (KeyError")


def test_a_bug_while_reading_one_of_several_files_names_it(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from startprof import pipeline

    bad = str(DATA / "crun-bridge.arrows")
    read = pipeline.read_source

    def fails_on_one(path: str) -> object:
        if str(path) == bad:
            raise ValueError("boom")
        return read(path)

    monkeypatch.setattr("startprof.pipeline.read_source", fails_on_one)
    assert main(["analyze", str(_good()), bad]) == 70
    assert capsys.readouterr().err.startswith(f"startprof: {bad}: analysis failed (ValueError")


def test_each_file_is_released_before_its_pods_are_built(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Merging many files holds one file's events at a time: each frame is gone (no cycle
    collection needed) by the time that file's pods are built."""
    import weakref

    from startprof import analysis as real
    from startprof import pipeline

    frames: list[weakref.ref[object]] = []
    alive: list[list[bool]] = []
    read, build = pipeline.read_source, real.build_prepared

    def reading(path: str) -> real.Source:
        src = read(path)
        frames.append(weakref.ref(src.events))
        return src

    def building(*args: object, **kwargs: object) -> object:
        alive.append([f() is not None for f in frames])
        return build(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr("startprof.pipeline.read_source", reading)
    monkeypatch.setattr("startprof.analysis.build_prepared", building)
    # in this process (jobs=1): a worker's frames would be out of the weak references' sight
    merged = pipeline.analyze_files([_good(), DATA / "crun-bridge.arrows"], jobs=1)
    assert alive == [[False], [False, False]]
    assert len(merged.recording.files) == 2 and merged.pods
