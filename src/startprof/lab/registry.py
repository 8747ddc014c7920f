"""A read-only OCI distribution registry on 127.0.0.1 serving the lab's own image archives.

``lab run --pull`` makes the image phase a real pull (resolve, fetch manifest, config and
layer, unpack) without any network beyond loopback. containerd talks plain HTTP to
``localhost:<port>``. Only what a pull needs: ``/v2/``, manifests by tag or digest, blobs;
GET and HEAD.

A registry can be *throttled* (``rate``, bytes per second for blob bodies): a slow registry
or a congested link, so that one pod's pull takes seconds while other pods start (``lab run
--kind slow-pull``).

Every manifest and blob request it answers (GET or HEAD, 200 or 404) is kept in
``Registry.served``, timed with ``time.monotonic_ns()`` (CLOCK_MONOTONIC, like
``bpf_ktime_get_ns()``) from when the handler begins serving it to when its last body byte
has been written, so that the profiler's fetch spans can be checked against what was served.
``lab run`` writes it as JSON lines (:func:`write_served`, read back by :func:`read_served`).
"""

from __future__ import annotations

import json
import re
import shutil
import threading
import time
from collections.abc import Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from startprof.errors import InputError, LabError
from startprof.lab.oci import MEDIA_MANIFEST, OciLayout
from startprof.lab.truth import read_json_lines

_CHUNK = 4096
_PATH = re.compile(r"^/v2/(?P<name>.+)/(?P<kind>manifests|blobs)/(?P<ref>[^/]+)$")

# The exact key set of a served record, in the order written.
SERVED_KEYS: tuple[str, ...] = (
    "kind",  # "blob" or "manifest"
    "method",  # "GET" or "HEAD"
    "digest",  # what was served; for a 404, the reference asked for (a digest or a tag)
    "bytes",  # body bytes written: 0 for HEAD
    "status",  # HTTP status: 200 or 404
    "start_monotonic_ns",  # the handler began serving the request
    "end_monotonic_ns",  # its last body byte was written and flushed
)
KINDS = ("blob", "manifest")
METHODS = ("GET", "HEAD")


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    _sent = 0  # body bytes written for the request being served
    protocol_version = "HTTP/1.1"
    # Headers and body go out as separate writes: with Nagle on, the body waits for the
    # client's delayed ACK (~40 ms on loopback). Registries (Go net/http) set TCP_NODELAY.
    disable_nagle_algorithm = True
    error_content_type = "application/json"

    def do_HEAD(self) -> None:
        self._serve(body=False)

    def do_GET(self) -> None:
        self._serve(body=True)

    def _serve(self, body: bool) -> None:
        start = time.monotonic_ns()
        self._sent = 0
        path = self.path.split("?", 1)[0]
        if path in ("/v2", "/v2/"):
            return self._reply(200, b"{}", "application/json", None, body)
        m = _PATH.match(path)
        if not m:
            return self._error(404, "NAME_UNKNOWN", body)
        name, kind, ref = m["name"], m["kind"], m["ref"]
        registry = self.server.registry
        record: dict[str, Any] = {
            "kind": "manifest" if kind == "manifests" else "blob",
            "method": self.command,
            "digest": ref,
            "status": 404,
        }
        try:
            if kind == "manifests":
                digest = ref if ref.startswith("sha256:") else registry.tags.get((name, ref))
                if digest is None or digest not in registry.manifests:
                    return self._error(404, "MANIFEST_UNKNOWN", body)
                record.update(digest=digest, status=200)
                return self._reply(200, registry.blobs[digest], MEDIA_MANIFEST, digest, body)
            if ref not in registry.blobs:
                return self._error(404, "BLOB_UNKNOWN", body)
            record["status"] = 200
            data = registry.blobs[ref]
            return self._reply(200, data, "application/octet-stream", ref, body, registry.rate)
        finally:
            # Also when the client went away mid-body: the bytes are those written.
            end = time.monotonic_ns()
            record.update(bytes=self._sent, start_monotonic_ns=start, end_monotonic_ns=end)
            registry._record({k: record[k] for k in SERVED_KEYS})

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
            self.wfile.flush()
            self._sent += len(data)
            return
        # Paced in chunks of 2 ms (at least 4 KiB) against a deadline: each chunk leaves when
        # the bytes up to its end are due, so the whole body takes len/rate seconds however
        # sleeps round, without a Python write per 4 KiB at network rates.
        begin = time.monotonic()
        step = max(_CHUNK, rate // 500)
        for offset in range(0, len(data), step):
            chunk = data[offset : offset + step]
            ahead = begin + (offset + len(chunk)) / rate - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)
            self.wfile.write(chunk)
            self.wfile.flush()
            self._sent += len(chunk)

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
    ``served`` lists every manifest and blob request answered so far (``SERVED_KEYS``).
    """

    def __init__(self, layouts: list[OciLayout], port: int = 0, rate: int | None = None) -> None:
        if rate is not None and rate <= 0:
            raise ValueError(f"registry rate must be positive, got {rate}")
        self.rate = rate
        self._served: list[dict[str, Any]] = []
        self._served_lock = threading.Lock()
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
        self._hosts: Path | None = None
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="startprof-registry", daemon=True
        )

    @property
    def served(self) -> list[dict[str, Any]]:
        """Every manifest and blob request answered so far, in the order they finished (a
        copy: safe to read while the registry serves). A request is logged after its last
        write returned: its client may have read the whole reply a moment before."""
        with self._served_lock:
            return list(self._served)

    def _record(self, record: dict[str, Any]) -> None:
        with self._served_lock:
            self._served.append(record)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def reference(self, image_name: str) -> str:
        """The pull reference of a lab image: ``localhost:<port>/<path>:<tag>``."""
        return f"localhost:{self.port}/{image_name.split('/', 1)[1]}"

    def start(self, hosts_dir: Path | None = None) -> Registry:
        """Serve; with ``hosts_dir`` (containerd's registry ``config_path``) also write the
        ``localhost:<port>/hosts.toml`` that makes containerd pull from it over plain HTTP
        (2.x tries HTTPS for localhost; 1.x used HTTP unasked). ``stop`` removes it."""
        if hosts_dir is not None:
            host = f"localhost:{self.port}"
            self._hosts = hosts_dir / host
            self._hosts.mkdir(parents=True, exist_ok=True)
            (self._hosts / "hosts.toml").write_text(
                f'server = "http://{host}"\n\n[host."http://{host}"]\n'
                '  capabilities = ["pull", "resolve"]\n'
            )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        if self._hosts is not None:
            shutil.rmtree(self._hosts, ignore_errors=True)
            self._hosts = None

    def __enter__(self) -> Registry:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def registry_log_beside(truth_path: str | Path) -> Path:
    """Where ``lab run`` writes the registry's served log beside a ``--truth`` file: the truth
    path without ``.jsonl``, plus ``.registry.jsonl`` (``/tmp/t.truth.jsonl`` ->
    ``/tmp/t.truth.registry.jsonl``; ``/tmp/t`` -> ``/tmp/t.registry.jsonl``)."""
    p = Path(truth_path)
    return p.with_name(p.name.removesuffix(".jsonl") + ".registry.jsonl")


def write_served(served: Iterable[dict[str, Any]], path: Path) -> None:
    """Write served records as JSON lines at ``path``, replacing what was there."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps({k: r[k] for k in SERVED_KEYS}, separators=(",", ":")) for r in served]
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    tmp.replace(path)


def validate_served(record: object, where: str) -> dict[str, Any]:
    """Check one parsed served line; raise :class:`InputError` naming ``where`` (file:line)."""
    if not isinstance(record, dict):
        raise InputError(f"{where}: a served line must be a JSON object")
    missing = [k for k in SERVED_KEYS if k not in record]
    if missing:
        raise InputError(f"{where}: missing key(s) {', '.join(missing)}")
    extra = sorted(set(record) - set(SERVED_KEYS))
    if extra:
        raise InputError(f"{where}: unknown key(s) {', '.join(extra)}")
    for k, allowed in (("kind", KINDS), ("method", METHODS)):
        if record[k] not in allowed:
            raise InputError(f"{where}: {k} must be one of {', '.join(allowed)}, got {record[k]!r}")
    if not isinstance(record["digest"], str) or not record["digest"]:
        raise InputError(f"{where}: digest must be a non-empty string, got {record['digest']!r}")
    for k in ("bytes", "status", "start_monotonic_ns", "end_monotonic_ns"):
        value = record[k]
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise InputError(f"{where}: {k} must be a non-negative integer, got {value!r}")
    if record["end_monotonic_ns"] < record["start_monotonic_ns"]:
        raise InputError(f"{where}: end_monotonic_ns is before start_monotonic_ns")
    if record["method"] == "HEAD" and record["bytes"] != 0:
        raise InputError(f"{where}: a HEAD sends no body, got bytes {record['bytes']}")
    return record


def read_served(path: str | Path) -> list[dict[str, Any]]:
    """All records of a registry log (``DIR/registry.jsonl``), in file order. Blank lines are
    skipped; a damaged line is one :class:`InputError` naming ``file:line``."""
    return read_json_lines(path, "registry log", validate_served)
