"""Defaults that several commands share."""

from __future__ import annotations

import os

from startprof.lab.paths import LabPaths, lab_dir

NODE_CRI_SOCKET = "/run/containerd/containerd.sock"


def canonical_socket(path: str) -> str:
    """One spelling of a unix socket path: without the kubelet's ``unix://`` prefix, and with
    symbolic links resolved (``/var/run`` is ``/run`` on most nodes; containerd may have bound
    either, the user may give either)."""
    for prefix in ("unix://", "unix:"):
        if path.startswith(prefix):
            path = path[len(prefix) :]
            break
    return os.path.realpath(path) if path else path


def same_socket(a: str, b: str) -> bool:
    return os.path.basename(a) == os.path.basename(b) and canonical_socket(a) == canonical_socket(b)


def resolve_cri_socket(explicit: str | None = None) -> str:
    """``--cri-socket``, else ``$STARTPROF_CRI_SOCKET``, else the lab's socket when the lab is up,
    else the node's containerd socket; ``unix://`` prefixes are dropped."""
    if explicit:
        return canonical_socket(explicit)
    env = os.environ.get("STARTPROF_CRI_SOCKET")
    if env:
        return canonical_socket(env)
    lab_socket = LabPaths(lab_dir()).socket
    if lab_socket.exists():
        return str(lab_socket)
    return NODE_CRI_SOCKET
