"""Which CRI methods a pair of gRPC messages could belong to, from their bytes alone.

On a connection older than the recording, a call's ``:path`` is an HPACK table entry nobody saw
being added, so the method must be recovered from evidence (docs/cri-decoding.md). The first
evidence is the messages' shape: a protobuf message parses as almost any type (unknown fields are
kept), so *fitting* here is much stricter than parsing. A message fits a type when a real encoder
of that type could have written exactly these bytes:

- every field number is one the type declares, with the wire type its field type uses;
- a singular field occurs at most once, and a singular scalar without presence never carries its
  default value (proto3 encoders skip those; map entries are exempt, Go writes both key and value);
- strings are UTF-8 without control characters other than tab, newline and carriage return, and
  id fields (``id``, ``*_id``) have no whitespace at all;
- enum values are declared ones; bools are 0 or 1;
- nested messages fit their types, recursively.

Nothing here keeps the bytes: callers get method names and the allow-listed fields of
``startprof.cri.api`` for each method that fits, so unnamed calls hold no secrets and no memory.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Final

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from startprof.cri.api import (
    EMPTY_REQUESTS,
    METHODS,
    NON_EMPTY_REPLIES,
    REQUEST_FIELDS,
    RESPONSE_FIELDS,
    STREAMING,
    method_names,
    path_of,
)

_F = FieldDescriptor
_VARINT_TYPES: Final = frozenset(
    {
        _F.TYPE_INT32,
        _F.TYPE_INT64,
        _F.TYPE_UINT32,
        _F.TYPE_UINT64,
        _F.TYPE_SINT32,
        _F.TYPE_SINT64,
        _F.TYPE_BOOL,
        _F.TYPE_ENUM,
    }
)
_FIXED64_TYPES: Final = frozenset({_F.TYPE_FIXED64, _F.TYPE_SFIXED64, _F.TYPE_DOUBLE})
_FIXED32_TYPES: Final = frozenset({_F.TYPE_FIXED32, _F.TYPE_SFIXED32, _F.TYPE_FLOAT})
_MAX_DEPTH: Final = 32
# C0 controls a text field never holds (tab, newline and carriage return are fine: annotations
# carry JSON). Bytes of a nested message read as a string almost always contain one: tags of
# fields 2-3 and most lengths are below 0x20.
_BAD_TEXT: Final = frozenset(range(0x20)) - {0x09, 0x0A, 0x0D}
_BAD_ID: Final = frozenset(range(0x21)) | {0x7F}


class _Misfit(Exception):
    """The bytes cannot have been written as this type."""


def _varint(data: bytes, i: int, end: int) -> tuple[int, int]:
    value = 0
    shift = 0
    while True:
        if i >= end or shift > 63:
            raise _Misfit
        b = data[i]
        i += 1
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value, i
        shift += 7


def _check_text(raw: bytes, is_id: bool) -> None:
    bad = _BAD_ID if is_id else _BAD_TEXT
    if not bad.isdisjoint(raw):
        raise _Misfit
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        raise _Misfit from None


def _check(data: bytes, start: int, end: int, desc: Descriptor, depth: int) -> int:
    """Raise _Misfit, or return how many bytes only fit as opaque ``bytes`` fields."""
    if depth > _MAX_DEPTH:
        raise _Misfit
    by_number = desc.fields_by_number
    in_map_entry = desc.GetOptions().map_entry
    seen: set[int] = set()
    opaque = 0
    i = start
    while i < end:
        key, i = _varint(data, i, end)
        number, wire = key >> 3, key & 7
        field = by_number.get(number)
        if field is None:
            raise _Misfit
        repeated = field.is_repeated
        if not repeated:
            if number in seen:
                raise _Misfit
            seen.add(number)
        ftype = field.type
        implicit = not repeated and not field.has_presence and not in_map_entry
        if wire == 0:
            if ftype not in _VARINT_TYPES:
                raise _Misfit
            value, i = _varint(data, i, end)
            if implicit and value == 0:
                raise _Misfit
            if ftype == _F.TYPE_BOOL and value > 1:
                raise _Misfit
            if ftype == _F.TYPE_ENUM:
                signed = value - (1 << 64) if value >= 1 << 63 else value
                enum = field.enum_type
                if enum is None or enum.values_by_number.get(signed) is None:
                    raise _Misfit
        elif wire == 1 or wire == 5:
            if ftype not in (_FIXED64_TYPES if wire == 1 else _FIXED32_TYPES):
                raise _Misfit
            i += 8 if wire == 1 else 4
            if i > end:
                raise _Misfit
        elif wire == 2:
            length, i = _varint(data, i, end)
            stop = i + length
            if stop > end:
                raise _Misfit
            if ftype == _F.TYPE_MESSAGE:
                if field.message_type is None:
                    raise _Misfit
                opaque += _check(data, i, stop, field.message_type, depth + 1)
            elif ftype == _F.TYPE_STRING:
                if implicit and length == 0:
                    raise _Misfit
                _check_text(data[i:stop], field.name == "id" or field.name.endswith("_id"))
            elif ftype == _F.TYPE_BYTES:
                if implicit and length == 0:
                    raise _Misfit
                opaque += length
            elif repeated and ftype in _VARINT_TYPES:
                j = i
                while j < stop:
                    _, j = _varint(data, j, stop)
            elif repeated and (ftype in _FIXED64_TYPES or ftype in _FIXED32_TYPES):
                if length % (8 if ftype in _FIXED64_TYPES else 4):
                    raise _Misfit
            else:
                raise _Misfit
            i = stop
        else:
            raise _Misfit  # groups (3, 4) are proto2 only; 6 and 7 do not exist
    return opaque


def fit(data: bytes, desc: Any) -> int | None:
    """None when no encoder of ``desc`` could have written exactly ``data`` (see the module
    doc); else how many of its bytes fit only as opaque ``bytes`` fields (0: all structure)."""
    try:
        return _check(data, 0, len(data), desc, 0)
    except _Misfit:
        return None


ALL_METHODS: Final = tuple(m for m in method_names() if path_of(m) not in STREAMING)
"""Unary methods: CRI's streaming ones are never a pod start's and have no single reply."""


def candidates(
    request: bytes | None,
    reply: bytes | None,
    within: Iterable[str] = ALL_METHODS,
) -> list[str]:
    """Method names (``StartContainer``) whose request and reply types these messages fit.

    ``None`` means that message is not known (lost, too large, or a failed call's missing reply)
    and constrains nothing. ``within`` narrows the methods tried (what earlier calls of the same
    HPACK symbol still allow).

    Where several types fit, those that read fewer bytes as opaque ``bytes`` win: a
    ContainerStatus reply is also a valid ExecSync reply (its ``stdout`` takes any bytes), but
    bytes that parse strictly as a deep ContainerStatus are not a command's output."""
    fitted: list[tuple[int, str]] = []
    for name in within:
        request_cls, reply_cls = METHODS[path_of(name)]
        opaque = 0
        for data, cls, is_reply in ((request, request_cls, False), (reply, reply_cls, True)):
            if data is None:
                continue
            empty_impossible = name in NON_EMPTY_REPLIES if is_reply else name not in EMPTY_REQUESTS
            if not data and empty_impossible:
                break
            bytes_only = fit(data, cls.DESCRIPTOR)
            if bytes_only is None:
                break
            opaque += bytes_only
        else:
            fitted.append((opaque, name))
    least = min((o for o, _ in fitted), default=0)
    return [name for opaque, name in fitted if opaque == least]


def _field(message: Message, path: str) -> str | None:
    value: Any = message
    for part in path.split("."):
        value = getattr(value, part, None)
        if value is None:
            return None
    return value if isinstance(value, str) and value else None


def kept_fields(name: str, request: Message | None, reply: Message | None) -> dict[str, str]:
    """The allow-listed fields of a call of method ``name``: ``{"pod": ..., "attrs.image": ...}``
    (targets as in ``startprof.cri.api.REQUEST_FIELDS``)."""
    out: dict[str, str] = {}
    for message, table in ((request, REQUEST_FIELDS), (reply, RESPONSE_FIELDS)):
        if message is None:
            continue
        for target, path in table.get(name, ()):
            value = _field(message, path)
            if value is not None:
                out.setdefault(target, value)
    return out


_ID_FIELDS: Final = (("pod_sandbox_id", "sandbox_id"), ("container_id", "container_id"))


def parse(name: str, request: bytes | None, reply: bytes | None) -> dict[str, str]:
    """``kept_fields`` of these messages read as method ``name``, plus the sandbox or container
    id any request names (the evidence that tells a StartContainer from a StopPodSandbox);
    {} when they do not parse."""
    request_cls, reply_cls = METHODS[path_of(name)]
    parsed: list[Message | None] = []
    for data, cls in ((request, request_cls), (reply, reply_cls)):
        if data is None:
            parsed.append(None)
            continue
        try:
            parsed.append(cls.FromString(data))
        except Exception:  # DecodeError, or RuntimeError on deep nesting
            parsed.append(None)
    fields = kept_fields(name, parsed[0], parsed[1])
    for attribute, target in _ID_FIELDS:
        value = getattr(parsed[0], attribute, None)
        if isinstance(value, str) and value:
            fields.setdefault(target, value)
    return fields
