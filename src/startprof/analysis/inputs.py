"""The vectorised preparation of a recording for the pod builder (``phases``): CRI calls,
the process table and its attribution, netlink groups, netns creations, and each pod's
inputs. The work over every event happens here, once per recording, in pandas; what is
left per pod is assembling a few dozen spans from these pre-grouped rows.
"""

from __future__ import annotations

import functools
import heapq
import itertools
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

from startprof.analysis.frames import cells, has_proc, index_kinds, kind_mask, missing, rows_where
from startprof.analysis.image_steps import IMAGE_KINDS, ImgOp, assign
from startprof.analysis.processes import (
    RUNTIMES,
    SEEDED_START_NS,
    SHIM_PREFIX,
    STARTING_VERBS,
    attribute,
    basename,
    dirname,
    foreign_containers,
    processes,
    runtime_programs,
    runtime_verb,
)
from startprof.analysis.runtime_steps import RUNTIME_OP_KINDS, Op
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


@functools.lru_cache(maxsize=4096)
def in_cni_path(filename: str, cni_path: str) -> bool:
    """Whether ``filename`` lies in a directory of ``CNI_PATH``: remembered, as a recording's
    CNI plugins and helpers are a few programs under one ``CNI_PATH``."""
    return dirname(filename) in [d for d in cni_path.split(":") if d]


@dataclass(eq=False, slots=True)
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
        self.is_cni_plugin = bool(
            "CNI_COMMAND" in self.env
            and self.filename
            and in_cni_path(self.filename, self.env.get("CNI_PATH", ""))
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


def _records(frame: pd.DataFrame, columns: Sequence[str]) -> list[dict[str, Any]]:
    """Rows as dicts; column-wise conversion is several times faster than ``to_dict``."""
    values = [cells(frame[c]) for c in columns]
    return [dict(zip(columns, row, strict=True)) for row in zip(*values, strict=True)]


def _env_maps(envs: Iterable[Any]) -> list[Mapping[str, str]]:
    """Each process's environment (its ``CNI_*`` variables) as a mapping, read only. The
    environments repeat from process to process (a plugin's iptables children inherit its
    ``CNI_*``: 12,000 distinct in 46,000 processes at 1,000 pods), so each distinct one is one
    dict, shared by every process that has it, and each distinct ``NAME=value`` is split once."""
    halves: dict[str, tuple[str, str] | None] = {}
    made: dict[tuple[str, ...], dict[str, str]] = {}
    nothing: dict[str, str] = {}

    def split(var: str) -> tuple[str, str] | None:
        if var not in halves:
            name, eq, value = var.partition("=")
            halves[var] = (name, value) if eq else None
        return halves[var]

    def mapping(env: list[str] | None) -> dict[str, str]:
        if not env:
            return nothing
        key = tuple(env)
        found = made.get(key)
        if found is None:
            found = made[key] = dict(filter(None, map(split, env)))
        return found

    return list(map(mapping, envs))


def cni_args(env: Mapping[str, str]) -> dict[str, str]:
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
    calls = rows_where(ev, kind_mask(ev, "cri_call"), CALL_COLUMNS)
    # rows straight from the columns: a dict per call first cost more than the calls
    # themselves (100,000 at 10,000 pods)
    rows = zip(*(cells(calls[c]) for c in CALL_COLUMNS), strict=True)
    started = CALL_COLUMNS.index("start_ns")
    return [_call(*row) for row in rows if row[started] is not None]


def _call(
    method: str | None,
    start_ns: int,
    end_ns: int | None,
    status: str | None,
    sandbox_id: str | None,
    container: str | None,
    container_id: str | None,
    pod: str | None,
    namespace: str | None,
    uid: str | None,
    attrs: object,
) -> Call:
    """A call of a ``cri_call`` row (``CALL_COLUMNS``, in that order)."""
    return Call(
        canonical_method(method or "?"),
        int(start_ns),
        None if end_ns is None else int(end_ns),
        status,
        sandbox_id,
        container,
        container_id,
        pod,
        namespace,
        uid,
        attrs_of(attrs),
    )


def container_sandboxes(ev: pd.DataFrame, calls: Iterable[Call]) -> dict[str, str]:
    """container id -> sandbox id, from CreateContainer replies and bundle annotations."""
    mapping: dict[str, str] = {}
    has_ids = ev["container_id"].notna() & ev["sandbox_id"].notna()
    notes = rows_where(
        ev, kind_mask(ev, "annotation") & has_ids.to_numpy(), ["container_id", "sandbox_id"]
    )
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


INT_COLUMNS = frozenset(PROC_COLUMNS[:8])
"""The integer columns of ``PROC_COLUMNS``: ids, times, the exit code."""


def _procs(table: pd.DataFrame, runtimes: frozenset[str]) -> list[Proc]:
    # Python ints (or None) and lists straight from Arrow, no conversion per cell; a time
    # column that went through NumPy's NaN (a frame not read from a file) becomes Int64 first
    columns = [
        cells(
            table[c].astype("Int64")
            if c in INT_COLUMNS and table[c].dtype.kind == "f"
            else table[c]
        )
        for c in PROC_COLUMNS
    ]
    argv = columns[PROC_COLUMNS.index("argv")]
    columns[PROC_COLUMNS.index("argv")] = [() if a is None else tuple(a) for a in argv]
    columns[PROC_COLUMNS.index("env")] = _env_maps(columns[PROC_COLUMNS.index("env")])
    return list(map(Proc, *columns, itertools.repeat(runtimes, len(table))))


def _cuts(keys: np.ndarray) -> list[int]:
    """Where the runs of equal values of a sorted array begin, and its length: each run is
    ``keys[lo:hi]`` for consecutive ``lo, hi``."""
    return [0, *(np.flatnonzero(keys[1:] != keys[:-1]) + 1).tolist(), len(keys)]


def _op_ranks(sends: pd.DataFrame) -> tuple[list[str], np.ndarray]:
    """The ``RTM_NEWLINK``-style names of the sends' (protocol, type) pairs in name order, and
    each send's rank among them: the few distinct pairs are named once."""
    proto, nl_type = (sends[c].to_numpy(dtype="int64", na_value=0) for c in ("nl_proto", "nl_type"))
    # a hash of the 3.3 M sends of 10,000 pods, not a sort: their pairs are a few dozen
    key_of, keys = pd.factorize(proto * 65536 + nl_type, sort=True)
    key_names = [type_name(int(k) >> 16, int(k) & 0xFFFF) for k in keys]
    names = sorted(set(key_names))
    rank = np.array([names.index(n) for n in key_names], dtype="int64")
    return names, rank[key_of]


def netlink_ops(ev: pd.DataFrame) -> dict[int, dict[str, int]]:
    """Netlink requests per process and op (iptables' NFT_* traffic is kept as counts only),
    each process's ops in name order."""
    sends = rows_where(
        ev, kind_mask(ev, "nl_send") & has_proc(ev), ["proc_id", "nl_proto", "nl_type"]
    )
    if sends.empty:
        return {}
    # in numpy up to one dict per process: one unique() of proc_id x op rank counts every
    # process's ops in name order (a group-by and a Counter per row cost 2.4 s at 10,000 pods)
    procs = sends["proc_id"].to_numpy(dtype="int64")
    names, ranks = _op_ranks(sends)
    combined, counts = np.unique(procs * len(names) + ranks, return_counts=True)
    owners, ops = np.divmod(combined, len(names))
    cuts = _cuts(owners)
    op_names, n = [names[i] for i in ops.tolist()], counts.tolist()
    owner = owners.tolist()
    return {
        owner[lo]: dict(zip(op_names[lo:hi], n[lo:hi], strict=True)) for lo, hi in pairwise(cuts)
    }


class NetlinkRun(NamedTuple):
    """A run of consecutive same-op netlink requests of one process (``netlink_runs``)."""

    proc_id: int
    op: str
    start_ns: int
    end_ns: int
    """When the last request of the run was answered (its ack), else sent."""
    requests: int
    errors: int
    """Requests answered with an error (EEXIST, ...)."""
    ifnames: Sequence[str]
    """The distinct interface names the requests carried, in order."""
    kinds: Sequence[str]
    """The distinct link kinds (veth, bridge, ...) they carried, in order."""


_netlink_run = functools.partial(tuple.__new__, NetlinkRun)
"""A ``NetlinkRun`` of a row tuple, without the generated ``__new__``'s call per field."""

NETLINK_COLUMNS = [
    "proc_id",
    "nl_proto",
    "nl_type",
    "nl_seq",
    "start_ns",
    "end_ns",
    "ifname",
    "link_kind",
]


def _seq_keys(frame: pd.DataFrame) -> np.ndarray:
    """(proc_id, nl_seq) as one integer: nl_seq is 32 bits."""
    procs = frame["proc_id"].to_numpy(dtype="int64")
    seqs = frame["nl_seq"].to_numpy(dtype="int64", na_value=0)
    return np.asarray(procs * (1 << 32) + seqs)


def netlink_runs(
    ev: pd.DataFrame, proc_ids: Iterable[int] | None = None
) -> dict[int, list[NetlinkRun]]:
    """Runs of consecutive requests of one op by one process, by process, each process's in
    time order; a request is answered by the first ack of its process and sequence number.

    ``proc_ids`` limits the work to the processes that get netlink spans (the CNI plugins).
    In NumPy, one sort and a reduction per field: a pandas join and group-by cost a fixed
    10 ms per recording and 0.7 s at 10,000 pods. A request without a send time (a damaged
    row) is left out; one without an end ends when it was sent."""
    wanted = kind_mask(ev, "nl_send") & ev["start_ns"].notna().to_numpy(bool)
    if proc_ids is None:
        wanted &= has_proc(ev)
    else:
        ids = np.fromiter(proc_ids, dtype="int64")
        owner = ev["proc_id"].to_numpy(dtype="int64", na_value=-1)
        # a table of the few ids, not a hash of 6.9 M events' (10,000 pods: ms against 0.2 s)
        wanted &= np.isin(owner, ids, kind="table") if len(ids) else False
    sends = rows_where(ev, wanted, NETLINK_COLUMNS)
    if sends.empty:
        return {}
    procs = sends["proc_id"].to_numpy(dtype="int64")
    start = sends["start_ns"].to_numpy(dtype="int64")
    done = sends["end_ns"].to_numpy(dtype="int64", na_value=0, copy=True)  # written below
    unended = sends["end_ns"].isna().to_numpy(dtype=bool)
    done[unended] = start[unended]
    failed = np.zeros(len(sends), dtype=bool)
    acks = rows_where(
        ev,
        kind_mask(ev, "nl_ack") & has_proc(ev) & ev["nl_seq"].notna().to_numpy(bool),
        ["proc_id", "nl_seq", "ts_ns", "ret"],
    )
    if not acks.empty:
        distinct, first = np.unique(_seq_keys(acks), return_index=True)
        keys = _seq_keys(sends)
        at = np.minimum(np.searchsorted(distinct, keys), len(distinct) - 1)
        answered = (distinct[at] == keys) & sends["nl_seq"].notna().to_numpy(dtype=bool)
        rows = first[at[answered]]
        done[answered] = acks["ts_ns"].to_numpy(dtype="int64")[rows]
        failed[answered] = acks["ret"].to_numpy(dtype="int64", na_value=0)[rows] < 0
    names, ops = _op_ranks(sends)
    order = np.lexsort((start, procs))  # by process, then send time; stable
    procs, ops, start, done, failed = (a[order] for a in (procs, ops, start, done, failed))
    new_run = np.ones(len(order), dtype=bool)
    new_run[1:] = (procs[1:] != procs[:-1]) | (ops[1:] != ops[:-1])
    heads = np.flatnonzero(new_run)
    run_of = np.empty(len(order), dtype="int64")
    run_of[order] = np.cumsum(new_run) - 1  # each send's run, by its row in ``sends``
    runs = list(
        map(
            _netlink_run,
            zip(
                procs[heads].tolist(),
                list(map(names.__getitem__, ops[heads].tolist())),
                np.minimum.reduceat(start, heads).tolist(),
                np.maximum.reduceat(done, heads).tolist(),
                np.diff(np.append(heads, len(order))).tolist(),
                np.add.reduceat(failed.astype("int64"), heads).tolist(),
                _distinct_per_run(sends["ifname"], run_of, len(heads)),
                _distinct_per_run(sends["link_kind"], run_of, len(heads)),
                strict=True,
            ),
        )
    )
    owners = procs[heads]
    cuts = _cuts(owners)
    return {runs[lo].proc_id: runs[lo:hi] for lo, hi in pairwise(cuts)}


def _distinct_per_run(values: pd.Series, run_of: np.ndarray, runs: int) -> list[Sequence[str]]:
    """For each run, the distinct values its rows carry (``run_of``: each row's run), in
    order; few rows carry any, and a run without gets the one empty tuple."""
    out: list[Sequence[str]] = [()] * runs
    named = np.flatnonzero(values.notna().to_numpy(dtype=bool))
    if not len(named):
        return out
    codes, distinct = pd.factorize(pd.Series(cells(values.iloc[named]), dtype=object), sort=True)
    pairs = np.unique(run_of[named] * len(distinct) + codes)
    which, value = np.divmod(pairs, len(distinct))
    texts = list(map(list(map(str, distinct)).__getitem__, value.tolist()))
    cuts = _cuts(which)
    for lo, hi in pairwise(cuts):
        out[int(which[lo])] = texts[lo:hi]
    return out


def _netns_creations(ev: pd.DataFrame, containerd_procs: set[int]) -> list[tuple[int, int]]:
    """containerd's unshare(CLONE_NEWNET) .. the setns back of the same thread."""
    mask = kind_mask(ev, "unshare", "setns") & ev["proc_id"].isin(containerd_procs).to_numpy(
        dtype=bool, na_value=False
    )
    columns = ["kind", "tid", "flags", "nstype", "start_ns", "end_ns"]
    ns = rows_where(ev, mask, columns)
    spans = []
    pending: dict[int, int] = {}
    for kind, tid, flags, nstype, start, end in zip(*(cells(ns[c]) for c in columns), strict=True):
        if kind == "unshare" and not missing(flags) and int(flags) & CLONE_NEWNET:
            pending[int(tid)] = int(start)
        elif (
            kind == "setns"
            and int(tid) in pending
            and (missing(nstype) or int(nstype) in (0, CLONE_NEWNET))
        ):
            spans.append((pending.pop(int(tid)), int(end)))
    return spans


def runtime_ops(ev: pd.DataFrame) -> dict[int, list[Op]]:
    """Mount-type syscalls and cgroup events per process (``analysis/runtime_steps.py``), each
    process's in time order: one sort, then plain tuples per process."""
    rows = rows_where(
        ev,
        kind_mask(ev, *RUNTIME_OP_KINDS) & has_proc(ev),
        ["proc_id", "kind", "ts_ns", "start_ns", "end_ns"],
    )
    if rows.empty:
        return {}
    rows = rows.assign(proc_id=rows["proc_id"].astype("int64")).sort_values(
        ["proc_id", "ts_ns"], kind="stable"
    )
    ts = rows["ts_ns"]
    ids = rows["proc_id"].to_numpy()
    ops = list(
        map(
            Op._make,
            zip(
                rows["kind"].astype(str).tolist(),
                rows["start_ns"].fillna(ts).astype("int64").tolist(),
                rows["end_ns"].fillna(ts).astype("int64").tolist(),
                strict=True,
            ),
        )
    )
    cuts = _cuts(ids)
    return {int(ids[lo]): ops[lo:hi] for lo, hi in pairwise(cuts)}


def image_ops(ev: pd.DataFrame) -> list[ImgOp]:
    """The image probe's records (``analysis/image_steps.py``), in time order: a pull has a
    handful (one per blob fetched, committed and unpacked), however many files its layers hold."""
    rows = ev.loc[kind_mask(ev, *IMAGE_KINDS)]
    if rows.empty:
        return []
    rows = rows.sort_values("ts_ns", kind="stable")
    ts = rows["ts_ns"]
    return [
        ImgOp(str(kind), key or "", int(start), int(end), int(size), attrs_of(raw))
        for kind, key, start, end, size, raw in zip(
            rows["kind"].astype(str).tolist(),
            cells(rows["filename"]),
            rows["start_ns"].fillna(ts).astype("int64").tolist(),
            rows["end_ns"].fillna(ts).astype("int64").tolist(),
            rows["ret"].fillna(0).astype("int64").tolist(),
            cells(rows["attrs"]),
            strict=True,
        )
    ]


def is_shim_start(proc: Proc) -> bool:
    return proc.program.startswith(SHIM_PREFIX) and bool(proc.argv) and proc.argv[-1] == "start"


@dataclass
class Context:
    """Per-recording lookups the pod builder needs."""

    children: dict[int, list[Proc]]
    netlink: dict[int, list[NetlinkRun]]
    recording_end_ns: int
    ops: dict[int, dict[str, int]] = field(default_factory=dict)
    procs: dict[int, Proc] = field(default_factory=dict)
    """Every process lifetime by proc_id."""
    foreign: dict[str, int] = field(default_factory=dict)
    runtime_ops: dict[int, list[Op]] = field(default_factory=dict)
    """The runtime probe's mount-type syscalls and cgroup events, by proc_id, in time order."""
    pull_ops: dict[int, list[ImgOp]] = field(default_factory=dict)
    """The image probe's records of each PullImage call, keyed by the call's start."""


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
        if p.is_cni_plugin and cni_args(p.env).get("K8S_POD_UID") == call.uid:
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


def pod_inputs(ev: pd.DataFrame) -> tuple[dict[str, PodInputs], Context, list[Call]]:
    """Vectorised preparation: process table, attribution, netlink groups, CRI calls."""
    index_kinds(ev)
    calls = cri_calls(ev)
    by_container = container_sandboxes(ev, calls)
    table = processes(ev)
    runtimes = runtime_programs(a for a in table["argv"] if a)  # found once per recording
    table = attribute(table, by_container, runtimes)
    procs = _procs(table, runtimes)
    children: dict[int, list[Proc]] = defaultdict(list)
    for p in procs:
        if p.parent_proc is not None:
            children[p.parent_proc].append(p)
    netlink = netlink_runs(ev, (p.proc_id for p in procs if p.is_cni_plugin))
    end_ns = int(ev["ts_ns"].max()) if len(ev) else 0
    ctx = Context(
        children=children,
        netlink=netlink,
        recording_end_ns=end_ns,
        ops=netlink_ops(ev),
        procs={p.proc_id: p for p in procs},
        foreign=foreign_containers(table),
        runtime_ops=runtime_ops(ev),
    )

    pods: dict[str, PodInputs] = {}

    def get(sid: str) -> PodInputs:
        if sid not in pods:
            pods[sid] = PodInputs(sid)
        return pods[sid]

    note_columns = ["sandbox_id", "pod", "namespace", "uid", "container", "container_id"]
    notes = _records(rows_where(ev, kind_mask(ev, "annotation"), note_columns), note_columns)
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
    pulls = [(c.start_ns, c.end_ns or end_ns) for c in image_calls if c.method == PULL_IMAGE]
    if pulls:
        ctx.pull_ops = assign(pulls, image_ops(ev))
    return pods, ctx, image_calls
