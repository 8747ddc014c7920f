"""`startprof bench` end to end (issue 8): the CLI, a real lab, real pods, a real recording.

The first run brings its own lab up in a fresh directory (so it must run while no other lab
is up: pytest collects this file before the others that share the session lab) and has to take
it down leaving nothing behind. The regression gate then runs on the session lab, which bench
finds up and must leave up.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
import pytest

from startprof.bench.runner import RESULT_COLUMNS
from startprof.lab import host
from startprof.lab.containerd import Lab
from startprof.lab.leaks import find_leaks
from startprof.lab.paths import LabPaths
from startprof.recording import read_recording

if TYPE_CHECKING:
    from conftest import RunningLab

STARTPROF = [sys.executable, "-m", "startprof"]
COMBINATIONS = ("runc-bridge", "runc-ptp", "crun-bridge", "crun-ptp")


def bench(*args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*STARTPROF, "bench", *args], capture_output=True, text=True, timeout=timeout
    )


def processes_mentioning(text: str) -> list[str]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                argv = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if text in argv:
                found.append(f"{entry.name}: {argv}")
    return found


@dataclass
class FirstRun:
    proc: subprocess.CompletedProcess[str]
    out: Path
    lab: LabPaths

    def summary(self) -> dict[str, Any]:
        doc: dict[str, Any] = json.loads((self.out / "summary.json").read_text())
        return doc


@pytest.fixture(scope="module")
def first_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FirstRun]:
    """All four combinations, 2 pods each, no warm-up, on a lab bench brings up itself."""
    if shutil.which("crun") is None:
        pytest.skip("crun is not installed: the four combinations need runc and crun")
    if host.lab_containerds():
        pytest.skip(
            "another startprof lab is up; this run needs bench to bring its own lab up and "
            "down (run this file first or alone)"
        )
    root = Path(tempfile.mkdtemp(prefix="sp-bench-", dir="/tmp"))  # short: socket path limit
    out = tmp_path_factory.mktemp("bench") / "out"
    paths = LabPaths(root)
    try:
        proc = bench("--pods", "2", "--warmup", "0", "--lab-dir", str(root), "-o", str(out))
        yield FirstRun(proc, out, paths)
    finally:
        if Lab(paths).pid() is not None:  # only if bench failed to: keep the machine clean
            Lab(paths).down()
        if not host.mounts_under(root):
            shutil.rmtree(root, ignore_errors=True)


def test_bench_writes_every_output(first_run: FirstRun) -> None:
    proc, out = first_run.proc, first_run.out
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    for name in ("results.parquet", "summary.json", "report.html", "recording.arrows",
                 "truth.jsonl", "pods.csv"):  # fmt: skip
        assert (out / name).stat().st_size > 0, name
    assert "bench: pods" in proc.stderr  # the progress bar
    assert "Fastest pod start: " in proc.stdout
    for name in COMBINATIONS:
        assert name in proc.stdout

    rec = read_recording(out / "recording.arrows")
    assert rec.complete and rec.end["drops"] == 0
    analyzed = subprocess.run(
        [*STARTPROF, "analyze", "--json", str(out / "recording.arrows")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert analyzed.returncode == 0, analyzed.stderr
    assert len(json.loads(analyzed.stdout)["pods"]) == 8


def test_summary_has_every_combination_with_its_phases(first_run: FirstRun) -> None:
    assert first_run.proc.returncode == 0, first_run.proc.stderr
    combos = first_run.summary()["combinations"]
    assert [f"{c['runtime']}-{c['cni']}" for c in combos] == list(COMBINATIONS)
    for c in combos:
        name = f"{c['runtime']}-{c['cni']}"
        assert {"runtime", "cni", "n", "pod", "phases", "truth_agreement_ms"} <= set(c)
        assert c["n"] == 2, name
        pod = c["pod"]
        assert pod["ci95_ms"][0] <= pod["median_ms"] <= pod["ci95_ms"][1], name
        assert pod["median_ms"] <= pod["p95_ms"]
        phases = c["phases"]
        other = "ptp" if c["cni"] == "bridge" else "bridge"
        for phase in ("sandbox", f"cni.plugin {c['cni']}", "runtime.create (sandbox)",
                      "runtime.create (container)", "runtime.start (container)"):  # fmt: skip
            assert phase in phases, (name, phase)
        assert f"cni.plugin {other}" not in phases, name
        for phase, stat in phases.items():
            assert set(stat) >= {"median_ms", "p95_ms", "ci95_ms", "critical_share"}, phase
            lo, hi = stat["ci95_ms"]
            assert lo <= stat["median_ms"] <= hi, (name, phase)
        # every pod's critical-path self times add up to its duration, so the shares to 1
        assert sum(s["critical_share"] for s in phases.values()) == pytest.approx(1, abs=0.01)
        agreement = c["truth_agreement_ms"]
        assert agreement["n"] == 2 * 2 * 2  # 2 pods x (sandbox, container.start) x (start, end)
        assert agreement["median"] <= 1.0, (name, agreement)


def test_results_are_one_row_per_pod_and_phase(first_run: FirstRun) -> None:
    assert first_run.proc.returncode == 0, first_run.proc.stderr
    df = pd.read_parquet(first_run.out / "results.parquet")
    assert tuple(df.columns) == RESULT_COLUMNS
    assert not df.duplicated(["sandbox_id", "phase"]).any()
    assert df.groupby("handler")["sandbox_id"].nunique().to_dict() == dict.fromkeys(COMBINATIONS, 2)
    assert (df["handler"] == df["runtime"] + "-" + df["cni"]).all()
    assert (df["status"] == "ok").all() and (df["pod_status"] == "ok").all()
    pods = df[df["phase"] == "pod"].set_index("sandbox_id")["duration_ms"]
    assert len(pods) == 8
    self_sums = df.groupby("sandbox_id")["self_ms"].sum()
    for sandbox, duration in pods.items():
        assert self_sums[sandbox] == pytest.approx(duration, rel=0.01), sandbox
    truth_sandboxes = {
        json.loads(line)["sandbox_id"]
        for line in (first_run.out / "truth.jsonl").read_text().splitlines()
    }
    assert set(pods.index) <= truth_sandboxes


def test_report_is_self_contained(first_run: FirstRun) -> None:
    assert first_run.proc.returncode == 0, first_run.proc.stderr
    page = (first_run.out / "report.html").read_text()
    assert page.startswith("<!DOCTYPE html>")
    assert "Content-Security-Policy" in page
    assert "<script src" not in page and "https://" not in page.split("<script", 1)[0]
    for fid in ("fig-composition", "fig-medians", "fig-cdf"):
        assert f'id="{fid}"' in page
    for name in COMBINATIONS:
        assert name in page


def test_bench_takes_down_the_lab_it_brought_up(first_run: FirstRun) -> None:
    assert first_run.proc.returncode == 0, first_run.proc.stderr
    assert "taking the lab down" in first_run.proc.stderr
    assert Lab(first_run.lab).status() is None
    assert find_leaks(first_run.lab) == []
    assert processes_mentioning(str(first_run.out)) == []  # no recorder left running
    assert processes_mentioning(str(first_run.lab.root)) == []


def test_regression_gate_exits_3_and_leaves_a_running_lab_up(
    first_run: FirstRun, lab: RunningLab, tmp_path: Path
) -> None:
    assert first_run.proc.returncode == 0, first_run.proc.stderr
    doc = first_run.summary()
    fast = copy.deepcopy(doc)
    for combo in fast["combinations"]:  # a baseline 10x faster than anything real
        for stat in [combo["pod"], *combo["phases"].values()]:
            stat["median_ms"] /= 10
            stat["p95_ms"] /= 10
            stat["ci95_ms"] = [v / 10 for v in stat["ci95_ms"]]
    baseline = tmp_path / "baseline"
    baseline.mkdir()
    (baseline / "summary.json").write_text(json.dumps(fast))
    out = tmp_path / "out"
    proc = bench(
        "--runtime", "runc", "--cni", "bridge", "--pods", "2", "--warmup", "0",
        "--lab-dir", str(lab.paths.root), "-o", str(out),
        "--baseline", str(baseline), "--fail-on-regression", "50",
    )  # fmt: skip
    assert proc.returncode == 3, proc.stderr
    regressions = [line for line in proc.stderr.splitlines() if line.startswith("regression:")]
    assert any(line.startswith("regression: runc-bridge pod:") for line in regressions)
    assert any(" sandbox: " in line for line in regressions), regressions
    assert "REGRESSION" in proc.stdout
    gate = json.loads((out / "summary.json").read_text())["baseline"]
    assert gate["threshold_pct"] == 50
    assert {r["phase"] for r in gate["regressions"]} >= {"pod", "sandbox"}
    # the lab was up before: bench leaves it up, with no pod of its own left
    assert "taking the lab down" not in proc.stderr
    info = lab.lab.status()
    assert info is not None and info.pods == ()
    assert processes_mentioning(str(out)) == []


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (("--runtime", "kata"), 2, "unknown runtime 'kata'; valid: runc, crun"),
        (("--cni", "bridge,flannel"), 2, "unknown cni 'flannel'; valid: bridge, ptp"),
        (("--baseline", "/nonexistent-bench"), 2, "--baseline /nonexistent-bench: no summary.json"),
        (("--fail-on-regression", "5"), 2, "--fail-on-regression needs --baseline"),
    ],
)
def test_bad_input_is_one_clear_line(args: tuple[str, ...], code: int, message: str) -> None:
    proc = bench(*args, timeout=60)
    assert proc.returncode == code
    assert proc.stderr.count("\n") == 1 and message in proc.stderr, proc.stderr


def test_not_root_is_one_clear_line(tmp_path: Path) -> None:
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("setpriv (util-linux) is not installed: cannot drop root for the test")
    tmp_path.chmod(0o777)
    proc = subprocess.run(
        [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups",
         *STARTPROF, "bench", "-o", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 1
    assert proc.stderr.count("\n") == 1 and "bench needs root" in proc.stderr, proc.stderr
