"""Files that ship inside the package (BPF C sources, lab image sources)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path


def bpf_dir() -> Path:
    """Directory of the BPF C sources: ``bpf/`` in the repository, ``startprof/bpf`` in a wheel."""
    return Path(str(resources.files("startprof.bpf")))


def bpf_source(name: str) -> str:
    """Text of one BPF source file, e.g. ``exec.bpf.c``."""
    return (bpf_dir() / name).read_text()
