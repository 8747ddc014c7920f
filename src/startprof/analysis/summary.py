"""Statistics over many pods: per-phase medians and p95, critical-path shares, failures."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from startprof.analysis.model import POD_STATUSES, Phase, Pod, RecordingInfo
from startprof.stats import median_p95_ms


def phase_table(pods: Sequence[Pod]) -> pd.DataFrame:
    """One row per pod x phase: name, kind, duration_ms, self_ms, on_critical_path, status."""
    rows = [
        (
            pod.host,
            pod.sandbox_id,
            pod.name,
            pod.status,
            p.id,
            p.name,
            p.kind,
            p.duration_ns / 1e6,
            p.self_ns / 1e6,
            p.on_critical_path,
            p.status,
        )
        for pod in pods
        for p in pod.phases
    ]
    return pd.DataFrame(
        rows,
        columns=[
            "host",
            "sandbox_id",
            "pod",
            "pod_status",
            "phase_id",
            "phase",
            "kind",
            "duration_ms",
            "self_ms",
            "on_critical_path",
            "status",
        ],
    )


RUNTIME_KINDS = ("runtime.shim", "runtime.create", "runtime.start")


def phase_key(phase_id: str, name: str) -> str:
    """Group per-subject phases (``container app-0``) by kind; keep plugin and op names; tell
    the sandbox's runtime work from the containers'."""
    kind = name.split(" ", 1)[0]
    if kind == "container":
        return "container"
    if kind in RUNTIME_KINDS:
        return f"{name} (container)" if "/container " in phase_id else f"{name} (sandbox)"
    return name


def summarize(pods: Sequence[Pod], info: RecordingInfo) -> dict[str, Any]:
    done = [p for p in pods if p.status == "ok"]
    counts = {status: sum(p.status == status for p in pods) for status in POD_STATUSES}
    durations = np.array([p.duration_ns / 1e6 for p in done])
    summary: dict[str, Any] = {
        "pods": len(pods),
        "status": counts,
        "drops": info.drops,
        "pod_ms": median_p95_ms(durations),
        "phases": {},
        "failures": [
            {
                "pod": p.name,
                "sandbox_id": p.sandbox_id,
                "failed_phase": p.failed_phase,
                "error": p.error,
            }
            for p in pods
            if p.status == "failed"
        ],
        "restarts": sum(p.restarts for p in pods),
        "foreign_containers": dict(info.foreign_containers),
    }
    # the phase statistics are over completed pods; a pod is one (host, sandbox id), so its
    # position stands for it (no 610,000-row table of every phase column at 10,000 pods)
    phases = [p for pod in done for p in pod.phases]
    if not phases:
        return summary
    keys: dict[tuple[str, bool], str] = {}  # phase_key depends on these two only

    def key_of(p: Phase) -> str:
        container = "/container " in p.id
        key = keys.get((p.name, container))
        if key is None:
            key = keys[(p.name, container)] = phase_key(p.id, p.name)
        return key

    # column by column, not a tuple per phase (610,000 at 10,000 pods)
    table = pd.DataFrame(
        {
            "pod": np.repeat(np.arange(len(done)), [len(pod.phases) for pod in done]),
            "key": list(map(key_of, phases)),
            "duration_ms": np.array([p.end_ns - p.start_ns for p in phases], dtype="int64") / 1e6,
            "self_ms": np.array([p.self_ns for p in phases], dtype="int64") / 1e6,
        }
    )
    total_ms = float(durations.sum()) or 1.0
    # per pod and key first: a pod with 9 iptables execs counts once, with their sum
    per_pod = table.groupby(["pod", "key"], sort=False).agg(
        duration_ms=("duration_ms", "sum"), self_ms=("self_ms", "sum")
    )
    for name, group in per_pod.groupby(level="key", sort=False):
        summary["phases"][str(name)] = {
            **median_p95_ms(group["duration_ms"].to_numpy()),
            "critical_share": round(float(group["self_ms"].sum()) / total_ms, 4),
        }
    return summary
