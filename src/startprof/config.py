"""Defaults that several commands share."""

from __future__ import annotations

import os

from startprof.lab.paths import LabPaths, lab_dir

NODE_CRI_SOCKET = "/run/containerd/containerd.sock"


def resolve_cri_socket(explicit: str | None = None) -> str:
    """``--cri-socket``, else ``$STARTPROF_CRI_SOCKET``, else the lab's socket when the lab is up,
    else the node's containerd socket."""
    if explicit:
        return explicit
    env = os.environ.get("STARTPROF_CRI_SOCKET")
    if env:
        return env
    lab_socket = LabPaths(lab_dir()).socket
    if lab_socket.exists():
        return str(lab_socket)
    return NODE_CRI_SOCKET
