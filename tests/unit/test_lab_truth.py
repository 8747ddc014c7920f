"""CRI ground-truth files: the exact key set, good files and one clear line for bad ones."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from startprof.errors import InputError
from startprof.lab.truth import TRUTH_KEYS, TruthWriter, read_truth


def _record(**over: Any) -> dict[str, Any]:
    r: dict[str, Any] = {
        "pod": "sp-abc-000",
        "namespace": "startprof",
        "uid": "6a1f0d8e-0000-4000-8000-000000000000",
        "sandbox_id": "f" * 64,
        "container": "",
        "container_id": "",
        "method": "/runtime.v1.RuntimeService/RunPodSandbox",
        "start_monotonic_ns": 1_000,
        "end_monotonic_ns": 70_000_000,
        "start_wall_ns": 1_700_000_000_000_000_000,
        "end_wall_ns": 1_700_000_000_070_000_000,
        "status": "ok",
        "error": "",
    }
    r.update(over)
    return r


def test_keys_are_the_issue_s() -> None:
    assert TRUTH_KEYS == (
        "pod", "namespace", "uid", "sandbox_id", "container", "container_id", "method",
        "start_monotonic_ns", "end_monotonic_ns", "start_wall_ns", "end_wall_ns", "status", "error",
    )  # fmt: skip


def test_writer_and_reader_round_trip(tmp_path: Path) -> None:
    a, b = tmp_path / "a.jsonl", tmp_path / "sub" / "b.jsonl"
    records = [_record(), _record(method="/runtime.v1.ImageService/PullImage", status="NOT_FOUND")]
    with TruthWriter([a, b, a]) as writer:  # a listed twice is written once
        for r in records:
            writer.write(r)
    assert read_truth(a) == records
    assert read_truth(b) == records
    assert len(a.read_text().splitlines()) == 2


def test_blank_lines_are_skipped(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    path.write_text("\n" + json.dumps(_record()) + "\n\n")
    assert len(read_truth(path)) == 1


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", "t.jsonl:2: not JSON"),
        ("[1, 2]", "t.jsonl:2: a truth line must be a JSON object"),
        (json.dumps({k: v for k, v in _record().items() if k != "uid"}), "missing key(s) uid"),
        (json.dumps(_record(extra=1)), "unknown key(s) extra"),
        (json.dumps(_record(start_wall_ns="1")), "start_wall_ns must be a non-negative integer"),
        (json.dumps(_record(end_monotonic_ns=True)), "end_monotonic_ns must be a non-negative"),
        (json.dumps(_record(pod=None)), "pod must be a string"),
        (json.dumps(_record(method="RunPodSandbox")), "full gRPC method"),
        (json.dumps(_record(end_monotonic_ns=0)), "before start_monotonic_ns"),
    ],
)
def test_bad_lines_give_one_clear_error(tmp_path: Path, line: str, message: str) -> None:
    path = tmp_path / "t.jsonl"
    path.write_text(json.dumps(_record()) + "\n" + line + "\n")
    with pytest.raises(InputError) as info:
        read_truth(path)
    text = str(info.value)
    assert message in text
    assert "\n" not in text


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="cannot read truth file"):
        read_truth(tmp_path / "none.jsonl")
