"""What the probes stopped sending (issue 19) is nothing any analysis uses.

Two trims happen in the kernel since ABI 1's first recordings were made:

- nfnetlink (iptables-nft): no ``nl_socket`` and no receive records (``netlink.bpf.c``,
  ``SP_NL_NETFILTER_REPLIES``), only the requests;
- the environment is read only for children of the CRI listener and of processes whose own
  environment held ``CNI_*`` (``exec.bpf.c``, ``SP_ENV_FILTER``).

Every stored recording (made before the trims) is cut the way the kernel now cuts, and its
analysis must be the same document as the untrimmed one's.
"""

from __future__ import annotations

import json
from dataclasses import replace
from functools import cache
from pathlib import Path

import pandas as pd
import pytest

from startprof.analysis import analyze
from startprof.pipeline import source_of
from startprof.recording import read_recording

RECORDINGS = sorted((Path(__file__).parents[1] / "data" / "recordings").glob("*.arrows"))
NETLINK_NETFILTER = 12


def without_nfnetlink_replies(ev: pd.DataFrame) -> pd.DataFrame:
    trimmed = ev["kind"].isin(["nl_ack", "nl_socket"]) & (ev["nl_proto"] == NETLINK_NETFILTER)
    return ev.loc[~trimmed.fillna(False).astype(bool)].reset_index(drop=True)


def env_as_filtered(ev: pd.DataFrame, roots: set[int]) -> tuple[pd.DataFrame, int]:
    """``env`` emptied for every exec the kernel's filter no longer reads: its process is
    neither a CRI listener nor the child of one or of a process whose environment held CNI_*
    (the rule in exec.bpf.c, replayed in event order); and how many execs that is."""
    candidates: set[int] = set()
    carriers: set[int] = set()
    cleared = []
    unread = 0
    rows = ev.loc[ev["kind"].isin(["fork", "exec"]), ["kind", "pid", "child_pid", "env"]]
    for index, kind, pid, child, env in rows.itertuples():
        pid = int(pid)
        if kind == "fork":
            if pid in roots or pid in carriers:
                candidates.add(int(child))
        elif pid in roots or pid in candidates:
            (carriers.add if len(env) else carriers.discard)(pid)
        else:
            unread += 1
            if len(env):
                cleared.append(index)
    out = ev.copy()
    out["env"] = out["env"].astype(object)
    for index in cleared:
        out.at[index, "env"] = []
    return out, unread


@cache
def _cut(name: str) -> tuple[str, str, int, int]:
    rec = read_recording(next(p for p in RECORDINGS if p.stem == name))
    full = source_of(rec)
    roots = set(map(int, rec.end.get("followed_containerd", []))) if rec.complete else set()
    events = full.events.sort_values("ts_ns", kind="stable")
    trimmed, unread = env_as_filtered(without_nfnetlink_replies(events), roots)
    trimmed = trimmed.sort_index()
    before = analyze([full]).to_dict()
    after = analyze([replace(full, events=trimmed.reset_index(drop=True))]).to_dict()
    removed = len(full.events) - len(trimmed)
    return json.dumps(before["pods"]), json.dumps(after["pods"]), removed, unread


@pytest.mark.parametrize("name", [p.stem for p in RECORDINGS])
def test_every_stored_analysis_survives_the_kernels_trims(name: str) -> None:
    before, after, _, _ = _cut(name)
    assert after == before


def test_the_trims_remove_records_and_envp_reads() -> None:
    _, _, removed, unread = _cut("runc-bridge")
    assert removed > 100  # 2 pods: ~240 nfnetlink acks and sockets
    assert unread >= 30  # of 100 execs: shims' children, runc, runc init, pause, app
