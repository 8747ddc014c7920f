"""The steps inside an OCI runtime's create and start (the phase tree: docs/architecture.md).

``runtime.create`` is cut at the moments the kernel shows, in the order every runtime goes
through them (runc and crun alike):

- ``runtime.prepare``: the runtime's own start (its Go runtime or C start-up, the config, the
  memfd re-exec) until it forks the container's first process;
- ``runtime.bootstrap``: from that fork until the container's init process exists (runc's
  nsexec stages ``runc:[0:PARENT]`` -> ``[1:CHILD]`` -> ``[2:INIT]`` and their namespace joins;
  crun clones its init directly, so for crun this step is short or absent);
- ``runtime.init``: the init process before its first mount (runc init's Go start-up);
- ``runtime.rootfs``: its first mount-type syscall to the end of its last (bind mounts, /proc,
  /dev, pivot_root, masked and readonly paths), with their count and time in the syscalls;
- ``runtime.ready``: the rest until create returns (devices, seccomp, capabilities, the
  handshake with the runtime; init then waits on the exec fifo for ``start``).

The cgroup the runtime makes and moves init into is ``runtime.cgroup``, from its first mkdir to
the last move. It interrupts whichever step was under way, which resumes after it: runc's
nsexec waits for its parent's cgroup work (bootstrap, cgroup, bootstrap), crun's init for
crun's (init, cgroup, init).

``runtime.start`` is cut into ``runtime.release`` (the start command's own start-up until the
waiting init runs the entrypoint's exec) and ``runtime.exec`` (that execve, to the start's
end).

Without the runtime probe's records (older recordings, ``--probes`` without it) the cuts that
need mounts are left out: create ends in ``runtime.init``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final, NamedTuple

MOUNT_KINDS: Final = (
    "mount",
    "umount",
    "pivot_root",
    "mount_setattr",
    "open_tree",
    "move_mount",
    "fsmount",
)
CGROUP_KINDS: Final = ("cgroup_mkdir", "cgroup_attach")
RUNTIME_OP_KINDS: Final = (*MOUNT_KINDS, *CGROUP_KINDS)
"""The runtime probe's event kinds the steps are cut from."""


class Op(NamedTuple):
    """One runtime-probe event of a process: a mount-type syscall or a cgroup event (a tuple:
    a pod start has ~170 of them, built by the hundred thousand at scale)."""

    kind: str
    start_ns: int
    end_ns: int


@dataclass(frozen=True)
class Step:
    name: str
    start_ns: int
    end_ns: int
    attributes: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Lifetime:
    """What the steps need of one process of the runtime's subtree."""

    start_ns: int
    end_ns: int | None
    ops: Sequence[Op] = ()


def _tile(bounds: Sequence[tuple[str, int | None]], start: int, end: int) -> list[Step]:
    """Consecutive steps between the known boundaries, in the order given: each name runs from
    its boundary to the next known one (or ``end``); boundaries are clamped into
    [start, end] and never go back."""
    known = [(name, t) for name, t in bounds if t is not None]
    steps: list[Step] = []
    lo = start
    for i, (name, t) in enumerate(known):
        lo = min(max(t, lo), end)
        hi = end if i + 1 == len(known) else min(max(known[i + 1][1], lo), end)
        if hi > lo:
            steps.append(Step(name, lo, hi))
    return steps


def _with(steps: list[Step], name: str, attributes: dict[str, Any]) -> list[Step]:
    return [Step(s.name, s.start_ns, s.end_ns, attributes) if s.name == name else s for s in steps]


def create_steps(
    create: Lifetime, others: Sequence[Lifetime], init: Lifetime | None, end: int
) -> list[Step]:
    """The steps of one ``runtime.create`` that ran from ``create.start_ns`` to ``end``.

    ``others``: the other processes of its subtree (hooks left out); ``init``: the one that
    becomes the container's init (None when none was seen). The milestones are taken in time
    order; the cgroup interrupts whichever step was under way (runc's bootstrap, crun's init,
    both waiting for it), and that step resumes after it."""
    start = create.start_ns
    first_fork = min((p.start_ns for p in others if p.start_ns >= start), default=None)
    mounts = [o for o in (init.ops if init else ()) if o.kind in MOUNT_KINDS]
    mounts = [o for o in mounts if start <= o.start_ns <= end]
    cgroup = sorted(
        (o for p in (create, *others) for o in p.ops if o.kind in CGROUP_KINDS),
        key=lambda o: o.start_ns,
    )
    cgroup = [o for o in cgroup if start <= o.start_ns <= end]
    marks: list[tuple[int, str]] = [(start, "runtime.prepare")]
    if first_fork is not None:
        marks.append((first_fork, "runtime.bootstrap"))
    if init is not None:
        marks.append((init.start_ns, "runtime.init"))
    if mounts:
        marks.append((mounts[0].start_ns, "runtime.rootfs"))
        marks.append((max(o.end_ns for o in mounts), "runtime.ready"))
    marks.sort(key=lambda m: m[0])  # stable: a fork that is the init's start stays first
    if cgroup and cgroup[-1].end_ns > cgroup[0].start_ns:
        lo, hi = cgroup[0].start_ns, cgroup[-1].end_ns
        # the step under way when the cgroup's span ends resumes after it (a milestone inside
        # the span, none in runc's or crun's order, is hidden by it)
        resumed = [n for t, n in marks if t <= hi][-1]
        marks = [
            *(m for m in marks if m[0] <= lo),
            (lo, "runtime.cgroup"),
            (hi, resumed),
            *(m for m in marks if m[0] > hi),
        ]
    steps = _tile([(n, t) for t, n in marks], start, end)
    if mounts:
        steps = _with(
            steps,
            "runtime.rootfs",
            {
                "mounts": sum(o.kind == "mount" for o in mounts),
                "mount_syscalls": len(mounts),
                "syscall_ms": round(sum(o.end_ns - o.start_ns for o in mounts) / 1e6, 3),
                "pivot_root": any(o.kind == "pivot_root" for o in mounts),
            },
        )
    if cgroup:
        steps = _with(
            steps,
            "runtime.cgroup",
            {
                "cgroups_made": sum(o.kind == "cgroup_mkdir" for o in cgroup),
                "moves": sum(o.kind == "cgroup_attach" for o in cgroup),
            },
        )
    return steps


def start_steps(start: int, end: int, exec_ns: int | None) -> list[Step]:
    """The steps of one ``runtime.start`` from ``start`` to ``end``, given the entrypoint's
    exec (None when it was not seen). ``runtime.exec`` runs to the end: the execve, and the
    start command's exit when that comes later (it does in some starts and not in others, so
    it is no step of its own: a pod's phase names stay the same from start to start)."""
    if exec_ns is None:
        return []
    return _tile([("runtime.release", start), ("runtime.exec", exec_ns)], start, end)
