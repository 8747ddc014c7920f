"""The image probe (``bpf/image.bpf.c``): an image pull as containerd's own file work.

containerd fetches every blob of an image (manifest, config, each layer) into a content-store
ingest file and renames it to ``blobs/sha256/<digest>`` when it is complete; it unpacks a layer
by reading that blob while it creates files under a snapshot. The probe sees those files of the
containerd processes on the CRI socket only, under path prefixes taken from containerd's root
(``prefixes``). ``analysis/image_steps.py`` turns the records into a pull's steps.

Kinds (docs/probes/image.md):
- ``img_ingest``: an ingest file closed. ``filename`` = the ingest dir (64 hex), ``start_ns`` =
  its open, ``end_ns`` = its close, ``ret`` = bytes written; attrs ``writes``, ``media``
  (manifest, config or layer, from the first bytes; the bytes themselves are never kept) and
  ``at``: moments as ns after ``start_ns`` (``first``/``last`` write). Moments are relative so
  that attrs need no clock of their own: the analysis moves the time columns to wall time.
- ``img_commit``: the ingest renamed to its blob. ``filename`` = ``sha256:<digest>``, attrs
  ``ingest``; ``start_ns``..``end_ns`` = the rename; the registry response of that digest:
  ``net_bytes`` (headers included) and ``at.req`` (the request written), ``at.net_first`` /
  ``at.net_last`` (its first and last bytes read), after ``start_ns`` (negative).
- ``img_blob``: a blob read closed. ``filename`` = the digest, ``start_ns`` = its open; when it was
  a layer being unpacked, ``ret`` = bytes of the files made, attrs ``files``, ``writes``,
  ``snapshot``, ``at.first``/``at.last`` (first file made, last write).
- ``img_unpack``: files made in a snapshot, sent when another snapshot began (two unpacks at
  once in one containerd): the same attrs, no digest.
"""

from __future__ import annotations

import json
import os
import tomllib
from pathlib import Path
from typing import Final

from startprof.events import Event
from startprof.probes.abi import (
    SP_IMG_BLOB,
    SP_IMG_COMMIT,
    SP_IMG_INGEST,
    SP_IMG_K_BLOB,
    SP_IMG_K_INGEST,
    SP_IMG_K_SNAP,
    SP_IMG_KEY,
    SP_IMG_PREFIX,
    SP_IMG_PREFIXES,
    SP_IMG_UNPACK,
    Decoder,
    Img,
    RecordType,
    base_event,
    cstr,
)
from startprof.procfs import argv_text

NAME: Final = "image"

DEFAULT_ROOT: Final = "/var/lib/containerd"
DEFAULT_CONFIG: Final = "/etc/containerd/config.toml"
CONTENT: Final = "io.containerd.content.v1.content"
SNAPSHOTTER: Final = "io.containerd.snapshotter.v1."
DEFAULT_SNAPSHOTTERS: Final = ("overlayfs", "native")

_OPS: Final[dict[int, str]] = {
    SP_IMG_INGEST: "img_ingest",
    SP_IMG_COMMIT: "img_commit",
    SP_IMG_BLOB: "img_blob",
    SP_IMG_UNPACK: "img_unpack",
}

_MANIFEST_KEYS: Final = (
    b'"schemaVersion"',
    b'"mediaType"',
    b'"manifests"',
    b'"config":{"mediaType"',
    b'"config":{"digest"',
    b'"config":{"size"',
    b'"layers"',
)


def media_of(head: bytes) -> str:
    """What a fetched blob is, from its first bytes: ``manifest`` (or index), ``config``
    (other JSON) or ``layer`` (gzip, zstd, or anything else)."""
    text = head.lstrip()
    if not text.startswith(b"{"):
        return "layer"
    body = text[1:].lstrip()
    if any(body.startswith(k) for k in _MANIFEST_KEYS):
        return "manifest"
    return "config"


def _digest(key: bytes) -> str:
    return f"sha256:{cstr(key)}"


def decode(raw: bytes) -> list[Event]:
    r = Img.from_buffer_copy(raw)
    kind = _OPS.get(r.op)
    if kind is None:
        raise ValueError(f"unknown image op {r.op}")
    ev = base_event(kind, r.h)
    ev["start_ns"] = r.start_ns
    ev["end_ns"] = r.h.ts_ns
    attrs: dict[str, object] = {}
    at: dict[str, int] = {}  # moments, as ns after start_ns: attrs hold no clock of their own

    def moment(name: str, ns: int) -> None:
        if ns:
            at[name] = ns - r.start_ns

    if r.op == SP_IMG_COMMIT:
        ev["filename"] = _digest(r.key)
        attrs["ingest"] = cstr(r.key2)
        if r.req_ns:
            moment("req", r.req_ns)
            moment("net_first", r.net_first_ns)
            moment("net_last", r.net_last_ns)
            attrs["net_bytes"] = r.net_bytes
    else:
        ev["fd"] = r.fd
        ev["ret"] = r.bytes
        if r.op == SP_IMG_INGEST:
            ev["filename"] = cstr(r.key)
            attrs["media"] = media_of(bytes(r.head)) if r.writes else "empty"
        elif r.op == SP_IMG_BLOB:
            ev["filename"] = _digest(r.key)
        if r.op == SP_IMG_UNPACK or r.files:
            attrs["files"] = r.files
            attrs["snapshot"] = cstr(r.key2)
        if r.writes or r.files:
            moment("first", r.first_ns)
            moment("last", r.last_ns)
            attrs["writes"] = r.writes
    if at:
        attrs["at"] = at
    ev["attrs"] = json.dumps(attrs, sort_keys=True)
    return [ev]


DECODERS: Final[dict[RecordType, Decoder]] = {RecordType.IMG: decode}


# ---- where containerd keeps its content and snapshots ----


def _flag(args: list[str], *names: str) -> str | None:
    """The value of ``--name value`` or ``--name=value`` (last one wins), as urfave/cli reads."""
    found = None
    for i, arg in enumerate(args):
        for name in names:
            if arg == name and i + 1 < len(args):
                found = args[i + 1]
            elif arg.startswith(name + "="):
                found = arg[len(name) + 1 :]
    return found


def containerd_root(pid: int, proc: str = "/proc") -> str:
    """containerd's ``root`` as the process spells it: ``--root``, else its config file's
    ``root`` (``--config``/``-c``, default /etc/containerd/config.toml, read inside the
    process's own mount namespace), else /var/lib/containerd."""
    args = argv_text(pid, proc)
    root = _flag(args, "--root", "-root")
    if root is None:
        config = _flag(args, "--config", "-config", "-c") or DEFAULT_CONFIG
        try:
            text = Path(f"{proc}/{pid}/root{os.path.abspath(config)}").read_text()
            value = tomllib.loads(text).get("root")
            root = value if isinstance(value, str) and value else None
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
            root = None
    return os.path.normpath(root or DEFAULT_ROOT)


def prefixes(root: str, pid: int | None = None, proc: str = "/proc") -> list[tuple[str, int]]:
    """The path prefixes the probe watches, with their kinds: the content store's ingest and
    blobs, each snapshotter's ``snapshots/`` (those present under root, overlayfs and native
    first; else those two) and ``tmpmounts/`` (where containerd mounts a first layer to write
    it). Prefixes too long for the probe are left out (their files are then not seen)."""
    base = f"{proc}/{pid}/root{root}" if pid is not None else root
    try:
        found = {n[len(SNAPSHOTTER) :] for n in os.listdir(base) if n.startswith(SNAPSHOTTER)}
    except OSError:
        found = set()
    # the defaults first: with more snapshotter dirs than the probe has room for, theirs stay
    names = [n for n in DEFAULT_SNAPSHOTTERS if n in found] + sorted(
        found - {*DEFAULT_SNAPSHOTTERS}
    )
    out = [
        (f"{root}/{CONTENT}/ingest/", SP_IMG_K_INGEST),
        (f"{root}/{CONTENT}/blobs/sha256/", SP_IMG_K_BLOB),
        (f"{root}/tmpmounts/", SP_IMG_K_SNAP),
        *(
            (f"{root}/{SNAPSHOTTER}{n}/snapshots/", SP_IMG_K_SNAP)
            for n in names or DEFAULT_SNAPSHOTTERS
        ),
    ]
    room = min(SP_IMG_PREFIX, 256 - SP_IMG_KEY - 8)
    return [(p, k) for p, k in out if len(p.encode()) <= room][:SP_IMG_PREFIXES]
