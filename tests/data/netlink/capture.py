"""Capture the netlink records of real runs for the decoder tests (run as root from the repo:
``.venv/bin/python tests/data/netlink/capture.py``).

Everything happens in network namespaces this script creates and deletes (sp-cap-*); the CNI
bridge plugin runs inside one of them so its bridge never touches the host's namespace.
Each scenario is stored as ``<name>.rec``: the raw ring-buffer records (header included) of
SP_NL_SEND and SP_NL_RECV, each prefixed by its length as a little-endian u32.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from startprof.probes.abi import RecordType
from startprof.probes.session import ProbeSession

HERE = Path(__file__).parent
NS, PODNS, OTHERNS = "sp-cap-a", "sp-cap-pod", "sp-cap-b"

BRIDGE_CONF = {
    "cniVersion": "0.4.0",
    "name": "spcap",
    "type": "bridge",
    "bridge": "spcap0",
    "isGateway": True,
    "ipMasq": False,
    "ipam": {"type": "host-local", "subnet": "10.77.0.0/24", "routes": [{"dst": "0.0.0.0/0"}]},
}

SCENARIOS: dict[str, str] = {
    "ip_link_add_veth": f"ip -n {NS} link add sp-va type veth peer name sp-vb",
    "ip_addr_add": f"ip -n {NS} addr add 10.99.0.1/24 dev sp-va",
    "ip_link_set_up": f"ip -n {NS} link set sp-va up",
    "ip_route_add": f"ip -n {NS} route add 10.98.0.0/16 via 10.99.0.2",
    "ip_link_set_netns": f"ip -n {NS} link set sp-vb netns {OTHERNS}",
    "ip_link_add_exists": f"ip -n {NS} link add sp-va type veth peer name sp-vc || true",
    "iptables_nat_new_chain": f"ip netns exec {NS} iptables -t nat -N SP-CAPTURE",
}


def record(
    session: ProbeSession, script: str, env: dict[str, str] | None = None, stdin: bytes = b""
) -> list[bytes]:
    proc = subprocess.Popen(["/bin/sh", "-c", f"read go; {script}"], stdin=subprocess.PIPE, env=env)
    session.follow(proc.pid)
    assert proc.stdin is not None
    proc.stdin.write(b"go\n" + stdin)
    proc.stdin.close()
    proc.wait()
    time.sleep(0.05)
    raws = session._drain_raw(100)
    return [
        r
        for r in raws
        if int.from_bytes(r[:4], "little") in (RecordType.NL_SEND, RecordType.NL_RECV)
    ]


def save(name: str, raws: list[bytes]) -> None:
    with open(HERE / f"{name}.rec", "wb") as f:
        for raw in raws:
            f.write(struct.pack("<I", len(raw)) + raw)
    print(f"{name}: {len(raws)} records", file=sys.stderr)


def main() -> None:
    for ns in (NS, PODNS, OTHERNS):
        subprocess.run(["ip", "netns", "add", ns], check=True)
    session = ProbeSession(probes=("exec", "netlink"))
    session.start()
    try:
        for name, script in SCENARIOS.items():
            save(name, record(session, script))
        with tempfile.TemporaryDirectory(prefix="sp-cap-") as tmp:
            conf = dict(BRIDGE_CONF)
            conf["ipam"] = dict(BRIDGE_CONF["ipam"], dataDir=tmp)  # type: ignore[arg-type]
            env = {
                "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
                "CNI_CONTAINERID": "spcapture0123",
                "CNI_NETNS": f"/var/run/netns/{PODNS}",
                "CNI_IFNAME": "eth0",
                "CNI_PATH": "/usr/lib/cni",
            }
            for command in ("ADD", "DEL"):
                save(
                    f"cni_bridge_{command.lower()}",
                    record(
                        session,
                        f"CNI_COMMAND={command} ip netns exec {NS} /usr/lib/cni/bridge >/dev/null",
                        env=env,
                        stdin=json.dumps(conf).encode(),
                    ),
                )
    finally:
        session.close()
        for ns in (NS, PODNS, OTHERNS):
            subprocess.run(["ip", "netns", "del", ns], check=False)


if __name__ == "__main__":
    if os.geteuid() != 0:
        sys.exit("run as root")
    main()
