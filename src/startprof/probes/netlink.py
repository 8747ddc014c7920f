"""The netlink probe (``bpf/netlink.bpf.c``): netlink sockets of the followed tree, the requests
sent on them and the acks received, decoded in user space.

The parsers here are pure (bytes in, dataclasses out) and tested on bytes captured from real
runs (``tests/data/netlink/``). A send carrying several messages (an nfnetlink batch) yields one
``nl_send`` event per message; a receive yields one ``nl_ack`` per NLMSG_ERROR or NLMSG_DONE.
"""

from __future__ import annotations

import ctypes as ct
import ipaddress
import json
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

from startprof.events import Event
from startprof.linux import (
    NETLINK_NETFILTER,
    NETLINK_ROUTE,
    NFT_MSGS,
    NLMSG_DONE,
    NLMSG_ERROR,
    NLMSG_OVERRUN,
)
from startprof.linux import PROTOCOLS as PROTOCOLS  # the kernel's names, re-exported
from startprof.linux import type_name as type_name
from startprof.probes.abi import (
    Decoder,
    NlMsgFixed,
    NlSocket,
    RecordType,
    base_event,
)

NAME: Final = "netlink"

NLM_F_MULTI: Final = 0x2
NLM_F_CAPPED: Final = 0x100
NLM_F_ACK_TLVS: Final = 0x200
NLMSGERR_ATTR_MSG: Final = 1

MSG_PEEK: Final = 0x2

# rtnetlink attribute numbers (linux/if_link.h, if_addr.h, rtnetlink.h, veth.h)
IFLA_ADDRESS, IFLA_IFNAME, IFLA_MTU, IFLA_MASTER = 1, 3, 4, 10
IFLA_LINKINFO, IFLA_NET_NS_PID, IFLA_NET_NS_FD = 18, 19, 28
IFLA_INFO_KIND, IFLA_INFO_DATA = 1, 2
VETH_INFO_PEER = 1
IFA_ADDRESS, IFA_LOCAL, IFA_LABEL = 1, 2, 3
RTA_DST, RTA_OIF, RTA_GATEWAY, RTA_TABLE = 1, 4, 5, 15
AF_INET, AF_INET6 = 2, 10

NLA_TYPE_MASK: Final = 0x3FFF  # drops NLA_F_NESTED / NLA_F_NET_BYTEORDER

_NLMSGHDR = struct.Struct("=IHHII")  # len, type, flags, seq, pid
_NLATTR = struct.Struct("=HH")
_IFINFOMSG = struct.Struct("=BxHiII")  # family, type, index, flags, change
_IFADDRMSG = struct.Struct("=BBBBI")  # family, prefixlen, flags, scope, index
_RTMSG = struct.Struct(
    "=BBBBBBBBI"
)  # family, dst_len, src_len, tos, table, proto, scope, type, flags


@dataclass
class NlMessage:
    """One netlink message as far as it was copied."""

    nl_type: int
    flags: int
    seq: int
    port: int
    length: int
    truncated: bool = False
    ifname: str | None = None
    link_kind: str | None = None
    netns_target: int | None = None
    address: str | None = None
    error: int | None = None
    """NLMSG_ERROR: 0 (ack) or -errno; NLMSG_DONE: its status."""
    orig_type: int | None = None
    orig_seq: int | None = None
    extras: dict[str, Any] = field(default_factory=dict)


def iter_attrs(buf: bytes, start: int = 0, end: int | None = None) -> list[tuple[int, bytes]]:
    """The (type, payload) netlink attributes in ``buf[start:end]``; stops at a malformed one."""
    out: list[tuple[int, bytes]] = []
    end = len(buf) if end is None else min(end, len(buf))
    pos = start
    while pos + 4 <= end:
        alen, atype = _NLATTR.unpack_from(buf, pos)
        if alen < 4:
            break
        payload = buf[pos + 4 : min(pos + alen, end)]
        out.append((atype & NLA_TYPE_MASK, payload))
        pos += (alen + 3) & ~3
    return out


def _str(payload: bytes) -> str:
    return payload.split(b"\0", 1)[0].decode("utf-8", "replace")


def _u32(payload: bytes) -> int | None:
    return struct.unpack_from("=I", payload)[0] if len(payload) >= 4 else None


def format_address(family: int, raw: bytes, prefix: int | None = None) -> str | None:
    """An IPv4/IPv6 address as text, with ``/prefix`` when given."""
    try:
        if family == AF_INET and len(raw) >= 4:
            text = str(ipaddress.IPv4Address(raw[:4]))
        elif family == AF_INET6 and len(raw) >= 16:
            text = str(ipaddress.IPv6Address(raw[:16]))
        else:
            return None
    except ValueError:
        return None
    return f"{text}/{prefix}" if prefix is not None else text


def _decode_link(msg: NlMessage, body: bytes, end: int) -> None:
    if len(body) < _IFINFOMSG.size:
        return
    _family, _iftype, index, _flags, _change = _IFINFOMSG.unpack_from(body)
    if index:
        msg.extras["index"] = index
    for atype, payload in iter_attrs(body, _IFINFOMSG.size, end):
        if atype == IFLA_IFNAME:
            msg.ifname = _str(payload)
        elif atype == IFLA_MASTER:
            msg.extras["master"] = _u32(payload)
        elif atype == IFLA_MTU:
            msg.extras["mtu"] = _u32(payload)
        elif atype == IFLA_NET_NS_FD:
            msg.netns_target = _u32(payload)
            msg.extras["netns_by"] = "fd"
        elif atype == IFLA_NET_NS_PID:
            msg.netns_target = _u32(payload)
            msg.extras["netns_by"] = "pid"
        elif atype == IFLA_LINKINFO:
            for itype, ipayload in iter_attrs(payload):
                if itype == IFLA_INFO_KIND:
                    msg.link_kind = _str(ipayload)
                elif itype == IFLA_INFO_DATA and msg.link_kind == "veth":
                    _decode_veth_peer(msg, ipayload)


def _decode_veth_peer(msg: NlMessage, data: bytes) -> None:
    for ptype, ppayload in iter_attrs(data):
        if ptype != VETH_INFO_PEER or len(ppayload) < _IFINFOMSG.size:
            continue
        for atype, payload in iter_attrs(ppayload, _IFINFOMSG.size):
            if atype == IFLA_IFNAME:
                msg.extras["peer"] = _str(payload)
            elif atype == IFLA_NET_NS_FD:
                msg.extras["peer_netns_fd"] = _u32(payload)
            elif atype == IFLA_NET_NS_PID:
                msg.extras["peer_netns_pid"] = _u32(payload)


def _decode_addr(msg: NlMessage, body: bytes, end: int) -> None:
    if len(body) < _IFADDRMSG.size:
        return
    family, prefix, _flags, _scope, index = _IFADDRMSG.unpack_from(body)
    msg.extras["index"] = index
    local = address = None
    for atype, payload in iter_attrs(body, _IFADDRMSG.size, end):
        if atype == IFA_LOCAL:
            local = format_address(family, payload, prefix)
        elif atype == IFA_ADDRESS:
            address = format_address(family, payload, prefix)
        elif atype == IFA_LABEL:
            msg.ifname = _str(payload)
    msg.address = local or address
    if local and address and local != address:
        msg.extras["peer_address"] = address


def _decode_route(msg: NlMessage, body: bytes, end: int) -> None:
    if len(body) < _RTMSG.size:
        return
    family, dst_len, _src_len, _tos, table, _proto, _scope, _rtype, _flags = _RTMSG.unpack_from(
        body
    )
    dst = None
    for atype, payload in iter_attrs(body, _RTMSG.size, end):
        if atype == RTA_DST:
            dst = format_address(family, payload, dst_len)
        elif atype == RTA_GATEWAY:
            msg.extras["gateway"] = format_address(family, payload)
        elif atype == RTA_OIF:
            msg.extras["oif"] = _u32(payload)
        elif atype == RTA_TABLE:
            table = _u32(payload) or table
    if dst is None and family in (AF_INET, AF_INET6):
        dst = "0.0.0.0/0" if family == AF_INET else "::/0"
    msg.address = dst
    if table not in (0, 254):
        msg.extras["table"] = table


def _decode_nft(msg: NlMessage, body: bytes, end: int) -> None:
    """nftables: the table/chain/set a message is about (after the 4-byte nfgenmsg)."""
    op = NFT_MSGS[msg.nl_type & 0xFF] if (msg.nl_type & 0xFF) < len(NFT_MSGS) else ""
    names: dict[int, str]
    if op.endswith("TABLE"):
        names = {1: "table"}
    elif op.endswith("CHAIN"):
        names = {1: "table", 3: "chain"}
    elif op.endswith("RULE"):
        names = {1: "table", 2: "chain"}
    elif op.endswith("SET") or op.endswith("SETELEM"):
        names = {1: "table", 2: "set"}
    else:
        return
    for atype, payload in iter_attrs(body, 4, end):
        if atype in names:
            msg.extras[names[atype]] = _str(payload)


def _decode_error(msg: NlMessage, body: bytes, end: int) -> None:
    if len(body) < 4:
        return
    msg.error = struct.unpack_from("=i", body)[0]
    if msg.nl_type != NLMSG_ERROR or len(body) < 4 + _NLMSGHDR.size:
        return
    olen, otype, _oflags, oseq, _oport = _NLMSGHDR.unpack_from(body, 4)
    msg.orig_type, msg.orig_seq = otype, oseq
    if msg.flags & NLM_F_ACK_TLVS:
        tlv = 4 + (_NLMSGHDR.size if msg.flags & NLM_F_CAPPED else olen)
        for atype, payload in iter_attrs(body, tlv, end):
            if atype == NLMSGERR_ATTR_MSG:
                msg.extras["message"] = _str(payload)


def parse_messages(
    data: bytes, proto: int, keep: Callable[[int, int, int], bool] | None = None
) -> list[NlMessage]:
    """Every netlink message in ``data`` (the copied head of one send or receive), or those
    whose (type, flags, seq) ``keep`` accepts: the others are stepped over undecoded.

    A message cut by the copy limit is returned with what could be decoded and
    ``truncated=True``; parsing stops at the first header that does not fit or makes no sense.
    """
    out: list[NlMessage] = []
    pos = 0
    while pos + _NLMSGHDR.size <= len(data):
        length, nl_type, flags, seq, port = _NLMSGHDR.unpack_from(data, pos)
        if length < _NLMSGHDR.size:
            break
        end = pos + length
        if keep is not None and not keep(nl_type, flags, seq):
            pos += (length + 3) & ~3
            continue
        msg = NlMessage(nl_type, flags, seq, port, length, truncated=end > len(data))
        body = data[pos + _NLMSGHDR.size : min(end, len(data))]
        blen = len(body)
        if nl_type in (NLMSG_ERROR, NLMSG_DONE):
            _decode_error(msg, body, blen)
        elif proto == NETLINK_ROUTE:
            if 16 <= nl_type <= 19:
                _decode_link(msg, body, blen)
            elif 20 <= nl_type <= 22:
                _decode_addr(msg, body, blen)
            elif 24 <= nl_type <= 26:
                _decode_route(msg, body, blen)
        elif proto == NETLINK_NETFILTER and nl_type >> 8 == 10:
            _decode_nft(msg, body, blen)
        out.append(msg)
        pos += (length + 3) & ~3
    return out


def _msg_event(kind: str, base: Event, proto: int, msg: NlMessage) -> Event:
    ev = dict(base)
    ev["kind"] = kind
    ev["nl_proto"] = proto
    ev["nl_flags"] = msg.flags
    if kind == "nl_ack" and msg.orig_type is not None:
        ev["nl_type"] = msg.orig_type
        ev["nl_seq"] = msg.orig_seq
    else:
        ev["nl_type"] = msg.nl_type
        ev["nl_seq"] = msg.seq
    if msg.ifname is not None:
        ev["ifname"] = msg.ifname
    if msg.link_kind is not None:
        ev["link_kind"] = msg.link_kind
    if msg.netns_target is not None:
        ev["netns_target"] = msg.netns_target
    if msg.address is not None:
        ev["address"] = msg.address
    extras = dict(msg.extras)
    if msg.truncated:
        extras["truncated"] = True
    if kind == "nl_ack" and msg.nl_type == NLMSG_DONE:
        extras["done"] = True
    if extras:
        ev["attrs"] = json.dumps(extras)
    return ev


def decode_socket(raw: bytes) -> list[Event]:
    r = NlSocket.from_buffer_copy(raw)
    ev = base_event("nl_socket", r.h)
    ev["fd"] = r.fd
    ev["ret"] = r.fd
    ev["nl_proto"] = r.protocol
    return [ev]


_DATA_OFF: Final = ct.sizeof(NlMsgFixed)


def decode_send(raw: bytes) -> list[Event]:
    """One ``nl_send`` per message: ts_ns/start_ns = syscall entry, end_ns = its return."""
    r = NlMsgFixed.from_buffer_copy(raw)
    base = base_event("nl_send", r.h)
    base["ts_ns"] = r.enter_ns
    base["start_ns"] = r.enter_ns
    base["end_ns"] = r.h.ts_ns
    base["fd"] = r.fd
    base["ret"] = r.ret
    data = raw[_DATA_OFF : _DATA_OFF + r.copied]
    return [_msg_event("nl_send", base, r.protocol, m) for m in parse_messages(data, r.protocol)]


def _answers(nl_type: int, flags: int, seq: int) -> bool:
    """A received message that answers a request (decode_recv); the rest (a dump's entries,
    notifications) makes no event, so it is not decoded at all."""
    return nl_type in (NLMSG_ERROR, NLMSG_DONE) or (
        seq != 0 and not flags & NLM_F_MULTI and nl_type > NLMSG_OVERRUN
    )


def decode_recv(raw: bytes) -> list[Event]:
    """One ``nl_ack`` per request answered in a receive: ret = its error (0 = ack).

    An answer is an NLMSG_ERROR (nl_type/nl_seq are then the request's, taken from the
    error payload), an NLMSG_DONE ending a dump, or the reply to a plain GET (a message
    without NLM_F_MULTI: Go's netlink stops reading at it and never reads the ack behind it;
    attrs ``reply``). Messages with seq 0 are notifications, not answers.
    """
    r = NlMsgFixed.from_buffer_copy(raw)
    if r.msg_flags & MSG_PEEK:
        return []  # the same bytes arrive again with the real receive
    data = raw[_DATA_OFF : _DATA_OFF + r.copied]
    out = []
    base = base_event("nl_ack", r.h)
    base["fd"] = r.fd
    for m in parse_messages(data, r.protocol, _answers):
        if m.nl_type in (NLMSG_ERROR, NLMSG_DONE):
            ev = _msg_event("nl_ack", base, r.protocol, m)
            ev["ret"] = m.error if m.error is not None else 0
        elif m.seq != 0 and not m.flags & NLM_F_MULTI and m.nl_type > NLMSG_OVERRUN:
            m.extras["reply"] = True
            ev = _msg_event("nl_ack", base, r.protocol, m)
            ev["ret"] = 0
        else:
            continue
        out.append(ev)
    return out


DECODERS: Final[dict[RecordType, Decoder]] = {
    RecordType.NL_SOCKET: decode_socket,
    RecordType.NL_SEND: decode_send,
    RecordType.NL_RECV: decode_recv,
}
