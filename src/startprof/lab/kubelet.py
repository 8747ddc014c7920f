"""What the kubelet puts on every pod it starts, for the lab's two ways of starting pods (the
driver's pod kinds and a manifest's pod template): labels, annotations, the pod's cgroup
parent (cgroupfs driver) and its log directory."""

from __future__ import annotations

import time

from startprof.lab.config import LAB_CGROUP
from startprof.lab.paths import LabPaths


def pod_labels(name: str, namespace: str, uid: str) -> dict[str, str]:
    return {
        "io.kubernetes.pod.name": name,
        "io.kubernetes.pod.namespace": namespace,
        "io.kubernetes.pod.uid": uid,
    }


def pod_annotations() -> dict[str, str]:
    return {
        "kubernetes.io/config.seen": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "kubernetes.io/config.source": "api",
    }


def pod_cgroup_parent(uid: str) -> str:
    return f"/{LAB_CGROUP}/pod{uid}"


def pod_log_directory(paths: LabPaths, name: str, namespace: str, uid: str) -> str:
    return str(paths.pod_logs / f"{namespace}_{name}_{uid}")
