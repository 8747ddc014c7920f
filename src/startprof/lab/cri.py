"""CRI ``runtime.v1`` over gRPC on a containerd socket: a small typed client.

The stubs are written by hand instead of generated (``*_pb2_grpc.py``) so that every call is
typed end to end and the module has no code that mypy cannot check. Each method sends exactly
one unary RPC; timing and ground truth are the caller's business (see ``lab.driver``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import grpc
from google.protobuf.message import Message

from startprof.cri.api import path_of, short_method
from startprof.cri.proto import api_pb2 as api
from startprof.errors import CriError

# The paths the lab calls (the vocabulary of every method is startprof.cri.api).
VERSION = path_of("Version")
RUN_POD_SANDBOX = path_of("RunPodSandbox")
STOP_POD_SANDBOX = path_of("StopPodSandbox")
REMOVE_POD_SANDBOX = path_of("RemovePodSandbox")
POD_SANDBOX_STATUS = path_of("PodSandboxStatus")
LIST_POD_SANDBOX = path_of("ListPodSandbox")
CREATE_CONTAINER = path_of("CreateContainer")
START_CONTAINER = path_of("StartContainer")
STOP_CONTAINER = path_of("StopContainer")
REMOVE_CONTAINER = path_of("RemoveContainer")
LIST_CONTAINERS = path_of("ListContainers")
CONTAINER_STATUS = path_of("ContainerStatus")
LIST_IMAGES = path_of("ListImages")
IMAGE_STATUS = path_of("ImageStatus")
PULL_IMAGE = path_of("PullImage")
REMOVE_IMAGE = path_of("RemoveImage")

DEFAULT_TIMEOUT = 60.0
# A cold pull or a pod stop (CNI DEL plus a grace period) can take much longer than a status call.
SLOW_TIMEOUT = 180.0

_Resp = TypeVar("_Resp", bound=Message)


def status_name(exc: BaseException) -> str:
    """The gRPC status name of a failed call (``UNAVAILABLE``), or the exception's class name."""
    if isinstance(exc, grpc.RpcError) and callable(getattr(exc, "code", None)):
        code = exc.code()
        return str(getattr(code, "name", code))
    if isinstance(exc, CriCallError):
        return exc.grpc_status
    return type(exc).__name__


def _details(exc: grpc.RpcError) -> str:
    details = exc.details() if callable(getattr(exc, "details", None)) else None
    return " ".join(str(details or "").split())


class CriCallError(CriError):
    """One CRI call failed; carries the gRPC status name for the ground truth."""

    def __init__(self, method: str, grpc_status: str, details: str) -> None:
        super().__init__(f"CRI {short_method(method)} failed: {grpc_status}: {details}")
        self.method = method
        self.grpc_status = grpc_status
        self.details = details


class CriClient:
    """A gRPC channel to one CRI socket with one typed method per CRI call used by the lab.

    Thread-safe: gRPC channels multiplex concurrent calls, so one client serves all the
    driver's worker threads, like the kubelet's single connection.
    """

    def __init__(self, socket_path: str, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.socket_path = socket_path
        self.timeout = timeout
        self._channel: Any = grpc.insecure_channel(
            f"unix://{socket_path}",
            # CRI replies (ListContainers on a busy node) can exceed gRPC's 4 MiB default;
            # the kubelet raises the limit to 16 MiB for the same reason.
            options=[("grpc.max_receive_message_length", 16 * 1024 * 1024)],
        )
        self._stubs: dict[str, Callable[..., Any]] = {}

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> CriClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def call(
        self,
        method: str,
        request: Message,
        response_type: type[_Resp],
        timeout: float | None = None,
    ) -> _Resp:
        """Send one unary CRI call; raise :class:`CriCallError` with the gRPC status on failure."""
        stub = self._stubs.get(method)
        if stub is None:
            stub = self._channel.unary_unary(
                method,
                request_serializer=type(request).SerializeToString,
                response_deserializer=response_type.FromString,
            )
            self._stubs[method] = stub
        try:
            reply = stub(request, timeout=timeout or self.timeout)
        except grpc.RpcError as exc:
            raise CriCallError(method, status_name(exc), _details(exc)) from exc
        assert isinstance(reply, response_type)
        return reply

    # RuntimeService

    def version(self, timeout: float | None = None) -> api.VersionResponse:
        return self.call(VERSION, api.VersionRequest(version="v1"), api.VersionResponse, timeout)

    def run_pod_sandbox(
        self, config: api.PodSandboxConfig, runtime_handler: str
    ) -> api.RunPodSandboxResponse:
        request = api.RunPodSandboxRequest(config=config, runtime_handler=runtime_handler)
        return self.call(RUN_POD_SANDBOX, request, api.RunPodSandboxResponse, SLOW_TIMEOUT)

    def stop_pod_sandbox(self, sandbox_id: str) -> api.StopPodSandboxResponse:
        request = api.StopPodSandboxRequest(pod_sandbox_id=sandbox_id)
        return self.call(STOP_POD_SANDBOX, request, api.StopPodSandboxResponse, SLOW_TIMEOUT)

    def remove_pod_sandbox(self, sandbox_id: str) -> api.RemovePodSandboxResponse:
        request = api.RemovePodSandboxRequest(pod_sandbox_id=sandbox_id)
        return self.call(REMOVE_POD_SANDBOX, request, api.RemovePodSandboxResponse, SLOW_TIMEOUT)

    def pod_sandbox_status(self, sandbox_id: str) -> api.PodSandboxStatusResponse:
        request = api.PodSandboxStatusRequest(pod_sandbox_id=sandbox_id)
        return self.call(POD_SANDBOX_STATUS, request, api.PodSandboxStatusResponse)

    def list_pod_sandbox(
        self, label_selector: dict[str, str] | None = None
    ) -> list[api.PodSandbox]:
        request = api.ListPodSandboxRequest(
            filter=api.PodSandboxFilter(label_selector=label_selector or {})
        )
        return list(self.call(LIST_POD_SANDBOX, request, api.ListPodSandboxResponse).items)

    def create_container(
        self,
        sandbox_id: str,
        config: api.ContainerConfig,
        sandbox_config: api.PodSandboxConfig,
    ) -> api.CreateContainerResponse:
        request = api.CreateContainerRequest(
            pod_sandbox_id=sandbox_id, config=config, sandbox_config=sandbox_config
        )
        return self.call(CREATE_CONTAINER, request, api.CreateContainerResponse)

    def start_container(self, container_id: str) -> api.StartContainerResponse:
        request = api.StartContainerRequest(container_id=container_id)
        return self.call(START_CONTAINER, request, api.StartContainerResponse)

    def stop_container(
        self, container_id: str, grace_seconds: int = 10
    ) -> api.StopContainerResponse:
        request = api.StopContainerRequest(container_id=container_id, timeout=grace_seconds)
        return self.call(STOP_CONTAINER, request, api.StopContainerResponse, SLOW_TIMEOUT)

    def remove_container(self, container_id: str) -> api.RemoveContainerResponse:
        request = api.RemoveContainerRequest(container_id=container_id)
        return self.call(REMOVE_CONTAINER, request, api.RemoveContainerResponse)

    def container_status(self, container_id: str) -> api.ContainerStatusResponse:
        request = api.ContainerStatusRequest(container_id=container_id)
        return self.call(CONTAINER_STATUS, request, api.ContainerStatusResponse)

    def list_containers(self, sandbox_id: str = "") -> list[api.Container]:
        request = api.ListContainersRequest(filter=api.ContainerFilter(pod_sandbox_id=sandbox_id))
        return list(self.call(LIST_CONTAINERS, request, api.ListContainersResponse).containers)

    # ImageService

    def list_images(self) -> list[api.Image]:
        return list(self.call(LIST_IMAGES, api.ListImagesRequest(), api.ListImagesResponse).images)

    def image_status(self, image: str) -> api.ImageStatusResponse:
        request = api.ImageStatusRequest(image=api.ImageSpec(image=image))
        return self.call(IMAGE_STATUS, request, api.ImageStatusResponse)

    def pull_image(
        self, image: str, sandbox_config: api.PodSandboxConfig | None = None
    ) -> api.PullImageResponse:
        request = api.PullImageRequest(
            image=api.ImageSpec(image=image), sandbox_config=sandbox_config
        )
        return self.call(PULL_IMAGE, request, api.PullImageResponse, SLOW_TIMEOUT)

    def remove_image(self, image: str) -> api.RemoveImageResponse:
        request = api.RemoveImageRequest(image=api.ImageSpec(image=image))
        return self.call(REMOVE_IMAGE, request, api.RemoveImageResponse)


def cri_version(socket_path: str, timeout: float = 3.0) -> str:
    """``runtime_name runtime_version (CRI runtime_api_version)`` of the runtime behind a socket."""
    with CriClient(socket_path, timeout=timeout) as client:
        try:
            reply = client.version()
        except CriCallError as exc:
            raise CriError(f"CRI Version on {socket_path} failed: {exc.grpc_status}") from exc
    return f"{reply.runtime_name} {reply.runtime_version} (CRI {reply.runtime_api_version})"
