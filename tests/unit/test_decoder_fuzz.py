"""Decoders never crash on arbitrary bytes (issue 9).

The kernel side copies user memory that a process may change under it, and a ring buffer
record can be cut by the copy limits; none of that may take the recorder down. Properties:

- ``ProbeSession.decode`` turns *any* raw record into events or a ``note`` (never raises);
- what user memory controls (argv/env strings, netlink and CRI bytes, the copy lengths) always
  decodes into events that fit the recording file's schema: a row the writer rejected would
  stop the recording as surely as an exception. (The numbers in a record's fixed part are the
  kernel's: timestamps, pids, fds; those are not fuzzed into impossible values there);
- the netlink parser handles any bytes, and structurally valid messages with random bodies;
- the exec probe's argv/env strings decode from any tail and only ``CNI_*`` variables pass;
- HTTP/2 frames with random payloads and random HPACK blocks never raise in the CRI decoder.

``tests/unit/test_grpc_decode.py`` holds the CRI decoder's own properties on real captures.
"""

from __future__ import annotations

import ctypes as ct
import struct

import pyarrow as pa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from startprof.cri.stream import PREFACE, CriStreamDecoder, HeaderDecoder, TolerantHpack
from startprof.events import COLUMN_NAMES, KINDS, Event
from startprof.probes import abi, netlink
from startprof.probes import exec as exec_probe
from startprof.probes.session import ProbeSession
from startprof.recording import EVENT_SCHEMA

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
PID_MAX = 4_194_304  # the kernel's hard limit (PID_MAX_LIMIT on 64-bit)

# Fixed part of each record type: what a record of that type has to hold before its tail.
FIXED: dict[abi.RecordType, type[ct.Structure]] = {
    abi.RecordType.EXEC: abi.ExecFixed,
    abi.RecordType.EXEC_RET: abi.Ret,
    abi.RecordType.EXEC_DONE: abi.ExecDoneFixed,
    abi.RecordType.FORK: abi.Fork,
    abi.RecordType.EXIT_GROUP: abi.Ret,
    abi.RecordType.EXIT: abi.Header,
    abi.RecordType.CLONE: abi.Ns,
    abi.RecordType.UNSHARE: abi.Ns,
    abi.RecordType.SETNS: abi.Ns,
    abi.RecordType.NL_SOCKET: abi.NlSocket,
    abi.RecordType.NL_SEND: abi.NlMsgFixed,
    abi.RecordType.NL_RECV: abi.NlMsgFixed,
    abi.RecordType.CRI_ACCEPT: abi.CriAccept,
    abi.RecordType.CRI_DATA: abi.CriDataFixed,
    abi.RecordType.RT_OP: abi.RtOp,
    abi.RecordType.RENAME: abi.Rename,
    abi.RecordType.IMG: abi.Img,
}
assert set(FIXED) == set(abi.RecordType), "a new record type needs a fuzz entry"

HEADER_SIZE = ct.sizeof(abi.Header)


def _header(rtype: int, size: int, pid: int, ts: int, comm: bytes) -> bytes:
    return bytes(abi.Header(rtype, size, ts, pid, pid, 7, comm))


@st.composite
def records(draw: st.DrawFn) -> bytes:
    """A record as the ring buffer delivers it: a plausible header (the kernel writes it),
    then anything: fields of the fixed part and the tail are user memory or may be cut."""
    rtype = draw(st.sampled_from(list(abi.RecordType)))
    fixed = ct.sizeof(FIXED[rtype])
    body = draw(
        st.one_of(
            st.binary(max_size=fixed + 600),
            # a full fixed part and a tail: reaches the tail decoders
            st.binary(min_size=fixed - HEADER_SIZE, max_size=fixed - HEADER_SIZE + 600),
        )
    )
    size = draw(st.one_of(st.just(HEADER_SIZE + len(body)), st.integers(0, 2**32 - 1)))
    pid = draw(st.integers(1, PID_MAX))
    ts = draw(st.integers(0, 2**63 - 1))
    comm = draw(st.binary(max_size=15))
    return _header(rtype, size, pid, ts, comm) + body


def _known_columns(events: list[Event]) -> None:
    for ev in events:
        assert set(ev) <= set(COLUMN_NAMES), set(ev) - set(COLUMN_NAMES)
        assert ev["kind"] in KINDS


def _fits_the_recording(events: list[Event]) -> None:
    _known_columns(events)
    pa.RecordBatch.from_pylist(events, schema=EVENT_SCHEMA)


@FUZZ
@given(st.lists(records(), min_size=1, max_size=8))
def test_any_record_decodes_into_events_or_a_note(raws: list[bytes]) -> None:
    session = ProbeSession()  # decoding needs no kernel: nothing is loaded
    _known_columns(session.decode(raws))


@FUZZ
@given(st.binary(max_size=2000))
def test_any_bytes_at_all_decode_into_events_or_a_note(raw: bytes) -> None:
    events = ProbeSession().decode([raw])
    _known_columns(events)
    if len(raw) < HEADER_SIZE:
        assert [e["kind"] for e in events] == ["note"]


# --- netlink ------------------------------------------------------------------------------------
PROTOS = st.sampled_from([netlink.NETLINK_ROUTE, netlink.NETLINK_NETFILTER, 4, 16, 99])


@st.composite
def nl_attrs(draw: st.DrawFn, depth: int = 0) -> bytes:
    """Netlink attributes, nested a few levels, with lengths that may lie."""
    out = b""
    for _ in range(draw(st.integers(0, 5))):
        atype = draw(st.integers(0, 40) | st.integers(0, 0xFFFF))
        if depth < 3 and draw(st.booleans()):
            payload = draw(nl_attrs(depth + 1))
        else:
            payload = draw(st.binary(max_size=24))
        length = draw(st.one_of(st.just(4 + len(payload)), st.integers(0, 0xFFFF)))
        out += struct.pack("=HH", length, atype) + payload + b"\0" * (-len(payload) % 4)
    return out


@st.composite
def nl_messages(draw: st.DrawFn) -> bytes:
    """Messages with real netlink headers (types the decoders look into) and random bodies."""
    out = b""
    for _ in range(draw(st.integers(1, 4))):
        nl_type = draw(
            st.sampled_from([1, 2, 3, 16, 17, 18, 19, 20, 21, 22, 24, 25, 26, 0x0A00, 0x0A06])
            | st.integers(0, 0xFFFF)
        )
        fixed = draw(st.binary(min_size=0, max_size=20))
        body = fixed + draw(nl_attrs())
        flags = draw(st.integers(0, 0xFFFF))
        length = draw(st.one_of(st.just(16 + len(body)), st.integers(0, 2**32 - 1)))
        seq, port = draw(st.integers(0, 2**32 - 1)), draw(st.integers(0, 2**32 - 1))
        out += struct.pack("=IHHII", length, nl_type, flags, seq, port) + body
        out += b"\0" * (-len(out) % 4)
    return out


@FUZZ
@given(st.binary(max_size=600) | nl_messages(), PROTOS)
def test_netlink_parser_takes_any_bytes(data: bytes, proto: int) -> None:
    for msg in netlink.parse_messages(data, proto):
        assert msg.length >= 16
        assert isinstance(msg.nl_type, int)
        assert netlink.type_name(proto, msg.nl_type)


def _nl_record(rtype: abi.RecordType, data: bytes, proto: int, copied: int, flags: int) -> bytes:
    r = abi.NlMsgFixed()
    r.h = abi.Header(rtype, ct.sizeof(abi.NlMsgFixed) + len(data), 10, 42, 42, 7, b"bridge")
    r.fd, r.protocol, r.ret, r.enter_ns = 5, proto, len(data), 9
    r.len, r.copied, r.msg_flags, r.iovlen = len(data), copied, flags, 1
    return bytes(r) + data


@FUZZ
@given(
    data=st.binary(max_size=600) | nl_messages(),
    proto=PROTOS,
    copied=st.integers(0, 2**32 - 1),
    flags=st.integers(0, 2**32 - 1),
)
def test_netlink_send_and_receive_records_take_any_payload(
    data: bytes, proto: int, copied: int, flags: int
) -> None:
    for rtype, decoder in (
        (abi.RecordType.NL_SEND, netlink.decode_send),
        (abi.RecordType.NL_RECV, netlink.decode_recv),
    ):
        for n in (len(data), copied):  # the copy length as sent, and a lying one
            events = decoder(_nl_record(rtype, data, proto, n, flags))
            _fits_the_recording(events)
            assert all(e["kind"] in ("nl_send", "nl_ack") for e in events)


# --- exec: argv and env -------------------------------------------------------------------------
SECRET = "AWS_SECRET_ACCESS_KEY=AKIAFUZZSECRET"


@FUZZ
@given(
    strings=st.lists(st.binary(max_size=40), max_size=20),
    tail=st.binary(max_size=40),
    argc=st.integers(0, 0xFFFF),
    envc=st.integers(0, 0xFFFF),
    trunc=st.integers(0, 0xFFFF),
    size_delta=st.integers(-60, 60),
)
def test_exec_strings_decode_from_any_tail_and_keep_only_cni_env(
    strings: list[bytes], tail: bytes, argc: int, envc: int, trunc: int, size_delta: int
) -> None:
    # the secret sits among the environment strings, wherever argc puts their start
    blob = b"".join(s + b"\0" for s in [*strings, SECRET.encode()]) + tail
    r = abi.ExecFixed()
    size = max(0, ct.sizeof(abi.ExecFixed) + len(blob) + size_delta)
    r.h = abi.Header(abi.RecordType.EXEC, size, 10, 42, 42, 7, b"containerd")
    r.dirfd, r.filename_len, r.argc, r.envc, r.trunc = -100, 0, argc, envc, trunc
    events = exec_probe.decode_exec(bytes(r) + blob)
    _fits_the_recording(events)
    (ev,) = events
    assert all(v.startswith("CNI_") for v in ev["env"])
    assert SECRET not in ev["env"]


@FUZZ
@given(st.binary(max_size=300), st.integers(0, 300))
def test_split_strings_takes_any_bytes(buf: bytes, count: int) -> None:
    out, rest = exec_probe.split_strings(buf, count)
    assert len(out) <= count
    assert len(rest) <= len(buf)


# --- HTTP/2 and HPACK ---------------------------------------------------------------------------
@st.composite
def h2_frames(draw: st.DrawFn) -> bytes:
    """Frames with valid 9-byte headers (any type, flags, stream) and random payloads."""
    out = b""
    for _ in range(draw(st.integers(1, 6))):
        payload = draw(st.binary(max_size=120))
        length = draw(st.one_of(st.just(len(payload)), st.integers(0, 2**24 - 1)))
        ftype = draw(st.integers(0, 9) | st.integers(0, 255))
        flags = draw(st.integers(0, 255))
        stream = draw(st.integers(0, 7) | st.integers(0, 2**31 - 1))
        out += length.to_bytes(3, "big") + bytes([ftype, flags]) + stream.to_bytes(4, "big")
        out += payload
    return out


@FUZZ
@given(st.lists(st.tuples(st.sampled_from(["in", "out"]), h2_frames()), min_size=1, max_size=6))
def test_http2_frames_with_random_payloads_never_raise(chunks: list[tuple[str, bytes]]) -> None:
    decoder = CriStreamDecoder()
    calls: list[Event] = [*decoder.feed({"kind": "cri_accept", "conn_id": 1, "ts_ns": 0})]
    for i, (direction, data) in enumerate(chunks):
        if i == 0 and direction == "in":
            data = PREFACE + data
        event = {"kind": "cri_data", "conn_id": 1, "ts_ns": i + 1, "direction": direction}
        calls += decoder.feed({**event, "data": data})
    calls += decoder.finish()
    _fits_the_recording(calls)


@FUZZ
@given(st.lists(st.binary(max_size=200), min_size=1, max_size=5), st.sampled_from([0, 4096]))
def test_hpack_blocks_of_random_bytes_never_raise(blocks: list[bytes], table: int) -> None:
    strict, tolerant = HeaderDecoder(), TolerantHpack(table)
    for block in blocks:
        for decoded in (strict.decode(block), tolerant.decode(block)):
            headers, _ = decoded
            assert all(n is None or isinstance(n, str) for n, _, _ in headers)
