"""``startprof doctor``: what works on this machine, what is missing, and how to fix it.

The checks read the machine through a :class:`Host`; tests pass a fake one, so the decision
logic is tested without root or a particular kernel.
"""

from __future__ import annotations

import ctypes
import os
import platform
import re
import shutil
import socket
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal, Protocol

from startprof.errors import StartprofError
from startprof.probes import cri, hooks, preferred_tracepoints, required_tracepoints

Status = Literal["ok", "warn", "fail"]

MIN_KERNEL = (5, 8)  # BPF ring buffer
CAP_SYS_ADMIN, CAP_PERFMON, CAP_BPF = 21, 38, 39
TRACEFS_CANDIDATES = ("/sys/kernel/tracing", "/sys/kernel/debug/tracing")
LAB_RUNTIMES = ("runc", "crun")
CNI_BIN_DIRS = ("/usr/lib/cni", "/opt/cni/bin")
CNI_PLUGINS = ("bridge", "ptp", "host-local", "loopback", "portmap")


@dataclass(frozen=True)
class Check:
    name: str
    status: Status
    required: bool
    detail: str
    fix: str = ""


@dataclass(frozen=True)
class Report:
    checks: tuple[Check, ...]

    @property
    def ok(self) -> bool:
        return all(c.status == "ok" for c in self.checks if c.required)

    def to_dict(self) -> dict[str, object]:
        return {"ok": self.ok, "checks": [asdict(c) for c in self.checks]}


class Host(Protocol):
    """What the checks need to know about the machine."""

    def euid(self) -> int: ...
    def effective_caps(self) -> int: ...
    def kernel_release(self) -> str: ...
    def machine(self) -> str:
        """The CPU architecture, as ``uname -m`` prints it."""
        ...

    def bpf_map_create_errno(self) -> int:
        """0 when a BPF array map could be created, else the errno."""
        ...

    def mounts(self) -> str:
        """Contents of /proc/mounts."""
        ...

    def exists(self, path: str) -> bool: ...
    def which(self, name: str) -> str | None: ...
    def bcc_trial(self) -> str | None:
        """Compile and attach a trivial tracepoint program; None on success, else the error."""
        ...

    def fentry_usable(self) -> bool:
        """Whether the probes' syscall hooks can be fentry programs (startprof.probes.hooks)."""
        ...

    def cri_version(self, socket_path: str) -> str:
        """Runtime name and version behind a CRI socket; raises OSError or CriError if none."""
        ...

    def host_pid_namespace(self) -> bool:
        """Whether this process shares the host's pid namespace; raises OSError if unknown."""
        ...

    def containerd_listens(self, socket_path: str) -> bool | None:
        """Whether a containerd listens on the socket, as its own network namespace says;
        None when no containerd runs."""
        ...

    def containerd_version(self, binary: str) -> str | None:
        """What ``binary --version`` says (1.6.20, 2.1.9); None when it cannot tell."""
        ...

    def lab_containerd(self, socket_path: str) -> dict[str, object]:
        """The lab's containerd when ``socket_path`` is a lab's (its state), else {}."""
        ...


def _parse_release(release: str) -> tuple[int, int] | None:
    m = re.match(r"(\d+)\.(\d+)", release)
    return (int(m.group(1)), int(m.group(2))) if m else None


def check_privileges(host: Host) -> Check:
    if host.euid() == 0:
        return Check("privileges", "ok", True, "running as root")
    caps = host.effective_caps()
    wanted = {"CAP_BPF": CAP_BPF, "CAP_PERFMON": CAP_PERFMON, "CAP_SYS_ADMIN": CAP_SYS_ADMIN}
    missing = [name for name, bit in wanted.items() if not caps >> bit & 1]
    if not missing:
        return Check("privileges", "ok", True, "CAP_BPF, CAP_PERFMON and CAP_SYS_ADMIN held")
    return Check(
        "privileges",
        "fail",
        True,
        f"not root and missing {', '.join(missing)}",
        "run with sudo, or grant CAP_BPF+CAP_PERFMON+CAP_SYS_ADMIN",
    )


def check_kernel(host: Host) -> Check:
    release = host.kernel_release()
    version = _parse_release(release)
    if version is None:
        return Check("kernel", "fail", True, f"cannot parse kernel release {release!r}")
    if version < MIN_KERNEL:
        return Check(
            "kernel",
            "fail",
            True,
            f"Linux {release} is older than {MIN_KERNEL[0]}.{MIN_KERNEL[1]} (no BPF ring buffer)",
            "run on Linux >= 5.8",
        )
    return Check("kernel", "ok", True, f"Linux {release}")


def check_bpf_syscall(host: Host) -> Check:
    err = host.bpf_map_create_errno()
    if err == 0:
        return Check("bpf syscall", "ok", True, "created and closed a BPF array map")
    return Check(
        "bpf syscall",
        "fail",
        True,
        f"bpf(BPF_MAP_CREATE) failed: {os.strerror(err)}",
        "run as root; check kernel.unprivileged_bpf_disabled and that CONFIG_BPF_SYSCALL=y",
    )


def tracefs_path(mounts: str) -> str | None:
    """Mount point of tracefs (or debugfs's tracing dir) in a /proc/mounts text."""
    found: dict[str, str] = {}
    for line in mounts.splitlines():
        parts = line.split()
        if len(parts) >= 3:
            found[parts[1]] = parts[2]
    for mountpoint, fstype in found.items():
        if fstype == "tracefs":
            return mountpoint
    debugfs = [mp for mp, fs in found.items() if fs == "debugfs"]
    return f"{debugfs[0]}/tracing" if debugfs else None


def check_tracefs(host: Host) -> Check:
    path = tracefs_path(host.mounts())
    if path is None:
        return Check(
            "tracefs",
            "fail",
            True,
            "tracefs is not mounted",
            "mount -t tracefs nodev /sys/kernel/tracing (sudo make setup does it)",
        )
    return Check("tracefs", "ok", True, f"mounted at {path}")


def check_tracepoints(host: Host, tracepoints: Sequence[str]) -> Check:
    path = tracefs_path(host.mounts())
    if path is None:
        return Check("tracepoints", "fail", True, "cannot look: tracefs is not mounted", "")
    missing = [
        tp for tp in tracepoints if not host.exists(f"{path}/events/{tp.replace(':', '/')}/format")
    ]
    if missing:
        return Check(
            "tracepoints",
            "fail",
            True,
            f"{len(missing)} of {len(tracepoints)} missing: {', '.join(missing)}",
            "a kernel with CONFIG_FTRACE_SYSCALLS=y and the sched tracepoints",
        )
    return Check("tracepoints", "ok", True, f"all {len(tracepoints)} the probes use exist")


def check_cri_hooks(host: Host) -> Check:
    """Which hooks the cri probe reads CRI bytes with: the socket tracepoints, or (a fallback
    that works everywhere but costs every read and write on the machine) the syscalls."""
    path = tracefs_path(host.mounts())
    roots = [f"{path}/events"] if path else []
    usable = cri.sock_tracepoints_usable(
        host.machine(), roots, exists=lambda d: host.exists(f"{d}/format")
    )
    if usable:
        return Check(
            "cri hooks", "ok", False, f"socket tracepoints ({', '.join(preferred_tracepoints())})"
        )
    return Check(
        "cri hooks",
        "warn",
        False,
        "read/write syscall tracepoints: while recording, every read and write on the machine "
        "pays about +260 ns",
        "Linux >= 6.3 on x86_64 has the cheaper sock:sock_recv_length, sock_send_length and "
        "sk_data_ready",
    )


def check_syscall_hooks(host: Host) -> Check:
    """How the syscall hooks will attach (record --syscall-hooks auto)."""
    if host.fentry_usable():
        return Check("syscall hooks", "ok", False, "fentry programs: only the hooked syscalls pay")
    return Check(
        "syscall hooks",
        "warn",
        False,
        "syscall tracepoints: while recording, every syscall on the machine takes the kernel's "
        "slow path (+65 ns on the project's VM) and each hooked one builds a tracepoint record "
        "(~150 ns)",
        "fentry needs x86_64, BTF, BPF trampolines (Linux >= 5.5) and a kernel that loads "
        "tracing programs",
    )


def check_btf(host: Host) -> Check:
    if host.exists("/sys/kernel/btf/vmlinux"):
        return Check("btf", "ok", True, "/sys/kernel/btf/vmlinux")
    return Check(
        "btf",
        "fail",
        True,
        "/sys/kernel/btf/vmlinux is missing",
        "a kernel with CONFIG_DEBUG_INFO_BTF=y",
    )


def check_kernel_headers(host: Host) -> Check:
    build = f"/lib/modules/{host.kernel_release()}/build"
    if host.exists(f"{build}/Makefile"):
        return Check("kernel headers", "ok", True, build)
    return Check(
        "kernel headers",
        "fail",
        True,
        f"{build} is missing; bcc cannot compile",
        "sudo make setup (installs linux-headers-amd64 and links them)",
    )


def check_bcc(host: Host) -> Check:
    error = host.bcc_trial()
    if error is None:
        return Check("bcc", "ok", True, "compiled and attached a tracepoint program")
    return Check(
        "bcc",
        "fail",
        True,
        error,
        "sudo make setup (python3-bpfcc, kernel headers); run from the project venv",
    )


def check_lab_binaries(host: Host) -> list[Check]:
    checks = []
    containerd = host.which("containerd")
    version = host.containerd_version(containerd) if containerd else None
    checks.append(
        Check(
            "containerd",
            "ok",
            False,
            f"{containerd} {version or '(version unknown)'}; the lab also runs Debian's 1.6, 1.7 "
            "or 2.1 (lab up --containerd)",
        )
        if containerd
        else Check(
            "containerd",
            "warn",
            False,
            "not found (the lab needs it)",
            "apt-get install containerd",
        )
    )
    for runtime in LAB_RUNTIMES:
        path = host.which(runtime)
        checks.append(
            Check(runtime, "ok", False, path)
            if path
            else Check(
                runtime,
                "warn",
                False,
                "not found (lab handlers skip it)",
                f"apt-get install {runtime}",
            )
        )
    for bin_dir in CNI_BIN_DIRS:
        missing = [p for p in CNI_PLUGINS if not host.exists(f"{bin_dir}/{p}")]
        if not missing:
            checks.append(
                Check("cni plugins", "ok", False, f"{', '.join(CNI_PLUGINS)} in {bin_dir}")
            )
            break
    else:
        checks.append(
            Check(
                "cni plugins",
                "warn",
                False,
                f"{', '.join(CNI_PLUGINS)} not all in {' or '.join(CNI_BIN_DIRS)}",
                "apt-get install containernetworking-plugins",
            )
        )
    return checks


def check_cri_socket(host: Host, socket_path: str) -> Check:
    try:
        version = host.cri_version(socket_path)
    except (OSError, StartprofError) as exc:
        return Check(
            "cri socket",
            "warn",
            False,
            f"{socket_path} does not answer: {exc}",
            "start the lab (startprof lab up) or pass --cri-socket / STARTPROF_CRI_SOCKET",
        )
    lab = host.lab_containerd(socket_path)
    if lab:
        version += f"; the lab's containerd {lab.get('version')} ({lab.get('source')})"
    return Check("cri socket", "ok", False, f"{socket_path}: {version}")


def check_agent_pid_namespace(host: Host) -> Check:
    """``startprof agent`` refuses another pid namespace (its pids and /proc would not be the
    host's); record and the lab do not care."""
    name = "agent: host pid namespace"
    try:
        host_ns = host.host_pid_namespace()
    except OSError as exc:
        return Check(name, "warn", False, f"cannot tell: {exc}")
    if host_ns:
        return Check(name, "ok", False, "the host's pid namespace")
    from startprof.agent import HOST_PID_FIX

    return Check(
        name, "warn", False, "another pid namespace: the agent would refuse to start", HOST_PID_FIX
    )


def check_agent_cri_netns(host: Host, socket_path: str) -> Check:
    """A pod sees the node's socket file through a mount, yet only containerd's own network
    namespace knows whether containerd listens on it."""
    name = "agent: containerd on the socket"
    listens = host.containerd_listens(socket_path)
    if listens is None:
        return Check(name, "warn", False, "no containerd runs here", "start containerd or the lab")
    if listens:
        return Check(name, "ok", False, f"containerd listens on {socket_path}")
    from startprof.agent import CRI_NETNS_FIX

    return Check(
        name,
        "warn",
        False,
        f"no containerd listens on {socket_path}: the agent would refuse to start",
        CRI_NETNS_FIX,
    )


def run_checks(host: Host, cri_socket: str) -> Report:
    checks: list[Check] = [
        check_privileges(host),
        check_kernel(host),
        check_bpf_syscall(host),
        check_tracefs(host),
        check_tracepoints(host, required_tracepoints()),
        check_cri_hooks(host),
        check_syscall_hooks(host),
        check_btf(host),
        check_kernel_headers(host),
        check_bcc(host),
        *check_lab_binaries(host),
        check_cri_socket(host, cri_socket),
        check_agent_pid_namespace(host),
        check_agent_cri_netns(host, cri_socket),
    ]
    return Report(tuple(checks))


class RealHost:
    """The machine startprof runs on."""

    def euid(self) -> int:
        return os.geteuid()

    def effective_caps(self) -> int:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("CapEff:"):
                return int(line.split()[1], 16)
        return 0

    def kernel_release(self) -> str:
        return platform.release()

    def machine(self) -> str:
        return platform.machine()

    def bpf_map_create_errno(self) -> int:
        libc = ctypes.CDLL(None, use_errno=True)
        # union bpf_attr for BPF_MAP_CREATE: map_type, key_size, value_size, max_entries, map_flags
        attr = (ctypes.c_uint32 * 5)(2, 4, 4, 1, 0)  # BPF_MAP_TYPE_ARRAY
        nr_bpf = {"x86_64": 321, "aarch64": 280}.get(platform.machine(), 321)
        fd = libc.syscall(nr_bpf, 0, ctypes.byref(attr), ctypes.sizeof(attr))
        if fd < 0:
            return ctypes.get_errno() or 1
        os.close(fd)
        return 0

    def mounts(self) -> str:
        return Path("/proc/mounts").read_text()

    def exists(self, path: str) -> bool:
        return os.path.exists(path)

    def which(self, name: str) -> str | None:
        return shutil.which(name, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")

    def bcc_trial(self) -> str | None:
        try:
            from bcc import BPF
        except ImportError as exc:
            return f"cannot import bcc: {exc}"
        text = "TRACEPOINT_PROBE(sched, sched_process_exec) { return 0; }"
        try:
            bpf = BPF(text=text)
        except Exception as exc:  # bcc raises bare Exception on compile/load errors
            return f"bcc failed to compile or attach: {str(exc).splitlines()[0]}"
        bpf.cleanup()
        return None

    def fentry_usable(self) -> bool:
        return hooks.fentry_usable()

    def cri_version(self, socket_path: str) -> str:
        if not os.path.exists(socket_path):
            raise OSError(f"no such socket {socket_path}")
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(2)
            sock.connect(socket_path)
        from startprof.lab.cri import cri_version

        return cri_version(socket_path)

    def host_pid_namespace(self) -> bool:
        from startprof.agent import in_host_pid_namespace

        return in_host_pid_namespace()

    def containerd_listens(self, socket_path: str) -> bool | None:
        from startprof.agent import cri_socket_in_containerd_netns

        return cri_socket_in_containerd_netns(socket_path)

    def containerd_version(self, binary: str) -> str | None:
        from startprof.lab.versions import version_of

        try:
            return version_of(binary)
        except StartprofError:
            return None

    def lab_containerd(self, socket_path: str) -> dict[str, object]:
        from startprof.lab.versions import recording_metadata

        return recording_metadata(socket_path, []) if socket_path else {}


def doctor(cri_socket: str, host_factory: Callable[[], Host] = RealHost) -> Report:
    return run_checks(host_factory(), cri_socket)
