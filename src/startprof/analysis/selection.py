"""Which pods a command shows: one by name, or the slowest."""

from __future__ import annotations

from startprof.analysis.model import Analysis, Pod
from startprof.errors import InputError

MIN_ID_PREFIX = 4  # shorter sandbox-id prefixes match too much by accident


def matches(pod: Pod, name: str) -> bool:
    """NAME, NAMESPACE/NAME, the full sandbox id or a prefix of it."""
    return name in (pod.name, f"{pod.namespace}/{pod.name}", pod.sandbox_id) or (
        len(name) >= MIN_ID_PREFIX and pod.sandbox_id.startswith(name)
    )


def find_pods(analysis: Analysis, name: str) -> list[Pod]:
    """The pods ``name`` designates; an InputError listing the known pods when there is none."""
    found = [p for p in analysis.pods if matches(p, name)]
    if not found:
        known = sorted(
            f"{p.namespace}/{p.name}" if p.name else p.sandbox_id[:12] for p in analysis.pods
        )
        listed = ", ".join(known[:10]) + (", ..." if len(known) > 10 else "")
        raise InputError(f"no pod {name!r} in the recording", fix=f"pods: {listed or 'none'}")
    return found


def select_pods(analysis: Analysis, top: int | None, pod_name: str | None) -> list[Pod]:
    """The pods to show: the one(s) ``pod_name`` designates, else the ``top`` slowest with failed
    ones first (all of them when ``top`` is None)."""
    if pod_name is not None:
        return find_pods(analysis, pod_name)
    pods = sorted(analysis.pods, key=lambda p: (p.status != "failed", -p.duration_ns))
    return pods if top is None else pods[:top]
