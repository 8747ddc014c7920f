"""A read-only OCI distribution registry on 127.0.0.1 serving the lab's own image archives.

``lab run --pull`` makes the image phase a real pull (resolve, fetch manifest, config and
layer, unpack) without any network beyond loopback. containerd talks plain HTTP to
``localhost:<port>``. Only what a pull needs: ``/v2/``, manifests by tag or digest, blobs;
GET and HEAD.

A registry can be *throttled* (``rate``, bytes per second for blob bodies): a slow registry
or a congested link, so that one pod's pull takes seconds while other pods start (``lab run
--kind slow-pull``).
"""

from __future__ import annotations

import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from startprof.errors import LabError
from startprof.lab.oci import MEDIA_MANIFEST, OciLayout

_CHUNK = 4096
_PATH = re.compile(r"^/v2/(?P<name>.+)/(?P<kind>manifests|blobs)/(?P<ref>[^/]+)$")


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    error_content_type = "application/json"

    def do_HEAD(self) -> None:
        self._serve(body=False)

    def do_GET(self) -> None:
        self._serve(body=True)

    def _serve(self, body: bool) -> None:
        path = self.path.split("?", 1)[0]
        if path in ("/v2", "/v2/"):
            return self._reply(200, b"{}", "application/json", None, body)
        m = _PATH.match(path)
        if not m:
            return self._error(404, "NAME_UNKNOWN", body)
        name, kind, ref = m["name"], m["kind"], m["ref"]
        registry = self.server.registry
        if kind == "manifests":
            digest = ref if ref.startswith("sha256:") else registry.tags.get((name, ref))
            if digest is None or digest not in registry.manifests:
                return self._error(404, "MANIFEST_UNKNOWN", body)
            return self._reply(200, registry.blobs[digest], MEDIA_MANIFEST, digest, body)
        if ref not in registry.blobs:
            return self._error(404, "BLOB_UNKNOWN", body)
        data = registry.blobs[ref]
        return self._reply(200, data, "application/octet-stream", ref, body, registry.rate)

    def _reply(
        self,
        code: int,
        data: bytes,
        content_type: str,
        digest: str | None,
        body: bool,
        rate: int | None = None,
    ) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Docker-Distribution-API-Version", "registry/2.0")
        if digest:
            self.send_header("Docker-Content-Digest", digest)
        self.end_headers()
        if not body:
            return
        if rate is None:
            self.wfile.write(data)
            return
        # Paced in small chunks against a deadline: each chunk leaves when the bytes up to
        # its end are due, so the whole body takes len/rate seconds however sleeps round.
        begin = time.monotonic()
        for offset in range(0, len(data), _CHUNK):
            chunk = data[offset : offset + _CHUNK]
            ahead = begin + (offset + len(chunk)) / rate - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)
            self.wfile.write(chunk)
            self.wfile.flush()

    def _error(self, code: int, kind: str, body: bool) -> None:
        data = json.dumps({"errors": [{"code": kind, "message": kind.lower()}]}).encode()
        self._reply(code, data, "application/json", None, body)

    def log_message(self, format: str, *args: object) -> None:
        # Requests are visible in the recorder's trace; stderr stays for progress lines.
        return


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    registry: Registry


class Registry:
    """Serves every image of the given layouts as ``<repository>:<tag>`` on 127.0.0.1.

    ``rate`` (bytes per second) throttles blob bodies; None serves them at once.
    """

    def __init__(self, layouts: list[OciLayout], port: int = 0, rate: int | None = None) -> None:
        if rate is not None and rate <= 0:
            raise ValueError(f"registry rate must be positive, got {rate}")
        self.rate = rate
        self.blobs: dict[str, bytes] = {}
        self.tags: dict[tuple[str, str], str] = {}
        for layout in layouts:
            self.blobs.update(layout.blobs)
            for full_name, digest in layout.images().items():
                repo, tag = full_name.rsplit(":", 1)
                # Served under the path without the original registry host.
                self.tags[(repo.split("/", 1)[1], tag)] = digest
        self.manifests: frozenset[str] = frozenset(self.tags.values())
        try:
            self._server = _Server(("127.0.0.1", port), _Handler)
        except OSError as exc:
            raise LabError(
                f"cannot serve the lab registry on 127.0.0.1:{port}: {exc.strerror}"
            ) from exc
        self._server.registry = self
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="startprof-registry", daemon=True
        )

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def reference(self, image_name: str) -> str:
        """The pull reference of a lab image: ``localhost:<port>/<path>:<tag>``."""
        return f"localhost:{self.port}/{image_name.split('/', 1)[1]}"

    def start(self) -> Registry:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> Registry:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
