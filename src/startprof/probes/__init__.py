"""The probes startprof loads: one module per ``bpf/<name>.bpf.c``.

``PROBES`` is the one table of every probe: its name (also its module,
``startprof.probes.<name>``, which registers its own record decoders in ``DECODERS``), its BPF
source, the tracepoints it attaches to, and the fd-keyed BPF maps it owns. ``record``,
``agent``, the probe session and ``startprof doctor`` (which checks that each tracepoint exists
on the running kernel) all read it. ``CORE`` is what ``bpf/startprof.bpf.c`` attaches whatever
probes are chosen: the process-tree hooks that keep the in-kernel filter
right (and feed the exec probe's fork/exit and the namespaces probe's clone records).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ProbeSpec:
    name: str
    source: str
    tracepoints: tuple[str, ...]
    """``category:event`` names, e.g. ``sched:sched_process_exec``."""
    preferred: tuple[str, ...] = ()
    """Tracepoints used instead of some of ``tracepoints`` where the kernel has them (cheaper);
    the probe works without them."""
    fd_maps: tuple[str, ...] = ()
    """BPF maps keyed by ``tgid << 32 | fd`` that the probe owns: the session drops the entries
    of processes that exited without closing those fds (Go programs do)."""

    @property
    def module(self) -> str:
        """The Python module that decodes the probe's records (its ``DECODERS``)."""
        return f"startprof.probes.{self.name}"


def _sys(*names: str) -> tuple[str, ...]:
    return tuple(f"syscalls:sys_{edge}_{n}" for n in names for edge in ("enter", "exit"))


CORE = ProbeSpec(
    "core",
    "startprof.bpf.c",
    (
        *_sys("clone", "clone3"),
        "sched:sched_process_fork",
        "sched:sched_process_exit",
    ),
)

PROBES: tuple[ProbeSpec, ...] = (
    ProbeSpec(
        "exec",
        "exec.bpf.c",
        (
            *_sys("execve", "execveat"),
            "syscalls:sys_enter_exit_group",
            "sched:sched_process_exec",
            # through the core's hooks: fork/exit records and the thread test
            "sched:sched_process_fork",
            "sched:sched_process_exit",
            "syscalls:sys_enter_clone",
            "syscalls:sys_enter_clone3",
        ),
    ),
    ProbeSpec(
        "namespaces",
        "namespaces.bpf.c",
        (*_sys("unshare", "setns"), *_sys("clone", "clone3")),
    ),
    ProbeSpec(
        "netlink",
        "netlink.bpf.c",
        (*_sys("socket", "sendto", "sendmsg", "recvfrom", "recvmsg"), "syscalls:sys_enter_close"),
        fd_maps=("nl_socks",),
    ),
    ProbeSpec(
        "cri",
        "cri.bpf.c",
        (*_sys("accept4", "accept", "read", "write"), "syscalls:sys_enter_close"),
        # instead of read/write on x86_64 with Linux >= 6.3: see cri.sock_tracepoints_usable
        # (sk_data_ready: a write's time, before it wakes the reader)
        ("sock:sock_recv_length", "sock:sock_send_length", "sock:sk_data_ready"),
        fd_maps=("cri_conns",),
    ),
    ProbeSpec(
        "runtime",
        "runtime.bpf.c",
        (
            *_sys("mount", "umount", "pivot_root"),
            *_sys("mount_setattr", "open_tree", "move_mount", "fsmount"),
            "cgroup:cgroup_mkdir",
            "cgroup:cgroup_attach_task",
            "task:task_rename",
        ),
    ),
    ProbeSpec(
        "image",
        "image.bpf.c",
        (
            "syscalls:sys_exit_openat",
            *_sys("renameat", "renameat2"),
            "syscalls:sys_enter_write",
            "syscalls:sys_enter_close",
        ),
        # a registry response's bytes as containerd reads them (else the ingest's writes)
        ("sock:sock_recv_length",),
        fd_maps=("img_fds",),
    ),
)

PROBE_NAMES: tuple[str, ...] = tuple(p.name for p in PROBES)
"""Every probe, in the table's order: what ``record --probes`` accepts and loads by default."""


def required_tracepoints() -> tuple[str, ...]:
    seen: dict[str, None] = {}
    for probe in (CORE, *PROBES):
        for tp in probe.tracepoints:
            seen.setdefault(tp, None)
    return tuple(seen)


def preferred_tracepoints() -> tuple[str, ...]:
    return tuple(dict.fromkeys(tp for probe in (CORE, *PROBES) for tp in probe.preferred))
