"""Name the CRI calls whose method the decoder could not read, from evidence.

On a connection older than the recording (every kubelet's), a method's ``:path`` is an HPACK
entry added before the recording began. The decoder gives every such call a *key* (the symbols
of its unknown entries: calls with one key are calls of one method) and the methods its
messages fit, each with the fields the call would have (``attrs.unnamed``; see
``startprof.cri.shapes`` and docs/cri-decoding.md). This pass decides per key, over the whole
recording, so a method identified late names the key's earlier calls too:

1. **Shape**: the methods every call of the key fits. One left: that is the method.
2. **Ids**: a request naming a known sandbox id is a sandbox method, a known container id a
   container method (ids come from the calls already named and from CNI_CONTAINERID).
3. **Kernel effects** inside the calls' windows: the OCI runtime's ``start <id>`` is a
   StartContainer, ``kill <id>`` a StopContainer or StopPodSandbox, ``exec <id>`` an ExecSync.
   (Not CNI DEL: containerd runs it in RemovePodSandbox as well as in StopPodSandbox.) A
   candidate wins when it alone has its effect, in at least half of the key's calls.
4. **Lifecycle**: a call after its container's or sandbox's StopX that is the last call to
   name that id successfully (after it ended), running no OCI runtime on it, is its RemoveX.

Anything still ambiguous stays unnamed, with its candidates listed: a wrong name is worse than
none. Named calls carry ``attrs.method_inferred`` with the evidence.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import pandas as pd

from startprof.analysis.frames import missing, rows_where
from startprof.cri.api import path_of
from startprof.events import attrs_of

_SANDBOX_METHODS: Final = frozenset(
    {
        "StopPodSandbox",
        "RemovePodSandbox",
        "PodSandboxStatus",
        "PodSandboxStats",
        "CheckpointPod",
        "RestorePod",
        "UpdatePodSandboxResources",
    }
)
_EFFECTS: Final[dict[str, tuple[str, ...]]] = {
    "StartContainer": ("start",),
    "StopContainer": ("kill",),
    # not CNI DEL: containerd's RemovePodSandbox runs the plugins' DEL again
    "StopPodSandbox": ("kill",),
    "ExecSync": ("exec",),
}
_REMOVES: Final = {"RemoveContainer": "StopContainer", "RemovePodSandbox": "StopPodSandbox"}
_RUNTIME_VERBS: Final = frozenset({"start", "kill", "exec", "delete", "create"})


@dataclass
class _Call:
    row: Any  # index label in the events frame
    start_ns: int
    end_ns: int
    candidates: dict[str, dict[str, str]]
    ok: bool = True  # succeeded, or its status is unknown


@dataclass
class _Key:
    calls: list[_Call] = field(default_factory=list)

    def methods(self) -> set[str]:
        """The methods every call of this key fits."""
        sets = [set(c.candidates) for c in self.calls]
        return set.intersection(*sets) if sets else set()


@dataclass(frozen=True)
class NamingStats:
    unnamed: int  # calls that reached the decoder without a method
    named: int  # of those, named here
    keys: int
    ambiguous_keys: int


def _ok(status: Any) -> bool:
    return missing(status) or status == "OK"


def _id_of(fields: Mapping[str, str]) -> tuple[str, str] | None:
    """("sandbox"|"container", id) a request names under one reading."""
    if "container_id" in fields and "sandbox_id" not in fields:
        return "container", fields["container_id"]
    if "sandbox_id" in fields and "container_id" not in fields:
        return "sandbox", fields["sandbox_id"]
    return None


def _effects(ev: pd.DataFrame) -> dict[str, list[tuple[int, str]]]:
    """id -> [(ts_ns, effect)]: runtime verbs on an id, whatever the runtime binary is called
    (the id must be a CRI id to match anything), and CNI commands on a sandbox."""
    out: dict[str, list[tuple[int, str]]] = defaultdict(list)
    # CNI commands are kept as evidence of ids (RunPodSandbox's ADD) even though no rule
    # names a method by them today.
    if "argv" not in ev or "env" not in ev:
        return out
    execs = rows_where(ev, ev["kind"] == "exec", ["ts_ns", "argv", "env"])
    for ts, argv, env in execs.itertuples(index=False, name=None):
        if not missing(env):
            cni = dict(v.split("=", 1) for v in env if "=" in v)
            if "CNI_COMMAND" in cni and cni.get("CNI_CONTAINERID"):
                out[cni["CNI_CONTAINERID"]].append((int(ts), "cni-" + cni["CNI_COMMAND"]))
                continue
        if missing(argv) or len(argv) < 3:
            continue
        args = list(argv)
        verb = next((i for i, a in enumerate(args) if a in _RUNTIME_VERBS), None)
        if verb is None:
            continue
        operands = [a for a in args[verb + 1 :] if not a.startswith("-")]
        if operands:
            # the id is the last operand of create/start/kill/delete (kill adds a signal) and
            # the first of exec: take every operand, only real ids ever match a call
            for operand in dict.fromkeys(operands):
                out[str(operand)].append((int(ts), args[verb]))
    return out


def name_calls(ev: pd.DataFrame) -> tuple[pd.DataFrame, NamingStats]:
    """The events with every unnamed ``cri_call`` that the evidence identifies named."""
    needed = ["kind", "attrs", "method", "conn_id", "start_ns", "end_ns"]
    needed += ["sandbox_id", "container_id"]
    if any(c not in ev for c in needed):
        return ev, NamingStats(0, 0, 0, 0)
    is_call = ev["kind"] == "cri_call"
    pending = rows_where(
        ev, is_call & ev["method"].isna() & ev["attrs"].notna(), ["attrs", "conn_id"]
    )
    keys: dict[tuple[Any, str], _Key] = defaultdict(_Key)
    times = ev.loc[pending.index, ["start_ns", "end_ns", "grpc_status"]]
    for row, raw, conn in pending.itertuples(name=None):
        unnamed = attrs_of(raw).get("unnamed")
        if not isinstance(unnamed, dict) or not isinstance(unnamed.get("key"), str):
            continue
        candidates = unnamed.get("candidates")
        start: Any = times.at[row, "start_ns"]
        end: Any = times.at[row, "end_ns"]
        if not isinstance(candidates, dict) or missing(start):
            continue
        end_ns = int(start) if missing(end) else int(end)
        ok = _ok(times.at[row, "grpc_status"])
        keys[conn, unnamed["key"]].calls.append(_Call(row, int(start), end_ns, candidates, ok))
    if not keys:
        return ev, NamingStats(len(pending), 0, 0, 0)

    decided: dict[tuple[Any, str], tuple[str, dict[str, Any]]] = {}
    for k, group in keys.items():
        methods = group.methods()
        if len(methods) == 1:
            decided[k] = (methods.pop(), {"by": "shape"})
    columns = ["method", "start_ns", "sandbox_id", "container_id", "grpc_status"]
    known = rows_where(ev, is_call & ev["method"].notna(), columns)
    named_ids = _Ids.of(known, ev)
    effects = _effects(ev)
    for k, group in keys.items():
        if k not in decided:
            named_ids.add(group, decided.get(k))
    for k in [k for k in keys if k in decided]:
        named_ids.add(keys[k], decided[k])
    for k, group in keys.items():
        if k in decided:
            continue
        found = _by_ids_and_effects(group, named_ids.sandboxes, named_ids.containers, effects)
        if found is not None:
            decided[k] = found
            named_ids.add(group, found)
    ambiguous = []
    for k, group in keys.items():
        if k in decided:
            continue
        found = _by_lifecycle(group, named_ids, effects)
        if found is not None:
            decided[k] = found
        else:
            ambiguous.append(group)
    out = _apply(ev, keys, decided, ambiguous)
    named = sum(len(keys[k].calls) for k in decided)
    return out, NamingStats(len(pending), named, len(keys), len(keys) - len(decided))


@dataclass
class _Ids:
    """What is known about CRI ids: which are sandboxes and containers, and every call that
    names each (method short name, or None while unnamed; start time; whether it succeeded)."""

    sandboxes: set[str] = field(default_factory=set)
    containers: set[str] = field(default_factory=set)
    calls: dict[str, list[tuple[str | None, int, bool]]] = field(
        default_factory=lambda: defaultdict(list)
    )
    stops_ended: dict[tuple[str, str], int] = field(default_factory=dict)
    """(StopX, id) -> when its first call ended."""

    @classmethod
    def of(cls, known: pd.DataFrame, ev: pd.DataFrame) -> _Ids:
        ids = cls()
        for method, start, sandbox, container, status in known.itertuples(index=False, name=None):
            name = str(method).rsplit("/", 1)[-1]
            for value in (sandbox, container):
                if not missing(value):
                    ids.calls[str(value)].append((name, int(start), _ok(status)))
            if not missing(sandbox):
                ids.sandboxes.add(str(sandbox))
            if not missing(container):
                ids.containers.add(str(container))
        envs = ev.loc[ev["kind"] == "exec", "env"].dropna() if "env" in ev else ()
        for env in envs:
            ids.sandboxes.update(
                v.split("=", 1)[1] for v in env if v.startswith("CNI_CONTAINERID=")
            )
        ids.containers -= ids.sandboxes
        stops = known[known["method"].isin([path_of(stop) for stop in _REMOVES.values()])]
        ends = ev.loc[stops.index, "end_ns"]
        for (method, _, sandbox, container, _), end in zip(
            stops.itertuples(index=False, name=None), ends, strict=True
        ):
            value = container if str(method).endswith("Container") else sandbox
            if not missing(value) and not missing(end):
                ids.note_stop(str(method).rsplit("/", 1)[-1], str(value), int(end))
        return ids

    def note_stop(self, stop: str, value: str, end: int) -> None:
        key = (stop, value)
        self.stops_ended[key] = min(end, self.stops_ended.get(key, end))

    def add(self, group: _Key, decided: tuple[str, dict[str, Any]] | None) -> None:
        """The calls of a key: named (their method's reading) or not yet (every reading)."""
        method = decided[0] if decided is not None else None
        for call in group.calls:
            readings = [call.candidates.get(method, {})] if method else call.candidates.values()
            for value in {v for r in readings for k, v in r.items() if k.endswith("_id")}:
                entry = (method, call.start_ns, call.ok)
                if method is None or entry not in self.calls[value]:
                    self.calls[value].append(entry)
            if method is None:
                continue
            fields = call.candidates.get(method, {})
            if "sandbox_id" in fields:
                self.sandboxes.add(fields["sandbox_id"])
            if "container_id" in fields and fields["container_id"] not in self.sandboxes:
                self.containers.add(fields["container_id"])
            if method in _REMOVES.values():
                named = _id_of(fields)
                if named is not None:
                    self.note_stop(method, named[1], call.end_ns)


def _agrees(method: str, kind: str, value: str, sandboxes: set[str], containers: set[str]) -> bool:
    """Whether reading a request as ``method`` (naming ``kind`` id ``value``) fits the ids known."""
    is_sandbox_method = method in _SANDBOX_METHODS
    if value in sandboxes:
        return kind == "sandbox" and is_sandbox_method
    if value in containers:
        return kind == "container" and not is_sandbox_method
    return True


def _consistent(
    group: _Key, methods: Iterable[str], sandboxes: set[str], containers: set[str]
) -> list[str]:
    """The methods whose id kind agrees with the ids every call names."""
    keep = []
    for m in methods:
        readings = (_id_of(call.candidates.get(m, {})) for call in group.calls)
        if all(r is None or _agrees(m, *r, sandboxes, containers) for r in readings):
            keep.append(m)
    return keep


def _hits(group: _Key, method: str, effects: Mapping[str, list[tuple[int, str]]]) -> int:
    wanted = _EFFECTS.get(method, ())
    n = 0
    for call in group.calls:
        named = _id_of(call.candidates.get(method, {}))
        if named is None:
            continue
        if any(
            call.start_ns <= ts <= call.end_ns and what in wanted
            for ts, what in effects.get(named[1], ())
        ):
            n += 1
    return n


def _by_ids_and_effects(
    group: _Key,
    sandboxes: set[str],
    containers: set[str],
    effects: Mapping[str, list[tuple[int, str]]],
) -> tuple[str, dict[str, Any]] | None:
    methods = _consistent(group, sorted(group.methods()), sandboxes, containers)
    if len(methods) == 1:
        return methods[0], {"by": "ids"}
    hits = {m: _hits(group, m, effects) for m in methods}
    winners = [m for m, n in hits.items() if n and 2 * n >= len(group.calls)]
    if len(winners) == 1:
        m = winners[0]
        return m, {"by": "kernel", "effects": _EFFECTS[m], "calls_with_effect": hits[m]}
    return None


def _by_lifecycle(
    group: _Key, ids: _Ids, effects: Mapping[str, list[tuple[int, str]]]
) -> tuple[str, dict[str, Any]] | None:
    """RemoveX: every call names an id after that id's StopX ended, is the last call to name
    it that succeeded, and runs no OCI runtime on it (a RemovePodSandbox may run the CNI DEL
    again)."""
    methods = group.methods()
    for remove, stop in _REMOVES.items():
        if remove not in methods or not group.calls:
            continue
        if all(_removes(call, remove, stop, ids, effects) for call in group.calls):
            return remove, {"by": "lifecycle", "after": stop}
    return None


def _removes(
    call: _Call, remove: str, stop: str, ids: _Ids, effects: Mapping[str, list[tuple[int, str]]]
) -> bool:
    named = _id_of(call.candidates.get(remove, {}))
    if named is None:
        return False
    value = named[1]
    stopped = ids.stops_ended.get((stop, value))
    # a status poll may overlap the removal, or still ask for a removed sandbox and get
    # NOT_FOUND: only a call that began after this one ended, and succeeded, shows the id
    # still existed
    later = any(start > call.end_ns and ok for _, start, ok in ids.calls.get(value, ()))
    runs_runtime = any(
        call.start_ns <= ts <= call.end_ns and what in _RUNTIME_VERBS
        for ts, what in effects.get(value, ())
    )
    return stopped is not None and stopped <= call.start_ns and not later and not runs_runtime


def _apply(
    ev: pd.DataFrame,
    keys: Mapping[tuple[Any, str], _Key],
    decided: Mapping[tuple[Any, str], tuple[str, dict[str, Any]]],
    ambiguous: Iterable[_Key],
) -> pd.DataFrame:
    """A copy of the events with the decisions written in, one assignment per column."""
    updates: dict[str, dict[Any, Any]] = defaultdict(dict)
    for k, (method, evidence) in decided.items():
        group = keys[k]
        for call in group.calls:
            attrs = attrs_of(ev.at[call.row, "attrs"])
            attrs.pop("unnamed", None)
            attrs.pop("hpack", None)
            attrs["method_inferred"] = {**evidence, "key_calls": len(group.calls)}
            for target, value in call.candidates.get(method, {}).items():
                if target.startswith("attrs."):
                    attrs.setdefault(target[6:], value)
                elif target in ev.columns and missing(ev.at[call.row, target]):
                    updates[target][call.row] = value
            updates["attrs"][call.row] = json.dumps(attrs, sort_keys=True)
            updates["method"][call.row] = path_of(method)
    for group in ambiguous:
        methods = sorted(group.methods())
        for call in group.calls:
            attrs = attrs_of(ev.at[call.row, "attrs"])
            attrs.pop("unnamed", None)
            attrs["method_candidates"] = methods
            updates["attrs"][call.row] = json.dumps(attrs, sort_keys=True)
    out = ev.copy(deep=False)  # copy on write: only the columns written below are copied
    for column, values in updates.items():
        out.loc[list(values), column] = list(values.values())
    return out


__all__ = ["NamingStats", "name_calls"]
