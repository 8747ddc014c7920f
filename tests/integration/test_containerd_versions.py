"""The lab on containerd 1.6, 1.7 and 2.1 (issue 15): for each version one small real run,
recorded and analysed, checked against the lab's CRI ground truth; then `lab down` must leave
nothing behind. Debian's packages are fetched once per test session (a session cache).

Each test brings its own lab up in a fresh directory, so pytest runs this file before the
tests that share the session lab (conftest.py): only one lab can run on a machine.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from startprof.lab import agreement, versions
from startprof.lab.containerd import Lab
from startprof.lab.host import mounts_under
from startprof.lab.leaks import find_leaks
from startprof.lab.paths import LabPaths
from startprof.lab.truth import read_truth
from startprof.recording import read_recording

STARTPROF = [sys.executable, "-m", "startprof"]
PODS = 3


@pytest.fixture(scope="session")
def containerd_cache() -> Iterator[Path]:
    """Debian's containerds, fetched at most once per session ($STARTPROF_CONTAINERD_CACHE
    keeps them across sessions)."""
    kept = os.environ.get(versions.CACHE_ENV)
    if kept:
        yield Path(kept)
        return
    cache = Path(tempfile.mkdtemp(prefix="sp-it-containerd-", dir="/var/tmp"))
    try:
        yield cache
    finally:
        shutil.rmtree(cache, ignore_errors=True)


def _env(cache: Path, **more: str) -> dict[str, str]:
    return {**os.environ, versions.CACHE_ENV: str(cache), **more}


def _say(line: str) -> None:
    print(f"lab: {line}", file=sys.stderr)


@pytest.mark.parametrize("version", ["1.6", "1.7", "2.1"])
def test_record_and_analyze_on_each_containerd(
    version: str, containerd_cache: Path, tmp_path: Path
) -> None:
    root = Path(tempfile.mkdtemp(prefix="sp-it-v-", dir="/tmp"))
    paths = LabPaths(root)
    lab = Lab(paths, containerd_cache=containerd_cache)
    try:
        info = lab.up(progress=_say, containerd=version)
        assert info.containerd is not None
        assert info.containerd.label == version
        assert info.containerd.version.startswith(version + ".")
        assert info.containerd.config_version == (3 if version == "2.1" else 2)
        status = subprocess.run(
            [*STARTPROF, "lab", "status", "--json", "--dir", str(root)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert json.loads(status.stdout)["containerd"]["version"] == info.containerd.version

        out, truth_path = tmp_path / "r.arrows", tmp_path / "truth.jsonl"
        handler = "crun-bridge" if version == "1.7" and "crun-bridge" in info.handlers else None
        handler = handler or "runc-bridge"
        # --pull: each version pulls the lab's 3-layer image from the lab registry (2.x only
        # over the hosts.toml the lab writes: it tries HTTPS for localhost)
        run = [*STARTPROF, "lab", "run", "--dir", str(root), "--pods", str(PODS), "--pull",
               "--runtime-handler", handler, "--truth", str(truth_path)]  # fmt: skip
        proc = subprocess.run(
            [*STARTPROF, "record", "-o", str(out), "--cri-socket", str(paths.socket), "--", *run],
            capture_output=True,
            text=True,
            timeout=300,
            env=_env(containerd_cache),
        )
        assert proc.returncode == 0, proc.stderr
        rec = read_recording(out)
        meta = rec.header.extra["containerd"]
        assert (meta["label"], meta["version"]) == (version, info.containerd.version)

        analyzed = subprocess.run(
            [*STARTPROF, "analyze", "--json", str(out)], capture_output=True, text=True, timeout=120
        )
        assert analyzed.returncode == 0, analyzed.stderr
        doc = json.loads(analyzed.stdout)
        result = agreement.check(doc, read_truth(truth_path), rec.header.clock_offset_ns)
        assert result.expected_pods == PODS, result.summary()
        assert result.passed(), result.summary()
        for pod in doc["pods"]:
            assert pod["runtime_handler"] == handler
            assert abs(sum(s["self_ms"] for s in pod["critical_path"]) - pod["duration_ms"]) <= 0.1
        # the one pull, seen inside containerd on every version: a fetch and an unpack per layer
        pulls = [
            p for pod in doc["pods"] for p in pod["phases"]
            if p["name"] == "image" and p["attributes"].get("method") == "PullImage"
        ]  # fmt: skip
        assert len(pulls) == 1, [p["id"] for p in pulls]
        steps = [
            p["name"].split(" ")[0] for pod in doc["pods"] for p in pod["phases"]
            if p["parent_id"] == pulls[0]["id"]
        ]  # fmt: skip
        assert (steps.count("image.fetch"), steps.count("image.unpack")) == (3, 3), steps

        # Shim reuse: 1.x execs `containerd-shim-runc-v2 ... start` for the app container too
        # (it finds the sandbox's shim and exits); 2.1 talks to the sandbox's shim directly.
        frame = rec.frame()
        execs = frame[frame["kind"] == "exec"]
        shim_starts = sum(
            1
            for argv in execs["argv"]
            if argv is not None
            and len(argv) > 0
            and os.path.basename(str(argv[0])) == "containerd-shim-runc-v2"
            and "start" in list(argv)
        )
        assert shim_starts == (PODS if version == "2.1" else 2 * PODS), shim_starts
        container_shims = [
            p
            for pod in doc["pods"]
            for p in pod["phases"]
            if p["name"] == "runtime.shim" and p["parent_id"] is not None
            and next(q for q in pod["phases"] if q["id"] == p["parent_id"])["name"]
            == "container.start"
        ]  # fmt: skip
        assert (len(container_shims) == 0) == (version == "2.1"), len(container_shims)
    finally:
        lab.down(progress=_say)
        leaks = find_leaks(paths)
        if not mounts_under(root):
            shutil.rmtree(root, ignore_errors=True)
    assert leaks == [], f"lab down on containerd {version} left things behind: {leaks}"


def _up(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    root = tempfile.mkdtemp(prefix="sp-it-e-", dir="/tmp")
    try:
        return subprocess.run(
            [*STARTPROF, "lab", "up", "--dir", root, *args],
            capture_output=True,
            text=True,
            timeout=300,
            env=env,
        )
    finally:
        assert not mounts_under(Path(root))
        shutil.rmtree(root, ignore_errors=True)


def test_bad_versions_are_one_clear_line(containerd_cache: Path, tmp_path: Path) -> None:
    env = _env(containerd_cache)
    unknown = _up("--containerd", "3.0", env=env)
    assert unknown.returncode == 2
    assert "unknown containerd version '3.0'; valid: system, 1.6, 1.7, 2.1" in unknown.stderr
    missing = _up("--containerd", str(tmp_path / "containerd"), env=env)
    assert missing.returncode == 2
    assert "no executable containerd binary there" in missing.stderr
    for proc in (unknown, missing):
        assert "Traceback" not in proc.stderr
        assert proc.stderr.count("\n") <= 2, proc.stderr  # the error and its fix


def test_no_network_is_one_clear_line(tmp_path: Path) -> None:
    # an empty cache and a mirror where nothing listens: the fetch must fail in words
    proc = _up(
        "--containerd",
        "2.1",
        env=_env(tmp_path / "empty-cache", STARTPROF_DEBIAN_MIRROR="http://127.0.0.1:9/debian"),
    )
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "apt-get update of Debian sid from http://127.0.0.1:9/debian failed" in proc.stderr
    assert proc.stderr.count("\n") <= 2, proc.stderr
