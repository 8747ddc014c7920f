"""The one home of startprof's statistics: median, p95, bootstrap 95% CIs, overhead.

Pure numpy, so every number can be checked on synthetic data with known answers
(tests/unit/test_bench_stats.py). ``analyze``, ``report``, ``bench``, the lab's client and the
benchmarks all use these, so the same pods give the same figures everywhere.

- p95 is numpy's default (linear interpolation between order statistics).
- The CI is the percentile bootstrap of the median: resample the pods with replacement, take
  each resample's median, keep the 2.5th and 97.5th percentiles of those medians. It makes no
  assumption about the shape of the distribution (pod starts have long right tails). The RNG is
  seeded, so the same data always gives the same interval.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

RESAMPLES = 4000
"""Bootstrap resamples: the CI's ends move by well under 1% of its width between seeds."""
CI_LEVEL = 0.95
MAX_CELLS = 4_000_000
"""Resampled values held in memory at once (32 MB of int64 indices); larger jobs go in chunks."""

FloatArray = npt.NDArray[np.float64]


def as_array(values: Iterable[float]) -> FloatArray:
    """A 1-D float array of finite values; raises ValueError on NaN or infinities."""
    arr = np.asarray(values if isinstance(values, np.ndarray) else list(values), dtype=float)
    arr = arr.reshape(-1)
    if not np.all(np.isfinite(arr)):
        raise ValueError("values must be finite")
    return arr


def median(values: Iterable[float]) -> float:
    arr = _non_empty(values)
    return float(np.median(arr))


def p95(values: Iterable[float]) -> float:
    arr = _non_empty(values)
    return float(np.percentile(arr, 95))


def median_p95_ms(values: Iterable[float], digits: int = 3) -> dict[str, Any]:
    """``n``, ``median_ms`` and ``p95_ms`` for JSON, rounded; None for both of no values."""
    arr = as_array(values)
    if len(arr) == 0:
        return {"n": 0, "median_ms": None, "p95_ms": None}
    return {
        "n": len(arr),
        "median_ms": round(median(arr), digits),
        "p95_ms": round(p95(arr), digits),
    }


def bootstrap_median_ci(
    values: Iterable[float],
    *,
    seed: int = 0,
    resamples: int = RESAMPLES,
    level: float = CI_LEVEL,
) -> tuple[float, float]:
    """Percentile-bootstrap CI of the median at ``level``; ``seed`` makes it reproducible.

    Resampling is vectorised: one ``(resamples, n)`` matrix of indices and one ``np.median``
    along its rows, in chunks of at most :data:`MAX_CELLS` values. The chunks draw from one
    generator in order, so the result does not depend on the chunk size.
    """
    arr = _non_empty(values)
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    if resamples < 1:
        raise ValueError(f"resamples must be at least 1, got {resamples}")
    n = len(arr)
    if n == 1 or np.all(arr == arr[0]):
        return float(arr[0]), float(arr[0])
    rng = np.random.default_rng(seed)
    medians = np.empty(resamples)
    rows = max(1, MAX_CELLS // n)
    for start in range(0, resamples, rows):
        stop = min(start + rows, resamples)
        idx = rng.integers(0, n, size=(stop - start, n), dtype=np.int64)
        medians[start:stop] = np.median(arr[idx], axis=1)
    tail = (1 - level) / 2
    lo, hi = np.quantile(medians, [tail, 1 - tail])
    return float(lo), float(hi)


def bootstrap_change_ci(
    baseline: Iterable[float],
    current: Iterable[float],
    *,
    seed: int = 0,
    resamples: int = RESAMPLES,
    level: float = CI_LEVEL,
) -> tuple[float, float]:
    """Percentile-bootstrap CI of the change of the median from ``baseline`` to ``current``, in
    percent of the baseline's median: both samples are resampled independently (unpaired), so
    it suits arms measured on different pods."""
    base, cur = _non_empty(baseline), _non_empty(current)
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    rng = np.random.default_rng(seed)
    b = np.median(base[rng.integers(0, len(base), size=(resamples, len(base)))], axis=1)
    c = np.median(cur[rng.integers(0, len(cur), size=(resamples, len(cur)))], axis=1)
    change = 100.0 * (c - b) / b
    tail = (1 - level) / 2
    lo, hi = np.quantile(change, [tail, 1 - tail])
    return float(lo), float(hi)


def overhead(
    baseline: Sequence[float], current: Sequence[float], *, seed: int = 1
) -> dict[str, Any]:
    """A benchmark arm's overhead against its baseline, for JSON: the change of the median in
    percent and its 95% bootstrap CI (:func:`bootstrap_change_ci`), rounded to 0.01."""
    lo, hi = bootstrap_change_ci(baseline, current, seed=seed)
    return {
        "overhead_pct": round(change_pct(median(baseline), median(current)), 2),
        "overhead_ci95_pct": [round(lo, 2), round(hi, 2)],
    }


def paired_ratio(
    pairs: Sequence[tuple[float, float]],
    *,
    seed: int = 19,
    resamples: int = RESAMPLES,
    level: float = CI_LEVEL,
) -> tuple[float, float, float]:
    """The typical change from a baseline to a current value measured side by side, in percent:
    the geometric mean of the pairs' ratios (``exp(mean(log(current / baseline))) - 1``), and
    the percentile-bootstrap CI at ``level`` from resampling whole pairs.

    Each pair is measured under the same conditions (neighbouring pod starts of two arms), so
    drift that moves both, e.g. a host that steals a third of the VM's time for some minutes,
    cancels inside the ratio instead of widening the interval as it does for a change of pooled
    medians. Values must be positive."""
    if not pairs:
        raise ValueError("no pairs")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    base = as_array([b for b, _ in pairs])
    cur = as_array([c for _, c in pairs])
    if np.any(base <= 0) or np.any(cur <= 0):
        raise ValueError("values must be positive")
    logs = np.log(cur / base)
    n = len(logs)
    rng = np.random.default_rng(seed)
    means = np.empty(resamples)
    rows = max(1, MAX_CELLS // n)
    for start in range(0, resamples, rows):
        stop = min(start + rows, resamples)
        means[start:stop] = logs[rng.integers(0, n, size=(stop - start, n))].mean(axis=1)
    tail = (1 - level) / 2
    lo, hi = np.quantile(means, [tail, 1 - tail])
    est, low, high = (float(100.0 * np.expm1(v)) for v in (logs.mean(), lo, hi))
    return est, low, high


def seed_for(base: int, *names: str) -> int:
    """A seed per (base seed, names): stable across runs and Python versions (no ``hash()``),
    different per phase so that the CIs of different phases use independent resamples."""
    return (base * 1_000_003 + zlib.crc32("\0".join(names).encode())) % 2**63


@dataclass(frozen=True)
class Stat:
    """What summary.json holds for one sample: n, median, p95 and the CI of the median (ms)."""

    n: int
    median_ms: float
    p95_ms: float
    ci95_ms: tuple[float, float]

    def to_dict(self, digits: int = 3) -> dict[str, Any]:
        return {
            "n": self.n,
            "median_ms": round(self.median_ms, digits),
            "p95_ms": round(self.p95_ms, digits),
            "ci95_ms": [round(self.ci95_ms[0], digits), round(self.ci95_ms[1], digits)],
        }


def describe(values: Iterable[float], *, seed: int = 0) -> Stat:
    arr = _non_empty(values)
    return Stat(len(arr), median(arr), p95(arr), bootstrap_median_ci(arr, seed=seed))


def cis_overlap(a: Sequence[float], b: Sequence[float]) -> bool:
    """Whether two closed intervals [lo, hi] share at least one point."""
    return a[0] <= b[1] and b[0] <= a[1]


def change_pct(baseline: float, current: float) -> float:
    """Relative change of ``current`` against ``baseline`` in percent (positive: slower)."""
    if baseline == 0:
        return 0.0 if current == 0 else float("inf")
    return (current - baseline) / baseline * 100


def _non_empty(values: Iterable[float]) -> FloatArray:
    arr = as_array(values)
    if len(arr) == 0:
        raise ValueError("no values")
    return arr
