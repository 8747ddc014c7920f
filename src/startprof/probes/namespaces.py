"""The namespaces probe (``bpf/namespaces.bpf.c``): clone/clone3 that create namespaces,
unshare and setns, each with its flags, result and entry/exit times."""

from __future__ import annotations

from typing import Final

from startprof.events import Event
from startprof.probes.abi import Decoder, Ns, RecordType, base_event

NAME: Final = "namespaces"

CLONE_FLAGS: Final[dict[int, str]] = {
    0x00000080: "CLONE_NEWTIME",
    0x00000100: "CLONE_VM",
    0x00000200: "CLONE_FS",
    0x00000400: "CLONE_FILES",
    0x00000800: "CLONE_SIGHAND",
    0x00001000: "CLONE_PIDFD",
    0x00002000: "CLONE_PTRACE",
    0x00004000: "CLONE_VFORK",
    0x00008000: "CLONE_PARENT",
    0x00010000: "CLONE_THREAD",
    0x00020000: "CLONE_NEWNS",
    0x00040000: "CLONE_SYSVSEM",
    0x00080000: "CLONE_SETTLS",
    0x00100000: "CLONE_PARENT_SETTID",
    0x00200000: "CLONE_CHILD_CLEARTID",
    0x00400000: "CLONE_DETACHED",
    0x00800000: "CLONE_UNTRACED",
    0x01000000: "CLONE_CHILD_SETTID",
    0x02000000: "CLONE_NEWCGROUP",
    0x04000000: "CLONE_NEWUTS",
    0x08000000: "CLONE_NEWIPC",
    0x10000000: "CLONE_NEWUSER",
    0x20000000: "CLONE_NEWPID",
    0x40000000: "CLONE_NEWNET",
    0x80000000: "CLONE_IO",
    0x100000000: "CLONE_CLEAR_SIGHAND",
    0x200000000: "CLONE_INTO_CGROUP",
}

CSIGNAL: Final = 0xFF
"""clone()'s low byte: the exit signal, not flags (clone3 and unshare have no such byte)."""

NAMESPACE_FLAGS: Final = 0x7E020080
"""Every CLONE_NEW* bit."""


def flag_names(flags: int, *, legacy_clone: bool = False) -> list[str]:
    """Names of the CLONE_* bits in ``flags``; unknown bits as hex.

    ``legacy_clone``: the flags come from clone(), whose low byte is the exit signal.
    """
    if legacy_clone:
        flags &= ~CSIGNAL
    names = []
    rest = flags
    for bit, name in CLONE_FLAGS.items():
        if flags & bit:
            names.append(name)
            rest &= ~bit
    if rest:
        names.append(hex(rest))
    return names


def namespace_names(flags: int, *, legacy_clone: bool = False) -> list[str]:
    """Only the CLONE_NEW* names of ``flags`` (what a namespace event is about)."""
    mask = NAMESPACE_FLAGS & ~CSIGNAL if legacy_clone else NAMESPACE_FLAGS
    return flag_names(flags & mask)


def _decode(kind: str) -> Decoder:
    def decode(raw: bytes) -> list[Event]:
        r = Ns.from_buffer_copy(raw)
        ev = base_event(kind, r.h)
        ev["ts_ns"] = r.enter_ns
        ev["start_ns"] = r.enter_ns
        ev["end_ns"] = r.h.ts_ns
        ev["ret"] = r.ret
        if kind == "setns":
            ev["fd"] = r.fd
            ev["nstype"] = r.nstype
        else:
            ev["flags"] = r.flags
        return [ev]

    return decode


DECODERS: Final[dict[RecordType, Decoder]] = {
    RecordType.CLONE: _decode("clone"),
    RecordType.UNSHARE: _decode("unshare"),
    RecordType.SETNS: _decode("setns"),
}
