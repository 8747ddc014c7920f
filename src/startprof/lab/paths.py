"""Where the lab keeps its files. Everything the lab's containerd owns lives below one directory."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

DEFAULT_LAB_DIR = Path("/var/lib/startprof/lab")

# Unix socket paths (sun_path) hold at most 107 bytes plus the NUL.
MAX_SOCKET_PATH = 107


def lab_dir(explicit: str | os.PathLike[str] | None = None) -> Path:
    """The lab directory: ``--dir``, else ``$STARTPROF_LAB_DIR``, else /var/lib/startprof/lab."""
    if explicit:
        return Path(explicit)
    return Path(os.environ.get("STARTPROF_LAB_DIR") or DEFAULT_LAB_DIR)


@dataclass(frozen=True)
class LabPaths:
    """The layout of one lab directory.

    ``run/`` and ``state/`` hold live state only and are emptied by ``lab down``; ``root/``
    (containerd's content store and snapshots) and ``images/`` survive it so that the next
    ``lab up`` needs neither a compiler run nor an image import.
    """

    root: Path

    @classmethod
    def from_socket(cls, socket: str | os.PathLike[str]) -> LabPaths:
        """The lab whose containerd listens on ``socket`` (``DIR/run/containerd.sock``)."""
        return cls(Path(socket).absolute().parent.parent)

    @property
    def socket(self) -> Path:
        return self.root / "run" / "containerd.sock"

    @property
    def run_dir(self) -> Path:
        return self.root / "run"

    @property
    def state_dir(self) -> Path:
        """containerd's ``state`` (tasks, bundles, netns files): tmpfs-like, emptied on down."""
        return self.root / "state"

    @property
    def containerd_root(self) -> Path:
        """containerd's ``root`` (content store, snapshots, metadata)."""
        return self.root / "root"

    @property
    def config(self) -> Path:
        return self.root / "containerd.toml"

    @property
    def log(self) -> Path:
        return self.root / "containerd.log"

    @property
    def pid_file(self) -> Path:
        return self.run_dir / "containerd.pid"

    @property
    def lab_state(self) -> Path:
        """JSON written by ``lab up``: handlers, images and what up changed on the host."""
        return self.run_dir / "lab.json"

    @property
    def cni_dir(self) -> Path:
        return self.root / "cni"

    def cni_conf_dir(self, network: str) -> Path:
        """The CNI conf dir of one network; each runtime handler points at one of them."""
        return self.cni_dir / "net.d" / network

    @property
    def ipam_dir(self) -> Path:
        """host-local's ``dataDir``: IP leases stay in the lab instead of /var/lib/cni/networks."""
        return self.cni_dir / "ipam"

    @property
    def runtime_root(self) -> Path:
        """Parent of the OCI runtimes' ``--root`` state dirs (instead of /run/containerd/runc)."""
        return self.run_dir / "runtime"

    @property
    def hugetlb_mount(self) -> Path:
        """Where up mounts the hugetlb controller as cgroup v1 so crun accepts the hybrid layout."""
        return self.run_dir / "hugetlb"

    @property
    def images_dir(self) -> Path:
        """Image sources' build output: static binaries and OCI archives."""
        return self.root / "images"

    @property
    def pod_logs(self) -> Path:
        """Parent of every pod's ``log_directory``."""
        return self.root / "pods"

    @property
    def truth(self) -> Path:
        """Default ground-truth file; ``lab run`` appends one JSON line per CRI call."""
        return self.root / "truth.jsonl"

    @property
    def registry_hosts(self) -> Path:
        """containerd's registry host configs (``config_path``): ``lab run`` writes a
        ``localhost:<port>/hosts.toml`` for each registry it serves, so that containerd 2.x
        pulls from it over plain HTTP (1.x did so for localhost unasked)."""
        return self.root / "certs.d"

    @property
    def registry_log(self) -> Path:
        """What the lab registry served in the last ``lab run`` that started one (``--pull``,
        ``--kind slow-pull`` or ``bad-image``): one JSON line per manifest or blob request,
        rewritten by each such run."""
        return self.root / "registry.jsonl"
