"""The lab's private containerd: bring it up, report on it, tear it down leaving nothing behind."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from startprof.errors import CriError, EnvironmentProblem, InputError, LabError, PrivilegeError
from startprof.lab import host, versions
from startprof.lab.config import (
    BRIDGE_NAME,
    CNI_BIN_DIR,
    CNI_PLUGINS_NEEDED,
    K8S_NAMESPACE,
    Handler,
    available_handlers,
    render_cni_confs,
    render_containerd_config,
)
from startprof.lab.cri import CriClient
from startprof.lab.handlers import variant_handlers, write_handler_files
from startprof.lab.images import LAB_IMAGES, PAUSE, build_lab_image
from startprof.lab.leaks import find_leaks
from startprof.lab.paths import MAX_SOCKET_PATH, LabPaths
from startprof.lab.state import LabState, load_state
from startprof.lab.teardown import remove_pods
from startprof.lab.versions import Containerd
from startprof.procfs import argv_text

Progress = Callable[[str], None]
START_TIMEOUT = 20.0


def _quiet(_: str) -> None:
    return


@dataclass(frozen=True)
class LabInfo:
    """A running lab as ``lab status`` shows it."""

    dir: str
    pid: int
    socket: str
    handlers: tuple[str, ...]
    images: tuple[str, ...]
    pods: tuple[str, ...]
    containerd: Containerd | None = None  # None: a lab up before the lab knew versions

    def to_dict(self) -> dict[str, object]:
        d = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


def require_root(what: str) -> None:
    if os.geteuid() != 0:
        raise PrivilegeError(
            f"{what} needs root (it runs containerd, mounts and configures networks)",
            fix=f"sudo startprof {what}",
        )


class Lab:
    """One lab directory and the containerd that may run from it."""

    def __init__(self, paths: LabPaths, containerd_cache: Path | None = None) -> None:
        self.paths = paths
        # where Debian's containerds are fetched to (docs/containerd.md)
        self.containerd_cache = containerd_cache or versions.default_cache(paths.root)
        self._proc: subprocess.Popen[bytes] | None = None

    # ------------------------------------------------------------ queries

    def pid(self) -> int | None:
        """The lab's containerd pid when it runs (pid file checked against /proc)."""
        try:
            pid = int(self.paths.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None
        argv = argv_text(pid)
        if host.pid_alive(pid) and str(self.paths.config) in argv:
            return pid
        return None

    def handlers(self) -> list[str]:
        """Runtime handlers of the running lab, else those ``up`` would configure here."""
        state = load_state(self.paths)
        if state and self.pid():
            return list(state.handlers)
        return [h.name for h in available_handlers()]

    def status(self) -> LabInfo | None:
        """The running lab, or None when it is not up."""
        pid = self.pid()
        state = load_state(self.paths)
        if pid is None or state is None:
            return None
        images: tuple[str, ...] = ()
        pods: tuple[str, ...] = ()
        try:
            with CriClient(str(self.paths.socket), timeout=5.0) as cri:
                images = tuple(sorted(t for i in cri.list_images() for t in i.repo_tags))
                pods = tuple(
                    sorted(
                        f"{s.metadata.namespace}/{s.metadata.name}" for s in cri.list_pod_sandbox()
                    )
                )
        except CriError as exc:
            raise LabError(
                f"the lab's containerd (pid {pid}) does not answer on {self.paths.socket}: {exc}",
                fix=f"see {self.paths.log}; startprof lab down && startprof lab up",
            ) from exc
        return LabInfo(
            dir=str(self.paths.root),
            pid=pid,
            socket=str(self.paths.socket),
            handlers=state.handlers,
            images=images,
            pods=pods,
            containerd=state.runs,
        )

    # ------------------------------------------------------------ up

    def up(self, progress: Progress | None = None, containerd: str = versions.SYSTEM) -> LabInfo:
        """Start the lab (idempotent: a running lab is reported as it is) on the containerd
        ``containerd`` names (:func:`versions.parse_choice`): fetched and cached if needed."""
        say = progress or _quiet
        require_root("lab up")
        choice = versions.parse_choice(containerd)
        running = self.status()
        if running is not None:
            runs = running.containerd
            if choice != versions.SYSTEM and runs is not None and runs.label != choice:
                raise LabError(
                    f"the lab is up with containerd {runs.version} ({runs.label}), not {choice}",
                    fix=f"startprof lab down --dir {self.paths.root}, then up again",
                )
            say(f"lab already up (containerd pid {running.pid})")
            return running
        handlers = self._preflight()
        runs = versions.resolve(choice, self.containerd_cache, _which, say)
        say(f"containerd {runs.version} ({runs.source}), config version {runs.config_version}")
        handlers = self._crun_front(runs, handlers, say)
        if self.paths.pid_file.exists() or self.paths.state_dir.exists():
            say("cleaning up after a lab that was not taken down")
            self._cleanup(say)
        for d in (self.paths.run_dir, self.paths.state_dir, self.paths.images_dir):
            d.mkdir(parents=True, exist_ok=True)
        created_run_containerd = not Path("/run/containerd").exists()
        created_var_lib_cni = not host.CNI_RESULTS_DIR.parent.exists()

        say("building lab images from C sources")
        built = {spec.name: build_lab_image(spec, self.paths.images_dir) for spec in LAB_IMAGES}
        for path, text in render_cni_confs(self.paths, handlers).items():
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            Path(path).write_text(text)
        write_handler_files(self.paths, handlers)
        self.paths.ipam_dir.mkdir(parents=True, exist_ok=True)
        self.paths.config.write_text(
            render_containerd_config(
                self.paths, handlers, built[PAUSE.name][0].name, runs.config_version
            )
        )
        v1_mounts: list[str] = []
        if any(h.runtime.name == "crun" for h in handlers):
            v1_mounts = self._split_hybrid_cgroups(say)
        state = LabState(
            handlers=tuple(h.name for h in handlers),
            images={role: image.name for role, (image, _) in built.items()},
            archives={role: str(archive) for role, (_, archive) in built.items()},
            v1_mounts=tuple(v1_mounts),
            created_run_containerd=created_run_containerd,
            created_var_lib_cni=created_var_lib_cni,
            containerd=runs.to_dict(),
            absent_at_up=tuple(str(p) for p in host.CONTAINERD_DEFAULT_PATHS if not p.exists()),
        )
        # Saved before containerd starts so that a failed up can still be taken down.
        state.save(self.paths.lab_state)
        try:
            say("starting containerd")
            pid = self._start_containerd()
            with CriClient(str(self.paths.socket)) as cri:
                for role, (image, archive) in built.items():
                    if cri.image_status(image.name).image.id:
                        continue
                    say(f"importing {role} image {image.name}")
                    import_archive(self.paths, archive)
        except BaseException:
            self._cleanup(_quiet)
            raise
        say(f"containerd pid {pid} answers on {self.paths.socket}")
        info = self.status()
        if info is None:
            raise LabError(
                "containerd exited right after start", fix=f"see the tail of {self.paths.log}"
            )
        return info

    def _preflight(self) -> list[Handler]:
        socket = str(self.paths.socket)
        if len(socket.encode()) > MAX_SOCKET_PATH:
            raise InputError(
                f"lab dir {self.paths.root} is too deep: its socket path {socket} is longer "
                f"than {MAX_SOCKET_PATH} bytes",
                fix="use a shorter --dir",
            )
        if self.paths.root.exists() and not self.paths.root.is_dir():
            raise InputError(f"lab dir {self.paths.root} exists and is not a directory")
        missing = [t for t in ("ip",) if not _which(t)]
        missing += [p for p in CNI_PLUGINS_NEEDED if not Path(CNI_BIN_DIR, p).exists()]
        if not _which("iptables"):
            missing.append("iptables")
        if missing:
            raise EnvironmentProblem(
                f"the lab needs {', '.join(missing)}",
                fix="sudo make setup (installs containerd, CNI plugins, iptables)",
            )
        handlers = available_handlers(_which) + variant_handlers(self.paths, _which)
        if not handlers:
            raise EnvironmentProblem(
                "no OCI runtime found (runc or crun)", fix="apt-get install runc crun"
            )
        if self.paths.socket.exists() and _socket_answers(self.paths.socket):
            raise LabError(
                f"{self.paths.socket} is in use by a process that is not this lab's containerd",
                fix="stop it or use another --dir",
            )
        for pid, argv in host.lab_containerds():
            config = next((a for a in argv if a.endswith("containerd.toml")), "")
            if config != str(self.paths.config):
                raise LabError(
                    f"another startprof lab is up (containerd pid {pid}, {config})",
                    fix=f"startprof lab down --dir {Path(config).parent}",
                )
        if any(link == BRIDGE_NAME for link in host.lab_links()):
            raise LabError(
                f"bridge {BRIDGE_NAME} exists: another startprof lab is up or was not taken down",
                fix="startprof lab down --dir <that lab's dir>",
            )
        return handlers

    def _crun_front(
        self, runs: Containerd, handlers: list[Handler], say: Progress
    ) -> list[Handler]:
        """crun handlers run the lab's crun front when their crun is too old for this
        containerd's runtime-spec version (docs/containerd.md); the others are unchanged."""
        crun = next((h.binary for h in handlers if h.runtime.name == "crun"), None)
        if crun is None or not versions.needs_old_spec(runs, versions.runtime_version(crun)):
            return handlers
        front = str(versions.old_spec_front(crun, self.paths.images_dir / "bin"))
        say(f"crun is older than 1.14.3: its handlers run {front} (ociVersion 1.N -> 1.0)")
        return [
            dataclasses.replace(h, binary=front)
            if h.runtime.name == "crun" and h.binary == crun
            else h
            for h in handlers
        ]

    def _split_hybrid_cgroups(self, say: Progress) -> list[str]:
        """Move controllers off cgroup2 in a hybrid layout so that crun accepts it.

        crun refuses hybrid cgroups while the unified hierarchy holds any controller
        ("cgroups in hybrid mode not supported"); mounting such a controller as a v1 hierarchy
        (anywhere) moves it off cgroup2. ``down`` unmounts it, which moves it back.
        """
        unified = Path("/sys/fs/cgroup/unified/cgroup.controllers")
        try:
            controllers = unified.read_text().split()
        except OSError:
            return []  # pure cgroup v1 or pure v2: nothing to do
        done = []
        for ctrl in controllers:
            target = self.paths.run_dir / f"cgroup-{ctrl}"
            target.mkdir(parents=True, exist_ok=True)
            proc = subprocess.run(
                ["mount", "-t", "cgroup", "-o", ctrl, "cgroup", str(target)],
                capture_output=True,
                text=True,
                check=False,
            )
            if proc.returncode != 0:
                why = proc.stderr.strip()
                say(f"warning: cgroup controller {ctrl} stays on cgroup2 ({why}); crun may fail")
                target.rmdir()
                continue
            say(f"mounted cgroup v1 {ctrl} at {target} (crun needs it off cgroup2)")
            done.append(str(target))
        return done

    def restart_containerd(self, extra_env: Mapping[str, str] | None = None) -> int:
        """Kill the lab's containerd with SIGKILL, as a crash would, and start a new one with
        the same config; returns the new pid.

        Pods, shims and containers live on, as on a node whose containerd restarts. The new
        containerd's environment gets ``extra_env``; the CNI plugins it runs inherit it (the
        reliability tests put a fake cloud secret there and check it is never recorded).
        """
        require_root("restarting the lab's containerd")
        pid = self.pid()
        if pid is None:
            raise LabError("the lab is not up", fix="sudo startprof lab up")
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        if self._proc is not None and self._proc.pid == pid:
            self._proc.wait()  # our child: reap it, or its pid stays a zombie
        deadline = time.monotonic() + START_TIMEOUT
        while host.pid_alive(pid):
            if time.monotonic() > deadline:
                raise LabError(f"containerd (pid {pid}) survived SIGKILL")
            time.sleep(0.02)
        return self._start_containerd(extra_env)

    def _start_containerd(self, extra_env: Mapping[str, str] | None = None) -> int:
        log = self.paths.log
        offset = log.stat().st_size if log.exists() else 0
        runs = _runs(self.paths)
        # The shim is looked up on PATH: the one of this containerd's release comes first.
        env = {**os.environ, **(extra_env or {}), "PATH": f"{runs.bin_dir}:{host.HOST_PATH}"}
        with log.open("ab") as out:
            self._proc = subprocess.Popen(
                [runs.binary, "--config", str(self.paths.config)],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                env=env,
                # Own session: the lab outlives `startprof lab up` and ignores its Ctrl-C.
                start_new_session=True,
                close_fds=True,
            )
        pid = self._proc.pid
        self.paths.pid_file.write_text(f"{pid}\n")
        deadline = time.monotonic() + START_TIMEOUT
        last_error = ""
        while time.monotonic() < deadline:
            code = self._proc.poll()
            if code is not None:
                raise LabError(
                    f"containerd failed to start (exit {code}): {_log_tail(log, offset)}",
                    fix=f"full log: {log}",
                )
            if self.paths.socket.exists():
                try:
                    with CriClient(str(self.paths.socket), timeout=2.0) as cri:
                        cri.version()
                    return pid
                except CriError as exc:
                    last_error = str(exc)
            time.sleep(0.02)
        raise LabError(
            f"containerd did not answer CRI within {START_TIMEOUT:.0f} s ({last_error}): "
            f"{_log_tail(log, offset)}",
            fix=f"full log: {log}",
        )

    # ------------------------------------------------------------ down

    def down(self, progress: Progress | None = None) -> None:
        """Remove every pod, stop containerd and its shims, undo every host change.

        Raises :class:`LabError` listing what could not be removed.
        """
        say = progress or _quiet
        require_root("lab down")
        pid = self.pid()
        if pid is not None:
            remove_pods(self.paths, say)
        self._cleanup(say)
        leaks = find_leaks(self.paths)
        if leaks:
            raise LabError(
                f"lab down left {len(leaks)} thing(s) behind: {'; '.join(leaks)}",
                fix="remove them by hand; `startprof lab down` again retries",
            )
        say("lab down: nothing left behind")

    def _cleanup(self, say: Progress) -> None:
        """Stop containerd and shims and undo host changes; tolerant of partial state."""
        paths = self.paths
        state = load_state(paths)
        pid = self.pid()
        if pid is not None:
            say(f"stopping containerd (pid {pid})")
            host.terminate(pid)
        if self._proc is not None:
            self._proc.poll()  # reap our own child so it is no zombie
            self._proc = None
        ids = host.task_ids(paths.state_dir)
        for shim_pid, _ in host.shim_processes(paths.socket):
            host.terminate(shim_pid, timeout=2.0)
        for m in host.mounts_under(paths.root):
            if state and m.mountpoint in state.v1_mounts:
                continue  # after the cgroups inside it are gone
            host.umount(m.mountpoint)
        for cg in host.lab_cgroups():
            host.rmdir_cgroup_tree(cg)
        for link in host.lab_links():
            host.delete_link(link)
        rules = host.lab_iptables()
        if rules:
            host.delete_iptables(rules)
        known = host.sandbox_ids(paths.containerd_root, paths.state_dir) + ids
        for f in host.lab_cni_cache_files(paths.ipam_dir, known):
            f.unlink(missing_ok=True)
        for task_id in ids:
            host.shim_socket(paths.socket, task_id).unlink(missing_ok=True)
        for mp in state.v1_mounts if state else ():
            host.rmdir_cgroup_tree(Path(mp) / "startprof-lab")
            host.umount(mp)
        for d in (paths.state_dir, paths.run_dir):
            if d.exists() and not host.mounts_under(d):
                shutil.rmtree(d, ignore_errors=True)
        if paths.pod_logs.exists():
            shutil.rmtree(paths.pod_logs, ignore_errors=True)
        # Parents outside DIR that only the lab's runs created go too, when empty.
        created: list[Path] = [Path(p) for p in state.absent_at_up] if state else []
        if state and state.created_run_containerd:
            created += [host.SHIM_SOCKET_DIR, host.SHIM_SOCKET_DIR.parent]
        if state and state.created_var_lib_cni:
            created += [host.CNI_RESULTS_DIR, host.CNI_NETWORKS_DIR, host.CNI_RESULTS_DIR.parent]
        for d in created:
            with contextlib.suppress(OSError):
                if d.is_socket():
                    d.unlink()
                elif d.is_dir():
                    d.rmdir()


def import_archive(paths: LabPaths, archive: str | Path) -> None:
    """``ctr images import`` an OCI archive into the lab's CRI namespace."""
    proc = subprocess.run(
        [
            _runs(paths).ctr,
            "--address",
            str(paths.socket),
            "--namespace",
            K8S_NAMESPACE,
            "images",
            "import",
            str(archive),
        ],
        capture_output=True,
        text=True,
        check=False,
        env=dict(os.environ, PATH=host.HOST_PATH),
    )
    if proc.returncode != 0:
        raise LabError(f"importing {archive} failed: {' '.join(proc.stderr.split())}")


def _runs(paths: LabPaths) -> Containerd:
    """The containerd the lab's state names; the machine's for a state from before versions."""
    state = load_state(paths)
    runs = state.runs if state else None
    if runs is not None:
        return runs
    return versions.resolve(versions.SYSTEM, paths.root, _which)


def _which(name: str) -> str | None:
    return shutil.which(name, path=host.HOST_PATH)


def _socket_answers(path: Path) -> bool:
    import socket

    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(0.5)
    try:
        s.connect(str(path))
        return True
    except OSError:
        return False
    finally:
        s.close()


def _log_tail(log: Path, offset: int, lines: int = 3) -> str:
    """The last error-ish lines containerd wrote since ``offset``, on one line."""
    try:
        with log.open("rb") as f:
            f.seek(offset)
            text = f.read().decode(errors="replace")
    except OSError:
        return "(no log)"
    rows = [r for r in text.splitlines() if r.strip()]
    errors = [r for r in rows if "level=error" in r or "level=fatal" in r] or rows
    return " | ".join(_short_log_line(r) for r in errors[-lines:]) or "(empty log)"


def _short_log_line(row: str) -> str:
    # containerd's logrus lines: time="..." level=error msg="..." error="..."
    parts: dict[str, Any] = {}
    for key in ("msg", "error"):
        marker = f'{key}="'
        if marker in row:
            rest = row.split(marker, 1)[1]
            parts[key] = rest.split('"', 1)[0] if '"' in rest else rest
    return ": ".join(str(v) for v in parts.values()) or row
