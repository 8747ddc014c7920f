"""``startprof bench``: runtime x CNI combinations on the lab, phase by phase."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from startprof.errors import InputError

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress, TaskID

EXIT_REGRESSION = 3
TABLE_WIDTH = 200


class _RichProgress:
    """Stage lines and one progress bar on stderr."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self._bar: Progress | None = None
        self._task: TaskID | None = None

    def step(self, message: str) -> None:
        self.close()
        self.console.print(f"bench: {message}", highlight=False)

    def pods_planned(self, total: int) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self._bar = Progress(
            TextColumn("bench: pods"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            TextColumn("{task.description}"),
            console=self.console,
        )
        self._bar.start()
        self._task = self._bar.add_task("", total=total)

    def pods_done(self, count: int, what: str) -> None:
        if self._bar is not None and self._task is not None:
            self._bar.update(self._task, advance=count, description=what)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None


def _default_output() -> Path:
    return Path(f"startprof-bench-{time.strftime('%Y%m%d-%H%M%S')}")


@click.command("bench")
@click.option(
    "--runtime",
    "runtimes",
    default="runc,crun",
    show_default=True,
    metavar="LIST",
    help="OCI runtimes to compare, comma-separated (runc, crun).",
)
@click.option(
    "--cni",
    "cnis",
    default="bridge,ptp",
    show_default=True,
    metavar="LIST",
    help="CNI networks to compare, comma-separated (bridge, ptp).",
)
@click.option(
    "--containerd",
    "containerds",
    default=None,
    metavar="LIST",
    help="containerd versions to compare, comma-separated (system, 1.6, 1.7, 2.1, or a path): "
    "the lab is brought up on each in turn [default: the lab as it is].",
)
@click.option(
    "--pods", default=20, show_default=True, metavar="N", help="Measured pods per combination."
)
@click.option(
    "--concurrency", default=1, show_default=True, metavar="C", help="Pods starting at once."
)
@click.option(
    "--warmup",
    default=2,
    show_default=True,
    metavar="W",
    help="Warm-up pods per combination, started first and left out of the results.",
)
@click.option(
    "--containers", default=1, show_default=True, metavar="K", help="App containers per pod."
)
@click.option(
    "--round-size",
    default=5,
    show_default=True,
    metavar="R",
    help="Pods per combination per round (at least C); combinations take turns round by round.",
)
@click.option(
    "-o",
    "--output",
    type=click.Path(file_okay=False, path_type=Path),
    metavar="DIR",
    help="Output directory (must not hold an earlier bench) [default: startprof-bench-DATE-TIME].",
)
@click.option(
    "--baseline",
    type=click.Path(path_type=Path),
    metavar="DIR",
    help="Compare with an earlier bench (its -o DIR or its summary.json).",
)
@click.option(
    "--fail-on-regression",
    "threshold",
    type=click.FloatRange(min=0),
    metavar="PCT",
    help="With --baseline: exit 3 when a phase's median is more than PCT% slower and the "
    "CIs do not overlap.",
)
@click.option(
    "--seed", default=0, show_default=True, help="Seed of the bootstrap (results are reproducible)."
)
@click.option(
    "--lab-dir",
    type=click.Path(file_okay=False, path_type=Path),
    metavar="DIR",
    help="Lab directory [default: $STARTPROF_LAB_DIR or /var/lib/startprof/lab].",
)
def bench_command(
    runtimes: str,
    cnis: str,
    containerds: str | None,
    pods: int,
    concurrency: int,
    warmup: int,
    containers: int,
    round_size: int,
    output: Path | None,
    baseline: Path | None,
    threshold: float | None,
    seed: int,
    lab_dir: Path | None,
) -> int:
    """Compare runtime x CNI combinations: pod start, phase by phase, with statistics.

    Brings the lab up if it is down (and down again at the end), starts the recorder, runs
    W warm-up and N measured pods for every combination in interleaved rounds, then analyses
    the recording. Writes to DIR: results.parquet (one row per pod x phase), summary.json
    (median, p95, bootstrap 95% CI of the median, critical-path share per phase, agreement
    with the CRI ground truth), report.html, the recording and its ground truth. Prints a
    table naming the fastest combination phase by phase.

    Exit codes: 0 done, 1 a pod failed or the lab failed, 2 bad input, 3 regression
    (--fail-on-regression).

    \b
    Examples:
      sudo startprof bench -o bench-1
      sudo startprof bench --runtime runc,crun --cni bridge,ptp --pods 20
      sudo startprof bench --runtime crun --cni ptp --pods 50 --concurrency 4
      sudo startprof bench --containerd 1.6,2.1 --runtime runc,crun --cni bridge
      sudo startprof bench -o new --baseline bench-1 --fail-on-regression 10
    """
    from rich.console import Console

    from startprof.bench.runner import (
        BenchOptions,
        failed_error,
        load_baseline,
        parse_choices,
        parse_containerds,
        run_bench,
        valid_cnis,
        valid_runtimes,
    )
    from startprof.bench.terminal import terminal_report

    if threshold is not None and baseline is None:
        raise InputError("--fail-on-regression needs --baseline DIR")
    base_doc: dict[str, Any] | None = load_baseline(baseline) if baseline is not None else None
    options = BenchOptions(
        output=output or _default_output(),
        runtimes=parse_choices(runtimes, valid_runtimes(), "runtime"),
        cnis=parse_choices(cnis, valid_cnis(), "cni"),
        containerds=parse_containerds(containerds) if containerds is not None else (),
        pods=pods,
        concurrency=concurrency,
        warmup=warmup,
        containers=containers,
        round_size=round_size,
        lab_dir=lab_dir,
        seed=seed,
        baseline=base_doc,
        baseline_dir=baseline,
        threshold_pct=threshold,
    )
    err = Console(stderr=True, highlight=False)
    progress = _RichProgress(err)
    try:
        result = run_bench(options, progress)
    finally:
        progress.close()
    out = Console(highlight=False)
    if not out.is_terminal:
        out = Console(highlight=False, width=TABLE_WIDTH)  # a file or pipe: no wrapping
    out.print(terminal_report(result.summary, result.changes))
    bench = result.summary["bench"]
    drops = bench["recording"]["drops"]
    if drops:
        err.print(f"bench: warning: the recorder dropped {drops} events; phases may be missing")
    err.print(
        f"bench: {bench['pods_started']} pods in {bench['timings_s']['wall_s']:.0f} s; wrote "
        f"{result.output}/{{results.parquet, summary.json, report.html, recording.arrows}}"
    )
    if base_doc is not None and not result.changes:
        err.print(f"bench: warning: nothing to compare: {baseline} has none of these combinations")
    failure = failed_error(result)
    if failure is not None:
        raise failure
    if threshold is not None and result.regressions:
        for c in result.regressions:
            err.print(
                f"regression: {c.combination} {c.phase}: median {c.baseline_ms:.2f} -> "
                f"{c.current_ms:.2f} ms ({c.change_pct:+.0f}%, more than {threshold:g}%), CI "
                f"[{c.current_ci[0]:.2f}, {c.current_ci[1]:.2f}] above "
                f"[{c.baseline_ci[0]:.2f}, {c.baseline_ci[1]:.2f}]"
            )
        return EXIT_REGRESSION
    return 0
