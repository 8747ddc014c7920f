"""The kernel's vocabulary: netlink protocols and message types, CLONE_* flags.

Neither the probes nor the analysis own these names: the probes decode with them and the
analysis names spans with them (``netlink RTM_NEWLINK``, containerd's ``unshare(CLONE_NEWNET)``),
so both import them from here. Values are from the uapi headers: linux/netlink.h,
linux/rtnetlink.h, linux/netfilter/nfnetlink.h, linux/netfilter/nf_tables.h, linux/sched.h.
"""

from __future__ import annotations

from typing import Final

NETLINK_ROUTE: Final = 0
NETLINK_NETFILTER: Final = 12
PROTOCOLS: Final[dict[int, str]] = {
    0: "NETLINK_ROUTE",
    4: "NETLINK_SOCK_DIAG",
    9: "NETLINK_AUDIT",
    12: "NETLINK_NETFILTER",
    15: "NETLINK_KOBJECT_UEVENT",
    16: "NETLINK_GENERIC",
}

NLMSG_NOOP: Final = 1
NLMSG_ERROR: Final = 2
NLMSG_DONE: Final = 3
NLMSG_OVERRUN: Final = 4

RTM_TYPES: Final[dict[int, str]] = {
    16: "RTM_NEWLINK",
    17: "RTM_DELLINK",
    18: "RTM_GETLINK",
    19: "RTM_SETLINK",
    20: "RTM_NEWADDR",
    21: "RTM_DELADDR",
    22: "RTM_GETADDR",
    24: "RTM_NEWROUTE",
    25: "RTM_DELROUTE",
    26: "RTM_GETROUTE",
    28: "RTM_NEWNEIGH",
    29: "RTM_DELNEIGH",
    30: "RTM_GETNEIGH",
    32: "RTM_NEWRULE",
    33: "RTM_DELRULE",
    34: "RTM_GETRULE",
    36: "RTM_NEWQDISC",
    37: "RTM_DELQDISC",
    38: "RTM_GETQDISC",
    88: "RTM_NEWNSID",
    89: "RTM_DELNSID",
    90: "RTM_GETNSID",
}

NFNL_SUBSYS: Final[dict[int, str]] = {
    1: "ctnetlink",
    2: "ctnetlink_exp",
    3: "queue",
    4: "ulog",
    5: "osf",
    6: "ipset",
    7: "acct",
    8: "ctnetlink_timeout",
    9: "cthelper",
    10: "nftables",
    11: "nftcompat",
}
NFNL_SUBSYS_NFTABLES: Final = 10
NFNL_MSG_BATCH_BEGIN: Final = 0x10
NFNL_MSG_BATCH_END: Final = 0x11
NFT_MSGS: Final[tuple[str, ...]] = (
    "NEWTABLE",
    "GETTABLE",
    "DELTABLE",
    "NEWCHAIN",
    "GETCHAIN",
    "DELCHAIN",
    "NEWRULE",
    "GETRULE",
    "DELRULE",
    "NEWSET",
    "GETSET",
    "DELSET",
    "NEWSETELEM",
    "GETSETELEM",
    "DELSETELEM",
    "NEWGEN",
    "GETGEN",
    "TRACE",
    "NEWOBJ",
    "GETOBJ",
    "DELOBJ",
    "GETOBJ_RESET",
    "NEWFLOWTABLE",
    "GETFLOWTABLE",
    "DELFLOWTABLE",
)


def type_name(proto: int, nl_type: int) -> str:
    """A readable name of a netlink message type, e.g. ``RTM_NEWLINK`` or ``NFT_NEWRULE``."""
    if nl_type == NLMSG_ERROR:
        return "NLMSG_ERROR"
    if nl_type == NLMSG_DONE:
        return "NLMSG_DONE"
    if nl_type == NLMSG_NOOP:
        return "NLMSG_NOOP"
    if proto == NETLINK_ROUTE and nl_type in RTM_TYPES:
        return RTM_TYPES[nl_type]
    if proto == NETLINK_NETFILTER:
        if nl_type == NFNL_MSG_BATCH_BEGIN:
            return "NFNL_MSG_BATCH_BEGIN"
        if nl_type == NFNL_MSG_BATCH_END:
            return "NFNL_MSG_BATCH_END"
        subsys, msg = nl_type >> 8, nl_type & 0xFF
        if subsys == NFNL_SUBSYS_NFTABLES and msg < len(NFT_MSGS):
            return f"NFT_{NFT_MSGS[msg]}"
        return f"NFNL_{NFNL_SUBSYS.get(subsys, str(subsys))}_{msg}"
    return str(nl_type)


CLONE_NEWNET: Final = 0x40000000
CLONE_FLAGS: Final[dict[int, str]] = {
    0x00000080: "CLONE_NEWTIME",
    0x00000100: "CLONE_VM",
    0x00000200: "CLONE_FS",
    0x00000400: "CLONE_FILES",
    0x00000800: "CLONE_SIGHAND",
    0x00001000: "CLONE_PIDFD",
    0x00002000: "CLONE_PTRACE",
    0x00004000: "CLONE_VFORK",
    0x00008000: "CLONE_PARENT",
    0x00010000: "CLONE_THREAD",
    0x00020000: "CLONE_NEWNS",
    0x00040000: "CLONE_SYSVSEM",
    0x00080000: "CLONE_SETTLS",
    0x00100000: "CLONE_PARENT_SETTID",
    0x00200000: "CLONE_CHILD_CLEARTID",
    0x00400000: "CLONE_DETACHED",
    0x00800000: "CLONE_UNTRACED",
    0x01000000: "CLONE_CHILD_SETTID",
    0x02000000: "CLONE_NEWCGROUP",
    0x04000000: "CLONE_NEWUTS",
    0x08000000: "CLONE_NEWIPC",
    0x10000000: "CLONE_NEWUSER",
    0x20000000: "CLONE_NEWPID",
    CLONE_NEWNET: "CLONE_NEWNET",
    0x80000000: "CLONE_IO",
    0x100000000: "CLONE_CLEAR_SIGHAND",
    0x200000000: "CLONE_INTO_CGROUP",
}

CSIGNAL: Final = 0xFF
"""clone()'s low byte: the exit signal, not flags (clone3 and unshare have no such byte)."""

NAMESPACE_FLAGS: Final = 0x7E020080
"""Every CLONE_NEW* bit."""


def flag_names(flags: int, *, legacy_clone: bool = False) -> list[str]:
    """Names of the CLONE_* bits in ``flags``; unknown bits as hex.

    ``legacy_clone``: the flags come from clone(), whose low byte is the exit signal.
    """
    if legacy_clone:
        flags &= ~CSIGNAL
    names = []
    rest = flags
    for bit, name in CLONE_FLAGS.items():
        if flags & bit:
            names.append(name)
            rest &= ~bit
    if rest:
        names.append(hex(rest))
    return names


def namespace_names(flags: int, *, legacy_clone: bool = False) -> list[str]:
    """Only the CLONE_NEW* names of ``flags`` (what a namespace event is about)."""
    mask = NAMESPACE_FLAGS & ~CSIGNAL if legacy_clone else NAMESPACE_FLAGS
    return flag_names(flags & mask)
