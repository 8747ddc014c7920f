"""The real `startprof doctor --json` on this machine: every required check must pass."""

from __future__ import annotations

import json
import subprocess
import sys


def test_doctor_json_all_required_ok() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "startprof", "doctor", "--json"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    doc = json.loads(proc.stdout)
    failed = [c for c in doc["checks"] if c["required"] and c["status"] != "ok"]
    assert failed == []
    assert doc["ok"] is True
    assert proc.returncode == 0, proc.stderr
    names = {c["name"] for c in doc["checks"]}
    assert {"privileges", "kernel", "bpf syscall", "tracefs", "tracepoints", "btf", "bcc"} <= names
    assert "cri socket" in names
    # the machine's own shell: the host's pid namespace, and the checks the agent makes
    agent = {c["name"]: c["status"] for c in doc["checks"] if c["name"].startswith("agent: ")}
    assert agent["agent: host pid namespace"] == "ok"
    assert set(agent) == {"agent: host pid namespace", "agent: containerd on the socket"}
