"""bench/stats.py on synthetic data whose answers are known; the bench's plan and summary on
stored recordings."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from rich.console import Console

from startprof import stats as startprof_stats
from startprof.analysis import analyze
from startprof.bench import stats
from startprof.bench.html import render_html
from startprof.bench.runner import (
    RESULT_COLUMNS,
    Combination,
    StartedPod,
    plan_batches,
    results_table,
    summarize_combinations,
    truth_agreement,
)
from startprof.bench.terminal import terminal_report
from startprof.lab.truth import read_truth
from startprof.pipeline import source_of
from startprof.recording import read_recording


def test_median_and_p95_of_known_arrays() -> None:
    assert stats.median([5, 1, 3]) == 3
    assert stats.median([1, 2, 3, 4]) == 2.5
    assert stats.p95(np.arange(101)) == 95
    # linear interpolation between order statistics, as numpy and `startprof analyze` do
    assert stats.p95([1, 2, 3, 4]) == pytest.approx(3.85)
    assert stats.p95([7.0]) == 7.0


def test_empty_or_non_finite_samples_are_refused() -> None:
    with pytest.raises(ValueError, match="no values"):
        stats.median([])
    with pytest.raises(ValueError, match="finite"):
        stats.p95([1.0, float("nan")])


def test_ci_is_reproducible_and_brackets_the_median() -> None:
    x = np.random.default_rng(1).lognormal(3, 0.5, size=40)
    a = stats.bootstrap_median_ci(x, seed=7)
    assert a == stats.bootstrap_median_ci(x, seed=7)
    assert a != stats.bootstrap_median_ci(x, seed=8)
    assert a[0] <= stats.median(x) <= a[1]
    assert a[0] >= x.min() and a[1] <= x.max()


def test_ci_of_degenerate_samples_is_a_point() -> None:
    assert stats.bootstrap_median_ci([4.2]) == (4.2, 4.2)
    assert stats.bootstrap_median_ci([3.0] * 10) == (3.0, 3.0)


def test_ci_does_not_depend_on_the_chunk_size(monkeypatch: pytest.MonkeyPatch) -> None:
    x = np.random.default_rng(2).normal(100, 10, size=25)
    whole = stats.bootstrap_median_ci(x, seed=3, resamples=500)
    # 7 resamples per chunk, a ragged last one
    monkeypatch.setattr("startprof.stats.MAX_CELLS", 25 * 7)
    assert stats.bootstrap_median_ci(x, seed=3, resamples=500) == whole


def test_ci_narrows_as_the_sample_grows() -> None:
    rng = np.random.default_rng(4)
    small = stats.bootstrap_median_ci(rng.normal(0, 1, 20))
    large = stats.bootstrap_median_ci(rng.normal(0, 1, 2000))
    assert large[1] - large[0] < (small[1] - small[0]) / 4


@pytest.mark.parametrize(
    ("draw", "true_median"),
    [
        (lambda rng, n: rng.normal(50, 5, n), 50.0),
        # right-skewed like pod start times: lognormal(mu, s) has median exp(mu)
        (lambda rng, n: rng.lognormal(np.log(120), 0.4, n), 120.0),
    ],
    ids=["normal", "lognormal"],
)
def test_ci_covers_the_true_median_about_95_percent_of_the_time(
    draw: Any, true_median: float
) -> None:
    trials, n = 400, 30
    covered = 0
    for seed in range(trials):
        sample = draw(np.random.default_rng(10_000 + seed), n)
        lo, hi = stats.bootstrap_median_ci(sample, seed=seed, resamples=1000)
        covered += lo <= true_median <= hi
    # 95% +- 3 standard errors of a binomial proportion over 400 trials (1.1% each)
    assert 0.91 <= covered / trials <= 0.985, covered / trials


def test_describe_and_its_json_form() -> None:
    s = stats.describe([10.0, 20.0, 30.0, 40.0, 50.0], seed=1)
    assert (s.n, s.median_ms) == (5, 30.0)
    assert s.p95_ms == pytest.approx(48.0)
    d = s.to_dict()
    assert set(d) == {"n", "median_ms", "p95_ms", "ci95_ms"}
    assert len(d["ci95_ms"]) == 2 and d["ci95_ms"][0] <= 30.0 <= d["ci95_ms"][1]


def test_seed_for_is_stable_and_distinct() -> None:
    assert stats.seed_for(0, "runc-bridge", "sandbox") == stats.seed_for(
        0, "runc-bridge", "sandbox"
    )
    assert stats.seed_for(0, "runc-bridge", "sandbox") != stats.seed_for(
        0, "crun-bridge", "sandbox"
    )
    assert stats.seed_for(0, "a") != stats.seed_for(1, "a")


def test_ci_overlap() -> None:
    assert stats.cis_overlap((1, 3), (2, 4))
    assert stats.cis_overlap((1, 3), (3, 4))  # closed intervals touch
    assert not stats.cis_overlap((1, 2), (2.5, 4))
    assert not stats.cis_overlap((2.5, 4), (1, 2))


@pytest.mark.parametrize(
    ("base", "cur", "pct", "expected"),
    [
        ((100, (95, 105)), (150, (140, 160)), 10, True),  # 50% slower, CIs apart
        ((100, (80, 130)), (150, (120, 170)), 10, False),  # 50% slower, CIs overlap
        ((100, (95, 105)), (108, (106, 110)), 10, False),  # CIs apart but only 8% slower
        ((100, (95, 105)), (50, (45, 55)), 10, False),  # faster
        ((100, (95, 105)), (150, (140, 160)), 60, False),  # below a higher threshold
    ],
)
def test_is_regression(
    base: tuple[float, tuple[float, float]],
    cur: tuple[float, tuple[float, float]],
    pct: float,
    expected: bool,
) -> None:
    assert stats.is_regression(base[0], base[1], cur[0], cur[1], pct) is expected


def _summary(scale: float = 1.0) -> dict[str, Any]:
    def stat(median: float, lo: float, hi: float) -> dict[str, Any]:
        return {
            "median_ms": median * scale,
            "p95_ms": hi * scale,
            "ci95_ms": [lo * scale, hi * scale],
            "critical_share": 0.1,
        }

    return {
        "combinations": [
            {
                "runtime": "runc",
                "cni": "bridge",
                "n": 20,
                "pod": stat(200, 190, 210),
                "phases": {"sandbox": stat(100, 95, 105), "cni.plugin bridge": stat(30, 25, 40)},
                "truth_agreement_ms": {"n": 40, "median": 0.2, "p95": 0.6, "max": 1.0},
            },
            {
                "runtime": "crun",
                "cni": "ptp",
                "n": 20,
                "pod": stat(150, 140, 160),
                "phases": {"sandbox": stat(90, 85, 95)},
                "truth_agreement_ms": {"n": 40, "median": 0.2, "p95": 0.6, "max": 1.0},
            },
        ]
    }


def test_compare_finds_regressions_from_real_sample_data() -> None:
    rng = np.random.default_rng(5)
    fast, slow = rng.normal(100, 5, 30), rng.normal(140, 5, 30)
    doc = _summary()
    before, after = copy.deepcopy(doc), copy.deepcopy(doc)
    for target, sample in ((before, fast), (after, slow)):
        s = stats.describe(sample, seed=1).to_dict()
        target["combinations"][0]["phases"]["sandbox"].update(s)
    changes = {(c.combination, c.phase): c for c in stats.compare(before, after, 10)}
    sandbox = changes[("runc-bridge", "sandbox")]
    assert sandbox.regressed and not sandbox.overlap
    assert sandbox.change_pct == pytest.approx(40, abs=6)
    assert not changes[("runc-bridge", "pod")].regressed  # untouched: identical
    assert [c for c in changes.values() if c.regressed] == [sandbox]
    # the same data against itself and the other way round: nothing regressed
    assert not any(c.regressed for c in stats.compare(after, after, 10))
    back = {(c.combination, c.phase): c for c in stats.compare(after, before, 10)}
    assert not back[("runc-bridge", "sandbox")].regressed
    assert back[("runc-bridge", "sandbox")].improved


def test_compare_skips_what_only_one_run_has() -> None:
    base, cur = _summary(), _summary(scale=3.0)
    del base["combinations"][1]  # crun-ptp is new
    del cur["combinations"][0]["phases"]["cni.plugin bridge"]
    changes = stats.compare(base, cur, 10)
    assert {(c.combination, c.phase) for c in changes} == {
        ("runc-bridge", "pod"),
        ("runc-bridge", "sandbox"),
    }
    assert all(c.regressed for c in changes)  # 3x slower, CIs apart
    # 200% slower is not more than 250% slower
    assert not any(c.regressed for c in stats.compare(base, cur, 250))


# --- the bench's plan and summary, from stored recordings (no root, no lab) ------------------

RECORDINGS = Path(__file__).parent.parent / "data" / "recordings"


def test_rounds_interleave_combinations_and_rotate_their_order() -> None:
    combos = [
        Combination("runc", "bridge"),
        Combination("crun", "bridge"),
        Combination("crun", "ptp"),
    ]
    batches = plan_batches(combos, pods=7, warmup=2, round_size=3)
    warm = [b for b in batches if b.warmup]
    assert [(b.combination.handler, b.pods) for b in warm] == [
        ("runc-bridge", 2), ("crun-bridge", 2), ("crun-ptp", 2),
    ]  # fmt: skip
    measured = [b for b in batches if not b.warmup]
    assert [b.round for b in measured] == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert [b.pods for b in measured] == [3, 3, 3, 3, 3, 3, 1, 1, 1]
    firsts = [measured[i].combination.handler for i in (0, 3, 6)]
    assert firsts == ["crun-bridge", "crun-ptp", "runc-bridge"]  # rotated after the warm-up
    for combo in combos:
        assert sum(b.pods for b in measured if b.combination == combo) == 7


def _stored_bench() -> tuple[dict[str, Any], pd.DataFrame]:
    """A bench summary over the stored recordings of three combinations (2 pods each)."""
    combos, started, frames, agreement = [], {}, [], {}
    for handler in ("runc-bridge", "crun-bridge", "crun-ptp"):
        runtime, cni = handler.split("-")
        combo = Combination(runtime, cni)
        combos.append(combo)
        truth = read_truth(RECORDINGS / f"{handler}.truth.jsonl")
        for t in truth:
            if t["method"].endswith("/RunPodSandbox"):
                started[t["sandbox_id"]] = StartedPod(
                    combo, 0, False, t["pod"], t["sandbox_id"], None, None
                )
        source = source_of(read_recording(RECORDINGS / f"{handler}.arrows"))
        pods = analyze([source]).pods
        frames.append(results_table(pods, started))
        agreement.update(truth_agreement(pods, started, truth, source.clock_offset_ns))
    results = pd.concat(frames, ignore_index=True)
    summary = {"combinations": summarize_combinations(combos, results, started, agreement, 0)}
    return summary, results


def test_summary_of_stored_recordings() -> None:
    summary, results = _stored_bench()
    assert tuple(results.columns) == RESULT_COLUMNS
    combos = {c["handler"]: c for c in summary["combinations"]}
    for handler, c in combos.items():
        assert c["n"] == 2 and c["pods_failed"] == 0 and c["pods_unattributed"] == 0
        assert f"cni.plugin {c['cni']}" in c["phases"]
        assert "runtime.create (container)" in c["phases"]
        shares = sum(s["critical_share"] for s in c["phases"].values())
        assert shares == pytest.approx(1, abs=0.01), handler
        # the stored recordings' CRI calls agree with the client's times within a millisecond
        assert c["truth_agreement_ms"]["n"] == 8
        assert c["truth_agreement_ms"]["max"] < 1.0
    # reproducible: the same data and seed give the same document
    again, _ = _stored_bench()
    assert again == summary


def test_terminal_and_html_reports_of_stored_recordings() -> None:
    summary, results = _stored_bench()
    console = Console(width=220, record=True)
    console.print(terminal_report(summary))
    text = console.export_text()
    assert "Fastest pod start: " in text
    assert "cni.plugin ptp" in text and "runtime.create (container)" in text
    page = render_html(summary, results)
    assert page.count('<div id="fig-') == 3
    assert "<script src" not in page


def test_report_escapes_hostile_phase_names() -> None:
    summary, results = _stored_bench()
    evil = "exec <img src=x onerror=alert(1)></script>"
    summary["combinations"][0]["phases"][evil] = dict(
        summary["combinations"][0]["phases"]["sandbox"]
    )
    results.loc[results.index[0], "phase"] = evil
    page = render_html(summary, results)
    assert "<img src=x" not in page
    assert page.count("</script>") == 3  # plotly.js, the figures' JSON, the loader: no more
    assert "&lt;img src=x onerror=alert(1)&gt;" in page  # the HTML table shows it as text


def test_bootstrap_change_ci_brackets_the_change_and_shrinks_with_n() -> None:
    rng = np.random.default_rng(1)
    base = rng.normal(100.0, 10.0, 400)
    slower = rng.normal(110.0, 10.0, 400)
    lo, hi = stats.bootstrap_change_ci(base, slower, seed=3)
    assert lo < 100 * (np.median(slower) - np.median(base)) / np.median(base) < hi
    assert lo > 0 and hi < 20
    wide_lo, wide_hi = stats.bootstrap_change_ci(base[:20], slower[:20], seed=3)
    assert wide_hi - wide_lo > hi - lo
    assert stats.bootstrap_change_ci(base, slower, seed=3) == (lo, hi)  # reproducible
    same_lo, same_hi = stats.bootstrap_change_ci([5.0] * 10, [5.0] * 10)
    assert same_lo == same_hi == 0.0


def test_overhead_is_the_median_change_with_its_ci() -> None:
    base, slower = [100.0, 101.0, 99.0, 100.0], [110.0, 111.0, 109.0, 110.0]
    out = stats.overhead(base, slower)
    assert out["overhead_pct"] == 10.0
    lo, hi = stats.bootstrap_change_ci(base, slower, seed=1)
    assert out["overhead_ci95_pct"] == [round(lo, 2), round(hi, 2)]


def test_paired_ratio_cancels_drift_that_pooled_medians_do_not() -> None:
    # pairs measured side by side while the machine slows down threefold: the current value is
    # 2% slower than its neighbour in every pair, give or take 5% of noise
    rng = np.random.default_rng(7)
    drift = np.linspace(50.0, 150.0, 300)
    base = drift * rng.lognormal(0.0, 0.05, 300)
    cur = 1.02 * drift * rng.lognormal(0.0, 0.05, 300)
    pairs = list(zip(base.tolist(), cur.tolist(), strict=True))
    est, lo, hi = startprof_stats.paired_ratio(pairs)
    assert lo < est < hi
    assert lo < 2.0 < hi and hi - lo < 3.0
    pooled_lo, pooled_hi = stats.bootstrap_change_ci(base, cur, seed=3)
    assert pooled_hi - pooled_lo > 3 * (hi - lo)  # the drift widens the unpaired interval
    assert startprof_stats.paired_ratio(pairs) == (est, lo, hi)  # reproducible
    same = startprof_stats.paired_ratio([(5.0, 5.0)] * 10)
    assert same == (0.0, 0.0, 0.0)
    with pytest.raises(ValueError):
        startprof_stats.paired_ratio([(0.0, 1.0)])
    with pytest.raises(ValueError):
        startprof_stats.paired_ratio([])
