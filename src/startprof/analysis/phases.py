"""Cut each pod start into the canonical phases of docs/architecture.md.

The heavy, per-event work is vectorised in ``inputs`` (process table, attribution, per-process
spans, netlink grouping); here each pod's spans are assembled from those pre-grouped rows by
small builders, one per part of a pod start (sandbox, image, container attempt, status).

Sources, in order of preference: the CRI calls decoded from containerd's socket (RunPodSandbox,
CreateContainer, StartContainer bound the sandbox and container phases exactly as the kubelet
sees them) and the kernel's process events (CNI plugins, shims, runtimes, entrypoints). Without
socket data the sandbox and container phases are bounded by process events, and their
``source`` attribute says ``kernel``.
"""

from __future__ import annotations

import re
from bisect import bisect_left
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import pandas as pd

from startprof.analysis.critical_path import apply_critical_path, bottleneck
from startprof.analysis.image_steps import pull_steps
from startprof.analysis.inputs import (
    CREATE_CONTAINER,
    IMAGE_STATUS,
    NOT_ENTRYPOINTS,
    PULL_IMAGE,
    RUN_POD_SANDBOX,
    START_CONTAINER,
    STOP_CONTAINER,
    Call,
    Context,
    PodInputs,
    Proc,
    cni_args,
    is_shim_start,
    pod_inputs,
)
from startprof.analysis.losses import LOST_EVENTS
from startprof.analysis.model import (
    NO_CONTAINER_SEEN,
    STARTED_BEFORE,
    STILL_STARTING,
    Phase,
    Pod,
    PodStatus,
    new_phase,
)
from startprof.analysis.processes import (
    CREATING_VERBS,
    SHIM_PREFIX,
    basename,
)
from startprof.analysis.runtime_steps import Lifetime, Step, create_steps, start_steps

STAYED_UP_NS = 1_000_000_000
"""A container whose entrypoint exits on its own sooner than this after its exec crashed (the
kubelet restarts it: a crash loop); one that runs longer stayed up, and its start ended at its
exec. Keep in sync with ``startprof.lab.kinds.STAY_UP_S``."""
_CNI_ERROR = re.compile(r'plugin type="(?P<type>[^"]+)"[^:]*? failed \((?:add|delete|check)\): ')
_RUNTIME_ERROR = re.compile(r"OCI runtime (?P<verb>[a-z]+) failed: (?:[\w.-]+ (?P=verb) failed: )?")


def _inside(start: int, end: int, lo: int, hi: int) -> tuple[int, int]:
    """``[start, end]`` moved inside its parent's ``[lo, hi]``: ``min(max(start, lo), hi)``
    and ``min(max(end, start), hi)``, by comparisons (59 phases per pod; four builtin calls
    each cost more)."""
    if start < lo:
        start = lo
    if start > hi:
        start = hi
    if end < start:
        end = start
    if end > hi:
        end = hi
    return start, end


class PhaseBuilder:
    """Builds one pod's phase list; ids are path-like and stable for the same recording."""

    def __init__(self) -> None:
        self.phases: list[Phase] = []
        self._ids: dict[str, int] = {}

    def add(
        self,
        parent: Phase | None,
        name: str,
        start: int,
        end: int,
        error: str | None = None,
        **attributes: Any,
    ) -> Phase:
        """A phase below ``parent``; it failed when it has an ``error``."""
        base = name if parent is None else f"{parent.id}/{name}"
        n = self._ids[base] = self._ids.get(base, 0) + 1
        pid = base if n == 1 else f"{base}#{n}"
        if parent is not None:  # a child never leaves its parent (clock skew, shared shims)
            start, end = _inside(start, end, parent.start_ns, parent.end_ns)
        elif end < start:
            end = start
        phase = new_phase(
            pid,
            None if parent is None else parent.id,
            name,
            start,
            end,
            "ok" if error is None else "error",
            error,
            False,
            0,
            {k: v for k, v in attributes.items() if v is not None},
        )
        self.phases.append(phase)
        return phase


def _subtree(ctx: Context, proc: Proc) -> list[Proc]:
    out, stack = [], [proc]
    while stack:
        p = stack.pop()
        out.append(p)
        stack.extend(ctx.children.get(p.proc_id, ()))
    return out


def _proc_attrs(proc: Proc) -> dict[str, Any]:
    return {
        "pid": proc.pid,
        "argv": list(proc.argv),
        "filename": proc.filename,
        "exit_code": proc.exit_code,
    }


def _proc_span(proc: Proc, ctx: Context) -> tuple[int, int]:
    start = proc.exec_ns if proc.exec_ns is not None else proc.start_ns
    end = proc.end_ns if proc.end_ns is not None else ctx.recording_end_ns
    return start, end


def _helper_ops(ctx: Context, proc: Proc) -> Counter[str]:
    """The netlink ops of a helper and its descendants (iptables-nft: a dozen NFT_* messages):
    a helper's netlink work stays a count."""
    ops: Counter[str] = Counter()
    for descendant in _subtree(ctx, proc):
        ops.update(ctx.ops.get(descendant.proc_id, {}))
    return ops


def _add_netlink(b: PhaseBuilder, parent: Phase, proc: Proc, ctx: Context) -> None:
    """One span per run of same-op requests. An error reply (EEXIST for a bridge that is already
    there) is an answer the plugin handles, not a failure: it is counted, not flagged."""
    for run in ctx.netlink.get(proc.proc_id, ()):
        b.add(
            parent,
            f"netlink {run.op}",
            int(run.start_ns),
            int(run.end_ns),
            count=int(run.requests),
            errors=int(run.errors) or None,
            ifnames=list(run.ifnames) or None,
            link_kinds=list(run.kinds) or None,
            pid=proc.pid,
        )


def _add_cni_plugin(b: PhaseBuilder, parent: Phase, proc: Proc, ctx: Context) -> Phase:
    # its netlink_ops (its own and its helpers', not a delegated plugin's) are counted before
    # its phase is made: one Phase, not one and a copy with the counts added
    children = ctx.children.get(proc.proc_id, ())
    helpers = {
        c.proc_id: _helper_ops(ctx, c)
        for c in children
        if not c.is_cni_plugin and c.exec_ns is not None
    }
    ops = Counter(ctx.ops.get(proc.proc_id, {}))
    for helper_ops in helpers.values():
        ops.update(helper_ops)
    start, end = _proc_span(proc, ctx)
    phase = b.add(
        parent,
        f"cni.plugin {proc.program}",
        start,
        end,
        error=proc.exit_error(),
        cni_plugin=proc.program,
        cni_command=proc.env.get("CNI_COMMAND"),
        cni_ifname=proc.env.get("CNI_IFNAME"),
        **_proc_attrs(proc),
        netlink_ops=dict(ops) if ops else None,
    )
    _add_netlink(b, phase, proc, ctx)
    for child in children:
        if child.is_cni_plugin:
            _add_cni_plugin(b, phase, child, ctx)
        elif child.proc_id in helpers:
            _add_helper(b, phase, child, ctx, helpers[child.proc_id])
    return phase


def _add_helper(
    b: PhaseBuilder, parent: Phase, proc: Proc, ctx: Context, ops: Counter[str]
) -> None:
    """``exec <child>`` for a program a CNI plugin ran (iptables), with its netlink ``ops``."""
    start, end = _proc_span(proc, ctx)
    b.add(
        parent,
        f"exec {proc.name}",
        start,
        end,
        **_proc_attrs(proc),
        # iptables -C exits 1 for "no such rule": a question, not a failure
        exit_status="nonzero" if proc.failed else None,
        netlink_ops=dict(ops) if ops else None,
    )


def _exec_end(proc: Proc | None) -> int | None:
    if proc is None:
        return None
    return proc.exec_done_ns if proc.exec_done_ns is not None else proc.exec_ns


def _internal(p: Proc) -> bool:
    """A process of the runtime itself, not one it ran: runc or crun (also by a wrapper's
    name), their re-exec from a memfd, ``runc init``, a shim."""
    image = p.image or ""
    return (
        p.program in p.runtimes
        or basename(image) in p.runtimes
        or image.startswith("/dev/fd/")
        or image in NOT_ENTRYPOINTS
        or p.program.startswith(SHIM_PREFIX)
    )


def _topmost(found: list[Proc], ctx: Context) -> list[Proc]:
    """The processes of ``found`` none of whose ancestors is in ``found``: a hook's own
    children are part of the hook, an entrypoint's children part of the container."""
    ids = {p.proc_id for p in found}
    out = []
    for p in found:
        parent, depth = p.parent_proc, 0
        while parent is not None and parent not in ids and depth < 64:
            up = ctx.procs.get(parent)
            parent, depth = (up.parent_proc if up else None), depth + 1
        if parent is None or parent not in ids:
            out.append(p)
    return out


def _ran(procs: Iterable[Proc]) -> list[Proc]:
    return [p for p in procs if p.image and p.exec_ns is not None and not _internal(p)]


def _entrypoint(procs: Iterable[Proc], ctx: Context, after: int | None = None) -> Proc | None:
    """The container's process once its runtime exec'ed the entrypoint (pause, app, ...):
    the first program the runtime ran after ``after`` (the end of ``create``: what runs
    during it is a hook)."""
    found = [p for p in _topmost(_ran(procs), ctx) if after is None or (p.exec_ns or 0) >= after]
    return min(found, key=lambda p: p.exec_ns or 0) if found else None


def _runtime_entrypoint(rt: Sequence[Proc], ctx: Context) -> Proc | None:
    """The entrypoint of one container, from its runtime processes (creates, starts, shims)."""
    creates = [p for p in rt if p.runtime_verb == "create"]
    if creates and all(p.end_ns is None for p in creates):
        return None  # still creating when the recording ended: anything run so far is a hook
    after = min((p.end_ns for p in creates if p.end_ns is not None), default=None)
    return _entrypoint((q for p in rt for q in _subtree(ctx, p)), ctx, after)


def _hooks(proc: Proc, ctx: Context, until: int | None) -> list[Proc]:
    """Programs an OCI runtime ran while ``proc`` (its create, or start) ran: OCI hooks."""
    found = [p for p in _ran(_subtree(ctx, proc)[1:]) if until is None or (p.exec_ns or 0) <= until]
    return _topmost(found, ctx)


def _add_hooks(b: PhaseBuilder, parent: Phase, hooks: Iterable[Proc], ctx: Context) -> None:
    for hook in sorted(hooks, key=lambda p: p.exec_ns or 0):
        start, end = _proc_span(hook, ctx)
        name = f"runtime.hook {hook.program}"
        b.add(parent, name, start, end, error=hook.exit_error(), **_proc_attrs(hook))


def _lifetime(proc: Proc, ctx: Context) -> Lifetime:
    return Lifetime(proc.start_ns, proc.end_ns, ctx.runtime_ops.get(proc.proc_id, ()))


def _create_steps(
    create: Proc, subtree: Sequence[Proc], hooks: Sequence[Proc], ctx: Context, phase: Phase
) -> list[Step]:
    """runtime_steps.create_steps for one create (``subtree``: its own first): the subtree
    without the hooks; the init is the runtime's process still alive when create returned
    (the one the entrypoint becomes)."""
    hooked = {q.proc_id for h in hooks for q in _subtree(ctx, h)}
    others = [p for p in subtree[1:] if p.proc_id not in hooked]
    alive = [p for p in others if p.end_ns is None or p.end_ns > phase.end_ns]
    init = max(alive, key=lambda p: p.start_ns) if alive else None
    return create_steps(
        Lifetime(phase.start_ns, create.end_ns, ctx.runtime_ops.get(create.proc_id, ())),
        [_lifetime(p, ctx) for p in others],
        _lifetime(init, ctx) if init else None,
        phase.end_ns,
    )


def _add_steps(b: PhaseBuilder, parent: Phase, steps: Iterable[Step]) -> None:
    for step in steps:
        b.add(parent, step.name, step.start_ns, step.end_ns, **step.attributes)


def _add_task_request(
    b: PhaseBuilder, parent: Phase, proc: Proc, start: int, end: int, ctx: Context
) -> None:
    """``runtime.task.create`` / ``runtime.task.start``: from the moment containerd could ask
    (the shim started, or the runtime's previous command returned) until the shim ran the
    runtime: containerd's request over ttrpc and the shim's own work, for create the rootfs
    mount it makes of the container's snapshot (``mounts``)."""
    shim = ctx.procs.get(proc.parent_proc) if proc.parent_proc is not None else None
    ops = ctx.runtime_ops.get(shim.proc_id, ()) if shim is not None else ()
    mounts = sum(o.kind == "mount" and start <= o.start_ns <= end for o in ops)
    name = f"runtime.task.{proc.runtime_verb}"
    b.add(parent, name, start, end, mounts=mounts or None)


def _add_runtime(
    b: PhaseBuilder, parent: Phase, procs: list[Proc], container_id: str, ctx: Context
) -> tuple[str | None, Proc | None]:
    """runtime.shim, runtime.create (with its hooks), runtime.start of one container; returns
    the runtime and the entrypoint."""
    mine = [p for p in procs if p.container_id == container_id]
    runtime = None
    ready: int | None = None  # when containerd could send the shim its next task request
    for shim in (p for p in mine if is_shim_start(p)):
        start, end = _proc_span(shim, ctx)
        b.add(parent, "runtime.shim", start, end, **_proc_attrs(shim))
        ready = end
    entry = _runtime_entrypoint([p for p in mine if p.starts_container], ctx)
    for proc in sorted((p for p in mine if p.starts_container), key=lambda p: p.start_ns):
        runtime = proc.runtime or proc.program
        start, end = _proc_span(proc, ctx)
        if ready is not None and proc.runtime_verb in ("create", "start") and start > ready:
            _add_task_request(b, parent, proc, ready, start, ctx)
        ready = end
        common = {"runtime": runtime, "wrapper": proc.wrapper, **_proc_attrs(proc)}
        error = proc.exit_error(f"{runtime} {proc.runtime_verb} ")
        if proc.runtime_verb == "create":
            subtree = _subtree(ctx, proc)
            phase = b.add(
                parent,
                "runtime.create",
                start,
                end,
                error=error,
                processes=len(subtree),
                **common,
            )
            hooks = _hooks(proc, ctx, proc.end_ns)
            _add_steps(b, phase, _create_steps(proc, subtree, hooks, ctx, phase))
            _add_hooks(b, phase, hooks, ctx)
        else:
            exec_end = _exec_end(entry)
            phase = b.add(
                parent, "runtime.start", start, max(end, exec_end or end), error=error, **common
            )
            if proc.runtime_verb == "start" and entry is not None:
                steps = start_steps(start, phase.end_ns, entry.exec_ns)
                _add_steps(b, phase, steps)
            hooks = _hooks(proc, ctx, None) if proc.runtime_verb == "start" else []
            _add_hooks(b, phase, [h for h in hooks if h is not entry], ctx)
    return runtime, entry


def own_error(message: str | None) -> tuple[str, str | None, str] | None:
    """What failed, in its own words, from containerd's error text: ``("cni", plugin type,
    text)`` for a CNI plugin, ``("runtime", verb, text)`` for an OCI runtime; None when the
    message holds neither (then it is containerd's own: an image pull, a timeout)."""
    if not message:
        return None
    cni = _CNI_ERROR.search(message)
    if cni:
        return "cni", cni.group("type"), message[cni.end() :].strip()
    runtime = _RUNTIME_ERROR.search(message)
    if runtime:
        text = message[runtime.end() :].strip()
        return "runtime", runtime.group("verb"), text.removesuffix(": unknown")
    return None


def _call_error(call: Call) -> str:
    text = f"{call.method.rsplit('/', 1)[-1]} {call.status}"
    message = call.attrs.get("grpc_message")
    return f"{text}: {message}" if message else text


def _blame(phases: list[Phase], root_id: str, call: Call) -> None:
    """Give the failing CNI plugin or runtime phase below ``root_id`` the words its own error
    had in the failed ``call``'s message (containerd relays them)."""
    found = own_error(call.attrs.get("grpc_message"))
    if found is None:
        return
    kind, subject, text = found
    for i, p in enumerate(phases):
        if p.status != "error" or not p.id.startswith(root_id + "/") or not text:
            continue
        if (kind == "cni" and p.name == f"cni.plugin {subject}") or (
            kind == "runtime" and p.name == f"runtime.{subject}"
        ):
            phases[i] = replace(p, error=f"{p.error}: {text}")
            return


@dataclass
class _Attempt:
    """One start of one container (the kubelet re-creates a crashed one: a new attempt)."""

    name: str
    container_id: str
    phase: Phase
    entry: Proc | None
    crashed: bool
    exit_code: int | None
    end_ns: int
    """Its end, or the recording's when it had not ended."""
    incomplete: bool
    runtime: str | None


def _stopped_before(inputs: PodInputs, cid: str, t: int) -> bool:
    """Whether the container was asked to stop (StopContainer, a runtime ``kill``) before t."""
    return any(
        c.method == STOP_CONTAINER and c.container_id == cid and c.start_ns <= t
        for c in inputs.calls
    ) or any(
        p.runtime_verb == "kill" and p.container_id == cid and p.start_ns <= t for p in inputs.procs
    )


def _crash(inputs: PodInputs, cid: str, entry: Proc | None, start_ok: bool) -> bool:
    """An attempt crashed: its start failed, or its entrypoint exited on its own within
    STAYED_UP_NS of its exec with a non-zero code (or by a signal nobody sent)."""
    if not start_ok:
        return True
    if entry is None or entry.end_ns is None or entry.exec_ns is None:
        return False
    if entry.end_ns - entry.exec_ns >= STAYED_UP_NS or entry.exit_code == 0:
        return False
    return not _stopped_before(inputs, cid, entry.end_ns)


@dataclass
class _PodCalls:
    """A pod's CRI calls in time order, by what they are."""

    calls: list[Call]
    rps: Call | None
    creates: list[Call]
    by_id: dict[str, Call]
    """CreateContainer by container id."""
    starts: dict[str, Call]
    """StartContainer by container id."""

    @classmethod
    def of(cls, inputs: PodInputs) -> _PodCalls:
        calls = sorted(inputs.calls, key=lambda c: c.start_ns)
        creates = [c for c in calls if c.method == CREATE_CONTAINER]
        return cls(
            calls,
            next((c for c in calls if c.method == RUN_POD_SANDBOX), None),
            creates,
            {c.container_id: c for c in creates if c.container_id},
            {c.container_id: c for c in calls if c.method == START_CONTAINER and c.container_id},
        )


@dataclass
class _Sandbox:
    """What a pod's sandbox is made of, and its bounds (CRI's, else the kernel's)."""

    procs: list[Proc]
    """The processes of the sandbox itself (no container's)."""
    runtime: list[Proc]
    """Its OCI runtime's create/start/run."""
    cni: list[Proc]
    """The CNI ADD plugins containerd ran (not the ones they delegated to)."""
    began_before: bool
    """Made before the recording: no RunPodSandbox, CNI ADD or sandbox create of it."""
    start_ns: int
    end_ns: int | None
    """None while it was still being made when the recording ended."""

    @classmethod
    def of(cls, inputs: PodInputs, rps: Call | None, ctx: Context) -> _Sandbox:
        procs = inputs.procs
        cni = [
            p
            for p in procs
            if p.is_cni_plugin
            and p.env.get("CNI_COMMAND") == "ADD"
            and not any(q.is_cni_plugin for q in procs if q.proc_id == p.parent_proc)
        ]
        own = [p for p in procs if p.container_id in (None, inputs.sandbox_id)]
        runtime = [p for p in own if p.starts_container]
        began_before = (
            rps is None and not cni and not any(p.runtime_verb in CREATING_VERBS for p in runtime)
        )
        if rps is not None:
            return cls(own, runtime, cni, began_before, rps.start_ns, rps.end_ns)
        # the kernel-side extent: first CNI or runtime exec (or netns) .. the pause exec
        points = [p.exec_ns for p in cni + runtime if p.exec_ns is not None]
        if inputs.netns:
            points.append(inputs.netns[0])
        end = _exec_end(_runtime_entrypoint(runtime, ctx))
        return cls(own, runtime, cni, began_before, min(points) if points else 0, end)


def _container_ids(inputs: PodInputs, creates: Sequence[Call]) -> list[str]:
    """The pod's containers in creation order: CRI's, then runtime creates of other ids."""
    ids = [c.container_id for c in creates if c.container_id]
    for p in sorted(inputs.procs, key=lambda p: p.start_ns):
        if (
            p.runtime_verb == "create"
            and p.container_id
            and p.container_id != inputs.sandbox_id
            and p.container_id not in ids
        ):
            ids.append(p.container_id)
    return ids


def _add_sandbox(
    b: PhaseBuilder,
    pod: Phase,
    sandbox: _Sandbox,
    inputs: PodInputs,
    rps: Call | None,
    ctx: Context,
) -> str | None:
    """``sandbox`` with its netns, CNI ADD and runtime phases; returns the runtime seen."""
    end = sandbox.end_ns if sandbox.end_ns is not None else ctx.recording_end_ns
    phase = b.add(
        pod,
        "sandbox",
        sandbox.start_ns,
        end,
        error=None if rps is None or rps.ok else _call_error(rps),
        source="cri" if rps is not None else "kernel",
        runtime_handler=rps.attrs.get("runtime_handler") if rps else None,
        traceparent=rps.attrs.get("traceparent") if rps else None,
    )
    if inputs.netns:
        b.add(phase, "sandbox.netns", *inputs.netns)
    if sandbox.cni:
        spans = [_proc_span(p, ctx) for p in sandbox.cni]
        cni = b.add(phase, "cni.add", min(s for s, _ in spans), max(e for _, e in spans))
        for plugin in sorted(sandbox.cni, key=lambda p: p.exec_ns or 0):
            _add_cni_plugin(b, cni, plugin, ctx)
    runtime, _ = _add_runtime(b, phase, sandbox.procs, inputs.sandbox_id, ctx)
    if rps is not None:
        _add_containerd_steps(b, phase)
    return runtime


def _add_containerd_steps(b: PhaseBuilder, sandbox: Phase) -> None:
    """containerd's own work in RunPodSandbox around what the kernel shows, in the order of
    its code (docs/analyze.md): ``containerd.prepare`` from the call until the first of the
    sandbox's kernel work (the sandbox image's lookup, its directories and /dev/shm), and
    ``containerd.bundle`` from the end of the network until the shim starts (the pause
    container's snapshot, spec and OCI bundle)."""
    kids = [p for p in b.phases if p.parent_id == sandbox.id]
    if not kids:
        return
    first = min(kids, key=lambda p: p.start_ns)
    if first.start_ns > sandbox.start_ns:
        b.add(sandbox, "containerd.prepare", sandbox.start_ns, first.start_ns)
    shim = next((p for p in kids if p.name == "runtime.shim"), None)
    network = [p for p in kids if p.name in ("sandbox.netns", "cni.add")]
    if shim is not None and network:
        net_end = max(p.end_ns for p in network)
        if shim.start_ns > net_end:
            b.add(sandbox, "containerd.bundle", net_end, shim.start_ns)


def _add_images(
    b: PhaseBuilder, pod: Phase, image_calls: Sequence[tuple[Call, str | None]], ctx: Context
) -> None:
    """The image calls that named this pod (PullImage's sandbox_config) or its containers'
    images, each right before its container's create; a pull with its steps
    (``analysis/image_steps.py``)."""
    for call, for_container in image_calls:
        if call.end_ns is None:
            continue
        phase = b.add(
            pod,
            "image",
            call.start_ns,
            call.end_ns,
            error=None if call.ok else _call_error(call),
            source="cri",
            method=call.method.rsplit("/", 1)[-1],
            image=call.attrs.get("image"),
            container=for_container,
        )
        ops = ctx.pull_ops.get(call.start_ns) if call.method == PULL_IMAGE else None
        if ops:
            _add_steps(b, phase, pull_steps(call.start_ns, call.end_ns, ops))


def _attempt_error(
    calls: Sequence[Call | None], crashed: bool, entry: Proc | None, code: int | None
) -> str | None:
    """Why a container's start failed: its failed CRI calls, else how its entrypoint crashed."""
    failed = [c for c in calls if c is not None and not c.ok]
    if failed:
        return "; ".join(_call_error(c) for c in failed)
    if crashed and entry is not None and entry.exec_ns is not None and entry.end_ns:
        how = f"with code {code}" if code is not None else "on a signal"
        return f"exited {how} {(entry.end_ns - entry.exec_ns) / 1e6:.1f} ms after its exec"
    return None


def _add_container(
    b: PhaseBuilder,
    pod: Phase,
    cid: str,
    inputs: PodInputs,
    cri: _PodCalls,
    previous: Sequence[_Attempt],
    last_end: int,
    ctx: Context,
) -> _Attempt:
    """``container <name>`` of one attempt, with its create, start, runtime and exec phases.
    ``last_end`` is where the pod's previous step ended (a start without CRI data)."""
    create = cri.by_id.get(cid)
    next_create = next(
        (c.start_ns for c in cri.creates if create and c.start_ns > create.start_ns), None
    )
    start_call = cri.starts.get(cid)
    name = (create.container if create else None) or inputs.container_names.get(cid) or cid[:12]
    attempt = sum(a.name == name for a in previous)
    rt = [
        p
        for p in inputs.procs
        if p.container_id == cid and (p.starts_container or is_shim_start(p))
    ]
    k_start = min((_proc_span(p, ctx)[0] for p in rt), default=None)
    c_start = create.start_ns if create else (k_start if k_start is not None else last_end)
    entry = _runtime_entrypoint(rt, ctx)
    ok = all(c.ok for c in (create, start_call) if c is not None)
    crashed = _crash(inputs, cid, entry, ok)
    ends = [
        x for x in (start_call.end_ns if start_call else None, _exec_end(entry)) if x is not None
    ]
    # an init container runs to completion before the next container is created (its
    # entrypoint's exit, not StartContainer's reply, is when the pod could go on); a
    # crashed one runs to its exit
    if (
        entry is not None
        and entry.end_ns is not None
        and ((next_create is not None and entry.end_ns <= next_create) or crashed)
    ):
        ends.append(entry.end_ns)
    c_end = max(ends) if ends else None
    started = start_call is not None and start_call.end_ns is not None
    incomplete = c_end is None or (create is not None and not started)
    c_end_v = c_end if c_end is not None else ctx.recording_end_ns
    code = entry.exit_code if entry is not None else None
    container = b.add(
        pod,
        f"container {name}",
        c_start,
        c_end_v,
        error=_attempt_error((create, start_call), crashed, entry, code),
        container_id=cid,
        container=name,
        attempt=attempt or None,  # the kubelet's metadata.attempt: restarts only
        exit_code=code if crashed else None,
        source="cri" if create else "kernel",
    )
    if create is not None and create.end_ns is not None:
        traceparent = create.attrs.get("traceparent")
        b.add(
            container,
            "container.create",
            create.start_ns,
            create.end_ns,
            source="cri",
            traceparent=traceparent,
        )
    # container.start is the StartContainer call as the kubelet sees it; with crun the
    # entrypoint's exec may land just after the reply, and then it hangs off the container
    if start_call is not None:
        cs_start, cs_end = start_call.start_ns, start_call.end_ns or c_end_v
    else:
        cs_start, cs_end = (k_start if k_start is not None else c_start), c_end_v
    c_start_phase = b.add(
        container,
        "container.start",
        cs_start,
        cs_end,
        source="cri" if start_call else "kernel",
        traceparent=start_call.attrs.get("traceparent") if start_call else None,
    )
    runtime, entry = _add_runtime(b, c_start_phase, inputs.procs, cid, ctx)
    if entry is not None and entry.exec_ns is not None:
        exec_end = _exec_end(entry) or entry.exec_ns
        b.add(
            c_start_phase if exec_end <= c_start_phase.end_ns else container,
            "process.exec",
            entry.exec_ns,
            exec_end,
            pid=entry.pid,
            filename=entry.image,
            argv=list(entry.argv),
        )
    return _Attempt(name, cid, container, entry, crashed, code, c_end_v, incomplete, runtime)


def _crash_loops(phases: list[Phase], attempts: Sequence[_Attempt]) -> tuple[int, list[str]]:
    """Restarts, and the crashed attempts recovered from (a later start stayed up). A
    container whose every start crashed fails its last one, with how often it was tried."""
    restarts = 0
    recovered: list[str] = []
    for name in dict.fromkeys(a.name for a in attempts):
        mine = [a for a in attempts if a.name == name]
        restarts += len(mine) - 1
        if not mine[-1].crashed:
            recovered += [a.phase.id for a in mine[:-1] if a.crashed]
        elif len(mine) > 1:
            last = mine[-1]
            codes = {a.exit_code for a in mine}
            how = f"with code {codes.pop()}" if len(codes) == 1 else "every time"
            i = next(i for i, p in enumerate(phases) if p.id == last.phase.id)
            phases[i] = replace(
                phases[i],
                status="error",
                error=f"exited {how} at each of its {len(mine)} starts (crash loop)",
            )
    return restarts, recovered


@dataclass(frozen=True)
class _Verdict:
    status: PodStatus = "ok"
    failed_phase: str | None = None
    error: str | None = None
    incomplete_reason: str | None = None


def _verdict(
    phases: Sequence[Phase],
    recovered: Sequence[str],
    began_before: bool,
    incomplete: bool,
    containers: bool,
    restarts: int,
) -> _Verdict:
    """The pod's status: failed (its deepest failing phase says why), incomplete, restarted
    or ok."""

    def was_recovered(p: Phase) -> bool:
        return any(p.id == r or p.id.startswith(r + "/") for r in recovered)

    errors = [p for p in phases if p.status == "error" and not was_recovered(p)]
    if errors:
        # the deepest failing phase; of equals, the last (a crash loop's last start)
        deepest = max(reversed(errors), key=lambda p: p.id.count("/"))
        return _Verdict("failed", deepest.name, deepest.error)
    if began_before:
        return _Verdict("incomplete", incomplete_reason=STARTED_BEFORE)
    if incomplete or not containers:
        reason = STILL_STARTING if containers else NO_CONTAINER_SEEN
        return _Verdict("incomplete", incomplete_reason=reason)
    return _Verdict("restarted") if restarts else _Verdict()


def build_pod(
    host: str, inputs: PodInputs, ctx: Context, image_calls: Sequence[tuple[Call, str | None]]
) -> Pod | None:
    """One pod's phases. ``image_calls`` are the image calls matched to this pod (see
    ``assign_image_calls``), each with the container it was for."""
    cri = _PodCalls.of(inputs)
    rps = cri.rps
    sandbox = _Sandbox.of(inputs, rps, ctx)
    container_ids = _container_ids(inputs, cri.creates)
    if sandbox.began_before and not container_ids:
        return None  # only tear-down or status work of a pod that started before the recording

    b = PhaseBuilder()
    # pod bounds are fixed once the children are known; start with a wide placeholder
    first_seen = min(
        [c.start_ns for c in cri.calls]
        + [_proc_span(p, ctx)[0] for p in inputs.procs if not p.seeded],
        default=sandbox.start_ns,
    )
    pod_start = first_seen if sandbox.began_before else sandbox.start_ns
    pod = b.add(None, "pod", pod_start, ctx.recording_end_ns)
    runtime: str | None = None
    if not sandbox.began_before:
        runtime = _add_sandbox(b, pod, sandbox, inputs, rps, ctx)
    _add_images(b, pod, image_calls, ctx)

    sb_end = sandbox.end_ns if sandbox.end_ns is not None else ctx.recording_end_ns
    incomplete = sandbox.end_ns is None and not sandbox.began_before
    attempts: list[_Attempt] = []
    last_end = sb_end
    for cid in container_ids:
        attempt = _add_container(b, pod, cid, inputs, cri, attempts, last_end, ctx)
        attempts.append(attempt)
        incomplete = incomplete or attempt.incomplete
        runtime = runtime or attempt.runtime
        last_end = max(last_end, attempt.end_ns)

    phases = b.phases
    if rps is not None and not rps.ok:
        _blame(phases, "pod/sandbox", rps)
    for a in attempts:
        failed_start = cri.starts.get(a.container_id)
        if failed_start is not None and not failed_start.ok:
            _blame(phases, a.phase.id, failed_start)
    restarts, recovered = _crash_loops(phases, attempts)

    pod_end = max((p.end_ns for p in phases[1:]), default=sb_end)
    pod_start = min((p.start_ns for p in phases[1:]), default=sandbox.start_ns)
    phases[0] = replace(phases[0], start_ns=pod_start, end_ns=pod_end)
    phases = _add_waits(_clip_to_parents(phases))
    verdict = _verdict(
        phases, recovered, sandbox.began_before, incomplete, bool(container_ids), restarts
    )
    phases_t, steps = apply_critical_path(phases, in_place=True)
    names = _names(inputs, rps, sandbox.cni)
    return Pod(
        host=host,
        sandbox_id=inputs.sandbox_id,
        name=names.get("name"),
        namespace=names.get("namespace"),
        uid=names.get("uid"),
        status=verdict.status,
        start_ns=pod_start,
        end_ns=pod_end,
        phases=phases_t,
        critical_path=steps,
        bottleneck=bottleneck(phases_t),
        runtime_handler=rps.attrs.get("runtime_handler") if rps else None,
        runtime=runtime,
        failed_phase=verdict.failed_phase,
        containers=tuple(dict.fromkeys(a.name for a in attempts)),
        incomplete_reason=verdict.incomplete_reason,
        restarts=restarts,
        error=verdict.error,
    )


def _names(inputs: PodInputs, rps: Call | None, cni: Sequence[Proc]) -> dict[str, str]:
    out: dict[str, str] = {}
    if rps is not None:
        for key, value in (("name", rps.pod), ("namespace", rps.namespace), ("uid", rps.uid)):
            if value:
                out[key] = value
    for key in ("name", "namespace", "uid"):
        if key not in out and inputs.annotations.get(key):
            out[key] = inputs.annotations[key]
    for proc in cni:
        args = cni_args(proc.env)
        for key, arg in (
            ("name", "K8S_POD_NAME"),
            ("namespace", "K8S_POD_NAMESPACE"),
            ("uid", "K8S_POD_UID"),
        ):
            if key not in out and args.get(arg):
                out[key] = args[arg]
    return out


def _clip_to_parents(phases: list[Phase]) -> list[Phase]:
    by_id: dict[str, Phase] = {}
    out = []
    for p in phases:
        parent = by_id.get(p.parent_id) if p.parent_id else None
        if parent is not None:
            start, end = _inside(p.start_ns, p.end_ns, parent.start_ns, parent.end_ns)
            if start != p.start_ns or end != p.end_ns:
                p = replace(p, start_ns=start, end_ns=end)
        by_id[p.id] = p
        out.append(p)
    return out


def _add_waits(phases: list[Phase]) -> list[Phase]:
    """``wait`` spans for the time inside the pod covered by none of its direct children."""
    pod = phases[0]
    tops = sorted((p for p in phases if p.parent_id == pod.id), key=lambda p: p.start_ns)
    waits = []
    t = pod.start_ns
    for p in tops:
        if p.start_ns > t:
            waits.append((t, p.start_ns))
        t = max(t, p.end_ns)
    if pod.end_ns > t:
        waits.append((t, pod.end_ns))
    extra = [
        Phase(f"{pod.id}/wait#{i + 1}", pod.id, "wait", lo, hi)
        for i, (lo, hi) in enumerate(waits)
        if hi > lo
    ]
    return phases + extra


def assign_image_calls(
    pods: Mapping[str, PodInputs], image_calls: Sequence[Call]
) -> dict[str, list[tuple[Call, str | None]]]:
    """Each image call to the pod, and container, it was for: with 10-50 pods starting at
    once, time alone blames one pod's pull on all of them.

    - A PullImage names its pod (``sandbox_config``: pod uid, else name and namespace).
    - The kubelet ensures each container's image right before creating it (ImageStatus, then
      PullImage when missing): the ImageStatus of a pull is the latest of its image before
      it; every other create takes the latest ImageStatus (and PullImage) of its own image
      between the pod's previous step and the create. One call goes to one container.
    """
    out: dict[str, list[tuple[Call, str | None]]] = defaultdict(list)
    taken: set[int] = set()
    ordered = sorted(range(len(image_calls)), key=lambda i: image_calls[i].start_ns)
    by_uid: dict[str, str] = {}
    by_name: dict[tuple[str, str], str] = {}
    slots: list[tuple[int, int, str | None, str | None, str]] = []  # lo, hi, image, name, sid
    ready: dict[str, int] = {}  # sandbox id -> end of its RunPodSandbox
    for sid, inputs in pods.items():
        calls = sorted(inputs.calls, key=lambda c: c.start_ns)
        rps = next((c for c in calls if c.method == RUN_POD_SANDBOX), None)
        uid = (rps.uid if rps else None) or inputs.annotations.get("uid")
        name = (rps.pod if rps else None) or inputs.annotations.get("name")
        namespace = (rps.namespace if rps else None) or inputs.annotations.get("namespace")
        if uid:
            by_uid.setdefault(uid, sid)
        if name and namespace:
            by_name.setdefault((namespace, name), sid)
        lo = rps.end_ns if rps is not None and rps.end_ns is not None else None
        if lo is not None:
            ready[sid] = lo
        for create in (c for c in calls if c.method == CREATE_CONTAINER):
            image = create.attrs.get("image")
            start = lo if lo is not None else create.start_ns - STAYED_UP_NS
            slots.append((start, create.start_ns, image, create.container, sid))
            lo = create.start_ns

    free = _FreeCalls(image_calls, ordered, taken)

    # pulls that name their pod
    pulled: dict[tuple[str, int], int] = {}
    for i in ordered:
        call = image_calls[i]
        if call.method != PULL_IMAGE:
            continue
        owner = by_uid.get(call.uid or "") or by_name.get((call.namespace or "", call.pod or ""))
        if owner is None:
            continue
        taken.add(i)
        pulled[(owner, call.start_ns)] = i
        mine = [s for s in slots if s[4] == owner]
        after = [s for s in mine if s[1] >= call.start_ns]
        lo = max((s[1] for s in mine if s[1] < call.start_ns), default=ready.get(owner, 0))
        # the kubelet asks ImageStatus right before it pulls
        status = next(
            free.window(IMAGE_STATUS, lo, call.start_ns, call.attrs.get("image"), last=True), None
        )
        for_container = min(after, key=lambda s: s[1])[3] if after else None
        if status is not None:
            taken.add(status)
            out[owner].append((image_calls[status], for_container))
        out[owner].append((call, for_container))
    # the other containers, in the order their pods got to them: a pod worker asks for the
    # image as soon as its previous step returned, so the first call after that step is its
    rest = [
        s
        for s in sorted(slots, key=lambda s: (s[0], s[1]))
        if not any(p[0] == s[4] and s[0] <= p[1] < s[1] for p in pulled)  # came with its pull
    ]
    for method in (IMAGE_STATUS, PULL_IMAGE):
        holder = _match_slots(rest, method, free)
        for i, k in sorted(holder.items(), key=lambda item: item[1]):
            taken.add(i)
            out[rest[k][4]].append((image_calls[i], rest[k][3]))
    for matched in out.values():
        matched.sort(key=lambda pair: pair[0].start_ns)
    return out


AUGMENT_DEPTH = 64
"""How many other containers one container's image call may move to find it one (the
matching below): pods that start together cross in a few, never in hundreds."""


class _FreeCalls:
    """The image calls no container has taken yet, by start."""

    def __init__(self, calls: Sequence[Call], ordered: Sequence[int], taken: set[int]) -> None:
        self.calls = calls
        self.ordered = ordered
        self.starts = [calls[i].start_ns for i in ordered]
        self.taken = taken

    def window(
        self, method: str, lo: int, hi: int, image: str | None, last: bool = False
    ) -> Iterator[int]:
        """The free calls of ``method`` for ``image`` inside (lo, hi), first first (or last
        first): bisect to the window, then walk."""
        span = range(bisect_left(self.starts, lo), bisect_left(self.starts, hi))
        for k in reversed(span) if last else span:
            i = self.ordered[k]
            call = self.calls[i]
            named = call.attrs.get("image")
            if (
                i not in self.taken
                and call.method == method
                and call.end_ns is not None
                and call.end_ns <= hi
                and (image is None or named is None or named == image)
            ):
                yield i


def _match_slots(
    slots: Sequence[tuple[int, int, str | None, str | None, str]],
    method: str,
    free: _FreeCalls,
) -> dict[int, int]:
    """One ``method`` call per container slot (lo, hi, image, name, sid), call index -> slot.

    First each slot, in order of its start, takes the first free call in its window: the
    worker asks as soon as its previous step returned. Workers are not served in that order
    (a pod whose step returned later may ask first), so a slot can find its window's only call
    taken by a slot whose own call came later; then the taker moves to its next candidate, and
    so on (an augmenting path, as in Kuhn's matching), so that no container that asked is left
    without its call while another took two candidates."""

    def candidates(k: int) -> Iterator[int]:
        lo, hi, image = slots[k][0], slots[k][1], slots[k][2]
        return free.window(method, lo, hi, image)

    holder: dict[int, int] = {}
    left: list[int] = []
    for k in range(len(slots)):
        first = next((i for i in candidates(k) if i not in holder), None)
        if first is None:
            left.append(k)
        else:
            holder[first] = k

    for k in left:
        _augment(k, set(), 0, holder, candidates)
    return holder


def _augment(
    k: int,
    seen: set[int],
    depth: int,
    holder: dict[int, int],
    candidates: Callable[[int], Iterator[int]],
) -> bool:
    """Kuhn's augmenting step of :func:`_match_slots`; a module function, as a recursive
    closure would be a reference cycle left to the cycle collector."""
    if depth > AUGMENT_DEPTH:
        return False
    for i in candidates(k):
        if i in seen:
            continue
        seen.add(i)
        other = holder.get(i)
        if other is None or _augment(other, seen, depth + 1, holder, candidates):
            holder[i] = k
            return True
    return False


@dataclass(frozen=True)
class Built:
    """What ``build`` found in one recording."""

    pods: list[Pod]
    foreign_containers: dict[str, int]
    """Containers of containerd namespaces other than CRI's, per namespace (no pods)."""


@dataclass(frozen=True)
class Prepared:
    """What the pods of one recording are built from (``prepare``): Python objects only, so
    the events can be released before the pods are built."""

    pods: dict[str, PodInputs]
    ctx: Context
    images: dict[str, list[tuple[Call, str | None]]]


def prepare(ev: pd.DataFrame) -> Prepared:
    """The vectorised part: every pod's inputs and the image calls matched to them."""
    pods, ctx, image_calls = pod_inputs(ev)
    return Prepared(pods, ctx, assign_image_calls(pods, image_calls))


def build_prepared(prepared: Prepared, host: str, lossy: Sequence[tuple[int, int]] = ()) -> Built:
    """Every pod start of a prepared recording, and the containers of other containerd
    namespaces. ``lossy`` are the drop windows (same clock as the events): a sandbox with too
    little left to build is still reported, as ``incomplete``, when its events touch one (its
    start may be among what was lost)."""
    ctx, images = prepared.ctx, prepared.images
    out = []
    for inputs in prepared.pods.values():
        pod = build_pod(host, inputs, ctx, images.get(inputs.sandbox_id, []))
        if pod is None and lossy:
            pod = _partial_pod(host, inputs, lossy)
        if pod is not None:
            out.append(pod)
    return Built(out, ctx.foreign)


def build(ev: pd.DataFrame, host: str, lossy: Sequence[tuple[int, int]] = ()) -> Built:
    """``build_prepared(prepare(ev), ...)``, for a caller that keeps the events anyway."""
    return build_prepared(prepare(ev), host, lossy)


def build_pods(ev: pd.DataFrame, host: str, lossy: Sequence[tuple[int, int]] = ()) -> list[Pod]:
    """The pods of :func:`build`."""
    return build(ev, host, lossy).pods


def _partial_pod(host: str, inputs: PodInputs, lossy: Sequence[tuple[int, int]]) -> Pod | None:
    """What is left of a pod whose start events may have been lost (a drop window began before
    its last event): its span and names, no phases."""
    times = [
        t for p in inputs.procs if not p.seeded for t in (p.start_ns, p.end_ns) if t is not None
    ]
    times += [t for c in inputs.calls for t in (c.start_ns, c.end_ns) if t is not None]
    if not times:
        return None
    start, end = min(times), max(times)
    if not any(lo <= end for lo, _ in lossy):
        return None  # tear-down of a pod that started before the recording, nothing lost
    cni = [p for p in inputs.procs if p.is_cni_plugin]
    names = _names(inputs, None, cni)
    return Pod(
        host=host,
        sandbox_id=inputs.sandbox_id,
        name=names.get("name"),
        namespace=names.get("namespace"),
        uid=names.get("uid"),
        status="incomplete",
        start_ns=start,
        end_ns=end,
        phases=(Phase("pod", None, "pod", start, end),),
        incomplete_reason=LOST_EVENTS,
    )
