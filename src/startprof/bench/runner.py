"""The runtime x CNI matrix: run interleaved rounds of pods on the lab while recording, then
tell every recorded pod's phases to its combination and summarise them.

One recording spans the whole bench and the lab's CRI ground truth says which sandbox belongs
to which combination (docs/bench.md measures why: a recorder start costs ~5 s of BPF
compilation, a long recording costs nothing per round). The bench prints nothing: progress
goes to a :class:`BenchProgress`, the CLI renders it.
"""

from __future__ import annotations

import contextlib
import json
import platform
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, Protocol

import pandas as pd

from startprof import __version__
from startprof.analysis import analyze
from startprof.analysis.model import Analysis, Pod
from startprof.analysis.summary import phase_key, phase_table
from startprof.bench import stats
from startprof.errors import EnvironmentProblem, InputError, LabError, StartprofError
from startprof.lab import cri as m
from startprof.lab.config import NETWORKS, RUNTIMES
from startprof.lab.paths import LabPaths, lab_dir
from startprof.pipeline import read_source

RECORDING = "recording.arrows"
TRUTH = "truth.jsonl"
RESULTS = "results.parquet"
SUMMARY = "summary.json"
REPORT = "report.html"
PODS = "pods.csv"
RECORD_LOG = "record.log"
OUTPUTS = (RECORDING, TRUTH, RESULTS, SUMMARY, REPORT, PODS, RECORD_LOG)

RECORDER_READY_TIMEOUT = 120.0
RECORDER_STOP_TIMEOUT = 120.0

RESULT_COLUMNS = (
    "containerd",
    "runtime",
    "cni",
    "handler",
    "round",
    "pod",
    "sandbox_id",
    "phase",
    "duration_ms",
    "self_ms",
    "on_critical_path",
    "status",
    "pod_status",
)
"""results.parquet: one row per measured pod x phase (docs/bench.md)."""


@dataclass(frozen=True)
class Combination:
    """One OCI runtime with one CNI network: the lab's runtime handler ``<runtime>-<cni>``, on
    one containerd (``--containerd``'s label; empty: whichever the lab runs)."""

    runtime: str
    cni: str
    containerd: str = ""

    @property
    def handler(self) -> str:
        return f"{self.runtime}-{self.cni}"

    @property
    def name(self) -> str:
        """``runc-bridge``, or ``runc-bridge@2.1`` on the containerd axis."""
        return combination_name(self.handler, self.containerd)


def combination_name(handler: str, containerd: str = "") -> str:
    return f"{handler}@{containerd}" if containerd else handler


@dataclass(frozen=True)
class BenchOptions:
    output: Path
    runtimes: tuple[str, ...] = ("runc", "crun")
    cnis: tuple[str, ...] = ("bridge", "ptp")
    # --containerd, each brought up in turn; () runs on whatever lab is up (or system's)
    containerds: tuple[str, ...] = ()
    pods: int = 20
    concurrency: int = 1
    warmup: int = 2
    containers: int = 1
    round_size: int = 5
    lab_dir: Path | None = None
    seed: int = 0
    baseline: Mapping[str, Any] | None = None
    baseline_dir: Path | None = None
    threshold_pct: float | None = None

    @property
    def pods_per_round(self) -> int:
        """``round_size``, but at least ``concurrency`` (a batch must be able to fill it)."""
        return max(self.round_size, self.concurrency)

    @property
    def combinations(self) -> list[Combination]:
        return [c for group in self.groups for c in group]

    @property
    def groups(self) -> list[list[Combination]]:
        """The combinations of each containerd, in ``--containerd``'s order: one lab up each."""
        return [
            [Combination(r, c, version) for r in self.runtimes for c in self.cnis]
            for version in self.containerds or ("",)
        ]


@dataclass(frozen=True)
class Batch:
    """``pods`` pods of one combination, started by one ``run_pods`` call."""

    round: int  # measured rounds count from 0; warm-up rounds separately
    combination: Combination
    pods: int
    warmup: bool


@dataclass(frozen=True)
class StartedPod:
    """A pod the bench started, as the lab driver reported it."""

    combination: Combination
    round: int
    warmup: bool
    name: str
    sandbox_id: str
    cri_start_ms: float | None  # driver-measured: first CRI call to all containers running
    error: str | None


class BenchProgress(Protocol):
    def step(self, message: str) -> None:
        """A stage begins (lab up, recorder, analysis, ...)."""

    def pods_planned(self, total: int) -> None:
        """The number of pods the bench will start, warm-up included."""

    def pods_done(self, count: int, what: str) -> None:
        """``count`` more pods were started and torn down; ``what`` says which."""


class _Quiet:
    def step(self, message: str) -> None:
        return

    def pods_planned(self, total: int) -> None:
        return

    def pods_done(self, count: int, what: str) -> None:
        return


@dataclass
class BenchResult:
    output: Path
    summary: dict[str, Any]
    results: pd.DataFrame
    failures: list[str] = field(default_factory=list)
    changes: list[stats.PhaseChange] = field(default_factory=list)

    @property
    def regressions(self) -> list[stats.PhaseChange]:
        return [c for c in self.changes if c.regressed]


# --- input -------------------------------------------------------------------------------


def parse_choices(text: str, valid: Sequence[str], what: str) -> tuple[str, ...]:
    """``runc,crun`` -> ("runc", "crun"), checked against ``valid``; duplicates dropped."""
    items = [s.strip() for s in text.split(",") if s.strip()]
    if not items:
        raise InputError(f"--{what} is empty; valid: {', '.join(valid)}")
    for item in items:
        if item not in valid:
            raise InputError(f"unknown {what} {item!r}; valid: {', '.join(valid)}")
    return tuple(dict.fromkeys(items))


def parse_containerds(text: str) -> tuple[str, ...]:
    """``1.6,2.1`` -> ("1.6", "2.1"): each a version label or a containerd binary's path."""
    from startprof.lab.versions import CHOICES, parse_choice

    items = [s.strip() for s in text.split(",") if s.strip()]
    if not items:
        raise InputError(f"--containerd is empty; valid: {', '.join(CHOICES)} or a path")
    return tuple(dict.fromkeys(parse_choice(i) for i in items))


def valid_runtimes() -> tuple[str, ...]:
    return tuple(r.name for r in RUNTIMES)


def valid_cnis() -> tuple[str, ...]:
    return tuple(n.name for n in NETWORKS)


def load_baseline(path: Path) -> dict[str, Any]:
    """The summary.json of an earlier bench: ``path`` is its -o DIR or the file itself."""
    file = path / SUMMARY if path.is_dir() else path
    if not file.exists():
        raise InputError(
            f"--baseline {path}: no {SUMMARY} there",
            fix="give the -o DIR of an earlier startprof bench",
        )
    try:
        doc = json.loads(file.read_text())
    except (OSError, ValueError) as exc:
        raise InputError(f"--baseline {file}: not a readable JSON document ({exc})") from exc
    combos = doc.get("combinations") if isinstance(doc, dict) else None
    if not isinstance(combos, list) or not all(
        isinstance(c, dict) and {"runtime", "cni", "pod", "phases"} <= set(c) for c in combos
    ):
        raise InputError(f"--baseline {file}: not a startprof bench summary (no combinations)")
    assert isinstance(doc, dict)
    return doc


def prepare_output(directory: Path) -> Path:
    """Create the output DIR; refuse one that holds an earlier bench (never overwrite it)."""
    if directory.exists() and not directory.is_dir():
        raise InputError(f"-o {directory} exists and is not a directory")
    taken = [name for name in OUTPUTS if (directory / name).exists()]
    if taken:
        raise InputError(
            f"-o {directory} already holds a bench ({', '.join(taken)})",
            fix="choose another -o DIR",
        )
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot create -o {directory}: {exc.strerror or exc}") from exc
    return directory


def check_counts(options: BenchOptions) -> None:
    for flag, value, low in (
        ("--pods", options.pods, 1),
        ("--concurrency", options.concurrency, 1),
        ("--warmup", options.warmup, 0),
        ("--containers", options.containers, 1),
        ("--round-size", options.round_size, 1),
    ):
        if value < low:
            raise InputError(f"{flag} must be at least {low}, got {value}")


# --- plan ----------------------------------------------------------------------------------


def plan_batches(
    combinations: Sequence[Combination], pods: int, warmup: int, round_size: int
) -> list[Batch]:
    """Warm-up rounds, then measured rounds; each round runs up to ``round_size`` pods of every
    combination, and the combinations' order rotates by one each round, so slow drift of the
    machine (and whatever the previous combination's tear-down leaves running) hits all alike."""
    batches: list[Batch] = []
    turn = 0
    for total, warm in ((warmup, True), (pods, False)):
        left, number = total, 0
        while left > 0:
            k = min(round_size, left)
            shift = turn % len(combinations)
            for combo in [*combinations[shift:], *combinations[:shift]]:
                batches.append(Batch(number, combo, k, warm))
            left -= k
            number += 1
            turn += 1
    return batches


# --- the recorder ----------------------------------------------------------------------------


class RecorderProcess:
    """``startprof record`` in its own session, recording until its COMMAND exits.

    COMMAND is a tiny waiter that prints one line when it starts (record starts COMMAND only
    once every probe is attached) and exits when its stdin closes. Closing that pipe stops the
    recording cleanly; so does the death of the bench, however it dies, so no recorder outlives
    it. Its own session keeps a Ctrl-C meant for the bench from cutting the recording short
    before the pods in flight have been torn down and drained.
    """

    WAITER = "import sys; print('ready', flush=True); sys.stdin.read()"

    def __init__(self, output: Path, cri_socket: str, log: Path) -> None:
        self.output = output
        self.cri_socket = cri_socket
        self.log = log
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_file: IO[bytes] | None = None

    def start(self, timeout: float = RECORDER_READY_TIMEOUT) -> None:
        self._log_file = self.log.open("ab")
        command = [
            sys.executable, "-m", "startprof", "record",
            "-o", str(self.output), "--cri-socket", self.cri_socket,
            "--", sys.executable, "-c", self.WAITER,
        ]  # fmt: skip
        self._proc = subprocess.Popen(
            command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log_file,
            start_new_session=True,
        )
        assert self._proc.stdout is not None
        ready, _, _ = select.select([self._proc.stdout], [], [], timeout)
        line = self._proc.stdout.readline() if ready else b""
        if line.strip() != b"ready":
            self.stop()
            raise StartprofError(
                f"the recorder did not start: {self.log_tail()}", fix=f"see {self.log}"
            )

    @property
    def running(self) -> bool:
        """Started and not stopped yet (it may have exited on its own)."""
        return self._proc is not None

    def stop(self, timeout: float = RECORDER_STOP_TIMEOUT) -> int | None:
        """Stop the recording (it drains what the kernel still holds); its exit code."""
        proc = self._proc
        if proc is None:
            return None
        with contextlib.suppress(OSError):
            assert proc.stdin is not None
            proc.stdin.close()
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGINT)
            try:
                code = proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                code = proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
        if self._log_file is not None:
            self._log_file.close()
        self._proc = None
        return code

    def log_tail(self, lines: int = 2) -> str:
        try:
            rows = [r for r in self.log.read_text(errors="replace").splitlines() if r.strip()]
        except OSError:
            return "(no log)"
        return " | ".join(r.strip().lstrip("\r") for r in rows[-lines:]) or "(empty log)"


# --- the run ---------------------------------------------------------------------------------


FOLLOW_WAIT_S = 2.5
"""After a lab restart, how long bench waits before the next pods: the recorder looks for a new
containerd on the CRI socket once a second (recorder.HOUSEKEEPING_S) and follows it."""


@dataclass(frozen=True)
class Visit:
    """One stretch of pods on one containerd: the lab (re)started on it, then its batches."""

    containerd: str
    batches: tuple[Batch, ...]


def plan_visits(options: BenchOptions) -> list[Visit]:
    """One containerd: one visit with every round. Several: every measured round visits each
    containerd in turn (the order rotating by one each round, as combinations do inside a
    round), each visit after a lab restart and with its own warm-up pods (a restarted lab is
    cold again), so the machine's drift hits every version alike."""
    groups = options.groups
    plans = [plan_batches(g, options.pods, options.warmup, options.pods_per_round) for g in groups]
    if len(groups) == 1:
        return [Visit(groups[0][0].containerd, tuple(plans[0]))]
    rounds = max(b.round for b in plans[0] if not b.warmup) + 1
    visits: list[Visit] = []
    for r in range(rounds):
        shift = r % len(groups)
        for i in [*range(shift, len(groups)), *range(shift)]:
            warm = [b for b in plans[i] if b.warmup]
            measured = [b for b in plans[i] if not b.warmup and b.round == r]
            visits.append(Visit(groups[i][0].containerd, tuple(warm + measured)))
    return visits


def run_bench(options: BenchOptions, progress: BenchProgress | None = None) -> BenchResult:
    """Run the whole bench and write every output into ``options.output``.

    One recording for the whole bench. On the containerd axis the lab is restarted on each
    containerd in turn, round by round (:func:`plan_visits`); the recorder follows each new
    containerd on the same socket.
    """
    from startprof.lab.containerd import Lab, require_root

    say = progress or _Quiet()
    check_counts(options)
    require_root("bench")
    out = prepare_output(options.output)
    paths = LabPaths(lab_dir(options.lab_dir).absolute())
    lab = Lab(paths)
    _check_installed(options.combinations, lab.handlers())
    found = lab.status()
    if found is not None and options.containerds:
        runs = found.containerd
        if len(options.containerds) > 1 or runs is None or runs.label != options.containerds[0]:
            raise LabError(
                f"the lab in {paths.root} is up (containerd "
                f"{runs.version if runs else 'unknown'}); bench --containerd brings the lab up "
                "on each version itself",
                fix=f"startprof lab down --dir {paths.root}",
            )
    started_wall = datetime.now(UTC)
    t0 = time.monotonic()
    timings: dict[str, float] = {"lab_up_s": 0.0, "lab_down_s": 0.0}
    pods: list[StartedPod] = []
    truth: list[dict[str, Any]] = []
    brought_up = False
    up_on: str | None = None  # the containerd label of a lab bench brought up
    versions: dict[str, str] = {}  # --containerd label -> the version that ran
    visits = plan_visits(options)
    failed: BaseException | None = None
    recorder = RecorderProcess(out / RECORDING, str(paths.socket), out / RECORD_LOG)
    code: int | None = None
    try:
        say.pods_planned(sum(b.pods for v in visits for b in v.batches))
        for visit in visits:
            if up_on is not None and up_on != visit.containerd:
                say.step(f"taking the lab down (next: containerd {visit.containerd})")
                t = time.monotonic()
                lab.down(progress=say.step)
                timings["lab_down_s"] += time.monotonic() - t
                up_on = None
            if lab.status() is None:
                what = f" on containerd {visit.containerd}" if visit.containerd else ""
                say.step(f"bringing the lab up{what}")
                t = time.monotonic()
                lab.up(progress=say.step, containerd=visit.containerd or "system")
                timings["lab_up_s"] += time.monotonic() - t
                brought_up = True
                up_on = visit.containerd
                if recorder.running:
                    time.sleep(FOLLOW_WAIT_S)
            info = lab.status()
            if info is not None and info.containerd is not None:
                versions[visit.containerd] = info.containerd.version
            # The lab may be an older one, up before crun was installed.
            _check_installed({b.combination for b in visit.batches}, lab.handlers())
            if not recorder.running:
                say.step("starting the recorder (compiling the BPF probes)")
                t = time.monotonic()
                recorder.start()
                timings["recorder_ready_s"] = time.monotonic() - t
            t = time.monotonic()
            more_pods, more_truth = _run_batches(
                options, visit.batches, str(paths.socket), out / TRUTH, say
            )
            pods += more_pods
            truth += more_truth
            timings["pods_s"] = timings.get("pods_s", 0.0) + time.monotonic() - t
    except BaseException as exc:
        failed = exc
        raise
    finally:
        # Whatever happened (Ctrl-C included), in this order: the recording drains and
        # closes while containerd still runs, then the lab goes if bench brought it up.
        if recorder.running:
            say.step("stopping the recorder")
            t = time.monotonic()
            code = recorder.stop()
            timings["recorder_stop_s"] = time.monotonic() - t
        if up_on is not None:
            say.step("taking the lab down (bench brought it up)")
            t = time.monotonic()
            try:
                lab.down(progress=say.step)
            except StartprofError:
                if failed is None:
                    raise
            timings["lab_down_s"] += time.monotonic() - t
    if code != 0:
        raise StartprofError(
            f"the recorder failed (exit {code}): {recorder.log_tail()}",
            fix=f"see {out / RECORD_LOG}",
        )
    say.step("analysing the recording")
    t = time.monotonic()
    source = read_source(out / RECORDING)
    analysis = analyze([source])
    by_sandbox = {p.sandbox_id: p for p in pods if p.sandbox_id}
    results = results_table(analysis.pods, by_sandbox)
    agreement = truth_agreement(analysis.pods, by_sandbox, truth, source.clock_offset_ns)
    combos = options.combinations
    combinations = summarize_combinations(
        combos, results, by_sandbox, agreement, options.seed, versions
    )
    timings["analysis_s"] = time.monotonic() - t
    timings["wall_s"] = time.monotonic() - t0
    summary: dict[str, Any] = {
        "combinations": combinations,
        "bench": _bench_info(
            options, analysis, pods, started_wall, timings, brought_up, len(visits)
        ),
    }
    if len(options.containerds) > 1:
        summary["containerd_change"] = containerd_change(options, results, summary)
    changes: list[stats.PhaseChange] = []
    if options.baseline is not None:
        changes = stats.compare(options.baseline, summary, options.threshold_pct or 0.0)
        summary["baseline"] = _baseline_info(options, changes)
    say.step("writing results")
    results.to_parquet(out / RESULTS, index=False)
    (out / SUMMARY).write_text(json.dumps(summary, indent=2, allow_nan=False) + "\n")
    _pods_frame(pods, analysis).to_csv(out / PODS, index=False)
    from startprof.bench.html import write_report

    write_report(summary, results, out / REPORT, changes)
    failures = [f"{p.combination.name} {p.name}: {p.error}" for p in pods if p.error]
    return BenchResult(out, summary, results, failures, changes)


def _check_installed(combos: Iterable[Combination], handlers: Sequence[str]) -> None:
    for combo in combos:
        if combo.handler not in handlers:
            raise EnvironmentProblem(
                f"the lab has no runtime handler {combo.handler} (it has: "
                f"{', '.join(handlers) or 'none'})",
                fix=f"install {combo.runtime} (apt-get install {combo.runtime}); if the lab is "
                "up, take it down and up again",
            )


def _run_batches(
    options: BenchOptions,
    batches: Sequence[Batch],
    cri_socket: str,
    truth_path: Path,
    say: BenchProgress,
) -> tuple[list[StartedPod], list[dict[str, Any]]]:
    from startprof.lab.driver import run_pods

    started: list[StartedPod] = []
    truth: list[dict[str, Any]] = []
    for b in batches:
        result = run_pods(
            cri_socket,
            b.combination.handler,
            pods=b.pods,
            concurrency=options.concurrency,
            containers=options.containers,
            truth_path=truth_path,
        )
        truth += result.records
        started += [
            StartedPod(b.combination, b.round, b.warmup, p.name, p.sandbox_id, p.start_ms, p.error)
            for p in result.pods
        ]
        what = "warm-up" if b.warmup else f"round {b.round + 1}"
        say.pods_done(b.pods, f"{b.combination.name} ({what})")
    return started, truth


# --- results --------------------------------------------------------------------------------


def results_table(pods: Sequence[Pod], started: Mapping[str, StartedPod]) -> pd.DataFrame:
    """One row per measured pod x phase. Phases are grouped as ``startprof analyze`` groups them
    (``runtime.create (sandbox)`` vs ``(container)``; a pod's 9 ``exec iptables`` are one row
    with their summed duration and self time); warm-up pods are left out."""
    measured = [p for p in pods if p.sandbox_id in started and not started[p.sandbox_id].warmup]
    table = phase_table(measured)
    if table.empty:
        return pd.DataFrame({c: pd.Series(dtype=_dtype(c)) for c in RESULT_COLUMNS})
    table["key"] = [phase_key(i, n) for i, n in zip(table["phase_id"], table["phase"], strict=True)]
    table["error"] = table["status"] == "error"
    grouped = (
        table.groupby(["sandbox_id", "key"], sort=False)
        .agg(
            duration_ms=("duration_ms", "sum"),
            self_ms=("self_ms", "sum"),
            on_critical_path=("on_critical_path", "any"),
            error=("error", "any"),
            pod_status=("pod_status", "first"),
        )
        .reset_index()
    )
    info = [started[s] for s in grouped["sandbox_id"]]
    out = pd.DataFrame(
        {
            "containerd": [p.combination.containerd for p in info],
            "runtime": [p.combination.runtime for p in info],
            "cni": [p.combination.cni for p in info],
            "handler": [p.combination.handler for p in info],
            "round": [p.round for p in info],
            "pod": [p.name for p in info],
            "sandbox_id": grouped["sandbox_id"],
            "phase": grouped["key"],
            "duration_ms": grouped["duration_ms"].astype(float),
            "self_ms": grouped["self_ms"].astype(float),
            "on_critical_path": grouped["on_critical_path"].astype(bool),
            "status": ["error" if e else "ok" for e in grouped["error"]],
            "pod_status": grouped["pod_status"],
        }
    )
    return out.loc[:, list(RESULT_COLUMNS)]


def _dtype(column: str) -> str:
    if column in ("duration_ms", "self_ms"):
        return "float64"
    if column == "round":
        return "int64"
    if column == "on_critical_path":
        return "bool"
    return "object"


def truth_agreement(
    pods: Sequence[Pod],
    started: Mapping[str, StartedPod],
    truth: Sequence[Mapping[str, Any]],
    clock_offset_ns: int,
) -> dict[str, list[float]]:
    """Per handler, the absolute differences (ms) between probe-derived and ground-truth times:
    the start and the end of every measured pod's ``sandbox`` phase against the lab client's
    RunPodSandbox, and of every ``container.start`` against its StartContainer.

    The probe sees the call inside containerd (request read .. reply written); the client
    times it around its gRPC call. Both clocks are CLOCK_MONOTONIC, so the phases (wall clock)
    go back by the recording's clock offset. A few tenths of a ms is the gRPC client's own
    latency; more means the probes mistimed or misattributed a call.
    """
    calls: dict[tuple[str, str, str], Mapping[str, Any]] = {}
    for r in truth:
        if r["status"] == "ok" and r["method"] in (m.RUN_POD_SANDBOX, m.START_CONTAINER):
            calls[(r["sandbox_id"], r["method"], r["container"])] = r
    out: dict[str, list[float]] = {}
    for pod in pods:
        sp = started.get(pod.sandbox_id)
        if sp is None or sp.warmup or pod.status != "ok":
            continue
        diffs = out.setdefault(sp.combination.name, [])
        for phase in pod.phases:
            if phase.name == "sandbox":
                key = (pod.sandbox_id, m.RUN_POD_SANDBOX, "")
            elif phase.name == "container.start" and phase.parent_id is not None:
                container = pod.phase(phase.parent_id).name.split(" ", 1)[-1]
                key = (pod.sandbox_id, m.START_CONTAINER, container)
            else:
                continue
            call = calls.get(key)
            if call is None:
                continue
            start = phase.start_ns - clock_offset_ns
            end = phase.end_ns - clock_offset_ns
            diffs.append(abs(start - call["start_monotonic_ns"]) / 1e6)
            diffs.append(abs(end - call["end_monotonic_ns"]) / 1e6)
    return out


def summarize_combinations(
    combos: Sequence[Combination],
    results: pd.DataFrame,
    started: Mapping[str, StartedPod],
    agreement: Mapping[str, Sequence[float]],
    seed: int,
    versions: Mapping[str, str] | None = None,
) -> list[dict[str, Any]]:
    """summary.json's ``combinations``: per combination the pod start and every phase (n,
    median, p95, bootstrap CI of the median, share of the critical path) over the pods whose
    start completed, and the truth agreement."""
    out = []
    for combo in combos:
        mine = results[
            (results["handler"] == combo.handler) & (results["containerd"] == combo.containerd)
        ]
        ok = mine[mine["pod_status"] == "ok"]
        pod_rows = ok[ok["phase"] == "pod"]
        measured = [p for p in started.values() if p.combination == combo and not p.warmup]
        analysed = set(mine["sandbox_id"])
        not_ok = analysed - set(ok["sandbox_id"])
        entry: dict[str, Any] = {
            "runtime": combo.runtime,
            "cni": combo.cni,
            "handler": combo.handler,
            "name": combo.name,
            "containerd": combo.containerd,
            "containerd_version": (versions or {}).get(combo.containerd),
            "n": len(pod_rows),
            # started but failed (by the driver's or the probes' account), and started but
            # never found in the recording: neither counts in n
            "pods_failed": sum(p.error is not None or p.sandbox_id in not_ok for p in measured),
            "pods_unattributed": sum(
                p.error is None and p.sandbox_id not in analysed for p in measured
            ),
        }
        if pod_rows.empty:
            entry["pod"] = {"n": 0, "median_ms": None, "p95_ms": None, "ci95_ms": None}
            entry["phases"] = {}
        else:
            entry["pod"] = stats.describe(
                pod_rows["duration_ms"], seed=stats.seed_for(seed, combo.name, "pod")
            ).to_dict()
            total = float(pod_rows["duration_ms"].sum())
            phases: dict[str, Any] = {}
            rest = ok[ok["phase"] != "pod"]
            for name, group in rest.groupby("phase", sort=False):
                key = str(name)
                stat = stats.describe(
                    group["duration_ms"], seed=stats.seed_for(seed, combo.name, key)
                ).to_dict()
                stat["critical_share"] = round(float(group["self_ms"].sum()) / total, 4)
                phases[key] = stat
            entry["phases"] = phases
        diffs = agreement.get(combo.name, [])
        entry["truth_agreement_ms"] = (
            {
                "n": len(diffs),
                "median": round(stats.median(diffs), 3),
                "p95": round(stats.p95(diffs), 3),
                "max": round(max(diffs), 3),
            }
            if diffs
            else None
        )
        out.append(entry)
    return out


def containerd_change(
    options: BenchOptions, results: pd.DataFrame, summary: Mapping[str, Any]
) -> list[dict[str, Any]]:
    """summary.json's ``containerd_change``: for every runtime x CNI, what moving from the first
    ``--containerd`` to each later one changes, phase by phase (and the whole pod start): both
    medians with their CIs, the change of the median in ms and in % with its own bootstrap 95%
    CI (the two versions' pods resampled independently), and whether that CI excludes 0.
    A phase only one version has is listed with the other side null (``runtime.shim
    (container)`` is gone on 2.x: the app container reuses the sandbox's shim)."""
    by_name = {c["name"]: c for c in summary["combinations"]}
    ok = results[results["pod_status"] == "ok"]
    first, *later = options.containerds
    out: list[dict[str, Any]] = []
    for to in later:
        for runtime in options.runtimes:
            for cni in options.cnis:
                old = Combination(runtime, cni, first)
                new = Combination(runtime, cni, to)
                a, b = by_name.get(old.name), by_name.get(new.name)
                if a is None or b is None or not a["n"] or not b["n"]:
                    continue
                names = ["pod", *dict.fromkeys([*a["phases"], *b["phases"]])]
                phases = []
                for name in names:
                    was = a["pod"] if name == "pod" else a["phases"].get(name)
                    now = b["pod"] if name == "pod" else b["phases"].get(name)
                    row: dict[str, Any] = {"phase": name, "from": was, "to": now}
                    if was is not None and now is not None:
                        xs = _durations(ok, old, name)
                        ys = _durations(ok, new, name)
                        lo, hi = stats.bootstrap_change_ci(
                            xs, ys, seed=stats.seed_for(options.seed, old.name, new.name, name)
                        )
                        change = float(now["median_ms"]) - float(was["median_ms"])
                        row |= {
                            "change_ms": round(change, 3),
                            "change_pct": round(
                                stats.change_pct(float(was["median_ms"]), float(now["median_ms"])),
                                2,
                            ),
                            "change_ci95_pct": [round(lo, 2), round(hi, 2)],
                            "significant": lo > 0 or hi < 0,
                        }
                    phases.append(row)
                out.append(
                    {
                        "runtime": runtime,
                        "cni": cni,
                        "from": first,
                        "to": to,
                        "from_version": a.get("containerd_version"),
                        "to_version": b.get("containerd_version"),
                        "phases": phases,
                    }
                )
    return out


def _durations(ok: pd.DataFrame, combo: Combination, phase: str) -> list[float]:
    rows = ok[
        (ok["containerd"] == combo.containerd)
        & (ok["handler"] == combo.handler)
        & (ok["phase"] == phase)
    ]
    return [float(v) for v in rows["duration_ms"]]


def _bench_info(
    options: BenchOptions,
    analysis: Analysis,
    pods: Sequence[StartedPod],
    started_wall: datetime,
    timings: Mapping[str, float],
    brought_up: bool,
    visits: int,
) -> dict[str, Any]:
    measured = [p for p in pods if not p.warmup]
    return {
        "startprof": __version__,
        "host": socket.gethostname(),
        "kernel": platform.release(),
        "started": started_wall.isoformat(timespec="seconds"),
        "settings": {
            "runtimes": list(options.runtimes),
            "cnis": list(options.cnis),
            "containerds": list(options.containerds),
            "pods": options.pods,
            "warmup": options.warmup,
            "concurrency": options.concurrency,
            "containers": options.containers,
            "round_size": options.pods_per_round,
            "rounds": -(-options.pods // options.pods_per_round),
            "seed": options.seed,
            "bootstrap_resamples": stats.RESAMPLES,
        },
        # lab (re)starts: 1, or one per containerd per round on the containerd axis
        "lab_visits": visits,
        "pods_started": len(pods),
        "pods_measured": len(measured),
        "pods_failed": sum(p.error is not None for p in pods),
        "recording": {
            "file": RECORDING,
            "truth": TRUTH,
            "drops": analysis.recording.drops,
            "complete": analysis.recording.complete,
            "pods_seen": len(analysis.pods),
        },
        "lab_brought_up": brought_up,
        "timings_s": {k: round(v, 3) for k, v in timings.items()},
    }


def _baseline_info(options: BenchOptions, changes: Sequence[stats.PhaseChange]) -> dict[str, Any]:
    return {
        "dir": str(options.baseline_dir) if options.baseline_dir else None,
        # without --fail-on-regression every significant slowdown is listed, and none fails
        "threshold_pct": options.threshold_pct or 0.0,
        "fail_on_regression": options.threshold_pct is not None,
        "compared": len(changes),
        "regressions": [
            {
                "containerd": c.containerd,
                "runtime": c.runtime,
                "cni": c.cni,
                "phase": c.phase,
                "baseline_median_ms": c.baseline_ms,
                "median_ms": c.current_ms,
                "change_pct": round(c.change_pct, 2),
                "baseline_ci95_ms": list(c.baseline_ci),
                "ci95_ms": list(c.current_ci),
            }
            for c in changes
            if c.regressed
        ],
    }


def _pods_frame(pods: Sequence[StartedPod], analysis: Analysis) -> pd.DataFrame:
    """pods.csv: every pod the bench started, warm-up included, and what became of it."""
    status = {p.sandbox_id: p.status for p in analysis.pods}
    rows = [
        {
            **{k: v for k, v in asdict(p).items() if k != "combination"},
            "containerd": p.combination.containerd,
            "runtime": p.combination.runtime,
            "cni": p.combination.cni,
            "handler": p.combination.handler,
            "analysis_status": status.get(p.sandbox_id, "missing"),
        }
        for p in pods
    ]
    columns = [
        "containerd", "runtime", "cni", "handler", "round", "warmup", "name", "sandbox_id",
        "cri_start_ms", "error", "analysis_status",
    ]  # fmt: skip
    return pd.DataFrame(rows, columns=columns)


def failed_error(result: BenchResult) -> LabError | None:
    """The error to end a bench with when pods failed to start (the outputs are written)."""
    if not result.failures:
        return None
    return LabError(
        f"{len(result.failures)} pod(s) failed to start; first: {result.failures[0]}",
        fix=f"the results in {result.output} leave them out; see the lab's containerd.log",
    )
