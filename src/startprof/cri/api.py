"""The CRI's vocabulary: method paths and their message types, gRPC status names, and which
fields of each message startprof keeps.

Everything is derived from the committed ``proto/api.proto`` (the whole ``runtime.v1`` API), so
a method's wire format is declared once. containerd 1.6 also serves ``runtime.v1alpha2``, whose
field numbers agree with ``v1`` for every field read here: those paths map to the same classes.
"""

from __future__ import annotations

from typing import Final

from google.protobuf import message_factory
from google.protobuf.message import Message

from startprof.cri.proto import api_pb2

V1: Final = "runtime.v1"
V1ALPHA2: Final = "runtime.v1alpha2"

GRPC_STATUS_NAMES: Final[dict[int, str]] = {
    0: "OK",
    1: "CANCELLED",
    2: "UNKNOWN",
    3: "INVALID_ARGUMENT",
    4: "DEADLINE_EXCEEDED",
    5: "NOT_FOUND",
    6: "ALREADY_EXISTS",
    7: "PERMISSION_DENIED",
    8: "RESOURCE_EXHAUSTED",
    9: "FAILED_PRECONDITION",
    10: "ABORTED",
    11: "OUT_OF_RANGE",
    12: "UNIMPLEMENTED",
    13: "INTERNAL",
    14: "UNAVAILABLE",
    15: "DATA_LOSS",
    16: "UNAUTHENTICATED",
}
STATUS_FAILED_UNKNOWN_CODE: Final = "ERROR"
"""``grpc_status`` of a call that failed (no reply message) whose code cannot be read: its
``grpc-status`` trailer is an HPACK entry added before the recording began."""

MessagePair = tuple[type[Message], type[Message]]


def _methods() -> tuple[dict[str, MessagePair], dict[str, str]]:
    classes: dict[str, MessagePair] = {}
    canonical: dict[str, str] = {}
    for service in api_pb2.DESCRIPTOR.services_by_name.values():
        for method in service.methods:
            pair = (
                message_factory.GetMessageClass(method.input_type),
                message_factory.GetMessageClass(method.output_type),
            )
            v1 = f"/{V1}.{service.name}/{method.name}"
            classes[v1] = pair
            classes[f"/{V1ALPHA2}.{service.name}/{method.name}"] = pair
            canonical[method.name] = v1
    return classes, canonical


METHODS, _PATH_OF = _methods()
"""``:path`` -> (request class, response class), for ``runtime.v1`` and ``runtime.v1alpha2``."""

STREAMING: Final = frozenset(
    f"/{V1}.{s.name}/{m.name}"
    for s in api_pb2.DESCRIPTOR.services_by_name.values()
    for m in s.methods
    if m.client_streaming or m.server_streaming
)


def short_method(path: str) -> str:
    """``/runtime.v1.RuntimeService/RunPodSandbox`` -> ``RunPodSandbox``."""
    return path.rsplit("/", 1)[-1]


def path_of(name: str) -> str:
    """``RunPodSandbox`` -> ``/runtime.v1.RuntimeService/RunPodSandbox``."""
    return _PATH_OF[name]


def method_names() -> list[str]:
    """Every ``runtime.v1`` method name, in the proto's order."""
    return list(_PATH_OF)


# --- which CRI fields to keep -------------------------------------------------------------------
# Field paths into the request/response message, by method name (the part after the last "/").
# Target "attrs.<key>" goes into the JSON attrs; any other target is an event column.
# Never list credentials: PullImageRequest.auth holds registry passwords.
Fields = tuple[tuple[str, str], ...]

_SANDBOX_META: Final[Fields] = (
    ("pod", "sandbox_config.metadata.name"),
    ("namespace", "sandbox_config.metadata.namespace"),
    ("uid", "sandbox_config.metadata.uid"),
)
REQUEST_FIELDS: Final[dict[str, Fields]] = {
    "RunPodSandbox": (
        ("pod", "config.metadata.name"),
        ("namespace", "config.metadata.namespace"),
        ("uid", "config.metadata.uid"),
        ("attrs.runtime_handler", "runtime_handler"),
    ),
    "CreateContainer": (
        ("sandbox_id", "pod_sandbox_id"),
        ("container", "config.metadata.name"),
        ("attrs.image", "config.image.image"),
        *_SANDBOX_META,
    ),
    "StartContainer": (("container_id", "container_id"),),
    "StopContainer": (("container_id", "container_id"),),
    "RemoveContainer": (("container_id", "container_id"),),
    "ContainerStatus": (("container_id", "container_id"),),
    "StopPodSandbox": (("sandbox_id", "pod_sandbox_id"),),
    "RemovePodSandbox": (("sandbox_id", "pod_sandbox_id"),),
    "PodSandboxStatus": (("sandbox_id", "pod_sandbox_id"),),
    "PullImage": (("attrs.image", "image.image"), *_SANDBOX_META),
    "ImageStatus": (("attrs.image", "image.image"),),
    "RemoveImage": (("attrs.image", "image.image"),),
}
RESPONSE_FIELDS: Final[dict[str, Fields]] = {
    "Version": (
        ("attrs.runtime_name", "runtime_name"),
        ("attrs.runtime_version", "runtime_version"),
    ),
    "RunPodSandbox": (("sandbox_id", "pod_sandbox_id"),),
    "CreateContainer": (("container_id", "container_id"),),
    "ContainerStatus": (("container", "status.metadata.name"),),
    "PodSandboxStatus": (
        ("pod", "status.metadata.name"),
        ("namespace", "status.metadata.namespace"),
        ("uid", "status.metadata.uid"),
        ("attrs.pod_ip", "status.network.ip"),
    ),
    "PullImage": (("attrs.image_ref", "image_ref"),),
    "ImageStatus": (("attrs.image_id", "image.id"),),
}

NON_EMPTY_REPLIES: Final = frozenset(
    {
        "Version",
        "RunPodSandbox",
        "PodSandboxStatus",
        "CreateContainer",
        "ContainerStatus",
        "ContainerStats",
        "PodSandboxStats",
        "Status",
        "Exec",
        "Attach",
        "PortForward",
        "PullImage",
        "ImageFsInfo",
        "RuntimeConfig",
    }
)
"""Methods whose successful reply always carries a field (an id, a status, a URL, a version):
an empty reply message rules them out when a call's method is inferred from its shape."""

EMPTY_REQUESTS: Final = frozenset(
    {
        "Version",
        "Status",
        "ListPodSandbox",
        "ListContainers",
        "ListImages",
        "ImageFsInfo",
        "ListContainerStats",
        "ListPodSandboxStats",
        "ListMetricDescriptors",
        "ListPodSandboxMetrics",
        "RuntimeConfig",
    }
)
"""Methods whose request may be empty (lists without a filter, status calls). Every other
request names what it acts on (an id, an image, a config), so an empty one rules it out."""
