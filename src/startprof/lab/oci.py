"""OCI image-layout archives written and read by the project (no registry, no external tool).

An archive is a tar of an OCI image layout: ``oci-layout``, ``index.json`` and
``blobs/sha256/<hex>``. ``ctr images import`` loads it into containerd and the lab's registry
serves its blobs. Everything is deterministic (fixed mtimes, owners and order), so the same
sources always give the same digests and an unchanged image is never imported twice.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from startprof.errors import InputError

MEDIA_INDEX = "application/vnd.oci.image.index.v1+json"
MEDIA_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
ANNOTATION_IMAGE_NAME = "io.containerd.image.name"
ANNOTATION_REF_NAME = "org.opencontainers.image.ref.name"


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _canonical_json(value: object) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


@dataclass(frozen=True)
class LayerFile:
    """One regular file of an image layer."""

    path: str
    data: bytes
    mode: int = 0o755


def layer_tar(files: Sequence[LayerFile], dirs: Sequence[str] = ()) -> bytes:
    """An uncompressed layer tar holding ``dirs`` (0755) and ``files``, owned by root."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name in sorted(dirs):
            info = tarfile.TarInfo(name.strip("/"))
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, 0
            tar.addfile(info)
        for f in sorted(files, key=lambda f: f.path):
            info = tarfile.TarInfo(f.path.strip("/"))
            info.size, info.mode, info.mtime = len(f.data), f.mode, 0
            tar.addfile(info, io.BytesIO(f.data))
    return buf.getvalue()


def gzip_deterministic(data: bytes) -> bytes:
    """gzip with mtime 0 and no file name, so equal input gives an equal digest."""
    return gzip.compress(data, compresslevel=6, mtime=0)


@dataclass(frozen=True)
class OciImage:
    """One single-layer linux/amd64 image and all of its blobs, keyed by digest."""

    name: str  # full reference, e.g. startprof.invalid/lab/app:1a2b3c4d
    manifest_digest: str
    config_digest: str
    layer_digest: str
    diff_id: str
    blobs: dict[str, bytes] = field(repr=False)

    @property
    def tag(self) -> str:
        return self.name.rsplit(":", 1)[1]

    @property
    def repository(self) -> str:
        return self.name.rsplit(":", 1)[0]

    @property
    def manifest(self) -> bytes:
        return self.blobs[self.manifest_digest]

    def index(self) -> dict[str, object]:
        """``index.json`` of a layout holding only this image, with the names ctr needs."""
        return {
            "schemaVersion": 2,
            "mediaType": MEDIA_INDEX,
            "manifests": [
                {
                    "mediaType": MEDIA_MANIFEST,
                    "digest": self.manifest_digest,
                    "size": len(self.manifest),
                    "platform": {"architecture": "amd64", "os": "linux"},
                    "annotations": {
                        ANNOTATION_IMAGE_NAME: self.name,
                        ANNOTATION_REF_NAME: self.tag,
                    },
                }
            ],
        }


def build_image(
    name: str,
    files: Sequence[LayerFile],
    entrypoint: Sequence[str],
    dirs: Sequence[str] = ("dev", "etc", "proc", "sys", "tmp"),
    env: Sequence[str] = ("PATH=/",),
) -> OciImage:
    """Build a one-layer image from files; ``name`` must carry a tag."""
    if ":" not in name.rsplit("/", 1)[-1]:
        raise InputError(f"image name {name!r} has no tag")
    raw = layer_tar(files, dirs)
    layer = gzip_deterministic(raw)
    diff_id = digest_of(raw)
    config = _canonical_json(
        {
            "architecture": "amd64",
            "os": "linux",
            "created": "1970-01-01T00:00:00Z",
            "config": {"Entrypoint": list(entrypoint), "Env": list(env), "WorkingDir": "/"},
            "rootfs": {"type": "layers", "diff_ids": [diff_id]},
            "history": [{"created": "1970-01-01T00:00:00Z", "created_by": "startprof lab"}],
        }
    )
    manifest = _canonical_json(
        {
            "schemaVersion": 2,
            "mediaType": MEDIA_MANIFEST,
            "config": {"mediaType": MEDIA_CONFIG, "digest": digest_of(config), "size": len(config)},
            "layers": [
                {"mediaType": MEDIA_LAYER_GZIP, "digest": digest_of(layer), "size": len(layer)}
            ],
        }
    )
    blobs = {digest_of(b): b for b in (config, layer, manifest)}
    return OciImage(
        name=name,
        manifest_digest=digest_of(manifest),
        config_digest=digest_of(config),
        layer_digest=digest_of(layer),
        diff_id=diff_id,
        blobs=blobs,
    )


def write_archive(image: OciImage, path: Path) -> None:
    """Write ``image`` as an OCI image-layout tar at ``path`` (atomically, via a temp file)."""
    entries: list[tuple[str, bytes]] = [
        ("oci-layout", _canonical_json({"imageLayoutVersion": "1.0.0"})),
        ("index.json", _canonical_json(image.index())),
    ]
    entries += [
        (f"blobs/sha256/{d.split(':', 1)[1]}", data) for d, data in sorted(image.blobs.items())
    ]
    tmp = path.with_name(path.name + ".tmp")
    with tarfile.open(tmp, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for dirname in ("blobs", "blobs/sha256"):
            info = tarfile.TarInfo(dirname)
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, 0
            tar.addfile(info)
        for name, data in entries:
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, 0
            tar.addfile(info, io.BytesIO(data))
    tmp.replace(path)


@dataclass(frozen=True)
class OciLayout:
    """The content of an OCI image-layout archive: its index and blobs, digests verified."""

    index: dict[str, object]
    blobs: dict[str, bytes]

    def images(self) -> dict[str, str]:
        """Full image name -> manifest digest, from the index annotations."""
        out: dict[str, str] = {}
        manifests = self.index.get("manifests")
        for m in manifests if isinstance(manifests, list) else []:
            annotations = m.get("annotations") or {}
            name = annotations.get(ANNOTATION_IMAGE_NAME)
            if name:
                out[str(name)] = str(m["digest"])
        return out


def read_archive(path: Path) -> OciLayout:
    """Read an archive written by :func:`write_archive`; every blob is re-hashed."""
    try:
        with tarfile.open(path) as tar:
            files = {
                m.name.removeprefix("./"): tar.extractfile(m).read()  # type: ignore[union-attr]
                for m in tar.getmembers()
                if m.isfile()
            }
    except (OSError, tarfile.TarError) as exc:
        raise InputError(f"{path}: not a readable OCI archive: {exc}") from exc
    if "index.json" not in files or "oci-layout" not in files:
        raise InputError(f"{path}: not an OCI image layout (no index.json or oci-layout)")
    blobs: dict[str, bytes] = {}
    for name, data in files.items():
        if name.startswith("blobs/sha256/"):
            digest = "sha256:" + name.rsplit("/", 1)[1]
            if digest_of(data) != digest:
                raise InputError(f"{path}: blob {digest} does not match its content")
            blobs[digest] = data
    return OciLayout(index=json.loads(files["index.json"]), blobs=blobs)
