"""What the driver sends and how it summarises, without a containerd."""

from __future__ import annotations

import gzip
import io
import json
import tarfile
from pathlib import Path
from typing import Any

import pytest

from startprof.cri.proto import api_pb2 as api
from startprof.errors import InputError, LabError
from startprof.lab.driver import (
    PULL_BIG_BYTES,
    PULL_SMALL_FILES,
    PodResult,
    RunResult,
    pull_image,
    run_pods,
    sandbox_config,
    slow_image,
)
from startprof.lab.images import APP
from startprof.lab.oci import MEDIA_LAYER_GZIP, OciLayout
from startprof.lab.paths import LabPaths


def test_sandbox_config_is_what_the_kubelet_sends() -> None:
    c = sandbox_config(LabPaths(Path("/l")), "sp-x-000", "uid-1", "x")
    assert (c.metadata.name, c.metadata.uid, c.metadata.namespace) == (
        "sp-x-000",
        "uid-1",
        "startprof",
    )
    assert c.hostname == "sp-x-000"
    assert c.log_directory == "/l/pods/startprof_sp-x-000_uid-1"
    assert c.linux.cgroup_parent == "/startprof-lab/poduid-1"
    assert c.linux.security_context.namespace_options.network == api.POD
    assert c.labels["io.kubernetes.pod.uid"] == "uid-1"
    # Round-trips through the wire format with the upstream field numbers.
    assert api.PodSandboxConfig.FromString(c.SerializeToString()) == c


def _rec(method: str, ms: float, status: str = "ok") -> dict[str, Any]:
    return {
        "method": f"/runtime.v1.RuntimeService/{method}",
        "start_monotonic_ns": 0,
        "end_monotonic_ns": int(ms * 1e6),
        "status": status,
    }


def test_stats_per_method_and_pod_start() -> None:
    result = RunResult(
        handler="runc-bridge",
        records=[
            _rec("RunPodSandbox", 70),
            _rec("RunPodSandbox", 80),
            _rec("StartContainer", 40),
            _rec("StartContainer", 999, status="DEADLINE_EXCEEDED"),
        ],
        pods=[PodResult("a", "u", "s", 120.0, None), PodResult("b", "u", "s", None, "boom")],
    )
    stats = {s.label: s for s in result.stats()}
    assert list(stats) == ["RunPodSandbox", "StartContainer", "pod start"]
    assert stats["RunPodSandbox"].median_ms == 75.0 and stats["RunPodSandbox"].count == 2
    assert stats["StartContainer"].count == 1  # failed calls are not latencies
    assert stats["pod start"].median_ms == 120.0
    assert result.errors == ["b: boom"]


def test_bad_counts_are_input_errors() -> None:
    with pytest.raises(InputError, match="--pods"):
        run_pods("/nonexistent/run/containerd.sock", "runc-bridge", pods=0)
    with pytest.raises(InputError, match="--concurrency"):
        run_pods("/nonexistent/run/containerd.sock", "runc-bridge", concurrency=0)


def test_lab_not_up_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(LabError, match="the lab is not up"):
        run_pods(str(tmp_path / "run" / "containerd.sock"), "runc-bridge")


def test_lab_commands_need_root(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from startprof.errors import PrivilegeError
    from startprof.lab.containerd import Lab

    monkeypatch.setattr("os.geteuid", lambda: 1000)
    with pytest.raises(PrivilegeError, match="lab up needs root"):
        Lab(LabPaths(tmp_path)).up()
    with pytest.raises(PrivilegeError, match="lab down needs root"):
        Lab(LabPaths(tmp_path)).down()
    assert Lab(LabPaths(tmp_path)).status() is None


def _lab_with_app(tmp_path: Path) -> LabPaths:
    paths = LabPaths(tmp_path)
    binary = paths.images_dir / "bin" / f"{APP.name}-{APP.tag()}"
    binary.parent.mkdir(parents=True)
    binary.write_bytes(b"\x7fELF app" * 1000)
    return paths


def _layers(layout: OciLayout) -> tuple[Any, Any, list[dict[str, tarfile.TarInfo]]]:
    """(manifest, config, the members of each layer by name) of a one-image layout."""
    (digest,) = layout.images().values()
    manifest = json.loads(layout.blobs[digest])
    config = json.loads(layout.blobs[manifest["config"]["digest"]])
    members = []
    for desc in manifest["layers"]:
        raw = gzip.decompress(layout.blobs[desc["digest"]])
        with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
            members.append({m.name: m for m in tar.getmembers()})
    return manifest, config, members


def test_the_pull_image_has_three_new_layers_per_run(tmp_path: Path) -> None:
    paths = _lab_with_app(tmp_path)
    layout = pull_image(paths, "abc123")
    ((name, _),) = layout.images().items()
    assert name == "startprof.invalid/lab/pull-app:abc123"
    manifest, config, (app, small, big) = _layers(layout)
    assert [d["mediaType"] for d in manifest["layers"]] == [MEDIA_LAYER_GZIP] * 3
    assert len(config["rootfs"]["diff_ids"]) == 3
    assert config["config"]["Entrypoint"] == [APP.binary]  # pods start as on the app image
    # 1: the app and the run id (as the slow image); 2: many small files; 3: one big file
    assert {"app", "startprof-run"} <= set(app)
    files = [m for n, m in small.items() if m.isfile() and n != "data/small/startprof-run"]
    assert len(files) == PULL_SMALL_FILES and all(1024 <= m.size <= 4096 for m in files)
    assert all(n.startswith("data/small/") for n in (m.name for m in files))
    assert "data/small/startprof-run" in small and "data/startprof-run" in big
    assert big["data/big.bin"].size == PULL_BIG_BYTES
    big_layer = manifest["layers"][2]
    assert big_layer["size"] > PULL_BIG_BYTES  # incompressible: gzip cannot shrink it
    # The same run id gives the same image; another one makes every layer new.
    assert pull_image(paths, "abc123") == layout
    other = pull_image(paths, "def456")
    assert not set(layout.blobs) & set(other.blobs)
    # Layer 1 is the slow image's layer, shared code.
    assert manifest["layers"][0]["digest"] in slow_image(paths, "abc123").blobs
