"""OCI image-layout archives written and read by the project (no registry, no external tool).

An archive is a tar of an OCI image layout: ``oci-layout``, ``index.json`` and
``blobs/sha256/<hex>``. ``ctr images import`` loads it into containerd and the lab's registry
serves its blobs. An image has one layer or several (``build_layered_image``: the config's
``rootfs.diff_ids`` and the manifest's ``layers`` list them base first). Everything is
deterministic (fixed mtimes, owners and order), so the same sources always give the same
digests and an unchanged image is never imported twice.
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
from typing import BinaryIO, NamedTuple

from startprof.errors import InputError

MEDIA_INDEX = "application/vnd.oci.image.index.v1+json"
MEDIA_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
MEDIA_LAYER = "application/vnd.oci.image.layer.v1.tar"
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
    """An uncompressed layer tar holding ``dirs`` and every parent directory of ``files``
    (0755), then ``files``, all owned by root."""
    names = [f.path.strip("/") for f in files]
    parents = {"/".join(n.split("/")[:i]) for n in names for i in range(1, n.count("/") + 1)}
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name in sorted(parents | {d.strip("/") for d in dirs}):
            info = tarfile.TarInfo(name)
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


class LayerDescriptor(NamedTuple):
    """One entry of a manifest's ``layers``: the blob as it is stored and served."""

    media_type: str
    digest: str
    size: int


@dataclass(frozen=True)
class OciImage:
    """One linux/amd64 image of one or more layers and all of its blobs, keyed by digest."""

    name: str  # full reference, e.g. startprof.invalid/lab/app:1a2b3c4d
    manifest_digest: str
    config_digest: str
    layer_digests: tuple[str, ...]  # the layer blobs, base layer first
    diff_ids: tuple[str, ...]  # digests of the uncompressed layer tars, in the same order
    blobs: dict[str, bytes] = field(repr=False)

    @property
    def layer_digest(self) -> str:
        """The first layer's blob digest: the only one of a one-layer image."""
        return self.layer_digests[0]

    @property
    def diff_id(self) -> str:
        """The first layer's diff_id: the only one of a one-layer image."""
        return self.diff_ids[0]

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

    def layout(self) -> OciLayout:
        """This image as the layout a registry serves (what :func:`read_archive` gives back)."""
        return OciLayout(index=self.index(), blobs=dict(self.blobs))


DEFAULT_DIRS = ("dev", "etc", "proc", "sys", "tmp")


def build_image(
    name: str,
    files: Sequence[LayerFile],
    entrypoint: Sequence[str],
    dirs: Sequence[str] = DEFAULT_DIRS,
    env: Sequence[str] = ("PATH=/",),
) -> OciImage:
    """Build a one-layer image from files; ``name`` must carry a tag."""
    return build_layered_image(name, [files], entrypoint, dirs, env)


def build_layered_image(
    name: str,
    layers: Sequence[Sequence[LayerFile]],
    entrypoint: Sequence[str],
    dirs: Sequence[str] = DEFAULT_DIRS,
    env: Sequence[str] = ("PATH=/",),
) -> OciImage:
    """Build an image of one gzip layer per entry of ``layers``, base layer first; ``dirs``
    go into the base layer. ``name`` must carry a tag."""
    if ":" not in name.rsplit("/", 1)[-1]:
        raise InputError(f"image name {name!r} has no tag")
    if not layers:
        raise InputError(f"image {name!r} has no layers")
    diff_ids: list[str] = []
    descriptors: list[LayerDescriptor] = []
    blobs: dict[str, bytes] = {}
    for i, files in enumerate(layers):
        raw = layer_tar(files, dirs if i == 0 else ())
        layer = gzip_deterministic(raw)
        diff_ids.append(digest_of(raw))
        descriptors.append(LayerDescriptor(MEDIA_LAYER_GZIP, digest_of(layer), len(layer)))
        blobs[digest_of(layer)] = layer
    config = image_config(entrypoint, env, diff_ids)
    manifest = image_manifest(config, descriptors)
    blobs.update({digest_of(b): b for b in (config, manifest)})
    return OciImage(
        name=name,
        manifest_digest=digest_of(manifest),
        config_digest=digest_of(config),
        layer_digests=tuple(d.digest for d in descriptors),
        diff_ids=tuple(diff_ids),
        blobs=blobs,
    )


def image_config(
    entrypoint: Sequence[str],
    env: Sequence[str],
    diff_ids: str | Sequence[str],
    command: Sequence[str] = (),
) -> bytes:
    """The image config blob: ``rootfs.diff_ids`` (one digest, or one per layer in order)
    and one history entry per layer."""
    ids = [diff_ids] if isinstance(diff_ids, str) else list(diff_ids)
    config: dict[str, object] = {
        "Entrypoint": list(entrypoint),
        "Env": list(env),
        "WorkingDir": "/",
    }
    if command:
        config["Cmd"] = list(command)
    return _canonical_json(
        {
            "architecture": "amd64",
            "os": "linux",
            "created": "1970-01-01T00:00:00Z",
            "config": config,
            "rootfs": {"type": "layers", "diff_ids": ids},
            "history": [{"created": "1970-01-01T00:00:00Z", "created_by": "startprof lab"}]
            * len(ids),
        }
    )


def image_manifest(config: bytes, layers: Sequence[LayerDescriptor]) -> bytes:
    """The manifest blob: the config and every layer, base layer first."""
    return _canonical_json(
        {
            "schemaVersion": 2,
            "mediaType": MEDIA_MANIFEST,
            "config": {"mediaType": MEDIA_CONFIG, "digest": digest_of(config), "size": len(config)},
            "layers": [
                {"mediaType": d.media_type, "digest": d.digest, "size": d.size} for d in layers
            ],
        }
    )


@dataclass(frozen=True)
class LayerSource:
    """One entry of a layer written from disk: a host file, directory or symlink copied as it
    is (``host``, not followed), or these bytes as a regular file, or a symlink to ``link``."""

    path: str
    host: str | None = None
    data: bytes | None = None
    link: str | None = None
    mode: int = 0o755


class _HashingFile:
    """A write-only file that hashes and counts what passes through it."""

    def __init__(self, f: BinaryIO) -> None:
        self.f, self.sha, self.size = f, hashlib.sha256(), 0

    def write(self, data: bytes) -> int:
        self.sha.update(data)
        self.size += len(data)
        return self.f.write(data)

    def tell(self) -> int:
        return self.size


def _write_layer(sources: Sequence[LayerSource], dirs: Sequence[str], out: BinaryIO) -> None:
    """An uncompressed layer tar of ``sources``, every parent directory first, owned by root."""
    by_path = {s.path.strip("/"): s for s in sources}
    parents = {"/".join(p.split("/")[:i]) for p in by_path for i in range(1, p.count("/") + 1)}
    parents |= {d.strip("/") for d in dirs}
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name in sorted(parents | set(by_path)):
            src = by_path.get(name)
            if src is not None and src.host is not None:
                info = tar.gettarinfo(src.host, arcname=name)
            else:
                info = tarfile.TarInfo(name)
                info.mode = 0o755
                if src is None:
                    info.type = tarfile.DIRTYPE
                elif src.link is not None:
                    info.type, info.linkname = tarfile.SYMTYPE, src.link
                else:
                    info.size, info.mode = len(src.data or b""), src.mode
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            if info.isreg() and src is not None and src.host is not None:
                with open(src.host, "rb") as f:
                    tar.addfile(info, f)
            elif info.isreg() and src is not None:
                tar.addfile(info, io.BytesIO(src.data or b""))
            else:
                tar.addfile(info)


def write_layer_archive(
    name: str,
    sources: Sequence[LayerSource],
    path: Path,
    entrypoint: Sequence[str],
    command: Sequence[str] = (),
    env: Sequence[str] = ("PATH=/",),
    dirs: Sequence[str] = (),
) -> None:
    """A one-layer image too large for memory as an OCI archive at ``path``: the uncompressed
    layer is written to disk and hashed as it is built, then added to the archive from there."""
    if ":" not in name.rsplit("/", 1)[-1]:
        raise InputError(f"image name {name!r} has no tag")
    layer_path = path.with_name(path.name + ".layer")
    try:
        with open(layer_path, "wb") as raw:
            out = _HashingFile(raw)
            _write_layer(sources, dirs, out)  # type: ignore[arg-type]
        layer_digest = "sha256:" + out.sha.hexdigest()
        config = image_config(entrypoint, env, layer_digest, command)
        manifest = image_manifest(config, [LayerDescriptor(MEDIA_LAYER, layer_digest, out.size)])
        image = OciImage(
            name=name,
            manifest_digest=digest_of(manifest),
            config_digest=digest_of(config),
            layer_digests=(layer_digest,),
            diff_ids=(layer_digest,),
            blobs={digest_of(b): b for b in (config, manifest)},
        )
        write_archive(image, path, {layer_digest: layer_path})
    finally:
        layer_path.unlink(missing_ok=True)


def write_archive(image: OciImage, path: Path, files: dict[str, Path] | None = None) -> None:
    """Write ``image`` as an OCI image-layout tar at ``path`` (atomically, via a temp file)."""
    entries: list[tuple[str, bytes]] = [
        ("oci-layout", _canonical_json({"imageLayoutVersion": "1.0.0"})),
        ("index.json", _canonical_json(image.index())),
    ]
    entries += [
        (f"blobs/sha256/{d.split(':', 1)[1]}", data) for d, data in sorted(image.blobs.items())
    ]
    on_disk = {f"blobs/sha256/{d.split(':', 1)[1]}": p for d, p in (files or {}).items()}
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
        for name, blob in sorted(on_disk.items()):
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = blob.stat().st_size, 0o644, 0
            with blob.open("rb") as f:
                tar.addfile(info, f)
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
