"""The probes on the real kernel: a ProbeSession following a shell we spawn, the in-kernel
filter with and without follow_all, and the CRI probe on a tiny unix-socket server."""

from __future__ import annotations

import os
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from startprof.events import COLUMN_NAMES, KINDS, Event
from startprof.probes import abi, cri
from startprof.probes.namespaces import namespace_names
from startprof.probes.session import ProbeSession

CLONE_NEWNET = 0x40000000
RTM_NEWLINK = 16


def collect(
    session: ProbeSession, until: Callable[[list[Event]], bool], timeout: float = 10.0
) -> list[Event]:
    events: list[Event] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        events += session.poll(100)
        if until(events):
            events += session.poll(50)
            return events
    return events


def spawn_gated(script: str) -> subprocess.Popen[bytes]:
    """A shell that waits for a line on stdin before running script (so it can be followed
    before it does anything)."""
    return subprocess.Popen(["/bin/sh", "-c", f"read go; {script}"], stdin=subprocess.PIPE)


def release(proc: subprocess.Popen[bytes]) -> None:
    assert proc.stdin is not None
    proc.stdin.write(b"go\n")
    proc.stdin.close()


def run_followed(
    script: str,
) -> tuple[subprocess.Popen[bytes], list[Event], list[int], dict[str, int]]:
    """Run script in a shell a fresh ProbeSession follows from its first instruction; the
    shell, every event until its exit, and the session's drops and per-probe counts."""
    shell = spawn_gated(script)
    session = ProbeSession(seed_pids=[shell.pid])
    try:
        session.start()
        release(shell)
        shell.wait(timeout=30)
        events = collect(
            session,
            lambda evs: any(e["kind"] == "exit" and e["pid"] == shell.pid for e in evs),
        )
        return shell, events, session.drops(), session.counts()
    finally:
        session.close()


@pytest.fixture
def netns_name() -> Iterator[str]:
    name = f"sp-test-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    yield name
    if Path(f"/var/run/netns/{name}").exists():
        subprocess.run(["ip", "netns", "del", name], check=False)


@pytest.fixture
def outside_loop() -> Iterator[str]:
    """A /bin/true loop that is not a descendant of anything a session follows."""
    marker = f"sp-outside-{uuid.uuid4().hex[:8]}"
    proc = subprocess.Popen(
        ["/bin/sh", "-c", f"while :; do /bin/true {marker}; sleep 0.02; done"],
        start_new_session=True,
    )
    yield marker
    proc.kill()
    proc.wait()


def test_followed_shell(netns_name: str, outside_loop: str) -> None:
    script = "; ".join(
        [
            "/bin/true",
            "unshare -n true",
            f"ip netns add {netns_name}",
            f"ip -n {netns_name} link add sp-t0 type veth peer name sp-t1",
            f"ip netns del {netns_name}",
            "CNI_COMMAND=ADD CNI_CONTAINERID=abc SECRET_TOKEN=hunter2 /bin/sh -c 'exit 7'",
            "exit 3",
        ]
    )
    shell, events, drops, counts = run_followed(script)
    assert shell.returncode == 3

    for e in events:
        assert e["kind"] in KINDS and set(e) <= set(COLUMN_NAMES), e
    assert "hunter2" not in repr(events) and "SECRET_TOKEN" not in repr(events)
    assert drops == [0] * len(drops)
    assert counts["exec"] > 0 and counts["namespaces"] > 0 and counts["netlink"] > 0

    # the followed tree only: nothing of the outside loop
    assert not [e for e in events if outside_loop in (e.get("argv") or [])]
    tree = {shell.pid} | {e["child_pid"] for e in events if e["kind"] == "fork"}
    assert {e["pid"] for e in events if e.get("pid")} <= tree

    # fork parent -> child, exec with argv, exec_done, exit codes
    true_execs = [e for e in events if e["kind"] == "exec" and e["argv"] == ["/bin/true"]]
    assert len(true_execs) == 1
    child = true_execs[0]["pid"]
    fork = next(e for e in events if e["kind"] == "fork" and e["child_pid"] == child)
    assert fork["pid"] == shell.pid
    assert any(e["kind"] == "exec_done" and e["pid"] == child for e in events)
    assert any(e["kind"] == "exit_group" and e["pid"] == child and e["ret"] == 0 for e in events)
    assert any(e["kind"] == "exit" and e["pid"] == child for e in events)
    assert any(
        e["kind"] == "exit_group" and e["pid"] == shell.pid and e["ret"] == 3 for e in events
    )

    # CNI_* environment, and nothing else of it
    (cni_exec,) = [e for e in events if e["kind"] == "exec" and e["env"]]
    assert sorted(cni_exec["env"]) == ["CNI_COMMAND=ADD", "CNI_CONTAINERID=abc"]
    assert cni_exec["argv"] == ["/bin/sh", "-c", "exit 7"]
    assert any(
        e["kind"] == "exit_group" and e["pid"] == cni_exec["pid"] and e["ret"] == 7 for e in events
    )

    # unshare(CLONE_NEWNET)
    unshares = [e for e in events if e["kind"] == "unshare" and e["flags"] & CLONE_NEWNET]
    assert unshares and unshares[0]["ret"] == 0
    assert "CLONE_NEWNET" in namespace_names(unshares[0]["flags"])
    assert unshares[0]["start_ns"] <= unshares[0]["end_ns"]

    # RTM_NEWLINK veth and its ack, later than the request
    (newlink,) = [
        e
        for e in events
        if e["kind"] == "nl_send" and e["nl_type"] == RTM_NEWLINK and e.get("link_kind") == "veth"
    ]
    assert newlink["ifname"] == "sp-t0" and newlink["comm"] == "ip"
    acks = [
        e
        for e in events
        if e["kind"] == "nl_ack"
        and e["pid"] == newlink["pid"]
        and e["nl_seq"] == newlink["nl_seq"]
        and e["nl_type"] == RTM_NEWLINK
        and e["ts_ns"] > newlink["ts_ns"]
    ]
    assert acks and acks[0]["ret"] == 0
    latency = acks[0]["ts_ns"] - newlink["ts_ns"]
    assert 0 < latency < 1_000_000_000

    # timestamps are CLOCK_MONOTONIC
    assert abs(events[-1]["ts_ns"] - time.monotonic_ns()) < 60_000_000_000


# Calls execve with an envp array whose NULL is the last word of a page followed by an
# unreadable page, so the probe's 8-pointer chunk read of that array fails and it must fall
# back to reading pointers one by one; also argv and envp longer than one chunk.
_EXEC_AT_PAGE_END = r"""
import ctypes, mmap, sys
libc = ctypes.CDLL(None, use_errno=True)
page = mmap.PAGESIZE
env = [b"FILLER_%d=x" % i for i in range(int(sys.argv[1]))] + [b"CNI_COMMAND=ADD"]
env += [b"FILLER_TAIL=%d" % i for i in range(5)] + [b"CNI_IFNAME=eth0"]
area = mmap.mmap(-1, 2 * page, prot=mmap.PROT_READ | mmap.PROT_WRITE)
base = ctypes.addressof(ctypes.c_char.from_buffer(area))
libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
assert libc.mprotect(base + page, page, 0) == 0
n = len(env) + 1
envp = (ctypes.c_char_p * n).from_address(base + page - 8 * n)
keep = [ctypes.create_string_buffer(v) for v in env]
for i, b in enumerate(keep):
    envp[i] = ctypes.addressof(b)
envp[n - 1] = None
args = [b"/bin/sh", b"-c", b"exit 0"] + [b"arg%d" % i for i in range(10)]
argv = (ctypes.c_char_p * (len(args) + 1))(*args, None)
libc.execve(b"/bin/sh", argv, envp)
sys.exit("execve failed")
"""


@pytest.mark.parametrize("fillers", [2, 8, 21])
def test_exec_env_scan_reads_pointer_chunks_and_page_ends(fillers: int) -> None:
    import sys

    shell = spawn_gated(f"{sys.executable} -c '{_EXEC_AT_PAGE_END}' {fillers}")
    session = ProbeSession(seed_pids=[shell.pid], probes=("exec",))
    try:
        session.start()
        release(shell)
        assert shell.wait(timeout=30) == 0
        events = collect(
            session,
            lambda evs: any(e["kind"] == "exit" and e["pid"] == shell.pid for e in evs),
        )
    finally:
        session.close()
    (ours,) = [
        e for e in events if e["kind"] == "exec" and e["argv"][:3] == ["/bin/sh", "-c", "exit 0"]
    ]
    assert ours["argv"][3:] == [f"arg{i}" for i in range(10)]
    assert ours["env"] == ["CNI_COMMAND=ADD", "CNI_IFNAME=eth0"]


_RUNTIME = """
import os, socket, subprocess, sys
srv = socket.socket(socket.AF_UNIX)
srv.bind(sys.argv[1])
srv.listen()
print("ready", flush=True)
sys.stdin.readline()
path = {"PATH": "/usr/bin:/bin"}
# a CNI plugin: CNI_* from its runtime, inherited by the helper it runs
subprocess.run(["/bin/sh", "-c", "/bin/true plugin-helper"], env={**path, "CNI_COMMAND": "ADD"})
# a shim: no CNI_*; what it runs cannot be a plugin, even with CNI_* in its envp
subprocess.run(["/bin/sh", "-c", "CNI_COMMAND=DEL /bin/true shim-child"], env=path)
"""


def test_exec_env_read_only_where_cni_can_be(tmp_path: Path) -> None:
    import sys

    sock = str(tmp_path / "cri.sock")
    runtime = subprocess.Popen(
        [sys.executable, "-c", _RUNTIME, sock], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    assert runtime.stdout is not None and runtime.stdout.readline() == b"ready\n"
    session = ProbeSession(cri_socket=sock, probes=("exec",))
    try:
        session.start()
        assert session.env_filter
        release(runtime)
        assert runtime.wait(timeout=30) == 0
        events = collect(
            session,
            lambda evs: any(e["kind"] == "exit" and e["pid"] == runtime.pid for e in evs),
        )
    finally:
        session.close()
    execs = {tuple(e["argv"]): e["env"] for e in events if e["kind"] == "exec"}
    assert execs[("/bin/sh", "-c", "/bin/true plugin-helper")] == ["CNI_COMMAND=ADD"]
    assert execs[("/bin/true", "plugin-helper")] == ["CNI_COMMAND=ADD"]
    assert execs[("/bin/sh", "-c", "CNI_COMMAND=DEL /bin/true shim-child")] == []
    assert execs[("/bin/true", "shim-child")] == []  # never read: its parent carries no CNI_*


def test_follow_all_sees_processes_outside_the_tree(outside_loop: str) -> None:
    session = ProbeSession(follow_all=True, probes=("exec",))
    try:
        session.start()
        events = collect(
            session, lambda evs: any(outside_loop in (e.get("argv") or []) for e in evs)
        )
    finally:
        session.close()
    assert any(outside_loop in (e.get("argv") or []) for e in events)


def _bpf_fds() -> int:
    """This process's fds on BPF programs, maps and perf events (tracepoint attachments)."""
    n = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith(("anon_inode:bpf", "anon_inode:[perf_event]")):
            n += 1
    return n


def test_close_detaches_everything() -> None:
    before = _bpf_fds()
    session = ProbeSession(probes=("exec",))
    session.start()
    assert _bpf_fds() > before
    session.close()
    session.close()
    assert _bpf_fds() == before
    with pytest.raises(RuntimeError):
        session.poll(0)


def _serve(server: socket.socket, reply: bytes, got: list[bytes], want: int) -> None:
    conn, _ = server.accept()
    buf = b""
    while len(buf) < want:
        chunk = os.read(conn.fileno(), 65536)  # read(2), like Go's net package
        if not chunk:
            break
        buf += chunk
    got.append(buf)
    os.write(conn.fileno(), reply)  # write(2)
    conn.close()


@pytest.mark.parametrize(
    "sock_tracepoints",
    [
        pytest.param(
            True,
            id="sock-tracepoints",
            marks=pytest.mark.skipif(
                not cri.sock_tracepoints_usable(), reason="no sock tracepoints or not x86_64"
            ),
        ),
        pytest.param(False, id="read-write-syscalls"),
    ],
)
def test_cri_connections_and_bytes(tmp_path: Path, sock_tracepoints: bool) -> None:
    path = str(tmp_path / "cri.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen()
    # a connection accepted before recording: seeded, flagged preexisting
    early_client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    early_client.connect(path)
    early_server, _ = server.accept()

    request = bytes(range(256)) * 40  # 10240 bytes: three chunks
    reply = b"reply:" + os.urandom(5000)
    got: list[bytes] = []
    session = ProbeSession(cri_socket=path, probes=("cri",), cri_sock_tracepoints=sock_tracepoints)
    try:
        session.start()
        notes = [e for e in session.poll(0) if e["kind"] == "note"]
        assert notes and '"preexisting_connection": true' in notes[0]["attrs"]
        thread = threading.Thread(target=_serve, args=(server, reply, got, len(request)))
        thread.start()
        client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        client.connect(path)
        client.sendall(request)
        answer = b""
        while len(answer) < len(reply):
            chunk = client.recv(65536)
            if not chunk:
                break
            answer += chunk
        thread.join(10)
        client.close()
        os.write(early_client.fileno(), b"old")
        assert os.read(early_server.fileno(), 16) == b"old"

        def data(evs: list[Event], direction: str) -> bytes:
            return b"".join(
                e["data"]
                for e in evs
                if e["kind"] == "cri_data"
                and e["direction"] == direction
                and not e["flags"] & abi.SP_CRI_PREEXISTING
            )

        events = collect(
            session,
            lambda evs: (
                len(data(evs, "out")) >= len(reply)
                and any(
                    e["kind"] == "cri_data" and e["flags"] & abi.SP_CRI_PREEXISTING for e in evs
                )
            ),
        )
        drops = session.drops()
    finally:
        session.close()
        for s in (early_client, early_server, server):
            s.close()
    assert got == [request] and answer == reply
    (accept,) = [e for e in events if e["kind"] == "cri_accept"]
    assert accept["pid"] == os.getpid() and accept["conn_id"] < abi.SP_CONN_ID_SEEDED
    ours = [e for e in events if e["kind"] == "cri_data" and e["conn_id"] == accept["conn_id"]]
    assert data(ours, "in") == request
    assert data(ours, "out") == reply
    assert max(len(e["data"]) for e in ours) == abi.SP_CRI_CHUNK
    assert not any(e["flags"] & (abi.SP_CRI_GAP | abi.SP_CRI_TRUNCATED) for e in ours)
    (old,) = [e for e in events if e["kind"] == "cri_data" and e["flags"] & abi.SP_CRI_PREEXISTING]
    assert old["data"] == b"old" and old["direction"] == "in"
    assert old["conn_id"] & abi.SP_CONN_ID_SEEDED
    assert drops == [0] * len(drops)


def _cgroup_hierarchy() -> Path:
    """A cgroup hierarchy to make a directory in: v2's, else v1's pids (hybrid hosts)."""
    for root in ("/sys/fs/cgroup/unified", "/sys/fs/cgroup/pids", "/sys/fs/cgroup"):
        if Path(root, "cgroup.procs").exists():
            return Path(root)
    pytest.skip("no writable cgroup hierarchy")


def test_runtime_probe_sees_mounts_cgroups_and_renames() -> None:
    """What runc does inside create, done by a followed shell: a mount namespace with a tmpfs
    mount and its umount, a cgroup made and joined, and a prctl rename."""
    cgroup = _cgroup_hierarchy() / f"sp-test-{uuid.uuid4().hex[:8]}"
    target = Path(tempfile.mkdtemp(prefix="sp-mnt-"))  # short: paths are cut at 63 bytes
    rename = "import ctypes; ctypes.CDLL(None).prctl(15, b'sp-stage', 0, 0, 0)"
    script = "; ".join(
        [
            f"unshare -m sh -c 'mount -t tmpfs sp-tmp {target} && umount {target}'",
            f"mkdir {cgroup}",
            f"echo $$ > {cgroup}/cgroup.procs",
            f'python3 -c "{rename}"',
        ]
    )
    try:
        shell, events, _, counts = run_followed(script)
    finally:
        parent = cgroup.parent / "cgroup.procs"
        if cgroup.exists():
            for pid in (cgroup / "cgroup.procs").read_text().split():
                parent.write_text(pid)  # nothing is left in it: the shell exited
            cgroup.rmdir()
        target.rmdir()
    assert shell.returncode == 0
    assert counts["runtime"] > 0
    for e in events:
        assert e["kind"] in KINDS and set(e) <= set(COLUMN_NAMES), e
    (mount,) = [e for e in events if e["kind"] == "mount" and e.get("filename") == str(target)]
    assert mount["ret"] == 0 and '"tmpfs"' in mount["attrs"]
    assert mount["start_ns"] <= mount["end_ns"]
    (umount,) = [e for e in events if e["kind"] == "umount" and e.get("filename") == str(target)]
    assert umount["start_ns"] >= mount["end_ns"]
    name = f"/{cgroup.name}"
    assert [e["filename"] for e in events if e["kind"] == "cgroup_mkdir"] == [name]
    (attach,) = [e for e in events if e["kind"] == "cgroup_attach"]
    assert (attach["filename"], attach["ret"]) == (name, shell.pid)
    # prctl's rename, not the execs' own (the exec probe's exec_done has those)
    renames = [(e["old_comm"], e["comm"]) for e in events if e["kind"] == "rename"]
    assert renames == [("python3", "sp-stage")]
