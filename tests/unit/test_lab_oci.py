"""The OCI image-layout writer: digests, diff_ids, index annotations, determinism."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from pathlib import Path

import pytest

from startprof.errors import InputError
from startprof.lab.oci import (
    ANNOTATION_IMAGE_NAME,
    ANNOTATION_REF_NAME,
    MEDIA_LAYER_GZIP,
    LayerFile,
    LayerSource,
    build_image,
    build_layered_image,
    read_archive,
    write_archive,
    write_layer_archive,
)

NAME = "startprof.invalid/lab/app:0123abcd"
BINARY = b"\x7fELF fake binary" * 100


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _image():  # type: ignore[no-untyped-def]
    return build_image(NAME, [LayerFile("app", BINARY, 0o755)], entrypoint=["/app"])


def test_digests_and_diff_id(tmp_path: Path) -> None:
    image = _image()
    archive = tmp_path / "app.tar"
    write_archive(image, archive)

    # Re-hash everything from the tar we wrote, independently of the writer.
    with tarfile.open(archive) as tar:
        files = {m.name: tar.extractfile(m).read() for m in tar if m.isfile()}  # type: ignore[union-attr]
    assert json.loads(files["oci-layout"]) == {"imageLayoutVersion": "1.0.0"}
    for name, data in files.items():
        if name.startswith("blobs/sha256/"):
            assert "sha256:" + name.rsplit("/", 1)[1] == _sha(data)

    index = json.loads(files["index.json"])
    (entry,) = index["manifests"]
    assert entry["annotations"] == {ANNOTATION_IMAGE_NAME: NAME, ANNOTATION_REF_NAME: "0123abcd"}
    assert entry["platform"] == {"architecture": "amd64", "os": "linux"}
    manifest_bytes = files[f"blobs/sha256/{entry['digest'].split(':')[1]}"]
    assert entry["size"] == len(manifest_bytes)
    manifest = json.loads(manifest_bytes)

    config_bytes = files[f"blobs/sha256/{manifest['config']['digest'].split(':')[1]}"]
    assert manifest["config"]["size"] == len(config_bytes)
    config = json.loads(config_bytes)
    assert config["architecture"] == "amd64" and config["os"] == "linux"
    assert config["config"]["Entrypoint"] == ["/app"]

    (layer_desc,) = manifest["layers"]
    assert layer_desc["mediaType"] == MEDIA_LAYER_GZIP
    layer = files[f"blobs/sha256/{layer_desc['digest'].split(':')[1]}"]
    assert layer_desc["size"] == len(layer)
    raw = gzip.decompress(layer)
    # diff_id is the digest of the *uncompressed* layer tar.
    assert config["rootfs"] == {"type": "layers", "diff_ids": [_sha(raw)]}
    assert image.diff_id == _sha(raw)
    with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
        app = tar.getmember("app")
        assert app.mode == 0o755 and app.uid == 0 and app.mtime == 0
        assert tar.extractfile(app).read() == BINARY  # type: ignore[union-attr]
        assert {"dev", "etc", "proc", "sys", "tmp"} <= set(tar.getnames())


def test_builds_are_deterministic(tmp_path: Path) -> None:
    a, b = _image(), _image()
    assert a.manifest_digest == b.manifest_digest
    write_archive(a, tmp_path / "a.tar")
    write_archive(b, tmp_path / "b.tar")
    assert (tmp_path / "a.tar").read_bytes() == (tmp_path / "b.tar").read_bytes()


def test_read_archive_round_trip(tmp_path: Path) -> None:
    image = _image()
    write_archive(image, tmp_path / "app.tar")
    layout = read_archive(tmp_path / "app.tar")
    assert layout.images() == {NAME: image.manifest_digest}
    assert layout.blobs == image.blobs


def test_read_archive_rejects_a_corrupt_blob(tmp_path: Path) -> None:
    image = _image()
    path = tmp_path / "bad.tar"
    with tarfile.open(path, "w") as tar:
        for name, data in [
            ("oci-layout", b"{}"),
            ("index.json", json.dumps(image.index()).encode()),
            (f"blobs/sha256/{image.layer_digest.split(':')[1]}", b"not the layer"),
        ]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    with pytest.raises(InputError, match="does not match"):
        read_archive(path)


def test_read_archive_rejects_a_non_layout(tmp_path: Path) -> None:
    path = tmp_path / "x.tar"
    path.write_bytes(b"garbage")
    with pytest.raises(InputError):
        read_archive(path)


def test_name_needs_a_tag() -> None:
    with pytest.raises(InputError):
        build_image("startprof.invalid/lab/app", [], entrypoint=["/app"])


def test_a_layer_written_from_disk_keeps_files_links_and_parents(tmp_path: Path) -> None:
    """write_layer_archive (the agent image's writer): an uncompressed layer hashed as it is
    written, host files copied as they are (a symlink stays one), every parent directory
    before its children."""
    host = tmp_path / "host"
    (host / "lib").mkdir(parents=True)
    (host / "lib" / "libx.so.1").write_bytes(b"\x7fELF")
    (host / "lib" / "libx.so").symlink_to("libx.so.1")
    sources = [
        LayerSource("/usr/lib/libx.so.1", str(host / "lib" / "libx.so.1")),
        LayerSource("/usr/lib/libx.so", str(host / "lib" / "libx.so")),
        LayerSource("/opt/venv/pyvenv.cfg", data=b"home = /usr/bin\n", mode=0o644),
        LayerSource("/opt/venv/bin/python3", link="/usr/bin/python3.11"),
    ]
    archive = tmp_path / "image.tar"
    write_layer_archive("example.invalid/a:1", sources, archive, ["/opt/venv/bin/python3"],
                        command=["-V"], dirs=("tmp",))  # fmt: skip
    layout = read_archive(archive)  # every blob re-hashed
    assert layout.images() and not (tmp_path / "image.tar.layer").exists()
    (manifest_digest,) = layout.images().values()
    manifest = json.loads(layout.blobs[manifest_digest])
    (layer_desc,) = manifest["layers"]
    assert layer_desc["mediaType"] == "application/vnd.oci.image.layer.v1.tar"
    config = json.loads(layout.blobs[manifest["config"]["digest"]])
    assert config["rootfs"]["diff_ids"] == [layer_desc["digest"]]  # uncompressed: the same
    assert config["config"]["Cmd"] == ["-V"]
    with tarfile.open(fileobj=io.BytesIO(layout.blobs[layer_desc["digest"]])) as tar:
        members = {m.name: m for m in tar.getmembers()}
        names = [m.name for m in tar.getmembers()]
        assert members["usr/lib/libx.so"].issym() and members["usr/lib/libx.so"].linkname == (
            "libx.so.1"
        )
        assert members["opt/venv/bin/python3"].linkname == "/usr/bin/python3.11"
        assert tar.extractfile("usr/lib/libx.so.1").read() == b"\x7fELF"  # type: ignore[union-attr]
        assert members["tmp"].isdir() and members["usr"].isdir()
        assert all(m.uid == 0 and m.gid == 0 for m in members.values())
    for name in names:  # parents first
        parent = name.rsplit("/", 1)[0]
        assert "/" not in name or names.index(parent) < names.index(name)


LAYERS = [
    [LayerFile("app", BINARY, 0o755)],
    [LayerFile(f"data/small/{i:03d}", bytes([i]) * (1024 + i), 0o644) for i in range(5)],
    [LayerFile("data/big.bin", bytes(range(256)) * 64, 0o644)],
]


def test_a_layered_image_lists_every_layer_in_order() -> None:
    image = build_layered_image(NAME, LAYERS, entrypoint=["/app"])
    manifest = json.loads(image.manifest)
    config = json.loads(image.blobs[manifest["config"]["digest"]])
    assert [d["digest"] for d in manifest["layers"]] == list(image.layer_digests)
    assert all(d["mediaType"] == MEDIA_LAYER_GZIP for d in manifest["layers"])
    assert config["rootfs"]["diff_ids"] == list(image.diff_ids)
    assert len(image.layer_digests) == len(image.diff_ids) == len(config["history"]) == 3
    assert (image.layer_digest, image.diff_id) == (image.layer_digests[0], image.diff_ids[0])
    names = []
    for desc, diff_id in zip(manifest["layers"], image.diff_ids, strict=True):
        blob = image.blobs[desc["digest"]]
        assert desc["size"] == len(blob)
        raw = gzip.decompress(blob)
        assert _sha(raw) == diff_id  # diff_id: the uncompressed tar of the same layer
        with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
            names.append(tar.getnames())
    # The base layer has the image's directories; the others their files' parents first.
    assert {"dev", "proc", "tmp", "app"} <= set(names[0])
    assert names[1] == ["data", "data/small", *(f"data/small/{i:03d}" for i in range(5))]
    assert names[2] == ["data", "data/big.bin"]


def test_a_layered_image_is_deterministic_and_round_trips(tmp_path: Path) -> None:
    a = build_layered_image(NAME, LAYERS, entrypoint=["/app"])
    b = build_layered_image(NAME, LAYERS, entrypoint=["/app"])
    assert (a.manifest_digest, a.layer_digests, a.diff_ids) == (
        b.manifest_digest,
        b.layer_digests,
        b.diff_ids,
    )
    write_archive(a, tmp_path / "a.tar")
    write_archive(b, tmp_path / "b.tar")
    assert (tmp_path / "a.tar").read_bytes() == (tmp_path / "b.tar").read_bytes()
    layout = read_archive(tmp_path / "a.tar")  # every blob re-hashed
    assert layout.images() == {NAME: a.manifest_digest}
    assert layout.blobs == a.blobs and len(layout.blobs) == 5  # manifest, config, 3 layers
    assert a.layout() == layout
    # A layer changed changes its own digest and the image's, not the others'.
    c = build_layered_image(NAME, [*LAYERS[:2], [LayerFile("data/big.bin", b"other")]], ["/app"])
    assert c.layer_digests[:2] == a.layer_digests[:2]
    assert c.layer_digests[2] != a.layer_digests[2] and c.manifest_digest != a.manifest_digest


def test_a_one_layer_image_is_a_layered_image_of_one_layer() -> None:
    one = build_layered_image(NAME, LAYERS[:1], entrypoint=["/app"])
    assert one.manifest_digest == build_image(NAME, LAYERS[0], ["/app"]).manifest_digest
    with pytest.raises(InputError, match="no layers"):
        build_layered_image(NAME, [], entrypoint=["/app"])
