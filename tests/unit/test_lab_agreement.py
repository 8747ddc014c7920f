"""The record/analyze truth check (startprof.lab.agreement) on stored recordings: no root."""

from __future__ import annotations

import json
from pathlib import Path

from startprof.analysis import analyze
from startprof.lab.agreement import check
from startprof.lab.truth import read_truth
from startprof.pipeline import source_of
from startprof.recording import read_recording
from startprof.reporters import json as json_reporter

RECORDINGS = Path(__file__).parent.parent / "data" / "recordings"


def _doc(name: str) -> tuple[dict[str, object], list[dict[str, object]], int]:
    rec = read_recording(RECORDINGS / f"{name}.arrows")
    analysis = analyze([source_of(rec)])
    doc = json.loads(json_reporter.dumps(analysis, list(analysis.pods)))
    return doc, read_truth(RECORDINGS / f"{name}.truth.jsonl"), rec.header.clock_offset_ns


def test_stored_pods_agree_with_their_truth() -> None:
    doc, truth, offset = _doc("runc-bridge")
    result = check(doc, truth, offset)
    assert (result.expected_pods, result.found_pods, result.ok_pods) == (2, 2, 2)
    assert {e.phase for e in result.edges} == {"sandbox", "container.start"}
    assert len(result.edges) == 8
    assert result.passed(), result.summary()
    assert "2/2 pods found, 2 ok" in result.summary()


def test_a_missing_pod_or_a_shifted_phase_fails() -> None:
    doc, truth, offset = _doc("runc-bridge")
    pods = doc["pods"]
    assert isinstance(pods, list)
    doc["pods"] = pods[1:]
    missing = check(doc, truth, offset)
    assert not missing.passed() and len(missing.missing) == 1
    doc["pods"] = pods
    for p in pods[0]["phases"]:
        if p["name"] == "sandbox":
            p["start_wall_ns"] -= 5_000_000  # before the client even called
    shifted = check(doc, truth, offset)
    assert not shifted.passed()
