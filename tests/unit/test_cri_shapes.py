"""Which CRI methods a message pair fits (startprof.cri.shapes): the first evidence for naming
calls on connections older than the recording (issue 13)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from google.protobuf.message import Message

from startprof.cri import shapes
from startprof.cri.api import METHODS, NON_EMPTY_REPLIES, method_names, path_of
from startprof.cri.proto import api_pb2 as api
from startprof.lab.driver import _Pod, container_config, sandbox_config
from startprof.lab.paths import LabPaths

SANDBOX, CONTAINER = "ab" * 32, "cd" * 32
IMAGE_ID = "sha256:" + "e" * 64


def _messages() -> dict[str, tuple[Message, Message]]:
    """Each pod-start and polling call as the lab's kubelet-like driver builds it, with
    containerd-like replies."""
    sc = sandbox_config(LabPaths(Path("/var/lib/startprof/lab")), "pod-1", "uid-1", "run1")
    cc = container_config(_Pod("pod-1", "uid-1", "runc-bridge", sc), "app", "app:1", False)
    now = time.time_ns()
    status = api.ContainerStatus(
        id=CONTAINER,
        metadata=cc.metadata,
        state=api.CONTAINER_RUNNING,
        created_at=now,
        started_at=now,
        image=cc.image,
        image_ref=IMAGE_ID,
        labels=dict(cc.labels),
        log_path="/logs/app/0.log",
    )
    return {
        "RunPodSandbox": (
            api.RunPodSandboxRequest(config=sc, runtime_handler="runc-bridge"),
            api.RunPodSandboxResponse(pod_sandbox_id=SANDBOX),
        ),
        "PodSandboxStatus": (
            api.PodSandboxStatusRequest(pod_sandbox_id=SANDBOX),
            api.PodSandboxStatusResponse(
                status=api.PodSandboxStatus(
                    id=SANDBOX,
                    metadata=sc.metadata,
                    state=api.SANDBOX_READY,
                    created_at=now,
                    network=api.PodSandboxNetworkStatus(ip="10.234.0.5"),
                    labels=dict(sc.labels),
                    runtime_handler="runc-bridge",
                )
            ),
        ),
        "ImageStatus": (
            api.ImageStatusRequest(image=api.ImageSpec(image="app:1")),
            api.ImageStatusResponse(image=api.Image(id=IMAGE_ID, repo_tags=["app:1"], size=7)),
        ),
        "PullImage": (
            api.PullImageRequest(image=api.ImageSpec(image="app:1"), sandbox_config=sc),
            api.PullImageResponse(image_ref=IMAGE_ID),
        ),
        "CreateContainer": (
            api.CreateContainerRequest(pod_sandbox_id=SANDBOX, config=cc, sandbox_config=sc),
            api.CreateContainerResponse(container_id=CONTAINER),
        ),
        "ContainerStatus": (
            api.ContainerStatusRequest(container_id=CONTAINER),
            api.ContainerStatusResponse(status=status),
        ),
        "ListPodSandbox": (
            api.ListPodSandboxRequest(),
            api.ListPodSandboxResponse(
                items=[api.PodSandbox(id=SANDBOX, metadata=sc.metadata, created_at=now)]
            ),
        ),
        "ListContainers": (
            api.ListContainersRequest(),
            api.ListContainersResponse(
                containers=[
                    api.Container(
                        id=CONTAINER,
                        pod_sandbox_id=SANDBOX,
                        metadata=cc.metadata,
                        image=cc.image,
                        image_ref=IMAGE_ID,
                        state=api.CONTAINER_RUNNING,
                        created_at=now,
                    )
                    for _ in range(3)
                ]
            ),
        ),
        "StopContainer": (
            api.StopContainerRequest(container_id=CONTAINER, timeout=30),
            api.StopContainerResponse(),
        ),
        "Version": (
            api.VersionRequest(version="0.1.0"),
            api.VersionResponse(version="0.1.0", runtime_name="containerd", runtime_version="2.1"),
        ),
        "Status": (
            api.StatusRequest(),
            api.StatusResponse(
                status=api.RuntimeStatus(
                    conditions=[api.RuntimeCondition(type="RuntimeReady", status=True)]
                )
            ),
        ),
    }


@pytest.mark.parametrize("name", sorted(_messages()))
def test_a_pod_start_or_polling_call_fits_exactly_its_own_method(name: str) -> None:
    request, reply = _messages()[name]
    found = shapes.candidates(request.SerializeToString(), reply.SerializeToString())
    assert found == [name]


def test_a_bare_id_with_an_empty_reply_stays_ambiguous() -> None:
    """StartContainer, RemoveContainer and StopPodSandbox all send {1: id} and get {}: only
    ids, kernel effects and the lifecycle tell them apart (analysis/cri_naming.py)."""
    request = api.StartContainerRequest(container_id=CONTAINER).SerializeToString()
    found = set(shapes.candidates(request, b""))
    assert {"StartContainer", "RemoveContainer", "StopPodSandbox", "RemovePodSandbox"} <= found
    assert not found & NON_EMPTY_REPLIES


def test_nothing_fits_a_message_of_unknown_fields() -> None:
    assert shapes.candidates(b"\xf8\x07\x01", None) == []  # field 127, varint


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"\x0a\x00", "an empty singular string is never written by proto3"),
        (b"\x0a\x02ab\x0a\x02cd", "a singular field written twice"),
        (b"\x0a\x03a b", "whitespace in an id"),
        (b"\x0a\x02\xff\xfe", "not UTF-8"),
        (b"\x0b", "a proto2 group"),
        (b"\x0a\x05abc", "a length past the end"),
    ],
)
def test_strict_fit_rejects_what_no_encoder_writes(data: bytes, why: str) -> None:
    assert shapes.fit(data, api.StartContainerRequest.DESCRIPTOR) is None, why


def test_enum_values_must_be_declared() -> None:
    ok = api.ContainerStateValue(state=api.CONTAINER_RUNNING).SerializeToString()
    assert shapes.fit(ok, api.ContainerStateValue.DESCRIPTOR) == 0
    assert shapes.fit(b"\x08\x63", api.ContainerStateValue.DESCRIPTOR) is None


def test_bytes_that_parse_as_structure_beat_opaque_bytes() -> None:
    """A ContainerStatus reply is also a valid ExecSync reply (stdout takes any bytes)."""
    request, reply = _messages()["ContainerStatus"]
    data = reply.SerializeToString()
    assert shapes.fit(data, api.ExecSyncResponse.DESCRIPTOR) == len(data) - 3
    assert shapes.candidates(request.SerializeToString(), data) == ["ContainerStatus"]


def test_parse_keeps_the_allow_listed_fields_and_the_named_id() -> None:
    request, reply = _messages()["CreateContainer"]
    fields = shapes.parse("CreateContainer", request.SerializeToString(), reply.SerializeToString())
    assert fields == {
        "sandbox_id": SANDBOX,
        "container": "app",
        "attrs.image": "app:1",
        "pod": "pod-1",
        "namespace": "startprof",
        "uid": "uid-1",
        "container_id": CONTAINER,
    }
    start = api.StartContainerRequest(container_id=CONTAINER).SerializeToString()
    assert shapes.parse("StopPodSandbox", start, b"") == {"sandbox_id": CONTAINER}
    assert shapes.parse("RunPodSandbox", b"\xff", None) == {}


def test_every_unary_method_is_a_candidate() -> None:
    assert set(shapes.ALL_METHODS) <= set(method_names())
    assert all(path_of(m) in METHODS for m in shapes.ALL_METHODS)
    assert "GetContainerEvents" not in shapes.ALL_METHODS
