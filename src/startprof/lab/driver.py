"""A kubelet-like CRI driver: starts pods over CRI gRPC the way the kubelet does and writes
ground truth for every call.

Per pod (kubelet order): Version, RunPodSandbox, ImageStatus (PullImage only when missing),
then every init container CreateContainer, StartContainer and ContainerStatus until it exited
with 0, then every app container CreateContainer and StartContainer, then ContainerStatus of
each until running. Tear-down, after every pod started: StopContainer, RemoveContainer,
StopPodSandbox, RemovePodSandbox, rmdir of the pod cgroups (containerd never removes them).
Pods start on ``concurrency`` threads over one gRPC channel, like the kubelet's pod workers.

``kind`` (``startprof.lab.kinds``) chooses what kind of pod a run starts: hostNetwork, failing
in a phase, crash-looping (restarted with ``attempt`` + 1 after a shortened back-off), with a
sidecar, pulling slowly while others start, or beside a container ctr runs in another
containerd namespace. Like the kubelet, each container's image is ensured (ImageStatus, then
PullImage when missing) right before it is created.
"""

from __future__ import annotations

import contextlib
import gc
import random
import secrets
import shutil
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Final, TypeVar

from startprof.cri.api import short_method
from startprof.cri.proto import api_pb2 as api
from startprof.errors import CriError, InputError, LabError
from startprof.lab import cri as m
from startprof.lab.cri import CriCallError, CriClient, status_name
from startprof.lab.foreign import run_foreign_container
from startprof.lab.host import remove_pod_cgroups
from startprof.lab.images import APP, REGISTRY_HOST
from startprof.lab.kinds import (
    BACKOFF_S,
    FOREIGN_NAMESPACE,
    MAX_RESTARTS,
    MISSING_REPOSITORY,
    SLOW_REPOSITORY,
    STAY_UP_S,
    ContainerPlan,
    PodKind,
    pod_kind,
)
from startprof.lab.kubelet import (
    pod_annotations,
    pod_cgroup_parent,
    pod_labels,
    pod_log_directory,
)
from startprof.lab.oci import LayerFile, OciLayout, build_image, build_layered_image
from startprof.lab.paths import LabPaths
from startprof.lab.registry import Registry, registry_log_beside, write_served
from startprof.lab.state import app_image, load_state
from startprof.lab.teardown import quiet_call
from startprof.lab.truth import STATUS_OK, TruthWriter
from startprof.stats import median, p95

NAMESPACE = "startprof"
Progress = Callable[[str], None]
POLL_INTERVAL = 0.005
STAY_UP_POLL = 0.05  # coarser while a started container must stay up: fewer calls recorded
SLOW_PULL_SECONDS = 3.0
RELIST_PERIOD = 1.0  # the kubelet's PLEG relist period
INIT_TIMEOUT = 60.0
PULL_REPOSITORY = "lab/pull-app"  # --pull's image of its own, tagged with the run id
PULL_SMALL_FILES = 200  # layer 2 of the pull image: this many files of 1-4 KiB
PULL_BIG_BYTES = 3 << 19
"""Layer 3: one incompressible file of 1.5 MiB. Not just over a MiB multiple: containerd copies a
fetch in 1 MiB buffers, so a blob whose last few bytes follow a full buffer is read to its end
only after that buffer was hashed and written, 5-10 ms after the registry sent it
(docs/probes/image.md); the registry's log could not time such a fetch's end."""
PULL_RATE: Final = 50_000_000
"""Bytes per second of the ``--pull`` registry's blob bodies: a registry across a network
(400 Mbit/s). Served from memory at once, a blob is in containerd's socket buffer before
containerd reads it (a 2 MB layer: the registry done in 1 ms, containerd's last read 45 ms
later), so the registry's log would time the kernel's buffering, not the fetch."""
_T = TypeVar("_T")


@dataclass(frozen=True)
class PodResult:
    name: str
    uid: str
    sandbox_id: str
    start_ms: float | None  # first CRI call to every container running; None if it failed
    error: str | None
    restarts: int = 0  # container restarts (re-creates with attempt + 1) during the start


@dataclass(frozen=True)
class CallStat:
    label: str  # short CRI method name or "pod start"
    count: int
    median_ms: float
    p95_ms: float


@dataclass
class RunResult:
    """What ``run_pods`` did: every truth record, and per-pod outcomes."""

    handler: str
    records: list[dict[str, Any]] = field(default_factory=list)
    pods: list[PodResult] = field(default_factory=list)
    truth_paths: list[Path] = field(default_factory=list)
    image: str = ""
    # what the lab registry served, when the run started one (registry.SERVED_KEYS), and
    # the files it was written to
    served: list[dict[str, Any]] = field(default_factory=list)
    served_paths: list[Path] = field(default_factory=list)

    @property
    def pod_start_ms(self) -> list[float]:
        """Durations of the pods that started: first CRI call to all containers running."""
        return [p.start_ms for p in self.pods if p.start_ms is not None]

    @property
    def errors(self) -> list[str]:
        return [f"{p.name}: {p.error}" for p in self.pods if p.error]

    def stats(self) -> list[CallStat]:
        """Median and p95 per CRI method (in first-call order) and for the whole pod start."""
        by_method: dict[str, list[float]] = {}
        for r in self.records:
            if r["status"] == STATUS_OK:
                ms = (r["end_monotonic_ns"] - r["start_monotonic_ns"]) / 1e6
                by_method.setdefault(short_method(r["method"]), []).append(ms)
        out = [CallStat(k, len(v), median(v), p95(v)) for k, v in by_method.items()]
        if self.pod_start_ms:
            out.append(
                CallStat(
                    "pod start",
                    len(self.pod_start_ms),
                    median(self.pod_start_ms),
                    p95(self.pod_start_ms),
                )
            )
        return out


class _Recorder:
    """Times CRI calls and writes one truth record per call."""

    def __init__(self, writer: TruthWriter | None, records: list[dict[str, Any]]) -> None:
        self._writer = writer
        self._records = records
        self._lock = threading.Lock()

    def call(
        self,
        pod: _Pod | None,
        method: str,
        fn: Callable[[], _T],
        container: str = "",
        container_id: str = "",
        ids: Callable[[_T], tuple[str, str]] | None = None,
    ) -> _T:
        """Run ``fn`` (one CRI call) and record it. ``ids`` maps a reply to (sandbox, container)
        ids learnt from it (RunPodSandbox, CreateContainer)."""
        start_wall, start_mono = time.time_ns(), time.monotonic_ns()
        error: BaseException | None = None
        result: _T | None = None
        try:
            result = fn()
        except CriError as exc:
            error = exc
        end_mono, end_wall = time.monotonic_ns(), time.time_ns()
        sandbox_id = pod.sandbox_id if pod else ""
        if result is not None and ids is not None:
            new_sandbox, new_container = ids(result)
            sandbox_id = new_sandbox or sandbox_id
            container_id = new_container or container_id
        record = {
            "pod": pod.name if pod else "",
            "namespace": NAMESPACE if pod else "",
            "uid": pod.uid if pod else "",
            "sandbox_id": sandbox_id,
            "container": container,
            "container_id": container_id,
            "method": method,
            "start_monotonic_ns": start_mono,
            "end_monotonic_ns": end_mono,
            "start_wall_ns": start_wall,
            "end_wall_ns": end_wall,
            "status": STATUS_OK if error is None else status_name(error),
            "error": "" if error is None else str(getattr(error, "details", "") or error),
        }
        with self._lock:
            self._records.append(record)
        if self._writer is not None:
            self._writer.write(record)
        if error is not None:
            raise error
        assert result is not None
        return result


@dataclass
class _Pod:
    name: str
    uid: str
    handler: str
    config: api.PodSandboxConfig
    sandbox_id: str = ""
    container_ids: list[tuple[str, str]] = field(default_factory=list)  # (name, id)
    start_ms: float | None = None
    error: str | None = None
    plan: tuple[ContainerPlan, ...] = ()  # empty: the run's plain containers
    images: dict[str, str] = field(default_factory=dict)  # image role -> reference
    restarts: int = 0


def sandbox_config(
    paths: LabPaths, name: str, uid: str, run_id: str, kind: PodKind | None = None
) -> api.PodSandboxConfig:
    """The PodSandboxConfig the kubelet sends (cgroupfs driver): pod network, or the node's
    for a hostNetwork ``kind`` (with no hostname, as the kubelet leaves it, unless the kind
    sets one to make runc fail)."""
    host_network = kind is not None and kind.host_network
    hostname = name if kind is None or kind.hostname else ""
    return api.PodSandboxConfig(
        metadata=api.PodSandboxMetadata(name=name, uid=uid, namespace=NAMESPACE, attempt=0),
        hostname=hostname,
        log_directory=pod_log_directory(paths, name, NAMESPACE, uid),
        dns_config=api.DNSConfig(),
        labels={**pod_labels(name, NAMESPACE, uid), "startprof.lab/run": run_id},
        annotations=pod_annotations(),
        linux=api.LinuxPodSandboxConfig(
            cgroup_parent=pod_cgroup_parent(uid),
            security_context=api.LinuxSandboxSecurityContext(
                namespace_options=api.NamespaceOption(
                    network=api.NODE if host_network else api.POD, pid=api.CONTAINER, ipc=api.POD
                ),
                seccomp=api.SecurityProfile(profile_type=api.SecurityProfile.Unconfined),
            ),
        ),
    )


def container_config(
    pod: _Pod,
    name: str,
    image: str,
    init: bool,
    restart_index: int = 0,
    plan: ContainerPlan | None = None,
) -> api.ContainerConfig:
    """The ContainerConfig the kubelet sends; init containers get ``app init`` (exit 0), a
    ``plan`` its command and its attempt's arguments (``app exit 1`` for a crash)."""
    args = plan.args(restart_index) if plan is not None else ["init"] if init else []
    network = pod.config.linux.security_context.namespace_options.network
    return api.ContainerConfig(
        metadata=api.ContainerMetadata(name=name, attempt=restart_index),
        image=api.ImageSpec(image=image),
        command=list(plan.command) if plan is not None else [],
        args=args,
        envs=[api.KeyValue(key="STARTPROF_POD", value=pod.name.encode())],
        labels={
            "io.kubernetes.container.name": name,
            **pod_labels(pod.name, NAMESPACE, pod.uid),
        },
        annotations={
            "io.kubernetes.container.restartCount": str(restart_index),
            "io.kubernetes.container.terminationMessagePath": "/dev/termination-log",
        },
        log_path=f"{name}/{restart_index}.log",
        linux=api.LinuxContainerConfig(
            resources=api.LinuxContainerResources(
                cpu_period=100000, cpu_shares=2, oom_score_adj=1000
            ),
            security_context=api.LinuxContainerSecurityContext(
                namespace_options=api.NamespaceOption(
                    network=network, pid=api.CONTAINER, ipc=api.POD
                ),
                seccomp=api.SecurityProfile(profile_type=api.SecurityProfile.Unconfined),
                masked_paths=["/proc/kcore", "/proc/keys", "/proc/timer_list", "/sys/firmware"],
                readonly_paths=[
                    "/proc/bus",
                    "/proc/fs",
                    "/proc/irq",
                    "/proc/sys",
                    "/proc/sysrq-trigger",
                ],
            ),
        ),
    )


def run_pods(
    socket: str,
    handler: str,
    pods: int = 1,
    concurrency: int = 1,
    containers: int = 1,
    init_containers: int = 0,
    pull: bool = False,
    keep: bool = False,
    truth_path: Path | None = None,
    progress: Progress | None = None,
    age_pods: int = 0,
    age_seconds: float = 0.0,
    before_batch: Callable[[], None] | None = None,
    poll: bool = False,
    kind: str = "plain",
    slow_pull_seconds: float = SLOW_PULL_SECONDS,
) -> RunResult:
    """Start ``pods`` pods on the lab behind ``socket`` with runtime handler ``handler``.

    Ground truth goes to ``truth_path`` (if given) and to the lab's default truth file. When
    a registry serves the run (``pull``, the slow-pull and bad-image kinds), what it served
    goes to ``DIR/registry.jsonl`` and beside ``truth_path`` (``registry_log_beside``).

    ``pull`` pulls an image of three layers of its own (``pull_image``) instead of using the
    lab's app image; it is removed afterwards unless ``keep``.

    Pod failures do not raise: they are in ``RunResult.errors`` (after tear-down) so that the
    caller still gets the truth of the calls that were made.

    Aged mode (``age_pods``, ``age_seconds`` or ``before_batch``), so that a recording can
    start on a connection older than itself, as a kubelet's is: on the channel the batch will
    use, start and remove ``age_pods`` pods, poll for ``age_seconds``, then call
    ``before_batch`` (``lab run`` prints ``aged`` and waits for SIGUSR1). Only the calls after
    that are ground truth. In aged mode, or with ``poll``, a PLEG-like relist runs every second
    on the same channel until the end.

    ``kind`` names a pod kind of ``startprof.lab.kinds`` (``plain`` by default); with
    ``slow-pull``, the first pod's pull takes about ``slow_pull_seconds``.
    """
    say = progress or (lambda _: None)
    _check_counts(pods, concurrency, containers, init_containers)
    pod_type = pod_kind(kind)
    if slow_pull_seconds <= 0:
        raise InputError(f"--slow-pull-seconds must be positive, got {slow_pull_seconds:g}")
    if age_pods < 0 or age_seconds < 0:
        raise InputError("--age-pods and --age-seconds must be at least 0")
    aged = age_pods > 0 or age_seconds > 0 or before_batch is not None
    paths = LabPaths.from_socket(socket)
    if not Path(socket).exists():
        raise LabError(f"the lab is not up (no socket {socket})", fix="sudo startprof lab up")
    state = load_state(paths)
    if state is None:
        raise LabError(f"{socket} is not a startprof lab socket (no {paths.lab_state})")
    if handler not in state.handlers:
        raise InputError(f"unknown runtime handler {handler!r}; valid: {', '.join(state.handlers)}")
    app_ref, archive = app_image(paths)
    image = app_ref
    truth_files = [paths.truth] + ([Path(truth_path)] if truth_path else [])
    result = RunResult(handler=handler, truth_paths=truth_files)
    run_id = secrets.token_hex(3)
    with (
        CriClient(socket) as client,
        TruthWriter(truth_files) as writer,
        _Poller(client, enabled=aged or poll) as poller,
    ):
        rec = _Recorder(writer, result.records)
        if aged:
            _age(client, poller.rec, paths, handler, image, run_id, age_pods, concurrency, say)
            say(f"polling for {age_seconds:g} s")
            time.sleep(age_seconds)
            if before_batch is not None:
                before_batch()
        poller.rec = rec
        registry: Registry | None = None
        images: dict[str, str] = {}
        if pull:
            layout = pull_image(paths, run_id)
            registry = Registry([layout], rate=PULL_RATE).start(paths.registry_hosts)
            image = registry.reference(next(iter(layout.images())))
            size = sum(len(b) for b in layout.blobs.values())
            say(f"serving {image}: 3 layers, {size / 1e6:.1f} MB at {PULL_RATE / 1e6:g} MB/s")
        elif pod_type.image == "slow":
            layout = slow_image(paths, run_id)
            rate = max(1, int(sum(len(b) for b in layout.blobs.values()) / slow_pull_seconds))
            registry = Registry([layout], rate=rate).start(paths.registry_hosts)
            images["slow"] = registry.reference(next(iter(layout.images())))
            say(f"serving {images['slow']} at {rate} B/s")
        elif pod_type.image == "missing":
            registry = Registry([]).start(paths.registry_hosts)
            images["missing"] = f"localhost:{registry.port}/{MISSING_REPOSITORY}:1"
        result.image = image
        pull_lock = threading.Lock()
        plan = []
        for i in range(pods):
            name, uid = f"sp-{run_id}-{i:03d}", str(uuid.uuid4())
            config = sandbox_config(paths, name, uid, run_id, pod_type)
            containers_of = tuple(pod_type.containers(i, containers, init_containers))
            plan.append(_Pod(name, uid, handler, config, plan=containers_of, images=images))
        if pod_type.foreign:
            cid = run_foreign_container(paths, archive, app_ref, FOREIGN_NAMESPACE)
            say(f"ran container {cid} with ctr in containerd namespace {FOREIGN_NAMESPACE}")
        say(f"starting {pods} {kind} pod(s) on {handler}, {concurrency} at a time")
        try:
            with _timing():
                _for_each(
                    plan,
                    concurrency,
                    lambda p: _start_pod(
                        client, rec, p, image, containers, init_containers, pull_lock
                    ),
                )
            started = sum(p.start_ms is not None for p in plan)
            say(f"{started} of {pods} pod(s) running")
        finally:
            if not keep:
                say(f"tearing down {pods} pod(s)")
                _for_each(plan, concurrency, lambda p: _teardown_pod(client, rec, p))
            if registry is not None:
                registry.stop()
                result.served = registry.served
                result.served_paths = _write_served_logs(paths, truth_path, result.served)
                if pull and not keep:
                    quiet_call(
                        lambda: rec.call(None, m.REMOVE_IMAGE, lambda: client.remove_image(image))
                    )
                if "slow" in images and not keep:
                    slow = images["slow"]
                    quiet_call(
                        lambda: rec.call(None, m.REMOVE_IMAGE, lambda: client.remove_image(slow))
                    )
    result.pods = [
        PodResult(p.name, p.uid, p.sandbox_id, p.start_ms, p.error, p.restarts) for p in plan
    ]
    return result


# How long a thread may hold the GIL while another waits for it. Python's default, 5 ms, is
# how late a worker whose reply has arrived can hear it while the poller or another worker runs
# bytecode: the ground truth's own error, on a loaded 2-core machine a median of 1.6 ms over a
# batch of 5 workers (an aged-connection CI run). A quarter of a millisecond bounds that wait
# at the price of more GIL hand-overs, which the pod starts can afford.
TIMING_SWITCH_INTERVAL_S: Final = 0.00025


@contextlib.contextmanager
def _timing() -> Iterator[None]:
    """While pod starts are timed: no garbage-collector pause inside a timed call (it would be
    charged to containerd; the starts allocate little, so collect after them) and short GIL
    turns, so a worker hears its reply when it comes."""
    interval = sys.getswitchinterval()
    gc.disable()
    sys.setswitchinterval(TIMING_SWITCH_INTERVAL_S)
    try:
        yield
    finally:
        sys.setswitchinterval(interval)
        gc.enable()


class _Poller:
    """The kubelet's PLEG relist on the driver's own channel: every second, ListPodSandbox with
    no filter and ListContainers with an empty one (pkg/kubelet/pleg/generic.go). Its calls go
    to ``rec``: a recorder that keeps them out of the ground truth while aging, then the run's."""

    def __init__(self, client: CriClient, enabled: bool) -> None:
        self.rec = _Recorder(None, [])
        self._client = client
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="startprof-pleg", daemon=True)
        self._enabled = enabled

    def __enter__(self) -> _Poller:
        if self._enabled:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._enabled:
            self._thread.join()

    def _run(self) -> None:
        client = self._client
        while not self._stop.is_set():
            rec = self.rec
            with contextlib.suppress(CriError):
                rec.call(
                    None,
                    m.LIST_POD_SANDBOX,
                    lambda: client.call(
                        m.LIST_POD_SANDBOX, api.ListPodSandboxRequest(), api.ListPodSandboxResponse
                    ),
                )
                rec.call(
                    None,
                    m.LIST_CONTAINERS,
                    lambda: client.call(
                        m.LIST_CONTAINERS,
                        api.ListContainersRequest(filter=api.ContainerFilter()),
                        api.ListContainersResponse,
                    ),
                )
            self._stop.wait(RELIST_PERIOD)


def _age(
    client: CriClient,
    rec: _Recorder,
    paths: LabPaths,
    handler: str,
    image: str,
    run_id: str,
    pods: int,
    concurrency: int,
    say: Progress,
) -> None:
    """Start and remove ``pods`` pods, outside the ground truth, so the channel has history."""
    if pods == 0:
        return
    plan = []
    for i in range(pods):
        name, uid = f"sp-{run_id}-age-{i:03d}", str(uuid.uuid4())
        plan.append(_Pod(name, uid, handler, sandbox_config(paths, name, uid, run_id)))
    say(f"aging the connection: {pods} pod(s) started and removed")
    lock = threading.Lock()
    try:
        _for_each(plan, concurrency, lambda p: _start_pod(client, rec, p, image, 1, 0, lock))
    finally:
        _for_each(plan, concurrency, lambda p: _teardown_pod(client, rec, p))
    failed = [p for p in plan if p.error]
    if failed:
        raise LabError(f"aging pod {failed[0].name} failed: {failed[0].error}")


def _run_layer(paths: LabPaths, run_id: str) -> list[LayerFile]:
    """The app binary and a file with the run id: a layer new to containerd at every run."""
    binary = paths.images_dir / "bin" / f"{APP.name}-{APP.tag()}"
    return [
        LayerFile(APP.binary.lstrip("/"), binary.read_bytes(), 0o755),
        LayerFile("startprof-run", run_id.encode(), 0o644),
    ]


def slow_image(paths: LabPaths, run_id: str) -> OciLayout:
    """The app binary in an image of its own (a file with the run id makes its layer new):
    containerd fetches only blobs it lacks, so the lab's own app image would pull at once."""
    image = build_image(
        f"{REGISTRY_HOST}/{SLOW_REPOSITORY}:{run_id}",
        _run_layer(paths, run_id),
        entrypoint=[APP.binary],
    )
    return image.layout()


def pull_layers(run_id: str) -> list[list[LayerFile]]:
    """Layers 2 and 3 of ``pull_image``, from a PRNG seeded by the run id (the same id, the
    same bytes): ``PULL_SMALL_FILES`` files of 1-4 KiB under ``data/small/``, then one file of
    ``PULL_BIG_BYTES`` that gzip cannot shrink, ``data/big.bin``; each with the run id."""
    rng = random.Random(f"startprof-pull-{run_id}")
    small = [
        LayerFile(f"data/small/{i:03d}", rng.randbytes(rng.randint(1024, 4096)), 0o644)
        for i in range(PULL_SMALL_FILES)
    ]
    small.append(LayerFile("data/small/startprof-run", run_id.encode(), 0o644))
    big = [
        LayerFile("data/big.bin", rng.randbytes(PULL_BIG_BYTES), 0o644),
        LayerFile("data/startprof-run", run_id.encode(), 0o644),
    ]
    return [small, big]


def pull_image(paths: LabPaths, run_id: str) -> OciLayout:
    """``--pull``'s image: the app (entrypoint and binary, as ``slow_image``) in three gzip
    layers that are all new at each run, so containerd fetches every one of them: the app and
    the run id, many small files, one large incompressible file (``pull_layers``)."""
    image = build_layered_image(
        f"{REGISTRY_HOST}/{PULL_REPOSITORY}:{run_id}",
        [_run_layer(paths, run_id), *pull_layers(run_id)],
        entrypoint=[APP.binary],
    )
    return image.layout()


def _write_served_logs(
    paths: LabPaths, truth_path: Path | None, served: list[dict[str, Any]]
) -> list[Path]:
    """Write the registry's served log to ``DIR/registry.jsonl`` and beside ``truth_path``."""
    out = [paths.registry_log] + ([registry_log_beside(truth_path)] if truth_path else [])
    out = list(dict.fromkeys(out))
    for p in out:
        write_served(served, p)
    return out


def _check_counts(pods: int, concurrency: int, containers: int, init_containers: int) -> None:
    for name, value, low in (
        ("--pods", pods, 1),
        ("--concurrency", concurrency, 1),
        ("--containers", containers, 1),
        ("--init-containers", init_containers, 0),
    ):
        if value < low:
            raise InputError(f"{name} must be at least {low}, got {value}")


def _for_each(plan: list[_Pod], concurrency: int, fn: Callable[[_Pod], None]) -> None:
    if concurrency == 1:
        for p in plan:
            fn(p)
        return
    pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="startprof-pod")
    try:
        for future in [pool.submit(fn, p) for p in plan]:
            future.result()
    finally:
        # On Ctrl-C, pods not yet begun are dropped; those in flight finish so they can be
        # torn down (a half-made sandbox would otherwise leak until lab down).
        pool.shutdown(wait=True, cancel_futures=True)


def _start_pod(
    client: CriClient,
    rec: _Recorder,
    pod: _Pod,
    image: str,
    containers: int,
    init_containers: int,
    pull_lock: threading.Lock,
) -> None:
    t0 = time.monotonic_ns()
    images = {"app": image, **pod.images}
    plan = pod.plan or tuple(pod_kind("plain").containers(0, containers, init_containers))
    try:
        rec.call(pod, m.VERSION, client.version)
        reply = rec.call(
            pod,
            m.RUN_POD_SANDBOX,
            lambda: client.run_pod_sandbox(pod.config, pod.handler),
            ids=lambda r: (r.pod_sandbox_id, ""),
        )
        pod.sandbox_id = reply.pod_sandbox_id
        started: list[tuple[ContainerPlan, str, str]] = []  # (plan, image, container id)
        for c in plan:
            ref = images[c.image]
            _ensure_image(client, rec, pod, ref, pull_lock)
            cid = _create_and_start(client, rec, pod, c.name, ref, c.role == "init", plan=c)
            if c.role == "init":
                _wait_state(client, rec, pod, c.name, cid, api.CONTAINER_EXITED)
            elif c.role == "sidecar":
                # a restartable init container: the next one starts once it is running
                _wait_up(client, rec, pod, c, ref, cid)
            else:
                started.append((c, ref, cid))
        for c, ref, cid in started:
            _wait_up(client, rec, pod, c, ref, cid)
        pod.start_ms = (time.monotonic_ns() - t0) / 1e6
    except (CriError, LabError) as exc:
        pod.error = exc.message


def _ensure_image(
    client: CriClient, rec: _Recorder, pod: _Pod, image: str, pull_lock: threading.Lock
) -> None:
    """The kubelet's EnsureImageExists before each container (IfNotPresent)."""
    status = rec.call(pod, m.IMAGE_STATUS, lambda: client.image_status(image))
    if not status.image.id:
        # Like the kubelet's serialized image puller: one PullImage at a time.
        with pull_lock:
            rec.call(pod, m.PULL_IMAGE, lambda: client.pull_image(image, pod.config))


def _create_and_start(
    client: CriClient,
    rec: _Recorder,
    pod: _Pod,
    name: str,
    image: str,
    init: bool,
    attempt: int = 0,
    plan: ContainerPlan | None = None,
) -> str:
    config = container_config(pod, name, image, init, attempt, plan)
    reply = rec.call(
        pod,
        m.CREATE_CONTAINER,
        lambda: client.create_container(pod.sandbox_id, config, pod.config),
        container=name,
        ids=lambda r: ("", r.container_id),
    )
    cid = reply.container_id
    pod.container_ids.append((name, cid))
    rec.call(pod, m.START_CONTAINER, lambda: client.start_container(cid), name, cid)
    return cid


def _wait_up(
    client: CriClient, rec: _Recorder, pod: _Pod, c: ContainerPlan, image: str, cid: str
) -> None:
    """Until the container runs. One that may crash must also stay up ``STAY_UP_S``; when it
    exits it is re-created with ``attempt`` + 1 after a back-off that doubles, like the
    kubelet's (10 s there, 0.1 s here), ``MAX_RESTARTS`` times at most."""
    attempt = 0
    while True:
        if not c.crashes:
            _wait_state(client, rec, pod, c.name, cid, api.CONTAINER_RUNNING)
            return
        code = _exit_within(client, rec, pod, c.name, cid, STAY_UP_S)
        if code is None:
            return
        if attempt >= MAX_RESTARTS:
            raise LabError(
                f"container {c.name} is in CrashLoopBackOff: exit code {code} at each of "
                f"{attempt + 1} starts"
            )
        time.sleep(BACKOFF_S * 2**attempt)
        attempt += 1
        pod.restarts += 1
        cid = _create_and_start(client, rec, pod, c.name, image, False, attempt, c)


def _exit_within(
    client: CriClient, rec: _Recorder, pod: _Pod, name: str, cid: str, seconds: float
) -> int | None:
    """The exit code if the container exits within ``seconds`` of running, else None."""
    up_since: float | None = None
    deadline = time.monotonic() + INIT_TIMEOUT
    while True:
        st = rec.call(
            pod, m.CONTAINER_STATUS, lambda: client.container_status(cid), name, cid
        ).status
        now = time.monotonic()
        if st.state == api.CONTAINER_EXITED:
            return int(st.exit_code)
        if st.state == api.CONTAINER_RUNNING:
            up_since = now if up_since is None else up_since
            if now - up_since >= seconds:
                return None
        elif now > deadline:
            raise LabError(f"container {name} not running after {INIT_TIMEOUT:.0f} s")
        time.sleep(STAY_UP_POLL if up_since is not None else POLL_INTERVAL)


def _wait_state(
    client: CriClient, rec: _Recorder, pod: _Pod, name: str, cid: str, want: int
) -> None:
    deadline = time.monotonic() + INIT_TIMEOUT
    while True:
        st = rec.call(
            pod, m.CONTAINER_STATUS, lambda: client.container_status(cid), name, cid
        ).status
        if st.state == want or st.state == api.CONTAINER_EXITED:
            break
        if time.monotonic() > deadline:
            raise LabError(
                f"container {name} not {api.ContainerState.Name(want)} after {INIT_TIMEOUT:.0f} s"
            )
        time.sleep(POLL_INTERVAL)
    if st.state != want or (want == api.CONTAINER_EXITED and st.exit_code != 0):
        raise LabError(
            f"container {name} is {api.ContainerState.Name(st.state)} "
            f"(exit code {st.exit_code}, {st.reason or 'no reason'})"
        )


def _teardown_pod(client: CriClient, rec: _Recorder, pod: _Pod) -> None:
    """Kubelet order: stop and remove containers (last first), then the sandbox, then cgroups
    (also when RunPodSandbox failed: the runtime may have made them before it did)."""
    try:
        for name, cid in reversed(pod.container_ids):
            rec.call(pod, m.STOP_CONTAINER, partial(client.stop_container, cid), name, cid)
            rec.call(pod, m.REMOVE_CONTAINER, partial(client.remove_container, cid), name, cid)
        if pod.sandbox_id:
            rec.call(pod, m.STOP_POD_SANDBOX, lambda: client.stop_pod_sandbox(pod.sandbox_id))
            rec.call(pod, m.REMOVE_POD_SANDBOX, lambda: client.remove_pod_sandbox(pod.sandbox_id))
    except CriCallError as exc:
        pod.error = pod.error or f"tear-down: {exc.message}"
    left = remove_pod_cgroups(pod.config.linux.cgroup_parent)
    if left:
        pod.error = pod.error or f"pod cgroups not removed: {'; '.join(left)}"
    _remove_tree(Path(pod.config.log_directory))


def _remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
