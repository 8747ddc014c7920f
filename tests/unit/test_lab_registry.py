"""The lab's read-only OCI registry over real HTTP on 127.0.0.1 (no root, no containerd)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest

from startprof.lab.oci import MEDIA_MANIFEST, LayerFile, OciLayout, build_image
from startprof.lab.registry import Registry

IMAGE = build_image("startprof.invalid/lab/app:t1", [LayerFile("app", b"x" * 1000)], ["/app"])
LAYOUT = OciLayout(index=IMAGE.index(), blobs=IMAGE.blobs)


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
