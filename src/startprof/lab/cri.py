"""CRI ``runtime.v1`` calls over gRPC on a containerd socket."""

from __future__ import annotations

import grpc

from startprof.errors import CriError

VERSION_METHOD = "/runtime.v1.RuntimeService/Version"


def _string_fields(message: bytes) -> dict[int, str]:
    """Length-delimited fields of a flat protobuf message (enough for VersionResponse)."""
    fields: dict[int, str] = {}
    i = 0
    while i < len(message):
        key, i = _varint(message, i)
        number, wire = key >> 3, key & 7
        if wire == 0:
            _, i = _varint(message, i)
        elif wire == 2:
            size, i = _varint(message, i)
            fields[number] = message[i : i + size].decode("utf-8", "replace")
            i += size
        else:
            break
    return fields


def _varint(data: bytes, i: int) -> tuple[int, int]:
    value = shift = 0
    while i < len(data):
        b = data[i]
        i += 1
        value |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            break
    return value, i


def cri_version(socket_path: str, timeout: float = 3.0) -> str:
    """``runtime_name runtime_version (CRI runtime_api_version)`` of the runtime behind a socket."""
    with grpc.insecure_channel(f"unix://{socket_path}") as channel:
        call = channel.unary_unary(VERSION_METHOD)
        try:
            reply: bytes = call(b"", timeout=timeout)
        except grpc.RpcError as exc:
            raise CriError(f"CRI Version on {socket_path} failed: {exc.code().name}") from exc
    f = _string_fields(reply)
    return f"{f.get(2, '?')} {f.get(3, '?')} (CRI {f.get(4, '?')})"
