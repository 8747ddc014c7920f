"""Netlink decoders on bytes captured from real runs (tests/data/netlink/, see capture.py)."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from startprof.events import COLUMN_NAMES
from startprof.probes import netlink
from startprof.probes.abi import RecordType

DATA = Path(__file__).parents[1] / "data" / "netlink"


def load(name: str) -> list[bytes]:
    data = (DATA / f"{name}.rec").read_bytes()
    raws, pos = [], 0
    while pos < len(data):
        (n,) = struct.unpack_from("<I", data, pos)
        raws.append(data[pos + 4 : pos + 4 + n])
        pos += 4 + n
    return raws


def decode(name: str) -> list[dict[str, object]]:
    out: list[dict[str, object]] = []
    for raw in load(name):
        out.extend(netlink.DECODERS[RecordType(int.from_bytes(raw[:4], "little"))](raw))
    return out


def sends(events: list[dict[str, object]]) -> list[dict[str, object]]:
    return [e for e in events if e["kind"] == "nl_send"]


def acks(events: list[dict[str, object]]) -> list[dict[str, object]]:
    return [e for e in events if e["kind"] == "nl_ack"]


def attrs(event: dict[str, object]) -> dict[str, object]:
    return json.loads(str(event.get("attrs") or "{}"))  # type: ignore[no-any-return]


@pytest.mark.parametrize("name", sorted(p.stem for p in DATA.glob("*.rec")))
def test_every_capture_decodes_into_known_columns(name: str) -> None:
    events = decode(name)
    assert events
    for e in events:
        assert set(e) <= set(COLUMN_NAMES)
        assert e["kind"] in ("nl_send", "nl_ack")
        assert e["nl_proto"] in (netlink.NETLINK_ROUTE, netlink.NETLINK_NETFILTER)


def test_ip_link_add_veth() -> None:
    events = decode("ip_link_add_veth")
    new = [e for e in sends(events) if e.get("link_kind") == "veth"]
    assert len(new) == 1
    (req,) = new
    assert netlink.type_name(0, int(req["nl_type"])) == "RTM_NEWLINK"  # type: ignore[arg-type]
    assert req["ifname"] == "sp-va"
    assert attrs(req)["peer"] == "sp-vb"
    assert req["nl_flags"] == 0x605  # REQUEST|ACK|EXCL|CREATE
    assert int(req["end_ns"]) >= int(req["start_ns"])  # type: ignore[call-overload]
    (ack,) = [a for a in acks(events) if a["nl_seq"] == req["nl_seq"]]
    assert ack["ret"] == 0 and ack["nl_type"] == 16
    assert int(ack["ts_ns"]) > int(req["ts_ns"])  # type: ignore[call-overload]


def test_ip_link_add_that_exists_gets_eexist() -> None:
    events = decode("ip_link_add_exists")
    (req,) = [e for e in sends(events) if e.get("link_kind") == "veth"]
    (ack,) = [a for a in acks(events) if a["nl_seq"] == req["nl_seq"] and a["nl_type"] == 16]
    assert ack["ret"] == -17  # EEXIST


def test_ip_addr_add_has_address_with_prefix() -> None:
    (req,) = [e for e in sends(decode("ip_addr_add")) if e["nl_type"] == 20]
    assert req["address"] == "10.99.0.1/24"


def test_ip_route_add_has_destination_and_gateway() -> None:
    (req,) = sends(decode("ip_route_add"))
    assert req["nl_type"] == 24
    assert req["address"] == "10.98.0.0/16"
    assert attrs(req)["gateway"] == "10.99.0.2"


def test_ip_link_set_netns_is_a_netns_move_by_fd() -> None:
    (req,) = [e for e in sends(decode("ip_link_set_netns")) if "netns_target" in e]
    assert req["nl_type"] == 16
    assert attrs(req)["netns_by"] == "fd"
    assert isinstance(req["netns_target"], int)


def test_iptables_nft_batch_yields_one_event_per_message() -> None:
    events = sends(decode("iptables_nat_new_chain"))
    names = [netlink.type_name(12, int(e["nl_type"])) for e in events]  # type: ignore[call-overload]
    start = names.index("NFNL_MSG_BATCH_BEGIN")
    assert names[start:] == [
        "NFNL_MSG_BATCH_BEGIN",
        "NFT_NEWTABLE",
        "NFT_NEWCHAIN",
        "NFNL_MSG_BATCH_END",
    ]
    # one sendmsg: same syscall times for every message of the batch
    assert len({e["start_ns"] for e in events[start:]}) == 1
    chain = events[start + 2]
    assert attrs(chain) == {"table": "nat", "chain": "SP-CAPTURE"}


def test_iptables_lookup_of_missing_chain_is_enoent() -> None:
    events = decode("iptables_nat_new_chain")
    lookups = [e for e in sends(events) if attrs(e).get("chain") == "SP-CAPTURE"]
    assert lookups
    enoent = [a for a in acks(events) if a["ret"] == -2]
    assert enoent


def test_go_cni_bridge_add_requests_and_acks() -> None:
    events = decode("cni_bridge_add")
    reqs = sends(events)
    assert reqs[0]["comm"] == "bridge"
    kinds = {(e["nl_type"], e.get("link_kind")) for e in reqs}
    assert (16, "bridge") in kinds and (16, "veth") in kinds
    (veth,) = [e for e in reqs if e.get("link_kind") == "veth"]
    assert veth["ifname"] == "eth0" and "peer_netns_fd" in attrs(veth)
    assert {"10.77.0.2/24", "10.77.0.1/24"} <= {e.get("address") for e in reqs}
    (route,) = [e for e in reqs if e["nl_type"] == 24]
    assert route["address"] == "0.0.0.0/0" and attrs(route)["gateway"] == "10.77.0.1"
    # every request has an answer: an ack, the end of a dump or a GET reply
    answered = {a["nl_seq"] for a in acks(events)}
    missing = [e["nl_seq"] for e in reqs if e["nl_seq"] not in answered]
    assert missing == []


def test_get_reply_counts_as_answer() -> None:
    events = decode("cni_bridge_add")
    replies = [a for a in acks(events) if attrs(a).get("reply")]
    assert replies and all(a["ret"] == 0 for a in replies)


def test_dump_answer_is_nlmsg_done() -> None:
    events = decode("cni_bridge_del")
    (dump,) = [e for e in sends(events) if e["nl_type"] == 22]
    assert dump["nl_flags"] & 0x300 == 0x300
    (done,) = [a for a in acks(events) if a["nl_seq"] == dump["nl_seq"]]
    assert attrs(done)["done"] is True


def test_parse_messages_stops_at_garbage_and_marks_truncation() -> None:
    hdr = struct.pack("=IHHII", 60, 16, 5, 7, 0) + bytes(16)
    attr = struct.pack("=HH", 8, 3) + b"eth\0"
    msgs = netlink.parse_messages(hdr + attr, 0)
    assert len(msgs) == 1 and msgs[0].truncated and msgs[0].ifname == "eth"
    assert netlink.parse_messages(struct.pack("=IHHII", 3, 16, 0, 0, 0), 0) == []
    assert netlink.parse_messages(b"\x01\x02", 0) == []


def test_error_with_extended_ack_message() -> None:
    orig = struct.pack("=IHHII", 32, 16, 0x605, 9, 0)
    tlv = struct.pack("=HH", 12, 1) + b"bad name"
    body = struct.pack("=i", -22) + orig + tlv
    msg = struct.pack("=IHHII", 16 + len(body), 2, 0x300, 9, 0) + body
    (m,) = netlink.parse_messages(msg, 0)
    assert (m.error, m.orig_type, m.orig_seq) == (-22, 16, 9)
    assert m.extras["message"] == "bad name"


def test_type_names() -> None:
    assert netlink.type_name(0, 24) == "RTM_NEWROUTE"
    assert netlink.type_name(12, 0x0A06) == "NFT_NEWRULE"
    assert netlink.type_name(12, 0x0101) == "NFNL_ctnetlink_1"
    assert netlink.type_name(0, 2) == "NLMSG_ERROR"
