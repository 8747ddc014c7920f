"""`analyze --json` is written by orjson: the same bytes as ``json.dumps`` for every stored
recording, and where the two writers differ (non-ASCII, NaN, huge integers) the same JSON
values or the stdlib's document."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import hypothesis
import pytest
from factories import make_analysis, web_pod

from startprof.analysis import analyze
from startprof.analysis.model import ms
from startprof.pipeline import source_of
from startprof.recording import read_recording
from startprof.reporters import json as json_reporter

RECORDINGS = sorted((Path(__file__).resolve().parents[1] / "data" / "recordings").glob("*.arrows"))


@pytest.mark.parametrize("path", RECORDINGS, ids=lambda p: p.stem)
def test_stored_recordings_give_the_bytes_json_gave(path: Path) -> None:
    analysis = analyze([source_of(read_recording(path))])
    expected = json.dumps(json_reporter.document(analysis), separators=(",", ":"))
    assert json_reporter.dumps(analysis) == expected


def test_non_ascii_and_nan_are_the_same_values() -> None:
    pod = web_pod()
    pod = replace(pod, name="café-0", phases=(replace(pod.phases[0], attributes={"x": "→"}),))
    analysis = replace(make_analysis([pod]), summary={"share": float("nan")})
    doc = json.loads(json_reporter.dumps(analysis))
    assert doc["pods"][0]["name"] == "café-0"
    assert doc["pods"][0]["phases"][0]["attributes"] == {"x": "→"}
    assert doc["summary"] == {"share": None}  # json.dumps wrote NaN, which no parser takes


def test_what_orjson_refuses_goes_through_json() -> None:
    analysis = replace(make_analysis([web_pod()]), summary={"big": 2**70, 3: "int key"})
    doc = json.loads(json_reporter.dumps(analysis))
    assert doc["summary"] == {"big": 2**70, "3": "int key"}


def test_written_a_pod_at_a_time_is_one_document() -> None:
    """``analyze --json`` writes pod by pod: the bytes of one ``orjson.dumps`` of the document,
    for every pod, one, or none."""
    import io

    import orjson

    analysis = analyze([source_of(read_recording(RECORDINGS[0].parent / "concurrent.arrows"))])
    for pods in (None, analysis.pods[:1], ()):
        out = io.BytesIO()
        json_reporter.write(out, analysis, pods)
        assert out.getvalue() == orjson.dumps(json_reporter.document(analysis, pods))


@hypothesis.given(
    hypothesis.strategies.one_of(
        hypothesis.strategies.integers(min_value=-(10**12), max_value=10**16),
        hypothesis.strategies.integers(min_value=0, max_value=10**13).map(lambda k: k * 1000 + 500),
        hypothesis.strategies.integers(min_value=0, max_value=10**13).map(lambda k: k * 1000 + 499),
        hypothesis.strategies.integers(min_value=0, max_value=10**13).map(lambda k: k * 1000 + 501),
    )
)
def test_milliseconds_are_those_of_round(ns: int) -> None:
    """The document's ``*_ms`` values: ``model.ms`` is ``round(ns / 1e6, 3)``, bit for bit,
    ties (a remainder of 500 ns) and their neighbours included, past 2**53 ns (104 days)."""
    assert ms(ns).hex() == round(ns / 1e6, 3).hex()
