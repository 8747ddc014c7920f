"""The terminal view: per pod its critical chain, then a summary over all pods.

The chain reads like ``systemd-analyze critical-chain``: ``@`` is when a phase began (ms after
the pod's start), ``+`` how long it took. Only phases on the critical path are shown; runs of
same-named siblings (nine ``exec iptables``) fold into one line.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence

from rich.console import Console, Group, RenderableType
from rich.table import Table
from rich.text import Text

from startprof.analysis.critical_path import subtree_path_ns
from startprof.analysis.model import Analysis, Phase, Pod

STATUS_STYLE = {"ok": "green", "restarted": "magenta", "failed": "bold red", "incomplete": "yellow"}
MIN_SHARE = 0.01  # hide path pieces worth less than 1% of the pod


def _ms(ns: int) -> str:
    return f"{ns / 1e6:.1f}ms"


def chain_lines(pod: Pod) -> list[Text]:
    path = subtree_path_ns(pod.phases)
    limit = pod.duration_ns * MIN_SHARE
    children: dict[str | None, list[Phase]] = defaultdict(list)
    for p in pod.phases:
        children[p.parent_id].append(p)
    lines: list[Text] = []

    def emit(nodes: Iterable[Phase], depth: int) -> None:
        shown = [n for n in nodes if n.on_critical_path and path.get(n.id, 0) >= limit]
        groups: dict[str, list[Phase]] = defaultdict(list)
        for n in shown:
            groups[n.name].append(n)
        for name, members in sorted(groups.items(), key=lambda kv: kv[1][0].start_ns):
            first = members[0]
            line = Text("  " * depth)
            style = "red" if any(m.status == "error" for m in members) else ""
            label = name if len(members) == 1 else f"{name} x{len(members)}"
            line.append(label, style=style or "bold" if depth <= 1 else style)
            line.append(f" @{_ms(first.start_ns - pod.start_ns)}", style="cyan")
            duration = sum(m.duration_ns for m in members)
            line.append(f" +{_ms(duration)}", style="magenta")
            own = sum(m.self_ns for m in members)
            if own and (len(members) > 1 or own != duration):
                line.append(f" (self {_ms(own)})", style="dim")
            errors = [m.error for m in members if m.error]
            if errors:
                line.append(f"  {errors[0]}", style="red")
            lines.append(line)
            if len(members) == 1:
                emit(children.get(first.id, []), depth + 1)

    emit(children.get(pod.phases[0].id, []), 1)
    return lines


def pod_block(pod: Pod) -> RenderableType:
    head = Text()
    head.append(pod.name or pod.sandbox_id[:12], style="bold")
    if pod.namespace:
        head.append(f" ({pod.namespace})")
    head.append(f"  {_ms(pod.duration_ns)}  ")
    head.append(pod.status, style=STATUS_STYLE[pod.status])
    details = [f"sandbox {pod.sandbox_id[:12]}", pod.host]
    if pod.runtime_handler or pod.runtime:
        details.append(pod.runtime_handler or pod.runtime or "")
    head.append(f"  [{', '.join(details)}]", style="dim")
    parts: list[RenderableType] = [head]
    if pod.failed_phase:
        error = pod.error or next(
            (p.error for p in pod.phases if p.name == pod.failed_phase and p.error), None
        )
        why = f": {error}" if error else ""
        parts.append(Text(f"  failed in {pod.failed_phase}{why}", style="red"))
    if pod.restarts:
        times = "time" if pod.restarts == 1 else "times"
        parts.append(
            Text(f"  restarted {pod.restarts} {times} (crashed containers)", style="magenta")
        )
    if pod.incomplete_reason:
        parts.append(Text(f"  incomplete: {pod.incomplete_reason}", style="yellow"))
    if pod.bottleneck:
        parts.append(Text(f"  {pod.bottleneck}", style="italic"))
    parts.extend(chain_lines(pod))
    return Group(*parts, Text(""))


def summary_table(analysis: Analysis) -> Table:
    s = analysis.summary
    rec = analysis.recording
    status = s.get("status", {})
    pod_ms = s.get("pod_ms", {})
    title = (
        f"{s.get('pods', 0)} pods ({status.get('ok', 0)} ok, "
        + (f"{status['restarted']} restarted, " if status.get("restarted") else "")
        + f"{status.get('failed', 0)} failed, "
        f"{status.get('incomplete', 0)} incomplete) on {', '.join(rec.hosts) or '-'}; "
        f"pod start median {pod_ms.get('median_ms')} ms, p95 {pod_ms.get('p95_ms')} ms; "
        f"drops {rec.drops}"
    )
    table = Table(title=title, title_justify="left", show_edge=False)
    for col, justify in (
        ("phase", "left"),
        ("n", "right"),
        ("median ms", "right"),
        ("p95 ms", "right"),
        ("critical share", "right"),
    ):
        table.add_column(col, justify=justify)  # type: ignore[arg-type]
    phases = s.get("phases", {})
    for name, st in sorted(phases.items(), key=lambda kv: -kv[1].get("critical_share", 0)):
        if name == "pod" or st.get("n", 0) == 0:
            continue
        table.add_row(
            name,
            str(st["n"]),
            f"{st['median_ms']:.2f}",
            f"{st['p95_ms']:.2f}",
            f"{100 * st.get('critical_share', 0):.1f}%",
        )
    return table


def render(analysis: Analysis, pods: Sequence[Pod], console: Console) -> None:
    for pod in pods:
        console.print(pod_block(pod))
    console.print(summary_table(analysis))
    failures = analysis.summary.get("failures", [])
    for f in failures:
        why = f": {f['error']}" if f.get("error") else ""
        console.print(Text(f"failed: {f['pod']} in {f['failed_phase']}{why}", style="red"))
    for namespace, n in sorted(analysis.recording.foreign_containers.items()):
        console.print(
            Text(
                f"ignored {n} container{'s' if n != 1 else ''} of containerd namespace "
                f"{namespace} (not CRI's k8s.io: ctr, nerdctl or moby, no pods)",
                style="dim",
            )
        )
    if analysis.recording.drops:
        lossy = sum(
            p.status == "incomplete" and "dropped" in (p.incomplete_reason or "")
            for p in analysis.pods
        )
        console.print(
            Text(
                f"warning: {analysis.recording.drops} events were dropped while recording; "
                f"{lossy} pod(s) overlapping the loss are marked incomplete "
                "(record again with a larger --ringbuf-pages)",
                style="yellow",
            )
        )
    if not analysis.recording.complete:
        console.print(
            Text(
                "note: a recording was cut short (no clean end); its last second may be missing",
                style="yellow",
            )
        )
