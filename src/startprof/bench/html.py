"""What a bench shows in report.html: the figures and the page's data, from summary.json and
results.parquet only (so a bench's page can be re-rendered and unit-tested without a lab).

The page is ``reporters/templates/bench.html`` on the page kit (``reporters/page.py``: the
skeleton, the CSP and nonce, plotly.js inlined, the palette, the shared CDF and composition
figures, and the escapes of everything that comes from a bench).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd

from startprof.bench.stats import PhaseChange
from startprof.bench.summary import (
    change_cell,
    change_rows,
    change_sentences,
    combination_name,
    combination_names,
    combination_names_of,
    fmt_ms,
    headline,
    margin_text,
    phase_rows,
    phase_stat,
    ranking,
    stat_cell,
)
from startprof.reporters.page import (
    COLOR_OTHER,
    PALETTE,
    axis,
    cdf_legend,
    cdf_trace,
    cdf_yaxis,
    composition_layout,
    composition_trace,
    layout,
    ptext,
    render_page,
)

MAX_COMPOSITION_KEYS = 12
TOP_PER_COMBINATION = 7
MARGIN = {"l": 20, "r": 30, "t": 50, "b": 50}
"""Figures' margins: narrower on the left than the report's, the labels are short."""


def _layout(title: str, height: int, **extra: Any) -> dict[str, Any]:
    """The report's figure style with a narrower left margin and plotly's own legend."""
    base = {"margin": MARGIN, "legend": {}}
    return layout(title, height, **{**base, **extra})


def _ok_rows(results: pd.DataFrame) -> pd.DataFrame:
    """The completed pods' rows, with ``handler`` holding the combination's name."""
    ok = results[results["pod_status"] == "ok"]
    return ok.assign(handler=combination_names_of(ok))


def composition_figure(summary: Mapping[str, Any], results: pd.DataFrame) -> dict[str, Any] | None:
    """Stacked bars, one per combination: the mean critical time per pod of each phase. Means
    (not medians) so that each bar adds up to its combination's mean pod start, and each
    segment is its phase's critical share of it."""
    ok = _ok_rows(results)
    if ok.empty:
        return None
    names = [n for n in combination_names(summary) if n in set(ok["handler"])]
    pods = ok[ok["phase"] == "pod"].groupby("handler")["sandbox_id"].nunique()
    per = ok[ok["phase"] != "pod"].groupby(["handler", "phase"], sort=False)["self_ms"].sum()
    totals = per.groupby(level="phase", sort=False).sum().sort_values(ascending=False)
    keys = [str(k) for k in totals.index if totals[k] > 0]
    # each combination's own largest phases get a colour (cni.plugin ptp matters to ptp's
    # bars even where it is small over all combinations); the rest add up in "other"
    own: set[str] = set()
    for name in names:
        mine = per.loc[name].sort_values(ascending=False)
        own |= {str(k) for k in mine.index[:TOP_PER_COMBINATION] if mine[k] > 0}
    shown = [k for k in keys if k in own][:MAX_COMPOSITION_KEYS]
    rest = [k for k in keys if k not in shown]
    labels = [f"{ptext(n)} ({int(pods.get(n, 0))} pods)" for n in names]
    data: list[dict[str, Any]] = []
    for i, key in enumerate([*shown, "other"]):
        members = rest if key == "other" else [key]
        values = [
            round(sum(float(per.get((n, k), 0.0)) for k in members) / int(pods.get(n, 1)), 3)
            for n in names
        ]
        if not any(values):
            continue
        color = COLOR_OTHER if key == "other" else PALETTE[i % len(PALETTE)]
        data.append(
            composition_trace(key, labels, values, color, "mean critical time %{x:.2f} ms per pod")
        )
    return {
        "id": "fig-composition",
        "data": data,
        "layout": composition_layout(
            "Critical-path composition per combination: mean critical time per pod (ms)",
            height=max(160 + 50 * len(names), 120 + 22 * len(data)),
            xaxis_title="ms of the pod start each phase held the critical path (mean per pod)",
            margin=MARGIN,
        ),
    }


def medians_figure(summary: Mapping[str, Any]) -> dict[str, Any] | None:
    """Grouped horizontal bars: per phase, each combination's median with its 95% CI."""
    phases = phase_rows(summary)
    combos = list(summary.get("combinations", ()))
    if not phases or not combos:
        return None
    data: list[dict[str, Any]] = []
    for i, combo in enumerate(combos):
        stats = [phase_stat(combo, p) for p in phases]
        med = [float(s["median_ms"]) if s else None for s in stats]
        data.append(
            {
                "type": "bar",
                "orientation": "h",
                "name": ptext(combination_name(combo)),
                "y": [ptext(p) for p in phases],
                "x": med,
                "marker": {"color": PALETTE[i % len(PALETTE)]},
                "error_x": {
                    "type": "data",
                    "symmetric": False,
                    "array": [
                        round(float(s["ci95_ms"][1]) - float(s["median_ms"]), 3) if s else None
                        for s in stats
                    ],
                    "arrayminus": [
                        round(float(s["median_ms"]) - float(s["ci95_ms"][0]), 3) if s else None
                        for s in stats
                    ],
                    "thickness": 1.2,
                    "width": 3,
                },
                "customdata": [
                    [float(s["ci95_ms"][0]), float(s["ci95_ms"][1]), int(s.get("n", 0))]
                    if s
                    else [None, None, 0]
                    for s in stats
                ],
                "hovertemplate": f"<b>%{{y}}</b><br>{ptext(combination_name(combo))}<br>median "
                "%{x:.2f} ms<br>95% CI %{customdata[0]:.2f} - %{customdata[1]:.2f} ms"
                "<br>n %{customdata[2]}<extra></extra>",
            }
        )
    return {
        "id": "fig-medians",
        "data": data,
        "layout": _layout(
            "Per-phase median duration with its bootstrap 95% CI (ms)",
            height=140 + len(phases) * (10 + 9 * len(combos)),
            barmode="group",
            bargap=0.25,
            xaxis=axis("median duration per pod (ms)", rangemode="tozero"),
            yaxis={"automargin": True, "autorange": "reversed"},
            legend={"orientation": "h", "y": 1.02, "yanchor": "bottom", "x": 0},
            margin={"l": 20, "r": 30, "t": 80, "b": 50},
        ),
    }


def cdf_figure(summary: Mapping[str, Any], results: pd.DataFrame) -> dict[str, Any] | None:
    """The share of a combination's completed pods that started within x ms."""
    pods = _ok_rows(results)
    pods = pods[pods["phase"] == "pod"]
    if pods.empty:
        return None
    data: list[dict[str, Any]] = []
    for i, name in enumerate(combination_names(summary)):
        rows = pods[pods["handler"] == name].sort_values("duration_ms")
        if rows.empty:
            continue
        data.append(
            cdf_trace(
                name,
                PALETTE[i % len(PALETTE)],
                [round(float(v), 3) for v in rows["duration_ms"]],
                [str(p) for p in rows["pod"]],
            )
        )
    return {
        "id": "fig-cdf",
        "data": data,
        "layout": _layout(
            "Pod start time, cumulative, per combination",
            height=440,
            xaxis=axis("pod start time (ms)"),
            yaxis=cdf_yaxis(),
            legend=cdf_legend(),
            margin={"l": 60, "r": 30, "t": 50, "b": 50},
        ),
    }


def build_figures(summary: Mapping[str, Any], results: pd.DataFrame) -> list[dict[str, Any]]:
    figures = [
        composition_figure(summary, results),
        medians_figure(summary),
        cdf_figure(summary, results),
    ]
    return [f for f in figures if f is not None]


def _facts(summary: Mapping[str, Any]) -> list[tuple[str, str]]:
    bench = summary.get("bench", {})
    settings = bench.get("settings", {})
    rec = bench.get("recording", {})
    timings = bench.get("timings_s", {})
    facts = [
        ("host", f"{bench.get('host', '-')} (kernel {bench.get('kernel', '-')})"),
        ("started", str(bench.get("started", "-"))),
        ("combinations", ", ".join(combination_names(summary))),
    ]
    if settings.get("containerds"):
        versions = dict.fromkeys(
            f"{c['containerd']} ({c.get('containerd_version') or '?'})"
            for c in summary.get("combinations", ())
        )
        facts.append(
            (
                "containerd",
                ", ".join(versions) + f"; the lab brought up {bench.get('lab_visits', '-')} "
                "times, each containerd once per round",
            )
        )
    facts += [
        (
            "pods",
            f"{settings.get('pods', '-')} measured per combination after "
            f"{settings.get('warmup', '-')} warm-up, {settings.get('concurrency', '-')} at a time, "
            f"{settings.get('containers', '-')} container(s) each, in "
            f"{settings.get('rounds', '-')} interleaved round(s) of "
            f"{settings.get('round_size', '-')}",
        ),
        (
            "recording",
            f"{rec.get('file', '-')}: {rec.get('pods_seen', '-')} pods, "
            f"{rec.get('drops', '-')} events dropped",
        ),
        ("wall time", f"{timings.get('wall_s', 0):.1f} s"),
        (
            "statistics",
            "median, p95 and percentile-bootstrap 95% CI of the median "
            f"({settings.get('bootstrap_resamples', '-')} resamples, "
            f"seed {settings.get('seed', '-')})",
        ),
    ]
    return facts


def _phase_table(summary: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Every phase: per combination median [CI] and critical share, the fastest, the margin."""
    combos = list(summary.get("combinations", ()))
    rows = []
    for phase in ["pod", *phase_rows(summary, everything=True)]:
        ranked = ranking(summary, phase)
        best = ranked[0][0] if len(ranked) > 1 else ""
        cells = []
        for combo in combos:
            stat = phase_stat(combo, phase)
            share = None
            if stat is not None and stat.get("critical_share") is not None:
                share = f"{float(stat['critical_share']):.0%}"
            cls = "num best" if combination_name(combo) == best else "num"
            cells.append({"cls": cls, "text": stat_cell(stat), "share": share})
        rows.append({"phase": phase, "cells": cells, "best": best, "margin": margin_text(ranked)})
    return rows


def _agreement(summary: Mapping[str, Any]) -> list[str]:
    texts = []
    for combo in summary.get("combinations", ()):
        a = combo.get("truth_agreement_ms")
        texts.append(
            "-" if not a else f"median {a['median']:.3f}, p95 {a['p95']:.3f}, max {a['max']:.3f}"
        )
    return texts


def _change_table(summary: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The containerd upgrade: per phase, each runtime x CNI's change cell."""
    entries = list(summary.get("containerd_change", ()))
    rows = []
    for phase in change_rows(summary):
        cells = []
        for e in entries:
            row = next((r for r in e["phases"] if r["phase"] == phase), None)
            cls = "num"
            if row is not None and row.get("significant"):
                cls += " bad" if row["change_ms"] > 0 else " best"
            cells.append({"cls": cls, "text": "-" if row is None else change_cell(row)})
        rows.append({"phase": phase, "cells": cells})
    return rows


def _baseline(summary: Mapping[str, Any], changes: Sequence[PhaseChange]) -> dict[str, Any]:
    base = summary.get("baseline") or {}
    moved = [c for c in changes if not c.overlap]
    return {
        "dir": base.get("dir") or "-",
        "threshold": (base.get("threshold_pct") or 0) if base.get("fail_on_regression") else None,
        "unchanged": len(changes) - len(moved),
        "compared": len(changes),
        "moved": [
            {
                "combination": c.combination,
                "phase": c.phase,
                "baseline": fmt_ms(c.baseline_ms),
                "now": fmt_ms(c.current_ms),
                "change": f"{c.change_pct:+.0f}%",
                "regressed": c.regressed,
                "verdict": "REGRESSION"
                if c.regressed
                else "faster"
                if c.improved
                else "slower, under threshold",
            }
            for c in moved
        ],
    }


def render_html(
    summary: Mapping[str, Any],
    results: pd.DataFrame,
    changes: Sequence[PhaseChange] = (),
    *,
    generated: datetime | None = None,
) -> str:
    generated = generated or datetime.now(UTC)
    figures = build_figures(summary, results)
    ids = {f["id"] for f in figures}
    names = combination_names(summary)
    left_out = [
        f"{combination_name(c)}: {c.get('pods_failed', 0)} failed, "
        f"{c.get('pods_unattributed', 0)} not found in the recording"
        for c in summary.get("combinations", ())
        if c.get("pods_failed") or c.get("pods_unattributed")
    ]
    return render_page(
        "bench.html",
        title=f"startprof bench: {', '.join(names)}",
        figures=figures,
        names=names,
        facts=_facts(summary),
        headline=headline(summary),
        left_out="; ".join(left_out),
        baseline=_baseline(summary, changes) if summary.get("baseline") is not None else None,
        changes=list(summary.get("containerd_change", ())),
        change_table=_change_table(summary),
        change_notes=change_sentences(summary),
        composition=[i for i in ("fig-composition",) if i in ids],
        phase_figures=[i for i in ("fig-medians", "fig-cdf") if i in ids],
        phase_table=_phase_table(summary),
        agreement=_agreement(summary),
        generated=generated.strftime("%Y-%m-%d %H:%M:%S UTC"),
    )


def write_report(
    summary: Mapping[str, Any],
    results: pd.DataFrame,
    path: Path,
    changes: Sequence[PhaseChange] = (),
) -> int:
    """Write report.html; its size in bytes."""
    text = render_html(summary, results, changes)
    path.write_text(text, encoding="utf-8")
    return len(text.encode())
