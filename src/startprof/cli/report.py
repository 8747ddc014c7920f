"""``startprof report``."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import click

from startprof.cli.options import jobs_option
from startprof.errors import InputError

DEFAULT_FOLDER = Path("reports")
DEFAULT_TOP = 20


def default_output(now: datetime) -> Path:
    return DEFAULT_FOLDER / f"startprof-{now:%Y%m%d-%H%M%S}.html"


def _size(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 1e6 else f"{n / 1e3:.0f} kB"


@click.command("report")
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path),
              help="HTML file to write.  [default: reports/startprof-DATE-TIME.html]")  # fmt: skip
@click.option("--top", default=DEFAULT_TOP, show_default=True, type=click.IntRange(min=0),
              help="Draw a waterfall for the N slowest pods (failed ones first).")  # fmt: skip
@click.option("--pod", "pod_name", metavar="NAME",
              help="Draw the waterfall of this pod only (name or sandbox id prefix).")  # fmt: skip
@jobs_option
def report_command(
    files: tuple[Path, ...], output: Path | None, top: int, pod_name: str | None, jobs: int | None
) -> int:
    """Write a self-contained HTML report of pod starts.

    One file with everything inlined (plotly.js too): it opens offline and can be
    attached to a ticket. Summary charts and the slowest-pods table cover every pod;
    waterfalls with the critical path highlighted are drawn for the --top slowest
    pods, or for the one --pod names. Several recordings (e.g. one per node) merge.

    \b
    Examples:
      startprof report pods.arrows
      startprof report -o reports/runc-bridge.html pods.arrows
      startprof report --top 5 node-a.arrows node-b.arrows
      startprof report pods.arrows --pod web-0 -o web-0.html
    """
    from startprof.analysis import without_cycle_collection
    from startprof.analysis.selection import select_pods
    from startprof.pipeline import analyze_files
    from startprof.reporters import html

    with without_cycle_collection():  # until the page is written (see ``analyze``)
        analysis = analyze_files(list(files), jobs)
        pods = select_pods(analysis, top, pod_name)
        path = output if output is not None else default_output(datetime.now())
        try:
            size = html.write(analysis, pods, path)
        except OSError as exc:
            raise InputError(f"cannot write {path}: {exc.strerror or exc}") from exc
        found, shown = len(analysis.pods), len(pods)
        del analysis, pods  # freed here: the collector would walk them once more
    click.echo(
        f"{path} ({_size(size)}): {found} pods, {shown} waterfall{'' if shown == 1 else 's'}"
    )
    return 0
