"""analysis/runtime_steps.py: the cuts inside runtime.create and runtime.start, on small
hand-made timelines (the stored runc-runtime and crun-runtime recordings check them on real
runs in test_analysis_runtime.py)."""

from __future__ import annotations

import json

from startprof.analysis.runtime_steps import Lifetime, Op, create_steps, start_steps
from startprof.probes import runtime
from startprof.probes.abi import (
    SP_RT_CGROUP_MKDIR,
    SP_RT_MOUNT,
    Header,
    RecordType,
    Rename,
    RtOp,
)

MS = 1_000_000


def _names(steps: list) -> list[tuple[str, int, int]]:
    return [(s.name, s.start_ns // MS, s.end_ns // MS) for s in steps]


def test_runc_like_create_is_tiled_at_fork_cgroup_init_and_mounts() -> None:
    mounts = [Op("mount", 14 * MS, 15 * MS), Op("pivot_root", 18 * MS, 19 * MS)]
    cgroup = [Op("cgroup_mkdir", 7 * MS, 7 * MS), Op("cgroup_attach", 9 * MS, 9 * MS)]
    create = Lifetime(0, 22 * MS, cgroup)
    parent = Lifetime(6 * MS, 13 * MS)  # runc init: [0:PARENT] -> [1:CHILD]
    init = Lifetime(12 * MS, None, mounts)  # [2:INIT], alive after create returned
    steps = create_steps(create, [parent, init], init, 22 * MS)
    # the cgroup interrupts the bootstrap (nsexec waits for the parent), which resumes after
    assert _names(steps) == [
        ("runtime.prepare", 0, 6),
        ("runtime.bootstrap", 6, 7),
        ("runtime.cgroup", 7, 9),
        ("runtime.bootstrap", 9, 12),
        ("runtime.init", 12, 14),
        ("runtime.rootfs", 14, 19),
        ("runtime.ready", 19, 22),
    ]
    rootfs = steps[5].attributes
    assert rootfs == {"mounts": 1, "mount_syscalls": 2, "syscall_ms": 2.0, "pivot_root": True}
    assert steps[2].attributes == {"cgroups_made": 1, "moves": 1}
    # they tile the create exactly
    assert sum(s.end_ns - s.start_ns for s in steps) == 22 * MS


def test_a_cgroup_span_hiding_a_milestone_resumes_the_step_under_way_at_its_end() -> None:
    cgroup = [Op("cgroup_mkdir", 2 * MS, 2 * MS), Op("cgroup_attach", 8 * MS, 8 * MS)]
    init = Lifetime(5 * MS, None)  # starts while the cgroup is made
    steps = create_steps(Lifetime(0, 10 * MS, cgroup), [init], init, 10 * MS)
    assert _names(steps) == [
        ("runtime.prepare", 0, 2),
        ("runtime.cgroup", 2, 8),
        ("runtime.init", 8, 10),
    ]


def test_crun_like_create_has_no_bootstrap_and_old_recordings_end_in_init() -> None:
    init = Lifetime(3 * MS, None, [Op("mount", 5 * MS, 6 * MS)])
    steps = create_steps(Lifetime(0, 17 * MS), [init], init, 17 * MS)
    # crun clones its init itself: the fork is the init's start, no bootstrap of its own
    assert [s.name for s in steps] == [
        "runtime.prepare",
        "runtime.init",
        "runtime.rootfs",
        "runtime.ready",
    ]
    # no runtime probe: no mounts, create ends in runtime.init
    bare = Lifetime(3 * MS, None)
    assert _names(create_steps(Lifetime(0, 17 * MS), [bare], bare, 17 * MS)) == [
        ("runtime.prepare", 0, 3),
        ("runtime.init", 3, 17),
    ]
    # no process seen at all (a create that failed at once): one step, the runtime's own
    assert _names(create_steps(Lifetime(0, 2 * MS), [], None, 2 * MS)) == [
        ("runtime.prepare", 0, 2)
    ]


def test_boundaries_out_of_order_or_outside_never_leave_the_parent() -> None:
    # a mount seen before the init's start (clock order across CPUs) and after the end
    init = Lifetime(8 * MS, None, [Op("mount", 7 * MS, 30 * MS)])
    steps = create_steps(Lifetime(0, 10 * MS), [init], init, 10 * MS)
    for s in steps:
        assert 0 <= s.start_ns < s.end_ns <= 10 * MS
    starts = [s.start_ns for s in steps]
    assert starts == sorted(starts)


def test_start_is_release_then_the_entrypoint_exec() -> None:
    assert _names(start_steps(0, 6 * MS, 4 * MS)) == [
        ("runtime.release", 0, 4),
        ("runtime.exec", 4, 6),
    ]
    assert start_steps(0, 6 * MS, None) == []


def _header(rtype: RecordType, size: int, comm: bytes) -> Header:
    return Header(rtype, size, 2_000, 42, 43, 7, comm)


def test_runtime_records_decode_into_their_kinds() -> None:
    r = RtOp(_header(RecordType.RT_OP, 0, b"runc:[2:INIT]"), 1_000, 0, 4096, SP_RT_MOUNT, 0)
    r.fstype, r.path = b"proc", b"/proc"
    (ev,) = runtime.decode_op(bytes(r))
    assert ev["kind"] == "mount" and ev["filename"] == "/proc"
    assert (ev["ts_ns"], ev["start_ns"], ev["end_ns"], ev["flags"]) == (1_000, 1_000, 2_000, 4096)
    assert json.loads(ev["attrs"]) == {"fstype": "proc"}
    c = RtOp(_header(RecordType.RT_OP, 0, b"runc"), 2_000, 0, 0, SP_RT_CGROUP_MKDIR, 0)
    c.path = b"/startprof-lab/abc"
    (ev,) = runtime.decode_op(bytes(c))
    assert ev["kind"] == "cgroup_mkdir" and ev["ts_ns"] == 2_000 and "start_ns" not in ev
    n = Rename(_header(RecordType.RENAME, 0, b"runc:[1:CHILD]"), b"runc:[0:PARENT]")
    (ev,) = runtime.decode_rename(bytes(n))
    assert (ev["kind"], ev["comm"], ev["old_comm"]) == (
        "rename",
        "runc:[1:CHILD]",
        "runc:[0:PARENT]",
    )
