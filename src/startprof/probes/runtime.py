"""The runtime probe (``bpf/runtime.bpf.c``): what an OCI runtime does inside create and
start. Mount-type syscalls (the rootfs), the cgroup it makes and moves the container into,
and the names runc's bootstrap gives its stages. ``analysis/runtime_steps.py`` cuts
``runtime.create`` and ``runtime.start`` into steps from them."""

from __future__ import annotations

import json
from typing import Final

from startprof.events import Event
from startprof.probes.abi import (
    SP_RT_CGROUP_ATTACH,
    SP_RT_CGROUP_MKDIR,
    SP_RT_FSMOUNT,
    SP_RT_MOUNT,
    SP_RT_MOUNT_SETATTR,
    SP_RT_MOVE_MOUNT,
    SP_RT_OPEN_TREE,
    SP_RT_PIVOT_ROOT,
    SP_RT_UMOUNT,
    Decoder,
    RecordType,
    Rename,
    RtOp,
    base_event,
    cstr,
)

NAME: Final = "runtime"

OP_KINDS: Final[dict[int, str]] = {
    SP_RT_MOUNT: "mount",
    SP_RT_UMOUNT: "umount",
    SP_RT_PIVOT_ROOT: "pivot_root",
    SP_RT_MOUNT_SETATTR: "mount_setattr",
    SP_RT_OPEN_TREE: "open_tree",
    SP_RT_MOVE_MOUNT: "move_mount",
    SP_RT_FSMOUNT: "fsmount",
    SP_RT_CGROUP_MKDIR: "cgroup_mkdir",
    SP_RT_CGROUP_ATTACH: "cgroup_attach",
}
"""``sp_rt_op.op`` -> event kind."""

_CGROUP_OPS: Final = (SP_RT_CGROUP_MKDIR, SP_RT_CGROUP_ATTACH)


def decode_op(raw: bytes) -> list[Event]:
    r = RtOp.from_buffer_copy(raw)
    kind = OP_KINDS.get(r.op)
    if kind is None:
        raise ValueError(f"unknown runtime op {r.op}")
    ev = base_event(kind, r.h)
    ev["ret"] = r.ret
    if r.path:
        ev["filename"] = cstr(r.path)
    if r.op in _CGROUP_OPS:
        return [ev]
    ev["ts_ns"] = r.enter_ns
    ev["start_ns"] = r.enter_ns
    ev["end_ns"] = r.h.ts_ns
    ev["flags"] = r.flags
    if r.fstype:
        ev["attrs"] = json.dumps({"fstype": cstr(r.fstype)})
    return [ev]


def decode_rename(raw: bytes) -> list[Event]:
    r = Rename.from_buffer_copy(raw)
    ev = base_event("rename", r.h)
    ev["old_comm"] = cstr(r.old_comm)
    return [ev]


DECODERS: Final[dict[RecordType, Decoder]] = {
    RecordType.RT_OP: decode_op,
    RecordType.RENAME: decode_rename,
}
