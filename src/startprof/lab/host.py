"""Reading and undoing what a pod start leaves on the host: processes, mounts, cgroups, links,
iptables rules, CNI caches and shim sockets. Used by ``lab down`` to clean and by
``lab.leaks`` to check; kept in one place so both agree on what belongs to the lab.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from startprof.lab.config import K8S_NAMESPACE, LAB_BRIDGES, LAB_CGROUP, LAB_NETWORKS
from startprof.procfs import argv_text

CNI_RESULTS_DIR = Path("/var/lib/cni/results")
CNI_NETWORKS_DIR = Path("/var/lib/cni/networks")
SHIM_SOCKET_DIR = Path("/run/containerd/s")
CRUN_STATE_DIR = Path("/run/crun")
# Where containerd 1.6-2.x write when a config leaves a path at its default. The lab's configs
# set every one of them inside DIR; up notes which do not exist yet and the leak checker
# fails on any that appears (NRI's socket and /opt/containerd are new defaults of 2.x).
CONTAINERD_DEFAULT_PATHS = tuple(
    Path(p)
    for p in (
        "/opt/containerd",
        "/var/lib/containerd",
        "/run/containerd/containerd.sock",
        "/run/containerd/containerd.sock.ttrpc",
        "/run/containerd/io.containerd.runtime.v2.task",
        "/run/containerd/io.containerd.grpc.v1.cri",
        "/run/containerd/io.containerd.sandbox.controller.v1.shim",
        "/run/containerd/runc",
        "/var/run/nri",
        "/run/nri",
        "/var/run/netns",
    )
)
MNT_DETACH = 2
# Host PATH for containerd and the tools the lab runs: CNI plugins exec iptables from
# containerd's PATH, and Debian puts iptables and runc in /usr/sbin.
HOST_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


# ---------------------------------------------------------------- processes


def pid_alive(pid: int) -> bool:
    """True when ``pid`` runs and is not a zombie (an unreaped dead child counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] not in ("Z", "X")


def processes(match: Callable[[list[str]], bool]) -> list[tuple[int, list[str]]]:
    """Live processes whose argv satisfies ``match``."""
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            pid = int(entry.name)
            argv = argv_text(pid)
            if argv and match(argv) and pid_alive(pid):
                out.append((pid, argv))
    return out


def shim_processes(socket_path: Path) -> list[tuple[int, list[str]]]:
    """containerd shims started by the containerd listening on ``socket_path``."""
    address = str(socket_path)

    def is_ours(argv: list[str]) -> bool:
        if "containerd-shim" not in os.path.basename(argv[0]):
            return False
        return any(a == address for a in argv) or f"-address={address}" in argv

    return processes(is_ours)


def lab_containerds(config_name: str = "containerd.toml") -> list[tuple[int, list[str]]]:
    """Running containerd daemons started by a startprof lab (any lab directory)."""

    def is_lab(argv: list[str]) -> bool:
        return os.path.basename(argv[0]) == "containerd" and any(
            a.endswith("/" + config_name) for a in argv
        )

    return processes(is_lab)


def terminate(pid: int, timeout: float = 10.0) -> bool:
    """SIGTERM, then SIGKILL after ``timeout``; True when the process is gone."""
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return True
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if not pid_alive(pid):
                return True
            time.sleep(0.02)
    return not pid_alive(pid)


# ---------------------------------------------------------------- mounts


@dataclass(frozen=True)
class MountEntry:
    mountpoint: str
    fstype: str
    source: str
    options: str


def _unescape(field: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as octal.
    for code, char in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        field = field.replace(code, char)
    return field


def mounts() -> list[MountEntry]:
    out = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        left, _, right = line.partition(" - ")
        fields, rfields = left.split(), right.split()
        if len(fields) < 5 or len(rfields) < 3:
            continue
        out.append(
            MountEntry(
                _unescape(fields[4]),
                rfields[0],
                _unescape(rfields[1]),
                fields[5] + "," + rfields[2],
            )
        )
    return out


def mounts_under(root: Path) -> list[MountEntry]:
    """Mounts at or below ``root``, deepest first (the order to unmount them)."""
    prefix = str(root).rstrip("/") + "/"
    found = [m for m in mounts() if m.mountpoint.startswith(prefix) or m.mountpoint == str(root)]
    return sorted(found, key=lambda m: m.mountpoint.count("/"), reverse=True)


def umount(path: str) -> str | None:
    """Lazily unmount ``path``; None on success, else the error."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.umount2(path.encode(), MNT_DETACH) == 0:
        return None
    err = ctypes.get_errno()
    return None if err in (errno.EINVAL, errno.ENOENT) else os.strerror(err)


# ---------------------------------------------------------------- cgroups


def cgroup_mountpoints() -> list[Path]:
    """Every cgroup v1 hierarchy and the cgroup2 one (hybrid layout: /sys/fs/cgroup/unified)."""
    seen: dict[str, None] = {}
    for m in mounts():
        if m.fstype in ("cgroup", "cgroup2"):
            seen.setdefault(m.mountpoint, None)
    return [Path(p) for p in seen]


def lab_cgroups() -> list[Path]:
    """The lab's cgroup root in every hierarchy where it exists."""
    return [p / LAB_CGROUP for p in cgroup_mountpoints() if (p / LAB_CGROUP).is_dir()]


def rmdir_cgroup_tree(path: Path, attempts: int = 50) -> list[str]:
    """rmdir a cgroup and its children, deepest first; returns the ones that stay.

    A cgroup whose last process just exited can report EBUSY for a few milliseconds, so each
    rmdir is retried briefly. rmdir (not rm -r): cgroupfs files are removed with their dir.
    """
    if not path.is_dir():
        return []
    dirs = [Path(d) for d, _, _ in os.walk(path)]
    left = []
    for d in sorted(dirs, key=lambda d: len(d.parts), reverse=True):
        for i in range(attempts):
            try:
                d.rmdir()
                break
            except FileNotFoundError:
                break
            except OSError as exc:
                if exc.errno != errno.EBUSY or i == attempts - 1:
                    left.append(f"{d}: {exc.strerror}")
                    break
                time.sleep(0.01)
    return left


def remove_pod_cgroups(cgroup_parent: str) -> list[str]:
    """rmdir one pod's cgroup parent (``/startprof-lab/pod<uid>``) in every hierarchy."""
    left = []
    for mp in cgroup_mountpoints():
        left += rmdir_cgroup_tree(mp / cgroup_parent.lstrip("/"))
    return left


# ---------------------------------------------------------------- network


def ip_json(*args: str) -> list[dict[str, object]]:
    proc = subprocess.run(["ip", "-j", *args], capture_output=True, text=True, check=False)
    if proc.returncode != 0 or not proc.stdout.strip():
        return []
    data = json.loads(proc.stdout)
    return data if isinstance(data, list) else []


def lab_links() -> list[str]:
    """Host interfaces of the lab: its bridge, veths on it, ptp host ends in the lab subnets."""
    names: dict[str, None] = {}
    for link in ip_json("link", "show"):
        name = str(link.get("ifname", ""))
        if name in LAB_BRIDGES or link.get("master") in LAB_BRIDGES:
            names.setdefault(name, None)
    ptp_prefixes = tuple(
        n.subnet.split(".0.0/")[0] + "." for n in LAB_NETWORKS if n.plugin == "ptp"
    )
    for link in ip_json("addr", "show", "type", "veth"):
        infos = link.get("addr_info")
        for a in infos if isinstance(infos, list) else []:
            if str(a.get("local", "")).startswith(ptp_prefixes):
                names.setdefault(str(link.get("ifname")), None)
    return list(names)


def delete_link(name: str) -> str | None:
    proc = subprocess.run(["ip", "link", "del", name], capture_output=True, text=True, check=False)
    return None if proc.returncode == 0 else proc.stderr.strip()


def _iptables_save(table: str) -> list[str]:
    tool = shutil.which("iptables-save", path=HOST_PATH)
    if tool is None:
        return []
    proc = subprocess.run([tool, "-t", table], capture_output=True, text=True, check=False)
    return proc.stdout.splitlines() if proc.returncode == 0 else []


def lab_iptables() -> list[tuple[str, str]]:
    """(table, rule) of every iptables rule that names a lab network or subnet.

    CNI plugins tag their rules with comments holding the network name and container id.
    """
    needles = [n.cni_name for n in LAB_NETWORKS] + [n.subnet for n in LAB_NETWORKS]
    out = []
    for table in ("nat", "filter", "mangle"):
        for line in _iptables_save(table):
            if line.startswith("-A ") and any(n in line for n in needles):
                out.append((table, line))
    return out


def lab_cni_chains(rules: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Per-pod CNI chains (``CNI-xxxx``, ``CNI-DN-xxxx``) that lab rules jump to."""
    chains: dict[tuple[str, str], None] = {}
    for table, rule in rules:
        parts = rule.split()
        for i, p in enumerate(parts[:-1]):
            if p in ("-j", "-g") and parts[i + 1].startswith("CNI-"):
                target = parts[i + 1]
                # Shared chains (CNI-HOSTPORT-*, CNI-FORWARD) belong to every CNI user.
                if not target.startswith(("CNI-HOSTPORT-", "CNI-FORWARD", "CNI-ADMIN")):
                    chains.setdefault((table, target), None)
        if parts[1].startswith("CNI-") and not parts[1].startswith(
            ("CNI-HOSTPORT-", "CNI-FORWARD")
        ):
            chains.setdefault((table, parts[1]), None)
    return list(chains)


def delete_iptables(rules: list[tuple[str, str]]) -> list[str]:
    """Delete lab rules, then the per-pod chains they used; returns errors."""
    tool = shutil.which("iptables", path=HOST_PATH) or "iptables"
    errors = []
    chains = lab_cni_chains(rules)
    for table, rule in rules:
        # iptables-save quotes comments; shlex undoes exactly that quoting.
        proc = subprocess.run(
            [tool, "-w", "-t", table, "-D", *shlex.split(rule)[1:]],
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0:
            errors.append(f"iptables -t {table} {rule}: {proc.stderr.strip()}")
    for table, chain in chains:
        for op in ("-F", "-X"):
            subprocess.run([tool, "-w", "-t", table, op, chain], capture_output=True, check=False)
    return errors


def lab_cni_cache_files(ipam_dir: Path, sandbox_ids: Iterable[str] = ()) -> list[Path]:
    """CNI result caches and IP leases of lab networks (``lock`` and ``last_reserved_ip.*``
    are host-local bookkeeping, not leases). libcni names a cache ``<network>-<id>-<ifname>``;
    the loopback network's name (``cni-loopback``) is shared with every CRI runtime, so those
    count only for the lab's own sandbox ids."""
    prefixes = tuple(n.cni_name + "-" for n in LAB_NETWORKS)
    prefixes += tuple(f"cni-loopback-{i}-" for i in sandbox_ids)
    names = tuple(n.cni_name for n in LAB_NETWORKS)
    found: list[Path] = []
    if CNI_RESULTS_DIR.is_dir():
        found += [p for p in CNI_RESULTS_DIR.iterdir() if p.name.startswith(prefixes)]
    for base in (CNI_NETWORKS_DIR, ipam_dir):
        for name in names:
            d = base / name
            if d.is_dir():
                found += [
                    p for p in d.iterdir() if p.name != "lock" and not p.name.startswith("last_")
                ]
    return found


# ---------------------------------------------------------------- shim sockets


def shim_socket(containerd_address: Path, sandbox_id: str, namespace: str = K8S_NAMESPACE) -> Path:
    """Where containerd 1.6 puts the shim socket of a task: /run/containerd/s/sha256(addr/ns/id).

    This path is outside the lab dir and cannot be configured in 1.6, so down removes the
    sockets of the lab's tasks by name.
    """
    key = os.path.join(str(containerd_address), namespace, sandbox_id)
    return SHIM_SOCKET_DIR / hashlib.sha256(key.encode()).hexdigest()


def stale_unix_sockets(directory: Path) -> list[Path]:
    """Sockets in ``directory`` nobody listens on any more (left by a killed shim)."""
    stale: list[Path] = []
    if not directory.is_dir():
        return stale
    for p in directory.iterdir():
        if not p.is_socket():
            continue
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(0.2)
        try:
            s.connect(str(p))
        except ConnectionRefusedError:
            stale.append(p)
        except OSError:
            pass
        finally:
            s.close()
    return stale


def sandbox_ids(containerd_root: Path, state_dir: Path) -> list[str]:
    """Ids of the sandboxes the lab's CRI plugin still knows (its per-sandbox dirs in root and
    state exist from RunPodSandbox until RemovePodSandbox)."""
    ids: dict[str, None] = {}
    for base in (containerd_root, state_dir):
        for p in _dirs(base / "io.containerd.grpc.v1.cri" / "sandboxes"):
            ids.setdefault(p.name, None)
    return list(ids)


def task_ids(state_dir: Path) -> list[str]:
    """Ids of every task bundle containerd's runtime v2 keeps under the lab's state dir."""
    base = state_dir / "io.containerd.runtime.v2.task"
    return [p.name for ns in _dirs(base) for p in _dirs(ns)]


def _dirs(path: Path) -> Iterator[Path]:
    if path.is_dir():
        yield from (p for p in path.iterdir() if p.is_dir())
