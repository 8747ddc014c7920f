"""Faults, floods, load and secrets on real pods (issue 9).

Every recording here is made through the CLI (``python -m startprof record``) against the
session's lab, as a user would; the checks read the file back and analyse it. Probes must be
gone from the kernel after every exit, clean or not: the kernel's own list of BPF programs
(``BPF_PROG_GET_NEXT_ID``) is compared before and after.
"""

from __future__ import annotations

import ctypes as ct
import json
import os
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.ipc as ipc
import pytest

from startprof.analysis.model import Analysis, Pod
from startprof.lab.truth import read_truth
from startprof.pipeline import analyze_files
from startprof.recording import read_recording

if TYPE_CHECKING:
    from conftest import RunningLab

STARTPROF = [sys.executable, "-m", "startprof"]
RUN_POD_SANDBOX = "/runtime.v1.RuntimeService/RunPodSandbox"
HANDLER = "runc-bridge"
READY_TIMEOUT_S = 60.0


# --- the kernel's BPF programs ------------------------------------------------------------------
_NR_BPF = 321  # x86_64
_BPF_PROG_GET_NEXT_ID, _BPF_PROG_GET_FD_BY_ID, _BPF_OBJ_GET_INFO_BY_FD = 11, 13, 15
_BPF_PROG_TYPE_TRACEPOINT = 5
_libc = ct.CDLL(None, use_errno=True)
_libc.syscall.restype = ct.c_long


class _IdAttr(ct.Structure):
    _fields_ = (("id", ct.c_uint32), ("next_id", ct.c_uint32), ("open_flags", ct.c_uint32))


class _InfoAttr(ct.Structure):
    _fields_ = (("bpf_fd", ct.c_uint32), ("info_len", ct.c_uint32), ("info", ct.c_uint64))


def tracepoint_programs() -> set[tuple[int, str]]:
    """(id, name) of every tracepoint BPF program loaded in the kernel, whoever holds it.

    A program attached to a tracepoint lives as long as its perf event does, so a probe left
    attached by a dead recorder would still be listed here."""
    found: set[tuple[int, str]] = set()
    attr = _IdAttr(0, 0, 0)
    while _libc.syscall(_NR_BPF, _BPF_PROG_GET_NEXT_ID, ct.byref(attr), ct.sizeof(attr)) == 0:
        prog_id = attr.next_id
        attr.id = prog_id
        fd = _libc.syscall(
            _NR_BPF, _BPF_PROG_GET_FD_BY_ID, ct.byref(_IdAttr(prog_id, 0, 0)), ct.sizeof(attr)
        )
        if fd < 0:
            continue  # unloaded meanwhile
        info = (ct.c_uint8 * 256)()
        query = _InfoAttr(fd, ct.sizeof(info), ct.addressof(info))
        ok = _libc.syscall(_NR_BPF, _BPF_OBJ_GET_INFO_BY_FD, ct.byref(query), ct.sizeof(query))
        os.close(fd)
        if ok == 0 and int.from_bytes(bytes(info[0:4]), "little") == _BPF_PROG_TYPE_TRACEPOINT:
            found.add((prog_id, bytes(info[64:80]).split(b"\0", 1)[0].decode()))
    return found


@pytest.fixture
def probes_released() -> Iterator[set[tuple[int, str]]]:
    """Fails the test if tracepoint programs loaded during it are still in the kernel after it."""
    before = tracepoint_programs()
    yield before
    left = tracepoint_programs() - before
    assert left == set(), f"probes still in the kernel after the recorder exited: {left}"


# --- recording through the CLI ------------------------------------------------------------------
@dataclass
class Recorder:
    proc: subprocess.Popen[bytes]
    out: Path
    log: Path

    def stop(self, sig: signal.Signals = signal.SIGINT, timeout: float = 60) -> int:
        self.proc.send_signal(sig)
        return self.proc.wait(timeout=timeout)

    @property
    def stderr(self) -> str:
        return self.log.read_text()


def env_for(lab: RunningLab) -> dict[str, str]:
    return {**os.environ, "STARTPROF_LAB_DIR": str(lab.paths.root), "COLUMNS": "200"}


def start_recorder(lab: RunningLab, out: Path, *extra: str) -> Recorder:
    """``startprof record`` in the background; returns once its probes are attached (the file
    is created only after they are)."""
    log = out.with_suffix(".log")
    with log.open("wb") as err:
        proc = subprocess.Popen(
            [*STARTPROF, "record", "-o", str(out), "--cri-socket", lab.socket, *extra],
            env=env_for(lab),
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
    deadline = time.monotonic() + READY_TIMEOUT_S
    while not (out.exists() and out.stat().st_size > 0):
        assert proc.poll() is None, f"the recorder exited: {log.read_text()}"
        assert time.monotonic() < deadline, "the recorder never started writing"
        time.sleep(0.05)
    return Recorder(proc, out, log)


def lab_run(
    lab: RunningLab, truth: Path, *more: str, handler: str = HANDLER
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*STARTPROF, "lab", "run", "--dir", str(lab.paths.root), "--runtime-handler", handler,
         "--truth", str(truth), *more],
        capture_output=True, text=True, timeout=300, env=env_for(lab),
    )  # fmt: skip


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*STARTPROF, *args], capture_output=True, text=True, timeout=300, env={**os.environ}
    )


def sandboxes(truth: Path) -> list[str]:
    return [str(t["sandbox_id"]) for t in read_truth(truth) if t["method"] == RUN_POD_SANDBOX]


def by_sandbox(analysis: Analysis) -> dict[str, Pod]:
    return {p.sandbox_id: p for p in analysis.pods}


def assert_fully_there(pod: Pod, runtime: str = "runc") -> None:
    """A pod start with every phase a runc + bridge start has, and no failure."""
    assert pod.status == "ok", (pod.name, pod.status, pod.failed_phase, pod.incomplete_reason)
    names = {p.name for p in pod.phases}
    for phase in (
        "sandbox",
        "sandbox.netns",
        "cni.add",
        "cni.plugin bridge",
        "cni.plugin host-local",
        "runtime.create",
        "runtime.start",
        "container app-0",
        "container.create",
        "container.start",
        "process.exec",
    ):
        assert phase in names, (pod.name, phase)
    assert pod.runtime == runtime
    assert abs(sum(s.self_ns for s in pod.critical_path) - pod.duration_ns) <= 100_000


def refresh(lab: RunningLab) -> None:
    """After a containerd restart: later tests read the new pid from ``lab.info``."""
    info = lab.lab.status()
    assert info is not None
    lab.info = info


# --- faults -------------------------------------------------------------------------------------
def test_sigkill_keeps_what_came_before_the_last_second(
    lab: RunningLab, tmp_path: Path, probes_released: set[tuple[int, str]]
) -> None:
    truth = tmp_path / "truth.jsonl"
    rec = start_recorder(lab, tmp_path / "killed.arrows")
    attached = tracepoint_programs() - probes_released
    assert len(attached) >= 10, "the recorder's probes are listed while it runs"
    try:
        assert lab_run(lab, truth).returncode == 0
        time.sleep(1.5)
    finally:
        assert rec.stop(signal.SIGKILL) == -signal.SIGKILL
    recording = read_recording(rec.out)
    assert not recording.complete
    assert stat.S_IMODE(rec.out.stat().st_mode) == 0o600
    (sandbox,) = sandboxes(truth)
    assert_fully_there(by_sandbox(analyze_files([rec.out]))[sandbox])
    shown = cli("analyze", str(rec.out))
    assert shown.returncode == 0, shown.stderr
    assert "cut short" in shown.stdout


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_sigint_and_sigterm_lose_nothing(
    lab: RunningLab, tmp_path: Path, sig: signal.Signals, probes_released: set[tuple[int, str]]
) -> None:
    truth = tmp_path / "truth.jsonl"
    rec = start_recorder(lab, tmp_path / "r.arrows")
    try:
        assert lab_run(lab, truth, "--pods", "2").returncode == 0
    finally:
        code = rec.stop(sig)
    assert code == 0, rec.stderr
    recording = read_recording(rec.out)
    assert recording.complete and not recording.truncated
    assert recording.end["stop_reason"] == sig.name
    assert recording.table.column("kind")[-1].as_py() == "end"
    assert stat.S_IMODE(rec.out.stat().st_mode) == 0o600
    pods = by_sandbox(analyze_files([rec.out]))
    for sandbox in sandboxes(truth):
        assert_fully_there(pods[sandbox])


def test_containerd_restart_is_followed(
    lab: RunningLab, tmp_path: Path, probes_released: set[tuple[int, str]]
) -> None:
    before, after = tmp_path / "before.jsonl", tmp_path / "after.jsonl"
    rec = start_recorder(lab, tmp_path / "r.arrows")
    try:
        assert lab_run(lab, before).returncode == 0
        new_pid = lab.lab.restart_containerd()
        refresh(lab)
        # the recorder re-scans the socket's listeners every second
        deadline = time.monotonic() + 10
        while not _noted(rec.out, f"following new CRI listener pid {new_pid}"):
            assert time.monotonic() < deadline, "the recorder did not follow the new containerd"
            time.sleep(0.2)
        assert lab_run(lab, after, "--pods", "2").returncode == 0
    finally:
        assert rec.stop() == 0, rec.stderr
    recording = read_recording(rec.out)
    assert new_pid in recording.end["followed_containerd"]
    pods = by_sandbox(analyze_files([rec.out]))
    for sandbox in sandboxes(before) + sandboxes(after):
        assert_fully_there(pods[sandbox])


def _noted(path: Path, message: str) -> bool:
    """The recorder wrote a note with this message (the file is read while it grows)."""
    table = read_recording(path).table
    kinds, attrs = table.column("kind").to_pylist(), table.column("attrs").to_pylist()
    return any(k == "note" and message in (a or "") for k, a in zip(kinds, attrs, strict=True))


BAD_BRIDGE = "sp-bridge-name-too-long"  # > IFNAMSIZ-1: the kernel refuses the link, bridge exits 1


def test_failing_cni_plugin_reports_the_phase_and_exit_code(
    lab: RunningLab, tmp_path: Path
) -> None:
    """A network whose bridge conf the kernel refuses (a bridge name longer than 15 bytes):
    RunPodSandbox fails inside the bridge plugin. The conf is swapped for this test only and
    containerd restarted around it, so it reads the conf at once."""
    conf = next(lab.paths.cni_conf_dir("bridge").glob("*.conflist"))
    good = conf.read_text()
    doc = json.loads(good)
    doc["plugins"][0]["bridge"] = BAD_BRIDGE
    truth, out = tmp_path / "truth.jsonl", tmp_path / "r.arrows"
    try:
        conf.write_text(json.dumps(doc))
        lab.lab.restart_containerd()
        proc = subprocess.run(
            [*STARTPROF, "record", "-o", str(out), "--cri-socket", lab.socket, "--",
             *STARTPROF, "lab", "run", "--dir", str(lab.paths.root), "--truth", str(truth)],
            capture_output=True, text=True, timeout=300, env=env_for(lab),
        )  # fmt: skip
    finally:
        conf.write_text(good)
        lab.lab.restart_containerd()
        refresh(lab)
    assert proc.returncode == 1, proc.stderr  # lab run's exit code: its pod failed
    assert "1 of 1 pod(s) failed" in proc.stderr
    analysis = analyze_files([out])
    (pod,) = [p for p in analysis.pods if p.status == "failed"]
    assert pod.failed_phase == "cni.plugin bridge"
    bridge = next(p for p in pod.phases if p.name == "cni.plugin bridge")
    assert bridge.status == "error"
    # the exit code, then the plugin's own words as containerd relayed them (issue 14)
    assert bridge.error == pod.error
    assert (bridge.error or "").startswith("exit code 1: failed to create bridge")
    assert bridge.attributes["exit_code"] == 1
    sandbox = next(p for p in pod.phases if p.name == "sandbox")
    assert sandbox.status == "error" and "RunPodSandbox" in (sandbox.error or "")
    shown = cli("analyze", str(out))
    assert "failed in cni.plugin bridge" in shown.stdout
    assert "exit code 1" in shown.stdout


def test_event_flood_is_counted_and_marks_pods_incomplete(
    lab: RunningLab, tmp_path: Path, probes_released: set[tuple[int, str]]
) -> None:
    """A one-page ring buffer, every process followed (--all) and an exec storm beside four
    pod starts: records are lost. The loss is counted and shown by record, analyze and report,
    and every pod the loss overlaps is incomplete; a pod still reported ok agrees with the
    lab's ground truth."""
    truth, out, stop = tmp_path / "truth.jsonl", tmp_path / "flood.arrows", tmp_path / "stop"
    storm = f"while [ ! -e {stop} ]; do /bin/true; done"
    run = " ".join(
        [*STARTPROF, "lab", "run", "--dir", str(lab.paths.root), "--pods", "4",
         "--truth", str(truth)]
    )  # fmt: skip
    script = f"({storm}) & {run}; code=$?; touch {stop}; wait; exit $code"
    proc = subprocess.run(
        [*STARTPROF, "record", "--all", "--ringbuf-pages", "1", "-o", str(out),
         "--cri-socket", lab.socket, "--", "sh", "-c", script],
        capture_output=True, text=True, timeout=300, env=env_for(lab),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    recording = read_recording(out)
    drops = int(recording.end["drops"])
    assert drops > 0
    assert f"{drops} dropped" in proc.stderr
    assert "warning: the ring buffer overflowed" in proc.stderr
    # a flood leaves SCHED_IDLE behind at the first full poll, and says so
    assert recording.end["recorder_priority"] == "nice 10"
    notes = recording.frame().query("kind == 'note'")["attrs"].astype(str)
    assert notes.str.contains("the recorder fell behind").any()

    analysis = analyze_files([out])
    assert analysis.recording.drops == drops
    windows = analysis.recording.drop_windows
    assert windows
    truth_rps = {
        str(t["sandbox_id"]): t for t in read_truth(truth) if t["method"] == RUN_POD_SANDBOX
    }
    offset = recording.header.clock_offset_ns
    # a pod may vanish only with every event that names it as a pod (a CNI plugin's
    # CNI_CONTAINERID, a CRI call, bundle annotations): anything seen of a pod is reported
    events = recording.frame().astype(object)
    named = {str(s) for s in events["sandbox_id"].dropna()}
    for env in events["env"].dropna():
        named |= {v.split("=", 1)[1] for v in env if v.startswith("CNI_CONTAINERID=")}
    reported = {p.sandbox_id for p in analysis.pods}
    assert named & set(truth_rps), "the flood left nothing of any pod: the test shows nothing"
    for sandbox in truth_rps:
        assert sandbox in reported or sandbox not in named, sandbox
    for pod in analysis.pods:
        if any(pod.start_ns <= hi and lo <= pod.end_ns for lo, hi in windows):
            assert pod.status != "ok", pod.name
        if pod.status == "ok":  # untouched by the loss: it must be right
            t = truth_rps[pod.sandbox_id]
            sandbox = next(p for p in pod.phases if p.name == "sandbox")
            assert abs(sandbox.start_ns - (int(t["start_monotonic_ns"]) + offset)) < 2_000_000
    assert sum(p.status == "incomplete" for p in analysis.pods) >= 1

    shown = cli("analyze", str(out))
    assert f"drops {drops}" in shown.stdout
    assert f"warning: {drops} events were dropped while recording" in shown.stdout
    as_json = json.loads(cli("analyze", "--json", str(out)).stdout)
    assert as_json["recording"]["drops"] == drops
    assert as_json["recording"]["drop_windows"]
    report = cli("report", str(out), "-o", str(tmp_path / "flood.html"))
    assert report.returncode == 0, report.stderr
    assert f"{drops} events dropped" in (tmp_path / "flood.html").read_text()


def test_load_100_pods_at_concurrency_10_lose_nothing(
    lab: RunningLab, tmp_path: Path, probes_released: set[tuple[int, str]]
) -> None:
    truth, out = tmp_path / "truth.jsonl", tmp_path / "load.arrows"
    rec = start_recorder(lab, out)
    cpu_before, started = _cpu_s(rec.proc.pid), time.monotonic()
    try:
        run = lab_run(lab, truth, "--pods", "100", "--concurrency", "10")
        assert run.returncode == 0, run.stderr
        cpu_run, rss_run = _cpu_s(rec.proc.pid) - cpu_before, _rss_mb(rec.proc.pid)
    finally:
        elapsed = time.monotonic() - started
        rec.proc.send_signal(signal.SIGINT)
        _, status, usage = os.wait4(rec.proc.pid, 0)
        rec.proc.returncode = os.waitstatus_to_exitcode(status)
    assert rec.proc.returncode == 0, rec.stderr
    recording = read_recording(out)
    assert recording.end["drops"] == 0
    assert "0 dropped" in rec.stderr
    assert sum(recording.end["kernel_errors"].values()) == 0, recording.end["kernel_errors"]
    pods = by_sandbox(analyze_files([out]))
    expected = sandboxes(truth)
    assert len(expected) == 100
    for sandbox in expected:
        assert_fully_there(pods[sandbox])
    starts = [
        int(t["start_monotonic_ns"]) for t in read_truth(truth) if t["method"] == RUN_POD_SANDBOX
    ]
    rate = len(starts) / ((max(starts) - min(starts)) / 1e9)
    figures = {
        "pods": len(expected),
        "pod_starts_per_s": round(rate, 1),
        "run_s": round(elapsed, 1),
        "recorder_cpu_s_total": round(usage.ru_utime + usage.ru_stime, 2),
        "recorder_cpu_s_during_run": round(cpu_run, 2),
        "recorder_cpu_pct_of_one_core_during_run": round(100 * cpu_run / elapsed, 1),
        "recorder_rss_mb_at_end_of_run": round(rss_run, 1),
        "recorder_max_rss_mb": round(usage.ru_maxrss / 1024, 1),
        "events": recording.table.num_rows,
        "file_mb": round(out.stat().st_size / 1e6, 2),
    }
    print(f"\nload figures: {json.dumps(figures)}")


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


# --- secrets ------------------------------------------------------------------------------------
CLOUD_SECRET = "AWS_SECRET_ACCESS_KEY"
CLOUD_VALUE = "sp9-cloud-SECRET-wJalrXUtnFEMI-K7MDENG"
APP_VALUE = "sp9-app-SECRET-TOKEN-7c1f0e"

# lab run, with SECRET_TOKEN added to every app container's environment (CreateContainer);
# the value comes from the environment: the recording keeps COMMAND's argv in its header
_WITH_APP_SECRET = """
import os
import sys
import startprof.lab.driver as driver
from startprof.cli import main
from startprof.cri.proto import api_pb2 as api

plain = driver.container_config

def with_secret(*args, **kwargs):
    config = plain(*args, **kwargs)
    config.envs.append(api.KeyValue(key="SECRET_" + "TOKEN", value=os.environ["SP9_APP"].encode()))
    return config

driver.container_config = with_secret
sys.exit(main(sys.argv[1:]))
"""


def _uncompressed(path: Path) -> bytes:
    """Every value in the recording, as uncompressed Arrow bytes (the file is lz4-compressed)."""
    table = read_recording(path).table
    sink = pa.BufferOutputStream()
    with ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def test_secrets_never_reach_a_recording_report_or_export(lab: RunningLab, tmp_path: Path) -> None:
    """A cloud key in containerd's environment (CNI plugins and iptables inherit it) and a
    token in the app container's environment (in the CreateContainer request on the CRI
    socket): neither may appear in the file, the analysis, the report or any export."""
    truth, out = tmp_path / "truth.jsonl", tmp_path / "r.arrows"
    pid = lab.lab.restart_containerd({CLOUD_SECRET: CLOUD_VALUE})
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes()
        assert f"{CLOUD_SECRET}={CLOUD_VALUE}".encode() in environ.split(b"\0")
        lab_cmd = ["lab", "run", "--dir", str(lab.paths.root), "--truth", str(truth)]
        proc = subprocess.run(
            [*STARTPROF, "record", "-o", str(out), "--cri-socket", lab.socket, "--",
             sys.executable, "-c", _WITH_APP_SECRET, *lab_cmd],
            capture_output=True, text=True, timeout=300, env={**env_for(lab), "SP9_APP": APP_VALUE},
        )  # fmt: skip
    finally:
        lab.lab.restart_containerd()
        refresh(lab)
    assert proc.returncode == 0, proc.stderr
    assert stat.S_IMODE(out.stat().st_mode) == 0o600

    # the secrets were there to be leaked: CNI plugins ran, CreateContainer was decoded
    (sandbox,) = sandboxes(truth)
    assert_fully_there(by_sandbox(analyze_files([out]))[sandbox])
    raw = _uncompressed(out)
    assert b"CNI_CONTAINERID=" + sandbox.encode() in raw
    assert b"/runtime.v1.RuntimeService/CreateContainer" in raw

    outputs = {
        "recording file": out.read_bytes(),
        "recording values": raw,
        "analysis JSON": cli("analyze", "--json", str(out)).stdout.encode(),
        "analysis text": cli("analyze", str(out)).stdout.encode(),
    }
    for name, args in (
        ("report HTML", ["report", str(out), "-o", str(tmp_path / "r.html")]),
        ("Jaeger JSON", ["export", str(out), "--jaeger-json", str(tmp_path / "r.jaeger.json")]),
        ("Perfetto JSON", ["export", str(out), "--perfetto", str(tmp_path / "r.perfetto.json")]),
    ):
        done = cli(*args)
        assert done.returncode == 0, done.stderr
        outputs[name] = Path(args[-1]).read_bytes()
    outputs["OTLP spans"] = _otlp_bytes(out)
    for name, data in outputs.items():
        assert data, name
        for secret in (CLOUD_VALUE, APP_VALUE, "SECRET_TOKEN", CLOUD_SECRET):
            assert secret.encode() not in data, f"{secret} leaked into the {name}"


def _otlp_bytes(path: Path) -> bytes:
    """The OTLP request the exporter would send, as bytes (through the SDK's real encoder)."""
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from startprof.exporters.otlp import export_otlp

    memory = InMemorySpanExporter()
    summary = export_otlp(analyze_files([path]), exporter=memory)
    spans: Sequence[object] = memory.get_finished_spans()
    assert summary.spans == len(spans) > 0
    return encode_spans(spans).SerializeToString()  # type: ignore[arg-type,no-any-return]
