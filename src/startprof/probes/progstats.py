"""The kernel's own statistics of each loaded BPF program (``BPF_OBJ_GET_INFO_BY_FD``).

``recursion_misses`` counts the runs the kernel skipped because the program (fentry/fexit) or
another one (tracepoints: ``bpf_prog_active``) was already running on that CPU. A skipped run
is a lost event, so the probe session reports their sum with its other kernel errors. The run
time and count are only kept while ``BPF_ENABLE_STATS`` is on (``benchmarks/probe_cost.py``).
"""

from __future__ import annotations

import ctypes as ct
import os
import platform
from dataclasses import dataclass

SYS_BPF = {"x86_64": 321, "aarch64": 280}.get(platform.machine(), 321)
BPF_OBJ_GET_INFO_BY_FD = 15
BPF_ENABLE_STATS = 32
BPF_STATS_RUN_TIME = 0
PROG_INFO_SIZE = 232
"""struct bpf_prog_info up to and including recursion_misses (Linux 5.12) and more."""
RUN_TIME_OFF, RUN_CNT_OFF, RECURSION_MISSES_OFF = 192, 200, 208

_libc = ct.CDLL(None, use_errno=True)
_libc.syscall.restype = ct.c_long


@dataclass(frozen=True)
class ProgStats:
    run_time_ns: int
    run_cnt: int
    recursion_misses: int


def bpf(cmd: int, attr: ct.Array[ct.c_char]) -> int:
    """The bpf(2) syscall; raises OSError."""
    ret = int(_libc.syscall(SYS_BPF, cmd, attr, ct.sizeof(attr)))
    if ret < 0:
        raise OSError(ct.get_errno(), os.strerror(ct.get_errno()))
    return ret


def prog_stats(fd: int) -> ProgStats:
    """The statistics of the program behind ``fd`` (zeros a kernel does not keep)."""
    info = ct.create_string_buffer(PROG_INFO_SIZE)
    attr = ct.create_string_buffer(16)  # bpf_fd, info_len, info (u64)
    ct.c_uint32.from_buffer(attr, 0).value = fd
    ct.c_uint32.from_buffer(attr, 4).value = PROG_INFO_SIZE
    ct.c_uint64.from_buffer(attr, 8).value = ct.addressof(info)
    bpf(BPF_OBJ_GET_INFO_BY_FD, attr)
    return ProgStats(
        ct.c_uint64.from_buffer(info, RUN_TIME_OFF).value,
        ct.c_uint64.from_buffer(info, RUN_CNT_OFF).value,
        ct.c_uint64.from_buffer(info, RECURSION_MISSES_OFF).value,
    )


def enable_stats() -> int:
    """An fd that keeps the kernel's BPF run-time statistics on until it is closed."""
    attr = ct.create_string_buffer(8)
    ct.c_uint32.from_buffer(attr).value = BPF_STATS_RUN_TIME
    return bpf(BPF_ENABLE_STATS, attr)
