"""Everything a lab can leave on a host, checked in one place.

``find_leaks`` lists leftovers in words; an empty list means clean. ``lab down`` calls it to
report what it could not remove, and the integration tests fail on any entry.
"""

from __future__ import annotations

from pathlib import Path

from startprof.lab import host
from startprof.lab.paths import LabPaths
from startprof.lab.state import load_state


def find_leaks(paths: LabPaths) -> list[str]:
    """Human-readable leftovers of the lab in ``paths`` (and of the lab on the host at large:
    bridge, iptables, cgroups and CNI caches are shared by every lab directory)."""
    leaks: list[str] = []
    for pid, argv in host.lab_containerds():
        if str(paths.config) in argv:
            leaks.append(f"containerd still running (pid {pid})")
    for pid, _ in host.shim_processes(paths.socket):
        leaks.append(f"containerd shim still running (pid {pid})")
    for m in host.mounts_under(paths.root):
        leaks.append(f"{m.fstype} mount at {m.mountpoint}")
    state = load_state(paths)
    for mp in state.v1_mounts if state else ():
        if any(m.mountpoint == mp for m in host.mounts()):
            leaks.append(f"cgroup v1 remount at {mp}")
    netns = paths.state_dir / "io.containerd.grpc.v1.cri" / "netns"
    if netns.is_dir():
        leaks += [f"netns file {p}" for p in netns.iterdir()]
    leaks += [f"network interface {name}" for name in host.lab_links()]
    rules = host.lab_iptables()
    leaks += [f"iptables -t {table} {rule}" for table, rule in rules]
    leaks += [f"iptables chain {table}/{chain}" for table, chain in host.lab_cni_chains(rules)]
    for cg in host.lab_cgroups():
        leaks.append(f"cgroup {cg}")
    known = host.sandbox_ids(paths.containerd_root, paths.state_dir)
    leaks += [f"CRI sandbox {i} not removed" for i in known]
    known += host.task_ids(paths.state_dir)
    leaks += [f"CNI cache {p}" for p in host.lab_cni_cache_files(paths.ipam_dir, known)]
    for task_id in host.task_ids(paths.state_dir):
        leaks.append(f"task bundle {task_id}")
        sock = host.shim_socket(paths.socket, task_id)
        if sock.exists():
            leaks.append(f"shim socket {sock}")
    leaks += [f"stale shim socket {p}" for p in host.stale_unix_sockets(host.SHIM_SOCKET_DIR)]
    runtime_state = paths.runtime_root
    if runtime_state.is_dir():
        leaks += [f"OCI runtime state {p}" for p in runtime_state.glob("*/*/*")]
    leaks += [f"crun state {p}" for p in _crun_leftovers()]
    # containerd 2.x keeps per-sandbox state of its sandbox controller beside the task bundles
    for base in (paths.state_dir, paths.containerd_root):
        controller = base / "io.containerd.sandbox.controller.v1.shim"
        if controller.is_dir():
            leaks += [f"sandbox controller state {p}" for p in controller.glob("*/*")]
    for p in state.absent_at_up if state else ():
        if Path(p).exists():
            leaks.append(f"{p} created by the lab's containerd (its config should keep it in DIR)")
    return leaks


def _crun_leftovers() -> list[Path]:
    """crun keeps some state in /run/crun whatever --root says; anything there is a leftover
    once no crun container of the lab runs."""
    if not host.CRUN_STATE_DIR.is_dir():
        return []
    return [p for p in host.CRUN_STATE_DIR.iterdir() if p.is_dir() or p.is_socket()]
