"""Removing a lab's pods over CRI without ground truth, as ``lab down`` does before it stops
containerd.

Its own module so that ``lab down`` (``containerd.Lab``) and the pod driver share one teardown of a
sandbox without importing each other.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from functools import partial

from startprof.errors import CriError
from startprof.lab.config import LAB_CGROUP
from startprof.lab.cri import CriClient
from startprof.lab.host import remove_pod_cgroups
from startprof.lab.paths import LabPaths


def remove_pods(paths: LabPaths, say: Callable[[str], None]) -> None:
    """Every sandbox the lab's containerd knows, removed with its containers; a containerd that
    does not answer is left to the host clean-up."""
    try:
        with CriClient(str(paths.socket), timeout=30.0) as cri:
            sandboxes = cri.list_pod_sandbox()
            if sandboxes:
                say(f"removing {len(sandboxes)} pod(s)")
            for sb in sandboxes:
                teardown_sandbox(cri, sb.id, sb.metadata.uid)
    except CriError as exc:
        say(f"warning: could not remove pods over CRI ({exc}); cleaning up directly")


def teardown_sandbox(client: CriClient, sandbox_id: str, uid: str) -> None:
    """Remove one sandbox and everything in it without ground truth (``lab down``)."""
    for c in client.list_containers(sandbox_id):
        quiet_call(partial(client.stop_container, c.id, grace_seconds=2))
        quiet_call(partial(client.remove_container, c.id))
    quiet_call(lambda: client.stop_pod_sandbox(sandbox_id))
    quiet_call(lambda: client.remove_pod_sandbox(sandbox_id))
    if uid:
        remove_pod_cgroups(f"/{LAB_CGROUP}/pod{uid}")


def quiet_call(fn: Callable[[], object]) -> None:
    """A clean-up call whose CRI error changes nothing (the thing is gone or goes with the lab)."""
    with contextlib.suppress(CriError):
        fn()
