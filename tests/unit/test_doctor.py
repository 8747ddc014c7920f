"""The doctor's decisions, on a fabricated machine: no root, no particular kernel needed."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from startprof.doctor import (
    CAP_BPF,
    CAP_PERFMON,
    CAP_SYS_ADMIN,
    Report,
    run_checks,
    tracefs_path,
)
from startprof.errors import CriError
from startprof.probes import preferred_tracepoints, required_tracepoints

TRACEFS_MOUNTS = "tracefs /sys/kernel/tracing tracefs rw,nosuid 0 0\n"
ALL_CAPS = 1 << CAP_BPF | 1 << CAP_PERFMON | 1 << CAP_SYS_ADMIN


@dataclass
class FakeHost:
    uid: int = 0
    caps: int = 0
    release: str = "6.18.44-fc"
    bpf_errno: int = 0
    mount_text: str = TRACEFS_MOUNTS
    paths: set[str] = field(default_factory=set)
    binaries: dict[str, str] = field(default_factory=dict)
    bcc_error: str | None = None
    cri: str | None = "containerd 1.6.20 (CRI v1)"
    arch: str = "x86_64"
    containerd: str | None = "1.6.20"
    lab: dict[str, object] = field(default_factory=dict)
    pid_ns: bool | None = True
    """None: /proc/self/ns/pid cannot be read."""
    listening: bool | None = True
    fentry: bool = True

    def euid(self) -> int:
        return self.uid

    def effective_caps(self) -> int:
        return self.caps

    def kernel_release(self) -> str:
        return self.release

    def machine(self) -> str:
        return self.arch

    def bpf_map_create_errno(self) -> int:
        return self.bpf_errno

    def mounts(self) -> str:
        return self.mount_text

    def exists(self, path: str) -> bool:
        return path in self.paths

    def which(self, name: str) -> str | None:
        return self.binaries.get(name)

    def bcc_trial(self) -> str | None:
        return self.bcc_error

    def fentry_usable(self) -> bool:
        return self.fentry

    def cri_version(self, socket_path: str) -> str:
        if self.cri is None:
            raise CriError(f"CRI Version on {socket_path} failed: UNAVAILABLE")
        return self.cri

    def containerd_version(self, binary: str) -> str | None:
        return self.containerd

    def host_pid_namespace(self) -> bool:
        if self.pid_ns is None:
            raise PermissionError("permission denied: /proc/self/ns/pid")
        return self.pid_ns

    def containerd_listens(self, socket_path: str) -> bool | None:
        return self.listening

    def lab_containerd(self, socket_path: str) -> dict[str, object]:
        return self.lab


def healthy() -> FakeHost:
    paths = {
        f"/sys/kernel/tracing/events/{tp.replace(':', '/')}/format"
        for tp in (*required_tracepoints(), *preferred_tracepoints())
    }
    paths |= {"/sys/kernel/btf/vmlinux", "/lib/modules/6.18.44-fc/build/Makefile"}
    paths |= {f"/usr/lib/cni/{p}" for p in ("bridge", "ptp", "host-local", "loopback", "portmap")}
    binaries = {
        "containerd": "/usr/bin/containerd",
        "runc": "/usr/sbin/runc",
        "crun": "/usr/bin/crun",
    }
    return FakeHost(paths=paths, binaries=binaries)


def by_name(report: Report) -> dict[str, tuple[str, bool]]:
    return {c.name: (c.status, c.required) for c in report.checks}


def test_healthy_machine_is_ok_everywhere() -> None:
    report = run_checks(healthy(), "/run/x.sock")
    assert report.ok
    assert {c.status for c in report.checks} == {"ok"}
    assert report.to_dict()["ok"] is True


def test_json_shape() -> None:
    doc = run_checks(healthy(), "/run/x.sock").to_dict()
    assert set(doc) == {"ok", "checks"}
    for check in doc["checks"]:  # type: ignore[attr-defined]
        assert set(check) == {"name", "status", "required", "detail", "fix"}
        assert check["status"] in {"ok", "warn", "fail"}


def test_non_root_with_all_capabilities_passes() -> None:
    host = healthy()
    host.uid, host.caps = 1000, ALL_CAPS
    assert by_name(run_checks(host, "/x"))["privileges"] == ("ok", True)


def test_non_root_missing_cap_bpf_fails_and_names_it() -> None:
    host = healthy()
    host.uid, host.caps = 1000, ALL_CAPS & ~(1 << CAP_BPF)
    report = run_checks(host, "/x")
    assert not report.ok
    check = next(c for c in report.checks if c.name == "privileges")
    assert check.status == "fail"
    assert "CAP_BPF" in check.detail
    assert "CAP_PERFMON" not in check.detail
    assert check.fix


@pytest.mark.parametrize(
    ("release", "status"),
    [("5.7.19", "fail"), ("5.8.0", "ok"), ("6.1.0-13-amd64", "ok"), ("garbage", "fail")],
)
def test_kernel_version_threshold(release: str, status: str) -> None:
    host = healthy()
    host.release = release
    assert by_name(run_checks(host, "/x"))["kernel"][0] == status


def test_bpf_syscall_error_is_reported_with_errno_text() -> None:
    host = healthy()
    host.bpf_errno = 1  # EPERM
    report = run_checks(host, "/x")
    check = next(c for c in report.checks if c.name == "bpf syscall")
    assert check.status == "fail"
    assert "not permitted" in check.detail
    assert not report.ok


def test_tracefs_missing_fails_tracefs_and_tracepoints() -> None:
    host = healthy()
    host.mount_text = "proc /proc proc rw 0 0\n"
    checks = by_name(run_checks(host, "/x"))
    assert checks["tracefs"] == ("fail", True)
    assert checks["tracepoints"] == ("fail", True)


def test_tracefs_found_under_debugfs() -> None:
    assert tracefs_path("debugfs /sys/kernel/debug debugfs rw 0 0\n") == "/sys/kernel/debug/tracing"
    assert tracefs_path(TRACEFS_MOUNTS) == "/sys/kernel/tracing"
    assert tracefs_path("") is None


def test_missing_tracepoint_is_named() -> None:
    host = healthy()
    host.paths.discard("/sys/kernel/tracing/events/syscalls/sys_enter_setns/format")
    check = next(c for c in run_checks(host, "/x").checks if c.name == "tracepoints")
    assert check.status == "fail"
    assert "syscalls:sys_enter_setns" in check.detail


@pytest.mark.parametrize(
    ("arch", "drop", "status"),
    [
        ("x86_64", None, "ok"),
        ("aarch64", None, "warn"),  # the program reads x86_64's saved registers
        ("x86_64", "sock/sock_send_length", "warn"),  # a kernel before 6.3
    ],
)
def test_cri_hooks_prefer_the_socket_tracepoints(arch: str, drop: str | None, status: str) -> None:
    host = healthy()
    host.arch = arch
    if drop:
        host.paths.discard(f"/sys/kernel/tracing/events/{drop}/format")
    report = run_checks(host, "/x")
    check = next(c for c in report.checks if c.name == "cri hooks")
    assert (check.status, check.required) == (status, False)
    assert report.ok  # the syscall fallback works, only dearer
    assert ("read/write syscall" in check.detail) == (status == "warn")


@pytest.mark.parametrize(("fentry", "status"), [(True, "ok"), (False, "warn")])
def test_syscall_hooks_say_whether_every_syscall_pays(fentry: bool, status: str) -> None:
    host = healthy()
    host.fentry = fentry
    report = run_checks(host, "/x")
    check = next(c for c in report.checks if c.name == "syscall hooks")
    assert (check.status, check.required) == (status, False)
    assert report.ok  # tracepoints work, only dearer
    assert ("slow path" in check.detail) == (not fentry)


def test_btf_headers_and_bcc_failures_are_required() -> None:
    host = healthy()
    host.paths -= {"/sys/kernel/btf/vmlinux", "/lib/modules/6.18.44-fc/build/Makefile"}
    host.bcc_error = "cannot import bcc: No module named 'bcc'"
    checks = by_name(run_checks(host, "/x"))
    assert checks["btf"] == ("fail", True)
    assert checks["kernel headers"] == ("fail", True)
    assert checks["bcc"] == ("fail", True)


def test_lab_tools_and_cri_socket_only_warn() -> None:
    host = healthy()
    host.binaries = {}
    host.paths = {p for p in host.paths if not p.startswith("/usr/lib/cni")}
    host.cri = None
    report = run_checks(host, "/run/none.sock")
    assert report.ok
    checks = by_name(report)
    for name in ("containerd", "runc", "crun", "cni plugins", "cri socket"):
        assert checks[name] == ("warn", False), name
    cri = next(c for c in report.checks if c.name == "cri socket")
    assert "/run/none.sock" in cri.detail
    assert "lab up" in cri.fix


def test_cni_plugins_found_in_opt_cni_bin() -> None:
    host = healthy()
    host.paths = {p.replace("/usr/lib/cni", "/opt/cni/bin") for p in host.paths}
    check = next(c for c in run_checks(host, "/x").checks if c.name == "cni plugins")
    assert check.status == "ok"
    assert "/opt/cni/bin" in check.detail


def test_doctor_reports_the_containerd_versions() -> None:
    host = healthy()
    host.lab = {"version": "2.1.9", "source": "debian sid containerd_2.1.9+ds1-5_amd64.deb"}
    checks = {c.name: c for c in run_checks(host, "/lab/run/containerd.sock").checks}
    assert checks["containerd"].detail.startswith("/usr/bin/containerd 1.6.20;")
    assert "lab up --containerd" in checks["containerd"].detail
    assert checks["cri socket"].detail.endswith(
        "; the lab's containerd 2.1.9 (debian sid containerd_2.1.9+ds1-5_amd64.deb)"
    )


@pytest.mark.parametrize(
    ("pid_ns", "listening", "pid_status", "netns_status", "fix"),
    [
        (True, True, "ok", "ok", ""),
        (False, True, "warn", "ok", "hostPID: true"),
        (None, True, "warn", "ok", ""),
        (True, False, "ok", "warn", "/run/containerd"),
        (True, None, "ok", "warn", "start containerd"),
    ],
)
def test_agent_checks_warn_with_the_agents_fix(
    pid_ns: bool | None, listening: bool | None, pid_status: str, netns_status: str, fix: str
) -> None:
    """Only the agent needs them: a failure warns (record and the lab still work), and says
    what the agent would refuse and how to deploy it instead."""
    host = healthy()
    host.pid_ns, host.listening = pid_ns, listening
    report = run_checks(host, "/run/containerd/containerd.sock")
    assert report.ok
    checks = {c.name: c for c in report.checks}
    pid, netns = checks["agent: host pid namespace"], checks["agent: containerd on the socket"]
    assert (pid.status, netns.status) == (pid_status, netns_status)
    assert not pid.required and not netns.required
    assert fix in pid.fix + netns.fix
    if False in (pid_ns, listening):
        assert "would refuse to start" in pid.detail + netns.detail
