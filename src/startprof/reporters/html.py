"""The HTML report: one self-contained file to open anywhere, offline, or attach to a ticket.

Layout (docs/report.md): a header with the recording's facts, failed and incomplete pods
called out, a summary over all pods (median critical-path composition, per-phase duration
distributions, the pod start-time CDF, start time against when the pod started), a table of
the slowest pods and, for each of them, a waterfall of its phase tree with the critical path
highlighted. A thousand pods still make a handful of aggregate charts plus the top waterfalls.

The page is ``templates/report.html`` on the page kit (``page.py``: the skeleton, the CSP and
nonce, plotly.js, the palette, and the three escapes of everything that comes from a
recording); this module computes what it shows: the figures and the page's data, raw.
"""

from __future__ import annotations

import textwrap
from collections import defaultdict
from collections.abc import Mapping, Sequence, Sized
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from startprof.analysis.model import Analysis, Phase, Pod
from startprof.analysis.summary import phase_key, phase_table
from startprof.reporters.page import (
    COLOR_CRITICAL,
    COLOR_FAILED,
    COLOR_OFF_PATH,
    COLOR_OTHER,
    MAX_POINTS,
    MONO,
    PALETTE,
    STATUS_COLORS,
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
from startprof.stats import median, p95

MAX_COMPOSITION_KEYS = 10
"""Phase keys stacked one by one in the composition bars; the rest add up in ``other``."""
MAX_BOX_KEYS = 16
"""Phase keys with a duration distribution, by critical share; more would be unreadable."""
MAX_LISTED = 50
"""Failed or incomplete pods listed by name in the call-outs; the rest are counted."""
GROUP_EXAMPLES = 5
"""Pods named per group of failures that share a phase and an error."""
MAX_ATTRIBUTE_CHARS = 240
HOVER_WIDTH = 100

NBSP = "\u00a0"
"""Tick labels are SVG text, which collapses ordinary spaces; no-break spaces survive."""


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


# --- figures ---------------------------------------------------------------------------


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
            composition_trace(
                key,
                labels,
                medians,
                colors.get(key, COLOR_OTHER),
                "median critical time %{x:.2f} ms",
            )
        )
    return {
        "id": "fig-composition",
        "data": data,
        "layout": composition_layout(
            "Where the critical path goes: median critical time per phase (ms)",
            height=max(150 + 46 * len(groups), 120 + 22 * len(data)),
            xaxis_title="ms of the pod start spent in each phase (median over completed pods)",
            margin={"l": 20, "r": 20, "t": 50, "b": 50},
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
        data.append(
            cdf_trace(
                group,
                PALETTE[i % len(PALETTE)],
                [_ms(p.duration_ns) for p in members],
                [pod_label(p) for p in members],
            )
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
            yaxis=cdf_yaxis(),
            legend=cdf_legend(bgcolor="rgba(255,255,255,0.85)"),
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


# --- the page -----------------------------------------------------------------------------


def _pod_anchor(index: int) -> str:
    return f"pod-{index + 1}"


def _figure_id(index: int) -> str:
    return f"fig-pod-{index + 1}"


def _pod_error(pod: Pod) -> str | None:
    return pod.error or next((p.error for p in reversed(pod.phases) if p.error), None)


def _header(analysis: Analysis, generated: datetime) -> dict[str, Any]:
    rec = analysis.recording
    pods = analysis.pods
    done = np.array([p.duration_ns / 1e6 for p in pods if p.status == "ok"])
    hosts = ", ".join(rec.hosts) if len(rec.hosts) <= 3 else f"{len(rec.hosts)} hosts"
    return {
        "hosts": hosts or "no host",
        "pods": len(pods),
        "counts": {s: sum(p.status == s for p in pods) for s in STATUS_COLORS},
        "host_list": ", ".join(rec.hosts) or "-",
        "kernels": ", ".join(rec.kernels) or "-",
        "window": f"{_wall(rec.start_ns)} → {_wall(rec.end_ns)} "
        f"({(rec.end_ns - rec.start_ns) / 1e9:.1f} s)",
        "starts": (
            f"median {_fmt_ms(median(done))}, p95 {_fmt_ms(p95(done))}"
            f", max {_fmt_ms(float(done.max()))}"
            if len(done)
            else "none completed"
        ),
        "drops": rec.drops,
        "complete": rec.complete,
        "files": list(rec.files),
        "made": _wall(int(generated.timestamp() * 1e9)),
    }


def _pod_view(pod: Pod, anchors: Mapping[tuple[str, str], str]) -> dict[str, Any]:
    """What the page says of one pod, wherever it names it."""
    return {
        "label": pod_label(pod),
        "anchor": anchors.get(pod.key),
        "namespace": pod.namespace or "-",
        "host": pod.host,
        "failed_phase": pod.failed_phase,
    }


def _callouts(analysis: Analysis, anchors: Mapping[tuple[str, str], str]) -> list[dict[str, Any]]:
    """Failed and incomplete pods grouped by where and why (a thousand pods often fail the same
    way), a few names per group, and the full list (up to ``MAX_LISTED``) folded away."""
    callouts = []
    for kind, title in (
        ("failed", "failed pods"),
        ("incomplete", "incomplete pods (the recording holds only part of their start)"),
    ):
        pods = [p for p in analysis.pods if p.status == kind]
        if not pods:
            continue
        causes: dict[tuple[str | None, str | None], list[Pod]] = defaultdict(list)
        for pod in pods:
            causes[(pod.failed_phase, _pod_error(pod))].append(pod)
        groups = [
            {
                "count": len(members),
                "phase": phase,
                "error": error,
                "examples": [_pod_view(p, anchors) for p in members[:GROUP_EXAMPLES]],
                "more": max(len(members) - GROUP_EXAMPLES, 0),
            }
            for (phase, error), members in sorted(causes.items(), key=lambda kv: -len(kv[1]))
        ]
        callouts.append(
            {
                "kind": kind,
                "title": title,
                "count": len(pods),
                "groups": groups,
                "listed": [_pod_view(p, anchors) for p in pods[:MAX_LISTED]],
                "more": max(len(pods) - MAX_LISTED, 0),
            }
        )
    return callouts


def _phase_stats(analysis: Analysis, per_pod: pd.DataFrame) -> list[dict[str, str | int]]:
    """The terminal's summary table: per phase key n, median, p95 and share of critical time."""
    if per_pod.empty:
        return []
    total = sum(p.duration_ns / 1e6 for p in analysis.pods if p.status == "ok")
    rows: list[dict[str, str | int]] = []
    for key in _ranked_keys(per_pod):
        values = per_pod[per_pod["key"] == key]
        durations = values["duration_ms"].to_numpy()
        share = float(values["self_ms"].sum()) / total if total else 0.0
        rows.append(
            {
                "key": key,
                "pods": len(durations),
                "median": f"{median(durations):.2f}",
                "p95": f"{p95(durations):.2f}",
                "share": f"{100 * share:.1f}%",
            }
        )
    return rows


def _shown_pod(pod: Pod, index: int, anchors: Mapping[tuple[str, str], str]) -> dict[str, Any]:
    """A pod of the slowest table, with what its waterfall section says."""
    detail = pod.bottleneck or ""
    if pod.failed_phase:
        detail = f"failed in {pod.failed_phase}" + (f"; {detail}" if detail else "")
    runtime = None
    if pod.runtime_handler or pod.runtime:
        runtime = f"{pod.runtime_handler or '-'} ({pod.runtime or '-'})"
    return {
        **_pod_view(pod, anchors),
        "group": group_of(pod),
        "status": pod.status,
        "start_ms": f"{_ms(pod.duration_ns):,.1f}",
        "detail": detail,
        "figure": _figure_id(index),
        "duration": _fmt_ms(_ms(pod.duration_ns)),
        "sandbox": pod.sandbox_id[:12],
        "runtime": runtime,
        "containers": list(pod.containers),
        "error": _pod_error(pod),
        "restarts": pod.restarts,
        "bottleneck": pod.bottleneck,
    }


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
    total = len(analysis.pods)
    return render_page(
        "report.html",
        title=f"startprof: {total} pods on {', '.join(analysis.recording.hosts) or '-'}",
        figures=figures,
        head=_header(analysis, generated),
        callouts=_callouts(analysis, anchors),
        summary_figures=[i for i in ("fig-composition", "fig-distribution") if i in ids],
        phase_stats=_phase_stats(analysis, per_pod),
        pair_figures=[i for i in ("fig-cdf", "fig-timeline") if i in ids],
        slowest=[_shown_pod(pod, i, anchors) for i, pod in enumerate(pods)],
        slowest_note=(
            f"{len(pods)} of {total} pods, failed first, then slowest first."
            if len(pods) < total
            else f"All {total} pods, failed first, then slowest first."
        ),
    )


def write(analysis: Analysis, pods: Sequence[Pod], path: Path) -> int:
    """Write the report to ``path`` (creating its folder); returns the size in bytes."""
    text = render(analysis, pods)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = text.encode("utf-8")
    path.write_bytes(data)
    return len(data)
