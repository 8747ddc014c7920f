"""A pull's steps (issue 17, part 3): the image probe's records, where it looks, and the steps
cut from them; on a real 3-layer pull recorded on the lab (tests/data/recordings/pull-layers,
with the registry's own log of every blob it served)."""

from __future__ import annotations

import json
import math
from functools import cache
from pathlib import Path

import pytest

from startprof.analysis.critical_path import bottleneck
from startprof.analysis.image_steps import ImgOp, assign, pull_steps
from startprof.analysis.model import Analysis, Phase
from startprof.lab.registry import read_served
from startprof.pipeline import analyze_files
from startprof.probes import image
from startprof.probes.abi import (
    SP_IMG_BLOB,
    SP_IMG_COMMIT,
    SP_IMG_INGEST,
    SP_IMG_K_BLOB,
    SP_IMG_K_INGEST,
    SP_IMG_K_SNAP,
    SP_IMG_UNPACK,
    Header,
    Img,
    RecordType,
)
from startprof.recording import read_recording

DATA = Path(__file__).parent.parent / "data" / "recordings"
MS = 1_000_000
HEX = "ab" * 32


def _img(op: int, **fields: object) -> Img:
    r = Img(Header(RecordType.IMG, 0, 10_000, 42, 43, 7, b"containerd"))
    r.op = op
    for name, value in fields.items():
        setattr(r, name, value)
    return r


def _decode(r: Img) -> dict[str, object]:
    (ev,) = image.decode(bytes(r))
    return ev


def test_an_ingest_keeps_its_writes_and_what_its_first_bytes_were_but_not_the_bytes() -> None:
    head = b'{"schemaVersion":2,"mediaType":"'[:32]
    r = _img(SP_IMG_INGEST, start_ns=1_000, first_ns=1_500, last_ns=2_000, bytes=719, writes=1)
    r.key, r.fd = HEX.encode(), 26
    r.head[:] = list(head)
    ev = _decode(r)
    assert ev["kind"] == "img_ingest" and ev["filename"] == HEX and ev["ret"] == 719
    assert (ev["start_ns"], ev["end_ns"], ev["fd"]) == (1_000, 10_000, 26)
    attrs = json.loads(str(ev["attrs"]))
    assert attrs == {"media": "manifest", "writes": 1, "at": {"first": 500, "last": 1_000}}
    assert "schemaVersion" not in str(ev)  # the verdict, never the bytes


def test_a_commit_carries_its_registry_response_as_moments_before_it() -> None:
    r = _img(SP_IMG_COMMIT, start_ns=9_000, req_ns=1_000, net_first_ns=1_200, net_last_ns=8_000)
    r.key, r.key2, r.net_bytes, r.fd = HEX.encode(), b"cd" * 32, 1033, -1
    ev = _decode(r)
    assert ev["kind"] == "img_commit" and ev["filename"] == f"sha256:{HEX}"
    attrs = json.loads(str(ev["attrs"]))
    assert attrs["ingest"] == "cd" * 32 and attrs["net_bytes"] == 1033
    assert attrs["at"] == {"req": -8_000, "net_first": -7_800, "net_last": -1_000}


def test_a_layer_blob_read_carries_its_unpack_and_a_plain_read_nothing() -> None:
    r = _img(SP_IMG_BLOB, start_ns=1_000, first_ns=2_000, last_ns=9_000, bytes=4096, files=201)
    r.key, r.key2, r.writes = HEX.encode(), b"12641", 216
    attrs = json.loads(str(_decode(r)["attrs"]))
    assert attrs == {
        "files": 201,
        "snapshot": "12641",
        "writes": 216,
        "at": {"first": 1_000, "last": 8_000},
    }
    plain = _img(SP_IMG_BLOB, start_ns=1_000)
    plain.key = HEX.encode()
    assert json.loads(str(_decode(plain)["attrs"])) == {}
    unpack = _img(SP_IMG_UNPACK, start_ns=5, first_ns=5, last_ns=7, files=3, writes=3)
    unpack.key2 = b"containerd-mount1"
    ev = _decode(unpack)
    assert ev["kind"] == "img_unpack" and "filename" not in ev


@pytest.mark.parametrize(
    ("head", "media"),
    [
        (b"\x1f\x8b\x08\x00\x00\x00", "layer"),
        (b"\x28\xb5\x2f\xfd", "layer"),
        (b"etc/\x00\x00\x00", "layer"),
        (b'{"schemaVersion":2,"mediaType":', "manifest"),
        (b'{\n   "schemaVersion": 2,\n   "med', "manifest"),
        (b'{"config":{"mediaType":"applica', "manifest"),
        (b'{"manifests":[{"digest":"sha256', "manifest"),
        (b'{"architecture":"amd64","config', "config"),
        (b'{"created":"2024-01-01T00:00:00', "config"),
    ],
)
def test_a_blob_is_told_by_its_first_bytes(head: bytes, media: str) -> None:
    assert image.media_of(head) == media


def _fake_proc(tmp_path: Path, argv: list[str], config: str | None) -> Path:
    proc = tmp_path / "proc"
    (proc / "7").mkdir(parents=True)
    (proc / "7" / "cmdline").write_bytes(b"\0".join(a.encode() for a in argv) + b"\0")
    root = proc / "7" / "root"
    if config is not None:
        (root / "etc" / "containerd").mkdir(parents=True)
        (root / "etc" / "containerd" / "config.toml").write_text(config)
    return proc


def test_containerd_root_from_its_flag_its_config_or_the_default(tmp_path: Path) -> None:
    proc = _fake_proc(tmp_path, ["containerd", "--root", "/x/y/"], None)
    assert image.containerd_root(7, str(proc)) == "/x/y"
    proc = _fake_proc(tmp_path / "b", ["containerd"], 'version = 2\nroot = "/data/ctd"\n')
    assert image.containerd_root(7, str(proc)) == "/data/ctd"
    proc = _fake_proc(tmp_path / "c", ["containerd"], "version = 3\n")
    assert image.containerd_root(7, str(proc)) == "/var/lib/containerd"
    proc = _fake_proc(tmp_path / "d", ["containerd"], "not toml [")
    assert image.containerd_root(7, str(proc)) == "/var/lib/containerd"


def test_prefixes_watch_the_content_store_and_each_snapshotter_present(tmp_path: Path) -> None:
    root = tmp_path / "r"
    for name in ("io.containerd.snapshotter.v1.overlayfs", "io.containerd.snapshotter.v1.native"):
        (root / name).mkdir(parents=True)
    found = dict(image.prefixes(str(root)))
    assert found[f"{root}/io.containerd.content.v1.content/ingest/"] == SP_IMG_K_INGEST
    assert found[f"{root}/io.containerd.content.v1.content/blobs/sha256/"] == SP_IMG_K_BLOB
    assert found[f"{root}/tmpmounts/"] == SP_IMG_K_SNAP
    assert found[f"{root}/io.containerd.snapshotter.v1.native/snapshots/"] == SP_IMG_K_SNAP
    assert len(found) == 5
    assert image.prefixes("/" + "x" * 200) == []  # too long for the probe: nothing watched
    for name in ("aufs", "blockfile", "btrfs", "devmapper", "erofs", "zfs"):
        (root / f"io.containerd.snapshotter.v1.{name}").mkdir()
    crowded = [p for p, _ in image.prefixes(str(root))]
    assert len(crowded) == 8  # the probe's room
    assert f"{root}/io.containerd.snapshotter.v1.overlayfs/snapshots/" in crowded


def _op(kind: str, key: str, start: int, end: int, size: int = 0, **attrs: object) -> ImgOp:
    return ImgOp(kind, key, start, end, size, dict(attrs))


def test_steps_of_a_pull_from_its_records() -> None:
    layer = "sha256:" + "1" * 64
    ops = [
        _op(
            "img_ingest",
            "i1",
            100,
            300,
            2000,
            media="layer",
            writes=2,
            at={"first": 50, "last": 150},
        ),
        _op(
            "img_commit",
            layer,
            310,
            320,
            ingest="i1",
            at={"req": -200, "net_first": -180, "net_last": -20},
        ),
        _op(
            "img_blob",
            layer,
            400,
            900,
            5000,
            files=3,
            writes=4,
            snapshot="9",
            at={"first": 10, "last": 400},
        ),
        _op(
            "img_ingest", "i2", 120, 200, 10, media="config", writes=1, at={"first": 60, "last": 60}
        ),
    ]
    steps = {s.name: s for s in pull_steps(0, 1_000, ops)}
    assert list(steps) == [
        "image.resolve",
        "image.fetch 111111111111",
        "image.config i2",
        "image.unpack 111111111111",
    ]
    fetch = steps["image.fetch 111111111111"]
    assert (fetch.start_ns, fetch.end_ns) == (110, 290)  # the request .. the last byte read
    assert fetch.attributes["timed_by"] == "socket" and fetch.attributes["bytes"] == 2000
    assert fetch.attributes["digest"] == layer and fetch.attributes["first_byte_ms"] == 0.0
    config = steps["image.config i2"]  # never committed: its ingest's open .. last write
    assert (config.start_ns, config.end_ns, config.attributes["committed"]) == (120, 180, False)
    assert steps["image.resolve"].end_ns == 110
    unpack = steps["image.unpack 111111111111"]
    assert (unpack.start_ns, unpack.end_ns, unpack.attributes["files"]) == (400, 900, 3)


def test_records_go_to_the_one_pull_they_fall_in() -> None:
    ops = [
        _op("img_ingest", "a", 5, 6),
        _op("img_ingest", "b", 15, 16),
        _op("img_ingest", "c", 50, 51),
    ]
    assert assign([(0, 10), (12, 20)], ops) == {0: [ops[0]], 12: [ops[1]]}
    assert assign([(0, 20), (10, 30)], ops) == {0: [ops[0]]}  # b is in both: left out


# ---- the stored real pull ----


@cache
def analysis() -> Analysis:
    return analyze_files([DATA / "pull-layers.arrows"])


def _pull() -> tuple[Phase, list[Phase]]:
    (pod,) = analysis().pods
    (pull,) = [p for p in pod.phases if p.name == "image" and p.attributes["method"] == "PullImage"]
    return pull, [p for p in pod.phases if p.parent_id == pull.id]


def test_the_stored_pull_has_a_fetch_per_blob_and_an_unpack_per_layer() -> None:
    _, kids = _pull()
    names = [k.name.split(" ")[0] for k in kids]
    assert names.count("image.resolve") == 1
    assert (names.count("image.manifest"), names.count("image.config")) == (1, 1)
    assert (names.count("image.fetch"), names.count("image.unpack")) == (3, 3)
    layers = {k.attributes["digest"] for k in kids if k.name.startswith("image.fetch")}
    unpacks = [k for k in kids if k.name.startswith("image.unpack")]
    assert {k.attributes["digest"] for k in unpacks} == layers
    assert sorted(k.attributes["files"] for k in unpacks)[-1] >= 200  # 200 small files


def test_the_stored_pull_agrees_with_the_registry_log() -> None:
    offset = read_recording(DATA / "pull-layers.arrows").header.clock_offset_ns
    served = {
        s["digest"]: s
        for s in read_served(DATA / "pull-layers.registry.jsonl")
        if s["method"] == "GET" and s["status"] == 200
    }
    _, kids = _pull()
    fetches = [
        k for k in kids if k.name.split(" ")[0] in ("image.manifest", "image.config", "image.fetch")
    ]
    starts, ends = [], []
    for k in fetches:
        s = served[k.attributes["digest"]]
        assert k.attributes["bytes"] == s["bytes"]
        starts.append(k.start_ns - offset - s["start_monotonic_ns"])
        ends.append(k.end_ns - offset - s["end_monotonic_ns"])
    assert len(fetches) == len(served) == 5
    # the request is written before the registry's handler runs, the last byte read after it
    # wrote it: within 2 ms for three in four (a new connection's handler thread starts late)
    assert all(x <= 2 * MS for x in starts) and all(x >= -2 * MS for x in ends)
    assert sum(x < -2 * MS for x in starts) <= math.ceil(len(starts) / 4)
    assert sum(x > 2 * MS for x in ends) <= math.ceil(len(ends) / 4)


def test_the_unpack_is_in_the_sentence_when_it_holds_the_pull() -> None:
    pull, kids = _pull()
    unpack = max(
        (k for k in kids if k.name.startswith("image.unpack")), key=lambda k: k.duration_ns
    )
    text = bottleneck([pull, *kids])
    assert "in image" in text
    if unpack.name in text:
        assert f"({unpack.attributes['files']} files)" in text
