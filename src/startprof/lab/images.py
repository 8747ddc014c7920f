"""The lab's two images, built offline from the C sources in ``lab/images/``.

``pause`` is every pod's sandbox process and ``app`` every container's entrypoint (``app init``
for init containers). Each is one static binary (`gcc -static -Os -s`, ~700 KB) in a one-layer
image. The tag is a hash of the source and the compiler flags, so editing a source gives a new
tag and the next ``lab up`` rebuilds and imports it, while an unchanged lab reuses its archive.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from startprof.errors import EnvironmentProblem, LabError
from startprof.lab.oci import LayerFile, OciImage, build_image, write_archive

CFLAGS = ("-static", "-Os", "-s", "-Wall")
REGISTRY_HOST = "startprof.invalid"  # .invalid never resolves: no pull can leave the machine


@dataclass(frozen=True)
class ImageSpec:
    """One lab image: its C source file, the path of the binary inside the image."""

    name: str
    source: str
    binary: str

    def source_text(self) -> bytes:
        return (Path(str(resources.files("startprof.lab"))) / "images" / self.source).read_bytes()

    def tag(self) -> str:
        h = hashlib.sha256(self.source_text() + b"\0" + " ".join(CFLAGS).encode())
        return h.hexdigest()[:12]

    def reference(self) -> str:
        return f"{REGISTRY_HOST}/lab/{self.name}:{self.tag()}"


PAUSE = ImageSpec("pause", "pause.c", "/pause")
APP = ImageSpec("app", "app.c", "/app")
LAB_IMAGES = (PAUSE, APP)


def compile_static(source: bytes, out: Path, cc: str = "gcc") -> None:
    """Compile one C file to a static, stripped binary at ``out``."""
    compiler = shutil.which(cc)
    if compiler is None:
        raise EnvironmentProblem(
            f"{cc} not found: the lab builds its images from C", fix="apt-get install gcc libc6-dev"
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(
        [compiler, *CFLAGS, "-x", "c", "-o", str(out), "-"],
        input=source,
        capture_output=True,
        check=False,
    )
    if proc.returncode != 0:
        tail = proc.stderr.decode(errors="replace").strip().splitlines()[-1:]
        raise LabError(
            f"compiling {out.name} failed: {' '.join(tail) or 'exit ' + str(proc.returncode)}",
            fix="apt-get install libc6-dev (static libc)",
        )


def build_lab_image(spec: ImageSpec, images_dir: Path) -> tuple[OciImage, Path]:
    """Compile ``spec`` and write its OCI archive under ``images_dir``; reuse a current one."""
    archive = images_dir / f"{spec.name}-{spec.tag()}.tar"
    binary = images_dir / "bin" / f"{spec.name}-{spec.tag()}"
    if not binary.exists():
        compile_static(spec.source_text(), binary)
    image = build_image(
        spec.reference(),
        [LayerFile(spec.binary.lstrip("/"), binary.read_bytes(), 0o755)],
        entrypoint=[spec.binary],
    )
    if not archive.exists():
        write_archive(image, archive)
    return image, archive
