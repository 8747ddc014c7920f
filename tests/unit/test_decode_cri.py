"""CRI-probe decoders and the /proc parsing that finds the CRI socket's (pid, fd)."""

from __future__ import annotations

import ctypes as ct
import json
import os
import socket
from pathlib import Path

from startprof.probes import abi, cri

PROC_NET_UNIX = """\
Num       RefCount Protocol Flags    Type St Inode Path
0000000000000000: 00000002 00000000 00010000 0001 01 1001 /run/sp/containerd.sock
0000000000000000: 00000003 00000000 00000000 0001 03 1002 /run/sp/containerd.sock
0000000000000000: 00000003 00000000 00000000 0001 03 1003
0000000000000000: 00000002 00000000 00010000 0001 01 1004 /run/other.sock
0000000000000000: 00000002 00000000 00000000 0002 01 1005 @abstract
"""


def test_unix_socket_inodes(tmp_path: Path) -> None:
    table = tmp_path / "unix"
    table.write_text(PROC_NET_UNIX)
    path = "/run/sp/containerd.sock"
    assert cri.unix_socket_inodes(path, listening=True, proc_net_unix=str(table)) == {1001}
    assert cri.unix_socket_inodes(path, listening=False, proc_net_unix=str(table)) == {1002}
    assert cri.unix_socket_inodes("/nope", listening=True, proc_net_unix=str(table)) == set()


def test_a_socket_is_the_same_however_it_is_spelled(tmp_path: Path) -> None:
    """``/var/run/...`` vs ``/run/...`` (a symlink on most nodes) and the kubelet's ``unix://``
    prefix name one socket (issue 14)."""
    from startprof.config import canonical_socket, resolve_cri_socket, same_socket

    real = tmp_path / "run" / "containerd"
    real.mkdir(parents=True)
    (tmp_path / "var").mkdir()
    (tmp_path / "var" / "run").symlink_to(tmp_path / "run")
    via_link = str(tmp_path / "var" / "run" / "containerd" / "containerd.sock")
    direct = str(real / "containerd.sock")
    assert canonical_socket(via_link) == canonical_socket(direct)
    assert canonical_socket(f"unix://{via_link}") == canonical_socket(direct)
    assert same_socket(f"unix://{direct}", via_link)
    assert not same_socket(direct, str(real / "other.sock"))
    assert resolve_cri_socket(f"unix://{direct}") == canonical_socket(direct)
    table = tmp_path / "unix"
    table.write_text(PROC_NET_UNIX.replace("/run/sp/containerd.sock", via_link))
    assert cri.unix_socket_inodes(f"unix://{direct}", listening=True, proc_net_unix=str(table)) == {
        1001
    }


def test_sock_tracepoints_need_all_three_events_and_x86_64(tmp_path: Path) -> None:
    events = tmp_path / "events"
    roots = [str(tmp_path / "absent"), str(events)]
    (events / "sock" / "sock_recv_length").mkdir(parents=True)
    (events / "sock" / "sock_send_length").mkdir()
    assert not cri.sock_tracepoints_usable("x86_64", roots)  # the write's time is missing
    (events / "sock" / "sk_data_ready").mkdir()
    assert cri.sock_tracepoints_usable("x86_64", roots)
    assert not cri.sock_tracepoints_usable("aarch64", roots)  # registers read are x86_64's
    assert not cri.sock_tracepoints_usable("x86_64", [str(tmp_path / "absent")])


def test_find_listener_and_connection_of_a_real_socket(tmp_path: Path) -> None:
    path = str(tmp_path / "cri.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen()
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    client.connect(path)
    conn, _ = server.accept()
    try:
        me = os.getpid()
        assert cri.find_cri_listeners(path) == [(me, server.fileno())]
        assert cri.find_cri_connections(path) == [(me, conn.fileno())]
    finally:
        for s in (conn, client, server):
            s.close()
    assert cri.find_cri_listeners(path) == []


def test_decode_accept_and_data_chunks() -> None:
    h = abi.Header(
        abi.RecordType.CRI_ACCEPT, ct.sizeof(abi.CriAccept), 5, 100, 101, 1, b"containerd"
    )
    (ev,) = cri.decode_accept(bytes(abi.CriAccept(h, 3, 9, 1)))
    assert (ev["kind"], ev["fd"], ev["conn_id"], ev["attrs"]) == (
        "cri_accept",
        9,
        1,
        '{"listen_fd": 3}',
    )

    payload = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
    fixed = ct.sizeof(abi.CriDataFixed)
    r = abi.CriData()
    r.h = abi.Header(abi.RecordType.CRI_DATA, fixed + len(payload), 6, 100, 102, 1, b"containerd")
    r.conn_id, r.fd, r.flags, r.ret, r.offset, r.len = 1, 9, abi.SP_CRI_PREEXISTING, 24, 0, 24
    ct.memmove(ct.addressof(r) + fixed, payload, len(payload))
    (ev,) = cri.decode_data(bytes(r)[: fixed + len(payload)])
    assert (ev["direction"], ev["data"], ev["ret"]) == ("in", payload, 24)
    assert ev["flags"] & abi.SP_CRI_PREEXISTING
    assert json.loads(ev["attrs"]) == {"preexisting": True}  # as cri.stream reads it
    r.flags = abi.SP_CRI_OUT | abi.SP_CRI_GAP | abi.SP_CRI_TRUNCATED
    (ev,) = cri.decode_data(bytes(r)[: fixed + len(payload)])
    assert ev["direction"] == "out" and ev["flags"] & abi.SP_CRI_GAP
    assert json.loads(ev["attrs"]) == {"gap": True, "truncated": True}
    r.flags = 0
    assert "attrs" not in cri.decode_data(bytes(r)[: fixed + len(payload)])[0]
