"""``startprof doctor``."""

from __future__ import annotations

import json

import click

from startprof.config import resolve_cri_socket
from startprof.doctor import Report, doctor

_MARK = {"ok": "[green]ok[/]", "warn": "[yellow]warn[/]", "fail": "[red]FAIL[/]"}


@click.command("doctor")
@click.option("--json", "as_json", is_flag=True, help="Print the checks as a JSON document.")
@click.option(
    "--cri-socket",
    metavar="PATH",
    help="CRI socket to probe [default: $STARTPROF_CRI_SOCKET, the lab's, or containerd's].",
)
def doctor_command(as_json: bool, cri_socket: str | None) -> int:
    """Check what works on this machine and what is missing, with the fix.

    Exits 0 when every required check passes, 1 otherwise. Checks marked
    optional (the lab's containerd, runtimes and CNI plugins, a CRI socket)
    only warn.

    \b
    Examples:
      sudo startprof doctor
      sudo startprof doctor --json | jq '.checks[] | select(.status != "ok")'
    """
    report = doctor(resolve_cri_socket(cri_socket))
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
    else:
        _print_table(report)
    return 0 if report.ok else 1


def _print_table(report: Report) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(show_edge=False, pad_edge=False)
    for column in ("check", "status", "found", "fix"):
        table.add_column(column, overflow="fold")
    for c in report.checks:
        name = c.name if c.required else f"{c.name} (optional)"
        table.add_row(name, _MARK[c.status], c.detail, c.fix)
    console = Console()
    console.print(table)
    console.print(
        "[green]ready: every required check passed[/]"
        if report.ok
        else "[red]not ready: fix the failed checks above[/]"
    )
