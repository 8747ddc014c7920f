"""The bench's containerd axis on stored recordings (no root, no lab): groups, names, outputs,
the upgrade comparison with its CIs, and the regression gate keyed by containerd too."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from rich.console import Console

from startprof.analysis import analyze
from startprof.bench import stats
from startprof.bench.html import render_html
from startprof.bench.runner import (
    BenchOptions,
    Combination,
    StartedPod,
    containerd_change,
    parse_containerds,
    plan_visits,
    results_table,
    summarize_combinations,
    truth_agreement,
)
from startprof.bench.terminal import terminal_report
from startprof.errors import InputError
from startprof.lab.truth import read_truth
from startprof.pipeline import source_of
from startprof.recording import read_recording

RECORDINGS = Path(__file__).parent.parent / "data" / "recordings"


def test_one_group_per_containerd_in_the_order_given(tmp_path: Path) -> None:
    options = BenchOptions(tmp_path, ("runc", "crun"), ("bridge",), containerds=("1.6", "2.1"))
    assert [[c.name for c in g] for g in options.groups] == [
        ["runc-bridge@1.6", "crun-bridge@1.6"],
        ["runc-bridge@2.1", "crun-bridge@2.1"],
    ]
    plain = BenchOptions(tmp_path, ("runc",), ("bridge",))
    assert [c.name for c in plain.combinations] == ["runc-bridge"]


def test_several_containerds_take_turns_round_by_round(tmp_path: Path) -> None:
    options = BenchOptions(
        tmp_path, ("runc", "crun"), ("bridge",), pods=7, warmup=1, round_size=3,
        containerds=("1.6", "2.1"),
    )  # fmt: skip
    visits = plan_visits(options)
    assert [v.containerd for v in visits] == ["1.6", "2.1", "2.1", "1.6", "1.6", "2.1"]
    for v in visits:
        # each visit restarts the lab: its own warm-up first, then one round of each combination
        assert [b.warmup for b in v.batches] == [True, True, False, False]
        assert {b.combination.containerd for b in v.batches} == {v.containerd}
    for version in ("1.6", "2.1"):
        measured = [b for v in visits if v.containerd == version for b in v.batches if not b.warmup]
        assert sum(b.pods for b in measured) == 2 * 7
        assert sorted({b.round for b in measured}) == [0, 1, 2]
    single = plan_visits(BenchOptions(tmp_path, ("runc",), ("bridge",), pods=7, round_size=3))
    assert len(single) == 1 and len(single[0].batches) == 1 + 3  # warm-up, then 3 rounds


def test_containerd_lists_are_checked() -> None:
    assert parse_containerds("1.6, 2.1,1.6") == ("1.6", "2.1")
    with pytest.raises(InputError, match=r"unknown containerd version .9\.9."):
        parse_containerds("1.6,9.9")
    with pytest.raises(InputError, match="--containerd is empty"):
        parse_containerds(" , ")


def _two_versions(tmp_path: Path) -> tuple[BenchOptions, dict[str, Any], pd.DataFrame]:
    """runc-bridge "on 1.6" and "on 2.1": two stored recordings standing in for the two."""
    options = BenchOptions(tmp_path, ("runc",), ("bridge",), containerds=("1.6", "2.1"))
    started: dict[str, StartedPod] = {}
    frames, agreement = [], {}
    for version, stored in (("1.6", "runc-bridge"), ("2.1", "crun-bridge")):
        combo = Combination("runc", "bridge", version)
        truth = read_truth(RECORDINGS / f"{stored}.truth.jsonl")
        mine = {
            t["sandbox_id"]: StartedPod(combo, 0, False, t["pod"], t["sandbox_id"], None, None)
            for t in truth
            if t["method"].endswith("/RunPodSandbox")
        }
        started |= mine
        source = source_of(read_recording(RECORDINGS / f"{stored}.arrows"))
        pods = analyze([source]).pods
        frames.append(results_table(pods, mine))
        agreement |= truth_agreement(pods, mine, truth, source.clock_offset_ns)
    results = pd.concat(frames, ignore_index=True)
    combos = options.combinations
    versions = {"1.6": "1.6.20", "2.1": "2.1.9"}
    summary: dict[str, Any] = {
        "combinations": summarize_combinations(combos, results, started, agreement, 0, versions)
    }
    summary["containerd_change"] = containerd_change(options, results, summary)
    return options, summary, results


def test_summary_and_results_carry_the_containerd_axis(tmp_path: Path) -> None:
    _, summary, results = _two_versions(tmp_path)
    assert set(results["containerd"]) == {"1.6", "2.1"}
    names = [c["name"] for c in summary["combinations"]]
    assert names == ["runc-bridge@1.6", "runc-bridge@2.1"]
    for c in summary["combinations"]:
        assert c["n"] == 2 and c["truth_agreement_ms"]["n"] == 8
    assert [c["containerd_version"] for c in summary["combinations"]] == ["1.6.20", "2.1.9"]


def test_the_upgrade_is_compared_phase_by_phase_with_cis(tmp_path: Path) -> None:
    _, summary, _ = _two_versions(tmp_path)
    (change,) = summary["containerd_change"]
    assert (change["from"], change["to"], change["from_version"]) == ("1.6", "2.1", "1.6.20")
    rows = {r["phase"]: r for r in change["phases"]}
    pod = rows["pod"]
    a, b = (c["pod"] for c in summary["combinations"])
    assert pod["change_ms"] == pytest.approx(b["median_ms"] - a["median_ms"], abs=1e-3)
    assert pod["change_pct"] == pytest.approx(
        stats.change_pct(a["median_ms"], b["median_ms"]), abs=0.01
    )
    lo, hi = pod["change_ci95_pct"]
    assert lo <= pod["change_pct"] <= hi
    assert pod["significant"] == (lo > 0 or hi < 0)
    # a phase only one side has is listed with the other side empty
    only = [r for r in change["phases"] if r["from"] is None or r["to"] is None]
    assert all("change_ms" not in r for r in only)


def test_reports_show_the_upgrade(tmp_path: Path) -> None:
    _, summary, results = _two_versions(tmp_path)
    console = Console(width=240, record=True)
    console.print(terminal_report(summary))
    text = console.export_text()
    assert "containerd 1.6 -> 2.1: change of the median" in text
    assert "containerd 1.6.20 -> 2.1.9 on runc-bridge: pod start" in text
    assert "runc-bridge@2.1" in text
    page = render_html(summary, results)
    assert "<h2>Upgrading containerd</h2>" in page
    assert "runc-bridge@1.6 (2 pods)" in page  # the composition chart's bars, one per version


def test_the_regression_gate_matches_the_same_containerd(tmp_path: Path) -> None:
    _, summary, _ = _two_versions(tmp_path)
    changes = stats.compare(summary, summary, 10)
    assert {c.combination for c in changes} == {"runc-bridge@1.6", "runc-bridge@2.1"}
    assert not any(c.regressed for c in changes)
