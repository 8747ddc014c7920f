"""Rendering of the lab's containerd config and CNI network lists (no root, no containerd)."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest

from startprof.lab.config import (
    BRIDGE_NAME,
    NETWORKS,
    available_handlers,
    render_cni_confs,
    render_containerd_config,
)
from startprof.lab.paths import LabPaths

CRI = "io.containerd.grpc.v1.cri"
PATHS = LabPaths(Path("/tmp/lab x"))


def _which(found: set[str]) -> object:
    def which(name: str) -> str | None:
        base = name.rsplit("/", 1)[-1]
        return f"/usr/sbin/{base}" if base in found else None

    return which


def test_handlers_are_runtime_times_network() -> None:
    handlers = available_handlers(_which({"runc", "crun"}))  # type: ignore[arg-type]
    assert [h.name for h in handlers] == ["runc-bridge", "runc-ptp", "crun-bridge", "crun-ptp"]
    assert {h.binary for h in handlers} == {"/usr/sbin/runc", "/usr/sbin/crun"}


def test_missing_runtime_has_no_handlers() -> None:
    handlers = available_handlers(_which({"runc"}))  # type: ignore[arg-type]
    assert [h.name for h in handlers] == ["runc-bridge", "runc-ptp"]
    assert available_handlers(_which(set())) == []  # type: ignore[arg-type]


def test_containerd_config_keeps_everything_under_the_lab_dir() -> None:
    handlers = available_handlers(_which({"runc", "crun"}))  # type: ignore[arg-type]
    doc = tomllib.loads(render_containerd_config(PATHS, handlers, "startprof.invalid/p:1"))
    assert doc["version"] == 2
    assert doc["root"] == "/tmp/lab x/root"
    assert doc["state"] == "/tmp/lab x/state"
    assert doc["grpc"]["address"] == str(PATHS.socket)
    assert doc["ttrpc"]["address"] == f"{PATHS.socket}.ttrpc"
    assert doc["plugins"]["io.containerd.internal.v1.opt"]["path"].startswith("/tmp/lab x/")
    cri = doc["plugins"][CRI]
    # Required on these machines (docs/stack.md): each one breaks pod starts when missing.
    assert cri["restrict_oom_score_adj"] is True
    assert cri["disable_apparmor"] is True
    assert cri["disable_hugetlb_controller"] is True
    assert cri["systemd_cgroup"] is False
    assert cri["netns_mounts_under_state_dir"] is True
    assert cri["sandbox_image"] == "startprof.invalid/p:1"
    assert cri["cni"] == {
        "bin_dir": "/usr/lib/cni",
        "conf_dir": "/tmp/lab x/cni/net.d/bridge",
        "max_conf_num": 1,
    }
    runtimes = cri["containerd"]["runtimes"]
    assert list(runtimes) == ["runc-bridge", "runc-ptp", "crun-bridge", "crun-ptp"]
    assert cri["containerd"]["default_runtime_name"] == "runc-bridge"
    crun_ptp = runtimes["crun-ptp"]
    assert crun_ptp["runtime_type"] == "io.containerd.runc.v2"
    assert crun_ptp["cni_conf_dir"] == "/tmp/lab x/cni/net.d/ptp"
    assert crun_ptp["options"] == {
        "BinaryName": "/usr/sbin/crun",
        "Root": "/tmp/lab x/run/runtime/crun",
        "SystemdCgroup": False,
    }


def test_config_needs_a_handler() -> None:
    with pytest.raises(ValueError):
        render_containerd_config(PATHS, [], "x:1")


def test_cni_confs_one_per_used_network() -> None:
    handlers = available_handlers(_which({"runc"}))  # type: ignore[arg-type]
    confs = {p: json.loads(t) for p, t in render_cni_confs(PATHS, handlers).items()}
    assert set(confs) == {
        "/tmp/lab x/cni/net.d/bridge/10-startprof-bridge.conflist",
        "/tmp/lab x/cni/net.d/ptp/10-startprof-ptp.conflist",
    }
    bridge = confs["/tmp/lab x/cni/net.d/bridge/10-startprof-bridge.conflist"]
    main, portmap = bridge["plugins"]
    assert bridge["name"] == "startprof-bridge"
    assert main["type"] == "bridge" and main["bridge"] == BRIDGE_NAME
    assert main["ipMasq"] is True
    assert main["ipam"]["type"] == "host-local"
    assert main["ipam"]["dataDir"] == "/tmp/lab x/cni/ipam"
    assert main["ipam"]["ranges"] == [[{"subnet": "10.234.0.0/16"}]]
    assert portmap["type"] == "portmap"
    ptp = confs["/tmp/lab x/cni/net.d/ptp/10-startprof-ptp.conflist"]["plugins"][0]
    assert ptp["type"] == "ptp" and "bridge" not in ptp


def test_lab_subnets_do_not_overlap() -> None:
    import ipaddress

    nets = [ipaddress.ip_network(n.subnet) for n in NETWORKS]
    assert all(not a.overlaps(b) for i, a in enumerate(nets) for b in nets[i + 1 :])
