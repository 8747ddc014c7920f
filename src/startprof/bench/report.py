"""What a bench shows: the terminal tables (rich renderables; the CLI prints them) and
report.html (self-contained: plotly.js inlined, nothing fetched, everything escaped).

Both are built from summary.json and results.parquet only, so a bench's outputs can be
re-rendered and are unit-testable without a lab.

Escaping follows reporters/html.py (whose helpers are reused): ``esc`` for HTML text and
attributes, ``ptext`` for plotly's HTML-like strings, ``script_json`` for the figures' JSON in
a ``<script>`` element, and a Content-Security-Policy with a per-report nonce.
"""

from __future__ import annotations

import secrets
import string
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from startprof import __version__
from startprof.bench.stats import PhaseChange, cis_overlap
from startprof.errors import EnvironmentProblem
from startprof.reporters.html import axis, esc, layout, ptext, script_json

MIN_CRITICAL_SHARE = 0.01
"""Phases below this share of the critical path in every combination stay out of the terminal
table and the CI chart (summary.json and the HTML table have them all)."""
ALWAYS_SHOWN = ("sandbox", "cni.add", "container.create", "container.start")
ALWAYS_SHOWN_KINDS = ("cni.plugin", "runtime.create", "runtime.start", "runtime.shim")
MAX_COMPOSITION_KEYS = 12
TOP_PER_COMBINATION = 7
PALETTE = (
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
    "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#7f7f7f", "#aec7e8",
)  # fmt: skip
COLOR_OTHER = "#ced4da"
FONT = "system-ui, -apple-system, 'Segoe UI', Roboto, 'DejaVu Sans', sans-serif"


# --- what both outputs say -----------------------------------------------------------------


def combination_names(summary: Mapping[str, Any]) -> list[str]:
    return [_name(c) for c in summary.get("combinations", ())]


def _name(combo: Mapping[str, Any]) -> str:
    """``runc-bridge``, or ``runc-bridge@2.1`` on the containerd axis."""
    return str(combo.get("name") or combo.get("handler") or f"{combo['runtime']}-{combo['cni']}")


def _names(results: pd.DataFrame) -> pd.Series:
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


def _stat(combo: Mapping[str, Any], phase: str) -> Mapping[str, Any] | None:
    stat = combo.get("pod") if phase == "pod" else combo.get("phases", {}).get(phase)
    if not isinstance(stat, Mapping) or stat.get("median_ms") is None:
        return None
    return stat


def ranking(summary: Mapping[str, Any], phase: str) -> list[tuple[str, Mapping[str, Any]]]:
    """(combination, stat) for every combination that has ``phase``, fastest median first."""
    found = [
        (_name(c), s) for c in summary.get("combinations", ()) if (s := _stat(c, phase)) is not None
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
    return f"{_fmt(gap)} ms ({pct:.0f}%) vs {second}{star}"


def headline(summary: Mapping[str, Any]) -> str:
    """One sentence naming the combination with the fastest pod start and by how much."""
    ranked = ranking(summary, "pod")
    if not ranked:
        return "No pod start completed: nothing to compare."
    best, stat = ranked[0]
    text = f"Fastest pod start: {best} (median {_fmt(float(stat['median_ms']))} ms)"
    if len(ranked) == 1:
        return text + "."
    others = []
    for name, other in ranked[1:]:
        gap = float(other["median_ms"]) - float(stat["median_ms"])
        pct = gap / float(other["median_ms"]) * 100 if other["median_ms"] else 0.0
        apart = "" if cis_overlap(stat["ci95_ms"], other["ci95_ms"]) else ", CIs apart"
        others.append(f"{_fmt(gap)} ms ({pct:.0f}%) faster than {name}{apart}")
    return f"{text}: {'; '.join(others)}."


def _fmt(ms: float) -> str:
    return f"{ms:,.1f}" if abs(ms) >= 1 else f"{ms:.2f}"


def _short(ms: float) -> str:
    """Three significant digits or so: table cells stay narrow enough for a terminal."""
    if abs(ms) >= 100:
        return f"{ms:,.0f}"
    return f"{ms:.1f}" if abs(ms) >= 1 else f"{ms:.2f}"


def _cell(stat: Mapping[str, Any] | None) -> str:
    if stat is None:
        return "-"
    lo, hi = stat["ci95_ms"]
    return f"{_short(float(stat['median_ms']))} [{_short(float(lo))}-{_short(float(hi))}]"


# --- terminal -------------------------------------------------------------------------------


def terminal_report(
    summary: Mapping[str, Any], changes: Sequence[PhaseChange] = ()
) -> RenderableType:
    """The phase-by-phase table, the headline, and the baseline comparison when there is one."""
    names = combination_names(summary)
    n = ", ".join(f"{_name(c)} n={c['n']}" for c in summary.get("combinations", ()))
    table = Table(
        title=f"startprof bench: median ms [95% CI of the median] ({n})",
        title_justify="left",
        show_edge=False,
    )
    table.add_column("phase", no_wrap=True)
    for name in names:
        table.add_column(name, justify="right", no_wrap=True)
    table.add_column("fastest", no_wrap=True, min_width=max(map(len, names), default=7))
    table.add_column("ahead of the next by", overflow="fold")
    combos = list(summary.get("combinations", ()))
    for phase in ["pod", *phase_rows(summary)]:
        ranked = ranking(summary, phase)
        best = ranked[0][0] if len(ranked) > 1 else ""
        cells: list[str | Text] = [Text(phase, style="bold" if phase == "pod" else "")]
        for combo in combos:
            text = _cell(_stat(combo, phase))
            cells.append(Text(text, style="green" if _name(combo) == best else ""))
        cells += [best, margin_text(ranked)]
        table.add_row(*cells)
    parts: list[RenderableType] = [
        table,
        Text("* the two CIs do not overlap", style="dim"),
        Text(headline(summary), style="bold"),
    ]
    agreement = [
        f"{_name(c)} {c['truth_agreement_ms']['median']:.2f}/{c['truth_agreement_ms']['max']:.2f}"
        for c in combos
        if c.get("truth_agreement_ms")
    ]
    if agreement:
        parts.append(
            Text(
                "probe vs ground-truth CRI times, median/max |difference| ms: "
                + ", ".join(agreement),
                style="dim",
            )
        )
    upgrade = containerd_change_table(summary)
    if upgrade is not None:
        parts.append(upgrade)
    if changes:
        parts.append(baseline_table(changes))
    return Group(*parts)


def _change_cell(row: Mapping[str, Any]) -> str:
    """``-12.3 ms (-7% [-10, -3])*``; ``gone`` / ``new`` for a phase one version lacks."""
    if row.get("from") is None:
        return "new"
    if row.get("to") is None:
        return "gone"
    lo, hi = row["change_ci95_pct"]
    star = "*" if row["significant"] else ""
    return f"{row['change_ms']:+.1f} ms ({row['change_pct']:+.0f}% [{lo:+.0f}, {hi:+.0f}]){star}"


def _change_rows(summary: Mapping[str, Any]) -> list[str]:
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
            f"{e['runtime']}-{e['cni']}: pod start {_fmt(pod['from']['median_ms'])} -> "
            f"{_fmt(pod['to']['median_ms'])} ms ({pod['change_pct']:+.0f}%, 95% CI of the change "
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


def containerd_change_table(summary: Mapping[str, Any]) -> RenderableType | None:
    """Upgrade table: per phase and runtime x CNI, the change of the median from the first
    --containerd to the next with the 95% CI of the change in %; * where it excludes 0."""
    entries = list(summary.get("containerd_change", ()))
    if not entries:
        return None
    parts: list[RenderableType] = []
    for pair in dict.fromkeys((e["from"], e["to"]) for e in entries):
        mine = [e for e in entries if (e["from"], e["to"]) == pair]
        table = Table(
            title=f"containerd {pair[0]} -> {pair[1]}: change of the median [95% CI of the change]",
            title_justify="left",
            show_edge=False,
        )
        table.add_column("phase", no_wrap=True)
        for e in mine:
            table.add_column(f"{e['runtime']}-{e['cni']}", justify="right", no_wrap=True)
        for phase in _change_rows(summary):
            cells = []
            for e in mine:
                row = next((r for r in e["phases"] if r["phase"] == phase), None)
                text = "-" if row is None else _change_cell(row)
                style = ""
                if row is not None and row.get("significant"):
                    style = "red" if row["change_ms"] > 0 else "green"
                cells.append(Text(text, style=style))
            if any(c.plain != "-" for c in cells):
                table.add_row(Text(phase, style="bold" if phase == "pod" else ""), *cells)
        parts.append(table)
    parts.append(Text("* the CI of the change excludes 0", style="dim"))
    parts += [Text(t, style="bold") for t in change_sentences(summary)]
    return Group(*parts)


def baseline_table(changes: Sequence[PhaseChange]) -> RenderableType:
    """The phases whose CIs moved apart from the baseline's; the rest are counted."""
    moved = [c for c in changes if not c.overlap]
    table = Table(
        title="against the baseline: phases whose CIs do not overlap",
        title_justify="left",
        show_edge=False,
    )
    for column, justify in (
        ("combination", "left"),
        ("phase", "left"),
        ("baseline ms", "right"),
        ("now ms", "right"),
        ("change", "right"),
        ("verdict", "left"),
    ):
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    for c in moved:
        verdict = (
            Text("REGRESSION", style="bold red")
            if c.regressed
            else Text("faster", style="green")
            if c.improved
            else Text("slower, under the threshold", style="yellow")
        )
        table.add_row(
            c.combination,
            c.phase,
            f"{_fmt(c.baseline_ms)}",
            f"{_fmt(c.current_ms)}",
            f"{c.change_pct:+.0f}%",
            verdict,
        )
    same = len(changes) - len(moved)
    note = Text(f"{same} of {len(changes)} compared phases: CIs overlap (no change)", style="dim")
    return Group(table, note) if moved else note


# --- HTML -----------------------------------------------------------------------------------


def _layout(title: str, height: int, **extra: Any) -> dict[str, Any]:
    """The report's figure style with a narrower left margin and plotly's own legend."""
    base = {"margin": {"l": 20, "r": 30, "t": 50, "b": 50}, "legend": {}}
    return layout(title, height, **{**base, **extra})


def _ok_rows(results: pd.DataFrame) -> pd.DataFrame:
    """The completed pods' rows, with ``handler`` holding the combination's name."""
    ok = results[results["pod_status"] == "ok"]
    return ok.assign(handler=_names(ok))


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
        data.append(
            {
                "type": "bar",
                "orientation": "h",
                "name": ptext(key),
                "y": labels,
                "x": values,
                "marker": {"color": COLOR_OTHER if key == "other" else PALETTE[i % len(PALETTE)]},
                "texttemplate": "%{x:.0f}",
                "textposition": "inside",
                "insidetextanchor": "middle",
                "hovertemplate": f"<b>{ptext(key)}</b><br>%{{y}}<br>mean critical time "
                "%{x:.2f} ms per pod<extra></extra>",
            }
        )
    return {
        "id": "fig-composition",
        "data": data,
        "layout": _layout(
            "Critical-path composition per combination: mean critical time per pod (ms)",
            height=max(160 + 50 * len(names), 120 + 22 * len(data)),
            barmode="stack",
            bargap=0.35,
            uniformtext={"mode": "hide", "minsize": 10},
            xaxis=axis("ms of the pod start each phase held the critical path (mean per pod)"),
            yaxis={"automargin": True, "autorange": "reversed"},
            legend={"orientation": "v", "x": 1.01, "y": 1, "traceorder": "normal"},
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
        stats = [_stat(combo, p) for p in phases]
        med = [float(s["median_ms"]) if s else None for s in stats]
        data.append(
            {
                "type": "bar",
                "orientation": "h",
                "name": ptext(_name(combo)),
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
                "hovertemplate": f"<b>%{{y}}</b><br>{ptext(_name(combo))}<br>median %{{x:.2f}} ms"
                "<br>95% CI %{customdata[0]:.2f} - %{customdata[1]:.2f} ms<br>n %{customdata[2]}"
                "<extra></extra>",
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
        x = [round(float(v), 3) for v in rows["duration_ms"]]
        n = len(x)
        data.append(
            {
                "type": "scatter",
                "mode": "lines+markers" if n <= 100 else "lines",
                "line": {"shape": "hv", "width": 2, "color": PALETTE[i % len(PALETTE)]},
                "marker": {"size": 5},
                "name": f"{ptext(name)} ({n} pods)",
                "x": [x[0], *x],
                "y": [0.0, *(round((k + 1) / n, 4) for k in range(n))],
                "text": [ptext(rows["pod"].iloc[0]), *(ptext(p) for p in rows["pod"])],
                "hovertemplate": "%{text}<br>%{x:.1f} ms<br>%{y:.0%} of pods this fast or faster"
                "<extra></extra>",
            }
        )
    return {
        "id": "fig-cdf",
        "data": data,
        "layout": _layout(
            "Pod start time, cumulative, per combination",
            height=440,
            xaxis=axis("pod start time (ms)"),
            yaxis=axis("share of pods", tickformat=".0%", range=[0, 1.05]),
            legend={"x": 0.99, "xanchor": "right", "y": 0.02, "yanchor": "bottom"},
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


def _facts_html(summary: Mapping[str, Any]) -> str:
    bench = summary.get("bench", {})
    settings = bench.get("settings", {})
    rec = bench.get("recording", {})
    timings = bench.get("timings_s", {})
    facts = [
        ("host", f"{bench.get('host', '-')} (kernel {bench.get('kernel', '-')})"),
        ("started", bench.get("started", "-")),
        ("combinations", ", ".join(combination_names(summary))),
        *(
            [
                (
                    "containerd",
                    ", ".join(
                        dict.fromkeys(
                            f"{c['containerd']} ({c.get('containerd_version') or '?'})"
                            for c in summary.get("combinations", ())
                        )
                    )
                    + f"; the lab brought up {bench.get('lab_visits', '-')} times, each "
                    "containerd once per round",
                )
            ]
            if settings.get("containerds")
            else []
        ),
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
    rows = "".join(f"<dt>{esc(k)}</dt><dd>{esc(v)}</dd>" for k, v in facts)
    return f'<dl class="facts">{rows}</dl>'


def _table_html(summary: Mapping[str, Any]) -> str:
    combos = list(summary.get("combinations", ()))
    head = "".join(f'<th class="num">{esc(_name(c))}</th>' for c in combos)
    rows = []
    for phase in ["pod", *phase_rows(summary, everything=True)]:
        ranked = ranking(summary, phase)
        best = ranked[0][0] if len(ranked) > 1 else ""
        cells = []
        for combo in combos:
            stat = _stat(combo, phase)
            share = ""
            if stat is not None and stat.get("critical_share") is not None:
                share = f' <span class="muted">{float(stat["critical_share"]):.0%}</span>'
            cls = "num best" if _name(combo) == best else "num"
            cells.append(f'<td class="{cls}">{esc(_cell(stat))}{share}</td>')
        rows.append(
            f"<tr><td><code>{esc(phase)}</code></td>{''.join(cells)}"
            f'<td>{esc(best)}</td><td class="margin">{esc(margin_text(ranked))}</td></tr>'
        )
    agreement = []
    for combo in combos:
        a = combo.get("truth_agreement_ms")
        text = "-" if not a else f"median {a['median']:.3f}, p95 {a['p95']:.3f}, max {a['max']:.3f}"
        agreement.append(f'<td class="num">{esc(text)}</td>')
    rows.append(
        f"<tr><td>probe vs truth |difference| ms</td>{''.join(agreement)}<td></td><td></td></tr>"
    )
    return (
        '<table class="phases"><thead><tr><th>phase</th>'
        f"{head}<th>fastest</th><th>ahead of the next by</th></tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table>"
    )


def _change_html(summary: Mapping[str, Any]) -> str:
    entries = list(summary.get("containerd_change", ()))
    if not entries:
        return ""
    head = "".join(
        f'<th class="num">{esc(e["runtime"])}-{esc(e["cni"])}: {esc(e["from"])} &rarr; '
        f"{esc(e['to'])}</th>"
        for e in entries
    )
    rows = []
    for phase in _change_rows(summary):
        cells = []
        for e in entries:
            row = next((r for r in e["phases"] if r["phase"] == phase), None)
            cls = "num"
            if row is not None and row.get("significant"):
                cls += " bad" if row["change_ms"] > 0 else " best"
            cells.append(f'<td class="{cls}">{esc("-" if row is None else _change_cell(row))}</td>')
        rows.append(f"<tr><td><code>{esc(phase)}</code></td>{''.join(cells)}</tr>")
    notes = "".join(f"<p>{esc(t)}</p>" for t in change_sentences(summary))
    return (
        '<p class="note">Change of the median from one containerd to the next, in ms and %, '
        "with the percentile-bootstrap 95% CI of the change (each version's pods resampled "
        "independently); * and colour where that CI excludes 0.</p>"
        f'<table class="phases"><thead><tr><th>phase</th>{head}</tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table>{notes}"
    )


def _baseline_html(summary: Mapping[str, Any], changes: Sequence[PhaseChange]) -> str:
    base = summary.get("baseline") or {}
    moved = [c for c in changes if not c.overlap]
    rows = "".join(
        f"<tr><td>{esc(c.combination)}</td><td><code>{esc(c.phase)}</code></td>"
        f'<td class="num">{esc(_fmt(c.baseline_ms))}</td><td class="num">{esc(_fmt(c.current_ms))}'
        f'</td><td class="num">{c.change_pct:+.0f}%</td><td class="{"bad" if c.regressed else ""}">'
        f"{'REGRESSION' if c.regressed else 'faster' if c.improved else 'slower, under threshold'}"
        "</td></tr>"
        for c in moved
    )
    threshold = base.get("threshold_pct") or 0
    head = (
        f"<p>Against <code>{esc(base.get('dir') or '-')}</code>"
        + (f", failing above {esc(threshold)}% slower" if base.get("fail_on_regression") else "")
        + f": {len(changes) - len(moved)} of {len(changes)} phases unchanged (CIs overlap).</p>"
    )
    if not moved:
        return head
    return (
        head + "<table><thead><tr><th>combination</th><th>phase</th><th>baseline ms</th>"
        f"<th>now ms</th><th>change</th><th>verdict</th></tr></thead><tbody>{rows}</tbody></table>"
    )


_PAGE = string.Template(
    """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="Content-Security-Policy" content="$csp">
<meta name="generator" content="startprof $version">
<link rel="icon" href="data:,">
<title>$title</title>
<style>
  body { margin: 0; font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif;
         color: #212529; }
  header { padding: 18px 28px 14px; background: #f8f9fa; border-bottom: 1px solid #dee2e6; }
  main { padding: 8px 28px 40px; max-width: 1400px; }
  h1 { font-size: 22px; margin: 0 0 10px; }
  h2 { font-size: 18px; margin: 28px 0 6px; padding-bottom: 4px; border-bottom: 1px solid #dee2e6; }
  p.note, .muted { color: #6c757d; }
  p.headline { font-size: 16px; font-weight: 600; }
  dl.facts { display: grid; grid-template-columns: max-content 1fr; gap: 3px 18px; margin: 0; }
  dl.facts dt { color: #6c757d; } dl.facts dd { margin: 0; }
  table { border-collapse: collapse; margin: 6px 0 10px; font-variant-numeric: tabular-nums; }
  th, td { padding: 4px 10px; border-bottom: 1px solid #dee2e6; text-align: left; }
  th { background: #f8f9fa; white-space: nowrap; }
  td.num, th.num { text-align: right; white-space: nowrap; }
  td.margin { white-space: nowrap; }
  td.best { color: #2b8a3e; font-weight: 600; }
  .bad { color: #c92a2a; font-weight: 600; }
  code { font-family: ui-monospace, "DejaVu Sans Mono", Menlo, monospace; font-size: 12.5px; }
  footer { color: #6c757d; padding: 12px 28px 30px; border-top: 1px solid #dee2e6; }
</style>
</head>
<body>
$body
<script nonce="$nonce">$plotly_js</script>
<script nonce="$nonce" id="startprof-figures" type="application/json">$figures</script>
<script nonce="$nonce">
(function () {
  "use strict";
  var figures = JSON.parse(document.getElementById("startprof-figures").textContent);
  var config = { displaylogo: false, responsive: true };
  figures.forEach(function (f) { Plotly.newPlot(f.id, f.data, f.layout, config); });
})();
</script>
</body>
</html>
"""
)


# Opened from a ticket or a mail: it must never reach the network, and nothing from the
# recording may ever run as script. Only the report's scripts carrying the nonce run.
_CSP = (
    "default-src 'none'; script-src 'nonce-{nonce}'; style-src 'unsafe-inline'; "
    "img-src data:; font-src data:"
)


def _plotly_js() -> str:
    from plotly.offline import get_plotlyjs

    js: str = get_plotlyjs()
    if "</script" in js.lower():  # would end the inline element early
        raise EnvironmentProblem(
            "the installed plotly.js cannot be inlined: it contains '</script'",
            fix="install another plotly release",
        )
    return js


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
    body = [
        "<header>",
        f"<h1>startprof bench: {esc(', '.join(names))}</h1>",
        _facts_html(summary),
        "</header>",
        "<main>",
        f'<p class="headline">{esc(headline(summary))}</p>',
    ]
    failed = [
        f"{_name(c)}: {c.get('pods_failed', 0)} failed, {c.get('pods_unattributed', 0)} not found "
        "in the recording"
        for c in summary.get("combinations", ())
        if c.get("pods_failed") or c.get("pods_unattributed")
    ]
    if failed:
        body.append(
            f'<p class="bad">Pods left out of the statistics: {esc("; ".join(failed))}.</p>'
        )
    if summary.get("baseline") is not None:
        body += ["<h2>Against the baseline</h2>", _baseline_html(summary, changes)]
    if summary.get("containerd_change"):
        body += ["<h2>Upgrading containerd</h2>", _change_html(summary)]
    body.append("<h2>Critical path</h2>")
    body.append(
        '<p class="note">Critical time is the time a phase itself held the pod start back: the '
        "critical path walks back from the pod's end, always into the child that finished last. "
        "Each bar adds up to the combination's mean pod start.</p>"
    )
    body += [f'<div id="{fid}"></div>' for fid in ("fig-composition",) if fid in ids]
    body.append("<h2>Phases</h2>")
    body.append(
        '<p class="note">Medians over the completed pods of each combination with the bootstrap '
        "95% confidence interval of the median. Phases below 1% of the critical path everywhere "
        "are only in the table below.</p>"
    )
    body += [f'<div id="{fid}"></div>' for fid in ("fig-medians", "fig-cdf") if fid in ids]
    body.append(
        '<p class="note">Every phase: median [95% CI] in ms, then its share of the critical '
        "path. Green: the fastest combination for the phase; * after the margin: the two CIs "
        "do not overlap.</p>"
    )
    body.append(_table_html(summary))
    body.append("</main>")
    body.append(
        f"<footer>startprof {esc(__version__)} bench report, generated "
        f"{esc(generated.strftime('%Y-%m-%d %H:%M:%S UTC'))}. Raw data: results.parquet, "
        "summary.json and the recording beside this file (<code>startprof report "
        "recording.arrows</code>).</footer>"
    )
    nonce = secrets.token_urlsafe(18)
    return _PAGE.substitute(
        csp=_CSP.format(nonce=nonce),
        nonce=nonce,
        version=esc(__version__),
        title=esc(f"startprof bench: {', '.join(names)}"),
        body="\n".join(body),
        plotly_js=_plotly_js(),
        figures=script_json(figures),
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
