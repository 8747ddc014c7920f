"""OTLP over TLS with authentication headers, against real receivers (issue 9).

A self-signed certificate for ``localhost`` is made with ``openssl`` per module; a grpcio
``TraceService`` with ``ssl_server_credentials`` and an HTTPS server taking ``POST /v1/traces``
use it. The exporter must verify the receiver with the certificate named by
``OTEL_EXPORTER_OTLP_[TRACES_]CERTIFICATE``, send the ``OTEL_EXPORTER_OTLP_HEADERS``, and fail
with one line when it cannot trust the receiver. No root needed.
"""

from __future__ import annotations

import shutil
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import grpc
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from startprof.errors import ExportError
from startprof.exporters.otlp import export_otlp

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))
from factories import make_analysis

TOKEN = "Bearer sp9-tenant-token"

pytestmark = [
    pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is missing"),
    pytest.mark.usefixtures("clean_otlp_env"),
]


@dataclass
class Tls:
    cert: Path
    key: Path


@dataclass
class Got:
    spans: int = 0
    authorization: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, request: trace_service_pb2.ExportTraceServiceRequest, auth: str) -> None:
        with self.lock:
            self.spans += sum(
                len(ss.spans) for rs in request.resource_spans for ss in rs.scope_spans
            )
            self.authorization.append(auth)

    def clear(self) -> None:
        with self.lock:
            self.spans = 0
            self.authorization.clear()


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Tls:
    d = tmp_path_factory.mktemp("tls")
    cert, key = d / "receiver.crt", d / "receiver.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    return Tls(cert, key)


class _TraceService(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, got: Got) -> None:
        self.got = got

    def Export(
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: Any
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        metadata = dict(context.invocation_metadata())
        if metadata.get("authorization") != TOKEN:
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "bad token")
        self.got.add(request, metadata["authorization"])
        return trace_service_pb2.ExportTraceServiceResponse()


@pytest.fixture(scope="module")
def grpc_tls(tls: Tls) -> Iterator[tuple[int, Got]]:
    got = Got()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(  # type: ignore[no-untyped-call]
        _TraceService(got), server
    )
    credentials = grpc.ssl_server_credentials([(tls.key.read_bytes(), tls.cert.read_bytes())])
    port = server.add_secure_port("127.0.0.1:0", credentials)
    server.start()
    try:
        yield port, got
    finally:
        server.stop(grace=None)


@pytest.fixture(scope="module")
def https_tls(tls: Tls) -> Iterator[tuple[int, Got]]:
    got = Got()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            if self.path != "/v1/traces" or self.headers.get("authorization") != TOKEN:
                self.send_error(401 if self.path == "/v1/traces" else 404)
                return
            got.add(
                trace_service_pb2.ExportTraceServiceRequest.FromString(body),
                self.headers["authorization"],
            )
            reply = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        def log_message(self, format: str, *args: Any) -> None:
            """Keep the test output quiet."""

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tls.cert, tls.key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1], got
    finally:
        server.shutdown()
        server.server_close()


PROTOCOLS = ["grpc", "http/protobuf"]


def _receiver(request: pytest.FixtureRequest, protocol: str) -> tuple[int, Got]:
    port, got = request.getfixturevalue("grpc_tls" if protocol == "grpc" else "https_tls")
    got.clear()
    return port, got


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize(
    "cert_var", ["OTEL_EXPORTER_OTLP_CERTIFICATE", "OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE"]
)
def test_https_with_the_receivers_certificate_and_a_token(
    protocol: str,
    cert_var: str,
    tls: Tls,
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    port, got = _receiver(request, protocol)
    monkeypatch.setenv(cert_var, str(tls.cert))
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", f"authorization={TOKEN}")
    summary = export_otlp(make_analysis(), url=f"https://localhost:{port}", protocol=protocol)
    assert summary.spans == got.spans > 0
    assert got.authorization and set(got.authorization) == {TOKEN}


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_an_untrusted_receiver_is_one_clear_error(
    protocol: str, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No certificate given: the system's roots do not trust the self-signed receiver."""
    port, got = _receiver(request, protocol)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", f"authorization={TOKEN}")
    with pytest.raises(ExportError) as caught:
        export_otlp(make_analysis(), url=f"https://localhost:{port}", protocol=protocol)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"OTLP export to https://localhost:{port}")
    assert got.spans == 0


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_missing_token_is_refused(
    protocol: str, tls: Tls, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    port, got = _receiver(request, protocol)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_CERTIFICATE", str(tls.cert))
    with pytest.raises(ExportError, match="failed"):
        export_otlp(make_analysis(), url=f"https://localhost:{port}", protocol=protocol)
    assert got.spans == 0


def test_grpc_insecure_false_makes_a_bare_host_port_tls(
    tls: Tls, grpc_tls: tuple[int, Got], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``OTEL_EXPORTER_OTLP_INSECURE=false`` with a scheme-less endpoint means TLS, both from
    the environment and from ``--otlp host:port``."""
    port, got = grpc_tls
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_CERTIFICATE", str(tls.cert))
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", f"authorization={TOKEN}")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_INSECURE", "false")
    got.clear()
    export_otlp(make_analysis(), url=f"localhost:{port}", protocol="grpc")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"localhost:{port}")
    summary = export_otlp(make_analysis(), protocol="grpc")
    assert got.spans == 2 * summary.spans > 0


def test_cli_exports_over_tls(
    tls: Tls,
    grpc_tls: tuple[int, Got],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from startprof.cli import main

    port, got = grpc_tls
    got.clear()
    monkeypatch.setattr("startprof.pipeline.analyze_files", lambda *a, **k: make_analysis())
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_CERTIFICATE", str(tls.cert))
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", f"authorization={TOKEN}")
    url = f"https://localhost:{port}"
    assert main(["export", "pods.arrows", "--otlp", url]) == 0
    out = capsys.readouterr().out
    assert out == f"sent 3 traces ({got.spans} spans) to {url} over OTLP/gRPC\n"
