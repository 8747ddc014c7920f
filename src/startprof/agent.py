"""``startprof agent``: the recorder, always on, with each pod start sent over OTLP as it ends.

The probe session, the CRI decoder, the enrichment and the handling of containerd restarts are
the recorder's (``Agent`` is a ``Recorder`` with another loop); the analysis is the incremental
core's (``startprof.incremental``); the traces are the ``export`` mapping and sender
(``exporters.spans``, ``exporters.otlp``). Nothing is printed here: messages go to ``on_message``.
"""

from __future__ import annotations

import mmap
import os
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from startprof.errors import EnvironmentProblem, InputError, StartprofError
from startprof.events import Event
from startprof.exporters.otlp import (
    OtlpTraceSender,
    SdkSpanBuilder,
    _address,
    make_span_exporter,
    resolve_endpoint,
    resolve_protocol,
)
from startprof.exporters.spans import describe_pod
from startprof.incremental import POD_TIMEOUT_S, Emitted, IncrementalAnalyzer
from startprof.metrics import AgentMetrics, otlp_metric_reader, prometheus_reader
from startprof.probes.cri import unix_socket_inodes
from startprof.probes.session import ProbeSession
from startprof.procfs import pids_by_comm
from startprof.recorder import (
    ALL_PROBES,
    BEHIND_FRACTION,
    HOUSEKEEPING_S,
    POLL_MS,
    Recorder,
    RecordOptions,
    Stop,
    alive_events,
    followed_roots,
    stop_signals,
)
from startprof.recording import SUFFIX, RecordingHeader, RecordingWriter, events_frame

ANALYSIS_INTERVAL_S: Final = 0.3
DRAIN_S: Final = 0.3
OVERDUE_NS: Final = 500_000_000
"""A pod's decision this late (its settle deadline passed this long ago without the agent
running: SCHED_IDLE on a saturated node) moves the agent to nice 10 until nothing is overdue,
so a trace still leaves within issue 18's 2 s when the node has no idle time to give."""
INIT_PID_NS_INO: Final = 0xEFFFFFFC
"""The inode of the initial pid namespace (the kernel's PROC_PID_INIT_INO, fixed since 3.8)."""
EXPORT_TIMEOUT_S: Final = 2.0
RETRY_FIRST_S: Final = 1.0
RETRY_MAX_S: Final = 30.0
UNSENT_MAX: Final = 1000
"""Pod starts kept for a receiver that does not take them (about 100 MB of spans at most)."""
ROTATE_SHARE: Final = 4
"""--keep rotates a file at this fraction of --max-size, so the newest files always fit."""

MessageCallback = Callable[[str], None]


@dataclass(frozen=True)
class AgentOptions:
    cri_socket: str
    otlp_url: str | None = None
    """None: no OTLP at all; "": the endpoint from the environment or the default."""
    otlp_protocol: str | None = None
    keep_dir: Path | None = None
    max_size: int = 1 << 30
    duration: float | None = None
    pod_timeout: float = POD_TIMEOUT_S
    metrics_port: int | None = None
    ringbuf_pages: int = 1024
    probes: Sequence[str] = ALL_PROBES
    interval: float = ANALYSIS_INTERVAL_S
    idle: bool = True
    """SCHED_IDLE as ``record``; False: nice 10, which a saturated node cannot starve."""


@dataclass
class AgentSummary:
    pods_sent: int = 0
    """Pod starts whose traces left (or that were decided, without OTLP)."""
    pods_lost: int = 0
    """Pod starts whose traces never left: the receiver failed them until the agent stopped,
    or ``UNSENT_MAX`` newer ones waited."""
    export_failures: int = 0
    analysis_failures: int = 0
    drops: int = 0
    cri_bytes_lost: int = 0
    stop_reason: str = ""
    kept: tuple[Path, ...] = ()
    analysis_s: float = 0.0
    """Wall time spent in the incremental analysis."""
    analyses: int = 0
    """How many times the window was analysed (a step that can decide nothing analyses not)."""
    export_latency_s: tuple[float, ...] = ()
    """Per pod sent as done: from the pod's end to the export's completion."""


HOST_PID_FIX: Final = "run it on the host, or in a pod with hostPID: true (deploy/daemonset.yaml)"
CRI_NETNS_FIX: Final = "pass --cri-socket (or mount the node's /run/containerd into the pod)"


def in_host_pid_namespace(ns_path: str = "/proc/self/ns/pid") -> bool:
    """Is this process in the host's pid namespace? Raises OSError when it cannot tell."""
    return os.stat(ns_path).st_ino == INIT_PID_NS_INO


def ensure_host_pid_namespace(ns_path: str = "/proc/self/ns/pid") -> None:
    """Refuse to run outside the host's pid namespace: the pids the probes report and the
    ``/proc`` the recorder reads would be another namespace's, and containerd invisible."""
    try:
        host = in_host_pid_namespace(ns_path)
    except OSError as exc:
        raise EnvironmentProblem(f"cannot read {ns_path}: {exc.strerror}") from exc
    if not host:
        raise EnvironmentProblem(
            "startprof agent runs in a pid namespace that is not the host's", fix=HOST_PID_FIX
        )


def cri_socket_in_containerd_netns(socket_path: str, proc: str = "/proc") -> bool | None:
    """Does a containerd listen on ``socket_path``, as its own network namespace's
    ``/proc/<pid>/net/unix`` says (not the caller's, which in a pod may be another)?
    None when no containerd runs."""
    pids = pids_by_comm(("containerd",), proc)
    if not pids:
        return None
    return any(
        unix_socket_inodes(socket_path, listening=True, proc_net_unix=f"{proc}/{pid}/net/unix")
        for pid in pids
    )


class TraceSink:
    """Sends pod starts as OTLP traces through one long-lived SDK exporter.

    A failed export loses nothing at once: its pod starts wait, in order, and go again with the
    next ones, or on their own once a backoff (1 s, doubling to 30 s) has passed. At most
    ``UNSENT_MAX`` wait; older ones are then lost, and counted (``lost``). A receiver that is
    slow rather than down (its 2 s deadline missed on a saturated node) thus costs latency, not
    traces: a 1-hour soak lost 4 of 682 to one such miss before this queue.
    """

    def __init__(
        self, url: str, protocol: str | None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.protocol = resolve_protocol(protocol)
        self.endpoint = resolve_endpoint(self.protocol, url or None)
        transport = "gRPC" if self.protocol == "grpc" else "HTTP"
        self.target = f"{self.endpoint} over OTLP/{transport}"
        self._exporter = make_span_exporter(self.protocol, self.endpoint, EXPORT_TIMEOUT_S)
        self._sender = OtlpTraceSender(self._exporter, self.target, _address(self.endpoint))
        self._clock = clock
        self.waiting: list[Emitted] = []
        """Pod starts whose export failed, oldest first: they go with the next export."""
        self.lost = 0
        self._retry_at = 0.0
        self._backoff = RETRY_FIRST_S

    def deliver(
        self, pods: Sequence[Emitted], final: bool = False
    ) -> tuple[list[Emitted], StartprofError | None]:
        """Sends the waiting pod starts and then ``pods``; returns those that left, and why
        none did. With nothing new and not ``final``, the waiting ones go only once their
        backoff has passed; when a ``final`` export fails, what waited is lost."""
        self.waiting.extend(pods)
        now = self._clock()
        if not self.waiting or (not pods and not final and now < self._retry_at):
            return [], None
        try:
            spans = SdkSpanBuilder().build([describe_pod(e.pod) for e in self.waiting])
            self._sender.send(spans)
        except StartprofError as exc:
            self._retry_at = now + self._backoff
            self._backoff = min(self._backoff * 2, RETRY_MAX_S)
            over = len(self.waiting) - (0 if final else UNSENT_MAX)
            if over > 0:
                self.lost += over
                del self.waiting[:over]
            return [], exc
        sent, self.waiting = self.waiting, []
        self._retry_at, self._backoff = 0.0, RETRY_FIRST_S
        return sent, None

    def close(self) -> None:
        self._exporter.shutdown()


class RotatingRecordings:
    """``--keep DIR --max-size N``: recordings of what the agent saw, for ``analyze`` later.

    Each file is a whole recording (its own header and the processes alive when it began) and
    is closed at ``max_size / 4``; the oldest files go while the directory holds more than
    ``max_size``.
    """

    def __init__(
        self, directory: Path, max_size: int, header: Callable[[], RecordingHeader]
    ) -> None:
        self.directory = directory
        self.max_size = max_size
        self._header = header
        self._writer: RecordingWriter | None = None
        self._serial = 0
        self.kept: list[Path] = []

    def open(self, first_events: Sequence[Event]) -> None:
        self._serial += 1
        stamp = time.strftime("%Y%m%d-%H%M%S")
        path = self.directory / f"startprof-agent-{stamp}-{self._serial:04d}{SUFFIX}"
        self._writer = RecordingWriter(path, self._header())
        self._writer.write(first_events)
        self._writer.flush()
        self.kept.append(path)

    def write(self, events: Sequence[Event]) -> None:
        if self._writer is not None and events:
            self._writer.write(events)

    def rotate_if_full(
        self, end: dict[str, Any], first_events: Callable[[], Sequence[Event]]
    ) -> None:
        if self._writer is None:
            return
        try:
            size = self._writer.path.stat().st_size
        except OSError:
            size = 0
        if size < self.max_size // ROTATE_SHARE:
            return
        self._writer.close(end)
        self.open(first_events())
        while len(self.kept) > 1 and sum(_size(p) for p in self.kept) > self.max_size:
            old = self.kept.pop(0)
            old.unlink(missing_ok=True)

    def close(self, end: dict[str, Any] | None) -> None:
        if self._writer is not None:
            self._writer.close(end)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


class Agent(Recorder):
    """The recorder's probes and decoding, with incremental analysis in place of a file."""

    def __init__(
        self,
        options: AgentOptions,
        on_message: MessageCallback | None = None,
        session_factory: Callable[..., ProbeSession] = ProbeSession,
        on_ready: Callable[[], None] | None = None,
        on_sent: Callable[[Sequence[Emitted]], None] | None = None,
    ) -> None:
        super().__init__(
            RecordOptions(
                output=Path(os.devnull),
                cri_socket=options.cri_socket,
                probes=options.probes,
                ringbuf_pages=options.ringbuf_pages,
            ),
            session_factory=session_factory,
            on_ready=on_ready,
        )
        self.agent_options = options
        self.on_message = on_message or (lambda _m: None)
        self.on_sent = on_sent
        self.summary = AgentSummary()
        self._buffer: list[Event] = []
        self._keeper: RotatingRecordings | None = None

    def _preflight(self) -> None:
        super()._preflight()
        ensure_host_pid_namespace()
        socket_path = self.agent_options.cri_socket
        if cri_socket_in_containerd_netns(socket_path) is False:
            raise InputError(
                f"no containerd listens on the CRI socket {socket_path}", fix=CRI_NETNS_FIX
            )

    def _initial_targets(self) -> tuple[list[int], set[tuple[int, int]]]:
        try:
            return super()._initial_targets()
        except InputError as exc:
            raise InputError(
                f"nothing listens on the CRI socket {self.agent_options.cri_socket}",
                fix="pass --cri-socket with containerd's socket (in a pod: mount the node's "
                "/run/containerd)",
            ) from exc

    def _header_extra(self) -> dict[str, Any]:
        return {"agent": True}

    def run_agent(self) -> AgentSummary:
        opts = self.agent_options
        # a bad endpoint is an error before anything is loaded (and without root)
        sink = TraceSink(opts.otlp_url, opts.otlp_protocol) if opts.otlp_url is not None else None
        session, _ = self.open_session()
        metrics: AgentMetrics | None = None
        stop = Stop()
        end_attrs: dict[str, Any] | None = None
        try:
            metrics = self._metrics(sink)
            with stop_signals(stop):
                header = self.start_session(session)
                core = IncrementalAnalyzer(
                    host=header.host,
                    kernel=header.kernel,
                    clock_offset_ns=header.clock_offset_ns,
                    start_monotonic_ns=header.start_monotonic_ns,
                    pod_timeout_s=opts.pod_timeout,
                )
                if opts.keep_dir is not None:
                    self._keeper = RotatingRecordings(opts.keep_dir, opts.max_size, self.header)
                alive = self._alive()
                self._buffer.extend(alive)
                if self._keeper is not None:
                    self._keeper.open(alive)
                if self.on_ready is not None:
                    self.on_ready()
                self._priority.yield_to_workload()
                if not opts.idle:
                    self._priority.catch_up()
                behind = BEHIND_FRACTION * opts.ringbuf_pages * mmap.PAGESIZE
                deadline = None if opts.duration is None else time.monotonic() + opts.duration
                housekeeping = analysed = time.monotonic()
                while stop.reason is None:
                    self._take(self._process(session.poll(POLL_MS)))
                    if session.last_poll_bytes >= behind and self._priority.catch_up():
                        self.on_message("fell behind: leaving SCHED_IDLE for nice 10")
                    now = time.monotonic()
                    if deadline is not None and now >= deadline:
                        stop.reason = "duration reached"
                    if now - housekeeping >= HOUSEKEEPING_S:
                        housekeeping = now
                        self._take(self._housekeeping(session))
                        if metrics is not None:
                            metrics.set_drops(self.stats.drops)
                            metrics.set_kernel_errors(session.kernel_errors())
                            metrics.set_cri_bytes_lost(self.stats.cri_bytes_lost)
                        if self._keeper is not None:
                            self._keeper.rotate_if_full(self._file_end(session), self._alive)
                    due = core.next_due_ns()
                    now_ns = time.monotonic_ns()
                    if now - analysed >= opts.interval or (due is not None and now_ns >= due):
                        analysed = now
                        if due is not None and now_ns - due >= OVERDUE_NS:
                            self._priority.boost()  # idle time did not come: take some
                        self._analyse(core, sink, metrics, flush=False)
                        due = core.next_due_ns()
                        if due is None or time.monotonic_ns() - due < OVERDUE_NS:
                            self._priority.relax()
                until = time.monotonic() + DRAIN_S
                while time.monotonic() < until:
                    self._take(self._process(session.poll(50)))
                self._take(self._decoder.finish())
                self._take([self._drops_event(session)])
                self._analyse(core, sink, metrics, flush=True)
                self.summary.stop_reason = stop.reason or ""
                end_attrs = self._file_end(session)
        finally:
            if self._keeper is not None:
                self._keeper.close(end_attrs)
                self.summary.kept = tuple(self._keeper.kept)
            session.close()
            if sink is not None:
                sink.close()
            if metrics is not None:
                metrics.set_drops(self.stats.drops)
                metrics.set_cri_bytes_lost(self._cri_bytes.settle())
                metrics.shutdown()
        self.summary.drops = self.stats.drops
        self.summary.cri_bytes_lost = self._cri_bytes.settle()
        return self.summary

    def _metrics(self, sink: TraceSink | None) -> AgentMetrics | None:
        readers = []
        if sink is not None:
            readers.append(otlp_metric_reader(sink.protocol, sink.endpoint))
        if self.agent_options.metrics_port is not None:
            try:
                readers.append(prometheus_reader(self.agent_options.metrics_port))
            except OSError as exc:
                raise InputError(
                    f"cannot serve metrics on port {self.agent_options.metrics_port}: "
                    f"{exc.strerror or exc}",
                    fix="choose another --metrics-port",
                ) from exc
        return AgentMetrics(socket.gethostname(), readers) if readers else None

    def _alive(self) -> list[Event]:
        """``proc`` events of the followed containerd, shims and kubelet, and their trees."""
        return alive_events(followed_roots(self._listeners, self.agent_options.cri_socket))

    def _take(self, events: Sequence[Event]) -> None:
        if events:
            self._buffer.extend(events)
            if self._keeper is not None:
                self._keeper.write(events)

    def _analyse(
        self,
        core: IncrementalAnalyzer,
        sink: TraceSink | None,
        metrics: AgentMetrics | None,
        *,
        flush: bool,
    ) -> None:
        if self._buffer:
            core.add(events_frame(self._buffer))
            self._buffer = []
        core.drops = self.stats.drops
        now = time.monotonic_ns()
        unnamed = core.stats.unnamed_calls
        began = time.perf_counter()
        try:
            sent = core.flush(now) if flush else core.step(now)
        except Exception as exc:  # a bug in the analysis must not stop the node's agent
            self.summary.analysis_failures += 1
            self.on_message(f"analysis failed ({type(exc).__name__}: {exc}); this is a bug")
            return
        finally:
            self.summary.analysis_s += time.perf_counter() - began
            self.summary.analyses = core.stats.analyses
        if metrics is not None and core.stats.unnamed_calls > unnamed:
            metrics.add_unnamed(core.stats.unnamed_calls - unnamed)
        if metrics is not None and sent:
            metrics.observe(e.pod for e in sent)
        delivered = sent
        if sink is not None:
            delivered = self._deliver(sink, metrics, sent, flush)
        if not delivered:
            return
        done = time.time_ns()
        self.summary.pods_sent += len(delivered)
        self.summary.export_latency_s += tuple(
            (done - e.pod.end_ns) / 1e9 for e in delivered if e.reason == "done"
        )
        if self.on_sent is not None:
            self.on_sent(delivered)

    def _deliver(
        self,
        sink: TraceSink,
        metrics: AgentMetrics | None,
        sent: Sequence[Emitted],
        final: bool,
    ) -> list[Emitted]:
        lost = sink.lost
        delivered, error = sink.deliver(sent, final)
        if error is not None:
            self.summary.export_failures += 1
            if metrics is not None:
                metrics.export_failures.add(1)
            if final:
                self.on_message(f"{sink.lost - lost} pod start(s) not sent: {error}")
            else:
                self.on_message(f"{len(sink.waiting)} pod start(s) wait to be sent again: {error}")
        if sink.lost > lost and not final:
            self.on_message(f"{sink.lost - lost} pod start(s) lost: {UNSENT_MAX} already waited")
        self.summary.pods_lost = sink.lost
        return delivered

    def _file_end(self, session: ProbeSession) -> dict[str, Any]:
        return {
            "end_monotonic_ns": time.monotonic_ns(),
            "stop_reason": "rotated" if self.summary.stop_reason == "" else "agent stopped",
            "drops": self.stats.drops,
            "drops_per_cpu": session.drops(),
            "kernel_errors": session.kernel_errors(),
            "cri_calls": self.stats.cri_calls,
            "cri_bytes_lost": self._cri_bytes.settle(),
            "followed_containerd": self.stats.followed_containerd,
            "recorder_priority": self._priority.mode,
        }
