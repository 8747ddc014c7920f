"""Load the probes into the kernel and read their events: the one object the recorder drives.

``ProbeSession`` builds one BPF translation unit from ``bpf/startprof.bpf.c`` (its quoted
``#include``s of the probe files are inlined, so bcc sees every ``TRACEPOINT_PROBE`` in its main
file and generates the argument structs from the running kernel's format files), passes the
settings as ``-D`` cflags, loads it with bcc, seeds the in-kernel filter and drains the ring
buffer into events (``startprof.events``).
"""

from __future__ import annotations

import contextlib
import ctypes as ct
import errno
import importlib
import json
import os
import re
import time
from collections.abc import Iterable, Sequence
from typing import Any, Final

from startprof.errors import EnvironmentProblem, PrivilegeError
from startprof.events import Event
from startprof.probes import PROBE_NAMES, PROBES, cri, hooks, image
from startprof.probes import exec as exec_probe
from startprof.probes.abi import (
    SP_CONN_ID_SEEDED,
    SP_CRI_PREEXISTING,
    Conn,
    Decoder,
    Header,
    ImgPrefix,
    RecordType,
)
from startprof.probes.progstats import prog_stats
from startprof.procfs import descendants, has_env_prefix
from startprof.resources import bpf_dir

ALL_PROBES: Final[tuple[str, ...]] = PROBE_NAMES

MAIN_SOURCE: Final = "startprof.bpf.c"

_DECODERS: Final[dict[int, tuple[str, Decoder]]] = {
    int(rtype): (spec.name, decoder)
    for spec in PROBES
    for rtype, decoder in importlib.import_module(spec.module).DECODERS.items()
}

_SEEDED: Final = 0x3
"""``followed`` value of a process seeded from user space: SP_FOLLOWED | SP_FOLLOWED_FDS
(startprof.bpf.c). Its close() keeps looking at the fd-keyed maps: it may hold a seeded CRI
connection, and a re-seed of a pid that already has entries must not clear the mark."""

_KERNEL_ERRORS: Final[tuple[str, ...]] = ("follow_map_full", "pairing_map_full", "user_read")
"""Index -> name of the ``errors`` map (SP_ERR_* in startprof.bpf.c)."""

_INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"')


def expand_source(name: str = MAIN_SOURCE, directory: str | None = None) -> str:
    """The text of a BPF source with its quoted includes of ``bpf/`` files inlined, each
    marked with ``#line`` so compiler messages name the original file and line."""
    base = directory or str(bpf_dir())

    def expand(fname: str, stack: tuple[str, ...]) -> list[str]:
        if fname in stack:
            raise EnvironmentProblem(f"BPF sources include each other: {' -> '.join(stack)}")
        out = [f'#line 1 "{fname}"']
        with open(os.path.join(base, fname)) as f:
            lines = f.read().splitlines()
        for lineno, line in enumerate(lines, 1):
            m = _INCLUDE.match(line)
            if m and os.path.exists(os.path.join(base, m.group(1))):
                out.extend(expand(m.group(1), (*stack, fname)))
                out.append(f'#line {lineno + 1} "{fname}"')
            else:
                out.append(line)
        return out

    return "\n".join(expand(name, ())) + "\n"


class ProbeSession:
    """The loaded probes: start(), then poll() in a loop, then close()."""

    def __init__(
        self,
        *,
        follow_all: bool = False,
        seed_pids: Iterable[int] = (),
        cri_socket: str | None = None,
        ringbuf_pages: int = 1024,
        probes: Sequence[str] = ALL_PROBES,
        extra_cflags: Sequence[str] = (),
        cri_sock_tracepoints: bool | None = None,
        exclude: Iterable[int] = (),
        syscall_hooks: str = "auto",
    ) -> None:
        unknown = [p for p in probes if p not in ALL_PROBES]
        if unknown:
            raise ValueError(f"unknown probe(s) {', '.join(unknown)}; known: {ALL_PROBES}")
        if ringbuf_pages < 1 or ringbuf_pages & (ringbuf_pages - 1):
            raise ValueError(f"ringbuf_pages must be a power of two, not {ringbuf_pages}")
        self.follow_all = follow_all
        self.seed_pids = tuple(seed_pids)
        self.exclude = tuple(exclude)
        """Processes never followed, nor their descendants alive when a tree is seeded: the
        recorder itself, which in a pod (the agent's DaemonSet) descends from the shim it
        follows."""
        self.cri_socket = cri_socket
        self.ringbuf_pages = ringbuf_pages
        self.probes = tuple(p for p in ALL_PROBES if p in probes)
        self.extra_cflags = tuple(extra_cflags)
        self.env_filter = bool(cri_socket) and not follow_all and exec_probe.NAME in probes
        """exec reads the environment only where CNI_* can be: the CRI listeners' children and
        the processes that inherit CNI_* (SP_ENV_FILTER in exec.bpf.c). Without a CRI socket
        there are no listeners to start from, so every followed exec's environment is read."""
        self.cri_sock_tracepoints = (
            cri.sock_tracepoints_usable() if cri_sock_tracepoints is None else cri_sock_tracepoints
        )
        """cri reads CRI bytes at the socket tracepoints (else at every read/write syscall)."""
        self.syscall_hooks = syscall_hooks
        self.syscall_fentry = hooks.use_fentry(syscall_hooks)
        """The syscall hooks are fentry/fexit programs (else syscall tracepoints, which send
        every syscall on the machine down the slow path): startprof.probes.hooks."""
        self.load_seconds: float | None = None
        self._bpf: Any = None
        self._raw: list[bytes] = []
        self.last_poll_bytes = 0
        """Bytes of records the last poll() drained: how full the ring buffer had become."""
        self._pending: list[Event] = []
        self._counts: dict[str, int] = dict.fromkeys(self.probes, 0)
        self._exited: set[int] = set()
        self._next_seeded_conn = 1
        self._callback: Any = None

    # ---- what gets loaded ----

    def cflags(self) -> list[str]:
        """The ``-D`` settings (then ``extra_cflags``) the C is compiled with."""
        flags = [
            f"-DSP_RINGBUF_PAGES={self.ringbuf_pages}",
            f"-DSP_FOLLOW_ALL={int(self.follow_all)}",
        ]
        flags += [f"-DSP_PROBE_{p.upper()}={int(p in self.probes)}" for p in ALL_PROBES]
        flags.append(f"-DSP_CRI_SOCK_TP={int(self.cri_sock_tracepoints)}")
        flags.append(f"-DSP_ENV_FILTER={int(self.env_filter)}")
        flags.append(f"-DSP_SYSCALL_FENTRY={int(self.syscall_fentry)}")
        return flags + list(self.extra_cflags)

    def c_source(self) -> str:
        """The full C text that is loaded, with the cflags shown in a comment header."""
        header = [
            "/*",
            " * startprof BPF program as loaded by startprof.probes.session.ProbeSession.",
            " * Compiled by bcc with these cflags:",
            *(f" *   {flag}" for flag in self.cflags()),
            " */",
        ]
        return "\n".join(header) + "\n" + expand_source()

    # ---- life cycle ----

    def start(self) -> None:
        """Compile, load and attach the probes, then seed the filter and the CRI listeners."""
        if self._bpf is not None:
            return
        if os.geteuid() != 0:
            raise PrivilegeError("loading BPF probes needs root", "run startprof record with sudo")
        try:
            from bcc import BPF
        except ImportError as exc:
            raise EnvironmentProblem(
                f"cannot import bcc: {exc}",
                "sudo make setup (python3-bpfcc) and run from the project venv",
            ) from exc
        t0 = time.monotonic()
        try:
            self._bpf = BPF(text=self.c_source().encode(), cflags=self.cflags())
        except Exception as exc:  # bcc raises bare Exception for compile, load and attach
            if not self.syscall_fentry:
                raise _load_error(exc) from exc
            if self.syscall_hooks != "auto":
                raise EnvironmentProblem(
                    f"the kernel did not take the probes' fentry programs: {exc}",
                    "use the syscall tracepoints: --syscall-hooks tracepoint",
                ) from exc
            # A trial fentry program loaded (hooks.fentry_usable), these did not: the same
            # probes on tracepoints then, at the cost of a second compile.
            self.syscall_fentry = False
            return self.start()
        try:
            self._callback = self._on_record
            self._bpf[b"events"].open_ring_buffer(self._callback)
            self.load_seconds = time.monotonic() - t0
            self._follow_trees(self.seed_pids)
            if self.cri_socket:
                self._seed_cri(self.cri_socket)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Detach everything and free the maps; safe to call more than once."""
        bpf, self._bpf = self._bpf, None
        if bpf is not None:
            bpf.cleanup()

    def __enter__(self) -> ProbeSession:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- reading ----

    def _on_record(self, _ctx: Any, data: Any, size: int) -> int:
        self._raw.append(ct.string_at(data, size))
        return 0

    def _drain_raw(self, timeout_ms: int) -> list[bytes]:
        """The raw records waiting in the ring buffer (after up to timeout_ms of waiting)."""
        bpf = self._require()
        # Woken early only every SP_WAKEUP_BYTES written (startprof.bpf.c); drained here.
        bpf.ring_buffer_poll(timeout_ms)
        bpf.ring_buffer_consume()
        raws, self._raw = self._raw, []
        self.last_poll_bytes = sum(map(len, raws))
        return raws

    def poll(self, timeout_ms: int) -> list[Event]:
        """Wait up to ``timeout_ms`` for records, then decode every record waiting."""
        events = self.decode(self._drain_raw(timeout_ms))
        if self._pending:
            events[:0] = self._pending
            self._pending = []
        if self._exited:
            self._forget_exited()
        return events

    def decode(self, raws: Iterable[bytes]) -> list[Event]:
        """Decode raw records (as the ring buffer delivers them) into events."""
        out: list[Event] = []
        counts = self._counts
        for raw in raws:
            rtype = int.from_bytes(raw[:4], "little")
            entry = _DECODERS.get(rtype)
            if entry is None or len(raw) < ct.sizeof(Header):
                out.append(_note(raw, f"unknown record type {rtype} ({len(raw)} bytes)"))
                continue
            probe, decoder = entry
            try:
                events = decoder(raw)
            except (ValueError, IndexError) as exc:
                out.append(_note(raw, f"undecodable {RecordType(rtype).name} record: {exc}"))
                continue
            counts[probe] = counts.get(probe, 0) + 1
            if rtype == RecordType.EXIT:
                self._exited.add(events[0]["pid"])
            out.extend(events)
        return out

    # ---- counters ----

    def drops(self) -> list[int]:
        """Per-CPU count of records the ring buffer had no room for, since start()."""
        return [int(v) for v in self._require()[b"drops"][ct.c_int(0)]]

    def kernel_errors(self) -> dict[str, int]:
        """Other in-kernel losses: a full follow map, a full pairing map, failed user reads,
        program runs the kernel skipped."""
        table = self._require()[b"errors"]
        errors = {
            name: sum(int(v) for v in table[ct.c_int(i)]) for i, name in enumerate(_KERNEL_ERRORS)
        }
        errors["program_misses"] = self.program_misses()
        return errors

    def program_misses(self) -> int:
        """Runs the kernel skipped, each a lost event: a program already running on that CPU
        (an fentry program preempted inside itself, or a tracepoint program interrupted by
        another); startprof.probes.progstats."""
        total = 0
        for fn in self._require().funcs.values():
            try:
                total += prog_stats(fn.fd).recursion_misses
            except OSError:
                continue  # a program bcc loaded and closed again
        return total

    def counts(self) -> dict[str, int]:
        """Records decoded so far per probe name."""
        return dict(self._counts)

    # ---- filter and CRI sockets ----

    def follow(self, pid: int, *, descendants: bool = True) -> None:
        """Add a tgid (and, by default, its current descendants) to the in-kernel filter.

        The pid goes in first, so a child forked while /proc is scanned is caught by the
        kernel, and one forked before it by the scan."""
        if descendants:
            self._follow_trees([pid])
        elif not self.follow_all:
            self._require()[b"followed"][ct.c_uint32(pid)] = ct.c_uint8(_SEEDED)

    def _follow_trees(self, pids: Sequence[int]) -> None:
        """Follow pids and their descendants with one /proc scan."""
        if self.follow_all or not pids:
            return
        table = self._require()[b"followed"]
        skip = set(self.exclude) | set(descendants(self.exclude)) if self.exclude else set()
        pids = [p for p in pids if p not in skip]
        for pid in pids:
            table[ct.c_uint32(pid)] = ct.c_uint8(_SEEDED)
        children = [c for c in descendants(pids) if c not in skip]
        for child in children:
            table[ct.c_uint32(child)] = ct.c_uint8(_SEEDED)
        if self.env_filter:
            # processes already running with CNI_* (a plugin mid-ADD) pass it to their children
            env = self._require()[b"env_procs"]
            for pid in (*pids, *children):
                if has_env_prefix(pid, b"CNI_"):
                    env[ct.c_uint32(pid)] = ct.c_uint8(_ENV_CNI)

    def add_cri_listener(self, pid: int, fd: int) -> None:
        """Report connections accepted on this listening (pid, fd) and the bytes on them; its
        process (the container runtime) is where CNI plugins' environments come from."""
        if self.env_filter:
            self._require()[b"env_roots"][ct.c_uint32(pid)] = ct.c_uint8(1)
        if cri.NAME in self.probes:
            table = self._require()[b"cri_listeners"]
            table[ct.c_uint64(_fd_key(pid, fd))] = ct.c_uint8(1)
        if image.NAME in self.probes:
            self._seed_image(pid)

    def _seed_image(self, pid: int) -> None:
        """The image probe watches this containerd's content store and snapshots (the prefixes
        of the first containerd seeded; a restarted one has the same root)."""
        bpf = self._require()
        bpf[b"img_procs"][ct.c_uint32(pid)] = ct.c_uint8(1)
        table = bpf[b"img_prefixes"]
        if table[ct.c_int(0)].len:
            return
        root = image.containerd_root(pid)
        for i, (prefix, kind) in enumerate(image.prefixes(root, pid)):
            raw = prefix.encode()
            table[ct.c_int(i)] = ImgPrefix(len(raw), kind, raw)

    def add_cri_connection(self, pid: int, fd: int) -> int:
        """Follow an already-accepted connection; its events are flagged preexisting.
        Returns its conn_id."""
        conn_id = SP_CONN_ID_SEEDED | self._next_seeded_conn
        self._next_seeded_conn += 1
        table = self._require()[b"cri_conns"]
        table[ct.c_uint64(_fd_key(pid, fd))] = Conn(conn_id, SP_CRI_PREEXISTING, 0)
        return conn_id

    def _seed_cri(self, socket_path: str) -> None:
        listeners = cri.find_cri_listeners(socket_path)
        if not listeners:
            self._pending.append(
                {
                    "kind": "note",
                    "ts_ns": time.monotonic_ns(),
                    "attrs": _json({"message": f"no listener on {socket_path}"}),
                }
            )
        for pid, fd in listeners:
            self.add_cri_listener(pid, fd)
            self.follow(pid)
        if cri.NAME not in self.probes:
            return
        for pid, fd in cri.find_cri_connections(socket_path):
            conn_id = self.add_cri_connection(pid, fd)
            self._pending.append(
                {
                    "kind": "note",
                    "ts_ns": time.monotonic_ns(),
                    "pid": pid,
                    "fd": fd,
                    "conn_id": conn_id,
                    "attrs": _json(
                        {
                            "message": "CRI connection accepted before recording began: "
                            "methods its HPACK table already holds are named from evidence "
                            "(docs/cri-decoding.md)",
                            "preexisting_connection": True,
                        }
                    ),
                }
            )

    def _forget_exited(self) -> None:
        """Processes that exited without closing their netlink sockets or CRI connections
        (Go programs do) leave map entries: drop those keyed by an exited tgid."""
        exited, self._exited = self._exited, set()
        bpf = self._require()
        for name in (m for spec in PROBES if spec.name in self.probes for m in spec.fd_maps):
            table = bpf[name.encode()]
            stale = [k for k in table if (k.value >> 32) in exited]
            for key in stale:
                with contextlib.suppress(KeyError):  # closed meanwhile
                    del table[key]

    def _require(self) -> Any:
        if self._bpf is None:
            raise RuntimeError("ProbeSession is not started (or already closed)")
        return self._bpf


_ENV_CNI: Final = 0x3
"""``env_procs`` value SP_ENV_CANDIDATE | SP_ENV_CNI (exec.bpf.c)."""


def _fd_key(pid: int, fd: int) -> int:
    return (pid << 32) | (fd & 0xFFFFFFFF)


def _json(obj: dict[str, object]) -> str:
    return json.dumps(obj)


def _note(raw: bytes, message: str) -> Event:
    return {"kind": "note", "attrs": _json({"message": message, "record_head": raw[:64].hex()})}


def _load_error(exc: Exception) -> Exception:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if "Failed to compile" in text:
        return EnvironmentProblem(
            "bcc could not compile the BPF probes (compiler messages above)",
            "check the kernel headers links: sudo make setup",
        )
    if "Permission denied" in text or "Operation not permitted" in text:
        if os.geteuid() != 0:
            return PrivilegeError(f"the kernel refused the probes: {text}", "run as root")
        return EnvironmentProblem(
            f"the BPF verifier rejected the probes: {text}",
            "the verifier log is above; report it with `startprof doctor --json`",
        )
    if isinstance(exc, OSError) and exc.errno == errno.EPERM:
        return PrivilegeError(f"the kernel refused the probes: {text}", "run as root")
    return EnvironmentProblem(f"could not load the BPF probes: {text}")
