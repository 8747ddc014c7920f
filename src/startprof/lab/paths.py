"""Where the lab keeps its files. Everything the lab's containerd owns lives below one directory."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

DEFAULT_LAB_DIR = Path("/var/lib/startprof/lab")


def lab_dir(explicit: str | os.PathLike[str] | None = None) -> Path:
    """The lab directory: ``--dir``, else ``$STARTPROF_LAB_DIR``, else /var/lib/startprof/lab."""
    if explicit:
        return Path(explicit)
    return Path(os.environ.get("STARTPROF_LAB_DIR") or DEFAULT_LAB_DIR)


@dataclass(frozen=True)
class LabPaths:
    root: Path

    @property
    def socket(self) -> Path:
        return self.root / "run" / "containerd.sock"
