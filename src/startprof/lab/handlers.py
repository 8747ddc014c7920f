"""Runtime handlers a node has and the plain ``<runtime>-<network>`` ones are not: a wrapper
runtime and a runtime with OCI hooks.

- ``runc-wrapped-bridge``: containerd's ``BinaryName`` is a wrapper that execs runc with the
  same arguments, the way nvidia-container-runtime (the GPU operator's default) does after
  editing the bundle. The runtime's processes are then called by the wrapper's name.
- ``runc-hooked-bridge``: runc with a ``base_runtime_spec`` whose ``createRuntime`` and
  ``prestart`` hooks run a small program during ``runc create``, as ``nvidia-ctk hook`` and
  similar tools do on GPU and device-plugin nodes.

Both use the bridge network. The files they need (wrapper, hook, base spec) are written by
``lab up`` into ``DIR/handlers`` (:func:`render_handler_files`); everything here is a pure
function of :class:`LabPaths`, so it is unit-tested without root.

``runc-bridge-nomasq`` is plain runc on a bridge network without masquerade
(``config.BRIDGE_NOMASQ``, its own bridge ``sp-br1``): what the per-pod nat rules cost.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

from startprof.lab.config import BRIDGE_NOMASQ, NETWORKS, RUNTIMES, Handler
from startprof.lab.paths import LabPaths

WRAPPED = "wrapped"
HOOKED = "hooked"
WRAPPER_NAME = "startprof-runc-wrapper"
HOOK_NAME = "startprof-hook"
HOOK_STAGES = ("createRuntime", "prestart")
"""The hook stages the hooked handler's base spec fills; both run inside ``runc create``."""
HOOK_SECONDS = "0.02"
"""How long the hook works: like a device hook's few milliseconds of ldconfig and mounts."""


def handler_dir(paths: LabPaths) -> Path:
    return paths.root / "handlers"


def wrapper_path(paths: LabPaths) -> Path:
    return handler_dir(paths) / WRAPPER_NAME


def hook_path(paths: LabPaths) -> Path:
    return handler_dir(paths) / HOOK_NAME


def base_spec_path(paths: LabPaths) -> Path:
    return handler_dir(paths) / "hooked-spec.json"


def variant_handlers(
    paths: LabPaths, which: Callable[[str], str | None] = shutil.which
) -> list[Handler]:
    """The wrapped, hooked and no-masquerade handlers, when runc is installed (all run runc)."""
    runc = next(r for r in RUNTIMES if r.name == "runc")
    binary = which(runc.binary) or which(f"/usr/sbin/{runc.binary}")
    if not binary:
        return []
    bridge = next(n for n in NETWORKS if n.name == "bridge")
    return [
        Handler(runc, str(wrapper_path(paths)), bridge, variant=WRAPPED, wraps=binary),
        Handler(runc, binary, bridge, variant=HOOKED, base_runtime_spec=str(base_spec_path(paths))),
        Handler(runc, binary, BRIDGE_NOMASQ),
    ]


def _wrapper(runtime: str) -> str:
    return (
        "#!/bin/sh\n"
        "# Written by `startprof lab up` (startprof.lab.handlers). An OCI runtime wrapper like\n"
        "# nvidia-container-runtime: such a wrapper edits the bundle, then becomes the real\n"
        "# runtime with the same arguments, in the same process.\n"
        f'exec {runtime} "$@"\n'
    )


def _hook() -> str:
    return (
        "#!/bin/sh\n"
        "# Written by `startprof lab up` (startprof.lab.handlers). An OCI hook: the runtime\n"
        "# passes the container's state on stdin; a device hook would mount and ldconfig.\n"
        "read -r _state || true\n"
        f"sleep {HOOK_SECONDS}\n"
    )


def base_spec(hook: str) -> dict[str, object]:
    """containerd's default Linux spec (``ctr oci spec`` of 1.6) with the lab's hooks: a
    ``base_runtime_spec`` replaces the default, so it has to be a whole spec. CRI then sets
    the pod's namespaces, mounts, process and cgroups over it as usual."""
    caps = [
        "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD", "CAP_NET_RAW",
        "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE",
        "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE",
    ]  # fmt: skip
    masked = [
        "/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
        "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/sys/firmware",
        "/proc/scsi",
    ]  # fmt: skip
    return {
        "ociVersion": "1.0.2-dev",
        "process": {
            "user": {"uid": 0, "gid": 0},
            "cwd": "/",
            "capabilities": {"bounding": caps, "effective": caps, "permitted": caps},
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
            "noNewPrivileges": True,
        },
        "root": {"path": "rootfs"},
        "mounts": [
            _mount("/proc", "proc", "proc", ["nosuid", "noexec", "nodev"]),
            _mount("/dev", "tmpfs", "tmpfs", ["nosuid", "strictatime", "mode=755", "size=65536k"]),
            _mount(
                "/dev/pts",
                "devpts",
                "devpts",
                ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"],
            ),
            _mount(
                "/dev/shm",
                "shm",
                "tmpfs",
                ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
            ),
            _mount("/dev/mqueue", "mqueue", "mqueue", ["nosuid", "noexec", "nodev"]),
            _mount("/sys", "sysfs", "sysfs", ["nosuid", "noexec", "nodev", "ro"]),
            _mount("/run", "tmpfs", "tmpfs", ["nosuid", "strictatime", "mode=755", "size=65536k"]),
        ],
        "hooks": {
            stage: [{"path": hook, "args": [HOOK_NAME, stage], "timeout": 10}]
            for stage in HOOK_STAGES
        },
        "linux": {
            "resources": {"devices": [{"allow": False, "access": "rwm"}]},
            "namespaces": [{"type": t} for t in ("pid", "ipc", "uts", "mount", "network")],
            "maskedPaths": masked,
            "readonlyPaths": [
                "/proc/bus",
                "/proc/fs",
                "/proc/irq",
                "/proc/sys",
                "/proc/sysrq-trigger",
            ],
        },
    }


def _mount(destination: str, source: str, kind: str, options: list[str]) -> dict[str, object]:
    return {"destination": destination, "type": kind, "source": source, "options": options}


def render_handler_files(
    paths: LabPaths, handlers: Sequence[Handler]
) -> dict[str, tuple[str, int]]:
    """File path -> (text, mode) of what the variant handlers among ``handlers`` need."""
    out: dict[str, tuple[str, int]] = {}
    for h in handlers:
        if h.variant == WRAPPED and h.wraps:
            out[h.binary] = (_wrapper(h.wraps), 0o755)
        elif h.variant == HOOKED and h.base_runtime_spec:
            hook = str(hook_path(paths))
            out[hook] = (_hook(), 0o755)
            out[h.base_runtime_spec] = (json.dumps(base_spec(hook), indent=2) + "\n", 0o644)
    return out


def write_handler_files(paths: LabPaths, handlers: Sequence[Handler]) -> None:
    for name, (text, mode) in render_handler_files(paths, handlers).items():
        path = Path(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        path.chmod(mode)
