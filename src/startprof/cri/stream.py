"""Turn the raw bytes of containerd's CRI socket into CRI calls (``cri_call`` events).

The cri probe copies every byte containerd reads from (``in``: requests) and writes to (``out``:
responses) each connection on its CRI socket. Those bytes are HTTP/2 carrying gRPC. This module
parses them passively, as a third party that saw both directions but took part in neither:

- HTTP/2 frames are parsed here (9-byte header, padding, priority, SETTINGS, RST_STREAM, GOAWAY);
  the work per frame is a few integer reads, and payloads are copied only when they are used.
- Header blocks are decoded with ``hpack.Decoder``, one per connection and direction. When that
  fails (a connection that began before the recording, so the dynamic table is unknown, or lost
  bytes) the direction switches to a tolerant HPACK reader built on ``hpack``'s static table,
  integer and Huffman decoders, which marks what it cannot resolve instead of giving up.
- gRPC messages (5-byte length prefix) are reassembled from DATA frames and parsed with the CRI
  protobuf classes to pull out pod names, sandbox ids and container ids.

Nothing here raises on bad input: damaged or unknown bytes end up as flags in the calls' ``attrs``.
See ``docs/cri-decoding.md`` for what can and cannot be recovered.
"""

from __future__ import annotations

import itertools
import json
import re
import zlib
from collections import deque
from collections.abc import Iterable, Iterator
from typing import Any, Final
from urllib.parse import unquote

from google.protobuf.message import Message
from hpack import Decoder
from hpack.exceptions import HPACKError
from hpack.hpack import decode_integer
from hpack.huffman_table import decode_huffman
from hpack.table import HeaderTable

from startprof.cri import shapes
from startprof.cri.api import (
    GRPC_STATUS_NAMES,
    METHODS,
    REQUEST_FIELDS,
    RESPONSE_FIELDS,
    STATUS_FAILED_UNKNOWN_CODE,
    short_method,
)
from startprof.events import Event, attrs_of

PREFACE: Final = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

# HTTP/2 frame types (RFC 9113 section 6) and flags.
DATA: Final = 0x0
HEADERS: Final = 0x1
PRIORITY: Final = 0x2
RST_STREAM: Final = 0x3
SETTINGS: Final = 0x4
PUSH_PROMISE: Final = 0x5
PING: Final = 0x6
GOAWAY: Final = 0x7
WINDOW_UPDATE: Final = 0x8
CONTINUATION: Final = 0x9

FLAG_END_STREAM: Final = 0x1
FLAG_ACK: Final = 0x1
FLAG_END_HEADERS: Final = 0x4
FLAG_PADDED: Final = 0x8
FLAG_PRIORITY: Final = 0x20

SETTINGS_HEADER_TABLE_SIZE: Final = 0x1
SETTINGS_MAX_FRAME_SIZE: Final = 0x5

DEFAULT_MAX_FRAME: Final = 16_384
LARGEST_FRAME: Final = (1 << 24) - 1
DEFAULT_TABLE_SIZE: Final = 4_096

# Flags a sender may set per frame type; used only to judge whether bytes look like a frame
# header when searching for one (a receiver must ignore unknown flags, senders do not set them).
_DEFINED_FLAGS: Final[dict[int, int]] = {
    DATA: FLAG_END_STREAM | FLAG_PADDED,
    HEADERS: FLAG_END_STREAM | FLAG_END_HEADERS | FLAG_PADDED | FLAG_PRIORITY,
    PRIORITY: 0,
    RST_STREAM: 0,
    SETTINGS: FLAG_ACK,
    PUSH_PROMISE: FLAG_END_HEADERS | FLAG_PADDED,
    PING: FLAG_ACK,
    GOAWAY: 0,
    WINDOW_UPDATE: 0,
    CONTINUATION: FLAG_END_HEADERS,
}
_STREAM_FRAMES: Final = frozenset({DATA, HEADERS, PRIORITY, RST_STREAM, PUSH_PROMISE, CONTINUATION})
_CONNECTION_FRAMES: Final = frozenset({SETTINGS, PING, GOAWAY})
_FIXED_LENGTH: Final[dict[int, int]] = {PRIORITY: 5, RST_STREAM: 4, PING: 8, WINDOW_UPDATE: 4}

H2_ERROR_NAMES: Final[dict[int, str]] = {
    0x0: "NO_ERROR",
    0x1: "PROTOCOL_ERROR",
    0x2: "INTERNAL_ERROR",
    0x3: "FLOW_CONTROL_ERROR",
    0x4: "SETTINGS_TIMEOUT",
    0x5: "STREAM_CLOSED",
    0x6: "FRAME_SIZE_ERROR",
    0x7: "REFUSED_STREAM",
    0x8: "CANCEL",
    0x9: "COMPRESSION_ERROR",
    0xA: "CONNECT_ERROR",
    0xB: "ENHANCE_YOUR_CALM",
    0xC: "INADEQUATE_SECURITY",
    0xD: "HTTP_1_1_REQUIRED",
}

# What a gRPC client reports when its stream is reset (grpc/doc/PROTOCOL-HTTP2.md, "Errors").
_RST_TO_GRPC: Final[dict[int, str]] = {
    0x7: "UNAVAILABLE",
    0x8: "CANCELLED",
    0xB: "RESOURCE_EXHAUSTED",
}
_RST_DEFAULT_GRPC: Final = "INTERNAL"

# Limits that keep a damaged or hostile stream from holding unbounded memory.
_MAX_HEADER_BLOCK: Final = 1 << 20
_MAX_MESSAGE: Final = 16 << 20
_MAX_KNOWN_HOLE: Final = 1 << 20
_MAX_TABLE_SIZE: Final = 1 << 20
# Each message of a call whose method is unknown is kept until the call ends, up to this size
# (a ListContainers reply of a node with 100 containers is ~150 KB): in-flight calls x 2 x this.
_MAX_UNNAMED_MESSAGE: Final = 1 << 20


# --- HPACK ----------------------------------------------------------------------------------------
Header = tuple[str | None, str | None, str | None]
"""A decoded header: (name, value, symbol). Name or value is None where it is a dynamic-table
entry added before the decoder saw the stream; ``symbol`` then names that entry (see
``TolerantHpack``), so two headers with the same symbol are the same unknown entry."""


def _text(raw: bytes | bytearray | memoryview) -> str:
    return bytes(raw).decode("utf-8", "replace")


class TolerantHpack:
    """An HPACK reader for a stream whose beginning is missing.

    Why this is safe: the dynamic table is newest-first and only ever loses its oldest entries.
    Starting empty, the entries learned from then on are exactly the newest entries of the real
    table, in the same order, so an index that falls inside them is right and one beyond them is
    unknown (never wrong). Entries with an unknown name get a lower-bound size, so this table
    evicts no earlier than the real one; keeping an entry too long is harmless because the
    encoder never refers to an entry it has evicted. For the same reason, until the encoder
    announces its table size, the table is as large as the memory bound allows.

    Unknown entries get stable identities: after ``n`` insertions, dynamic index ``d`` beyond
    the learned entries is the entry that was ``d - n`` places from the newest when the decoder
    began, whatever was inserted since. Its symbol is ``"<epoch>.<d - n>"``; the epoch changes
    whenever the table had to be forgotten, because positions no longer line up after that.
    """

    def __init__(self, max_size: int, epochs: Iterator[int] | None = None) -> None:
        self._entries: deque[tuple[str | None, str, int, str | None]] = deque()
        self._size = 0
        self._max = min(max_size, _MAX_TABLE_SIZE)
        self._limit = self._max
        self._epochs = epochs if epochs is not None else itertools.count()
        self._epoch = next(self._epochs)
        self._inserted = 0
        self._evicted = False

    def decode(self, block: bytes) -> tuple[list[Header], bool]:
        """Headers of one block and whether every one of them was resolved.

        A block that cannot be parsed to its end empties the table (whatever it inserted after the
        failure is lost, so the newest-first order could no longer be trusted) and starts a new
        epoch of symbols.
        """
        data = memoryview(block)
        headers: list[Header] = []
        resolved = True
        i = 0
        try:
            while i < len(data):
                first = data[i]
                if first & 0x80:
                    index, used = decode_integer(data[i:], 7)
                    i += used
                    header = self._lookup(index)
                    # a learned entry may carry a value under a name that was never seen
                    resolved = resolved and header[0] is not None and header[1] is not None
                    headers.append(header)
                elif first & 0xE0 == 0x20:
                    size, used = decode_integer(data[i:], 5)
                    i += used
                    self._max = min(size, self._limit)
                    self._evict()
                else:
                    indexing = bool(first & 0x40)
                    index, used = decode_integer(data[i:], 6 if indexing else 4)
                    i += used
                    symbol: str | None = None
                    if index:
                        name, _, symbol = self._lookup(index)
                    else:
                        raw_name, i = self._string(data, i)
                        name = _text(raw_name)
                    raw_value, i = self._string(data, i)
                    value = _text(raw_value)
                    resolved = resolved and name is not None
                    headers.append((name, value, symbol if name is None else None))
                    if indexing:
                        self._add(name, value, symbol if name is None else None)
        except (HPACKError, IndexError, ValueError):
            self._entries.clear()
            self._size = 0
            self._epoch = next(self._epochs)
            self._inserted = 0
            self._evicted = False
            return headers, False
        return headers, resolved

    def _lookup(self, index: int) -> Header:
        if index == 0:
            raise ValueError("HPACK index 0")
        if index <= len(HeaderTable.STATIC_TABLE):
            name, value = HeaderTable.STATIC_TABLE[index - 1]
            return _text(name), _text(value), None
        offset = index - len(HeaderTable.STATIC_TABLE) - 1
        if offset < len(self._entries):
            name_s, value_s, _, name_symbol = self._entries[offset]
            return name_s, value_s, name_symbol
        if self._evicted:
            # Learned entries were evicted, so the real table has evicted every older one too:
            # the index is damage, not an entry from before the decoder began.
            return None, None, None
        return None, None, f"{self._epoch}.{offset - self._inserted}"

    @staticmethod
    def _string(data: memoryview, i: int) -> tuple[bytes, int]:
        huffman = data[i] & 0x80
        length, used = decode_integer(data[i:], 7)
        i += used
        if i + length > len(data):
            raise ValueError("HPACK string runs past the block")
        raw = data[i : i + length]
        return (decode_huffman(raw) if huffman else bytes(raw)), i + length

    def _add(self, name: str | None, value: str, name_symbol: str | None) -> None:
        size = 32 + len(value.encode()) + (len(name.encode()) if name is not None else 0)
        self._inserted += 1
        if size > self._max:
            self._entries.clear()
            self._size = 0
            self._evicted = True
            return
        self._entries.appendleft((name, value, size, name_symbol))
        self._size += size
        self._evict()

    def _evict(self) -> None:
        while self._size > self._max and self._entries:
            self._size -= self._entries.pop()[2]
            self._evicted = True


class HeaderDecoder:
    """HPACK state of one direction of one connection: ``hpack.Decoder`` until it fails.

    A direction that did not start at the connection's beginning (``tolerant``) uses the
    tolerant reader from the first block: the strict one would fail at the first unknown index
    and take with it every entry learned so far."""

    def __init__(self, *, tolerant: bool = False) -> None:
        self._strict: Decoder | None = None
        self._tolerant: TolerantHpack | None = None
        self._allowed = DEFAULT_TABLE_SIZE
        self._epochs = itertools.count()
        if tolerant:
            self.forget()
        else:
            self._strict = Decoder(max_header_list_size=_MAX_HEADER_BLOCK)

    def allow_table_size(self, size: int) -> None:
        """The decoding side advertised SETTINGS_HEADER_TABLE_SIZE.

        Lenient on purpose: an observer cannot tell when the encoder saw the SETTINGS ACK, so a
        lowered limit is not enforced; only a raised one matters for decoding.
        """
        self._allowed = max(self._allowed, min(size, _MAX_TABLE_SIZE))
        if self._strict is not None:
            self._strict.max_allowed_table_size = self._allowed

    def forget(self) -> None:
        """Header blocks were lost: the dynamic table is unknown from here on."""
        self._strict = None
        # Its real size is unknown too (a size update may have been lost): assume the largest.
        self._tolerant = TolerantHpack(_MAX_TABLE_SIZE, self._epochs)

    def decode(self, block: bytes) -> tuple[list[Header], bool]:
        if self._strict is not None:
            try:
                decoded = self._strict.decode(block, raw=True)
                return [(_text(n), _text(v), None) for n, v in decoded], True
            except (HPACKError, ValueError, IndexError, UnicodeError):
                # The failed block may have half-updated the table: start over empty.
                self.forget()
        if self._tolerant is None:  # pragma: no cover - forget() always sets it
            self._tolerant = TolerantHpack(_MAX_TABLE_SIZE, self._epochs)
        return self._tolerant.decode(block)


# --- gRPC messages --------------------------------------------------------------------------------
class GrpcMessage:
    """The first length-prefixed gRPC message of one direction of a stream (CRI calls are unary)."""

    __slots__ = ("buf", "error", "limit")

    def __init__(self, limit: int = _MAX_MESSAGE) -> None:
        self.buf = bytearray()
        self.error: str | None = None
        self.limit = limit

    def complete(self) -> bool:
        return len(self.buf) >= 5 and len(self.buf) >= 5 + int.from_bytes(self.buf[1:5], "big")

    def add(self, data: bytes | bytearray) -> None:
        if self.error is not None or self.complete():
            return
        self.buf += data
        if len(self.buf) >= 5:
            length = int.from_bytes(self.buf[1:5], "big")
            if length > self.limit:
                self.error = f"message of {length} bytes not kept"
                self.buf = bytearray()
            elif len(self.buf) > 5 + length:
                del self.buf[5 + length :]

    def payload(self, encoding: str | None) -> bytes | None:
        """The decompressed message, or None with ``error`` set."""
        if self.error is not None:
            return None
        if not self.complete():
            self.error = "incomplete" if self.buf else "missing"
            return None
        body = bytes(self.buf[5:])
        if not self.buf[0]:
            return body
        wbits = {"gzip": 31, "deflate": 15}.get(encoding or "")
        if wbits is None:
            self.error = f"compressed with {encoding or 'no declared encoding'}"
            return None
        try:
            inflater = zlib.decompressobj(wbits)
            out = inflater.decompress(body, self.limit)
        except zlib.error:
            self.error = f"bad {encoding} data"
            return None
        if inflater.unconsumed_tail:
            self.error = "decompressed message too large"
            return None
        return out


# W3C trace context (https://www.w3.org/TR/trace-context/#traceparent-header): recognisable by
# shape even when its header name is an HPACK entry from before the recording.
TRACEPARENT: Final = re.compile(r"^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$")
_GRPC_CONTENT_TYPE: Final = "application/grpc"


# --- connection state -----------------------------------------------------------------------------
class Call:
    """One CRI call (one HTTP/2 stream) while it is open."""

    def __init__(self, conn_id: int, stream_id: int, start_ns: int, pid: Any, tid: Any) -> None:
        self.conn_id = conn_id
        self.stream_id = stream_id
        self.start_ns = start_ns
        self.pid = pid
        self.tid = tid
        self.method: str | None = None
        self.status: str | None = None
        self.hpack_unknown = False
        self.key: str | None = None
        """Symbols of the unknown HPACK entries of an unnamed request (TolerantHpack): two calls
        with the same key on one connection share every unknown entry, their :path included,
        so they are calls of the same method."""
        self.replied = False  # a reply message arrived (a unary call only replies when OK)
        self.status_unknown = False  # the call ended with trailers whose grpc-status is unknown
        self.reply_visible = False
        """Every reply byte since the request was parsed as frames (no resync, no loss), so a
        missing reply message really is missing."""
        self.encoding: dict[str, str | None] = {"in": None, "out": None}
        self.bodies: dict[str, GrpcMessage] = {}
        self.attrs: dict[str, Any] = {}

    def set_method(self, method: str) -> None:
        self.method = method
        self.bodies = {}
        name = short_method(method)
        if method in METHODS:
            if name in REQUEST_FIELDS:
                self.bodies["in"] = GrpcMessage()
            if name in RESPONSE_FIELDS:
                self.bodies["out"] = GrpcMessage()

    def keep_messages(self, key: str) -> None:
        """The method is unknown: keep both messages (bounded) until the call ends, when their
        shape is all there is to know it by."""
        self.key = key
        self.bodies = {
            "in": GrpcMessage(_MAX_UNNAMED_MESSAGE),
            "out": GrpcMessage(_MAX_UNNAMED_MESSAGE),
        }

    def event(self, end_ns: int | None, within: Iterable[str] = shapes.ALL_METHODS) -> Event:
        """The ``cri_call`` event. An unnamed call lists, in ``attrs.unnamed``, the methods among
        ``within`` its messages fit, each with the fields it would have (startprof.cri.shapes)."""
        attrs = self.attrs
        if self.status is None and end_ns is not None:
            if self.replied:
                self.status = "OK"
                attrs["status_inferred"] = "reply message"
            elif self.status_unknown and self.reply_visible:
                self.status = STATUS_FAILED_UNKNOWN_CODE
                attrs["status_inferred"] = "no reply message"
        fields: dict[str, str] = {}
        if self.method in METHODS:
            name = short_method(self.method)
            request, reply = self._message("in"), self._message("out")
            fields = shapes.kept_fields(name, request, reply)
        elif self.key is not None:
            request_bytes = self._payload("in")
            reply_bytes = self._payload("out") if self.replied else None
            names = shapes.candidates(request_bytes, reply_bytes, within)
            attrs["unnamed"] = {
                "key": self.key,
                "candidates": {n: shapes.parse(n, request_bytes, reply_bytes) for n in names},
            }
        columns: dict[str, Any] = {}
        for target, value in fields.items():
            if target.startswith("attrs."):
                attrs.setdefault(target[6:], value)
            else:
                columns.setdefault(target, value)
        if self.hpack_unknown and (self.method is None or self.status is None):
            attrs["hpack"] = "unknown"
        return {
            "kind": "cri_call",
            "ts_ns": self.start_ns,
            "pid": self.pid,
            "tid": self.tid,
            "conn_id": self.conn_id,
            "method": self.method,
            "stream_id": self.stream_id,
            "start_ns": self.start_ns,
            "end_ns": end_ns,
            "grpc_status": self.status,
            **columns,
            "attrs": json.dumps(attrs, sort_keys=True) if attrs else None,
        }

    def _payload(self, direction: str) -> bytes | None:
        body = self.bodies.get(direction)
        if body is None:
            return None
        payload = body.payload(self.encoding[direction])
        if payload is None and (body.error not in ("missing", "incomplete") or self.status == "OK"):
            self.attrs.setdefault(f"{direction}_body", body.error)
        return payload

    def _message(self, direction: str) -> Message | None:
        assert self.method is not None
        payload = self._payload(direction)
        if payload is None:
            return None
        cls = METHODS[self.method][0 if direction == "in" else 1]
        try:
            return cls.FromString(payload)
        except Exception:  # protobuf raises DecodeError, or RuntimeError on deep nesting
            self.attrs.setdefault(f"{direction}_body", "undecodable")
            return None


class HeaderBlock:
    """A header block in progress: HEADERS (or PUSH_PROMISE) plus its CONTINUATION frames."""

    __slots__ = ("damaged", "end_stream", "fragments", "pid", "push", "stream_id", "tid", "ts")

    def __init__(self, stream_id: int, end_stream: bool, push: bool, chunk: Chunk) -> None:
        self.stream_id = stream_id
        self.end_stream = end_stream
        self.push = push
        self.fragments = bytearray()
        self.damaged = False
        _, self.ts, self.pid, self.tid = chunk


Chunk = tuple[int, int, Any, Any]
"""(absolute offset of its first byte, ts_ns, pid, tid) of one cri_data event."""

_PREFACE_MODE: Final = 0
_FRAMES_MODE: Final = 1
_RESYNC_MODE: Final = 2


class Half:
    """One direction of one connection: the byte buffer and the parser state."""

    def __init__(self, direction: str, *, preface: bool, resync: bool) -> None:
        self.direction = direction
        self.buf = bytearray()
        self.base = 0  # absolute stream offset of buf[0]
        self.pos = 0  # parse position in buf
        self.mode = _PREFACE_MODE if preface else _RESYNC_MODE if resync else _FRAMES_MODE
        self.synced_once = not resync
        self.chunks: deque[Chunk] = deque()
        self.holes: list[tuple[int, int]] = []  # zero-filled absolute ranges of lost bytes
        self.breaks: list[int] = []  # absolute offsets after which an unknown number was lost
        self.headers = HeaderDecoder(tolerant=resync)
        # SETTINGS_MAX_FRAME_SIZE the receiving side advertised; unknown mid-stream.
        self.max_frame = LARGEST_FRAME if resync else DEFAULT_MAX_FRAME
        self.block: HeaderBlock | None = None

    @property
    def end(self) -> int:
        return self.base + len(self.buf)

    def chunk_at(self, offset: int) -> Chunk:
        """The cri_data event the byte at absolute ``offset`` came in."""
        chunks = self.chunks
        while len(chunks) > 1 and chunks[1][0] <= offset:
            chunks.popleft()
        return chunks[0]

    def overlaps_hole(self, start: int, end: int) -> bool:
        return any(h_start < end and start < h_end for h_start, h_end in self.holes)

    def hole_end(self, start: int, end: int) -> int | None:
        """The end of the last hole overlapping [start, end), if any."""
        ends = [h_end for h_start, h_end in self.holes if h_start < end and start < h_end]
        return max(ends) if ends else None


class Connection:
    def __init__(self, conn_id: int, *, preexisting: bool) -> None:
        self.conn_id = conn_id
        self.halves = {
            "in": Half("in", preface=not preexisting, resync=preexisting),
            "out": Half("out", preface=False, resync=preexisting),
        }
        self.calls: dict[int, Call] = {}
        self.last_client_stream = 0
        self.key_methods: dict[str, tuple[str, ...]] = {}
        """Per unnamed-call key, the methods its calls so far all fit (a few names each)."""

    def damage(self, reason: str) -> None:
        for call in self.calls.values():
            call.attrs.setdefault("damaged", reason)
            call.reply_visible = False


# --- the decoder ----------------------------------------------------------------------------------
class CriStreamDecoder:
    """Feeds ``cri_accept``/``cri_data`` events, returns finished ``cri_call`` events.

    One instance per recording. Connections are keyed by ``conn_id``; a connection whose first
    event is ``cri_data`` (or whose data carries ``{"preexisting": true}``) began before the
    recording and is searched for a frame boundary first.

    ``cri_data`` attrs the decoder understands (all optional, keep in sync with the cri probe):
    ``preexisting`` (bool), ``gap`` (bool: bytes before this chunk were lost, how many is
    unknown), ``lost`` (int: exactly that many bytes before this chunk were lost) and
    ``truncated`` (bool: bytes after this chunk were lost).
    """

    def __init__(self) -> None:
        self._conns: dict[int, Connection] = {}
        self._out: list[Event] = []
        self.stats: dict[str, int] = {
            "bytes": 0,
            "frames": 0,
            "calls": 0,
            "resyncs": 0,
            "orphan_responses": 0,
            "internal_errors": 0,
        }

    def feed(self, event: Event) -> list[Event]:
        kind = event.get("kind")
        conn_id = event.get("conn_id")
        if not isinstance(conn_id, int):
            return []
        if kind == "cri_accept":
            old = self._conns.get(conn_id)
            if old is not None:
                self._close(old, "connection id reused")
            self._conns[conn_id] = Connection(conn_id, preexisting=False)
        elif kind == "cri_data":
            self._data(conn_id, event)
        out, self._out = self._out, []
        return out

    def finish(self) -> list[Event]:
        """Calls still open at the end of the recording, with ``{"incomplete": true}``."""
        for conn in self._conns.values():
            self._close(conn, None)
        self._conns.clear()
        out, self._out = self._out, []
        return out

    def _close(self, conn: Connection, reason: str | None) -> None:
        for call in conn.calls.values():
            call.attrs["incomplete"] = True
            if reason:
                call.attrs.setdefault("damaged", reason)
            try:
                self._out.append(self._event(conn, call, None))
            except Exception:  # the last resort of _data's guard must not raise either
                self.stats["internal_errors"] += 1
        conn.calls.clear()

    def _data(self, conn_id: int, event: Event) -> None:
        direction = event.get("direction")
        data = event.get("data")
        ts = event.get("ts_ns")
        if direction not in ("in", "out") or not isinstance(ts, int):
            return
        if not isinstance(data, bytes | bytearray | memoryview):
            return
        attrs = _attrs(event.get("attrs"))
        conn = self._conns.get(conn_id)
        if conn is None:
            conn = self._conns[conn_id] = Connection(conn_id, preexisting=True)
        half = conn.halves[direction]
        try:
            self._append(conn, half, data, ts, event, attrs)
            self._pump(conn, half, ts)
        except Exception as err:  # a bug must not stop the recorder: drop this connection
            self.stats["internal_errors"] += 1
            self._close(conn, f"decoder error: {type(err).__name__}: {err}")
            del self._conns[conn_id]
            return
        if half.pos:
            del half.buf[: half.pos]  # O(1) in CPython: bytearray drops a prefix in place
            half.base += half.pos
            half.pos = 0
            while len(half.chunks) > 1 and half.chunks[1][0] <= half.base:
                half.chunks.popleft()

    def _append(
        self,
        conn: Connection,
        half: Half,
        data: bytes | bytearray | memoryview,
        ts: int,
        event: Event,
        attrs: dict[str, Any],
    ) -> None:
        lost = attrs.get("lost")
        if isinstance(lost, int) and not isinstance(lost, bool) and lost > 0:
            self._lost(conn, half, lost)
        elif attrs.get("gap") is True:
            self._lost(conn, half, None)
        if data:
            self.stats["bytes"] += len(data)
            half.chunks.append((half.end, ts, event.get("pid"), event.get("tid")))
            half.buf += data
        if attrs.get("truncated") is True:
            self._lost(conn, half, None)

    @staticmethod
    def _lost(conn: Connection, half: Half, count: int | None) -> None:
        """Bytes missing at the end of the buffer: a known count becomes a zero-filled hole whose
        frames are parsed but flagged; an unknown count is a break the parser resyncs after."""
        if count is not None and count <= _MAX_KNOWN_HOLE:
            half.holes.append((half.end, half.end + count))
            half.buf += bytes(count)
        else:
            half.breaks.append(half.end)
        conn.damage("bytes lost")

    # -- frame parsing ---------------------------------------------------------------------------
    def _pump(self, conn: Connection, half: Half, ts: int) -> None:
        buf = half.buf
        while True:
            if half.breaks and half.base + half.pos >= half.breaks[0]:
                # Even on a frame boundary: what follows may be any byte of the stream, and the
                # lost bytes may have changed the dynamic table.
                resume = half.breaks.pop(0)
                if half.mode != _RESYNC_MODE:
                    self._desync(conn, half, "bytes lost", resume)
                continue
            if half.mode == _PREFACE_MODE:
                got = bytes(buf[half.pos : half.pos + len(PREFACE)])
                if got == PREFACE and not self._crosses(half, half.pos, len(PREFACE)):
                    half.pos += len(PREFACE)
                    half.mode = _FRAMES_MODE
                    continue
                if len(got) < len(PREFACE) and PREFACE.startswith(got):
                    return
                self._desync(conn, half, "no HTTP/2 client preface")
                continue
            if half.mode == _RESYNC_MODE:
                if not self._resync(half):
                    return
                continue
            if len(buf) - half.pos < 9:
                return
            p = half.pos
            length = int.from_bytes(buf[p : p + 3], "big")
            ftype = buf[p + 3]
            flags = buf[p + 4]
            stream_id = int.from_bytes(buf[p + 5 : p + 9], "big") & 0x7FFFFFFF
            start = half.base + p
            if self._crosses(half, p, 9):
                self._desync(conn, half, "bytes lost", half.breaks[0])
                continue
            hole_end = half.hole_end(start, start + 9)
            if hole_end is not None:
                self._desync(conn, half, "bytes lost", hole_end)
                continue
            problem = _frame_problem(ftype, flags, stream_id, length, half.max_frame)
            if problem is not None:
                self._desync(conn, half, f"{problem} at {half.direction} byte {start}")
                continue
            if self._crosses(half, p, 9 + length):
                self._desync(conn, half, "bytes lost", half.breaks[0])
                continue
            if len(buf) - p < 9 + length:
                return
            chunk = half.chunk_at(start)
            damaged = half.overlaps_hole(start + 9, start + 9 + length)
            half.pos = p + 9 + length
            self.stats["frames"] += 1
            self._frame(conn, half, ftype, flags, stream_id, p + 9, length, chunk, ts, damaged)
            if half.holes and half.holes[0][1] <= half.base + half.pos:
                half.holes = [h for h in half.holes if h[1] > half.base + half.pos]

    @staticmethod
    def _crosses(half: Half, p: int, length: int) -> bool:
        """Whether buf[p : p + length] runs over a break (bytes lost in unknown number)."""
        return bool(half.breaks) and half.base + p + length > half.breaks[0]

    def _desync(self, conn: Connection, half: Half, reason: str, resume: int | None = None) -> None:
        """Give up on the frame at ``half.pos`` and search for the next frame header from the
        absolute offset ``resume`` (default: the next byte)."""
        self.stats["resyncs"] += 1
        conn.damage(reason)
        half.block = None
        half.headers.forget()
        half.mode = _RESYNC_MODE
        half.synced_once = True
        half.pos = (resume - half.base) if resume is not None else half.pos + 1

    def _resync(self, half: Half) -> bool:
        """Search for a frame boundary from ``half.pos``; False when more bytes are needed.

        A boundary is a plausible frame header whose frame either ends exactly where the bytes
        received so far end (writes and reads usually carry whole frames) or is followed by
        another plausible header.
        """
        buf = half.buf
        limit = half.max_frame if half.max_frame != LARGEST_FRAME else DEFAULT_MAX_FRAME
        while True:
            p = half.pos
            while half.breaks and half.base + p >= half.breaks[0]:
                half.breaks.pop(0)
            if half.base + p == 0 and half.direction == "in":
                head = bytes(buf[: len(PREFACE)])
                if head == PREFACE:
                    half.pos = len(PREFACE)
                    half.mode = _FRAMES_MODE
                    half.max_frame = DEFAULT_MAX_FRAME
                    return True
                if len(head) < len(PREFACE) and PREFACE.startswith(head):
                    return False
            # A frame no longer than 16 KiB has 0 in its first byte: jump to the next zero.
            p = buf.find(0, p) if limit <= 0xFFFF else p
            if p < 0:
                half.pos = len(buf)
                return False
            half.pos = p
            if len(buf) - p < 9:
                return False
            end = _plausible_header(buf, p, limit)
            hole_end = half.hole_end(half.base + p, half.base + p + 9)
            if hole_end is not None:
                half.pos = hole_end - half.base
                continue
            if end is not None:
                stop = half.breaks[0] - half.base if half.breaks else len(buf)
                if end == stop:
                    return self._synced(half)
                if end + 9 <= stop:
                    if _plausible_header(buf, end, limit) is not None:
                        return self._synced(half)
                elif stop == len(buf):
                    return False  # wait for the rest of the frame and the next header
            half.pos = p + 1

    @staticmethod
    def _synced(half: Half) -> bool:
        if half.synced_once:
            half.headers.forget()
        half.synced_once = True
        half.mode = _FRAMES_MODE
        return True

    def _frame(
        self,
        conn: Connection,
        half: Half,
        ftype: int,
        flags: int,
        stream_id: int,
        p: int,
        length: int,
        chunk: Chunk,
        ts: int,
        damaged: bool,
    ) -> None:
        buf = half.buf
        if half.block is not None and ftype != CONTINUATION:
            half.block.damaged = True  # a header block must not be interleaved with other frames
            self._block_done(conn, half, ts)
        if ftype == DATA:
            call = conn.calls.get(stream_id)
            if call is None:
                return
            if half.direction == "out" and length:
                call.replied = True
            body = call.bodies.get(half.direction)
            if body is not None:
                if damaged:
                    body.error = "bytes lost"
                else:
                    start, stop = _unpad(buf, p, length, flags)
                    if start > stop:
                        body.error = "bad padding"
                    else:
                        body.add(buf[start:stop])
            if flags & FLAG_END_STREAM and half.direction == "out":
                call.attrs["no_trailers"] = True
                self._end(conn, call, ts)
        elif ftype in (HEADERS, PUSH_PROMISE):
            start, stop = _unpad(buf, p, length, flags)
            if ftype == HEADERS and flags & FLAG_PRIORITY:
                start += 5
            elif ftype == PUSH_PROMISE:
                start += 4
            block = HeaderBlock(
                stream_id, bool(flags & FLAG_END_STREAM), ftype == PUSH_PROMISE, chunk
            )
            block.damaged = damaged or start > stop
            if not block.damaged:
                block.fragments += buf[start:stop]
            half.block = block
            if flags & FLAG_END_HEADERS:
                self._block_done(conn, half, ts)
        elif ftype == CONTINUATION:
            pending = half.block
            if pending is None:
                return  # the rest of a block that began before the bytes we have
            too_long = len(pending.fragments) + length > _MAX_HEADER_BLOCK
            if pending.stream_id != stream_id or damaged or too_long:
                pending.damaged = True
            elif not pending.damaged:
                pending.fragments += buf[p : p + length]
            if flags & FLAG_END_HEADERS:
                self._block_done(conn, half, ts)
        elif ftype == RST_STREAM:
            call = conn.calls.get(stream_id)
            if call is not None and not damaged:
                code = int.from_bytes(buf[p : p + 4], "big")
                call.status = _RST_TO_GRPC.get(code, _RST_DEFAULT_GRPC)
                call.attrs["rst_stream"] = H2_ERROR_NAMES.get(code, str(code))
                call.attrs["reset_by"] = "client" if half.direction == "in" else "runtime"
                self._end(conn, call, ts)
        elif ftype == SETTINGS:
            if not flags & FLAG_ACK and not damaged:
                other = conn.halves["out" if half.direction == "in" else "in"]
                for i in range(p, p + length - 5, 6):
                    key = int.from_bytes(buf[i : i + 2], "big")
                    value = int.from_bytes(buf[i + 2 : i + 6], "big")
                    if key == SETTINGS_HEADER_TABLE_SIZE:
                        other.headers.allow_table_size(value)
                    elif key == SETTINGS_MAX_FRAME_SIZE and value >= DEFAULT_MAX_FRAME:
                        other.max_frame = min(value, LARGEST_FRAME)
        elif ftype == GOAWAY and half.direction == "out" and not damaged:
            last = int.from_bytes(buf[p : p + 4], "big") & 0x7FFFFFFF
            code = int.from_bytes(buf[p + 4 : p + 8], "big")
            for call in [c for sid, c in conn.calls.items() if sid > last]:
                call.status = "UNAVAILABLE"
                call.attrs["goaway"] = H2_ERROR_NAMES.get(code, str(code))
                self._end(conn, call, ts)
        # PRIORITY, PING, WINDOW_UPDATE and unknown types carry nothing about calls.

    def _block_done(self, conn: Connection, half: Half, ts: int) -> None:
        block = half.block
        assert block is not None
        half.block = None
        if block.damaged:
            half.headers.forget()
            headers: list[Header] = []
            resolved = False
        else:
            headers, resolved = half.headers.decode(bytes(block.fragments))
        if block.push:
            return
        if half.direction == "in":
            self._request_headers(conn, block, headers, resolved)
        else:
            self._response_headers(conn, block, headers, resolved, ts)

    def _request_headers(
        self, conn: Connection, block: HeaderBlock, headers: list[Header], resolved: bool
    ) -> None:
        if block.stream_id <= conn.last_client_stream or block.stream_id in conn.calls:
            return  # request trailers, or a stream that began before the recording
        conn.last_client_stream = block.stream_id
        call = Call(conn.conn_id, block.stream_id, block.ts, block.pid, block.tid)
        conn.calls[block.stream_id] = call
        self.stats["calls"] += 1
        call.reply_visible = conn.halves["out"].mode == _FRAMES_MODE
        call.hpack_unknown = not resolved
        guess: str | None = None
        unknown: list[str] = []
        for name, value, symbol in headers:
            if value is None:
                if name is None and symbol is not None:
                    unknown.append(symbol)
                continue
            if name == ":path" and call.method is None:
                call.set_method(value)
            elif name == "grpc-encoding":
                call.encoding["in"] = value
            elif name == "traceparent" or (name is None and TRACEPARENT.match(value)):
                call.attrs["traceparent"] = value
            elif name is None and value in METHODS:
                guess = value  # a literal whose name is an unknown table entry: a CRI path
        if call.method is None and guess is not None:
            call.set_method(guess)
        if (
            call.method is None
            and unknown
            and not block.damaged
            and len(unknown) == sum(1 for n, v, _ in headers if n is None and v is None)
        ):
            # Every unknown entry has an identity: the :path is one of them.
            call.keep_messages(",".join(unknown))
        if block.damaged:
            call.attrs.setdefault("damaged", "bytes lost")

    def _response_headers(
        self,
        conn: Connection,
        block: HeaderBlock,
        headers: list[Header],
        resolved: bool,
        ts: int,
    ) -> None:
        call = conn.calls.get(block.stream_id)
        if call is None:
            self.stats["orphan_responses"] += 1
            return
        call.hpack_unknown = call.hpack_unknown or not resolved
        unknown_value = False
        for name, value, _ in headers:
            if value is None:
                unknown_value = unknown_value or name in (None, "grpc-status")
                continue
            if name is None and block.end_stream:
                # A literal under a name from before the recording, in the trailers: grpc-go
                # servers send only grpc-status (a small number), grpc-message and the binary
                # grpc-status-details-bin there; content-type is recognisable by its value.
                if value.isdigit() and int(value) in GRPC_STATUS_NAMES:
                    name = "grpc-status"
                elif value.startswith(_GRPC_CONTENT_TYPE) or value.endswith("="):
                    continue
                elif not call.replied:
                    name = "grpc-message"
            if name == "grpc-status":
                code = int(value) if value.isdigit() else None
                call.status = GRPC_STATUS_NAMES.get(code, value) if code is not None else value
            elif name == "grpc-message" and value:
                call.attrs["grpc_message"] = unquote(value)
            elif name == "grpc-encoding":
                call.encoding["out"] = value
            elif name == ":status" and value != "200":
                call.attrs["http_status"] = value
        if block.damaged:
            call.attrs.setdefault("damaged", "bytes lost")
        if block.end_stream:
            call.status_unknown = call.status is None and unknown_value
            self._end(conn, call, ts)

    def _end(self, conn: Connection, call: Call, end_ns: int) -> None:
        conn.calls.pop(call.stream_id, None)
        self._out.append(self._event(conn, call, end_ns))

    def _event(self, conn: Connection, call: Call, end_ns: int | None) -> Event:
        """The call's event; an unnamed call is tried only against the methods that every
        earlier call of its key still allowed (a method must fit all of them)."""
        if call.key is None:
            return call.event(end_ns)
        within = conn.key_methods.get(call.key, shapes.ALL_METHODS)
        event = call.event(end_ns, within)
        found = call.attrs.get("unnamed", {}).get("candidates")
        if found:
            conn.key_methods[call.key] = tuple(found)
        return event


def _attrs(raw: Any) -> dict[str, Any]:
    """Live events may carry their attrs as a dict still; stored ones as JSON text."""
    return raw if isinstance(raw, dict) else attrs_of(raw)


def _unpad(buf: bytearray, p: int, length: int, flags: int) -> tuple[int, int]:
    """(start, stop) of a DATA/HEADERS/PUSH_PROMISE payload without its padding; start > stop
    when the padding is longer than the frame."""
    if not flags & FLAG_PADDED:
        return p, p + length
    if length < 1:
        return p + 1, p
    return p + 1, p + length - buf[p]


def _frame_problem(
    ftype: int, flags: int, stream_id: int, length: int, max_frame: int
) -> str | None:
    """Why a frame header cannot be right, or None. Unknown frame types are allowed (RFC 9113
    section 4.1: they are ignored)."""
    if length > max_frame:
        return f"frame of {length} bytes over the limit {max_frame}"
    if ftype in _STREAM_FRAMES and stream_id == 0:
        return f"frame type {ftype} on stream 0"
    if ftype in _CONNECTION_FRAMES and stream_id != 0:
        return f"frame type {ftype} on stream {stream_id}"
    fixed = _FIXED_LENGTH.get(ftype)
    if fixed is not None and length != fixed:
        return f"frame type {ftype} of {length} bytes"
    if ftype == SETTINGS and (length % 6 or (flags & FLAG_ACK and length)):
        return f"SETTINGS of {length} bytes"
    if ftype == GOAWAY and length < 8:
        return f"GOAWAY of {length} bytes"
    return None


def _plausible_header(buf: bytearray, p: int, limit: int) -> int | None:
    """Where the frame whose header is at ``buf[p]`` ends, if the header looks like one a gRPC
    peer would send (stricter than ``_frame_problem``); else None."""
    length = int.from_bytes(buf[p : p + 3], "big")
    ftype = buf[p + 3]
    flags = buf[p + 4]
    raw_stream = int.from_bytes(buf[p + 5 : p + 9], "big")
    allowed = _DEFINED_FLAGS.get(ftype)
    if allowed is None or flags & ~allowed or raw_stream & 0x80000000:
        return None
    if _frame_problem(ftype, flags, raw_stream, length, limit) is not None:
        return None
    if ftype in _STREAM_FRAMES and not raw_stream & 1:
        return None  # gRPC streams are opened by the client: odd ids
    return p + 9 + length


def decode_all(events: Iterable[Event]) -> list[Event]:
    """Every ``cri_call`` of a finished stream of events, open calls included."""
    decoder = CriStreamDecoder()
    calls: list[Event] = []
    for event in events:
        calls.extend(decoder.feed(event))
    calls.extend(decoder.finish())
    return calls
