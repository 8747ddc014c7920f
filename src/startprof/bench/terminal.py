"""What a bench shows on the terminal: rich renderables built from summary.json (the CLI prints
them), so a bench's tables can be re-rendered and unit-tested without a lab.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from startprof.bench.stats import PhaseChange
from startprof.bench.summary import (
    change_cell,
    change_rows,
    change_sentences,
    combination_name,
    combination_names,
    fmt_ms,
    headline,
    margin_text,
    phase_rows,
    phase_stat,
    ranking,
    stat_cell,
)


def terminal_report(
    summary: Mapping[str, Any], changes: Sequence[PhaseChange] = ()
) -> RenderableType:
    """The phase-by-phase table, the headline, and the baseline comparison when there is one."""
    names = combination_names(summary)
    n = ", ".join(f"{combination_name(c)} n={c['n']}" for c in summary.get("combinations", ()))
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
            text = stat_cell(phase_stat(combo, phase))
            cells.append(Text(text, style="green" if combination_name(combo) == best else ""))
        cells += [best, margin_text(ranked)]
        table.add_row(*cells)
    parts: list[RenderableType] = [
        table,
        Text("* the two CIs do not overlap", style="dim"),
        Text(headline(summary), style="bold"),
    ]
    agreement = [
        f"{combination_name(c)} {a['median']:.2f}/{a['max']:.2f}"
        for c in combos
        if (a := c.get("truth_agreement_ms"))
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
        for phase in change_rows(summary):
            cells = []
            for e in mine:
                row = next((r for r in e["phases"] if r["phase"] == phase), None)
                text = "-" if row is None else change_cell(row)
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
            f"{fmt_ms(c.baseline_ms)}",
            f"{fmt_ms(c.current_ms)}",
            f"{c.change_pct:+.0f}%",
            verdict,
        )
    same = len(changes) - len(moved)
    note = Text(f"{same} of {len(changes)} compared phases: CIs overlap (no change)", style="dim")
    return Group(table, note) if moved else note
