"""What a bench's outputs say, in the words both use: the terminal tables (``bench/terminal.py``)
and report.html (``bench/html.py``) name combinations, pick and rank phases, and write cells and
sentences from summary.json through these functions, so the two cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from startprof.bench.stats import cis_overlap

MIN_CRITICAL_SHARE = 0.01
"""Phases below this share of the critical path in every combination stay out of the terminal
table and the CI chart (summary.json and the HTML table have them all)."""
ALWAYS_SHOWN = ("sandbox", "cni.add", "container.create", "container.start")
ALWAYS_SHOWN_KINDS = ("cni.plugin", "runtime.create", "runtime.start", "runtime.shim")


def combination_names(summary: Mapping[str, Any]) -> list[str]:
    return [combination_name(c) for c in summary.get("combinations", ())]


def combination_name(combo: Mapping[str, Any]) -> str:
    """``runc-bridge``, or ``runc-bridge@2.1`` on the containerd axis."""
    return str(combo.get("name") or combo.get("handler") or f"{combo['runtime']}-{combo['cni']}")


def combination_names_of(results: pd.DataFrame) -> pd.Series:
    """Each row's combination name, as :func:`_name` gives it (results of older benches have
    no containerd column)."""
    if "containerd" not in results:
        return results["handler"]
    return pd.Series(
        [
            f"{h}@{c}" if c else h
            for h, c in zip(results["handler"], results["containerd"], strict=True)
        ],
        index=results.index,
    )


def phase_rows(summary: Mapping[str, Any], everything: bool = False) -> list[str]:
    """Phase names to show, in tree order (as the first combination lists them, then what only
    the others have); without ``everything``, only those that matter (see MIN_CRITICAL_SHARE)."""
    names: list[str] = []
    for combo in summary.get("combinations", ()):
        # a phase only this combination has goes right after its predecessor in this
        # combination's tree order (cni.plugin ptp where the others have cni.plugin bridge)
        at = 0
        for name in combo.get("phases", {}):
            if name in names:
                at = names.index(name) + 1
            else:
                names.insert(at, name)
                at += 1
    if everything:
        return names

    def matters(name: str) -> bool:
        if name in ALWAYS_SHOWN or name.split(" ", 1)[0] in ALWAYS_SHOWN_KINDS:
            return True
        shares = [
            c["phases"][name].get("critical_share") or 0.0
            for c in summary.get("combinations", ())
            if name in c.get("phases", {})
        ]
        return max(shares, default=0.0) >= MIN_CRITICAL_SHARE

    return [n for n in names if matters(n)]


def phase_stat(combo: Mapping[str, Any], phase: str) -> Mapping[str, Any] | None:
    stat = combo.get("pod") if phase == "pod" else combo.get("phases", {}).get(phase)
    if not isinstance(stat, Mapping) or stat.get("median_ms") is None:
        return None
    return stat


def ranking(summary: Mapping[str, Any], phase: str) -> list[tuple[str, Mapping[str, Any]]]:
    """(combination, stat) for every combination that has ``phase``, fastest median first."""
    found = [
        (combination_name(c), s)
        for c in summary.get("combinations", ())
        if (s := phase_stat(c, phase)) is not None
    ]
    return sorted(found, key=lambda item: float(item[1]["median_ms"]))


def margin_text(phase_ranking: Sequence[tuple[str, Mapping[str, Any]]]) -> str:
    """How far the fastest is ahead of the next: ``12.3 ms (9%) vs crun-bridge*``; the star
    says the two CIs do not overlap."""
    if len(phase_ranking) < 2:
        return ""
    (_, best), (second, runner_up) = phase_ranking[0], phase_ranking[1]
    gap = float(runner_up["median_ms"]) - float(best["median_ms"])
    pct = gap / float(runner_up["median_ms"]) * 100 if runner_up["median_ms"] else 0.0
    star = "" if cis_overlap(best["ci95_ms"], runner_up["ci95_ms"]) else "*"
    return f"{fmt_ms(gap)} ms ({pct:.0f}%) vs {second}{star}"


def headline(summary: Mapping[str, Any]) -> str:
    """One sentence naming the combination with the fastest pod start and by how much."""
    ranked = ranking(summary, "pod")
    if not ranked:
        return "No pod start completed: nothing to compare."
    best, stat = ranked[0]
    text = f"Fastest pod start: {best} (median {fmt_ms(float(stat['median_ms']))} ms)"
    if len(ranked) == 1:
        return text + "."
    others = []
    for name, other in ranked[1:]:
        gap = float(other["median_ms"]) - float(stat["median_ms"])
        pct = gap / float(other["median_ms"]) * 100 if other["median_ms"] else 0.0
        apart = "" if cis_overlap(stat["ci95_ms"], other["ci95_ms"]) else ", CIs apart"
        others.append(f"{fmt_ms(gap)} ms ({pct:.0f}%) faster than {name}{apart}")
    return f"{text}: {'; '.join(others)}."


def fmt_ms(ms: float) -> str:
    return f"{ms:,.1f}" if abs(ms) >= 1 else f"{ms:.2f}"


def _short(ms: float) -> str:
    """Three significant digits or so: table cells stay narrow enough for a terminal."""
    if abs(ms) >= 100:
        return f"{ms:,.0f}"
    return f"{ms:.1f}" if abs(ms) >= 1 else f"{ms:.2f}"


def stat_cell(stat: Mapping[str, Any] | None) -> str:
    if stat is None:
        return "-"
    lo, hi = stat["ci95_ms"]
    return f"{_short(float(stat['median_ms']))} [{_short(float(lo))}-{_short(float(hi))}]"


def change_cell(row: Mapping[str, Any]) -> str:
    """``-12.3 ms (-7% [-10, -3])*``; ``gone`` / ``new`` for a phase one version lacks."""
    if row.get("from") is None:
        return "new"
    if row.get("to") is None:
        return "gone"
    lo, hi = row["change_ci95_pct"]
    star = "*" if row["significant"] else ""
    return f"{row['change_ms']:+.1f} ms ({row['change_pct']:+.0f}% [{lo:+.0f}, {hi:+.0f}]){star}"


def change_rows(summary: Mapping[str, Any]) -> list[str]:
    shown = ["pod", *phase_rows(summary)]
    for entry in summary.get("containerd_change", ()):
        for row in entry["phases"]:
            if (row.get("from") is None or row.get("to") is None) and row["phase"] not in shown:
                shown.append(row["phase"])
    return shown


def change_sentences(summary: Mapping[str, Any]) -> list[str]:
    """The closing note: per runtime x CNI, what the containerd upgrade did to the pod start
    and to the phases whose change is significant (the CI of the change excludes 0)."""
    out = []
    for e in summary.get("containerd_change", ()):
        rows = {r["phase"]: r for r in e["phases"]}
        pod = rows.get("pod")
        if pod is None or pod.get("change_ms") is None:
            continue
        lo, hi = pod["change_ci95_pct"]
        moved = [
            f"{r['phase']} {r['change_ms']:+.1f} ms ({r['change_pct']:+.0f}%)"
            for r in sorted(e["phases"], key=lambda r: -abs(r.get("change_ms") or 0.0))
            if r["phase"] != "pod" and r.get("significant") and abs(r["change_ms"]) >= 0.5
        ]
        gone = [r["phase"] for r in e["phases"] if r.get("to") is None]
        new = [r["phase"] for r in e["phases"] if r.get("from") is None]
        text = (
            f"containerd {e['from_version'] or e['from']} -> {e['to_version'] or e['to']} on "
            f"{e['runtime']}-{e['cni']}: pod start {fmt_ms(pod['from']['median_ms'])} -> "
            f"{fmt_ms(pod['to']['median_ms'])} ms ({pod['change_pct']:+.0f}%, 95% CI of the change "
            f"{lo:+.0f}% to {hi:+.0f}%, {'' if pod['significant'] else 'not '}significant)"
        )
        if moved:
            text += "; significant phase changes: " + ", ".join(moved[:6])
        if gone:
            text += "; gone: " + ", ".join(gone)
        if new:
            text += "; new: " + ", ".join(new)
        out.append(text + ".")
    return out
