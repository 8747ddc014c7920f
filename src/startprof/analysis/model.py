"""What the analysis produces: pods, their phase trees and critical paths.

Frozen dataclasses, so reporters and exporters can be tested from small factories. All times
here are wall-clock ns (the recording's monotonic timestamps plus its clock offset): every
output of a recording shows the same instants.

Keep in sync with ``docs/analyze.md`` (the JSON document is ``Analysis.to_dict()``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from operator import attrgetter
from typing import Any, Literal

PhaseStatus = Literal["ok", "error"]
PodStatus = Literal["ok", "restarted", "failed", "incomplete"]
"""``restarted``: up, but only after containers crashed and were restarted (a crash loop that
ended); its start runs to the first start that stayed up. ``failed``: a phase failed, or every
start of a container crashed. ``incomplete``: only part of the start is in the recording."""
POD_STATUSES: tuple[PodStatus, ...] = ("ok", "restarted", "failed", "incomplete")
STARTED_BEFORE = "started before recording"
"""``incomplete_reason`` of a pod whose sandbox was made before the recording began."""
STILL_STARTING = "still starting when the recording ended"
NO_CONTAINER_SEEN = "no container seen"
"""``incomplete_reason`` of a pod whose sandbox is in the recording and none of its containers."""


def ms(ns: int) -> float:
    """``round(ns / 1e6, 3)``, the milliseconds of the JSON document, in half the time (three
    per phase, 1.8 M at 10,000 pods). Off a tie (a remainder of exactly 500 ns), and below
    2**53 ns (104 days), the float ``ns / 1e6`` is within ``ns / 1e6 * 2**-53`` < 1e-6 ms of
    the exact value, nearer than the tie is, so rounding the integer gives what rounding the
    float does; and ``k / 1000`` is the float nearest the decimal, as ``round`` returns.
    Ties, negatives and longer spans go through ``round`` itself."""
    if 0 <= ns < 1 << 53:
        whole, rest = divmod(ns, 1000)
        if rest != 500:
            return (whole + (rest > 500)) / 1000
    return round(ns / 1e6, 3)


@dataclass(frozen=True, slots=True)
class Phase:
    """One span of a pod start. ``name`` is canonical (docs/architecture.md), e.g.
    ``cni.plugin bridge``."""

    id: str
    """Unique within its pod and stable for the same recording, e.g. ``sandbox/cni.add/1``."""
    parent_id: str | None
    name: str
    start_ns: int
    end_ns: int
    status: PhaseStatus = "ok"
    error: str | None = None
    on_critical_path: bool = False
    self_ns: int = 0
    """Time this phase holds the critical path itself (0 when it is not on it)."""
    attributes: Mapping[str, Any] = field(default_factory=dict)
    """pid, argv, runtime, cni_plugin, netlink op counts, source ("cri" or "kernel"), ..."""

    @property
    def duration_ns(self) -> int:
        return self.end_ns - self.start_ns

    def fields(self) -> tuple[Any, ...]:
        """Its fields in declaration order: ``Phase(*phase.fields())`` equals ``phase``."""
        return (
            self.id,
            self.parent_id,
            self.name,
            self.start_ns,
            self.end_ns,
            self.status,
            self.error,
            self.on_critical_path,
            self.self_ns,
            self.attributes,
        )

    def on_path(self, on_critical_path: bool, self_ns: int) -> Phase:
        """This phase with its critical-path fields set (a direct call: ``replace`` is 5x slower
        and runs for every phase of every pod)."""
        copy = new_phase(*self.fields())
        mark_on_path(copy, on_critical_path, self_ns)  # nobody holds the copy yet
        return copy

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        """Pickled as its fields, rebuilt by ``new_phase``: the generated state methods of a frozen
        slotted class set each field through Python, a third of a pod's time to load (a worker
        of ``analyze --jobs`` hands 59 phases per pod back)."""
        return new_phase, self.fields()

    @property
    def kind(self) -> str:
        """The canonical phase name without its subject: ``cni.plugin bridge`` -> ``cni.plugin``."""
        return self.name.split(" ", 1)[0]

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "parent_id": self.parent_id,
            "name": self.name,
            "start_wall_ns": self.start_ns,
            "end_wall_ns": self.end_ns,
            "duration_ms": ms(self.end_ns - self.start_ns),
            "status": self.status,
            "error": self.error,
            "on_critical_path": self.on_critical_path,
            "self_ms": ms(self.self_ns),
            # the phase's own dict, not a copy (half of this method's time, 610,000 times at
            # 10,000 pods): a document is read, never changed in place
            "attributes": a if type(a := self.attributes) is dict else dict(a),
        }


# Slot setters of Phase: a new phase built field by field (``new_phase``) and the critical-path
# fields of a phase nobody else holds yet (``mark_on_path``) skip the frozen __setattr__ guard.
_SET = {name: Phase.__dict__[name].__set__ for name in Phase.__slots__}
_set_id, _set_parent_id, _set_name = _SET["id"], _SET["parent_id"], _SET["name"]
_set_start, _set_end, _set_status = _SET["start_ns"], _SET["end_ns"], _SET["status"]
_set_error, _set_on_path, _set_self_ns = _SET["error"], _SET["on_critical_path"], _SET["self_ns"]
_set_attributes = _SET["attributes"]


def new_phase(
    id: str,
    parent_id: str | None,
    name: str,
    start_ns: int,
    end_ns: int,
    status: PhaseStatus,
    error: str | None,
    on_critical_path: bool,
    self_ns: int,
    attributes: Mapping[str, Any],
) -> Phase:
    """A phase of its fields in declaration order (``Phase.fields``), each slot set once: half
    the time of the frozen ``__init__`` (the pod builder makes 590,000 phases at 10,000 pods,
    and unpickling a worker's part as many again)."""
    phase = object.__new__(Phase)
    _set_id(phase, id)
    _set_parent_id(phase, parent_id)
    _set_name(phase, name)
    _set_start(phase, start_ns)
    _set_end(phase, end_ns)
    _set_status(phase, status)
    _set_error(phase, error)
    _set_on_path(phase, on_critical_path)
    _set_self_ns(phase, self_ns)
    _set_attributes(phase, attributes)
    return phase


def mark_on_path(phase: Phase, on_critical_path: bool, self_ns: int) -> None:
    """Set the critical-path fields of a phase **in place**. Only for phases their builder
    still owns (no pod, reporter or caller has seen them): a copy (``Phase.on_path``) costs
    six times as much, for nearly every phase of every pod."""
    _set_on_path(phase, on_critical_path)
    _set_self_ns(phase, self_ns)


@dataclass(frozen=True, slots=True)
class CriticalStep:
    phase_id: str
    name: str
    self_ns: int

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        """Pickled as its fields (see ``Phase.__reduce__``)."""
        return CriticalStep, (self.phase_id, self.name, self.self_ns)

    def to_dict(self) -> dict[str, Any]:
        return {
            "phase_id": self.phase_id,
            "name": self.name,
            "self_ms": ms(self.self_ns),
        }


@dataclass(frozen=True)
class Pod:
    host: str
    sandbox_id: str
    name: str | None
    namespace: str | None
    uid: str | None
    status: PodStatus
    start_ns: int
    end_ns: int
    phases: tuple[Phase, ...]
    """Parents before children; ``phases[0]`` is the ``pod`` phase."""
    critical_path: tuple[CriticalStep, ...] = ()
    bottleneck: str = ""
    runtime_handler: str | None = None
    runtime: str | None = None
    """The OCI runtime binary seen (runc, crun)."""
    failed_phase: str | None = None
    containers: tuple[str, ...] = ()
    incomplete_reason: str | None = None
    """Why an ``incomplete`` pod is: still starting when the recording ended, started before
    it, or events of it were dropped (its span overlaps a drop window, ``analysis.losses``)."""
    restarts: int = 0
    """Containers re-created after they crashed (the kubelet's ``attempt`` + 1)."""
    error: str | None = None
    """Why a ``failed`` pod failed, in the words of whoever failed: the CNI plugin's or OCI
    runtime's own message when containerd relayed it, else the failing phase's error."""

    @property
    def key(self) -> tuple[str, str]:
        return (self.host, self.sandbox_id)

    @property
    def duration_ns(self) -> int:
        return self.end_ns - self.start_ns

    def phase(self, phase_id: str) -> Phase:
        for p in self.phases:
            if p.id == phase_id:
                return p
        raise KeyError(phase_id)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "namespace": self.namespace,
            "uid": self.uid,
            "sandbox_id": self.sandbox_id,
            "host": self.host,
            "runtime_handler": self.runtime_handler,
            "runtime": self.runtime,
            "status": self.status,
            "failed_phase": self.failed_phase,
            "error": self.error,
            "incomplete_reason": self.incomplete_reason,
            "restarts": self.restarts,
            "containers": list(self.containers),
            "start_wall_ns": self.start_ns,
            "duration_ms": ms(self.duration_ns),
            "phases": [p.to_dict() for p in self.phases],
            "critical_path": [s.to_dict() for s in self.critical_path],
            "bottleneck": self.bottleneck,
        }


@dataclass(frozen=True)
class RecordingInfo:
    files: tuple[str, ...]
    hosts: tuple[str, ...]
    kernels: tuple[str, ...]
    start_ns: int
    end_ns: int
    drops: int
    complete: bool
    """Every file was closed cleanly (none was cut short by a crash)."""
    drop_windows: tuple[tuple[int, int], ...] = ()
    """Wall-clock ns intervals in which events were lost (see ``analysis.losses``)."""
    foreign_containers: Mapping[str, int] = field(default_factory=dict)
    """Containers seen in containerd namespaces other than CRI's (ctr, nerdctl, moby), per
    namespace: ignored, they are no pods."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "files": list(self.files),
            "hosts": list(self.hosts),
            "kernels": list(self.kernels),
            "start_wall_ns": self.start_ns,
            "end_wall_ns": self.end_ns,
            "duration_s": round((self.end_ns - self.start_ns) / 1e9, 3),
            "drops": self.drops,
            "drop_windows": [
                {"start_wall_ns": lo, "end_wall_ns": hi} for lo, hi in self.drop_windows
            ],
            "complete": self.complete,
            "foreign_containers": dict(self.foreign_containers),
        }


@dataclass(frozen=True)
class Analysis:
    recording: RecordingInfo
    pods: tuple[Pod, ...]
    summary: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "recording": self.recording.to_dict(),
            "pods": [p.to_dict() for p in self.pods],
            "summary": dict(self.summary),
        }


_PHASE_FIELDS = tuple(f.name for f in fields(Phase))
_STEP_FIELDS = tuple(f.name for f in fields(CriticalStep))
_POD_FIELDS = tuple(f.name for f in fields(Pod) if f.name not in ("phases", "critical_path"))


def pack_pods(pods: Sequence[Pod]) -> tuple[Any, ...]:
    """Pods as columns of plain values, the form in which a worker of ``analyze --jobs``
    hands them back (``unpack_pods``): every phase's ids in one list, their starts in the next,
    and so on. Pickle then writes lists of strings and integers, not a call per phase: a
    1,000-pod part pickles in 101-111 instead of 189 ms and loads in 87-95 instead of 108 ms."""
    phases = [p for pod in pods for p in pod.phases]
    steps = [s for pod in pods for s in pod.critical_path]
    return (
        [len(pod.phases) for pod in pods],
        [len(pod.critical_path) for pod in pods],
        [list(map(attrgetter(name), phases)) for name in _PHASE_FIELDS],
        [list(map(attrgetter(name), steps)) for name in _STEP_FIELDS],
        [list(map(attrgetter(name), pods)) for name in _POD_FIELDS],
    )


def unpack_pods(packed: tuple[Any, ...]) -> list[Pod]:
    """The pods :func:`pack_pods` packed, equal to the originals."""
    phase_counts, step_counts, phase_columns, step_columns, pod_columns = packed
    phases = list(map(new_phase, *phase_columns))
    steps = list(map(CriticalStep, *step_columns))
    pods, i, j = [], 0, 0
    for n, m, values in zip(phase_counts, step_counts, zip(*pod_columns, strict=True), strict=True):
        own = dict(zip(_POD_FIELDS, values, strict=True))
        pods.append(
            Pod(phases=tuple(phases[i : i + n]), critical_path=tuple(steps[j : j + m]), **own)
        )
        i, j = i + n, j + m
    return pods
