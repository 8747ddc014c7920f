"""The steps inside an image pull (the phase tree: docs/architecture.md), from the image probe.

containerd fetches every blob of an image into a content-store ingest file and renames it to
its digest when it is complete; it unpacks a layer by reading that blob while it makes files
in a snapshot. A PullImage call's ``image`` phase gets, in time order:

- ``image.resolve``: from the call's start to the first blob's ingest (the tag resolved to a
  manifest digest: a HEAD or GET of the manifest by tag);
- ``image.manifest <d12>``, ``image.config <d12>``, ``image.fetch <d12>`` (a layer): a blob's
  fetch, from containerd's request to the registry to the last byte of the response it read
  (``bytes`` of the blob, ``mb_per_s`` while the response arrived, ``first_byte_ms``,
  ``write_lag_ms`` from the last byte read to the last written to the content store,
  ``commit_ms`` from there to the rename, ``digest``, ``timed_by: socket``). Without the
  registry connection's reads (``sock:sock_recv_length`` missing) a fetch runs from the
  ingest's open to its last write (``timed_by: ingest``). Fetches of up to three blobs at once
  overlap;
- ``image.unpack <d12>``: a layer's unpack, from the open of its blob to its close (``files``
  made, ``bytes`` written to them, ``snapshot``).

``<d12>`` is the first 12 hex digits of the blob's digest (an uncommitted ingest, a fetch cut
short, is named by its ingest dir and carries ``committed: false``). Which blob is the manifest
or the config is told from its first bytes (JSON with a manifest's keys, other JSON); the probe
keeps only that verdict.

Records are matched to a pull by time: each belongs to the one PullImage call of its
containerd that was under way when it began. Records that fall in two pulls at once (the
kubelet's parallel pulls, ``serializeImagePulls: false``) are left out rather than guessed.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Sequence
from typing import Any, Final, NamedTuple

from startprof.analysis.runtime_steps import Step

IMAGE_KINDS: Final = ("img_ingest", "img_commit", "img_blob", "img_unpack")
"""The image probe's event kinds the steps are cut from."""

_NAMES: Final = {"manifest": "image.manifest", "config": "image.config"}


class ImgOp(NamedTuple):
    """One image-probe event."""

    kind: str
    key: str
    """img_ingest: the ingest dir; img_commit and img_blob: the digest; img_unpack: ''."""
    start_ns: int
    end_ns: int
    bytes: int
    attrs: dict[str, Any]


def assign(pulls: Sequence[tuple[int, int]], ops: Iterable[ImgOp]) -> dict[int, list[ImgOp]]:
    """Each op to the one pull window ``(start, end)`` holding its start, keyed by the window's
    start; an op in no window or in several is left out. ``pulls`` sorted by start. The windows
    holding a moment are those begun by then less those over before it: two bisections per op,
    not a scan of every pull (a long recording of a node holds thousands)."""
    starts = [lo for lo, _ in pulls]
    ends = sorted(hi for _, hi in pulls)
    out: dict[int, list[ImgOp]] = {}
    for op in ops:
        t = op.start_ns
        begun = bisect_right(starts, t)
        if begun - bisect_left(ends, t) != 1:
            continue
        i = begun - 1
        while pulls[i][1] < t:  # the one still open: usually the latest begun
            i -= 1
        out.setdefault(pulls[i][0], []).append(op)
    return out


def _short(key: str) -> str:
    return key.removeprefix("sha256:")[:12]


def _ms(ns: int) -> float:
    return round(ns / 1e6, 3)


def _fetch(op: ImgOp, commit: ImgOp | None) -> Step:
    """One blob's fetch: from its request to the last byte containerd read of the response (or,
    without the registry connection's reads, from the ingest's open to its last write)."""

    def moment(of: ImgOp | None, name: str, default: int) -> int:
        at = of.attrs.get("at") if of is not None else None
        value = at.get(name) if isinstance(at, dict) else None
        return of.start_ns + value if of is not None and isinstance(value, int) else default

    last_write = moment(op, "last", op.end_ns)
    net_last = moment(commit, "net_last", 0)
    if net_last:
        begin, end = moment(commit, "req", op.start_ns), net_last
        first = moment(commit, "net_first", begin)
        source = "socket"
    else:
        begin, end = op.start_ns, last_write
        first = moment(op, "first", begin)
        source = "ingest"
    transfer = end - first
    digest = commit.key if commit is not None else None
    attributes: dict[str, Any] = {
        "digest": digest,
        "bytes": op.bytes,
        "mb_per_s": round(op.bytes / transfer * 1e3, 1) if transfer > 0 else None,
        "first_byte_ms": _ms(first - begin),
        "write_lag_ms": _ms(last_write - end) if source == "socket" else None,
        "commit_ms": _ms(commit.end_ns - last_write) if commit is not None else None,
        "committed": None if commit is not None else False,
        "timed_by": source,
    }
    name = _NAMES.get(str(op.attrs.get("media")), "image.fetch")
    return Step(f"{name} {_short(digest or op.key)}", begin, max(end, begin), attributes)


def pull_steps(start: int, end: int, ops: Sequence[ImgOp]) -> list[Step]:
    """The steps of one pull from ``start`` to ``end`` (the call) and its ops."""
    commits = {op.attrs.get("ingest"): op for op in ops if op.kind == "img_commit"}
    steps: list[Step] = []
    fetches = sorted(
        (_fetch(op, commits.get(op.key)) for op in ops if op.kind == "img_ingest"),
        key=lambda s: s.start_ns,
    )
    if fetches and fetches[0].start_ns > start:
        steps.append(Step("image.resolve", start, fetches[0].start_ns))
    steps += fetches
    for op in ops:
        if op.kind not in ("img_blob", "img_unpack") or not op.attrs.get("files"):
            continue
        name = f"image.unpack {_short(op.key)}" if op.key else "image.unpack"
        attributes = {
            "digest": op.key or None,
            "files": op.attrs.get("files"),
            "bytes": op.bytes,
            "writes": op.attrs.get("writes"),
            "snapshot": op.attrs.get("snapshot"),
        }
        steps.append(Step(name, op.start_ns, op.end_ns, attributes))
    steps.sort(key=lambda s: (s.start_ns, s.end_ns))
    return [s for s in steps if s.end_ns >= s.start_ns and s.start_ns <= end]
