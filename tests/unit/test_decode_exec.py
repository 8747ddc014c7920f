"""Exec-probe decoders on records built with the ctypes mirror (as the kernel lays them out)."""

from __future__ import annotations

import ctypes as ct
import json

from startprof.events import COLUMN_NAMES, KINDS
from startprof.probes import abi
from startprof.probes import exec as exec_probe


def header(rtype: abi.RecordType, size: int, comm: bytes = b"containerd") -> abi.Header:
    return abi.Header(rtype, size, 123456789, 4242, 4243, 77, comm)


def exec_record(
    strings: list[bytes], argc: int, envc: int, trunc: int = 0, dirfd: int = abi.SP_AT_FDCWD
) -> bytes:
    blob = b"".join(s + b"\0" for s in strings)
    r = abi.Exec()
    fixed = ct.sizeof(abi.ExecFixed)
    r.h = header(abi.RecordType.EXEC, fixed + len(blob))
    r.dirfd, r.at_flags = dirfd, 0x1000 if dirfd != abi.SP_AT_FDCWD else 0
    r.filename_len, r.argc, r.envc, r.trunc = len(strings[0]) + 1, argc, envc, trunc
    ct.memmove(ct.addressof(r) + fixed, blob, len(blob))
    return bytes(r)[: fixed + len(blob)]


def test_exec_filename_argv_and_cni_env() -> None:
    raw = exec_record(
        [b"/usr/lib/cni/bridge", b"bridge", b"-x", b"CNI_COMMAND=ADD", b"CNI_CONTAINERID=abc"],
        argc=2,
        envc=2,
    )
    (ev,) = exec_probe.decode_exec(raw)
    assert ev["kind"] == "exec"
    assert ev["filename"] == "/usr/lib/cni/bridge"
    assert ev["argv"] == ["bridge", "-x"]
    assert ev["env"] == ["CNI_COMMAND=ADD", "CNI_CONTAINERID=abc"]
    assert ev["argv_truncated"] is False
    assert (ev["pid"], ev["tid"], ev["cgroup_id"], ev["comm"]) == (4242, 4243, 77, "containerd")
    assert "fd" not in ev and "attrs" not in ev
    assert set(ev) <= set(COLUMN_NAMES) and ev["kind"] in KINDS


def test_only_cni_variables_survive_decoding() -> None:
    # the kernel never sends others; the decoder drops them anyway
    raw = exec_record([b"/bin/x", b"x", b"CNI_NETNS=/n", b"SECRET_TOKEN=hunter2"], 1, 2)
    (ev,) = exec_probe.decode_exec(raw)
    assert ev["env"] == ["CNI_NETNS=/n"]
    assert "hunter2" not in repr(ev)


def test_truncation_flags() -> None:
    raw = exec_record(
        [b"/bin/x", b"a"],
        1,
        0,
        trunc=abi.SP_TRUNC_ARGV | abi.SP_TRUNC_ENV | abi.SP_TRUNC_FILENAME,
    )
    (ev,) = exec_probe.decode_exec(raw)
    assert ev["argv_truncated"] is True
    assert json.loads(ev["attrs"]) == {"filename_truncated": True, "env_truncated": True}


def test_execveat_memfd_reexec_keeps_fd_and_flags() -> None:
    (ev,) = exec_probe.decode_exec(exec_record([b"", b"runc", b"init"], 2, 0, dirfd=5))
    assert ev["filename"] == "" and ev["fd"] == 5 and ev["flags"] == 0x1000
    assert ev["argv"] == ["runc", "init"]


def test_split_strings_takes_a_cut_string_whole() -> None:
    assert exec_probe.split_strings(b"a\0bc\0de", 3) == (["a", "bc", "de"], b"")
    assert exec_probe.split_strings(b"a\0b\0rest", 2) == (["a", "b"], b"rest")
    assert exec_probe.split_strings(b"", 2) == ([""], b"")


def test_exec_done_with_old_comm_and_times() -> None:
    r = abi.ExecDone()
    fixed = ct.sizeof(abi.ExecDoneFixed)
    name = b"/dev/fd/5\0"
    r.h = header(abi.RecordType.EXEC_DONE, fixed + len(name), b"exe")
    r.old_tid, r.filename_len, r.enter_ns, r.old_comm = 4243, len(name), 123000000, b"runc"
    ct.memmove(ct.addressof(r) + fixed, name, len(name))
    (ev,) = exec_probe.decode_exec_done(bytes(r)[: fixed + len(name)])
    assert (ev["kind"], ev["filename"], ev["comm"], ev["old_comm"]) == (
        "exec_done",
        "/dev/fd/5",
        "exe",
        "runc",
    )
    assert (ev["start_ns"], ev["end_ns"]) == (123000000, 123456789)


def test_fork_exit_group_exit_and_exec_failure() -> None:
    f = abi.Fork(
        header(abi.RecordType.FORK, ct.sizeof(abi.Fork)), 999, abi.SP_FLAGS_CLONE, 0x1200011
    )
    (ev,) = exec_probe.decode_fork(bytes(f))
    assert (ev["kind"], ev["pid"], ev["child_pid"], ev["flags"]) == ("fork", 4242, 999, 0x1200000)
    f.flags_known = abi.SP_FLAGS_NONE
    assert "flags" not in exec_probe.decode_fork(bytes(f))[0]

    r = abi.Ret(header(abi.RecordType.EXIT_GROUP, ct.sizeof(abi.Ret)), 3)
    assert exec_probe.decode_exit_group(bytes(r))[0]["ret"] == 3
    r.h.type, r.ret = abi.RecordType.EXEC_RET, -2
    assert exec_probe.decode_exec_ret(bytes(r))[0] == {
        "kind": "exec_ret",
        "ts_ns": 123456789,
        "pid": 4242,
        "tid": 4243,
        "cgroup_id": 77,
        "comm": "containerd",
        "ret": -2,
    }
    h = header(abi.RecordType.EXIT, ct.sizeof(abi.Header))
    assert exec_probe.decode_exit(bytes(h))[0]["kind"] == "exit"
