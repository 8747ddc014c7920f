"""The ``analyze --json`` document (documented in docs/analyze.md)."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from typing import BinaryIO

import orjson

from startprof.analysis import without_cycle_collection
from startprof.analysis.model import Analysis, Pod

SCHEMA_VERSION = 1


def document(analysis: Analysis, pods: Sequence[Pod] | None = None) -> dict[str, object]:
    chosen = analysis.pods if pods is None else pods
    return {
        "schema_version": SCHEMA_VERSION,
        "recording": analysis.recording.to_dict(),
        "pods": [p.to_dict() for p in chosen],
        "summary": dict(analysis.summary),
    }


def dumps(analysis: Analysis, pods: Sequence[Pod] | None = None) -> str:
    """:func:`dumps_bytes` as text."""
    return dumps_bytes(analysis, pods).decode()


def dumps_bytes(analysis: Analysis, pods: Sequence[Pod] | None = None) -> bytes:
    """The document as one compact JSON text, UTF-8 (:func:`chunks` joined)."""
    return b"".join(chunks(analysis, pods))


def write(out: BinaryIO, analysis: Analysis, pods: Sequence[Pod] | None = None) -> None:
    """The document to ``out``, a pod at a time: at 10,000 pods the whole text is 320 MB and
    its dicts as many again, in fresh memory that this VM is slow to hand out
    (docs/analyze.md); one pod's are 32 KB."""
    for chunk in chunks(analysis, pods):
        out.write(chunk)


def chunks(analysis: Analysis, pods: Sequence[Pod] | None = None) -> Iterator[bytes]:
    """The bytes of the document in pieces, each pod's dicts made and dropped in turn: the
    same bytes as one ``orjson.dumps`` of :func:`document` (compact JSON, so a list's items
    joined by commas are the list).

    orjson writes it 7x faster than ``json.dumps`` (0.08 s against 0.56 s at 1,000 pods,
    docs/analyze.md), the same bytes for the stored recordings. Where the two differ, both are
    the same JSON values: non-ASCII text is UTF-8, not ``\\uXXXX``; an exponent has no
    leading zero (``1e-5``); and a NaN is ``null``, where ``json`` wrote ``NaN``, which is no
    JSON. A part orjson refuses (integers beyond 64 bits, non-string keys) goes through
    ``json``."""
    chosen = analysis.pods if pods is None else pods
    # the layout is document()'s, its pods left out and written in their place one by one
    for i, (key, value) in enumerate(document(analysis, ()).items()):
        yield (b"," if i else b"{") + _encode(key) + b":"
        if key != "pods":
            yield _encode(value)
            continue
        yield b"["
        with without_cycle_collection():
            for n, pod in enumerate(chosen):
                yield (b"," if n else b"") + _encode(pod.to_dict())
        yield b"]"
    yield b"}"


def _encode(value: object) -> bytes:
    try:
        return orjson.dumps(value)
    except TypeError:  # orjson.JSONEncodeError is a TypeError
        return json.dumps(value, separators=(",", ":")).encode()
