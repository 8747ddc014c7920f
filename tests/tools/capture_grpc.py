"""Record the bytes of gRPC connections on a Unix socket as ``cri_data`` events (JSONL).

A recording proxy: clients connect to ``--listen``, every connection is forwarded to
``--upstream``, and every chunk read from either side is written as one JSON line in the shape
of the cri probe's events (``data`` base64-encoded), ``cri_accept`` first. ``in`` is what the
upstream server reads (client -> server), ``out`` what it writes. Timestamps are
``time.monotonic_ns()``, the clock of ``bpf_ktime_get_ns()``.

Capture a real containerd (point the client, e.g. ``startprof lab run`` with
``STARTPROF_CRI_SOCKET=/tmp/x.sock``, at the proxy; stop with Ctrl-C)::

    python tests/tools/capture_grpc.py --listen /tmp/x.sock \\
        --upstream /run/containerd/containerd.sock --out tests/data/grpc/containerd-pod.jsonl

Regenerate the unit tests' captures (a grpcio client talking to the fake CRI server below)::

    python tests/tools/capture_grpc.py --generate tests/data/grpc
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from pathlib import Path
from typing import IO, Any

CHUNK = 65_536
UNKNOWN_METHOD = "/runtime.v1.RuntimeService/ListMetricDescriptors"


def load_capture(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The events of a capture file, ``data`` decoded to bytes."""
    events = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                event = json.loads(line)
                if event.get("data") is not None:
                    event["data"] = base64.b64decode(event["data"])
                events.append(event)
    return events


class CaptureProxy:
    """The recording proxy; ``run()`` in the foreground, or ``start()``/``stop()`` in a thread."""

    def __init__(self, listen: str, upstream: str, out: IO[str]) -> None:
        self.listen = listen
        self.upstream = upstream
        self._out = out
        self._next_conn = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopped: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()

    def _write(self, event: dict[str, Any]) -> None:
        self._out.write(json.dumps(event) + "\n")
        self._out.flush()

    async def _pump(
        self,
        conn_id: int,
        direction: str,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        try:
            while data := await reader.read(CHUNK):
                self._write(
                    {
                        "kind": "cri_data",
                        "ts_ns": time.monotonic_ns(),
                        "pid": os.getpid(),
                        "tid": threading.get_native_id(),
                        "conn_id": conn_id,
                        "direction": direction,
                        "data": base64.b64encode(data).decode("ascii"),
                        "attrs": None,
                    }
                )
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            with contextlib.suppress(OSError, RuntimeError):
                writer.close()

    async def _serve_one(
        self, c_reader: asyncio.StreamReader, c_writer: asyncio.StreamWriter
    ) -> None:
        self._next_conn += 1
        conn_id = self._next_conn
        self._write(
            {
                "kind": "cri_accept",
                "ts_ns": time.monotonic_ns(),
                "pid": os.getpid(),
                "conn_id": conn_id,
            }
        )
        try:
            u_reader, u_writer = await asyncio.open_unix_connection(self.upstream)
        except OSError as exc:
            print(f"capture_grpc: cannot reach {self.upstream}: {exc}", file=sys.stderr)
            c_writer.close()
            return
        await asyncio.gather(
            self._pump(conn_id, "in", c_reader, u_writer),
            self._pump(conn_id, "out", u_reader, c_writer),
        )

    async def _main(self) -> None:
        self._stopped = asyncio.Event()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.listen)
        server = await asyncio.start_unix_server(self._serve_one, path=self.listen)
        self._loop = asyncio.get_running_loop()
        self._ready.set()
        async with server:
            await self._stopped.wait()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.listen)

    def run(self) -> None:
        asyncio.run(self._main())

    def start(self) -> None:
        self._thread = threading.Thread(target=self.run, daemon=True)
        self._thread.start()
        self._ready.wait(10)

    def stop(self) -> None:
        if self._loop is not None and self._stopped is not None:
            self._loop.call_soon_threadsafe(self._stopped.set)
        if self._thread is not None:
            self._thread.join(10)


# --- a fake CRI server and the scenarios of tests/data/grpc ---------------------------------------
def _api() -> Any:
    from startprof.cri.proto import api_pb2

    return api_pb2


def fake_cri_server(path: str, delay_s: float = 0.002) -> Any:
    """A grpcio server on ``unix://path`` implementing the CRI methods the tests use."""
    import grpc

    api = _api()
    sandboxes: dict[str, Any] = {}
    containers: dict[str, Any] = {}

    def slow(fn: Callable[[Any, Any], Any]) -> Callable[[Any, Any], Any]:
        def handler(request: Any, context: Any) -> Any:
            time.sleep(delay_s)
            return fn(request, context)

        return handler

    def version(req: Any, ctx: Any) -> Any:
        return api.VersionResponse(
            version="0.1.0", runtime_name="fake", runtime_version="1.0", runtime_api_version="v1"
        )

    def run_pod_sandbox(req: Any, ctx: Any) -> Any:
        sandbox_id = ("sb" + req.config.metadata.uid.replace("-", "")).ljust(64, "0")[:64]
        sandboxes[sandbox_id] = req.config
        return api.RunPodSandboxResponse(pod_sandbox_id=sandbox_id)

    def sandbox_call(response: Any) -> Callable[[Any, Any], Any]:
        def handler(req: Any, ctx: Any) -> Any:
            if req.pod_sandbox_id not in sandboxes:
                ctx.abort(grpc.StatusCode.NOT_FOUND, f'sandbox "{req.pod_sandbox_id}" not found')
            return response()

        return handler

    def pod_sandbox_status(req: Any, ctx: Any) -> Any:
        config = sandboxes.get(req.pod_sandbox_id)
        if config is None:
            ctx.abort(grpc.StatusCode.NOT_FOUND, f'sandbox "{req.pod_sandbox_id}" not found')
            raise AssertionError("abort() raises")
        status = api.PodSandboxStatus(id=req.pod_sandbox_id, metadata=config.metadata)
        status.network.ip = "10.88.0.7"
        return api.PodSandboxStatusResponse(status=status)

    def create_container(req: Any, ctx: Any) -> Any:
        if req.pod_sandbox_id not in sandboxes:
            ctx.abort(grpc.StatusCode.NOT_FOUND, f'sandbox "{req.pod_sandbox_id}" not found')
        container_id = ("ct" + req.pod_sandbox_id[2:10] + req.config.metadata.name).ljust(64, "0")[
            :64
        ]
        containers[container_id] = req.config
        return api.CreateContainerResponse(container_id=container_id)

    def container_call(response: Any) -> Callable[[Any, Any], Any]:
        def handler(req: Any, ctx: Any) -> Any:
            if req.container_id not in containers:
                ctx.abort(grpc.StatusCode.NOT_FOUND, f'container "{req.container_id}" not found')
            return response()

        return handler

    def container_status(req: Any, ctx: Any) -> Any:
        config = containers.get(req.container_id)
        if config is None:
            ctx.abort(grpc.StatusCode.NOT_FOUND, f'container "{req.container_id}" not found')
            raise AssertionError("abort() raises")
        status = api.ContainerStatus(id=req.container_id, metadata=config.metadata, state=1)
        return api.ContainerStatusResponse(status=status)

    def stop_container(req: Any, ctx: Any) -> Any:
        time.sleep(
            min(req.timeout, 2)
        )  # a timeout of seconds, shortened: lets a client deadline pass
        return container_call(api.StopContainerResponse)(req, ctx)

    def image_status(req: Any, ctx: Any) -> Any:
        image = api.Image(id="sha256:" + "ab" * 32, repo_tags=[req.image.image])
        return api.ImageStatusResponse(image=image)

    def pull_image(req: Any, ctx: Any) -> Any:
        return api.PullImageResponse(image_ref="sha256:" + "ab" * 32)

    runtime = {
        "Version": (version, api.VersionRequest),
        "RunPodSandbox": (run_pod_sandbox, api.RunPodSandboxRequest),
        "StopPodSandbox": (sandbox_call(api.StopPodSandboxResponse), api.StopPodSandboxRequest),
        "RemovePodSandbox": (
            sandbox_call(api.RemovePodSandboxResponse),
            api.RemovePodSandboxRequest,
        ),
        "PodSandboxStatus": (pod_sandbox_status, api.PodSandboxStatusRequest),
        "CreateContainer": (create_container, api.CreateContainerRequest),
        "StartContainer": (container_call(api.StartContainerResponse), api.StartContainerRequest),
        "StopContainer": (stop_container, api.StopContainerRequest),
        "RemoveContainer": (
            container_call(api.RemoveContainerResponse),
            api.RemoveContainerRequest,
        ),
        "ContainerStatus": (container_status, api.ContainerStatusRequest),
    }
    image = {
        "ImageStatus": (image_status, api.ImageStatusRequest),
        "PullImage": (pull_image, api.PullImageRequest),
    }
    options = [("grpc.max_metadata_size", 1 << 20)]
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8), options=options)
    for service, methods in (
        ("runtime.v1.RuntimeService", runtime),
        ("runtime.v1.ImageService", image),
    ):
        handlers = {
            name: grpc.unary_unary_rpc_method_handler(
                slow(fn),
                request_deserializer=req.FromString,
                response_serializer=lambda m: m.SerializeToString(),
            )
            for name, (fn, req) in methods.items()
        }
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, handlers),))
    server.add_insecure_port(f"unix://{path}")
    server.start()
    return server


class CriClient:
    """A minimal grpcio CRI client: ``client.call("RunPodSandbox", request)``."""

    def __init__(self, path: str, **channel_kwargs: Any) -> None:
        import grpc

        # A private subchannel pool: two clients are two connections, as with two kubelets.
        options = [("grpc.max_metadata_size", 1 << 20), ("grpc.use_local_subchannel_pool", 1)]
        self.channel = grpc.insecure_channel(f"unix://{path}", options=options, **channel_kwargs)
        self._api = _api()

    def _stub(self, method: str) -> Any:
        service = "ImageService" if method in ("ImageStatus", "PullImage") else "RuntimeService"
        response = getattr(self._api, f"{method}Response")
        return self.channel.unary_unary(
            f"/runtime.v1.{service}/{method}",
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=response.FromString,
        )

    def call(self, method: str, request: Any, **kwargs: Any) -> Any:
        return self._stub(method)(request, **kwargs)

    def future(self, method: str, request: Any, **kwargs: Any) -> Any:
        return self._stub(method).future(request, **kwargs)

    def close(self) -> None:
        self.channel.close()


class H2GrpcClient:
    """A unary gRPC client on the ``h2`` library, for what grpcio never sends: 16 KiB frames as
    grpc-go uses them (header blocks split into CONTINUATION, messages into several DATA frames).

    Not padding: grpcio's server stalls on padded DATA frames.
    """

    def __init__(self, path: str, max_frame_size: int = 16_384) -> None:
        import socket

        import h2.config
        import h2.connection

        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(path)
        self.conn = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
        )
        self.conn.initiate_connection()
        self.sock.sendall(self.conn.data_to_send())
        self.max_frame_size = max_frame_size

    def call(
        self, path: str, request: Any, metadata: list[tuple[str, str]]
    ) -> tuple[dict[str, str], bytes]:
        """Returns (response headers and trailers, response message)."""
        import h2.events

        body = request.SerializeToString()
        message = b"\0" + len(body).to_bytes(4, "big") + body
        self.conn.max_outbound_frame_size = self.max_frame_size
        stream_id = self.conn.get_next_available_stream_id()
        headers = [
            (":method", "POST"),
            (":scheme", "http"),
            (":path", path),
            (":authority", "localhost"),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
            *metadata,
        ]
        self.conn.send_headers(stream_id, headers)
        step = self.max_frame_size
        for i in range(0, len(message), step):
            self.conn.send_data(
                stream_id, message[i : i + step], end_stream=i + step >= len(message)
            )
        self.sock.sendall(self.conn.data_to_send())
        received: dict[str, str] = {}
        reply = bytearray()
        while True:
            data = self.sock.recv(CHUNK)
            if not data:
                raise ConnectionError("server closed the connection")
            for event in self.conn.receive_data(data):
                if isinstance(event, h2.events.ResponseReceived | h2.events.TrailersReceived):
                    received.update((str(k), str(v)) for k, v in event.headers)
                elif isinstance(event, h2.events.DataReceived):
                    reply += event.data
                    self.conn.acknowledge_received_data(
                        event.flow_controlled_length, event.stream_id
                    )
                elif isinstance(event, h2.events.StreamEnded) and event.stream_id == stream_id:
                    self.sock.sendall(self.conn.data_to_send())
                    return received, bytes(reply[5:])
            self.sock.sendall(self.conn.data_to_send())

    def close(self) -> None:
        self.conn.close_connection()
        self.sock.sendall(self.conn.data_to_send())
        self.sock.close()


def pod_lifecycle(
    client: CriClient, name: str, uid: str, namespace: str = "default"
) -> dict[str, str]:
    """What a kubelet does for one single-container pod, then its tear-down."""
    api = _api()
    meta = api.PodSandboxMetadata(name=name, uid=uid, namespace=namespace, attempt=0)
    config = api.PodSandboxConfig(
        metadata=meta, hostname=name, log_directory=f"/var/log/pods/{uid}"
    )
    sandbox_id = client.call(
        "RunPodSandbox", api.RunPodSandboxRequest(config=config, runtime_handler="runc")
    ).pod_sandbox_id
    image = api.ImageSpec(image="docker.io/library/app:1")
    client.call("ImageStatus", api.ImageStatusRequest(image=image))
    container_config = api.ContainerConfig(metadata=api.ContainerMetadata(name="app"), image=image)
    container_id = client.call(
        "CreateContainer",
        api.CreateContainerRequest(
            pod_sandbox_id=sandbox_id, config=container_config, sandbox_config=config
        ),
    ).container_id
    client.call("StartContainer", api.StartContainerRequest(container_id=container_id))
    client.call("ContainerStatus", api.ContainerStatusRequest(container_id=container_id))
    client.call("StopContainer", api.StopContainerRequest(container_id=container_id, timeout=0))
    client.call("RemoveContainer", api.RemoveContainerRequest(container_id=container_id))
    client.call("StopPodSandbox", api.StopPodSandboxRequest(pod_sandbox_id=sandbox_id))
    client.call("RemovePodSandbox", api.RemovePodSandboxRequest(pod_sandbox_id=sandbox_id))
    return {"sandbox_id": sandbox_id, "container_id": container_id}


def _scenario_lifecycle(path: str) -> None:
    """One connection: Version, a pod's lifecycle, a NOT_FOUND, then a second pod whose calls
    refer to the first pod's HPACK dynamic-table entries, a method used only then and a method
    the server does not know."""
    import grpc

    api = _api()
    client = CriClient(path)
    client.call("Version", api.VersionRequest(version="v1"))
    pod_lifecycle(client, "nginx-1", "11111111-aaaa-4bbb-8ccc-000000000001", "web")
    with contextlib.suppress(grpc.RpcError):
        client.call("ContainerStatus", api.ContainerStatusRequest(container_id="deadbeef"))
    ids = pod_lifecycle(client, "nginx-2", "11111111-aaaa-4bbb-8ccc-000000000002", "web")
    with contextlib.suppress(grpc.RpcError):
        client.call(
            "PodSandboxStatus", api.PodSandboxStatusRequest(pod_sandbox_id=ids["sandbox_id"])
        )
    unknown = client.channel.unary_unary(
        UNKNOWN_METHOD, request_serializer=bytes, response_deserializer=bytes
    )
    with contextlib.suppress(grpc.RpcError):
        unknown(b"\x0a\x03abc")  # not served: UNIMPLEMENTED
    client.close()


def _scenario_concurrent(path: str) -> None:
    """Two connections; on the first, five calls in flight at once (interleaved streams)."""
    api = _api()
    first, second = CriClient(path), CriClient(path)
    first.call("Version", api.VersionRequest(version="v1"))
    second.call("Version", api.VersionRequest(version="v1"))
    pending = []
    for i in range(5):
        meta = api.PodSandboxMetadata(
            name=f"burst-{i}", uid=f"22222222-0000-4000-8000-00000000000{i}", namespace="batch"
        )
        request = api.RunPodSandboxRequest(config=api.PodSandboxConfig(metadata=meta))
        pending.append(first.future("RunPodSandbox", request))
    image = api.ImageSpec(image="registry.local/busybox:1.36")
    second.call("PullImage", api.PullImageRequest(image=image))
    for f in pending:
        f.result()
    first.close()
    second.close()


def _big_pod(name: str, uid: str) -> Any:
    """A sandbox config with 20 KB of annotations: a message longer than one 16 KiB frame."""
    api = _api()
    meta = api.PodSandboxMetadata(name=name, uid=uid, namespace="kube-system")
    annotations = {f"example.com/key-{i}": "v" * 100 + str(i) for i in range(200)}
    return api.RunPodSandboxRequest(
        config=api.PodSandboxConfig(metadata=meta, annotations=annotations)
    )


def _scenario_large(path: str) -> None:
    """With 16 KiB frames (an h2 client): a request with 30 KB of metadata (HEADERS +
    CONTINUATION) and a 22 KB body (two DATA frames); then, from grpcio, the same
    body gzip-compressed."""
    import grpc

    client = H2GrpcClient(path)
    metadata = [(f"x-big-{i}", "m" * 1000) for i in range(30)]
    request = _big_pod("big-pod", "33333333-0000-4000-8000-000000000001")
    client.call("/runtime.v1.RuntimeService/RunPodSandbox", request, metadata)
    client.close()
    gzip_client = CriClient(path, compression=grpc.Compression.Gzip)
    gzip_client.call(
        "RunPodSandbox", _big_pod("big-pod-gzip", "33333333-0000-4000-8000-000000000002")
    )
    gzip_client.close()


def _scenario_bigframes(path: str) -> None:
    """grpcio's defaults: SETTINGS_MAX_FRAME_SIZE raised, the 22 KB body in one DATA frame."""
    client = CriClient(path)
    client.call("RunPodSandbox", _big_pod("big-frame", "33333333-0000-4000-8000-000000000003"))
    client.close()


def _scenario_deadline(path: str) -> None:
    """Two StopContainer calls that outlive the client: one passes its deadline, one is
    cancelled."""
    import grpc

    api = _api()
    client = CriClient(path)
    meta = api.PodSandboxMetadata(
        name="slow", uid="44444444-0000-4000-8000-000000000001", namespace="default"
    )
    sandbox_id = client.call(
        "RunPodSandbox", api.RunPodSandboxRequest(config=api.PodSandboxConfig(metadata=meta))
    ).pod_sandbox_id
    config = api.ContainerConfig(metadata=api.ContainerMetadata(name="app"))
    container_id = client.call(
        "CreateContainer", api.CreateContainerRequest(pod_sandbox_id=sandbox_id, config=config)
    ).container_id
    with contextlib.suppress(grpc.RpcError):
        client.call(
            "StopContainer",
            api.StopContainerRequest(container_id=container_id, timeout=1),
            timeout=0.2,
        )
    cancelled = client.future(
        "StopContainer", api.StopContainerRequest(container_id=container_id, timeout=1)
    )
    time.sleep(0.1)
    cancelled.cancel()  # the client resets the stream (RST_STREAM CANCEL)
    time.sleep(1.2)  # the server finishes its handlers after the resets
    client.close()


SCENARIOS: dict[str, Callable[[str], None]] = {
    "lifecycle": _scenario_lifecycle,
    "concurrent": _scenario_concurrent,
    "large": _scenario_large,
    "bigframes": _scenario_bigframes,
    "deadline": _scenario_deadline,
}


@contextlib.contextmanager
def _capturing(out_path: Path) -> Iterator[str]:
    """A fake CRI server behind a capture proxy; yields the proxy's socket path."""
    with tempfile.TemporaryDirectory() as tmp, open(out_path, "w", encoding="utf-8") as out:
        server = fake_cri_server(os.path.join(tmp, "cri.sock"))
        proxy = CaptureProxy(os.path.join(tmp, "proxy.sock"), os.path.join(tmp, "cri.sock"), out)
        proxy.start()
        try:
            yield proxy.listen
            time.sleep(0.2)  # let the proxy record the last bytes (GOAWAY, close)
        finally:
            proxy.stop()
            server.stop(None)


def generate(directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for name, scenario in SCENARIOS.items():
        target = directory / f"{name}.jsonl"
        with _capturing(target) as sock:
            scenario(sock)
        print(f"wrote {target} ({target.stat().st_size} bytes)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--listen", help="socket path the proxy listens on (clients connect here)")
    parser.add_argument("--upstream", help="the real server's socket, e.g. containerd's")
    parser.add_argument("--out", help="JSONL file to write")
    parser.add_argument("--generate", metavar="DIR", help="write the fake-server captures to DIR")
    args = parser.parse_args(argv)
    if args.generate:
        generate(Path(args.generate))
        return 0
    if not (args.listen and args.upstream and args.out):
        parser.error("give --listen, --upstream and --out (or --generate DIR)")
    with open(args.out, "w", encoding="utf-8") as out:
        proxy = CaptureProxy(args.listen, args.upstream, out)
        proxy.start()
        print(
            f"recording {args.listen} -> {args.upstream} into {args.out}; Ctrl-C stops",
            file=sys.stderr,
        )
        stop = threading.Event()
        signal.signal(signal.SIGINT, lambda *_: stop.set())
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        stop.wait()
        proxy.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
