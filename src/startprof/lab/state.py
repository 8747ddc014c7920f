"""What ``lab up`` recorded about a lab (``run/lab.json``), read by ``run``, ``status``, ``down``
and the leak check.

Its own module so that everything that reads the state (the driver, the leak check, the
foreign-container runner) can do so without importing the containerd that wrote it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from startprof.errors import LabError
from startprof.lab.images import APP
from startprof.lab.paths import LabPaths
from startprof.lab.versions import Containerd


@dataclass(frozen=True)
class LabState:
    """What ``up`` recorded in ``run/lab.json`` for ``run``, ``status`` and ``down``."""

    handlers: tuple[str, ...]
    images: dict[str, str]  # role (pause, app) -> image reference
    archives: dict[str, str]  # role -> OCI archive path
    v1_mounts: tuple[str, ...]  # cgroup v1 mounts made for crun, unmounted by down
    created_run_containerd: bool  # whether up created /run/containerd (shim sockets' parent)
    created_var_lib_cni: bool = False  # whether up created /var/lib/cni (libcni's caches)
    containerd: dict[str, Any] | None = None  # versions.Containerd.to_dict() of what runs
    # host.CONTAINERD_DEFAULT_PATHS that did not exist at up: any that appears is a leak
    absent_at_up: tuple[str, ...] = ()

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, path: Path) -> LabState | None:
        try:
            d = json.loads(path.read_text())
            return cls(
                handlers=tuple(d["handlers"]),
                images=dict(d["images"]),
                archives=dict(d["archives"]),
                v1_mounts=tuple(d.get("v1_mounts", ())),
                created_run_containerd=bool(d.get("created_run_containerd")),
                created_var_lib_cni=bool(d.get("created_var_lib_cni")),
                containerd=d.get("containerd"),
                absent_at_up=tuple(d.get("absent_at_up", ())),
            )
        except (OSError, ValueError, KeyError, TypeError):
            return None

    @property
    def runs(self) -> Containerd | None:
        """The containerd this lab runs (None for a state written before versions)."""
        try:
            return Containerd.from_dict(self.containerd) if self.containerd else None
        except (KeyError, TypeError, ValueError):
            return None


def load_state(paths: LabPaths) -> LabState | None:
    return LabState.load(paths.lab_state)


def app_image(paths: LabPaths) -> tuple[str, str]:
    """(reference, archive path) of the lab's app image."""
    state = load_state(paths)
    if state is None:
        raise LabError(f"no lab state in {paths.root}", fix="sudo startprof lab up")
    return state.images[APP.name], state.archives[APP.name]
