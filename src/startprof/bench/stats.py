"""Regressions between two bench runs' ``summary.json`` documents.

A regression is a phase whose median got slower by more than a threshold **and** whose CIs do
not overlap: a large relative change of a noisy phase is not enough on its own. The statistics
themselves (median, p95, bootstrap CIs) are :mod:`startprof.stats`'s.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from startprof.stats import (
    CI_LEVEL,
    RESAMPLES,
    Stat,
    as_array,
    bootstrap_change_ci,
    bootstrap_median_ci,
    change_pct,
    cis_overlap,
    describe,
    median,
    overhead,
    p95,
    seed_for,
)

__all__ = [
    "CI_LEVEL",
    "RESAMPLES",
    "PhaseChange",
    "Stat",
    "as_array",
    "bootstrap_change_ci",
    "bootstrap_median_ci",
    "change_pct",
    "cis_overlap",
    "compare",
    "describe",
    "is_regression",
    "median",
    "overhead",
    "p95",
    "seed_for",
]


def is_regression(
    baseline_median: float,
    baseline_ci: Sequence[float],
    current_median: float,
    current_ci: Sequence[float],
    threshold_pct: float,
) -> bool:
    """Slower by more than ``threshold_pct`` percent, with the current CI entirely above the
    baseline's."""
    slower = change_pct(baseline_median, current_median) > threshold_pct
    return slower and current_ci[0] > baseline_ci[1]


@dataclass(frozen=True)
class PhaseChange:
    """One phase of one combination, compared between a baseline run and this one."""

    runtime: str
    cni: str
    phase: str
    baseline_ms: float
    current_ms: float
    baseline_ci: tuple[float, float]
    current_ci: tuple[float, float]
    change_pct: float
    overlap: bool
    regressed: bool
    containerd: str = ""

    @property
    def combination(self) -> str:
        name = f"{self.runtime}-{self.cni}"
        return f"{name}@{self.containerd}" if self.containerd else name

    @property
    def improved(self) -> bool:
        return not self.overlap and self.current_ms < self.baseline_ms


def compare(
    baseline: Mapping[str, Any], current: Mapping[str, Any], threshold_pct: float
) -> list[PhaseChange]:
    """Every phase (and the whole ``pod``) of every combination present in both summary.json
    documents, in the current run's order."""

    def key(c: Mapping[str, Any]) -> tuple[str, str, str]:
        return (c.get("containerd") or "", c["runtime"], c["cni"])

    base = {key(c): c for c in baseline.get("combinations", ())}
    out: list[PhaseChange] = []
    for combo in current.get("combinations", ()):
        old = base.get(key(combo))
        if old is None:
            continue
        pairs = [("pod", old.get("pod"), combo.get("pod"))]
        pairs += [
            (name, old.get("phases", {}).get(name), stat)
            for name, stat in combo.get("phases", {}).items()
        ]
        for name, was, now in pairs:
            if not _usable(was) or not _usable(now):
                continue
            assert was is not None and now is not None
            b_ci = (float(was["ci95_ms"][0]), float(was["ci95_ms"][1]))
            c_ci = (float(now["ci95_ms"][0]), float(now["ci95_ms"][1]))
            b_med, c_med = float(was["median_ms"]), float(now["median_ms"])
            out.append(
                PhaseChange(
                    runtime=combo["runtime"],
                    cni=combo["cni"],
                    phase=name,
                    baseline_ms=b_med,
                    current_ms=c_med,
                    baseline_ci=b_ci,
                    current_ci=c_ci,
                    change_pct=change_pct(b_med, c_med),
                    overlap=cis_overlap(b_ci, c_ci),
                    regressed=is_regression(b_med, b_ci, c_med, c_ci, threshold_pct),
                    containerd=combo.get("containerd") or "",
                )
            )
    return out


def _usable(stat: object) -> bool:
    return (
        isinstance(stat, Mapping)
        and stat.get("median_ms") is not None
        and isinstance(stat.get("ci95_ms"), Sequence)
        and len(stat["ci95_ms"]) == 2
    )
