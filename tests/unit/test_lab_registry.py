"""The lab's read-only OCI registry over real HTTP on 127.0.0.1 (no root, no containerd)."""

from __future__ import annotations

import json
import random
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from startprof.errors import InputError
from startprof.lab.oci import (
    MEDIA_MANIFEST,
    LayerFile,
    OciLayout,
    build_image,
    build_layered_image,
)
from startprof.lab.registry import (
    SERVED_KEYS,
    Registry,
    read_served,
    registry_log_beside,
    write_served,
)

IMAGE = build_image("startprof.invalid/lab/app:t1", [LayerFile("app", b"x" * 1000)], ["/app"])
LAYOUT = OciLayout(index=IMAGE.index(), blobs=IMAGE.blobs)


def _settled(reg: Registry, n: int) -> list[dict[str, Any]]:
    """The log once it has n entries: the client may read the last byte before the handler,
    which logs after its final write returned, has run again."""
    deadline = time.monotonic() + 2
    while len(reg.served) < n and time.monotonic() < deadline:
        time.sleep(0.005)
    return reg.served


def _get(url: str, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(url, method=method)
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def test_serves_manifest_by_tag_and_digest_and_blobs() -> None:
    with Registry([LAYOUT]) as reg:
        base = f"http://127.0.0.1:{reg.port}/v2"
        assert reg.reference(IMAGE.name) == f"localhost:{reg.port}/lab/app:t1"
        assert _get(base + "/")[0] == 200

        status, headers, body = _get(base + "/lab/app/manifests/t1", "HEAD")
        assert status == 200 and body == b""
        assert headers["Docker-Content-Digest"] == IMAGE.manifest_digest
        assert headers["Content-Type"] == MEDIA_MANIFEST
        assert int(headers["Content-Length"]) == len(IMAGE.manifest)

        status, _, body = _get(base + f"/lab/app/manifests/{IMAGE.manifest_digest}")
        assert status == 200 and body == IMAGE.manifest
        for digest in (IMAGE.config_digest, IMAGE.layer_digest):
            status, headers, body = _get(base + f"/lab/app/blobs/{digest}")
            assert status == 200 and body == IMAGE.blobs[digest]
            assert headers["Docker-Content-Digest"] == digest


@pytest.mark.parametrize(
    ("path", "code"),
    [
        ("/lab/app/manifests/nope", "MANIFEST_UNKNOWN"),
        ("/other/manifests/t1", "MANIFEST_UNKNOWN"),
        ("/lab/app/blobs/sha256:" + "0" * 64, "BLOB_UNKNOWN"),
        ("/lab/app/tags/list", "NAME_UNKNOWN"),
    ],
)
def test_unknown_things_are_404_with_an_oci_error(path: str, code: str) -> None:
    with Registry([LAYOUT]) as reg:
        status, _, body = _get(f"http://127.0.0.1:{reg.port}/v2{path}")
    assert status == 404
    assert json.loads(body)["errors"][0]["code"] == code


def test_writes_are_refused() -> None:
    with Registry([LAYOUT]) as reg:
        status, _, _ = _get(f"http://127.0.0.1:{reg.port}/v2/lab/app/blobs/uploads/", "POST")
    assert status == 501


def test_a_throttled_registry_paces_blob_bodies() -> None:
    """``rate`` is bytes per second of blob bodies: at four times its size per second, the
    layer takes a quarter of a second, though it fits in one chunk."""
    import time

    layer = IMAGE.blobs[IMAGE.layer_digest]
    with Registry([LAYOUT], rate=len(layer) * 4) as reg:
        base = f"http://127.0.0.1:{reg.port}/v2"
        begin = time.monotonic()
        status, _, body = _get(base + f"/lab/app/blobs/{IMAGE.layer_digest}")
        took = time.monotonic() - begin
    assert status == 200 and body == layer
    assert 0.2 <= took < 1.5, took


def test_a_registry_rate_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        Registry([LAYOUT], rate=0)


_RNG = random.Random(3)
LAYERED = build_layered_image(
    "startprof.invalid/lab/layers:t3",
    [
        [LayerFile("app", b"x" * 1000)],
        [LayerFile(f"data/small/{i}", _RNG.randbytes(1024 + i), 0o644) for i in range(20)],
        [LayerFile("data/big.bin", _RNG.randbytes(256 << 10), 0o644)],
    ],
    ["/app"],
)


def _pull(base: str) -> list[tuple[str, str, str, int]]:
    """What a client such as containerd asks for: the manifest by tag (HEAD, then GET by
    digest), the config, each layer. Returns (kind, method, digest, bytes) per request."""
    asked = []
    _, headers, _ = _get(base + "/lab/layers/manifests/t3", "HEAD")
    digest = headers["Docker-Content-Digest"]
    asked.append(("manifest", "HEAD", digest, 0))
    _, _, body = _get(base + f"/lab/layers/manifests/{digest}")
    asked.append(("manifest", "GET", digest, len(body)))
    manifest = json.loads(body)
    for desc in [manifest["config"], *manifest["layers"]]:
        status, _, body = _get(base + f"/lab/layers/blobs/{desc['digest']}")
        assert status == 200 and body == LAYERED.blobs[desc["digest"]]
        asked.append(("blob", "GET", desc["digest"], len(body)))
    return asked


def test_a_layered_pull_is_logged_one_entry_per_request() -> None:
    with Registry([LAYERED.layout()]) as reg:
        base = f"http://127.0.0.1:{reg.port}/v2"
        assert _get(base + "/")[0] == 200  # the ping is no manifest or blob: not logged
        asked = _pull(base)
        missing = "sha256:" + "0" * 64
        _get(base + f"/lab/layers/blobs/{missing}", "HEAD")
        _get(base + "/lab/layers/manifests/nope")
        # in the order they began (a handler may note its end after the next one began)
        served = sorted(_settled(reg, 8), key=lambda s: s["start_monotonic_ns"])
    assert len(asked) == 6  # manifest twice, config, 3 layers
    assert [d for _, _, d, _ in asked[3:]] == list(LAYERED.layer_digests)
    assert [tuple(s[k] for k in ("kind", "method", "digest", "bytes")) for s in served[:6]] == asked
    assert all(s["status"] == 200 for s in served[:6])
    assert [(s["kind"], s["method"], s["digest"], s["status"]) for s in served[6:]] == [
        ("blob", "HEAD", missing, 404),
        ("manifest", "GET", "nope", 404),  # the tag asked for: no digest is known
    ]
    assert served[7]["bytes"] > 0  # the OCI error body
    assert all(list(s) == list(SERVED_KEYS) for s in served)
    assert all(0 < s["start_monotonic_ns"] <= s["end_monotonic_ns"] for s in served)


def test_a_throttled_layer_is_logged_for_as_long_as_it_took() -> None:
    big = LAYERED.layer_digests[2]
    size = len(LAYERED.blobs[big])
    with Registry([LAYERED.layout()], rate=size * 5) as reg:
        _get(f"http://127.0.0.1:{reg.port}/v2/lab/layers/blobs/{big}")
        (entry,) = _settled(reg, 1)
    assert entry["bytes"] == size
    assert entry["end_monotonic_ns"] - entry["start_monotonic_ns"] >= 0.15e9


def test_served_logs_round_trip(tmp_path: Path) -> None:
    with Registry([LAYERED.layout()]) as reg:
        _pull(f"http://127.0.0.1:{reg.port}/v2")
        served = _settled(reg, 6)
    path = tmp_path / "registry.jsonl"
    path.write_text("stale\n")
    write_served(served, path)  # replaces what was there
    assert read_served(path) == served


def test_the_registry_log_beside_a_truth_file() -> None:
    assert registry_log_beside(Path("/tmp/t.truth.jsonl")) == Path("/tmp/t.truth.registry.jsonl")
    assert registry_log_beside("/tmp/t") == Path("/tmp/t.registry.jsonl")


_GOOD = {
    "kind": "blob",
    "method": "GET",
    "digest": "sha256:" + "a" * 64,
    "bytes": 10,
    "status": 200,
    "start_monotonic_ns": 5,
    "end_monotonic_ns": 9,
}


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", "not JSON"),
        ("[1]", "must be a JSON object"),
        (json.dumps({k: v for k, v in _GOOD.items() if k != "bytes"}), "missing key.*bytes"),
        (json.dumps({**_GOOD, "extra": 1}), "unknown key.*extra"),
        (json.dumps({**_GOOD, "kind": "tag"}), "kind must be one of blob, manifest"),
        (json.dumps({**_GOOD, "method": "POST"}), "method must be one of GET, HEAD"),
        (json.dumps({**_GOOD, "digest": ""}), "digest must be a non-empty string"),
        (json.dumps({**_GOOD, "bytes": -1}), "bytes must be a non-negative integer"),
        (json.dumps({**_GOOD, "status": True}), "status must be a non-negative integer"),
        (json.dumps({**_GOOD, "end_monotonic_ns": 4}), "end_monotonic_ns is before"),
        (json.dumps({**_GOOD, "method": "HEAD"}), "a HEAD sends no body"),
    ],
)
def test_read_served_rejects_a_damaged_line(tmp_path: Path, line: str, message: str) -> None:
    path = tmp_path / "registry.jsonl"
    path.write_text(json.dumps(_GOOD) + "\n\n" + line + "\n")
    with pytest.raises(InputError, match=message) as err:
        read_served(path)
    assert str(err.value).startswith(f"{path}:3: ") and "\n" not in str(err.value)


def test_read_served_of_a_missing_file_is_an_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="cannot read registry log"):
        read_served(tmp_path / "nope.jsonl")
