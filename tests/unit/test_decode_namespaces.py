"""Namespaces-probe decoders and clone flag names."""

from __future__ import annotations

import ctypes as ct

from startprof.probes import abi, namespaces


def ns_record(rtype: abi.RecordType, flags: int, ret: int, fd: int = -1, nstype: int = 0) -> bytes:
    h = abi.Header(rtype, ct.sizeof(abi.Ns), 2000, 10, 11, 1, b"runc:[1:CHILD]")
    return bytes(abi.Ns(h, flags, ret, 1500, fd, nstype))


def test_unshare_newnet() -> None:
    (ev,) = namespaces.DECODERS[abi.RecordType.UNSHARE](
        ns_record(abi.RecordType.UNSHARE, 0x40000000, 0)
    )
    assert ev["kind"] == "unshare" and ev["flags"] == 0x40000000 and ev["ret"] == 0
    assert (ev["ts_ns"], ev["start_ns"], ev["end_ns"]) == (1500, 1500, 2000)
    assert namespaces.flag_names(ev["flags"]) == ["CLONE_NEWNET"]


def test_setns_has_fd_and_nstype_not_flags() -> None:
    raw = ns_record(abi.RecordType.SETNS, 0, 0, fd=7, nstype=0x40000000)
    (ev,) = namespaces.DECODERS[abi.RecordType.SETNS](raw)
    assert (ev["kind"], ev["fd"], ev["nstype"]) == ("setns", 7, 0x40000000)
    assert "flags" not in ev


def test_clone_result_is_the_child_pid() -> None:
    raw = ns_record(abi.RecordType.CLONE, 0x20000000 | 0x08000000 | 0x00020000, 4321)
    (ev,) = namespaces.DECODERS[abi.RecordType.CLONE](raw)
    assert ev["ret"] == 4321
    assert namespaces.namespace_names(ev["flags"]) == [
        "CLONE_NEWNS",
        "CLONE_NEWIPC",
        "CLONE_NEWPID",
    ]


def test_flag_names() -> None:
    assert namespaces.flag_names(0x00010000 | 0x00000100) == ["CLONE_VM", "CLONE_THREAD"]
    # clone()'s low byte is the exit signal (SIGCHLD = 17), not CLONE_NEWTIME
    assert namespaces.flag_names(0x11, legacy_clone=True) == []
    assert namespaces.flag_names(0x80) == ["CLONE_NEWTIME"]
    assert namespaces.flag_names(0x400000000) == ["0x400000000"]
    assert namespaces.namespace_names(0x40000000 | 0x100) == ["CLONE_NEWNET"]
    assert namespaces.namespace_names(0x80 | 0x11, legacy_clone=True) == []
