"""The HTML report in a real browser: Debian's chromium, headless, driven over the DevTools
protocol (a websocket on 127.0.0.1). The page loads with no console error and no request
beyond the file, every figure is drawn, the slowest pod's name shows, a screenshot is not
blank, and hostile pod names, argv and errors stay text: no extra script, no dialog.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import queue
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import websocket

from startprof.analysis.model import Analysis, Phase
from startprof.analysis.selection import select_pods
from startprof.reporters import html

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))
from factories import XSS_NAME, failed_pod, make_analysis, web_pod, xss_pod

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="Debian chromium is not installed (make setup installs it)"
)

IMG_ARGV = '"><img src=x onerror=alert(1)>'
LINK_ARGV = '<a href="https://example.invalid/">x</a>'
"""Plotly shows unknown tags as text anyway, but makes links of ``<a href>``: escaped, no link."""
SCRIPT_ERROR = "</script><script>alert(2)</script>"
TIMEOUT_S = 30.0
VIEWPORT = (1400, 1000)


class Browser:
    """One headless chromium and a DevTools session on its first page."""

    def __init__(self, profile: Path) -> None:
        assert CHROMIUM is not None
        self.proc = subprocess.Popen(
            [
                CHROMIUM,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-dev-shm-usage",
                "--hide-scrollbars",
                f"--user-data-dir={profile}",
                f"--window-size={VIEWPORT[0]},{VIEWPORT[1]}",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
                "about:blank",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.events: list[dict[str, Any]] = []
        self._next_id = 0
        port = self._devtools_port()
        self.ws = websocket.create_connection(
            self._page_url(port), timeout=TIMEOUT_S, suppress_origin=True
        )

    def _devtools_port(self) -> int:
        """The port chromium chose, from its stderr; a thread keeps draining stderr after that
        so chromium never blocks on a full pipe."""
        lines: queue.Queue[str] = queue.Queue()
        stderr = self.proc.stderr
        assert stderr is not None

        def drain() -> None:
            for line in stderr:
                lines.put(line)

        threading.Thread(target=drain, daemon=True).start()
        deadline = time.monotonic() + TIMEOUT_S
        seen = []
        while (left := deadline - time.monotonic()) > 0 and self.proc.poll() is None:
            try:
                line = lines.get(timeout=min(left, 1.0))
            except queue.Empty:
                continue
            seen.append(line)
            match = re.search(r"DevTools listening on ws://127\.0\.0\.1:(\d+)/", line)
            if match:
                return int(match.group(1))
        raise AssertionError(f"chromium did not open DevTools: {''.join(seen)[-2000:]}")

    @staticmethod
    def _page_url(port: int) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as reply:
            targets = json.load(reply)
        (page,) = [t for t in targets if t["type"] == "page"]
        return str(page["webSocketDebuggerUrl"])

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        self._next_id += 1
        self.ws.send(json.dumps({"id": self._next_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv())
            if message.get("id") == self._next_id:
                assert "error" not in message, (method, message["error"])
                result: dict[str, Any] = message["result"]
                return result
            self._event(message)

    def _event(self, message: dict[str, Any]) -> None:
        self.events.append(message)
        if message.get("method") == "Page.javascriptDialogOpening":
            # keep the page alive so the test can report the dialog instead of hanging
            self.ws.send(
                json.dumps(
                    {"id": 0, "method": "Page.handleJavaScriptDialog", "params": {"accept": False}}
                )
            )

    def wait_for(self, method: str) -> None:
        deadline = time.monotonic() + TIMEOUT_S
        while time.monotonic() < deadline:
            if any(e.get("method") == method for e in self.events):
                return
            self._event(json.loads(self.ws.recv()))
        raise AssertionError(f"no {method} within {TIMEOUT_S} s")

    def evaluate(self, expression: str) -> Any:
        reply = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        assert "exceptionDetails" not in reply, reply["exceptionDetails"]
        return reply["result"].get("value")

    def poll(self, expression: str, want: Any) -> Any:
        deadline = time.monotonic() + TIMEOUT_S
        while True:
            value = self.evaluate(expression)
            if value == want or time.monotonic() > deadline:
                return value
            time.sleep(0.1)

    def close(self) -> None:
        try:
            self.ws.close()
        finally:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def problems(self) -> list[str]:
        """Console errors and warnings, uncaught exceptions, dialogs, CSP reports."""
        found = []
        for e in self.events:
            method, params = e.get("method"), e.get("params", {})
            if method == "Runtime.consoleAPICalled" and params["type"] in (
                "error",
                "warning",
                "assert",
            ):
                found.append(f"console.{params['type']}: {params['args']}")
            elif method == "Runtime.exceptionThrown":
                found.append(f"exception: {params['exceptionDetails']}")
            elif method == "Log.entryAdded" and params["entry"]["level"] in ("error", "warning"):
                found.append(f"log: {params['entry']}")
            elif method == "Page.javascriptDialogOpening":
                found.append(f"dialog: {params['message']}")
        return found

    def requests(self) -> list[str]:
        return [
            e["params"]["request"]["url"]
            for e in self.events
            if e.get("method") == "Network.requestWillBeSent"
        ]


def png_pixels(data: bytes) -> tuple[int, int, list[bytes]]:
    """Width, height and unfiltered rows of an 8-bit RGB(A) non-interlaced PNG."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, header = 8, b"", b""
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            header = body
        elif kind == b"IDAT":
            idat += body
    width, height, depth, color, _, _, interlace = struct.unpack(">IIBBBBB", header)
    assert depth == 8 and color in (2, 6) and interlace == 0, (depth, color, interlace)
    bpp = 3 if color == 2 else 4
    raw = zlib.decompress(idat)
    stride = width * bpp
    rows: list[bytes] = []
    prev = bytearray(stride)
    for y in range(height):
        kind = raw[y * (stride + 1)]
        line = bytearray(raw[y * (stride + 1) + 1 : (y + 1) * (stride + 1)])
        for x in range(stride):
            left = line[x - bpp] if x >= bpp else 0
            up = prev[x]
            corner = prev[x - bpp] if x >= bpp else 0
            if kind == 1:
                line[x] = (line[x] + left) & 0xFF
            elif kind == 2:
                line[x] = (line[x] + up) & 0xFF
            elif kind == 3:
                line[x] = (line[x] + (left + up) // 2) & 0xFF
            elif kind == 4:
                p = left + up - corner
                pa, pb, pc = abs(p - left), abs(p - up), abs(p - corner)
                pred = left if pa <= pb and pa <= pc else up if pb <= pc else corner
                line[x] = (line[x] + pred) & 0xFF
        rows.append(bytes(line))
        prev = line
    return width, height, [bytes(r[i : i + 3]) for r in rows for i in range(0, stride, bpp)]


def hostile_analysis() -> Analysis:
    """Three factory pods plus markup in the slowest pod's argv and error, and a hostile name."""

    def poison(phase: Phase) -> Phase:
        if phase.name == "process.exec":
            return dataclasses.replace(
                phase, attributes={**phase.attributes, "argv": ["/app", IMG_ARGV, LINK_ARGV]}
            )
        if phase.name == "runtime.start":
            return dataclasses.replace(phase, error=SCRIPT_ERROR)
        return phase

    xss = xss_pod()
    slow = dataclasses.replace(
        xss,
        end_ns=xss.end_ns + 40_000_000,
        phases=(
            dataclasses.replace(xss.phases[0], end_ns=xss.phases[0].end_ns + 40_000_000),
            *(poison(p) for p in xss.phases[1:]),
        ),
    )
    return make_analysis([web_pod(), failed_pod(), slow])


@pytest.fixture
def browser() -> Iterator[Browser]:
    profile = Path(tempfile.mkdtemp(prefix="sp-chromium-"))
    session = Browser(profile)
    try:
        yield session
    finally:
        session.close()
        shutil.rmtree(profile, ignore_errors=True)


def test_report_in_headless_chromium(browser: Browser, tmp_path: Path) -> None:
    analysis = hostile_analysis()
    pods = select_pods(analysis, 20, None)
    report = tmp_path / "report.html"
    html.write(analysis, pods, report)
    figures = 4 + len(pods)

    for domain in ("Page", "Runtime", "Log", "Network"):
        browser.call(f"{domain}.enable")
    started = time.monotonic()
    browser.call("Page.navigate", url=report.as_uri())
    browser.wait_for("Page.loadEventFired")
    drawn = browser.poll(
        f"document.querySelectorAll('.js-plotly-plot .main-svg').length >= {figures}", True
    )
    load_s = time.monotonic() - started
    assert drawn, "the figures were not drawn"
    plots = browser.evaluate("document.querySelectorAll('.js-plotly-plot').length")
    assert plots == figures
    bars = browser.evaluate("document.querySelectorAll('#fig-pod-1 .point').length")
    assert bars == len(pods[0].phases), "one bar per phase in the first waterfall"

    assert browser.problems() == []
    assert all(url.startswith(("file:", "data:")) for url in browser.requests()), browser.requests()

    text = browser.evaluate("document.body.innerText")
    slowest = max(analysis.pods, key=lambda p: p.duration_ns)
    assert slowest.name == XSS_NAME
    assert XSS_NAME in text, "the slowest pod's name is visible, as text"
    assert SCRIPT_ERROR not in text  # errors are in hover text only, not on the page
    assert browser.evaluate("document.scripts.length") == 3
    assert browser.evaluate("document.querySelectorAll('img, iframe, object, embed').length") == 0
    assert browser.evaluate("typeof window.Plotly") == "object"

    # the hostile argv reaches the hover label, as text
    fig = f"fig-pod-{[p.name for p in pods].index(XSS_NAME) + 1}"
    browser.evaluate(
        f"(() => {{ const gd = document.getElementById('{fig}');"
        " const t = gd.data.findIndex(d => d.name === 'on the critical path');"
        " const i = gd.data[t].customdata.findIndex(c => c.endsWith('/exec'));"
        " Plotly.Fx.hover(gd, [{curveNumber: t, pointNumber: i}], 'xy'); })()"
    )
    browser.poll(f"document.querySelector('#{fig} .hoverlayer').textContent.includes('argv')", True)
    label = browser.evaluate(f"document.querySelector('#{fig} .hoverlayer').textContent")
    assert IMG_ARGV in label, label
    assert LINK_ARGV in label, label
    assert browser.evaluate("document.querySelectorAll('.main-svg a').length") == 0
    ticks = browser.evaluate(f"document.querySelector('#{fig} .yaxislayer-above').textContent")
    assert "container <b>side</b>" in ticks, ticks
    title = browser.evaluate(f"document.querySelector('#{fig} .gtitle').textContent")
    assert title.startswith(XSS_NAME), title
    assert browser.evaluate("document.querySelectorAll('img').length") == 0
    assert browser.evaluate("document.scripts.length") == 3
    assert browser.problems() == []

    shot = browser.call(
        "Page.captureScreenshot",
        format="png",
        clip={"x": 0, "y": 0, "width": VIEWPORT[0], "height": VIEWPORT[1], "scale": 0.25},
    )
    width, height, pixels = png_pixels(base64.b64decode(shot["data"]))
    assert (width, height) == (VIEWPORT[0] // 4, VIEWPORT[1] // 4)
    colours = set(pixels)
    assert len(colours) > 20, f"a blank screenshot: {len(colours)} colours"
    full = browser.call("Page.captureScreenshot", format="png", captureBeyondViewport=True)
    (tmp_path / "report.png").write_bytes(base64.b64decode(full["data"]))
    print(
        f"report {report.stat().st_size} bytes drawn in {load_s:.1f} s; {len(colours)} colours",
        file=sys.stderr,
    )
    assert os.path.getsize(tmp_path / "report.png") > 10_000
