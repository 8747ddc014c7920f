"""The event model shared by the probes, the recorder, the recording file and the analysis.

Every event is one row of one wide table. ``kind`` says which columns are filled; the rest are
null. A wide table keeps the recording one Arrow stream and lets the analysis filter by kind
with vectorised pandas operations.

Keep in sync with: ``bpf/startprof.h`` (what the kernel sends), ``startprof.recording`` (which
writes ``COLUMNS`` as the Arrow schema) and ``docs/recording.md``.
"""

from __future__ import annotations

import json
from typing import Any, Final

Event = dict[str, Any]
"""One event: keys are column names from ``COLUMNS``; missing keys are null."""

# kind -> what it means. The probe that produces it is the prefix's owner.
KINDS: Final[dict[str, str]] = {
    # exec probe
    "exec": "execve/execveat entry: filename, argv (argv_truncated), env (CNI_* only)",
    "exec_ret": "execve/execveat returned with an error (ret < 0); success is exec_done",
    "exec_done": "sched_process_exec: the new image runs; filename, comm, old_comm",
    "fork": "a new process (not a thread): pid = parent, child_pid = child",
    "exit_group": "exit_group(ret): the exit code a process asked for",
    "exit": "the last thread of a process left (sched_process_exit, group_dead)",
    # namespaces probe
    "clone": "clone/clone3 with flags; ret = child pid or -errno",
    "unshare": "unshare(flags); ret",
    "setns": "setns(fd, nstype); ret",
    # netlink probe
    "nl_socket": "an AF_NETLINK socket: fd = ret, nl_proto",
    "nl_send": "a netlink request: nl_type, nl_flags, nl_seq and the rtnetlink details",
    "nl_ack": "a netlink ack or error for (pid, nl_seq): ret = error (0 = ack)",
    # cri probe
    "cri_accept": "containerd accepted a connection on the CRI socket: fd, conn_id",
    "cri_data": "bytes read (direction=in) or written (out) on a CRI connection",
    "cri_call": "a decoded CRI call: method, stream_id, start_ns..end_ns, grpc_status, fields",
    # runtime probe
    "mount": "mount(2): filename = target, attrs.fstype, flags = MS_*; start_ns..end_ns, ret",
    "umount": "umount2(2): filename = target, flags; start_ns..end_ns, ret",
    "pivot_root": "pivot_root(2): filename = new_root; start_ns..end_ns, ret",
    "mount_setattr": "mount_setattr(2): filename = path, flags; start_ns..end_ns, ret",
    "open_tree": "open_tree(2): filename, flags; start_ns..end_ns, ret = fd or -errno",
    "move_mount": "move_mount(2): filename = to_pathname, flags; start_ns..end_ns, ret",
    "fsmount": "fsmount(2): flags; start_ns..end_ns, ret = fd or -errno",
    "cgroup_mkdir": "a cgroup was made (cgroup:cgroup_mkdir): filename = its path",
    "cgroup_attach": "a task moved into a cgroup: filename = its path, ret = the task's pid",
    "rename": "a task named itself (prctl PR_SET_NAME, not exec): comm = new, old_comm",
    # image probe
    "img_ingest": "a blob fetched into containerd's content store: filename = ingest dir, "
    "ret = bytes, start_ns = open, end_ns = close, attrs first_ns/last_ns/writes/media",
    "img_commit": "a fetched blob committed (renamed to its digest): filename = sha256:<digest>, "
    "attrs.ingest",
    "img_blob": "a blob read closed: filename = digest; a layer's unpack when attrs.files "
    "(ret = bytes written to the snapshot, attrs first_ns/last_ns/writes/snapshot)",
    "img_unpack": "files made in a snapshot, sent when another began: attrs files/snapshot, ret",
    # user space
    "proc": "a process alive when recording started (from /proc): pid, ppid, comm, argv",
    "annotation": "OCI bundle annotations of a runtime create: sandbox_id, container_id, attrs",
    "drops": "ring buffer reserve failures so far, per CPU in attrs, total in ret",
    "note": "something the recorder wants the reader to know (attrs.message)",
    "end": "the recording ended cleanly: attrs holds end times, drops and event counts",
}

# (name, Arrow type name) — recording.py maps the type names to pyarrow types.
COLUMNS: Final[tuple[tuple[str, str], ...]] = (
    ("kind", "dictionary"),
    ("ts_ns", "int64"),  # CLOCK_MONOTONIC ns (bpf_ktime_get_ns)
    ("pid", "int32"),  # tgid
    ("tid", "int32"),
    ("cgroup_id", "uint64"),
    ("comm", "string"),
    ("ppid", "int32"),
    ("child_pid", "int32"),
    ("filename", "string"),
    ("argv", "list<string>"),
    ("argv_truncated", "bool"),
    ("env", "list<string>"),  # only CNI_* variables ever
    ("old_comm", "string"),
    ("ret", "int64"),
    ("fd", "int32"),
    ("flags", "uint64"),
    ("nstype", "int32"),
    ("nl_proto", "int32"),
    ("nl_type", "int32"),
    ("nl_flags", "int32"),
    ("nl_seq", "uint32"),
    ("ifname", "string"),
    ("link_kind", "string"),
    ("netns_target", "int64"),  # IFLA_NET_NS_FD / IFLA_NET_NS_PID of a netns move
    ("address", "string"),  # IFA_ADDRESS/IFA_LOCAL or RTA_DST as text with /prefix
    ("conn_id", "uint64"),
    ("direction", "dictionary"),
    ("data", "binary"),
    ("method", "string"),
    ("stream_id", "int32"),
    ("start_ns", "int64"),
    ("end_ns", "int64"),
    ("grpc_status", "string"),
    ("pod", "string"),
    ("namespace", "string"),
    ("uid", "string"),
    ("sandbox_id", "string"),
    ("container", "string"),
    ("container_id", "string"),
    ("attrs", "string"),  # JSON object for the rare extras
)

COLUMN_NAMES: Final[tuple[str, ...]] = tuple(name for name, _ in COLUMNS)


def attrs_of(raw: object) -> dict[str, Any]:
    """An event's ``attrs`` cell as a dict: ``{}`` for an empty cell (None, NA, NaN, ""), text
    that is not JSON, or JSON that is not an object. Every reader of ``attrs`` goes through
    here, so a damaged cell means the same everywhere: no extras."""
    if not isinstance(raw, str | bytes) or not raw:
        return {}
    try:
        value = json.loads(raw)
    except ValueError:  # UnicodeDecodeError included
        return {}
    return value if isinstance(value, dict) else {}
