"""The HTML report: one self-contained file to open anywhere, offline, or attach to a ticket.

Layout (docs/report.md): a header with the recording's facts, failed and incomplete pods
called out, a summary over all pods (median critical-path composition, per-phase duration
distributions, the pod start-time CDF, start time against when the pod started), a table of
the slowest pods and, for each of them, a waterfall of its phase tree with the critical path
highlighted. A thousand pods still make a handful of aggregate charts plus the top waterfalls.

Everything that comes from a recording is hostile until escaped. It reaches the page by
three routes, each with its own escape:
- HTML text and attributes: ``html.escape``;
- plotly strings (titles, tick labels, legend names, hover text): plotly renders them as a
  small HTML dialect (``<b>``, ``<a href>``), so ``<``, ``>`` and ``&`` are escaped as well;
  plotly decodes them and shows the characters;
- the figures' JSON inside ``<script>``: ``<``, ``>``, ``&``, U+2028 and U+2029 become
  ``\\uXXXX`` escapes, so no string can close the script element.
A Content-Security-Policy with a per-report nonce backs this up: only the report's own
scripts run and nothing is fetched.
"""

from __future__ import annotations

import html
import json
import secrets
import string
import textwrap
from collections import defaultdict
from collections.abc import Mapping, Sequence, Sized
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from startprof import __version__
from startprof.analysis.model import Analysis, Phase, Pod
from startprof.analysis.summary import phase_key, phase_table
from startprof.errors import EnvironmentProblem
from startprof.stats import median, p95

MAX_COMPOSITION_KEYS = 10
"""Phase keys stacked one by one in the composition bars; the rest add up in ``other``."""
MAX_BOX_KEYS = 16
"""Phase keys with a duration distribution, by critical share; more would be unreadable."""
MAX_POINTS = 100
"""Up to this many pods, box plots show every pod as a point (with its name on hover)."""
MAX_LISTED = 50
"""Failed or incomplete pods listed by name in the call-outs; the rest are counted."""
GROUP_EXAMPLES = 5
"""Pods named per group of failures that share a phase and an error."""
MAX_ATTRIBUTE_CHARS = 240
HOVER_WIDTH = 100

COLOR_CRITICAL = "#1971c2"
COLOR_OFF_PATH = "#adb5bd"
COLOR_FAILED = "#e03131"
STATUS_COLORS = {
    "ok": "#2b8a3e",
    "restarted": "#7048e8",
    "failed": "#c92a2a",
    "incomplete": "#e67700",
}
PALETTE = (
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
    "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#7f7f7f", "#aec7e8",
)  # fmt: skip
COLOR_OTHER = "#dee2e6"
FONT = "system-ui, -apple-system, 'Segoe UI', Roboto, 'DejaVu Sans', sans-serif"
MONO = "ui-monospace, 'DejaVu Sans Mono', Menlo, monospace"
NBSP = "\u00a0"
"""Tick labels are SVG text, which collapses ordinary spaces; no-break spaces survive."""

_SCRIPT_UNSAFE = {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028",
                  "\u2029": "\\u2029"}  # fmt: skip


def esc(value: object) -> str:
    """Escape a value for HTML text or attributes."""
    return html.escape(str(value), quote=True)


def ptext(value: object) -> str:
    """Escape a value for plotly's HTML-like strings (titles, labels, hover text). Plotly
    decodes ``&lt; &gt; &amp;`` but shows ``&quot;`` as is; without ``<`` no tag can form."""
    return html.escape(str(value), quote=False)


def script_json(value: object) -> str:
    """JSON that is safe inside a ``<script>`` element: no string in it can end the element."""
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    for char, escaped in _SCRIPT_UNSAFE.items():
        text = text.replace(char, escaped)
    return text


def _ms(ns: float) -> float:
    return round(ns / 1e6, 3)


def _fmt_ms(ms: float) -> str:
    return f"{ms:,.1f} ms" if ms >= 1 else f"{ms:.2f} ms"


def _wall(ns: int) -> str:
    return datetime.fromtimestamp(ns / 1e9, UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + " UTC"


def pod_label(pod: Pod) -> str:
    return pod.name or pod.sandbox_id[:12]


def group_of(pod: Pod) -> str:
    """How pods are compared: by runtime handler (a bench runs several), else by OCI runtime."""
    return pod.runtime_handler or pod.runtime or "unknown"


# --- figures: plain plotly JSON, so tests can read exactly what the page will draw ---------


def layout(title: str, height: int, **extra: Any) -> dict[str, Any]:
    """The house style of a plotly figure's layout; ``extra`` keys replace the defaults."""
    layout: dict[str, Any] = {
        "title": {"text": title, "x": 0, "xanchor": "left", "font": {"size": 15}},
        "height": height,
        "margin": {"l": 60, "r": 30, "t": 50, "b": 50},
        "font": {"family": FONT, "size": 12},
        "paper_bgcolor": "#ffffff",
        "plot_bgcolor": "#ffffff",
        "hoverlabel": {"align": "left"},
        "legend": {"orientation": "h", "y": -0.22, "yanchor": "top", "x": 0},
    }
    layout.update(extra)
    return layout


def axis(title: str, **extra: Any) -> dict[str, Any]:
    return {"title": {"text": title}, "gridcolor": "#e9ecef", "zeroline": False, **extra}


def tree_order(pod: Pod) -> list[tuple[Phase, int]]:
    """The pod's phases depth-first (children by start time), each with its depth."""
    children: dict[str | None, list[Phase]] = defaultdict(list)
    ids = {p.id for p in pod.phases}
    for p in pod.phases:
        # a parent missing from the tree would hide its subtree: hang it under the root instead
        parent = p.parent_id if p.parent_id in ids or p.parent_id is None else pod.phases[0].id
        children[parent].append(p)
    ordered: list[tuple[Phase, int]] = []

    def walk(phase: Phase, depth: int) -> None:
        ordered.append((phase, depth))
        for child in sorted(children.get(phase.id, []), key=lambda c: (c.start_ns, c.end_ns)):
            walk(child, depth + 1)

    for root in children.get(None, []):
        walk(root, 0)
    return ordered


def tree_labels(rows: Sequence[tuple[Phase, int]]) -> list[str]:
    """Waterfall row labels: indented by depth and padded to one width, because plotly aligns
    tick labels to the right and the indentation would not show otherwise (monospace font)."""
    raw = [NBSP * 2 * depth + phase.name for phase, depth in rows]
    width = max((len(r) for r in raw), default=0)
    return [ptext(r) + NBSP * (width - len(r)) for r in raw]


def _attribute_text(value: object) -> str:
    if isinstance(value, Mapping):
        text = ", ".join(
            f"{k} \u00d7{v}" if isinstance(v, int) else f"{k} {v}" for k, v in value.items()
        )
    elif isinstance(value, list | tuple | np.ndarray):
        text = " ".join(str(v) for v in value)
    else:
        text = str(value)
    return text if len(text) <= MAX_ATTRIBUTE_CHARS else text[: MAX_ATTRIBUTE_CHARS - 1] + "…"


def phase_hover(pod: Pod, phase: Phase) -> str:
    """Hover text of one waterfall bar; every piece from the recording escaped."""
    lines = [
        f"<b>{ptext(phase.name)}</b>",
        f"@{_fmt_ms(_ms(phase.start_ns - pod.start_ns))} +{_fmt_ms(_ms(phase.duration_ns))}",
        f"status: {ptext(phase.status)}",
    ]
    if phase.on_critical_path:
        lines.append(f"on the critical path, self {_fmt_ms(_ms(phase.self_ns))}")
    else:
        lines.append("off the critical path")
    if phase.error:
        lines.append(_hover_line("error", phase.error))
    for key, value in phase.attributes.items():
        if value is None or (isinstance(value, Sized) and len(value) == 0):
            continue
        lines.append(_hover_line(key, value))
    return "<br>".join(lines)


def _hover_line(key: str, value: object) -> str:
    """``key: value``, wrapped: plotly does not wrap hover text, and argv can be long."""
    pieces = textwrap.wrap(f"{key}: {_attribute_text(value)}", HOVER_WIDTH) or [""]
    return f"<br>{NBSP * 4}".join(ptext(piece) for piece in pieces)


def waterfall_figure(pod: Pod, div_id: str) -> dict[str, Any]:
    """Horizontal bars, one row per phase in tree order, x in ms from the pod's start.

    Three traces: phases on the critical path, phases off it, failed phases (which keep a dark
    outline when they are on the path). Bars are ``base`` + ``x`` (start + duration).
    """
    rows = tree_order(pod)
    groups: dict[str, list[int]] = {"critical": [], "off": [], "failed": []}
    for index, (phase, _) in enumerate(rows):
        if phase.status == "error":
            groups["failed"].append(index)
        elif phase.on_critical_path:
            groups["critical"].append(index)
        else:
            groups["off"].append(index)
    style = {
        "critical": ("on the critical path", COLOR_CRITICAL),
        "off": ("off the critical path", COLOR_OFF_PATH),
        "failed": ("failed", COLOR_FAILED),
    }
    data: list[dict[str, Any]] = []
    for key, indices in groups.items():
        if not indices:
            continue
        name, color = style[key]
        phases = [rows[i][0] for i in indices]
        data.append(
            {
                "type": "bar",
                "orientation": "h",
                "name": name,
                "y": indices,
                "base": [_ms(p.start_ns - pod.start_ns) for p in phases],
                "x": [max(_ms(p.duration_ns), 0.001) for p in phases],
                "width": 0.72,
                "customdata": [p.id for p in phases],
                "text": [_fmt_ms(_ms(p.duration_ns)) for p in phases],
                "textposition": "outside",
                "cliponaxis": False,
                "textfont": {"size": 10, "color": "#495057"},
                "hovertext": [phase_hover(pod, p) for p in phases],
                "hovertemplate": "%{hovertext}<extra></extra>",
                "marker": {
                    "color": color,
                    "line": {
                        "color": ["#212529" if p.on_critical_path else color for p in phases],
                        "width": 1.5 if key == "failed" else 0,
                    },
                },
            }
        )
    duration = _ms(pod.duration_ns)
    labels = tree_labels(rows)
    title = f"{ptext(pod_label(pod))}: {_fmt_ms(duration)}, {ptext(pod.status)}"
    return {
        "id": div_id,
        "data": data,
        "layout": layout(
            title,
            height=110 + 22 * len(rows),
            barmode="overlay",
            bargap=0.25,
            margin={"l": 20, "r": 40, "t": 96, "b": 40},
            # on top: a waterfall is read from its first row down, and may be 60 rows tall
            xaxis=axis(
                "ms since the pod's first event", range=[0, duration * 1.12 or 1], side="top"
            ),
            yaxis={
                "tickmode": "array",
                "tickvals": list(range(len(rows))),
                "ticktext": labels,
                "autorange": "reversed",
                "automargin": True,
                "tickfont": {"family": MONO, "size": 11},
                "showgrid": False,
            },
            legend={"orientation": "h", "y": 0, "x": 1, "xanchor": "right", "yanchor": "top"},
        ),
    }


def _done_table(pods: Sequence[Pod]) -> pd.DataFrame:
    """Per completed pod and phase key: summed duration and critical (self) time, in ms."""
    done = [p for p in pods if p.status == "ok"]
    table = phase_table(done)
    if table.empty:
        return table
    table["key"] = [phase_key(i, n) for i, n in zip(table["phase_id"], table["phase"], strict=True)]
    groups = {(p.host, p.sandbox_id): group_of(p) for p in done}
    table["group"] = [groups[k] for k in zip(table["host"], table["sandbox_id"], strict=True)]
    table = table[table["key"] != "pod"]
    return table.groupby(["group", "host", "sandbox_id", "key"], sort=False, as_index=False).agg(
        duration_ms=("duration_ms", "sum"), self_ms=("self_ms", "sum")
    )


def _ranked_keys(per_pod: pd.DataFrame) -> list[str]:
    """Phase keys by their total critical time, largest first."""
    totals = per_pod.groupby("key", sort=False)["self_ms"].sum().sort_values(ascending=False)
    return [str(k) for k in totals.index]


def _key_colors(keys: Sequence[str]) -> dict[str, str]:
    return {k: PALETTE[i % len(PALETTE)] for i, k in enumerate(keys)}


def composition_figure(pods: Sequence[Pod], per_pod: pd.DataFrame) -> dict[str, Any] | None:
    """Stacked bars: per group of pods, the median critical time of each phase key."""
    if per_pod.empty:
        return None
    keys = _ranked_keys(per_pod)
    shown = keys[:MAX_COMPOSITION_KEYS]
    colors = _key_colors(shown)
    groups = sorted({group_of(p) for p in pods if p.status == "ok"})
    counts = {g: sum(1 for p in pods if p.status == "ok" and group_of(p) == g) for g in groups}
    # every pod counts for every key (0 ms when the key is not on its path), so medians compare
    wide = per_pod.pivot_table(
        index=["group", "sandbox_id", "host"], columns="key", values="self_ms", aggfunc="sum",
        fill_value=0.0,
    )  # fmt: skip
    wide["other"] = wide[keys[MAX_COMPOSITION_KEYS:]].sum(axis=1)
    labels = [f"{ptext(g)} ({counts[g]} pods)" for g in groups]
    data: list[dict[str, Any]] = []
    for key in [*shown, "other"]:
        medians = [round(median(wide.loc[g][key]), 3) for g in groups]
        if key == "other" and not any(medians):
            continue
        data.append(
            {
                "type": "bar",
                "orientation": "h",
                "name": ptext(key),
                "y": labels,
                "x": medians,
                "marker": {"color": colors.get(key, COLOR_OTHER)},
                "texttemplate": "%{x:.0f}",
                "textposition": "inside",
                "insidetextanchor": "middle",
                "hovertemplate": f"<b>{ptext(key)}</b><br>%{{y}}<br>median critical time "
                f"%{{x:.2f}} ms<extra></extra>",
            }
        )
    return {
        "id": "fig-composition",
        "data": data,
        "layout": layout(
            "Where the critical path goes: median critical time per phase (ms)",
            height=max(150 + 46 * len(groups), 120 + 22 * len(data)),
            barmode="stack",
            bargap=0.35,
            uniformtext={"mode": "hide", "minsize": 10},
            margin={"l": 20, "r": 20, "t": 50, "b": 50},
            xaxis=axis("ms of the pod start spent in each phase (median over completed pods)"),
            yaxis={"automargin": True, "autorange": "reversed"},
            legend={"orientation": "v", "x": 1.01, "y": 1, "traceorder": "normal"},
        ),
    }


def distribution_figure(pods: Sequence[Pod], per_pod: pd.DataFrame) -> dict[str, Any] | None:
    """One box per phase key (by critical share): its duration over the completed pods."""
    if per_pod.empty:
        return None
    keys = _ranked_keys(per_pod)[:MAX_BOX_KEYS]
    colors = _key_colors(keys[:MAX_COMPOSITION_KEYS])
    names = {(p.host, p.sandbox_id): pod_label(p) for p in pods}
    few = per_pod["sandbox_id"].nunique() <= MAX_POINTS
    data: list[dict[str, Any]] = []
    for key in keys:
        rows = per_pod[per_pod["key"] == key]
        trace: dict[str, Any] = {
            "type": "box",
            "orientation": "h",
            "name": ptext(key),
            "x": [round(float(v), 3) for v in rows["duration_ms"]],
            "marker": {"color": colors.get(key, "#868e96"), "size": 4},
            "line": {"width": 1.2},
            "boxpoints": "all" if few else "outliers",
            "jitter": 0.4 if few else 0,
            "pointpos": 0,
            "hoverinfo": "x+text" if few else "x",
        }
        if few:
            trace["text"] = [
                ptext(names.get((h, s), s[:12]))
                for h, s in zip(rows["host"], rows["sandbox_id"], strict=True)
            ]
        data.append(trace)
    return {
        "id": "fig-distribution",
        "data": data,
        "layout": layout(
            "Phase durations across completed pods (ms, log scale)",
            height=120 + 30 * len(keys),
            showlegend=False,
            margin={"l": 20, "r": 30, "t": 50, "b": 50},
            xaxis=axis("duration (ms)", type="log"),
            yaxis={
                "automargin": True,
                "autorange": "reversed",
                "tickfont": {"family": MONO, "size": 11},
            },
        ),
    }


def cdf_figure(pods: Sequence[Pod]) -> dict[str, Any] | None:
    """The share of completed pods started within x ms, one step line per group."""
    done = [p for p in pods if p.status == "ok"]
    if not done:
        return None
    groups = sorted({group_of(p) for p in done})
    data: list[dict[str, Any]] = []
    for i, group in enumerate(groups):
        members = sorted((p for p in done if group_of(p) == group), key=lambda p: p.duration_ns)
        n = len(members)
        data.append(
            {
                "type": "scatter",
                "mode": "lines+markers" if n <= MAX_POINTS else "lines",
                "line": {"shape": "hv", "width": 2, "color": PALETTE[i % len(PALETTE)]},
                "marker": {"size": 5},
                "name": f"{ptext(group)} ({n} pods)",
                # the first point at 0 draws the step up to the fastest pod
                "x": [_ms(members[0].duration_ns)] + [_ms(p.duration_ns) for p in members],
                "y": [0.0] + [round((k + 1) / n, 4) for k in range(n)],
                "text": [ptext(pod_label(members[0]))] + [ptext(pod_label(p)) for p in members],
                "hovertemplate": "%{text}<br>%{x:.1f} ms<br>%{y:.0%} of pods this fast or faster"
                "<extra></extra>",
            }
        )
    durations = np.array([_ms(p.duration_ns) for p in done])
    p50, p95_ms = median(durations), p95(durations)
    shapes = [
        {"type": "line", "xref": "x", "yref": "paper", "x0": v, "x1": v, "y0": 0, "y1": 1,
         "line": {"color": "#868e96", "dash": "dot", "width": 1}}
        for v in (p50, p95_ms)
    ]  # fmt: skip
    annotations = [
        {"x": v, "y": y, "xref": "x", "yref": "paper", "text": f"{label} {v:.1f} ms",
         "showarrow": False, "yanchor": "bottom", "font": {"size": 11, "color": "#495057"}}
        for v, label, y in ((p50, "p50", 1.0), (p95_ms, "p95", 1.07))
    ]  # fmt: skip
    return {
        "id": "fig-cdf",
        "data": data,
        "layout": layout(
            "Pod start time, cumulative (completed pods)",
            height=420,
            xaxis=axis("pod start time (ms)", rangemode="tozero"),
            yaxis=axis("share of pods", tickformat=".0%", range=[0, 1.05]),
            legend={
                "x": 0.99,
                "xanchor": "right",
                "y": 0.02,
                "yanchor": "bottom",
                "bgcolor": "rgba(255,255,255,0.85)",
            },
            shapes=shapes,
            annotations=annotations,
            margin={"l": 60, "r": 30, "t": 60, "b": 50},
        ),
    }


def timeline_figure(analysis: Analysis) -> dict[str, Any] | None:
    """Each pod's start time against when it started: contention shows as a rising cloud."""
    if not analysis.pods:
        return None
    origin = min(p.start_ns for p in analysis.pods)
    groups = sorted({group_of(p) for p in analysis.pods if p.status == "ok"})
    done = [p for p in analysis.pods if p.status == "ok"]
    series = [
        (f"{g} ok", PALETTE[i % len(PALETTE)], "circle", [p for p in done if group_of(p) == g])
        for i, g in enumerate(groups)
    ]
    series += [
        (status, STATUS_COLORS[status], "x", [p for p in analysis.pods if p.status == status])
        for status in ("restarted", "failed", "incomplete")
    ]
    data: list[dict[str, Any]] = []
    for name, color, symbol, members in series:
        if not members:
            continue
        data.append(
            {
                "type": "scatter",
                "mode": "markers",
                "name": ptext(name),
                "x": [round((p.start_ns - origin) / 1e9, 4) for p in members],
                "y": [_ms(p.duration_ns) for p in members],
                "text": [f"{ptext(pod_label(p))} ({ptext(p.host)})" for p in members],
                "marker": {"color": color, "size": 7, "symbol": symbol},
                "hovertemplate": "%{text}<br>started at +%{x:.2f} s<br>took %{y:.1f} ms"
                f"<extra>{ptext(name)}</extra>",
            }
        )
    return {
        "id": "fig-timeline",
        "data": data,
        "layout": layout(
            "Pod start time by when the pod started",
            height=420,
            xaxis=axis(f"seconds since the first pod started ({_wall(origin)})"),
            yaxis=axis("pod start time (ms)", rangemode="tozero"),
            margin={"l": 60, "r": 30, "t": 60, "b": 90},
        ),
    }


# --- HTML sections --------------------------------------------------------------------------


def _status(status: str) -> str:
    return f'<span class="status {esc(status)}">{esc(status)}</span>'


def _pod_anchor(index: int) -> str:
    return f"pod-{index + 1}"


def header_html(analysis: Analysis, generated: datetime) -> str:
    rec = analysis.recording
    pods = analysis.pods
    counts = {s: sum(p.status == s for p in pods) for s in STATUS_COLORS}
    done = np.array([p.duration_ns / 1e6 for p in pods if p.status == "ok"])
    starts = (
        f"median {_fmt_ms(median(done))}, p95 {_fmt_ms(p95(done))}"
        f", max {_fmt_ms(float(done.max()))}"
        if len(done)
        else "none completed"
    )
    window = (
        f"{_wall(rec.start_ns)} → {_wall(rec.end_ns)} ({(rec.end_ns - rec.start_ns) / 1e9:.1f} s)"
    )
    drops = (
        f'<span class="warn">{rec.drops} events dropped; pods around them may be incomplete</span>'
        if rec.drops
        else "0"
    )
    complete = (
        "yes, every recording ended cleanly"
        if rec.complete
        else '<span class="warn">no: a recording was cut short; its last second may be '
        "missing</span>"
    )
    failed = (
        f'<span class="bad">{counts["failed"]} failed</span>' if counts["failed"] else "0 failed"
    )
    incomplete = (
        f'<span class="warn">{counts["incomplete"]} incomplete</span>'
        if counts["incomplete"]
        else "0 incomplete"
    )
    restarted = f"{counts['restarted']} restarted, " if counts["restarted"] else ""
    facts = [
        ("hosts", ", ".join(esc(h) for h in rec.hosts) or "-"),
        ("kernels", ", ".join(esc(k) for k in rec.kernels) or "-"),
        ("recording window", window),
        ("pods", f"{len(pods)}: {counts['ok']} ok, {restarted}{failed}, {incomplete}"),
        ("pod start time", starts),
        ("dropped events", drops),
        ("complete", complete),
        ("files", ", ".join(f"<code>{esc(f)}</code>" for f in rec.files) or "-"),
    ]
    rows = "\n".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in facts)
    hosts = ", ".join(rec.hosts) if len(rec.hosts) <= 3 else f"{len(rec.hosts)} hosts"
    made = _wall(int(generated.timestamp() * 1e9))
    return (
        "<header>\n"
        f"<h1>Pod start-up on {esc(hosts or 'no host')}: {len(pods)} pods</h1>\n"
        f'<dl class="facts">\n{rows}\n</dl>\n'
        f'<p class="note">made by startprof {esc(__version__)} at {made}</p>\n</header>'
    )


def _pod_error(pod: Pod) -> str | None:
    return pod.error or next((p.error for p in reversed(pod.phases) if p.error), None)


def _callout(
    title: str, kind: str, pods: Sequence[Pod], anchors: Mapping[tuple[str, str], str]
) -> str:
    """Pods grouped by where and why they failed (a thousand pods often fail the same way),
    a few names per group, and the full list (up to ``MAX_LISTED``) folded away."""
    if not pods:
        return ""

    def link(pod: Pod) -> str:
        name = esc(pod_label(pod))
        anchor = anchors.get(pod.key)
        return f'<a href="#{anchor}">{name}</a>' if anchor else name

    causes: dict[tuple[str | None, str | None], list[Pod]] = defaultdict(list)
    for pod in pods:
        causes[(pod.failed_phase, _pod_error(pod))].append(pod)
    groups = []
    for (phase, error), members in sorted(causes.items(), key=lambda kv: -len(kv[1])):
        where = f" in <b>{esc(phase)}</b>" if phase else ""
        reason = f": <code>{esc(error)}</code>" if error else ""
        names = ", ".join(link(p) for p in members[:GROUP_EXAMPLES])
        more = f" and {len(members) - GROUP_EXAMPLES} more" if len(members) > GROUP_EXAMPLES else ""
        groups.append(f"<li><b>{len(members)}</b>{where}{reason}: {names}{more}</li>")
    listed = [
        f"<li>{link(p)} ({esc(p.namespace or '-')}, {esc(p.host)})"
        + (f" in {esc(p.failed_phase)}" if p.failed_phase else "")
        + "</li>"
        for p in pods[:MAX_LISTED]
    ]
    if len(pods) > MAX_LISTED:
        listed.append(f"<li>… and {len(pods) - MAX_LISTED} more</li>")
    full = f"<details><summary>every one</summary><ul>{''.join(listed)}</ul></details>"
    return (
        f'<div class="callout {kind}"><b>{len(pods)} {title}</b>\n<ul>\n'
        + "\n".join(groups)
        + "\n</ul>\n"
        + (full if len(pods) > 1 else "")
        + "</div>"
    )


def callouts_html(analysis: Analysis, anchors: Mapping[tuple[str, str], str]) -> str:
    failed = [p for p in analysis.pods if p.status == "failed"]
    incomplete = [p for p in analysis.pods if p.status == "incomplete"]
    return _callout("failed pods", "failed", failed, anchors) + _callout(
        "incomplete pods (the recording holds only part of their start)",
        "incomplete",
        incomplete,
        anchors,
    )


def phase_stats_html(analysis: Analysis, per_pod: pd.DataFrame) -> str:
    """The terminal's summary table: per phase key n, median, p95 and share of critical time."""
    if per_pod.empty:
        return ""
    total = sum(p.duration_ns / 1e6 for p in analysis.pods if p.status == "ok")
    rows = []
    for key in _ranked_keys(per_pod):
        values = per_pod[per_pod["key"] == key]
        durations = values["duration_ms"].to_numpy()
        share = float(values["self_ms"].sum()) / total if total else 0.0
        rows.append(
            f'<tr><td class="mono">{esc(key)}</td><td class="num">{len(durations)}</td>'
            f'<td class="num">{median(durations):.2f}</td>'
            f'<td class="num">{p95(durations):.2f}</td>'
            f'<td class="num">{100 * share:.1f}%</td></tr>'
        )
    return (
        "<details><summary>Per-phase numbers (the same table as <code>startprof analyze</code>)"
        '</summary>\n<table>\n<tr><th>phase</th><th class="num">pods</th>'
        '<th class="num">median ms</th><th class="num">p95 ms</th>'
        '<th class="num">share of critical time</th></tr>\n'
        + "\n".join(rows)
        + "\n</table></details>"
    )


def slowest_table_html(
    pods: Sequence[Pod], total: int, anchors: Mapping[tuple[str, str], str]
) -> str:
    if not pods:
        return '<p class="note">No pod starts in the recording.</p>'
    rows = []
    for rank, pod in enumerate(pods, 1):
        name = esc(pod_label(pod))
        anchor = anchors.get(pod.key)
        link = f'<a href="#{anchor}">{name}</a>' if anchor else name
        detail = pod.bottleneck or ""
        if pod.failed_phase:
            detail = f"failed in {pod.failed_phase}" + (f"; {detail}" if detail else "")
        rows.append(
            f'<tr><td class="num">{rank}</td><td>{link}</td><td>{esc(pod.namespace or "-")}</td>'
            f"<td>{esc(pod.host)}</td><td>{esc(group_of(pod))}</td><td>{_status(pod.status)}</td>"
            f'<td class="num">{_ms(pod.duration_ns):,.1f}</td><td>{esc(detail)}</td></tr>'
        )
    note = (
        f"{len(pods)} of {total} pods, failed first, then slowest first."
        if len(pods) < total
        else f"All {total} pods, failed first, then slowest first."
    )
    return (
        f'<p class="note">{note}</p>\n<table>\n'
        '<tr><th class="num">#</th><th>pod</th><th>namespace</th>'
        '<th>host</th><th>runtime handler</th><th>status</th><th class="num">start ms</th>'
        "<th>bottleneck</th></tr>\n" + "\n".join(rows) + "\n</table>"
    )


def pod_section_html(pod: Pod, anchor: str, figure_id: str) -> str:
    meta = [
        f"sandbox <code>{esc(pod.sandbox_id[:12])}</code>",
        f"host {esc(pod.host)}",
        f"namespace {esc(pod.namespace or '-')}",
    ]
    if pod.runtime_handler or pod.runtime:
        meta.append(f"runtime {esc(pod.runtime_handler or '-')} ({esc(pod.runtime or '-')})")
    if pod.containers:
        meta.append("containers " + ", ".join(f"<code>{esc(c)}</code>" for c in pod.containers))
    parts = [
        f'<section class="pod" id="{anchor}">',
        f"<h3>{esc(pod_label(pod))} {_status(pod.status)} {_fmt_ms(_ms(pod.duration_ns))}</h3>",
        f'<p class="meta">{" · ".join(meta)}</p>',
    ]
    if pod.status == "failed":
        error = _pod_error(pod)
        parts.append(
            f'<div class="callout"><b>Failed in {esc(pod.failed_phase or "?")}</b>'
            + (f": <code>{esc(error)}</code>" if error else "")
            + "</div>"
        )
    elif pod.status == "restarted":
        parts.append(
            f'<div class="callout"><b>Restarted {pod.restarts} time'
            f"{'' if pod.restarts == 1 else 's'}</b>: containers crashed and were re-created "
            "before one stayed up; the start runs to that one.</div>"
        )
    elif pod.status == "incomplete":
        parts.append(
            '<div class="callout incomplete"><b>Incomplete</b>: the recording holds only part of '
            "this pod's start (it began before the recording or ended after it).</div>"
        )
    if pod.bottleneck:
        parts.append(f'<p class="bottleneck"><b>Bottleneck:</b> {esc(pod.bottleneck)}</p>')
    parts.append(f'<div class="figure" id="{figure_id}"></div>')
    parts.append("</section>")
    return "\n".join(parts)


# --- the page -----------------------------------------------------------------------------


def _template() -> string.Template:
    source = resources.files("startprof.reporters").joinpath("templates/report.html")
    return string.Template(source.read_text(encoding="utf-8"))


def _plotly_js() -> str:
    from plotly.offline import get_plotlyjs

    js: str = get_plotlyjs()
    if "</script" in js.lower():  # would end the inline element early; never seen in a release
        raise EnvironmentProblem(
            "the installed plotly.js cannot be inlined: it contains '</script'",
            fix="install another plotly release",
        )
    return js


def _figure_id(index: int) -> str:
    return f"fig-pod-{index + 1}"


def build_figures(
    analysis: Analysis, pods: Sequence[Pod], per_pod: pd.DataFrame | None = None
) -> list[dict[str, Any]]:
    """Every figure of the report, in page order: summary figures, then one per shown pod."""
    if per_pod is None:
        per_pod = _done_table(analysis.pods)
    summary = [
        composition_figure(analysis.pods, per_pod),
        distribution_figure(analysis.pods, per_pod),
        cdf_figure(analysis.pods),
        timeline_figure(analysis),
    ]
    figures = [f for f in summary if f is not None]
    figures += [waterfall_figure(pod, _figure_id(i)) for i, pod in enumerate(pods)]
    return figures


def render(analysis: Analysis, pods: Sequence[Pod], *, generated: datetime | None = None) -> str:
    """The report as one HTML string; ``pods`` get a waterfall each (``select_pods`` picks them)."""
    generated = generated or datetime.now(UTC)
    per_pod = _done_table(analysis.pods)
    figures = build_figures(analysis, pods, per_pod)
    ids = {f["id"] for f in figures}
    anchors = {pod.key: _pod_anchor(i) for i, pod in enumerate(pods)}
    summary_divs = [
        f'<div class="figure" id="{fid}"></div>'
        for fid in ("fig-composition", "fig-distribution")
        if fid in ids
    ]
    pair = [
        f'<div class="figure" id="{fid}"></div>'
        for fid in ("fig-cdf", "fig-timeline")
        if fid in ids
    ]
    body: list[str] = [header_html(analysis, generated), "<main>", callouts_html(analysis, anchors)]
    body.append("<h2>Summary</h2>")
    if summary_divs:
        body.append(
            '<p class="note">Critical time is the time a phase itself held the pod back: the '
            "critical path walks back from the pod's end, always into the child that finished "
            "last. Medians per phase need not add up to the median pod.</p>"
        )
        body.extend(summary_divs)
        body.append(phase_stats_html(analysis, per_pod))
    else:
        body.append(
            '<p class="note">No pod completed its start, so there is nothing to aggregate.</p>'
        )
    if pair:
        body.append(f'<div class="grid2">{"".join(pair)}</div>')
    body.append("<h2>Slowest pods</h2>")
    body.append(slowest_table_html(pods, len(analysis.pods), anchors))
    if pods:
        body.append("<h2>Waterfalls</h2>")
        body.append(
            '<p class="note">One row per phase, children indented under their parent; bars start '
            "at the phase's start. Blue: on the critical path, grey: off it, red: failed. Hover "
            "a bar for pid, argv, netlink work and self time.</p>"
        )
        body.extend(
            pod_section_html(pod, _pod_anchor(i), _figure_id(i)) for i, pod in enumerate(pods)
        )
    body.append("</main>")
    body.append(
        "<footer>startprof report: phases and critical path of Kubernetes pod starts, seen from "
        "the kernel with eBPF. Times are wall clock (UTC), durations in milliseconds.</footer>"
    )
    title = f"startprof: {len(analysis.pods)} pods on {', '.join(analysis.recording.hosts) or '-'}"
    return _template().substitute(
        title=esc(title),
        version=esc(__version__),
        nonce=secrets.token_urlsafe(18),
        body="\n".join(b for b in body if b),
        plotly_js=_plotly_js(),
        figures=script_json(figures),
    )


def write(analysis: Analysis, pods: Sequence[Pod], path: Path) -> int:
    """Write the report to ``path`` (creating its folder); returns the size in bytes."""
    text = render(analysis, pods)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = text.encode("utf-8")
    path.write_bytes(data)
    return len(data)
