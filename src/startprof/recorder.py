"""The live recording loop: load the probes, drain the ring buffer, write the recording.

This is the only module (with ``startprof.probes``) that touches the kernel. It prints nothing:
progress goes to the ``on_status`` callback, which the CLI renders.
"""

from __future__ import annotations

import contextlib
import json
import mmap
import os
import platform
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from startprof import __version__
from startprof.clock import sample_offset
from startprof.config import same_socket
from startprof.cri.stream import CriStreamDecoder
from startprof.enrichment import annotation_event
from startprof.errors import InputError, PrivilegeError, StartprofError
from startprof.events import Event
from startprof.lab.versions import recording_metadata
from startprof.probes import PROBE_NAMES
from startprof.probes.abi import STARTPROF_ABI_VERSION as ABI_VERSION
from startprof.probes.cri import find_cri_listeners
from startprof.probes.session import ProbeSession
from startprof.procfs import cmdline, descendants, pids_by_comm, proc_event
from startprof.recording import RecordingHeader, RecordingWriter

POLL_MS = 100
HOUSEKEEPING_S = 1.0
DRAIN_S = 0.3
KUBELET_COMMS = ("kubelet",)
ALL_PROBES = PROBE_NAMES


@dataclass(frozen=True)
class RecordOptions:
    output: Path
    cri_socket: str
    duration: float | None = None
    follow_all: bool = False
    command: Sequence[str] = ()
    probes: Sequence[str] = ALL_PROBES
    ringbuf_pages: int = 1024
    syscall_hooks: str = "auto"
    """fentry, tracepoint or auto: startprof.probes.hooks."""


@dataclass
class RecordStats:
    """What the status line and the summary show."""

    started: float = field(default_factory=time.monotonic)
    per_probe: dict[str, int] = field(default_factory=dict)
    rates: dict[str, float] = field(default_factory=dict)
    drops: int = 0
    events_written: int = 0
    sandboxes: set[str] = field(default_factory=set)
    cri_calls: int = 0
    cri_bytes_lost: int = 0
    """CRI bytes the kernel saw move and the decoder never got (see CriByteAccount)."""
    followed_containerd: list[int] = field(default_factory=list)

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started


@dataclass(frozen=True)
class RecordResult:
    path: Path
    size_bytes: int
    stats: RecordStats
    command_exit: int | None
    stop_reason: str


StatusCallback = Callable[[RecordStats], None]


def ensure_privileges() -> None:
    if os.geteuid() != 0:
        raise PrivilegeError(
            "recording loads BPF programs and needs root",
            fix="run with sudo (or CAP_BPF+CAP_PERFMON+CAP_SYS_ADMIN)",
        )


def ensure_tracefs() -> None:
    """bcc attaches tracepoints through tracefs; mount it when a fresh machine lacks it."""
    if os.path.exists("/sys/kernel/tracing/events") or os.path.exists(
        "/sys/kernel/debug/tracing/events"
    ):
        return
    proc = subprocess.run(
        ["mount", "-t", "tracefs", "nodev", "/sys/kernel/tracing"], capture_output=True, text=True
    )
    if proc.returncode != 0:
        raise StartprofError(
            f"tracefs is not mounted and mounting it failed: {proc.stderr.strip()}",
            fix="mount -t tracefs nodev /sys/kernel/tracing",
        )


CRI_SETTLE_NS = 1_000_000_000
"""A syscall's chunks all arrive in one poll: after this long, what it lacks is lost."""
RECORDER_NICE = 10
BEHIND_FRACTION = 0.25
"""A poll that drains this share of the ring buffer means the recorder is falling behind."""


class _Priority:
    """How the recorder shares the CPU with the pods it watches.

    Once recording starts (after COMMAND was spawned, which keeps its own priority) the recorder
    runs as SCHED_IDLE: only on CPU time nothing else wants, so on a small node it does not take
    time from containerd, runc and the CNI plugins (their start got ~2 points of overhead back
    in benchmarks/probe_overhead.py). The ring buffer absorbs what arrives meanwhile. The first
    poll that finds it a quarter full moves the recorder to SCHED_OTHER at nice 10 for the rest
    of the recording: on a saturated node it then competes, weakly, rather than drops events.
    """

    def __init__(self) -> None:
        self.mode = "normal"
        self.boosted = False
        """Out of SCHED_IDLE for a while only (``boost``), not for good (``catch_up``)."""

    def yield_to_workload(self) -> None:
        try:
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
            self.mode = "idle"
        except OSError:
            self._nice()

    def catch_up(self) -> bool:
        """Leave SCHED_IDLE for nice 10 for good; True when that changed anything."""
        if self.boosted:
            self.boosted = False
            return True
        if self.mode != "idle":
            return False
        with contextlib.suppress(OSError):
            os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
        self._nice()
        return True

    def boost(self) -> bool:
        """Leave SCHED_IDLE for nice 10 until ``relax``: work that is due cannot wait for idle
        time (the agent's overdue trace on a saturated node); True when that changed anything."""
        if self.mode != "idle":
            return False
        self.boosted = self.catch_up()
        return self.boosted

    def relax(self) -> bool:
        """Back to SCHED_IDLE after a ``boost``; True when that changed anything."""
        if not self.boosted:
            return False
        self.boosted = False
        self.yield_to_workload()
        return True

    def _nice(self) -> None:
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, 0, RECORDER_NICE)
            self.mode = f"nice {RECORDER_NICE}"


def shims_of(socket_path: str) -> list[int]:
    """containerd shims daemonize away from containerd; find them by the address they serve."""
    shims = []
    for pid in pids_by_comm(("containerd-shim", "containerd-shim-runc-v2")):
        argv = cmdline(pid) or []
        if any(same_socket(os.fsdecode(a), socket_path) for a in argv if a.endswith(b".sock")):
            shims.append(pid)
    return shims


def followed_roots(listeners: Iterable[tuple[int, int]], cri_socket: str) -> list[int]:
    """What the recorder follows, as roots: the containerd behind the CRI socket, its shims
    and a kubelet."""
    roots = sorted({pid for pid, _ in listeners})
    return roots + shims_of(cri_socket) + pids_by_comm(KUBELET_COMMS)


def alive_events(roots: Iterable[int]) -> list[Event]:
    """``proc`` events of the roots and of every descendant alive now."""
    return [e for pid in seed_processes(roots) if (e := proc_event(pid)) is not None]


def seed_processes(roots: Iterable[int]) -> list[int]:
    """The roots and all their descendants alive now (the session leaves the recorder's own
    tree out of the follow map: ``ProbeSession(exclude=)``)."""
    roots = list(dict.fromkeys(roots))
    return roots + [pid for pid in descendants(roots) if pid not in roots]


class CriByteAccount:
    """CRI bytes lost on the way to the decoder, counted from the chunks that did arrive.

    The cri probe sends each read or write on a CRI connection as chunks that carry the
    syscall's whole byte count (``ret``) and share its timestamp. A chunk whose user memory
    could not be read is never sent, nor is one past the chunk limit or one the ring buffer had
    no room for; what the chunks of a syscall lack against its ``ret`` is lost. A syscall none
    of whose chunks arrived cannot be counted here (it is in the drops).
    """

    def __init__(self) -> None:
        self.lost = 0
        self._open: dict[tuple[int, str], list[int]] = {}
        """(conn_id, direction) -> [ts_ns, ret, bytes received] of a syscall not yet whole."""

    def add(self, event: Event) -> None:
        ret, data = event.get("ret"), event.get("data")
        if not isinstance(ret, int) or ret <= 0 or data is None:
            return
        key = (int(event.get("conn_id") or 0), str(event.get("direction")))
        ts = int(event.get("ts_ns") or 0)
        current = self._open.get(key)
        if current is not None and current[0] != ts:
            self._close(key)
            current = None
        if current is None:
            current = self._open[key] = [ts, ret, 0]
        current[2] += len(data)
        if current[2] >= ret:
            del self._open[key]

    def settle(self, before_ns: int | None = None) -> int:
        """Count the syscalls older than ``before_ns`` (all of them without it) as over."""
        for key in [k for k, v in self._open.items() if before_ns is None or v[0] < before_ns]:
            self._close(key)
        return self.lost

    def _close(self, key: tuple[int, str]) -> None:
        _, ret, received = self._open.pop(key)
        self.lost += max(0, ret - received)


class Stop:
    """Collects the reason to stop from signal handlers and the loop."""

    def __init__(self) -> None:
        self.reason: str | None = None

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        self.reason = signal.Signals(signum).name


@contextmanager
def stop_signals(stop: Stop) -> Iterator[None]:
    previous = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


class Recorder:
    def __init__(
        self,
        options: RecordOptions,
        on_status: StatusCallback | None = None,
        session_factory: Callable[..., ProbeSession] = ProbeSession,
        on_ready: Callable[[], None] | None = None,
    ) -> None:
        self.options = options
        self.on_status = on_status
        self.on_ready = on_ready
        self.session_factory = session_factory
        self.stats = RecordStats()
        self._decoder = CriStreamDecoder()
        self._listeners: set[tuple[int, int]] = set()
        self._counts_at_last_status: dict[str, int] = {}
        self._last_status = time.monotonic()
        self._drops_read_ns = time.monotonic_ns()
        """When the drop counters were last read: a growth seen now happened after it."""
        self._priority = _Priority()
        self._clock_offset_ns = 0
        """Wall clock minus monotonic, sampled when the probes started."""
        self._syscall_hooks = "tracepoint"
        """How the session's syscall hooks attached (start_session): the header says."""
        self._cri_bytes = CriByteAccount()

    def _initial_targets(self) -> tuple[list[int], set[tuple[int, int]]]:
        opts = self.options
        listeners = set(find_cri_listeners(opts.cri_socket)) if opts.cri_socket else set()
        if not listeners and not opts.follow_all:
            raise InputError(
                f"nothing listens on the CRI socket {opts.cri_socket}",
                fix="start containerd or the lab (startprof lab up), pass --cri-socket, "
                "or record every process with --all",
            )
        return seed_processes(followed_roots(listeners, opts.cri_socket)), listeners

    def _preflight(self) -> None:
        """What must hold before anything is loaded."""
        ensure_privileges()
        ensure_tracefs()

    def open_session(self) -> tuple[ProbeSession, list[int]]:
        """The checks, the processes to follow (pids) and the probe session, not started."""
        self._preflight()
        opts = self.options
        seeds, listeners = self._initial_targets()
        self._listeners = listeners
        self.stats.followed_containerd = sorted({pid for pid, _ in listeners})
        session = self.session_factory(
            follow_all=opts.follow_all,
            seed_pids=seeds,
            cri_socket=opts.cri_socket,
            ringbuf_pages=opts.ringbuf_pages,
            probes=tuple(opts.probes),
            exclude=(os.getpid(),),
            syscall_hooks=opts.syscall_hooks,
        )
        return session, seeds

    def start_session(self, session: ProbeSession) -> RecordingHeader:
        """Attach the probes and sample the clock: the header of what they record."""
        self._drops_read_ns = time.monotonic_ns()  # the counters start at zero here
        session.start()
        self._syscall_hooks = "fentry" if session.syscall_fentry else "tracepoint"
        self._clock_offset_ns = sample_offset()
        return self.header()

    def header(self) -> RecordingHeader:
        """A recording's header, starting now (a rotated file's too)."""
        opts = self.options
        start_mono = time.monotonic_ns()
        return RecordingHeader(
            host=socket.gethostname(),
            kernel=platform.release(),
            abi_version=ABI_VERSION,
            probes=tuple(opts.probes),
            cri_socket=opts.cri_socket,
            clock_offset_ns=self._clock_offset_ns,
            start_wall_ns=start_mono + self._clock_offset_ns,
            start_monotonic_ns=start_mono,
            follow_all=opts.follow_all,
            startprof_version=__version__,
            extra={
                **self._header_extra(),
                "syscall_hooks": self._syscall_hooks,
                "containerd": recording_metadata(opts.cri_socket, self.stats.followed_containerd),
            },
        )

    def _header_extra(self) -> dict[str, Any]:
        return {"command": list(self.options.command)} if self.options.command else {}

    def run(self) -> RecordResult:
        opts = self.options
        session, seeds = self.open_session()
        stop = Stop()
        command: subprocess.Popen[bytes] | None = None
        writer: RecordingWriter | None = None
        try:
            with stop_signals(stop):
                header = self.start_session(session)
                writer = RecordingWriter(opts.output, header)
                writer.write(e for pid in seeds if (e := proc_event(pid)) is not None)
                writer.flush()
                if self.on_ready is not None:
                    self.on_ready()
                if opts.command:
                    command = self._spawn(opts.command)
                self._priority.yield_to_workload()
                behind = BEHIND_FRACTION * opts.ringbuf_pages * mmap.PAGESIZE
                deadline = None if opts.duration is None else time.monotonic() + opts.duration
                housekeeping = time.monotonic()
                while stop.reason is None:
                    writer.write(self._process(session.poll(POLL_MS)))
                    if session.last_poll_bytes >= behind and self._priority.catch_up():
                        writer.write([_note(_BEHIND_NOTE.format(n=session.last_poll_bytes))])
                    now = time.monotonic()
                    if command is not None and command.poll() is not None:
                        stop.reason = "command exited"
                    elif deadline is not None and now >= deadline:
                        stop.reason = "duration reached"
                    if now - housekeeping >= HOUSEKEEPING_S:
                        housekeeping = now
                        writer.write(self._housekeeping(session))
                self._drain(session, writer)
                writer.write(self._decoder.finish())
                writer.write([self._drops_event(session)])
                writer.close(self._end_attrs(session, stop.reason or "", time.monotonic_ns()))
                self.stats.events_written = writer.events_written
        finally:
            if command is not None and command.poll() is None:
                command.terminate()
                try:
                    command.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    command.kill()
                    command.wait()
            if writer is not None:
                writer.close()  # no-op after a clean close; keeps what was flushed otherwise
            session.close()
        return RecordResult(
            path=opts.output,
            size_bytes=opts.output.stat().st_size,
            stats=self.stats,
            command_exit=None if command is None else command.returncode,
            stop_reason=stop.reason or "",
        )

    @staticmethod
    def _spawn(command: Sequence[str]) -> subprocess.Popen[bytes]:
        try:
            # Own process group: a Ctrl-C meant for the recorder must not kill COMMAND before
            # the recorder has drained what COMMAND caused.
            return subprocess.Popen(list(command), start_new_session=True)
        except OSError as exc:
            raise InputError(f"cannot run {command[0]}: {exc.strerror}") from exc

    def _process(self, events: list[Event]) -> list[Event]:
        """Decode CRI bytes and enrich runtime creates as the events arrive."""
        extra: list[Event] = []
        for ev in events:
            kind = ev.get("kind")
            if kind in ("cri_data", "cri_accept"):
                if kind == "cri_data":
                    self._cri_bytes.add(ev)
                for call in self._decoder.feed(ev):
                    self.stats.cri_calls += 1
                    if call.get("sandbox_id"):
                        self.stats.sandboxes.add(call["sandbox_id"])
                    extra.append(call)
                # The raw bytes hold whole CRI requests: container environments (secrets) and
                # registry credentials. Only the decoded, allow-listed fields are stored.
                ev.pop("data", None)
            elif kind == "exec":
                for var in ev.get("env") or ():
                    if var.startswith("CNI_CONTAINERID="):
                        self.stats.sandboxes.add(var.split("=", 1)[1])
                annotation = annotation_event(ev)
                if annotation is not None:
                    extra.append(annotation)
        if extra:
            return events + extra
        return events

    def _drain(self, session: ProbeSession, writer: RecordingWriter) -> None:
        """Read what the kernel still holds: the last pod's events arrive just after its reply."""
        until = time.monotonic() + DRAIN_S
        while time.monotonic() < until:
            events = session.poll(50)
            writer.write(self._process(events))

    def _housekeeping(self, session: ProbeSession) -> list[Event]:
        events: list[Event] = []
        # A containerd restarted during the recording listens on the same path with a new pid.
        current = set(find_cri_listeners(self.options.cri_socket))
        for pid, fd in sorted(current - self._listeners):
            session.follow(pid)
            session.add_cri_listener(pid, fd)
            self.stats.followed_containerd.append(pid)
            events.append(_note(f"following new CRI listener pid {pid} fd {fd}", pid=pid))
            # its exec was not seen (it was not followed then): name it, as at the start
            events.extend(alive_events([pid]))
        self._listeners |= current
        self.stats.cri_bytes_lost = self._cri_bytes.settle(time.monotonic_ns() - CRI_SETTLE_NS)
        previous = self.stats.drops
        drops = self._drops_event(session)
        if drops["ret"] != previous:
            events.append(drops)
        self._update_status(session)
        return events

    def _drops_event(self, session: ProbeSession) -> Event:
        """Read the drop counters. ``since_ns`` (the previous read) and ``ts_ns`` (this one)
        bound when a growth happened: the analysis marks pods overlapping it incomplete."""
        before = time.monotonic_ns()
        per_cpu = session.drops()
        kernel_errors = session.kernel_errors()
        after = time.monotonic_ns()
        since, self._drops_read_ns = self._drops_read_ns, before
        self.stats.drops = sum(per_cpu)
        return {
            "kind": "drops",
            "ts_ns": after,
            "ret": self.stats.drops,
            "attrs": json.dumps(
                {"per_cpu": per_cpu, "since_ns": since, "kernel_errors": kernel_errors}
            ),
        }

    def _update_status(self, session: ProbeSession) -> None:
        now = time.monotonic()
        counts = session.counts()
        span = max(now - self._last_status, 1e-6)
        self.stats.rates = {
            name: (n - self._counts_at_last_status.get(name, 0)) / span
            for name, n in counts.items()
        }
        self.stats.per_probe = dict(counts)
        self._counts_at_last_status = dict(counts)
        self._last_status = now
        if self.on_status is not None:
            self.on_status(self.stats)

    def _end_attrs(self, session: ProbeSession, reason: str, end_mono: int) -> dict[str, Any]:
        self.stats.per_probe = dict(session.counts())
        return {
            "end_monotonic_ns": end_mono,
            "stop_reason": reason,
            "drops": self.stats.drops,
            "drops_per_cpu": session.drops(),
            "kernel_errors": session.kernel_errors(),
            "events_per_probe": self.stats.per_probe,
            "cri_calls": self.stats.cri_calls,
            "cri_bytes_lost": self._cri_bytes.settle(),
            "followed_containerd": self.stats.followed_containerd,
            "recorder_priority": self._priority.mode,
        }


_BEHIND_NOTE = (
    "the recorder fell behind ({n} bytes waited in the ring buffer at one poll): "
    f"it now runs at nice {RECORDER_NICE} instead of SCHED_IDLE"
)


def _note(message: str, **columns: Any) -> Event:
    return {
        "kind": "note",
        "ts_ns": time.monotonic_ns(),
        "attrs": json.dumps({"message": message}),
        **columns,
    }
