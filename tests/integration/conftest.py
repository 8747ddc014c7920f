"""Shared fixtures of the integration tests: root, and one real lab for the whole session.

Every test under tests/integration needs root (real BPF, a real containerd); without root
they are skipped with that reason. The ``lab`` fixture brings a lab up once per session in a
fresh temporary directory, yields it, then takes it down and fails if anything is left.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from startprof.lab.containerd import Lab, LabInfo
from startprof.lab.host import mounts_under
from startprof.lab.leaks import find_leaks
from startprof.lab.paths import LabPaths


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    skip = pytest.mark.skip(reason="integration tests need root (real BPF and containerd)")
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.integration)
            if os.geteuid() != 0:
                item.add_marker(skip)
    # The containerd versions, the Debian 13 chroot and bench bring their own labs up and down,
    # so they run before the session's shared lab exists (only one lab can run on a machine).
    # bench goes last of them: its regression-gate test starts the shared lab. The sort is
    # stable for everything else.
    own_labs = ("test_containerd_versions.py", "test_debian13.py", "test_bench.py")

    def order(item: pytest.Item) -> int:
        name = Path(str(item.fspath)).name
        return own_labs.index(name) if name in own_labs else len(own_labs)

    items.sort(key=order)


@dataclass
class RunningLab:
    """A lab that is up: its handle, paths and the LabInfo ``up`` returned."""

    lab: Lab
    paths: LabPaths
    info: LabInfo

    @property
    def socket(self) -> str:
        return str(self.paths.socket)

    @property
    def handlers(self) -> tuple[str, ...]:
        return self.info.handlers


def _say(line: str) -> None:
    print(f"lab: {line}", file=sys.stderr)


@pytest.fixture(scope="session")
def lab() -> Iterator[RunningLab]:
    """One lab for the whole session, in a short temp dir (unix socket paths max 107 bytes)."""
    if os.geteuid() != 0:
        pytest.skip("the lab needs root")
    root = Path(tempfile.mkdtemp(prefix="sp-it-lab-", dir="/tmp"))
    paths = LabPaths(root)
    handle = Lab(paths)
    try:
        info = handle.up(progress=_say)
    except BaseException:
        handle.down(progress=_say)
        shutil.rmtree(root, ignore_errors=True)
        raise
    running = RunningLab(handle, paths, info)
    try:
        yield running
    finally:
        handle.down(progress=_say)
        leaks = find_leaks(paths)
        if not mounts_under(root):  # never rm -r through a mount that down could not undo
            shutil.rmtree(root, ignore_errors=True)
        assert leaks == [], f"the lab left things behind: {leaks}"


# Every OTLP variable the SDK reads: exports in the tests must not pick up the machine's.
OTLP_ENV = (
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_PROTOCOL",
    "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
    "OTEL_EXPORTER_OTLP_HEADERS",
    "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
    "OTEL_EXPORTER_OTLP_INSECURE",
    "OTEL_EXPORTER_OTLP_TRACES_INSECURE",
    "OTEL_EXPORTER_OTLP_CERTIFICATE",
    "OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE",
    "OTEL_EXPORTER_OTLP_TIMEOUT",
    "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT",
)


@pytest.fixture
def clean_otlp_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No OTEL_EXPORTER_OTLP_* variable of the machine leaks into an export test."""
    for name in OTLP_ENV:
        monkeypatch.delenv(name, raising=False)
