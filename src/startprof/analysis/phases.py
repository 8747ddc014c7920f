"""Cut each pod start into the canonical phases of docs/architecture.md.

The heavy, per-event work is vectorised (process table, attribution, per-process spans, netlink
grouping); what remains per pod is assembling a few dozen spans from pre-grouped rows.

Sources, in order of preference: the CRI calls decoded from containerd's socket (RunPodSandbox,
CreateContainer, StartContainer bound the sandbox and container phases exactly as the kubelet
sees them) and the kernel's process events (CNI plugins, shims, runtimes, entrypoints). Without
socket data the sandbox and container phases are bounded by process events, and their
``source`` attribute says ``kernel``.
"""

from __future__ import annotations

import heapq
import re
from bisect import bisect_left
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import pandas as pd
import pyarrow as pa

from startprof.analysis.critical_path import apply_critical_path, bottleneck
from startprof.analysis.losses import LOST_EVENTS
from startprof.analysis.model import STARTED_BEFORE, STILL_STARTING, Phase, Pod, PodStatus
from startprof.analysis.processes import (
    CREATING_VERBS,
    RUNTIMES,
    SEEDED_START_NS,
    SHIM_PREFIX,
    STARTING_VERBS,
    attribute,
    basename,
    dirname,
    foreign_containers,
    missing,
    processes,
    runtime_programs,
    runtime_verb,
)
from startprof.cri.api import V1, V1ALPHA2, path_of
from startprof.events import attrs_of
from startprof.linux import CLONE_NEWNET, type_name

RUN_POD_SANDBOX = path_of("RunPodSandbox")
CREATE_CONTAINER = path_of("CreateContainer")
START_CONTAINER = path_of("StartContainer")
STOP_CONTAINER = path_of("StopContainer")
IMAGE_STATUS = path_of("ImageStatus")
PULL_IMAGE = path_of("PullImage")
IMAGE_METHODS = (IMAGE_STATUS, PULL_IMAGE)
NOT_ENTRYPOINTS = ("/proc/self/exe",)
STAYED_UP_NS = 1_000_000_000
"""A container whose entrypoint exits on its own sooner than this after its exec crashed (the
kubelet restarts it: a crash loop); one that runs longer stayed up, and its start ended at its
exec. Keep in sync with ``startprof.lab.kinds.STAY_UP_S``."""
_CNI_ERROR = re.compile(r'plugin type="(?P<type>[^"]+)"[^:]*? failed \((?:add|delete|check)\): ')
_RUNTIME_ERROR = re.compile(r"OCI runtime (?P<verb>[a-z]+) failed: (?:[\w.-]+ (?P=verb) failed: )?")


def canonical_method(method: str) -> str:
    """``runtime.v1alpha2`` paths as their ``runtime.v1`` twins: containerd 1.6 serves both,
    with the same messages, and older kubelets call the first."""
    prefix = f"/{V1ALPHA2}."
    return f"/{V1}." + method[len(prefix) :] if method.startswith(prefix) else method


@dataclass(frozen=True)
class Call:
    method: str
    start_ns: int
    end_ns: int | None
    status: str | None
    sandbox_id: str | None
    container: str | None
    container_id: str | None
    pod: str | None
    namespace: str | None
    uid: str | None
    attrs: Mapping[str, Any]

    @property
    def ok(self) -> bool:
        return self.status in (None, "OK")


@dataclass(eq=False)
class Proc:
    """One process lifetime as the pod builder sees it. The derived facts below are computed
    once at construction: the builder asks them of every process many times."""

    proc_id: int
    pid: int
    parent_proc: int | None
    start_ns: int
    exec_ns: int | None
    exec_done_ns: int | None
    end_ns: int | None
    exit_code: int | None
    argv: tuple[str, ...]
    filename: str | None
    env: Mapping[str, str]
    image: str | None
    sandbox_id: str | None
    container_id: str | None
    runtimes: frozenset[str] = RUNTIMES
    """The programs acting as OCI runtimes in this recording (``runtime_programs``)."""
    name: str = field(init=False)
    program: str = field(init=False)
    """The program it was started as (argv[0]), not what it later re-exec'ed itself into."""
    is_cni_plugin: bool = field(init=False)
    """Exec'ed from a CNI_PATH directory with CNI_COMMAND set (iptables inherits the
    variables but lives elsewhere)."""
    runtime_verb: str | None = field(init=False)
    runtime: str | None = field(init=False)
    """The OCI runtime it ran as: runc for runc, and for a wrapper that exec'ed runc too."""
    seeded: bool = field(init=False)
    """Alive when the recording began: its start is not in the recording."""

    def __post_init__(self) -> None:
        first = self.argv[0] if self.argv else ""
        self.name = basename(self.image or self.filename or first) or "?"
        self.program = basename(self.filename or first) or "?"
        cni_dirs = [d for d in self.env.get("CNI_PATH", "").split(":") if d]
        self.is_cni_plugin = bool(
            "CNI_COMMAND" in self.env and self.filename and dirname(self.filename) in cni_dirs
        )
        self.seeded = self.start_ns <= SEEDED_START_NS
        self.runtime_verb = None
        self.runtime = None
        if self.program in self.runtimes:
            self.runtime_verb = runtime_verb(self.argv)
            became = basename(self.image) if self.image else ""
            internal = not self.image or self.image.startswith("/dev/fd/")
            self.runtime = self.program if internal or self.image in NOT_ENTRYPOINTS else became

    @property
    def starts_container(self) -> bool:
        """An OCI runtime's create, start or run: it makes a container run."""
        return self.runtime_verb in STARTING_VERBS

    @property
    def failed(self) -> bool:
        """Exited with a code other than 0: a CNI plugin, runtime or hook that failed."""
        return self.exit_code not in (None, 0)

    def exit_error(self, what: str = "") -> str | None:
        """``exit code N`` (after ``what``, e.g. ``runc create ``) when it failed."""
        return f"{what}exit code {self.exit_code}" if self.failed else None

    @property
    def wrapper(self) -> str | None:
        """The wrapper it was started as, when it exec'ed another runtime (nvidia-style)."""
        return self.program if self.runtime and self.runtime != self.program else None


@dataclass
class PodInputs:
    """Everything one pod's phases are built from."""

    sandbox_id: str
    procs: list[Proc] = field(default_factory=list)
    calls: list[Call] = field(default_factory=list)
    annotations: dict[str, Any] = field(default_factory=dict)
    netns: tuple[int, int] | None = None
    container_names: dict[str, str] = field(default_factory=dict)
    """container id -> name, from bundle annotations (the kernel's view without CRI data)."""


def _values(series: pd.Series) -> list[Any]:
    """A column as Python objects with None for every kind of null (NA, NaN, None)."""
    try:
        # through Arrow: fast for Arrow-backed columns, and NaN becomes null for numpy ones
        return pa.array(series, from_pandas=True).to_pylist()  # type: ignore[no-any-return]
    except (pa.ArrowException, TypeError, ValueError):
        return [None if missing(v) else v for v in series.tolist()]


def _records(frame: pd.DataFrame, columns: Sequence[str]) -> list[dict[str, Any]]:
    """Rows as dicts; column-wise conversion is several times faster than ``to_dict``."""
    values = [_values(frame[c]) for c in columns]
    return [dict(zip(columns, row, strict=True)) for row in zip(*values, strict=True)]


def _env_map(env: Any) -> dict[str, str]:
    if missing(env):
        return {}
    return dict(var.split("=", 1) for var in env if "=" in var)


def _cni_args(env: Mapping[str, str]) -> dict[str, str]:
    out = {}
    for item in env.get("CNI_ARGS", "").split(";"):
        key, _, value = item.partition("=")
        out[key] = value
    return out


CALL_COLUMNS = [
    "method",
    "start_ns",
    "end_ns",
    "grpc_status",
    "sandbox_id",
    "container",
    "container_id",
    "pod",
    "namespace",
    "uid",
    "attrs",
]


def cri_calls(ev: pd.DataFrame) -> list[Call]:
    calls = ev.loc[ev["kind"] == "cri_call", CALL_COLUMNS]
    cols = CALL_COLUMNS
    return [
        Call(
            method=canonical_method(r["method"] or "?"),
            start_ns=int(r["start_ns"]),
            end_ns=None if r["end_ns"] is None else int(r["end_ns"]),
            status=r["grpc_status"],
            sandbox_id=r["sandbox_id"],
            container=r["container"],
            container_id=r["container_id"],
            pod=r["pod"],
            namespace=r["namespace"],
            uid=r["uid"],
            attrs=attrs_of(r["attrs"]),
        )
        for r in _records(calls, cols)
        if r["start_ns"] is not None
    ]


def container_sandboxes(ev: pd.DataFrame, calls: Iterable[Call]) -> dict[str, str]:
    """container id -> sandbox id, from CreateContainer replies and bundle annotations."""
    mapping: dict[str, str] = {}
    has_ids = ev["container_id"].notna() & ev["sandbox_id"].notna()
    notes = ev.loc[(ev["kind"] == "annotation") & has_ids, ["container_id", "sandbox_id"]]
    for cid, sid in zip(notes["container_id"], notes["sandbox_id"], strict=True):
        mapping[str(cid)] = str(sid)
    for call in calls:
        if call.container_id and call.sandbox_id:
            mapping[call.container_id] = call.sandbox_id
    return mapping


PROC_COLUMNS = [
    "proc_id",
    "pid",
    "parent_proc",
    "start_ns",
    "exec_ns",
    "exec_done_ns",
    "end_ns",
    "exit_code",
    "argv",
    "filename",
    "env",
    "image",
    "sandbox_id",
    "container_id",
]


def _int_or_none(value: Any) -> int | None:
    return None if value is None else int(value)


def _procs(table: pd.DataFrame) -> list[Proc]:
    columns = [_values(table[c]) for c in PROC_COLUMNS]
    runtimes = table.attrs.get("runtimes") or runtime_programs(
        a for a in columns[PROC_COLUMNS.index("argv")] if a
    )
    return [
        Proc(
            int(proc_id),
            int(pid),
            _int_or_none(parent),
            int(start),
            _int_or_none(exec_ns),
            _int_or_none(done),
            _int_or_none(end),
            _int_or_none(code),
            tuple(argv) if argv is not None else (),
            filename,
            _env_map(env),
            image,
            sandbox,
            container,
            runtimes,
        )
        for (
            proc_id,
            pid,
            parent,
            start,
            exec_ns,
            done,
            end,
            code,
            argv,
            filename,
            env,
            image,
            sandbox,
            container,
        ) in zip(*columns, strict=True)
    ]


def _op_names(sends: pd.DataFrame) -> pd.Series:
    """``RTM_NEWLINK``-style names, computed once per distinct (protocol, type) pair."""
    pairs = sends[["nl_proto", "nl_type"]].astype("int64")
    keys = pairs["nl_proto"] * 65536 + pairs["nl_type"]
    names = {k: type_name(int(k) >> 16, int(k) & 0xFFFF) for k in keys.unique()}
    return keys.map(names)


def netlink_ops(ev: pd.DataFrame) -> dict[int, dict[str, int]]:
    """Netlink requests per process and op (iptables' NFT_* traffic is kept as counts only)."""
    sends = ev.loc[
        (ev["kind"] == "nl_send") & ev["proc_id"].notna(), ["proc_id", "nl_proto", "nl_type"]
    ]
    if sends.empty:
        return {}
    counts = sends.assign(op=_op_names(sends)).groupby(["proc_id", "op"]).size().reset_index()
    out: dict[int, dict[str, int]] = defaultdict(dict)
    for proc_id, op, n in zip(counts["proc_id"], counts["op"], counts[0], strict=True):
        out[int(proc_id)][str(op)] = int(n)
    return out


def netlink_groups(ev: pd.DataFrame, proc_ids: Iterable[int] | None = None) -> pd.DataFrame:
    """Runs of consecutive netlink requests of one op by one process, with their ack time.

    ``proc_ids`` limits the work to the processes that get netlink spans (the CNI plugins).
    Columns: proc_id, op, start_ns, end_ns, count, errors, ifnames, kinds.
    """
    columns = [
        "proc_id",
        "nl_proto",
        "nl_type",
        "nl_seq",
        "start_ns",
        "end_ns",
        "ifname",
        "link_kind",
    ]
    wanted = (ev["kind"] == "nl_send") & ev["proc_id"].notna()
    if proc_ids is not None:
        wanted &= ev["proc_id"].isin(list(proc_ids))
    sends = ev.loc[wanted, columns].copy()
    if sends.empty:
        return pd.DataFrame(
            columns=["proc_id", "op", "start_ns", "end_ns", "count", "errors", "ifnames", "kinds"]
        )
    acks = ev.loc[
        (ev["kind"] == "nl_ack") & ev["proc_id"].notna(), ["proc_id", "nl_seq", "ts_ns", "ret"]
    ]
    ack_key = acks[["proc_id", "nl_seq", "ts_ns", "ret"]].rename(
        columns={"ts_ns": "ack_ns", "ret": "ack_ret"}
    )
    ack_key = ack_key.drop_duplicates(["proc_id", "nl_seq"], keep="first")
    sends = sends.merge(ack_key, on=["proc_id", "nl_seq"], how="left")
    sends["op"] = _op_names(sends)
    sends = sends.sort_values(["proc_id", "start_ns"], kind="stable")
    new_run = (sends["proc_id"] != sends["proc_id"].shift()) | (sends["op"] != sends["op"].shift())
    sends["run"] = new_run.cumsum()
    sends["done_ns"] = sends["ack_ns"].where(sends["ack_ns"].notna(), sends["end_ns"])
    sends["failed"] = sends["ack_ret"].fillna(0) < 0
    grouped = sends.groupby("run", sort=False)
    out = pd.DataFrame(
        {
            "proc_id": grouped["proc_id"].first(),
            "op": grouped["op"].first(),
            "start_ns": grouped["start_ns"].min(),
            "end_ns": grouped["done_ns"].max(),
            "count": grouped.size(),
            "errors": grouped["failed"].sum(),
        }
    )
    # distinct interface names and link kinds per run: few runs carry any, so work on those only
    for column, target in (("ifname", "ifnames"), ("link_kind", "kinds")):
        named = sends.loc[sends[column].notna(), ["run", column]].drop_duplicates()
        named = named.sort_values(column, kind="stable")
        # a loop, not groupby().agg(list): that calls back into Python once per run
        lists: dict[Any, list[Any]] = defaultdict(list)
        for run, value in zip(_values(named["run"]), _values(named[column]), strict=True):
            lists[run].append(value)
        out[target] = [lists.get(run, []) for run in out.index]
    return out.reset_index(drop=True)


def _netns_creations(ev: pd.DataFrame, containerd_procs: set[int]) -> list[tuple[int, int]]:
    """containerd's unshare(CLONE_NEWNET) .. the setns back of the same thread."""
    mask = ev["kind"].isin(["unshare", "setns"]) & ev["proc_id"].isin(containerd_procs)
    columns = ["kind", "tid", "flags", "nstype", "start_ns", "end_ns"]
    ns = ev.loc[mask, columns]
    spans = []
    pending: dict[int, int] = {}
    for kind, tid, flags, nstype, start, end in zip(
        *(_values(ns[c]) for c in columns), strict=True
    ):
        if kind == "unshare" and not missing(flags) and int(flags) & CLONE_NEWNET:
            pending[int(tid)] = int(start)
        elif (
            kind == "setns"
            and int(tid) in pending
            and (missing(nstype) or int(nstype) in (0, CLONE_NEWNET))
        ):
            spans.append((pending.pop(int(tid)), int(end)))
    return spans


def _is_shim_start(proc: Proc) -> bool:
    return proc.program.startswith(SHIM_PREFIX) and bool(proc.argv) and proc.argv[-1] == "start"


class PhaseBuilder:
    """Builds one pod's phase list; ids are path-like and stable for the same recording."""

    def __init__(self) -> None:
        self.phases: list[Phase] = []
        self._ids: Counter[str] = Counter()
        self._position: dict[str, int] = {}

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
        self._ids[base] += 1
        pid = base if self._ids[base] == 1 else f"{base}#{self._ids[base]}"
        if parent is not None:  # a child never leaves its parent (clock skew, shared shims)
            start = min(max(start, parent.start_ns), parent.end_ns)
            end = min(max(end, start), parent.end_ns)
        phase = Phase(
            id=pid,
            parent_id=None if parent is None else parent.id,
            name=name,
            start_ns=start,
            end_ns=max(end, start),
            status="ok" if error is None else "error",
            error=error,
            attributes={k: v for k, v in attributes.items() if v is not None},
        )
        self._position[pid] = len(self.phases)
        self.phases.append(phase)
        return phase

    def replace(self, phase: Phase, **attributes: Any) -> Phase:
        """The phase with more attributes, swapped in place."""
        updated = replace(phase, attributes={**phase.attributes, **attributes})
        self.phases[self._position[phase.id]] = updated
        return updated


@dataclass
class Context:
    """Per-recording lookups the pod builder needs."""

    children: dict[int, list[Proc]]
    netlink: dict[int, list[dict[str, Any]]]
    recording_end_ns: int
    ops: dict[int, dict[str, int]] = field(default_factory=dict)
    procs: dict[int, Proc] = field(default_factory=dict)
    """Every process lifetime by proc_id."""
    foreign: dict[str, int] = field(default_factory=dict)


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


def _netlink_ops(ctx: Context, proc: Proc) -> Counter[str]:
    return Counter(ctx.ops.get(proc.proc_id, {}))


def _add_netlink(b: PhaseBuilder, parent: Phase, proc: Proc, ctx: Context) -> Counter[str]:
    """One span per run of same-op requests. An error reply (EEXIST for a bridge that is already
    there) is an answer the plugin handles, not a failure: it is counted, not flagged."""
    for group in ctx.netlink.get(proc.proc_id, ()):
        b.add(
            parent,
            f"netlink {group['op']}",
            int(group["start_ns"]),
            int(group["end_ns"]),
            count=int(group["count"]),
            errors=int(group["errors"]) or None,
            ifnames=list(group["ifnames"]) or None,
            link_kinds=list(group["kinds"]) or None,
            pid=proc.pid,
        )
    return _netlink_ops(ctx, proc)


def _add_cni_plugin(b: PhaseBuilder, parent: Phase, proc: Proc, ctx: Context) -> Phase:
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
    )
    ops = _add_netlink(b, phase, proc, ctx)
    for child in ctx.children.get(proc.proc_id, ()):
        if child.is_cni_plugin:
            _add_cni_plugin(b, phase, child, ctx)
        elif child.exec_ns is not None:
            ops += _add_helper(b, phase, child, ctx)
    if ops:
        phase = b.replace(phase, netlink_ops=dict(ops))
    return phase


def _add_helper(b: PhaseBuilder, parent: Phase, proc: Proc, ctx: Context) -> Counter[str]:
    """``exec <child>`` for a program a CNI plugin ran (iptables); returns its netlink ops."""
    start, end = _proc_span(proc, ctx)
    helper = b.add(
        parent,
        f"exec {proc.name}",
        start,
        end,
        **_proc_attrs(proc),
        # iptables -C exits 1 for "no such rule": a question, not a failure
        exit_status="nonzero" if proc.failed else None,
    )
    # a helper's netlink work (iptables-nft: a dozen NFT_* messages) stays a count
    ops: Counter[str] = Counter()
    for descendant in _subtree(ctx, proc):
        ops += _netlink_ops(ctx, descendant)
    if ops:
        b.replace(helper, netlink_ops=dict(ops))
    return ops


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


def _add_runtime(
    b: PhaseBuilder, parent: Phase, procs: list[Proc], container_id: str, ctx: Context
) -> tuple[str | None, Proc | None]:
    """runtime.shim, runtime.create (with its hooks), runtime.start of one container; returns
    the runtime and the entrypoint."""
    mine = [p for p in procs if p.container_id == container_id]
    runtime = None
    for shim in (p for p in mine if _is_shim_start(p)):
        start, end = _proc_span(shim, ctx)
        b.add(parent, "runtime.shim", start, end, **_proc_attrs(shim))
    entry = _runtime_entrypoint([p for p in mine if p.starts_container], ctx)
    for proc in sorted((p for p in mine if p.starts_container), key=lambda p: p.start_ns):
        runtime = proc.runtime or proc.program
        start, end = _proc_span(proc, ctx)
        common = {"runtime": runtime, "wrapper": proc.wrapper, **_proc_attrs(proc)}
        error = proc.exit_error(f"{runtime} {proc.runtime_verb} ")
        if proc.runtime_verb == "create":
            phase = b.add(
                parent,
                "runtime.create",
                start,
                end,
                error=error,
                processes=len(_subtree(ctx, proc)),
                **common,
            )
            _add_hooks(b, phase, _hooks(proc, ctx, proc.end_ns), ctx)
        else:
            exec_end = _exec_end(entry)
            phase = b.add(
                parent, "runtime.start", start, max(end, exec_end or end), error=error, **common
            )
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
    return runtime


def _add_images(
    b: PhaseBuilder, pod: Phase, image_calls: Sequence[tuple[Call, str | None]]
) -> None:
    """The image calls that named this pod (PullImage's sandbox_config) or its containers'
    images, each right before its container's create."""
    for call, for_container in image_calls:
        if call.end_ns is None:
            continue
        b.add(
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
        if p.container_id == cid and (p.starts_container or _is_shim_start(p))
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
        reason = STILL_STARTING if containers else "no container seen"
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
    _add_images(b, pod, image_calls)

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
    phases_t, steps = apply_critical_path(phases)
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
        args = _cni_args(proc.env)
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
            start = min(max(p.start_ns, parent.start_ns), parent.end_ns)
            end = min(max(p.end_ns, start), parent.end_ns)
            if (start, end) != (p.start_ns, p.end_ns):
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


def _sandbox_of_failed_call(
    procs: Sequence[Proc], call: Call, sandbox_uids: Mapping[str, str], claimed: set[str]
) -> str | None:
    """A failed RunPodSandbox replies no sandbox id: it is the sandbox of the same pod uid
    whose CNI plugins (CNI_ARGS K8S_POD_UID) or OCI runtime (bundle annotations) ran during
    the call; else, when the runtime failed before its bundle could be read, the one sandbox
    no other call claims whose runtime created it during the call."""
    end = call.end_ns if call.end_ns is not None else float("inf")
    unnamed: set[str] = set()
    for p in procs:
        if not p.sandbox_id or not call.start_ns <= p.start_ns <= end:
            continue
        if p.is_cni_plugin and _cni_args(p.env).get("K8S_POD_UID") == call.uid:
            return p.sandbox_id
        if p.runtime_verb == "create" and p.container_id == p.sandbox_id:
            uid = sandbox_uids.get(p.sandbox_id)
            if uid == call.uid:
                return p.sandbox_id
            if uid is None and p.sandbox_id not in claimed:
                unnamed.add(p.sandbox_id)
    return unnamed.pop() if len(unnamed) == 1 else None


def _assign_windows(
    points: Sequence[tuple[int, int]], windows: Sequence[tuple[int, int, str | None]]
) -> list[str | None]:
    """For each point (sorted), the earliest-starting window holding it that no earlier point
    took; None when there is none. A sweep with a heap: O(n log n), not points x windows."""
    out: list[str | None] = []
    heap: list[tuple[int, int, str]] = []
    i = 0
    for start, _ in points:
        while i < len(windows) and windows[i][0] <= start:
            w_start, w_end, sid = windows[i]
            if sid is not None:
                heapq.heappush(heap, (w_start, w_end, sid))
            i += 1
        while heap and heap[0][1] < start:  # over before this point, so before all later ones
            heapq.heappop(heap)
        out.append(heapq.heappop(heap)[2] if heap else None)
    return out


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

    def same_image(call: Call, image: str | None) -> bool:
        named = call.attrs.get("image")
        return image is None or named is None or named == image

    starts = [image_calls[i].start_ns for i in ordered]

    def pick(method: str, lo: int, hi: int, image: str | None, last: bool) -> int | None:
        """The first (or ``last``) call of ``method`` for ``image`` inside (lo, hi) that no
        other container took. Calls are sorted by start: bisect to the window, then walk."""
        window = range(bisect_left(starts, lo), bisect_left(starts, hi))
        for k in reversed(window) if last else window:
            i = ordered[k]
            call = image_calls[i]
            if (
                i not in taken
                and call.method == method
                and call.end_ns is not None
                and call.end_ns <= hi
                and same_image(call, image)
            ):
                return i
        return None

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
        status = pick(IMAGE_STATUS, lo, call.start_ns, call.attrs.get("image"), last=True)
        for_container = min(after, key=lambda s: s[1])[3] if after else None
        if status is not None:
            taken.add(status)
            out[owner].append((image_calls[status], for_container))
        out[owner].append((call, for_container))
    # the other containers, in the order their pods got to them: a pod worker asks for the
    # image as soon as its previous step returned, so the first call after that step is its
    for lo, hi, image, name, sid in sorted(slots, key=lambda s: (s[0], s[1])):
        if any(p[0] == sid and lo <= p[1] < hi for p in pulled):
            continue  # its image calls came with its pull
        for method in (IMAGE_STATUS, PULL_IMAGE):
            found = pick(method, lo, hi, image, last=False)
            if found is not None:
                taken.add(found)
                out[sid].append((image_calls[found], name))
    for matched in out.values():
        matched.sort(key=lambda pair: pair[0].start_ns)
    return out


@dataclass(frozen=True)
class Built:
    """What ``build`` found in one recording."""

    pods: list[Pod]
    foreign_containers: dict[str, int]
    """Containers of containerd namespaces other than CRI's, per namespace (no pods)."""


def pod_inputs(ev: pd.DataFrame) -> tuple[dict[str, PodInputs], Context, list[Call]]:
    """Vectorised preparation: process table, attribution, netlink groups, CRI calls."""
    calls = cri_calls(ev)
    by_container = container_sandboxes(ev, calls)
    table = processes(ev)
    table = attribute(table, by_container)
    procs = _procs(table)
    children: dict[int, list[Proc]] = defaultdict(list)
    for p in procs:
        if p.parent_proc is not None:
            children[p.parent_proc].append(p)
    groups = netlink_groups(ev, (p.proc_id for p in procs if p.is_cni_plugin))
    netlink: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for group in _records(groups, list(groups.columns)):
        netlink[int(group["proc_id"])].append(group)
    end_ns = int(ev["ts_ns"].max()) if len(ev) else 0
    ctx = Context(
        children=children,
        netlink=netlink,
        recording_end_ns=end_ns,
        ops=netlink_ops(ev),
        procs={p.proc_id: p for p in procs},
        foreign=foreign_containers(table),
    )

    pods: dict[str, PodInputs] = {}

    def get(sid: str) -> PodInputs:
        if sid not in pods:
            pods[sid] = PodInputs(sid)
        return pods[sid]

    notes = _records(
        ev[ev["kind"] == "annotation"],
        ["sandbox_id", "pod", "namespace", "uid", "container", "container_id"],
    )
    sandbox_uids = {
        str(n["sandbox_id"]): str(n["uid"]) for n in notes if n["sandbox_id"] and n["uid"]
    }
    for p in procs:
        if p.sandbox_id:
            get(p.sandbox_id).procs.append(p)
    claimed = {c.sandbox_id for c in calls if c.method == RUN_POD_SANDBOX and c.sandbox_id}
    for c in calls:
        if c.method == RUN_POD_SANDBOX and c.sandbox_id:
            get(c.sandbox_id).calls.append(c)
        elif c.method == RUN_POD_SANDBOX and c.uid:
            failed_sandbox = _sandbox_of_failed_call(procs, c, sandbox_uids, claimed)
            if failed_sandbox:
                claimed.add(failed_sandbox)
                get(failed_sandbox).calls.append(c)
    for c in calls:
        if c.method in (CREATE_CONTAINER, START_CONTAINER, STOP_CONTAINER):
            sid = c.sandbox_id or by_container.get(c.container_id or "")
            if sid and (c.method != STOP_CONTAINER or sid in pods):
                get(sid).calls.append(c)
    for rec in notes:
        if rec["sandbox_id"] in pods:
            inputs = pods[rec["sandbox_id"]]
            for key, col in (("name", "pod"), ("namespace", "namespace"), ("uid", "uid")):
                if rec[col]:
                    inputs.annotations.setdefault(key, rec[col])
            if rec["container"] and rec["container_id"]:
                inputs.container_names.setdefault(rec["container_id"], rec["container"])

    # netns creations: each to the RunPodSandbox whose window holds it, in order; only pods
    # with a network of their own get one (hostNetwork pods run no CNI ADD and make none)
    containerd = {
        p.proc_id
        for p in procs
        if p.program == "containerd" or (p.argv and basename(p.argv[0]) == "containerd")
    }
    networked = {
        p.sandbox_id for p in procs if p.is_cni_plugin and p.env.get("CNI_COMMAND") == "ADD"
    }
    creations = sorted(_netns_creations(ev, containerd))
    windows = sorted(
        (c.start_ns, c.end_ns or end_ns, c.sandbox_id)
        for c in calls
        if c.method == RUN_POD_SANDBOX and c.sandbox_id in networked
    )
    for (start, end), sid in zip(creations, _assign_windows(creations, windows), strict=True):
        if sid is not None:
            get(sid).netns = (start, end)
    image_calls = sorted((c for c in calls if c.method in IMAGE_METHODS), key=lambda c: c.start_ns)
    return pods, ctx, image_calls


def build(ev: pd.DataFrame, host: str, lossy: Sequence[tuple[int, int]] = ()) -> Built:
    """Every pod start in the events, and the containers of other containerd namespaces.
    ``lossy`` are the drop windows (same clock as ``ev``): a sandbox with too little left to
    build is still reported, as ``incomplete``, when its events touch one (its start may be
    among what was lost)."""
    pods, ctx, image_calls = pod_inputs(ev)
    images = assign_image_calls(pods, image_calls)
    out = []
    for inputs in pods.values():
        pod = build_pod(host, inputs, ctx, images.get(inputs.sandbox_id, []))
        if pod is None and lossy:
            pod = _partial_pod(host, inputs, lossy)
        if pod is not None:
            out.append(pod)
    return Built(out, ctx.foreign)


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
