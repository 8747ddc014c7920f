"""The cri probe (``bpf/cri.bpf.c``): connections accepted on the CRI socket and the bytes read
from and written to them. ``startprof.cri.stream`` turns those bytes into CRI calls.

User space tells the kernel which socket is the CRI one: the inode of the path's listening unix
socket in ``/proc/net/unix``, then the (pid, fd) that hold ``socket:[inode]`` in
``/proc/PID/fd``. Connections accepted before recording started are found the same way (an
accepted server-side unix socket carries the listener's path) and seeded as preexisting: their
HPACK state is unknown, so their events carry ``SP_CRI_PREEXISTING`` in ``flags``.
"""

from __future__ import annotations

import ctypes as ct
import json
import os
import platform
from collections.abc import Callable, Iterable
from typing import Final

from startprof.config import same_socket
from startprof.events import Event
from startprof.probes.abi import (
    SP_CRI_GAP,
    SP_CRI_OUT,
    SP_CRI_PREEXISTING,
    SP_CRI_TRUNCATED,
    CriAccept,
    CriDataFixed,
    Decoder,
    RecordType,
    base_event,
)

NAME: Final = "cri"

SO_ACCEPTCON: Final = 0x10000  # /proc/net/unix Flags of a listening socket
SS_UNCONNECTED: Final = 1
SS_CONNECTED: Final = 3

PROC_NET_UNIX: Final = "/proc/net/unix"
SOCK_TRACEPOINTS: Final = ("sock/sock_recv_length", "sock/sock_send_length", "sock/sk_data_ready")
TRACEFS_EVENTS: Final = ("/sys/kernel/tracing/events", "/sys/kernel/debug/tracing/events")


def sock_tracepoints_usable(
    machine: str | None = None,
    roots: Iterable[str] = TRACEFS_EVENTS,
    exists: Callable[[str], bool] = os.path.isdir,
) -> bool:
    """Can the probe read CRI bytes at the socket tracepoints (one hit per socket message)
    instead of every read/write syscall on the machine (an enter/exit pair each)?

    Needs the tracepoints (Linux 6.3) and x86_64, whose saved user registers the program reads
    the syscall's fd and buffer from. ``exists`` is asked about each tracepoint's directory."""
    if (machine or platform.machine()) != "x86_64":
        return False
    return any(all(exists(f"{root}/{tp}") for tp in SOCK_TRACEPOINTS) for root in roots)


def unix_socket_inodes(
    socket_path: str, *, listening: bool, proc_net_unix: str = PROC_NET_UNIX
) -> set[int]:
    """Inodes of the unix sockets bound to ``socket_path``: the listening socket, or the
    connections the server accepted on it (they carry the path; clients do not)."""
    inodes: set[int] = set()
    try:
        with open(proc_net_unix) as f:
            next(f, None)
            for line in f:
                parts = line.split()
                if len(parts) < 8 or not same_socket(parts[7], socket_path):
                    continue
                flags, state, inode = int(parts[3], 16), int(parts[5], 16), int(parts[6])
                is_listener = bool(flags & SO_ACCEPTCON)
                accepted = not is_listener and state == SS_CONNECTED
                if is_listener if listening else accepted:
                    inodes.add(inode)
    except OSError:
        return set()
    return inodes


def socket_holders(inodes: Iterable[int], proc: str = "/proc") -> list[tuple[int, int]]:
    """Every (pid, fd) whose fd is one of these socket inodes, sorted."""
    targets = {f"socket:[{i}]" for i in inodes}
    if not targets:
        return []
    found: list[tuple[int, int]] = []
    for entry in os.scandir(proc):
        if not entry.name.isdigit():
            continue
        fd_dir = f"{proc}/{entry.name}/fd"
        try:
            fds = os.listdir(fd_dir)
        except OSError:
            continue  # gone, or a kernel thread
        for fd in fds:
            try:
                if os.readlink(f"{fd_dir}/{fd}") in targets:
                    found.append((int(entry.name), int(fd)))
            except OSError:
                continue
    return sorted(found)


def find_cri_listeners(socket_path: str) -> list[tuple[int, int]]:
    """(pid, fd) of the processes listening on the unix socket at ``socket_path``."""
    return socket_holders(unix_socket_inodes(socket_path, listening=True))


def find_cri_connections(socket_path: str) -> list[tuple[int, int]]:
    """(pid, fd) of the server side of connections already accepted on ``socket_path``."""
    return socket_holders(unix_socket_inodes(socket_path, listening=False))


def decode_accept(raw: bytes) -> list[Event]:
    r = CriAccept.from_buffer_copy(raw)
    ev = base_event("cri_accept", r.h)
    ev["fd"] = r.fd
    ev["ret"] = r.fd
    ev["conn_id"] = r.conn_id
    ev["attrs"] = json.dumps({"listen_fd": r.listen_fd})
    return [ev]


_DATA_OFF: Final = ct.sizeof(CriDataFixed)
_ATTR_NAMES: Final = (
    (SP_CRI_PREEXISTING, "preexisting"),
    (SP_CRI_GAP, "gap"),
    (SP_CRI_TRUNCATED, "truncated"),
)
"""flags bits repeated in attrs, as startprof.cri.stream reads them."""
_ATTR_FLAGS: Final = SP_CRI_PREEXISTING | SP_CRI_GAP | SP_CRI_TRUNCATED


def decode_data(raw: bytes) -> list[Event]:
    """One chunk of a read (direction ``in``) or write (``out``); ret = the whole syscall's
    bytes, flags = SP_CRI_* (preexisting connection, gap before, truncated after)."""
    r = CriDataFixed.from_buffer_copy(raw)
    ev = base_event("cri_data", r.h)
    ev["fd"] = r.fd
    ev["conn_id"] = r.conn_id
    ev["direction"] = "out" if r.flags & SP_CRI_OUT else "in"
    ev["data"] = raw[_DATA_OFF : _DATA_OFF + r.len]
    ev["flags"] = r.flags
    ev["ret"] = r.ret
    if r.flags & _ATTR_FLAGS:
        ev["attrs"] = json.dumps({name: True for bit, name in _ATTR_NAMES if r.flags & bit})
    return [ev]


DECODERS: Final[dict[RecordType, Decoder]] = {
    RecordType.CRI_ACCEPT: decode_accept,
    RecordType.CRI_DATA: decode_data,
}
