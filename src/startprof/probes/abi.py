"""The ctypes mirror of ``bpf/startprof.h``: record layouts the kernel writes to the ring buffer.

Keep in sync with ``bpf/startprof.h``; ``tests/unit/test_abi.py`` compiles that header with
``cc`` and compares every ``sizeof``/``offsetof`` below with the C compiler's.

Records are variable-size: the kernel sends a record's fixed part and only the used bytes of
its tail array. ``*Fixed`` classes are the fixed parts (decoders read them with
``from_buffer_copy``); the full classes add the tail array at its capacity, as in C.
"""

from __future__ import annotations

import ctypes as ct
from collections.abc import Callable
from enum import IntEnum
from typing import Final

from startprof.events import Event

STARTPROF_ABI_VERSION: Final = 1

SP_COMM_LEN: Final = 16
SP_EXEC_STRINGS: Final = 8192
SP_STR_CAP: Final = 1024
SP_NL_DATA: Final = 4096
SP_CRI_CHUNK: Final = 4096
SP_RT_PATH: Final = 64
SP_RT_FSTYPE: Final = 16
SP_IMG_KEY: Final = 72
SP_IMG_HEAD: Final = 32
SP_IMG_PREFIX: Final = 160
SP_IMG_PREFIXES: Final = 8

SP_TRUNC_FILENAME: Final = 0x1
SP_TRUNC_ARGV: Final = 0x2
SP_TRUNC_ENV: Final = 0x4
SP_AT_FDCWD: Final = -100

SP_FLAGS_NONE: Final = 0
SP_FLAGS_CLONE: Final = 1
SP_FLAGS_CLONE3: Final = 2

SP_CRI_OUT: Final = 0x1
SP_CRI_PREEXISTING: Final = 0x2
SP_CRI_GAP: Final = 0x4
SP_CRI_TRUNCATED: Final = 0x8
SP_CONN_ID_SEEDED: Final = 0x8000000000000000

SP_RT_MOUNT: Final = 1
SP_RT_UMOUNT: Final = 2
SP_RT_PIVOT_ROOT: Final = 3
SP_RT_MOUNT_SETATTR: Final = 4
SP_RT_OPEN_TREE: Final = 5
SP_RT_MOVE_MOUNT: Final = 6
SP_RT_FSMOUNT: Final = 7
SP_RT_CGROUP_MKDIR: Final = 8
SP_RT_CGROUP_ATTACH: Final = 9

SP_IMG_K_INGEST: Final = 1
SP_IMG_K_BLOB: Final = 2
SP_IMG_K_SNAP: Final = 3
SP_IMG_K_NET: Final = 4
SP_IMG_INGEST: Final = 1
SP_IMG_COMMIT: Final = 2
SP_IMG_BLOB: Final = 3
SP_IMG_UNPACK: Final = 4


class RecordType(IntEnum):
    """``enum sp_type``."""

    EXEC = 1
    EXEC_RET = 2
    EXEC_DONE = 3
    FORK = 4
    EXIT_GROUP = 5
    EXIT = 6
    CLONE = 7
    UNSHARE = 8
    SETNS = 9
    NL_SOCKET = 10
    NL_SEND = 11
    NL_RECV = 12
    CRI_ACCEPT = 13
    CRI_DATA = 14
    RT_OP = 15
    RENAME = 16
    IMG = 17


class Header(ct.Structure):
    _fields_ = (
        ("type", ct.c_uint32),
        ("size", ct.c_uint32),
        ("ts_ns", ct.c_uint64),
        ("pid", ct.c_uint32),
        ("tid", ct.c_uint32),
        ("cgroup_id", ct.c_uint64),
        ("comm", ct.c_char * SP_COMM_LEN),
    )


class ExecFixed(ct.Structure):
    _fields_ = (
        ("h", Header),
        ("dirfd", ct.c_int32),
        ("at_flags", ct.c_uint32),
        ("filename_len", ct.c_uint16),
        ("argc", ct.c_uint16),
        ("envc", ct.c_uint16),
        ("trunc", ct.c_uint16),
    )


class Exec(ct.Structure):
    _fields_ = (*ExecFixed._fields_, ("strings", ct.c_char * (SP_EXEC_STRINGS + SP_STR_CAP)))


class Ret(ct.Structure):
    _fields_ = (("h", Header), ("ret", ct.c_int64))


class ExecDoneFixed(ct.Structure):
    _fields_ = (
        ("h", Header),
        ("old_tid", ct.c_uint32),
        ("filename_len", ct.c_uint32),
        ("enter_ns", ct.c_uint64),
        ("old_comm", ct.c_char * SP_COMM_LEN),
    )


class ExecDone(ct.Structure):
    _fields_ = (*ExecDoneFixed._fields_, ("filename", ct.c_char * SP_STR_CAP))


class Fork(ct.Structure):
    _fields_ = (
        ("h", Header),
        ("child_pid", ct.c_uint32),
        ("flags_known", ct.c_uint32),
        ("clone_flags", ct.c_uint64),
    )


class Ns(ct.Structure):
    _fields_ = (
        ("h", Header),
        ("flags", ct.c_uint64),
        ("ret", ct.c_int64),
        ("enter_ns", ct.c_uint64),
        ("fd", ct.c_int32),
        ("nstype", ct.c_int32),
    )


class NlSocket(ct.Structure):
    _fields_ = (
        ("h", Header),
        ("fd", ct.c_int32),
        ("protocol", ct.c_int32),
        ("sock_type", ct.c_int32),
        ("reserved", ct.c_uint32),
    )


class NlMsgFixed(ct.Structure):
    _fields_ = (
        ("h", Header),
        ("fd", ct.c_int32),
        ("protocol", ct.c_int32),
        ("ret", ct.c_int64),
        ("enter_ns", ct.c_uint64),
        ("len", ct.c_uint32),
        ("copied", ct.c_uint32),
        ("msg_flags", ct.c_uint32),
        ("iovlen", ct.c_uint32),
    )


class NlMsg(ct.Structure):
    _fields_ = (*NlMsgFixed._fields_, ("data", ct.c_uint8 * SP_NL_DATA))


class Conn(ct.Structure):
    """``struct sp_conn``: value of the ``cri_conns`` map."""

    _fields_ = (
        ("conn_id", ct.c_uint64),
        ("flags", ct.c_uint32),
        ("gap_pending", ct.c_uint32),
    )


class CriAccept(ct.Structure):
    _fields_ = (
        ("h", Header),
        ("listen_fd", ct.c_int32),
        ("fd", ct.c_int32),
        ("conn_id", ct.c_uint64),
    )


class CriDataFixed(ct.Structure):
    _fields_ = (
        ("h", Header),
        ("conn_id", ct.c_uint64),
        ("fd", ct.c_int32),
        ("flags", ct.c_uint32),
        ("ret", ct.c_int64),
        ("offset", ct.c_uint32),
        ("len", ct.c_uint32),
    )


class CriData(ct.Structure):
    _fields_ = (*CriDataFixed._fields_, ("data", ct.c_uint8 * SP_CRI_CHUNK))


class RtOp(ct.Structure):
    _fields_ = (
        ("h", Header),
        ("enter_ns", ct.c_uint64),
        ("ret", ct.c_int64),
        ("flags", ct.c_uint64),
        ("op", ct.c_uint32),
        ("reserved", ct.c_uint32),
        ("fstype", ct.c_char * SP_RT_FSTYPE),
        ("path", ct.c_char * SP_RT_PATH),
    )


class Rename(ct.Structure):
    _fields_ = (("h", Header), ("old_comm", ct.c_char * SP_COMM_LEN))


class ImgPrefix(ct.Structure):
    _fields_ = (("len", ct.c_uint32), ("kind", ct.c_uint32), ("s", ct.c_char * SP_IMG_PREFIX))


class Img(ct.Structure):
    _fields_ = (
        ("h", Header),
        ("start_ns", ct.c_uint64),
        ("first_ns", ct.c_uint64),
        ("last_ns", ct.c_uint64),
        ("bytes", ct.c_uint64),
        ("req_ns", ct.c_uint64),
        ("net_first_ns", ct.c_uint64),
        ("net_last_ns", ct.c_uint64),
        ("net_bytes", ct.c_uint64),
        ("files", ct.c_uint32),
        ("writes", ct.c_uint32),
        ("op", ct.c_uint32),
        ("fd", ct.c_int32),
        ("head", ct.c_uint8 * SP_IMG_HEAD),
        ("key", ct.c_char * SP_IMG_KEY),
        ("key2", ct.c_char * SP_IMG_KEY),
    )


STRUCTS: Final[dict[str, type[ct.Structure]]] = {
    "sp_header": Header,
    "sp_exec": Exec,
    "sp_ret": Ret,
    "sp_exec_done": ExecDone,
    "sp_fork": Fork,
    "sp_ns": Ns,
    "sp_nl_socket": NlSocket,
    "sp_nl_msg": NlMsg,
    "sp_conn": Conn,
    "sp_cri_accept": CriAccept,
    "sp_cri_data": CriData,
    "sp_rt_op": RtOp,
    "sp_rename": Rename,
    "sp_img_prefix": ImgPrefix,
    "sp_img": Img,
}
"""C struct name -> mirror; the ABI test checks each of them field by field."""

FIXED_PARTS: Final[dict[str, tuple[type[ct.Structure], str]]] = {
    "sp_exec": (ExecFixed, "strings"),
    "sp_exec_done": (ExecDoneFixed, "filename"),
    "sp_nl_msg": (NlMsgFixed, "data"),
    "sp_cri_data": (CriDataFixed, "data"),
}
"""Variable-size records: (fixed part, tail array); sizeof(fixed) == offsetof(tail) in C."""

CONSTANTS: Final[dict[str, int]] = {
    "STARTPROF_ABI_VERSION": STARTPROF_ABI_VERSION,
    "SP_COMM_LEN": SP_COMM_LEN,
    "SP_EXEC_STRINGS": SP_EXEC_STRINGS,
    "SP_STR_CAP": SP_STR_CAP,
    "SP_NL_DATA": SP_NL_DATA,
    "SP_CRI_CHUNK": SP_CRI_CHUNK,
    "SP_TRUNC_FILENAME": SP_TRUNC_FILENAME,
    "SP_TRUNC_ARGV": SP_TRUNC_ARGV,
    "SP_TRUNC_ENV": SP_TRUNC_ENV,
    "SP_AT_FDCWD": SP_AT_FDCWD,
    "SP_FLAGS_NONE": SP_FLAGS_NONE,
    "SP_FLAGS_CLONE": SP_FLAGS_CLONE,
    "SP_FLAGS_CLONE3": SP_FLAGS_CLONE3,
    "SP_CRI_OUT": SP_CRI_OUT,
    "SP_CRI_PREEXISTING": SP_CRI_PREEXISTING,
    "SP_CRI_GAP": SP_CRI_GAP,
    "SP_CRI_TRUNCATED": SP_CRI_TRUNCATED,
    "SP_CONN_ID_SEEDED": SP_CONN_ID_SEEDED,
    "SP_RT_PATH": SP_RT_PATH,
    "SP_RT_FSTYPE": SP_RT_FSTYPE,
    "SP_RT_MOUNT": SP_RT_MOUNT,
    "SP_RT_UMOUNT": SP_RT_UMOUNT,
    "SP_RT_PIVOT_ROOT": SP_RT_PIVOT_ROOT,
    "SP_RT_MOUNT_SETATTR": SP_RT_MOUNT_SETATTR,
    "SP_RT_OPEN_TREE": SP_RT_OPEN_TREE,
    "SP_RT_MOVE_MOUNT": SP_RT_MOVE_MOUNT,
    "SP_RT_FSMOUNT": SP_RT_FSMOUNT,
    "SP_RT_CGROUP_MKDIR": SP_RT_CGROUP_MKDIR,
    "SP_RT_CGROUP_ATTACH": SP_RT_CGROUP_ATTACH,
    "SP_IMG_KEY": SP_IMG_KEY,
    "SP_IMG_HEAD": SP_IMG_HEAD,
    "SP_IMG_PREFIX": SP_IMG_PREFIX,
    "SP_IMG_PREFIXES": SP_IMG_PREFIXES,
    "SP_IMG_K_INGEST": SP_IMG_K_INGEST,
    "SP_IMG_K_BLOB": SP_IMG_K_BLOB,
    "SP_IMG_K_SNAP": SP_IMG_K_SNAP,
    "SP_IMG_K_NET": SP_IMG_K_NET,
    "SP_IMG_INGEST": SP_IMG_INGEST,
    "SP_IMG_COMMIT": SP_IMG_COMMIT,
    "SP_IMG_BLOB": SP_IMG_BLOB,
    "SP_IMG_UNPACK": SP_IMG_UNPACK,
    **{f"SP_{t.name}": t.value for t in RecordType},
}
"""Macros and enum values of startprof.h; the ABI test checks these too."""


def cstr(raw: bytes) -> str:
    """A NUL-terminated C char array as text (invalid UTF-8 replaced)."""
    return raw.split(b"\0", 1)[0].decode("utf-8", "replace")


def base_event(kind: str, h: Header) -> Event:
    """The common columns of an event from a record header."""
    return {
        "kind": kind,
        "ts_ns": h.ts_ns,
        "pid": h.pid,
        "tid": h.tid,
        "cgroup_id": h.cgroup_id,
        "comm": h.comm.decode("utf-8", "replace"),
    }


Decoder = Callable[[bytes], list[Event]]
"""Turns one raw record (header included, exactly ``h.size`` bytes) into events."""
