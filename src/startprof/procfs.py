"""The process table as /proc shows it now: who is whose child."""

from __future__ import annotations

import os
from collections.abc import Iterable


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
