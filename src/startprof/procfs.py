"""The process table as /proc shows it now: who is whose child, who is who."""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Sequence

from startprof.events import Event


def children_by_parent(proc: str = "/proc") -> dict[int, list[int]]:
    """ppid -> pids of the processes alive now."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir(proc):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"{proc}/{entry.name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue  # it exited while we looked
        # "pid (comm) state ppid ...": comm may hold spaces and parentheses
        ppid = int(stat[stat.rindex(b")") + 2 :].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    return children


def descendants(pids: Iterable[int]) -> list[int]:
    """The current descendants of these pids (not the pids themselves), parents first."""
    children = children_by_parent()
    out: list[int] = []
    seen: set[int] = set()
    todo = list(pids)
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in seen:
                seen.add(child)
                out.append(child)
                todo.append(child)
    return out


def pids_by_comm(names: Iterable[str], proc: str = "/proc") -> list[int]:
    """Pids of the processes alive now whose comm is one of ``names``, in pid order."""
    wanted = set(names)
    found = []
    for entry in os.scandir(proc):
        if entry.name.isdigit():
            try:
                with open(f"{proc}/{entry.name}/comm") as f:
                    if f.read().strip() in wanted:
                        found.append(int(entry.name))
            except OSError:
                continue  # it exited while we looked
    return sorted(found)


def cmdline(pid: int, proc: str = "/proc") -> list[bytes] | None:
    """A process's argv as bytes, None once it is gone."""
    try:
        with open(f"{proc}/{pid}/cmdline", "rb") as f:
            return [a for a in f.read().split(b"\0") if a]
    except OSError:
        return None


def argv_text(pid: int, proc: str = "/proc") -> list[str]:
    """A process's argv as text (invalid UTF-8 replaced); empty once it is gone."""
    return [a.decode(errors="replace") for a in cmdline(pid, proc) or []]


def has_env_prefix(pid: int, prefix: bytes, proc: str = "/proc") -> bool:
    """Whether a variable of the process's initial environment starts with ``prefix``; the
    values are looked at and dropped here, never kept."""
    try:
        with open(f"{proc}/{pid}/environ", "rb") as f:
            return any(v.startswith(prefix) for v in f.read().split(b"\0"))
    except OSError:
        return False


def cpu_seconds(pid: int, proc: str = "/proc") -> float:
    """CPU the process has used so far, user and system, all its threads (``stat`` fields 14
    and 15). Raises OSError once it is gone."""
    with open(f"{proc}/{pid}/stat", "rb") as f:
        fields = f.read().rsplit(b")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def steal_share(before: Sequence[int], after: Sequence[int]) -> float:
    """Share (0-1) of the machine's CPU time that the hypervisor stole between two
    :func:`cpu_times` readings."""
    delta = [b - a for a, b in zip(before, after, strict=True)]
    total = sum(delta)
    return delta[7] / total if total > 0 and len(delta) > 7 else 0.0


def cpu_times(proc: str = "/proc") -> list[int]:
    """The machine's CPU time counters (user, nice, system, idle, iowait, irq, softirq, steal,
    ...) in clock ticks, from the first line of /proc/stat."""
    with open(f"{proc}/stat", "rb") as f:
        return [int(x) for x in f.readline().split()[1:]]


def proc_event(pid: int, proc: str = "/proc") -> Event | None:
    """A ``proc`` event for a process alive now (one that started before the probes, whose
    exec no probe saw): its parent, comm and argv. None once it is gone."""
    try:
        with open(f"{proc}/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    argv = cmdline(pid, proc)
    if argv is None:
        return None
    return {
        "kind": "proc",
        "ts_ns": time.monotonic_ns(),
        "pid": pid,
        "tid": pid,
        "ppid": int(stat[stat.rindex(b")") + 2 :].split()[1]),
        "comm": stat[stat.index(b"(") + 1 : stat.rindex(b")")].decode(errors="replace"),
        "argv": [a.decode(errors="replace") for a in argv],
    }
