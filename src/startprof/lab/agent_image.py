"""The agent's image, built from this machine: what ``deploy/Dockerfile`` builds, without docker.

``deploy/Dockerfile`` needs docker and the network; the lab has neither. This builds the same
image contract (``/opt/startprof/bin/startprof`` as the entrypoint, ``agent --otlp`` as the
command, bcc and its Python bindings from Debian beside a venv) from the files this machine
already runs: its Python, the standard library, bcc's bindings and ``libbcc`` with every shared
library they load (``ldd``), the distributions startprof requires (from its metadata, not the
dev extras) and the startprof package itself. Paths keep their host names (``/usr/...``,
``/lib -> usr/lib`` as on a merged-/usr Debian) so the dynamic linker and Python find
everything where they were built to look; the venv is ``/opt/startprof`` with
``include-system-site-packages`` for ``bcc``, as the Dockerfile's ``--system-site-packages``.

The layer is one uncompressed tar (~750 MB: pyarrow, LLVM and pandas are most of it), written
to disk as it is built, never held in memory; the archive is reused while nothing it holds
changed (sizes and mtimes of the host files, contents of the startprof package).
"""

from __future__ import annotations

import hashlib
import importlib.metadata as metadata
import os
import re
import subprocess
import sys
import sysconfig
from collections.abc import Callable, Iterable
from pathlib import Path

from startprof.errors import EnvironmentProblem
from startprof.lab.oci import LayerSource, write_layer_archive

REFERENCE = "docker.io/library/startprof-agent:latest"
"""``image: startprof-agent:latest`` of deploy/daemonset.yaml, as containerd's CRI names it."""
VENV = "/opt/startprof"
ENTRYPOINT = (f"{VENV}/bin/startprof",)
COMMAND = ("agent", "--otlp")
ENV = (f"PATH={VENV}/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",)
SKIP_STDLIB = ("test", "idlelib", "tkinter", "turtledemo", "ensurepip", "lib2to3", "pydoc_data")
_LDD_PATH = re.compile(r"(?:=>\s*)?(/\S+)\s+\(0x")

Progress = Callable[[str], None]


def _site_packages() -> str:
    return f"{VENV}/lib/python{sys.version_info.major}.{sys.version_info.minor}/site-packages"


def runtime_distributions(root: str = "startprof") -> list[metadata.Distribution]:
    """``root`` and every distribution it requires, without extras, each once."""
    from packaging.requirements import Requirement

    seen: dict[str, metadata.Distribution] = {}
    todo = [root]
    while todo:
        name = re.sub(r"[-_.]+", "-", todo.pop()).lower()
        if name in seen:
            continue
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            raise EnvironmentProblem(
                f"{name} (required by startprof) is not installed", fix="make setup"
            ) from None
        seen[name] = dist
        for text in dist.requires or ():
            req = Requirement(text)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return list(seen.values())


class _Tree:
    """The image's files as (image path -> host path), with every symlink on the way kept."""

    def __init__(self) -> None:
        self.entries: dict[str, str] = {}

    def mirror(self, path: str | os.PathLike[str]) -> None:
        """A host path at the same path in the image, its symlinks and their targets too."""
        p = os.path.abspath(path)
        current = "/"
        for part in p.strip("/").split("/")[:-1]:
            current = os.path.join(current, part)
            if os.path.islink(current) and current not in self.entries:
                self.entries[current] = current
                self.mirror(os.path.join(os.path.dirname(current), os.readlink(current)))
            current = os.path.realpath(current)
        real = os.path.join(os.path.realpath(os.path.dirname(p)), os.path.basename(p))
        if real in self.entries or not os.path.lexists(real):
            return
        self.entries[real] = real
        if os.path.islink(real):
            self.mirror(os.path.join(os.path.dirname(real), os.readlink(real)))

    def mirror_tree(self, top: str, skip: Iterable[str] = ()) -> None:
        skipped = {os.path.join(top, s) for s in skip}
        for dirpath, dirnames, filenames in os.walk(top):
            dirnames[:] = [d for d in dirnames if os.path.join(dirpath, d) not in skipped]
            for name in filenames:
                self.mirror(os.path.join(dirpath, name))

    def place(self, host: str, image: str) -> None:
        """A host file (symlinks followed) at another path in the image."""
        self.entries[image] = os.path.realpath(host)

    def place_tree(self, host_top: str, image_top: str) -> None:
        for dirpath, dirnames, filenames in os.walk(host_top, followlinks=True):
            dirnames[:] = [d for d in dirnames if d != "__pycache__"]
            rel = os.path.relpath(dirpath, host_top)
            for name in filenames:
                self.place(
                    os.path.join(dirpath, name),
                    os.path.normpath(os.path.join(image_top, rel, name)),
                )

    def shared_objects(self) -> list[str]:
        """The dynamic objects to ask ``ldd`` about: shared libraries and the interpreter."""
        python = os.path.realpath(sys.executable)
        return [
            host
            for image, host in self.entries.items()
            if (".so" in os.path.basename(image) or host == python)
            and os.path.isfile(host)
            and not os.path.islink(host)
        ]


def _ldd(paths: Iterable[str]) -> set[str]:
    """Every library the dynamic linker loads for these files (``ldd``, not for static ones)."""
    out: set[str] = set()
    for path in paths:
        proc = subprocess.run(["ldd", path], capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            continue  # not dynamic
        out.update(m.group(1) for m in _LDD_PATH.finditer(proc.stdout))
    return out


def collect() -> _Tree:
    """What the image holds (module docstring)."""
    tree = _Tree()
    python = os.path.realpath(sys.executable)  # the venv's python -> /usr/bin/python3.X
    tree.mirror(python)
    tree.mirror_tree(sysconfig.get_paths()["stdlib"], SKIP_STDLIB)
    try:
        import bcc
    except ImportError as exc:
        raise EnvironmentProblem(f"cannot import bcc: {exc}", fix="make setup") from exc
    tree.mirror_tree(os.path.dirname(bcc.__file__))
    import ctypes.util

    for lib in ("bcc", "bcc_bpf"):
        name = ctypes.util.find_library(lib)
        found = [f"/usr/lib/x86_64-linux-gnu/{name}", f"/lib/x86_64-linux-gnu/{name}"]
        for candidate in (c for c in found if name and os.path.exists(c)):
            tree.mirror(candidate)
            break
    tree.mirror("/etc/ld.so.cache")
    site = _site_packages()
    package = Path(__file__).resolve().parents[1]  # src/startprof (bpf/ is a symlink there)
    for dist in runtime_distributions():
        if dist.metadata["Name"].lower() == "startprof":
            info = f"{site}/startprof-{dist.version}.dist-info/METADATA"
            tree.place(str(dist.locate_file(f"startprof-{dist.version}.dist-info/METADATA")), info)
            continue
        base = os.path.realpath(str(dist.locate_file("")))
        in_venv = base.startswith(os.path.realpath(sys.prefix) + os.sep)
        for f in dist.files or ():
            host = str(dist.locate_file(f))
            if not os.path.isfile(host):
                continue
            if in_venv:
                tree.place(host, os.path.normpath(os.path.join(site, os.path.relpath(host, base))))
            else:
                tree.mirror(host)  # a system dist-package: where the venv sees it
    tree.place_tree(str(package), f"{site}/startprof")
    venv = os.path.realpath(sys.prefix) + os.sep
    for lib in _ldd(tree.shared_objects()):
        if not os.path.realpath(lib).startswith(venv):  # a wheel's own libs are placed already
            tree.mirror(lib)
    return tree


def _generated() -> dict[str, bytes]:
    """The venv's own files: its config, its python and the entrypoint script."""
    return {
        f"{VENV}/pyvenv.cfg": (
            f"home = /usr/bin\ninclude-system-site-packages = true\n"
            f"version = {sys.version.split()[0]}\n"
        ).encode(),
        f"{VENV}/bin/startprof": (
            f"#!{VENV}/bin/python3\nimport sys\nfrom startprof.cli import main\nsys.exit(main())\n"
        ).encode(),
    }


def _links() -> dict[str, str]:
    python = f"/usr/bin/python{sys.version_info.major}.{sys.version_info.minor}"
    return {f"{VENV}/bin/python3": python}


def cache_key(tree: _Tree) -> str:
    h = hashlib.sha256()
    for image, host in sorted(tree.entries.items()):
        st = os.lstat(host)
        h.update(f"{image}\0{host}\0{st.st_size}\0{st.st_mtime_ns}\0".encode())
        if "/site-packages/startprof/" in image and os.path.isfile(host):
            h.update(Path(host).read_bytes())  # edits keep sizes often enough
    for name, data in sorted(_generated().items()):
        h.update(name.encode() + b"\0" + data)
    for name, target in sorted(_links().items()):
        h.update(f"{name}\0{target}\0".encode())
    return h.hexdigest()[:12]


def build_agent_image(images_dir: Path, progress: Progress = lambda _: None) -> Path:
    """Build (or reuse) the agent image's OCI archive under ``images_dir``; its path."""
    progress("collecting the agent image's files (python, bcc, startprof and its requirements)")
    tree = collect()
    key = cache_key(tree)
    archive = images_dir / f"startprof-agent-{key}.tar"
    if archive.exists():
        return archive
    for old in images_dir.glob("startprof-agent-*.tar"):
        old.unlink()
    size = sum(os.lstat(h).st_size for h in tree.entries.values()) / 1e6
    progress(f"writing the agent image: {len(tree.entries)} files, {size:.0f} MB")
    generated = _generated()
    sources = [LayerSource(image, host) for image, host in tree.entries.items()]
    sources += [LayerSource(name, data=data) for name, data in generated.items()]
    sources += [LayerSource(name, link=target) for name, target in _links().items()]
    images_dir.mkdir(parents=True, exist_ok=True)
    write_layer_archive(
        REFERENCE,
        sources,
        archive,
        entrypoint=ENTRYPOINT,
        command=COMMAND,
        env=ENV,
        dirs=("dev", "etc", "proc", "sys", "tmp", "run", "var/tmp"),
    )
    return archive
