"""``startprof lab up|down|status|run``: the embedded containerd and the kubelet-like driver."""

from __future__ import annotations

import json
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import click

from startprof.lab.paths import LabPaths, lab_dir

_DIR_HELP = "Lab directory [default: $STARTPROF_LAB_DIR or /var/lib/startprof/lab]."


def _progress(line: str) -> None:
    click.echo(f"lab: {line}", err=True)


def _paths(directory: str | None) -> LabPaths:
    return LabPaths(lab_dir(directory).absolute())


@click.group("lab")
def lab_group() -> None:
    """Run a private containerd with runc/crun x bridge/ptp handlers and start pods on it.

    The lab keeps every file of its containerd under one directory and plays the kubelet's
    CRI role itself, so pod starts can be profiled and benchmarked on any Linux box.

    \b
    Examples:
      sudo startprof lab up
      sudo startprof lab run --pods 20 --runtime-handler crun-bridge
      sudo startprof lab status --json
      sudo startprof lab down
    """


@lab_group.command("up")
@click.option("--dir", "directory", metavar="DIR", help=_DIR_HELP)
@click.option(
    "--containerd",
    "containerd",
    default="system",
    show_default=True,
    metavar="VERSION",
    help="system, 1.6, 1.7, 2.1 (Debian's, fetched and cached in DIR), or a containerd binary.",
)
def up_command(directory: str | None, containerd: str) -> None:
    """Start the lab's containerd (idempotent) and import its images.

    Builds the pause and app images from C sources (static binaries, OCI archives written
    by startprof) and imports them; no registry is contacted. Handlers are named
    <runtime>-<network> for each installed runtime (runc, crun) and network (bridge, ptp).

    \b
    Examples:
      sudo startprof lab up
      sudo startprof lab up --containerd 2.1
      sudo startprof lab up --dir /tmp/lab --containerd /opt/containerd/bin/containerd
    """
    from startprof.lab.containerd import Lab

    info = Lab(_paths(directory)).up(progress=_progress, containerd=containerd)
    click.echo(f"lab up: containerd pid {info.pid}")
    click.echo(f"containerd: {_containerd_text(info)}")
    click.echo(f"socket:   {info.socket}")
    click.echo(f"handlers: {', '.join(info.handlers)}")
    click.echo(f"images:   {', '.join(info.images)}")


@lab_group.command("down")
@click.option("--dir", "directory", metavar="DIR", help=_DIR_HELP)
def down_command(directory: str | None) -> None:
    """Remove every pod, stop containerd and its shims, and leave nothing behind.

    Undoes netns, veths, the lab bridge, CNI iptables rules and caches, overlay and shm
    mounts, pod cgroups, shim sockets and the cgroup v1 remount made for crun, then checks
    that nothing is left; anything that is gets listed and the exit code is 1. The image
    store, logs and ground-truth file stay in the lab dir for the next up.

    \b
    Examples:
      sudo startprof lab down
      sudo startprof lab down --dir /tmp/lab
    """
    from startprof.lab.containerd import Lab

    Lab(_paths(directory)).down(progress=_progress)
    click.echo("lab down: nothing left behind")


@lab_group.command("status")
@click.option("--dir", "directory", metavar="DIR", help=_DIR_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print the status as a JSON document.")
def status_command(directory: str | None, as_json: bool) -> int:
    """Show the lab's containerd pid, socket, handlers, images and live pods.

    Exits 0 when the lab is up, 3 when it is not (`{"up": false}` with --json).

    \b
    Examples:
      startprof lab status
      startprof lab status --json | jq -r .socket
    """
    from startprof.lab.containerd import Lab

    paths = _paths(directory)
    info = Lab(paths).status()
    if as_json:
        doc: dict[str, object] = {"up": info is not None, "dir": str(paths.root)}
        if info is not None:
            doc.update(info.to_dict())
        click.echo(json.dumps(doc, indent=2))
    elif info is None:
        click.echo(f"lab is down ({paths.root})")
    else:
        click.echo(f"lab up: containerd pid {info.pid} ({info.dir})")
        click.echo(f"containerd: {_containerd_text(info)}")
        click.echo(f"socket:   {info.socket}")
        click.echo(f"handlers: {', '.join(info.handlers)}")
        click.echo(f"images:   {', '.join(info.images) or '-'}")
        click.echo(f"pods:     {len(info.pods)}")
        for pod in info.pods:
            click.echo(f"  {pod}")
    return 0 if info is not None else 3


@lab_group.command("run")
@click.option("--dir", "directory", metavar="DIR", help=_DIR_HELP)
@click.option("--pods", default=1, show_default=True, metavar="N", help="Pods to start.")
@click.option(
    "--concurrency", default=1, show_default=True, metavar="C", help="Pods starting at once."
)
@click.option(
    "--runtime-handler",
    "handler",
    default="runc-bridge",
    show_default=True,
    metavar="H",
    help="CRI runtime handler <runtime>-<network> (see `lab status`).",
)
@click.option(
    "--containers", default=1, show_default=True, metavar="K", help="App containers per pod."
)
@click.option(
    "--init-containers", default=0, show_default=True, metavar="I", help="Init containers per pod."
)
@click.option(
    "--pull",
    is_flag=True,
    help="Pull a 3-layer image of its own from a registry the lab serves on 127.0.0.1 "
    "[what it served: DIR/registry.jsonl].",
)
@click.option("--keep", is_flag=True, help="Leave the pods running (lab down removes them).")
@click.option(
    "--truth",
    "truth",
    type=click.Path(dir_okay=False, path_type=Path),
    metavar="FILE",
    help="Also write the CRI ground truth (JSON lines) here [always: DIR/truth.jsonl].",
)
@click.option(
    "--age-pods",
    default=0,
    show_default=True,
    metavar="K",
    help="First start and remove K pods on the same connection (not in the ground truth).",
)
@click.option(
    "--age-seconds",
    default=0.0,
    show_default=True,
    metavar="S",
    help="Then keep polling S seconds before the batch.",
)
@click.option(
    "--wait-sigusr1",
    is_flag=True,
    help="Print 'aged' and wait for SIGUSR1 before the batch (implied by --age-*).",
)
@click.option(
    "--poll", is_flag=True, help="Relist like the kubelet's PLEG every second (implied by aging)."
)
@click.option(
    "--kind",
    "kind",
    default="plain",
    show_default=True,
    metavar="KIND",
    help="Pod kind: plain, host-network, runtime-fail, bad-image, no-entrypoint, crash-loop, "
    "crash-then-up, sidecar, slow-pull, ctr (docs/lab.md).",
)
@click.option(
    "--slow-pull-seconds",
    default=3.0,
    show_default=True,
    metavar="S",
    help="With --kind slow-pull: how long the first pod's throttled pull takes.",
)
def run_command(
    directory: str | None,
    pods: int,
    concurrency: int,
    handler: str,
    containers: int,
    init_containers: int,
    pull: bool,
    keep: bool,
    truth: Path | None,
    age_pods: int,
    age_seconds: float,
    wait_sigusr1: bool,
    poll: bool,
    kind: str,
    slow_pull_seconds: float,
) -> int:
    """Start pods over CRI exactly like the kubelet and time every CRI call.

    Per pod: Version, RunPodSandbox, ImageStatus (PullImage only when missing), init
    containers run to completion, then CreateContainer/StartContainer per container and
    ContainerStatus until running; then every pod is torn down (unless --keep). Ends with
    median and p95 per CRI call and for the whole start. Exit 1 if any pod failed.

    With --age-pods/--age-seconds the one connection first gets a history (pods started and
    removed, then polling), then `aged` is printed and the batch waits for SIGUSR1: a
    recording started then sees a connection older than itself, as on a node. Only the
    batch's calls and the polling after the signal are ground truth.

    \b
    Examples:
      sudo startprof lab run --pods 20 --runtime-handler crun-bridge
      sudo startprof lab run --pods 10 --concurrency 4 --containers 2 --init-containers 1
      sudo startprof lab run --pull --truth /tmp/truth.jsonl
      sudo startprof lab run --pods 20 --concurrency 5 --age-pods 2 --age-seconds 60
      sudo startprof lab run --kind crash-then-up
      sudo startprof lab run --kind slow-pull --pods 3 --concurrency 3
    """
    from startprof.errors import LabError
    from startprof.lab.driver import run_pods

    paths = _paths(directory)
    before_batch = None
    if age_pods or age_seconds or wait_sigusr1:
        before_batch = _sigusr1_waiter()
    result = run_pods(
        str(paths.socket),
        handler,
        pods=pods,
        concurrency=concurrency,
        containers=containers,
        init_containers=init_containers,
        pull=pull,
        keep=keep,
        truth_path=truth,
        progress=_progress,
        age_pods=age_pods,
        age_seconds=age_seconds,
        before_batch=before_batch,
        poll=poll,
        kind=kind,
        slow_pull_seconds=slow_pull_seconds,
    )
    _print_stats(result)
    click.echo(f"ground truth: {', '.join(str(p) for p in result.truth_paths)}", err=True)
    if result.served_paths:
        served = ", ".join(str(p) for p in result.served_paths)
        click.echo(f"registry log: {served} ({len(result.served)} requests)", err=True)
    if result.errors:
        raise LabError(
            f"{len(result.errors)} of {pods} pod(s) failed; first: {result.errors[0]}",
            fix=f"see {paths.log}",
        )
    return 0


def _containerd_text(info: object) -> str:
    from startprof.lab.containerd import LabInfo

    assert isinstance(info, LabInfo)
    c = info.containerd
    if c is None:
        return "unknown (a lab up before startprof knew containerd versions)"
    return f"{c.version} ({c.source}, {c.binary}, config version {c.config_version})"


def _sigusr1_waiter() -> Callable[[], None]:
    """Installs a SIGUSR1 handler now (a SIGUSR1 must never meet the default action, exit) and
    returns what prints ``aged`` and waits for the signal."""
    got = threading.Event()
    signal.signal(signal.SIGUSR1, lambda *_: got.set())

    def wait() -> None:
        click.echo("aged")
        sys.stdout.flush()
        while not got.wait(0.5):  # a short wait keeps Ctrl-C working
            pass

    return wait


def _print_stats(result: object) -> None:
    from rich.console import Console
    from rich.table import Table

    from startprof.lab.driver import RunResult

    assert isinstance(result, RunResult)
    table = Table(title=f"{result.handler}: CRI call latency (ms)", show_edge=False)
    for column, justify in (
        ("call", "left"),
        ("n", "right"),
        ("median", "right"),
        ("p95", "right"),
    ):
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    for s in result.stats():
        label = f"[bold]{s.label}[/]" if s.label == "pod start" else s.label
        table.add_row(label, str(s.count), f"{s.median_ms:.1f}", f"{s.p95_ms:.1f}")
    Console().print(table)


@lab_group.command("daemonset")
@click.option("--dir", "directory", metavar="DIR", help=_DIR_HELP)
@click.option(
    "--manifest",
    type=click.Path(dir_okay=False, path_type=Path),
    default=Path("deploy/daemonset.yaml"),
    show_default=True,
    help="The manifest whose pod template runs (a DaemonSet, Deployment or Pod).",
)
@click.option(
    "--otlp",
    "otlp_url",
    metavar="URL",
    help="Send the agent's traces and metrics here (sets OTEL_EXPORTER_OTLP_ENDPOINT).",
)
@click.option(
    "--env",
    "env_pairs",
    multiple=True,
    metavar="KEY=VALUE",
    help="Set or override a variable of every container (repeatable).",
)
@click.option(
    "--runtime-handler",
    "handler",
    default="runc-bridge",
    show_default=True,
    metavar="NAME",
    help="The lab handler the pod runs under (a hostNetwork pod runs no CNI).",
)
@click.option(
    "--duration", type=float, metavar="S", help="Stop the pod after S seconds [default: Ctrl-C]."
)
def daemonset_command(
    directory: str | None,
    manifest: Path,
    otlp_url: str | None,
    env_pairs: tuple[str, ...],
    handler: str,
    duration: float | None,
) -> int:
    """Run the agent's DaemonSet pod spec on the lab, as the kubelet would run it.

    Builds the agent's image from this machine (Python, bcc, startprof and its requirements:
    what deploy/Dockerfile builds, without docker or a registry; ~750 MB, cached in DIR),
    imports it, then starts the manifest's pod template over CRI with its privileges, host
    namespaces, hostPath mounts and downward-API environment. The lab's containerd socket
    stands in for /run/containerd/containerd.sock. The pod's log is shown as it grows; Ctrl-C
    (or --duration) stops it with its grace period, SIGTERM first, and removes it. The exit
    code is the containers' (1 when any exited non-zero or was killed).

    \b
    Examples:
      sudo startprof lab daemonset --otlp http://127.0.0.1:4317
      sudo startprof lab daemonset --duration 60 --env OTEL_SERVICE_NAME=startprof-lab
    """
    import socket
    import time

    from startprof.errors import InputError, LabError
    from startprof.lab.agent_image import build_agent_image
    from startprof.lab.containerd import Lab, import_archive
    from startprof.lab.cri import CriClient
    from startprof.lab.podspec import load_template, pod_configs, start_pod

    paths = _paths(directory)
    if Lab(paths).status() is None:
        raise LabError(f"the lab is down ({paths.root})", fix="sudo startprof lab up")
    overrides = {}
    for pair in env_pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise InputError(f"--env {pair!r}: expected KEY=VALUE")
        overrides[key] = value
    if otlp_url is not None:
        overrides["OTEL_EXPORTER_OTLP_ENDPOINT"] = otlp_url
    template = load_template(manifest)  # before the long image build: a bad manifest fails fast
    archive = build_agent_image(paths.images_dir, _progress)
    _progress(f"importing {archive.name} ({archive.stat().st_size / 1e6:.0f} MB)")
    import_archive(paths, archive)
    run = str(paths.run_dir)
    pod = pod_configs(
        template,
        paths,
        node=socket.gethostname(),
        relocate={"/run/containerd": run, "/var/run/containerd": run},
        env=overrides,
    )
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    with CriClient(str(paths.socket)) as client:
        running = start_pod(client, pod, handler, on_step=_progress)
        _progress(f"pod {pod.namespace}/{pod.name} running; Ctrl-C stops it")
        shown = 0
        deadline = None if duration is None else time.monotonic() + duration
        try:
            while not stop.wait(0.5):
                shown = _show_log(running.log_path(), shown)
                if any(code is not None for code in running.exit_codes()):
                    _progress("a container exited on its own")
                    break
                if deadline is not None and time.monotonic() >= deadline:
                    break
        finally:
            _progress(f"stopping {pod.namespace}/{pod.name} (grace {pod.grace_s} s)")
            codes = running.stop()
            _show_log(running.log_path(), shown)
            running.remove_logs()
    text = ", ".join("killed" if c is None else str(c) for c in codes)
    _progress(f"pod removed; container exit codes: {text}")
    return 0 if all(c == 0 for c in codes) else 1


def _show_log(path: Path, shown: int) -> int:
    """Echo the CRI log lines (``TIME STREAM TAG MESSAGE``) after the first ``shown`` bytes."""
    try:
        with path.open("rb") as f:
            f.seek(shown)
            data = f.read()
    except FileNotFoundError:
        return shown
    complete = data[: data.rfind(b"\n") + 1]
    for line in complete.decode(errors="replace").splitlines():
        parts = line.split(" ", 3)
        click.echo(f"pod: {parts[3] if len(parts) == 4 else line}", err=True)
    return shown + len(complete)
