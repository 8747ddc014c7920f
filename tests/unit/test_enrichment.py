"""Bundle annotations read when an OCI runtime's create is exec'ed."""

from __future__ import annotations

import json

import pytest

from startprof.enrichment import annotation_event, runtime_create_bundle

BUNDLE = "/run/containerd/io.containerd.runtime.v2.task/k8s.io/abc123"
RUNC_ARGV = [
    "runc", "--root", "/run/containerd/runc/k8s.io", "--log", f"{BUNDLE}/log.json",
    "--log-format", "json", "create", "--bundle", BUNDLE, "--pid-file", f"{BUNDLE}/init.pid",
    "abc123",
]  # fmt: skip
CONFIG = {
    "ociVersion": "1.0.2",
    "process": {"env": ["AWS_SECRET_ACCESS_KEY=never-copy-me"]},
    "annotations": {
        "io.kubernetes.cri.container-type": "sandbox",
        "io.kubernetes.cri.sandbox-id": "abc123",
        "io.kubernetes.cri.sandbox-name": "web-0",
        "io.kubernetes.cri.sandbox-namespace": "startprof",
        "io.kubernetes.cri.sandbox-uid": "9f1c",
        "example.com/token": "secret-annotation",
    },
}


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (RUNC_ARGV, (BUNDLE, "abc123")),
        (["/usr/bin/crun", "create", "-b", "/b", "id1"], ("/b", "id1")),
        (["crun", "create", "--bundle=/b", "id2"], ("/b", "id2")),
        (["runc", "start", "abc123"], None),
        (["runc", "create", "--bundle", "/b"], ("/b", "/b")),
        (["bash", "create", "--bundle", "/b", "x"], None),
        ([], None),
        (["runc", "create", "--bundle"], None),
    ],
)
def test_runtime_create_bundle(argv: list[str], expected: tuple[str, str] | None) -> None:
    assert runtime_create_bundle(argv) == expected


def test_annotation_event_copies_only_the_allow_list() -> None:
    exec_event = {
        "kind": "exec",
        "ts_ns": 5,
        "pid": 42,
        "tid": 42,
        "comm": "containerd-shim",
        "argv": RUNC_ARGV,
    }
    event = annotation_event(exec_event, reader=lambda bundle: json.dumps(CONFIG).encode())
    assert event is not None
    assert event["kind"] == "annotation"
    assert (event["sandbox_id"], event["container_id"]) == ("abc123", "abc123")
    assert (event["pod"], event["namespace"], event["uid"]) == ("web-0", "startprof", "9f1c")
    attrs = json.loads(event["attrs"])
    assert attrs == {"bundle": BUNDLE, "container_type": "sandbox"}
    dumped = json.dumps(event)
    assert "never-copy-me" not in dumped
    assert "secret-annotation" not in dumped


@pytest.mark.parametrize(
    ("raw", "error"),
    [
        (None, "config.json not readable"),
        (b"{bad", "config.json is not valid JSON"),
        (b"[]", "config.json has no annotations"),
        (b'{"annotations": {}}', None),
    ],
)
def test_annotation_event_survives_missing_or_bad_config(
    raw: bytes | None, error: str | None
) -> None:
    exec_event = {"kind": "exec", "ts_ns": 5, "pid": 42, "argv": RUNC_ARGV}
    event = annotation_event(exec_event, reader=lambda bundle: raw)
    assert event is not None
    assert event["container_id"] == "abc123"
    assert json.loads(event["attrs"]).get("error") == error


def test_non_runtime_exec_gives_nothing() -> None:
    assert annotation_event({"kind": "exec", "argv": ["/usr/lib/cni/bridge"]}) is None
