"""A container that is no pod: run by ``ctr`` in a containerd namespace other than CRI's.

On a node, containerd also runs what ctr, nerdctl or moby start, each in its own namespace
(``default``, ``moby``, ...). Their shims and runtime calls look like a pod's from the kernel;
``lab run --kind ctr`` runs one such container beside the pods so that the analysis can be
shown to ignore it (and count it). Everything it makes is removed before it returns: the
container and its snapshot (``ctr run --rm``), the image, the namespace, the cgroup.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess

from startprof.errors import LabError
from startprof.lab import host
from startprof.lab.config import LAB_CGROUP
from startprof.lab.paths import LabPaths
from startprof.lab.state import load_state

CTR_TIMEOUT = 60.0


def _ctr(paths: LabPaths) -> str:
    state = load_state(paths)
    runs = state.runs if state else None
    if runs is not None:
        return runs.ctr
    return shutil.which("ctr", path=host.HOST_PATH) or "ctr"


def run_foreign_container(paths: LabPaths, archive: str, image: str, namespace: str) -> str:
    """Run the app image's ``/app init`` (exits 0 at once) with ``ctr run --rm`` in
    ``namespace``; returns the container id."""
    cid = f"sp-ctr-{secrets.token_hex(4)}"
    cgroup = f"/{LAB_CGROUP}/{cid}"
    base = [_ctr(paths), "--address", str(paths.socket), "--namespace", namespace]

    def ctr(*args: str, check: bool = True) -> None:
        proc = subprocess.run(
            [*base, *args],
            capture_output=True,
            text=True,
            check=False,
            timeout=CTR_TIMEOUT,
            env=dict(os.environ, PATH=host.HOST_PATH),
        )
        if check and proc.returncode != 0:
            raise LabError(f"ctr {args[0]} {args[1]} failed: {' '.join(proc.stderr.split())}")

    try:
        ctr("images", "import", archive)
        ctr(
            "run", "--rm", "--null-io",
            # runc's state and the cgroup stay inside the lab, like its pods'
            "--runc-root", str(paths.runtime_root / "runc"), "--cgroup", cgroup,
            image, cid, "/app", "init",
        )  # fmt: skip
    finally:
        ctr("images", "rm", image, check=False)
        ctr("namespaces", "rm", namespace, check=False)
        host.remove_pod_cgroups(cgroup)
    return cid
