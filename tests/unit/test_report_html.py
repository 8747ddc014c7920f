"""The HTML report: what its figures hold (from the model), escaping, size, the command."""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Sequence
from datetime import datetime
from html import escape, unescape
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import plotly.graph_objects as go
import pytest
from click.testing import CliRunner
from factories import XSS_NAME, failed_pod, make_analysis, web_pod, xss_pod

from startprof.analysis.model import Analysis, Phase, Pod
from startprof.analysis.selection import select_pods
from startprof.cli.report import DEFAULT_TOP, report_command
from startprof.errors import InputError
from startprof.reporters import html
from startprof.reporters import page as kit

RECORDINGS = Path(__file__).resolve().parents[1] / "data" / "recordings"
IMG_ARGV = '"><img src=x onerror=alert(1)>'
SCRIPT_ERROR = "</script><script>alert(2)</script>"
HOSTILE_HOST = "node-b<svg onload=alert(3)>"
GENERATED = datetime(2025, 11, 24, 16, 0, 0)


# --- helpers ------------------------------------------------------------------------------


class Page(HTMLParser):
    """Tags and text of a page as a browser's tokenizer sees them (script bodies are opaque)."""

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []
        self.feed(text)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data: str) -> None:
        if self.tags and self.tags[-1][0] not in ("script", "style"):
            self.text.append(data)

    def count(self, tag: str) -> int:
        return sum(1 for t, _ in self.tags if t == tag)


def figures_of(page: str) -> list[dict[str, Any]]:
    match = re.search(
        r'<script nonce="[^"]+" id="startprof-figures" type="application/json">(.*?)'
        r"</script>",
        page,
        re.S,
    )
    assert match, "no figures element"
    figures: list[dict[str, Any]] = json.loads(match.group(1))
    return figures


def without_plotly_js(page: str) -> str:
    start = page.index("<script nonce=")
    end = page.index("</script>", start)
    return page[:start] + page[end:]


def trace(figure: dict[str, Any], name: str) -> dict[str, Any]:
    found: list[dict[str, Any]] = [t for t in figure["data"] if t.get("name") == name]
    assert len(found) == 1, (name, [t.get("name") for t in figure["data"]])
    return found[0]


def scaled(pod: Pod, factor: float, index: int) -> Pod:
    """The pod with every duration and self time times ``factor``, under fresh ids."""
    t0 = pod.start_ns + index * 1_000_000_000

    def at(ns: int) -> int:
        return t0 + round((ns - pod.start_ns) * factor)

    phases = tuple(
        dataclasses.replace(
            p, start_ns=at(p.start_ns), end_ns=at(p.end_ns), self_ns=round(p.self_ns * factor)
        )
        for p in pod.phases
    )
    return dataclasses.replace(
        pod,
        sandbox_id=f"{index:064x}",
        name=f"{pod.name}-{index}",
        start_ns=phases[0].start_ns,
        end_ns=phases[0].end_ns,
        phases=phases,
    )


def many_pods(n: int) -> Analysis:
    """``n`` pods replicated from the factories (a sixth of them failed) with fresh ids."""
    bases = (web_pod(), failed_pod(), web_pod(), xss_pod(), web_pod(), xss_pod())
    pods = [scaled(bases[i % len(bases)], 1 + (i % 17) / 10, i) for i in range(n)]
    return make_analysis(pods)


def hostile_analysis() -> Analysis:
    """The factories' analysis with markup in an argv, an error and a host name as well."""

    def poison(phase: Phase) -> Phase:
        if phase.name == "process.exec":
            return dataclasses.replace(
                phase, attributes={**phase.attributes, "argv": ["/app", IMG_ARGV]}
            )
        if phase.name == "cni.plugin bridge":
            return dataclasses.replace(phase, error=SCRIPT_ERROR, status="error")
        return phase

    xss = xss_pod()
    xss = dataclasses.replace(
        xss,
        host=HOSTILE_HOST,
        phases=tuple(poison(p) for p in xss.phases),
        status="failed",
        failed_phase="cni.plugin bridge",
        bottleneck=f"{IMG_ARGV} 12 ms",
    )
    return make_analysis([web_pod(), failed_pod(), xss])


def render(analysis: Analysis, top: int | None = 20) -> str:
    return html.render(analysis, select_pods(analysis, top, None), generated=GENERATED)


WEB_ORDER = [
    ("pod", 0),
    ("sandbox", 1),
    ("sandbox/netns", 2),
    ("sandbox/cni.add", 2),
    ("sandbox/cni.add/bridge", 3),
    ("sandbox/cni.add/bridge/netlink/1", 4),
    ("sandbox/cni.add/bridge/exec/1", 4),
    ("sandbox/cni.add/bridge/exec/2", 4),
    ("sandbox/cni.add/bridge/exec/3", 4),
    ("sandbox/cni.add/loopback", 3),
    ("sandbox/shim", 2),
    ("sandbox/runtime.create", 2),
    ("sandbox/runtime.start", 2),
    ("wait/1", 1),
    ("image", 1),
    ("container/app", 1),
    ("container/app/create", 2),
    ("container/app/start", 2),
    ("container/app/start/runtime.create", 3),
    ("container/app/start/runtime.start", 3),
    ("container/app/start/exec", 3),
]


# --- waterfalls ---------------------------------------------------------------------------


def test_waterfall_rows_are_the_phase_tree_depth_first_with_indented_labels() -> None:
    pod = web_pod()
    assert [(p.id, d) for p, d in html.tree_order(pod)] == WEB_ORDER
    figure = html.waterfall_figure(pod, "fig")
    labels = figure["layout"]["yaxis"]["ticktext"]
    assert len(labels) == len(WEB_ORDER)
    for label, (phase_id, depth) in zip(labels, WEB_ORDER, strict=True):
        assert label.strip("\u00a0") == kit.ptext(pod.phase(phase_id).name)
        assert len(label) - len(label.lstrip("\u00a0")) == 2 * depth
    assert len({len(label) for label in labels}) == 1, "padded to one width"
    rows = {
        phase_id: row
        for t in figure["data"]
        for row, phase_id in zip(t["y"], t["customdata"], strict=True)
    }
    assert [rows[phase_id] for phase_id, _ in WEB_ORDER] == list(range(len(WEB_ORDER)))


@pytest.mark.parametrize("pod", [web_pod(), failed_pod(), xss_pod()], ids=lambda p: p.name)
def test_waterfall_traces_split_phases_by_critical_path_and_failure(pod: Pod) -> None:
    figure = html.waterfall_figure(pod, "fig")
    held = {t["name"]: set(t["customdata"]) for t in figure["data"]}
    failed = {p.id for p in pod.phases if p.status == "error"}
    assert held.get("failed", set()) == failed
    assert held["on the critical path"] == {
        p.id for p in pod.phases if p.on_critical_path and p.id not in failed
    }
    assert held.get("off the critical path", set()) == {
        p.id for p in pod.phases if not p.on_critical_path and p.id not in failed
    }
    assert sum(len(ids) for ids in held.values()) == len(pod.phases)


def test_failed_phases_are_red_and_outlined_when_on_the_critical_path() -> None:
    figure = html.waterfall_figure(failed_pod(), "fig")
    red = trace(figure, "failed")
    assert red["marker"]["color"] == kit.COLOR_FAILED
    assert set(red["customdata"]) == {"sandbox", "sandbox/cni.add/bridge"}
    assert red["marker"]["line"]["width"] > 0
    assert red["marker"]["line"]["color"] == ["#212529", "#212529"]
    assert trace(figure, "on the critical path")["marker"]["color"] == kit.COLOR_CRITICAL


def test_waterfall_bars_span_each_phase_in_ms_from_the_pod_start() -> None:
    pod = web_pod()
    figure = html.waterfall_figure(pod, "fig")
    for t in figure["data"]:
        for phase_id, base, width in zip(t["customdata"], t["base"], t["x"], strict=True):
            phase = pod.phase(phase_id)
            assert base == pytest.approx((phase.start_ns - pod.start_ns) / 1e6, abs=1e-3)
            assert width == pytest.approx(phase.duration_ns / 1e6, abs=1e-3)
    assert figure["layout"]["xaxis"]["range"][1] > pod.duration_ns / 1e6


def test_hover_shows_pid_argv_netlink_status_and_self_time() -> None:
    pod = web_pod()
    figure = html.waterfall_figure(pod, "fig")
    hover = dict(
        zip(
            trace(figure, "on the critical path")["customdata"],
            trace(figure, "on the critical path")["hovertext"],
            strict=True,
        )
    )
    bridge = hover["sandbox/cni.add/bridge"]
    assert "<b>cni.plugin bridge</b>" in bridge
    assert "pid: 2001" in bridge
    assert "argv: /usr/lib/cni/bridge" in bridge
    assert "netlink_ops: RTM_NEWLINK \u00d75, RTM_GETLINK \u00d78, RTM_NEWADDR \u00d71" in bridge
    assert "status: ok" in bridge
    assert "self 10.0 ms" in bridge
    assert "@4.1 ms +19.4 ms" in bridge
    iptables = hover["sandbox/cni.add/bridge/exec/3"]
    assert "argv: iptables -t nat -A POSTROUTING -j CNI-abc" in iptables
    failed = html.waterfall_figure(failed_pod(), "fig")
    red = dict(
        zip(
            trace(failed, "failed")["customdata"], trace(failed, "failed")["hovertext"], strict=True
        )
    )
    assert "status: error" in red["sandbox/cni.add/bridge"]
    assert "error: exit code 1" in red["sandbox/cni.add/bridge"]
    assert "exit_code: 1" in red["sandbox/cni.add/bridge"]
    off = trace(figure, "off the critical path")["hovertext"][0]
    assert "off the critical path" in off


def test_hover_skips_empty_attributes_and_wraps_long_ones() -> None:
    pod = web_pod()
    phase = dataclasses.replace(
        pod.phase("sandbox/cni.add/bridge/netlink/1"),
        attributes={
            "ifnames": np.array(["eth0", "veth1"]),
            "link_kinds": np.array([]),
            "errors": None,
            "argv": ["iptables", *["-m comment --comment <x>"] * 8],
        },
    )
    hover = html.phase_hover(pod, phase)
    assert "ifnames: eth0 veth1" in hover
    assert "link_kinds" not in hover and "errors" not in hover
    argv = hover[hover.index("argv:") :].split("<br>")
    assert len(argv) == 3
    assert all(len(unescape(line)) <= 4 + html.HOVER_WIDTH for line in argv)
    assert argv[1].startswith("\u00a0" * 4)
    assert "&lt;x&gt;" in hover and "<x>" not in hover


# --- summary figures ----------------------------------------------------------------------


def test_composition_stacks_each_groups_critical_time_by_phase() -> None:
    analysis = make_analysis()
    figures = {f["id"]: f for f in html.build_figures(analysis, [])}
    composition = figures["fig-composition"]
    for row, pod in enumerate((xss_pod(), web_pod())):  # groups sorted: crun, runc
        assert pod.runtime_handler in composition["data"][0]["y"][row]
        stacked = sum(t["x"][row] for t in composition["data"])
        # the critical path's self times tile the pod; the root's own share is not a phase
        own = pod.phases[0].self_ns
        assert stacked == pytest.approx((pod.duration_ns - own) / 1e6, abs=0.01)
    assert trace(composition, "cni.plugin bridge")["x"] == [10.0, 10.0]
    assert trace(composition, "exec iptables")["x"] == [8.5, 8.5]  # 3 execs, summed per pod
    assert trace(composition, "sandbox")["x"] == [13.9, 13.9]
    stacks = [t["x"][0] for t in composition["data"] if t["name"] != "other"]
    assert stacks == sorted(stacks, reverse=True), "largest critical time first"
    assert "failed" not in json.dumps(composition)  # failed pods do not count


def test_composition_takes_the_median_over_pods() -> None:
    pods = [scaled(web_pod(), f, i) for i, f in enumerate((1.0, 4.0, 2.0))]
    composition = html.build_figures(make_analysis(pods), [])[0]
    assert composition["id"] == "fig-composition"
    assert len(composition["data"][0]["y"]) == 1
    assert trace(composition, "cni.plugin bridge")["x"] == [pytest.approx(2 * 10.0)]
    assert trace(composition, "exec iptables")["x"] == [pytest.approx(2 * 8.5)]


def test_distribution_boxes_hold_each_completed_pods_phase_duration() -> None:
    figures = {f["id"]: f for f in html.build_figures(make_analysis(), [])}
    boxes = figures["fig-distribution"]
    bridge = trace(boxes, "cni.plugin bridge")
    assert sorted(bridge["x"]) == [19.4, 19.4]  # web-0 and the crun pod, not the failed db-0
    assert sorted(bridge["text"]) == sorted([kit.ptext(XSS_NAME), "web-0"])
    assert trace(boxes, "exec iptables")["x"] == [8.5, 8.5]  # 3 execs summed per pod
    assert boxes["layout"]["xaxis"]["type"] == "log"
    firsts = [t["name"] for t in boxes["data"]][:2]
    assert firsts == [t["name"] for t in figures["fig-composition"]["data"]][:2]


def test_cdf_covers_completed_pods_in_order() -> None:
    pods = [scaled(web_pod(), f, i) for i, f in enumerate((3.0, 1.0, 2.0))]
    analysis = make_analysis([*pods, failed_pod()])
    figures = {f["id"]: f for f in html.build_figures(analysis, [])}
    (line,) = figures["fig-cdf"]["data"]
    assert line["x"][1:] == sorted(p.duration_ns / 1e6 for p in pods)
    assert line["y"] == [0.0, 0.3333, 0.6667, 1.0]
    assert line["text"][1:] == ["web-0-1", "web-0-2", "web-0-0"]
    timeline = figures["fig-timeline"]
    assert [t["name"] for t in timeline["data"]] == ["runc ok", "failed"]
    assert trace(timeline, "failed")["y"] == [failed_pod().duration_ns / 1e6]
    assert trace(timeline, "runc ok")["x"] == [0.0, 1.0, 2.0]  # s since the first pod started


def test_every_figure_is_valid_plotly() -> None:
    analysis = hostile_analysis()
    for figure in html.build_figures(analysis, select_pods(analysis, None, None)):
        go.Figure(data=figure["data"], layout=figure["layout"])  # raises on unknown properties


# --- stored recordings --------------------------------------------------------------------


def _recordings() -> list[Path]:
    return sorted(RECORDINGS.glob("*.arrows"))


@pytest.mark.skipif(not _recordings(), reason=f"no stored recordings in {RECORDINGS}")
@pytest.mark.parametrize("path", _recordings(), ids=lambda p: p.stem)
def test_figures_from_stored_recordings_follow_the_analysis(path: Path) -> None:
    from startprof.pipeline import analyze_files

    analysis = analyze_files([path])
    # every stored recording holds pod starts but the quiet node's (issue 14)
    assert bool(analysis.pods) != (path.stem == "quiet"), "a stored recording holds pod starts"
    pods = select_pods(analysis, 20, None)
    figures = html.build_figures(analysis, pods)
    waterfalls = [f for f in figures if f["id"].startswith("fig-pod-")]
    assert len(waterfalls) == len(pods)
    for pod, figure in zip(pods, waterfalls, strict=True):
        shown = {phase_id for t in figure["data"] for phase_id in t["customdata"]}
        assert shown == {p.id for p in pod.phases}
        critical = set(trace(figure, "on the critical path")["customdata"])
        assert critical == {p.id for p in pod.phases if p.on_critical_path and p.status == "ok"}
        assert {s.phase_id for s in pod.critical_path} <= critical | {
            p.id for p in pod.phases if p.status == "error"
        }
    page = html.render(analysis, pods, generated=GENERATED)
    for pod in pods:
        assert escape(html.pod_label(pod)) in page
        assert escape(pod.bottleneck) in page


# --- the page -----------------------------------------------------------------------------


def test_hostile_strings_render_as_text_and_add_no_element() -> None:
    page = render(hostile_analysis())
    parsed = Page(page)
    scripts = [attrs for tag, attrs in parsed.tags if tag == "script"]
    assert len(scripts) == 3, "plotly.js, the figures' JSON, the code drawing them"
    nonces = {attrs.get("nonce") for attrs in scripts}
    assert len(nonces) == 1 and None not in nonces
    assert [attrs.get("id") for attrs in scripts] == [None, "startprof-figures", None]
    for tag in ("img", "svg", "iframe", "object", "embed"):
        assert parsed.count(tag) == 0, tag
    text = "".join(parsed.text)
    for hostile in (XSS_NAME, IMG_ARGV.split(" ")[0], SCRIPT_ERROR, HOSTILE_HOST, 'ns"&<x>'):
        assert hostile in text, hostile
    outside = without_plotly_js(page)
    for raw in ("<script>alert", "<img", "<svg", "<b>side"):
        assert raw not in outside, raw
    blob = json.dumps(figures_of(page))
    assert "<" not in page[page.index('id="startprof-figures"') :].split("</script>")[0][60:]
    # plotly decodes &lt; &gt; &amp; and shows the characters, but would show &quot; as is
    assert 'argv: /app \\"&gt;&lt;img src=x onerror=alert(1)&gt;' in blob
    assert "&quot;" not in blob
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in blob
    assert "container &lt;b&gt;side&lt;/b&gt;" in blob


def test_script_json_cannot_end_a_script_element() -> None:
    value = {"name": "</script><!-- <script>", "sep": "a\u2028b\u2029c", "amp": "&"}
    text = kit.script_json(value)
    for char in "<>&\u2028\u2029":
        assert char not in text
    assert json.loads(text) == value


def test_plotly_js_is_inlined_once_and_nothing_is_fetched() -> None:
    page = render(make_analysis())
    parsed = Page(page)
    assert page.count("plotly.js v") == 1, "one copy of plotly.js, not one per figure"
    for tag, attrs in parsed.tags:
        assert "src" not in attrs, tag
        href = attrs.get("href")
        assert href is None or href.startswith(("#", "data:")), href
    (csp,) = [
        a["content"] for t, a in parsed.tags if a.get("http-equiv") == "Content-Security-Policy"
    ]
    assert csp is not None
    policy = dict(part.strip().split(" ", 1) for part in csp.split(";"))
    assert policy["default-src"] == "'none'"
    (nonce,) = {a["nonce"] for t, a in parsed.tags if t == "script"}
    assert policy["script-src"] == f"'nonce-{nonce}'", "no inline handler can run"
    assert f'nonce="{nonce}"' not in render(make_analysis()), "a fresh nonce per report"


def test_header_states_the_recording_and_calls_out_failed_pods() -> None:
    analysis = make_analysis()
    analysis = dataclasses.replace(
        analysis, recording=dataclasses.replace(analysis.recording, drops=7, complete=False)
    )
    text = "".join(Page(render(analysis)).text)
    assert "node-a, node-b" in text
    assert "6.18.0-amd64" in text
    assert "2025-11-24 15:59:59.123 UTC" in text
    assert "3: 2 ok, 1 failed, 0 incomplete" in text
    assert "7 events dropped" in text
    assert "a recording was cut short" in text
    assert "1 failed pods" in text
    assert "1 in cni.plugin bridge: exit code 1: db-0" in text
    assert "Failed in cni.plugin bridge" in text
    assert "Bottleneck: runtime.create 24.7 ms" in text


def test_failed_pods_are_grouped_by_phase_and_error() -> None:
    text = "".join(Page(render(many_pods(100), top=3)).text)
    assert "17 failed pods" in text
    examples = "db-0-1, db-0-7, db-0-13, db-0-19, db-0-25 and 12 more"
    assert f"17 in cni.plugin bridge: exit code 1: {examples}" in text
    assert "db-0-97 (shop, node-a) in cni.plugin bridge" in text  # the full list, folded


def test_incomplete_pods_are_called_out() -> None:
    pod = dataclasses.replace(web_pod(), status="incomplete")
    text = "".join(Page(render(make_analysis([pod, xss_pod()]))).text)
    assert "1 incomplete pods" in text
    assert "Incomplete: the recording holds only part" in text


def test_slowest_table_ranks_failed_first_then_by_duration() -> None:
    pods = [scaled(web_pod(), f, i) for i, f in enumerate((1.0, 3.0, 2.0))]
    analysis = make_analysis([*pods, failed_pod()])
    page = html.render(analysis, select_pods(analysis, 2, None), generated=GENERATED)
    rows = re.findall(r'<tr><td class="num">(\d+)</td><td><a href="#(pod-\d+)">([^<]+)</a>', page)
    assert rows == [("1", "pod-1", "db-0"), ("2", "pod-2", "web-0-1")]
    assert "2 of 4 pods, failed first, then slowest first." in page
    assert [f["id"] for f in figures_of(page)][-2:] == ["fig-pod-1", "fig-pod-2"]


def test_an_analysis_without_pods_still_renders() -> None:
    page = render(make_analysis([]))
    assert figures_of(page) == []
    assert "No pod starts in the recording." in page


def test_a_thousand_pods_make_aggregates_plus_top_waterfalls_under_10_mb() -> None:
    analysis = many_pods(1000)
    page = render(analysis, top=DEFAULT_TOP)
    size = len(page.encode("utf-8"))
    assert size < 10_000_000, size
    ids = [f["id"] for f in figures_of(page)]
    assert ids == ["fig-composition", "fig-distribution", "fig-cdf", "fig-timeline"] + [
        f"fig-pod-{i}" for i in range(1, 21)
    ]
    assert page.count('<section class="pod"') == 20
    assert "20 of 1000 pods" in page
    failed = sum(p.status == "failed" for p in analysis.pods)
    assert 100 < failed < 200
    assert f'1000: {1000 - failed} ok, <span class="bad">{failed} failed</span>' in page


# --- the command --------------------------------------------------------------------------


@pytest.fixture
def fake_recording(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """A recording path whose analysis is the factories' (the pipeline is tested elsewhere)."""
    seen: list[Sequence[Path]] = []

    def fake_analyze(paths: Sequence[Path], jobs: int | None = None) -> Analysis:
        seen.append(paths)
        return make_analysis()

    monkeypatch.setattr("startprof.pipeline.analyze_files", fake_analyze)
    path = tmp_path / "pods.arrows"
    path.write_bytes(b"")
    return path


def test_report_writes_to_reports_by_default(
    fake_recording: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(report_command, [str(fake_recording)])
    assert result.exit_code == 0, result.output
    (written,) = (tmp_path / "reports").glob("startprof-*.html")
    assert re.fullmatch(r"startprof-\d{8}-\d{6}\.html", written.name)
    assert result.output.startswith(f"reports/{written.name} (4.")
    assert "MB): 3 pods, 3 waterfalls" in result.output


def test_report_output_top_and_pod(fake_recording: Path, tmp_path: Path) -> None:
    out = tmp_path / "deep" / "er" / "web.html"
    result = CliRunner().invoke(
        report_command, [str(fake_recording), "-o", str(out), "--pod", "web-0"]
    )
    assert result.exit_code == 0, result.output
    assert "3 pods, 1 waterfall\n" in result.output
    assert [f["id"] for f in figures_of(out.read_text())][-1] == "fig-pod-1"
    assert out.read_text().count('<section class="pod"') == 1
    result = CliRunner().invoke(report_command, [str(fake_recording), "-o", str(out), "--top", "0"])
    assert result.exit_code == 0, result.output
    assert '<section class="pod"' not in out.read_text()


def test_report_unknown_pod_is_an_input_error(fake_recording: Path, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no pod 'nope'") as info:
        report_command.main([str(fake_recording), "--pod", "nope"], standalone_mode=False)
    assert info.value.fix is not None and "web-0" in info.value.fix


def test_report_unwritable_output_is_an_input_error(fake_recording: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(InputError, match="cannot write"):
        report_command.main(
            [str(fake_recording), "-o", str(blocker / "r.html")], standalone_mode=False
        )


def test_report_help_has_examples() -> None:
    result = CliRunner().invoke(report_command, ["--help"])
    assert result.exit_code == 0
    assert "startprof report -o reports/runc-bridge.html pods.arrows" in result.output
    assert "--top" in result.output and "--pod" in result.output
