"""The exec probe (``bpf/exec.bpf.c``): execs with argv and the CNI_* environment, exec results,
forks of processes, exit_group codes and process exits.

Fork and exit records come from the core's process-tree hooks in ``bpf/startprof.bpf.c``; they
are this probe's events because they build the process tree.
"""

from __future__ import annotations

import ctypes as ct
import json
from typing import Final

from startprof.events import Event
from startprof.probes.abi import (
    SP_AT_FDCWD,
    SP_FLAGS_CLONE,
    SP_FLAGS_CLONE3,
    SP_TRUNC_ARGV,
    SP_TRUNC_ENV,
    SP_TRUNC_FILENAME,
    Decoder,
    ExecDoneFixed,
    ExecFixed,
    Fork,
    Header,
    RecordType,
    Ret,
    base_event,
)
from startprof.probes.namespaces import CSIGNAL

NAME: Final = "exec"

ENV_PREFIX: Final = "CNI_"
"""The only environment variables that may leave the kernel (others hold secrets)."""

_STRINGS_OFF: Final = ct.sizeof(ExecFixed)
_FILENAME_OFF: Final = ct.sizeof(ExecDoneFixed)


def split_strings(buf: bytes, count: int) -> tuple[list[str], bytes]:
    """The first ``count`` NUL-terminated strings of ``buf`` and the bytes after them.

    A string without its NUL (cut by the kernel's buffer) is taken whole.
    """
    out: list[str] = []
    pos = 0
    for _ in range(count):
        end = buf.find(b"\0", pos)
        if end < 0:
            end = len(buf)
        out.append(buf[pos:end].decode("utf-8", "replace"))
        pos = end + 1
        if pos > len(buf):
            break
    return out, buf[pos:]


def cni_only(env: list[str]) -> list[str]:
    """Keep ``CNI_*`` variables only: a second line of defence behind the kernel's filter."""
    return [v for v in env if v.startswith(ENV_PREFIX)]


def decode_exec(raw: bytes) -> list[Event]:
    r = ExecFixed.from_buffer_copy(raw)
    strings = raw[_STRINGS_OFF : r.h.size]
    filename, rest = split_strings(strings, 1)
    argv, rest = split_strings(rest, r.argc)
    env, _ = split_strings(rest, r.envc)
    ev = base_event("exec", r.h)
    ev["filename"] = filename[0] if filename else ""
    ev["argv"] = argv
    ev["argv_truncated"] = bool(r.trunc & SP_TRUNC_ARGV)
    ev["env"] = cni_only(env)
    if r.dirfd != SP_AT_FDCWD:
        ev["fd"] = r.dirfd
        ev["flags"] = r.at_flags
    extra = {}
    if r.trunc & SP_TRUNC_FILENAME:
        extra["filename_truncated"] = True
    if r.trunc & SP_TRUNC_ENV:
        extra["env_truncated"] = True
    if extra:
        ev["attrs"] = json.dumps(extra)
    return [ev]


def decode_exec_ret(raw: bytes) -> list[Event]:
    r = Ret.from_buffer_copy(raw)
    ev = base_event("exec_ret", r.h)
    ev["ret"] = r.ret
    return [ev]


def decode_exec_done(raw: bytes) -> list[Event]:
    r = ExecDoneFixed.from_buffer_copy(raw)
    name = raw[_FILENAME_OFF : _FILENAME_OFF + r.filename_len]
    ev = base_event("exec_done", r.h)
    ev["filename"] = name.split(b"\0", 1)[0].decode("utf-8", "replace")
    ev["old_comm"] = r.old_comm.decode("utf-8", "replace")
    if r.enter_ns:
        ev["start_ns"] = r.enter_ns
        ev["end_ns"] = r.h.ts_ns
    return [ev]


def decode_fork(raw: bytes) -> list[Event]:
    r = Fork.from_buffer_copy(raw)
    ev = base_event("fork", r.h)
    ev["child_pid"] = r.child_pid
    if r.flags_known == SP_FLAGS_CLONE:
        ev["flags"] = r.clone_flags & ~CSIGNAL  # clone()'s low byte is the exit signal
    elif r.flags_known == SP_FLAGS_CLONE3:
        ev["flags"] = r.clone_flags
    return [ev]


def decode_exit_group(raw: bytes) -> list[Event]:
    r = Ret.from_buffer_copy(raw)
    ev = base_event("exit_group", r.h)
    ev["ret"] = r.ret
    return [ev]


def decode_exit(raw: bytes) -> list[Event]:
    return [base_event("exit", Header.from_buffer_copy(raw))]


DECODERS: Final[dict[RecordType, Decoder]] = {
    RecordType.EXEC: decode_exec,
    RecordType.EXEC_RET: decode_exec_ret,
    RecordType.EXEC_DONE: decode_exec_done,
    RecordType.FORK: decode_fork,
    RecordType.EXIT_GROUP: decode_exit_group,
    RecordType.EXIT: decode_exit,
}
