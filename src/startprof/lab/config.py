"""What the lab's containerd is told: its config.toml and one CNI network list per network.

Pure functions of :class:`LabPaths` and the chosen handlers, so rendering is unit-tested
without root. The values that matter on these machines are explained in docs/lab.md and
docs/stack.md; each one carries its reason below.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from startprof.lab.paths import LabPaths

CNI_BIN_DIR = "/usr/lib/cni"
CNI_PLUGINS_NEEDED = ("bridge", "ptp", "host-local", "loopback", "portmap")
# The cgroupfs parent of every lab pod: /<LAB_CGROUP>/pod<uid> in each hierarchy. containerd
# never removes pod cgroups (that is the kubelet's job), so the driver and `down` rmdir them.
LAB_CGROUP = "startprof-lab"
# The CRI namespace the kubelet uses; ctr must import into it for CRI to see the images.
K8S_NAMESPACE = "k8s.io"
BRIDGE_NAME = "sp-br0"


@dataclass(frozen=True)
class Runtime:
    name: str  # runc, crun
    binary: str


@dataclass(frozen=True)
class Network:
    """A CNI network of the lab. Names and subnets are picked to be unlikely on a real node."""

    name: str  # short name used in handler names: bridge, ptp
    cni_name: str  # CNI network name; also host-local's lease dir and CNI cache key
    subnet: str
    plugin: str  # main CNI plugin type
    ip_masq: bool = True
    bridge: str = BRIDGE_NAME  # the bridge plugin's bridge: one per subnet (its gateway address)

    def conflist(self, paths: LabPaths) -> dict[str, object]:
        ipam = {
            "type": "host-local",
            "ranges": [[{"subnet": self.subnet}]],
            "routes": [{"dst": "0.0.0.0/0"}],
            # Leases live in the lab dir, not /var/lib/cni/networks, so down can drop them.
            "dataDir": str(paths.ipam_dir),
        }
        # ipMasq as in containerd's default network and most clusters': the plugin's iptables
        # work (a per-pod CNI-* chain in nat, ~9 iptables execs) is part of a real pod start.
        # The pods send nothing beyond the lab's bridge, so the rules never match traffic.
        main: dict[str, object] = {"type": self.plugin, "ipMasq": self.ip_masq, "ipam": ipam}
        if self.plugin == "bridge":
            main.update(bridge=self.bridge, isGateway=True, hairpinMode=True)
        return {
            "cniVersion": "0.4.0",
            "name": self.cni_name,
            # portmap as in containerd's and most clusters' default network: its ADD/DEL are
            # part of a real pod start even when the pod maps no port.
            "plugins": [main, {"type": "portmap", "capabilities": {"portMappings": True}}],
        }


NETWORKS: tuple[Network, ...] = (
    Network("bridge", "startprof-bridge", "10.234.0.0/16", "bridge"),
    Network("ptp", "startprof-ptp", "10.235.0.0/16", "ptp"),
)
RUNTIMES: tuple[Runtime, ...] = (Runtime("runc", "runc"), Runtime("crun", "crun"))
# The bridge network without masquerade (no per-pod nat chain, fewer iptables execs), for
# measurements that compare the two (benchmarks/probe_overhead.py --config bridge-nomasq). Not
# one of NETWORKS, so `startprof bench` keeps its bridge x ptp matrix; handlers.py adds it.
BRIDGE_NOMASQ = Network(
    "bridge-nomasq",
    "startprof-bridge-nomasq",
    "10.236.0.0/16",
    "bridge",
    ip_masq=False,
    bridge="sp-br1",
)
LAB_NETWORKS: tuple[Network, ...] = (*NETWORKS, BRIDGE_NOMASQ)
"""Every network some lab handler may use: what clean-up looks for."""
LAB_BRIDGES: tuple[str, ...] = tuple(
    dict.fromkeys(n.bridge for n in LAB_NETWORKS if n.plugin == "bridge")
)


@dataclass(frozen=True)
class Handler:
    """A CRI runtime handler ``<runtime>-<network>``: one OCI runtime with one CNI network.

    A ``variant`` (``startprof.lab.handlers``) is named ``<runtime>-<variant>-<network>``: a
    wrapper binary that execs the runtime (``wraps``), or a ``base_runtime_spec`` with hooks.
    """

    runtime: Runtime
    binary: str  # absolute path
    network: Network
    variant: str | None = None
    wraps: str | None = None
    base_runtime_spec: str | None = None

    @property
    def name(self) -> str:
        if self.variant:
            return f"{self.runtime.name}-{self.variant}-{self.network.name}"
        return f"{self.runtime.name}-{self.network.name}"

    def runtime_options(self) -> dict[str, object]:
        """Keys of the handler's runtime table beyond the ones every handler has."""
        return {"base_runtime_spec": self.base_runtime_spec} if self.base_runtime_spec else {}


def available_handlers(which: Callable[[str], str | None] = shutil.which) -> list[Handler]:
    """Every runtime found on PATH (plus /usr/sbin, where Debian puts runc) x every network."""
    handlers = []
    for runtime in RUNTIMES:
        binary = which(runtime.binary) or which(f"/usr/sbin/{runtime.binary}")
        if binary:
            handlers += [Handler(runtime, binary, net) for net in NETWORKS]
    return handlers


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a valid TOML basic string
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"no TOML form for {value!r}")


def _table(name: str, values: dict[str, object]) -> list[str]:
    return [f"[{name}]", *(f"  {k} = {_toml_value(v)}" for k, v in values.items()), ""]


def _runtime_tables(plugin: str, paths: LabPaths, handlers: Sequence[Handler]) -> list[str]:
    """One runtime table per handler under the CRI plugin that holds runtimes (the same keys
    in config versions 2 and 3)."""
    lines: list[str] = []
    for h in handlers:
        table = f"{plugin}.containerd.runtimes.{json.dumps(h.name)}"
        lines += _table(
            table,
            {
                "runtime_type": "io.containerd.runc.v2",
                # Per-handler CNI networks: runtime x CNI combinations side by side.
                "cni_conf_dir": str(paths.cni_conf_dir(h.network.name)),
                "cni_max_conf_num": 1,
                **h.runtime_options(),
            },
        )
        lines += _table(
            f"{table}.options",
            {
                "BinaryName": h.binary,
                # Runtime state in the lab, not /run/containerd/runc or /run/crun.
                "Root": str(paths.runtime_root / h.runtime.name),
                # cgroupfs driver: there is no systemd on these machines.
                "SystemdCgroup": False,
            },
        )
    return lines


def render_containerd_config(
    paths: LabPaths, handlers: Sequence[Handler], sandbox_image: str, version: int = 2
) -> str:
    """containerd config keeping every path of the lab under ``paths.root``: version 2 for
    containerd 1.6 and 1.7, version 3 for 2.x (docs/containerd.md lists the keys of each)."""
    if not handlers:
        raise ValueError("the lab needs at least one runtime handler")
    if version == 3:
        return _render_v3(paths, handlers, sandbox_image)
    if version != 2:
        raise ValueError(f"no lab config for containerd config version {version}")
    cri = 'plugins."io.containerd.grpc.v1.cri"'
    lines = [
        "# Written by `startprof lab up`; rewritten on every up. See docs/lab.md.",
        "version = 2",
        f"root = {_toml_value(str(paths.containerd_root))}",
        f"state = {_toml_value(str(paths.state_dir))}",
        # Fail at start, not at the first pod, when the CRI plugin cannot load.
        'required_plugins = ["io.containerd.grpc.v1.cri"]',
        # Snapshotters that would probe the host's disks or need tools not installed here.
        "disabled_plugins = "
        + _toml_value(
            [
                "io.containerd.snapshotter.v1.aufs",
                "io.containerd.snapshotter.v1.btrfs",
                "io.containerd.snapshotter.v1.devmapper",
                "io.containerd.snapshotter.v1.zfs",
            ]
        ),
        "",
        *_table(
            "grpc",
            {"address": str(paths.socket), "uid": 0, "gid": 0},
        ),
        *_table("ttrpc", {"address": f"{paths.socket}.ttrpc"}),
        # The default /opt/containerd would be created on the host.
        *_table('plugins."io.containerd.internal.v1.opt"', {"path": str(paths.root / "opt")}),
        *_table(
            cri,
            {
                "sandbox_image": sandbox_image,
                # The VM's bounding set lacks CAP_SYS_RESOURCE: without this runc cannot write
                # oom_score_adj and every RunPodSandbox fails.
                "restrict_oom_score_adj": True,
                "disable_apparmor": True,
                "disable_hugetlb_controller": True,
                "tolerate_missing_hugetlb_controller": True,
                "systemd_cgroup": False,
                "enable_selinux": False,
                # netns files under the lab's state dir instead of /var/run/netns.
                "netns_mounts_under_state_dir": True,
                # Port 0: never collide with a node containerd's streaming server (10010).
                "stream_server_address": "127.0.0.1",
                "stream_server_port": "0",
                "max_concurrent_downloads": 3,
            },
        ),
        *_table(
            f"{cri}.containerd",
            {
                "snapshotter": "overlayfs",
                "default_runtime_name": handlers[0].name,
                "discard_unpacked_layers": False,
            },
        ),
        *_table(f"{cri}.registry", {"config_path": str(paths.registry_hosts)}),
    ]
    lines += _runtime_tables(cri, paths, handlers)
    lines += _table(
        f"{cri}.cni",
        {
            "bin_dir": CNI_BIN_DIR,
            "conf_dir": str(paths.cni_conf_dir(handlers[0].network.name)),
            "max_conf_num": 1,
        },
    )
    return "\n".join(lines)


def _render_v3(paths: LabPaths, handlers: Sequence[Handler], sandbox_image: str) -> str:
    """containerd 2.x config (version 3): the CRI plugin is split into ``cri.v1.images`` and
    ``cri.v1.runtime``; the values and their reasons are those of version 2 above."""
    images = "plugins.'io.containerd.cri.v1.images'"
    runtime = "plugins.'io.containerd.cri.v1.runtime'"
    lines = [
        "# Written by `startprof lab up`; rewritten on every up. See docs/containerd.md.",
        "version = 3",
        f"root = {_toml_value(str(paths.containerd_root))}",
        f"state = {_toml_value(str(paths.state_dir))}",
        'required_plugins = ["io.containerd.grpc.v1.cri"]',
        "disabled_plugins = "
        + _toml_value(
            [
                "io.containerd.snapshotter.v1.btrfs",
                "io.containerd.snapshotter.v1.devmapper",
                "io.containerd.snapshotter.v1.zfs",
            ]
        ),
        "",
        *_table("grpc", {"address": str(paths.socket), "uid": 0, "gid": 0}),
        *_table("ttrpc", {"address": f"{paths.socket}.ttrpc"}),
        # The default /opt/containerd would be created on the host.
        *_table("plugins.'io.containerd.internal.v1.opt'", {"path": str(paths.root / "opt")}),
        # NRI is on by default in 2.x; its socket (default /var/run/nri/nri.sock) goes in the
        # lab. No NRI plugin connects in the lab, so it changes nothing in a pod start.
        *_table(
            "plugins.'io.containerd.nri.v1.nri'", {"socket_path": str(paths.run_dir / "nri.sock")}
        ),
        *_table(
            "plugins.'io.containerd.grpc.v1.cri'",
            {"stream_server_address": "127.0.0.1", "stream_server_port": "0"},
        ),
        *_table(
            images,
            {
                "snapshotter": "overlayfs",
                "discard_unpacked_layers": False,
                "max_concurrent_downloads": 3,
            },
        ),
        *_table(f"{images}.pinned_images", {"sandbox": sandbox_image}),
        # 2.x resolves localhost over HTTPS (1.x used plain HTTP): the lab registry's hosts.toml
        *_table(f"{images}.registry", {"config_path": str(paths.registry_hosts)}),
        *_table(
            runtime,
            {
                "restrict_oom_score_adj": True,
                "disable_apparmor": True,
                "disable_hugetlb_controller": True,
                "tolerate_missing_hugetlb_controller": True,
                "enable_selinux": False,
                "netns_mounts_under_state_dir": True,
            },
        ),
        *_table(f"{runtime}.containerd", {"default_runtime_name": handlers[0].name}),
    ]
    lines += _runtime_tables(runtime, paths, handlers)
    lines += _table(
        f"{runtime}.cni",
        {
            "bin_dirs": [CNI_BIN_DIR],
            "conf_dir": str(paths.cni_conf_dir(handlers[0].network.name)),
            "max_conf_num": 1,
        },
    )
    return "\n".join(lines)


def render_cni_confs(paths: LabPaths, handlers: Sequence[Handler]) -> dict[str, str]:
    """File path -> JSON text of the conflist of every network some handler uses."""
    out: dict[str, str] = {}
    for net in {h.network for h in handlers}:
        path = paths.cni_conf_dir(net.name) / f"10-{net.cni_name}.conflist"
        out[str(path)] = json.dumps(net.conflist(paths), indent=2) + "\n"
    return out
