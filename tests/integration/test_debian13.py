"""The set-up on Debian 13 (issue 15): scripts/check-debian13.sh builds a trixie chroot with
debootstrap and runs make setup, doctor, lab up, record and analyze 5 pods, lab down inside it.

Slow (a first run downloads and installs a Debian system: several minutes), so opt-in:
STARTPROF_SLOW=1. The chroot's lab takes the machine's lab lock itself.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parents[2] / "scripts" / "check-debian13.sh"


@pytest.mark.skipif(
    os.environ.get("STARTPROF_SLOW") != "1",
    reason="slow (debootstraps and sets up a Debian 13 system): set STARTPROF_SLOW=1",
)
def test_setup_and_a_recorded_run_on_debian_13() -> None:
    proc = subprocess.run(
        ["bash", str(SCRIPT)], capture_output=True, text=True, timeout=3600, check=False
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "check-debian13: passed in" in proc.stdout
    assert "truth check: 5/5 pods found, 5 ok" in proc.stdout
    root = os.environ.get("STARTPROF_D13_ROOT", "/var/tmp/startprof-debian13")
    mounts = Path("/proc/mounts").read_text()
    assert f" {root}/" not in mounts and f" {root} " not in mounts, "chroot mounts left"
