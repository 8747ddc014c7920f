"""The lab's pod kinds and handler variants as data (no root, no containerd; issue 14)."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest

from startprof.cri.proto import api_pb2 as api
from startprof.errors import InputError
from startprof.lab.config import (
    BRIDGE_NAME,
    available_handlers,
    render_cni_confs,
    render_containerd_config,
)
from startprof.lab.driver import _Pod, container_config, sandbox_config
from startprof.lab.handlers import (
    HOOK_STAGES,
    hook_path,
    render_handler_files,
    variant_handlers,
    wrapper_path,
)
from startprof.lab.kinds import KINDS, MAX_RESTARTS, MISSING_ENTRYPOINT, pod_kind
from startprof.lab.paths import LabPaths

PATHS = LabPaths(Path("/tmp/lab k"))


def which(name: str) -> str | None:
    return "/usr/sbin/runc" if name.endswith("runc") else None


def test_every_kind_plans_its_containers_in_the_kubelets_order() -> None:
    plain = pod_kind("plain").containers(0, 2, 1)
    assert [(c.name, c.role) for c in plain] == [
        ("init-0", "init"),
        ("app-0", "app"),
        ("app-1", "app"),
    ]
    sidecar = pod_kind("sidecar").containers(0, 1, 1)
    assert [c.role for c in sidecar] == ["init", "sidecar", "app"]
    slow = pod_kind("slow-pull")
    assert [c.image for c in slow.containers(0, 1, 0)] == ["slow"]
    assert [c.image for c in slow.containers(1, 1, 0)] == ["app"]  # only the first pod pulls
    crash = pod_kind("crash-then-up").containers(0, 2, 0)
    assert [crash[0].args(a) for a in range(3)] == [["exit", "1"], ["exit", "1"], []]
    assert crash[1].args(0) == []  # only app-0 crashes
    loop = pod_kind("crash-loop").containers(0, 1, 0)[0]
    assert all(loop.args(a) == ["exit", "1"] for a in range(MAX_RESTARTS + 1))
    assert pod_kind("no-entrypoint").containers(0, 1, 0)[0].command == (MISSING_ENTRYPOINT,)
    with pytest.raises(InputError, match="unknown pod kind 'nope'; valid: plain"):
        pod_kind("nope")
    assert len(KINDS) == 10


def test_host_network_sandboxes_use_the_nodes_network_and_no_hostname() -> None:
    kind = pod_kind("host-network")
    config = sandbox_config(PATHS, "p", "u", "r", kind)
    options = config.linux.security_context.namespace_options
    assert (options.network, config.hostname) == (api.NODE, "")
    pod = _Pod("p", "u", "runc-bridge", config)
    container = container_config(pod, "app-0", "img", False, 0, kind.containers(0, 1, 0)[0])
    assert container.linux.security_context.namespace_options.network == api.NODE
    failing = sandbox_config(PATHS, "p", "u", "r", pod_kind("runtime-fail"))
    assert failing.hostname == "p"  # what makes runc refuse it
    plain = sandbox_config(PATHS, "p", "u", "r")
    assert (plain.linux.security_context.namespace_options.network, plain.hostname) == (
        api.POD,
        "p",
    )


def test_a_restart_is_a_new_attempt() -> None:
    plan = pod_kind("crash-then-up").containers(0, 1, 0)[0]
    pod = _Pod("p", "u", "runc-bridge", sandbox_config(PATHS, "p", "u", "r"))
    config = container_config(pod, "app-0", "img", False, 2, plan)
    assert config.metadata.attempt == 2 and list(config.args) == []
    assert config.annotations["io.kubernetes.container.restartCount"] == "2"


def test_the_wrapped_and_hooked_handlers_and_their_files() -> None:
    handlers = variant_handlers(PATHS, which)
    assert [h.name for h in handlers] == [
        "runc-wrapped-bridge",
        "runc-hooked-bridge",
        "runc-bridge-nomasq",
    ]
    assert variant_handlers(PATHS, lambda _: None) == []
    files = render_handler_files(PATHS, handlers)
    wrapper, mode = files[str(wrapper_path(PATHS))]
    assert mode == 0o755 and wrapper.rstrip().endswith('exec /usr/sbin/runc "$@"')
    hook, mode = files[str(hook_path(PATHS))]
    assert mode == 0o755 and hook.startswith("#!/bin/sh\n")
    spec_path = next(p for p in files if p.endswith(".json"))
    spec = json.loads(files[spec_path][0])
    assert set(spec["hooks"]) == set(HOOK_STAGES)
    assert all(h[0]["path"] == str(hook_path(PATHS)) for h in spec["hooks"].values())
    doc = tomllib.loads(
        render_containerd_config(PATHS, available_handlers(which) + handlers, "pause:1")
    )
    runtimes = doc["plugins"]["io.containerd.grpc.v1.cri"]["containerd"]["runtimes"]
    assert runtimes["runc-hooked-bridge"]["base_runtime_spec"] == spec_path
    assert runtimes["runc-wrapped-bridge"]["options"]["BinaryName"] == str(wrapper_path(PATHS))
    assert "base_runtime_spec" not in runtimes["runc-bridge"]


def test_the_no_masquerade_handler_has_its_own_bridge_and_no_nat() -> None:
    handlers = [h for h in variant_handlers(PATHS, which) if h.name == "runc-bridge-nomasq"]
    confs = render_cni_confs(PATHS, handlers)
    (text,) = confs.values()
    main = json.loads(text)["plugins"][0]
    assert main["ipMasq"] is False and main["bridge"] == "sp-br1" != BRIDGE_NAME
    assert main["ipam"]["ranges"][0][0]["subnet"] == "10.236.0.0/16"
