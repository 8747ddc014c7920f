"""Which containerd the lab runs: the machine's own, or Debian's 1.6, 1.7 or 2.1 fetched into
the lab's cache without touching the machine's apt set-up, or any containerd binary by path.

Debian's newer suites are reachable through the machine's own Debian mirror: trixie has
containerd 1.7, sid has 2.1. ``apt-get`` runs with a private sources list, state and cache
(never the machine's), verifies the suite's signed Release file with the Debian archive
keyring and every package against its hash, and ``dpkg -x`` unpacks it into the cache; the
package's sha256 is recorded beside it. Only containerd, its shim and ``ctr`` come from the
newer suite: their runc and crun need a newer glibc, so the lab keeps the machine's.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from startprof.errors import EnvironmentProblem, InputError

SYSTEM = "system"
TOOLS = ("containerd", "ctr", "containerd-shim-runc-v2")
KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")
DEFAULT_MIRROR = "http://deb.debian.org/debian"
CACHE_ENV = "STARTPROF_CONTAINERD_CACHE"
MIRROR_ENV = "STARTPROF_DEBIAN_MIRROR"
APT_TIMEOUT = 300.0
# Host PATH the version probes run with (the same as the lab's; see lab.host).
_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass(frozen=True)
class Release:
    """A containerd minor version the lab can fetch: the Debian suite that ships it."""

    label: str  # what --containerd takes: 1.6, 1.7, 2.1
    suite: str
    config_version: int  # containerd.toml `version`: 2 for 1.x, 3 for 2.x


RELEASES: tuple[Release, ...] = (
    Release("1.6", "bookworm", 2),
    Release("1.7", "trixie", 2),
    Release("2.1", "sid", 3),
)
CHOICES = (SYSTEM, *(r.label for r in RELEASES))


@dataclass(frozen=True)
class Containerd:
    """The containerd a lab runs, as the lab's state, ``lab status`` and recordings carry it."""

    label: str  # system, 1.6, 1.7, 2.1, or the path given
    version: str  # what `containerd --version` says, e.g. 2.1.9
    bin_dir: str  # holds containerd, ctr and containerd-shim-runc-v2; first on containerd's PATH
    source: str  # "system", "path", or "debian <suite> <package>_<version>"
    config_version: int
    deb_sha256: str = ""

    @property
    def binary(self) -> str:
        return str(Path(self.bin_dir, "containerd"))

    @property
    def ctr(self) -> str:
        return str(Path(self.bin_dir, "ctr"))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Containerd:
        return cls(
            label=str(d["label"]),
            version=str(d["version"]),
            bin_dir=str(d["bin_dir"]),
            source=str(d["source"]),
            config_version=int(d["config_version"]),
            deb_sha256=str(d.get("deb_sha256", "")),
        )


def parse_choice(text: str) -> str:
    """``--containerd`` as given: a known label, or an existing containerd binary's path."""
    text = text.strip()
    if text in CHOICES:
        return text
    if "/" in text or text.startswith("."):
        path = Path(text)
        if not path.is_file() or not os.access(path, os.X_OK):
            raise InputError(
                f"--containerd {text}: no executable containerd binary there",
                fix=f"give one of {', '.join(CHOICES)} or the path of a containerd binary",
            )
        return str(path.absolute())
    raise InputError(
        f"unknown containerd version {text!r}; valid: {', '.join(CHOICES)} or a path to a "
        "containerd binary"
    )


def config_version_for(version: str) -> int:
    """containerd 2.x reads config version 3 (and migrates 2); 1.x knows only 1 and 2."""
    major = version.split(".", 1)[0]
    return 3 if major.isdigit() and int(major) >= 2 else 2


def version_of(binary: str | Path) -> str:
    """``containerd --version``'s version, without Debian's suffixes: 1.6.20, 2.1.9."""
    try:
        proc = subprocess.run(
            [str(binary), "--version"],
            capture_output=True,
            text=True,
            timeout=20,
            check=False,
            env={"PATH": _PATH},
        )
    except OSError as exc:
        raise EnvironmentProblem(f"{binary} does not run: {exc.strerror or exc}") from exc
    except subprocess.TimeoutExpired as exc:
        raise EnvironmentProblem(f"{binary} --version did not answer in 20 s") from exc
    # "containerd github.com/containerd/containerd/v2 2.1.9+unknown ", "... 1.6.20~ds1 1.6.20~ds1-1"
    m = re.search(r"\sv?(\d+\.\d+\.\d+)", proc.stdout)
    if proc.returncode != 0 or m is None or not proc.stdout.startswith("containerd "):
        why = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        raise EnvironmentProblem(f"{binary} is not a containerd binary ({why[0]})")
    return m.group(1)


def default_cache(lab_root: Path) -> Path:
    """Where fetched containerds are kept: ``$STARTPROF_CONTAINERD_CACHE``, else DIR/containerd."""
    env = os.environ.get(CACHE_ENV)
    return Path(env) if env else lab_root / "containerd"


def resolve(
    choice: str,
    cache: Path,
    which: Callable[[str], str | None],
    say: Callable[[str], None] = lambda _: None,
) -> Containerd:
    """The containerd for ``choice`` (see :func:`parse_choice`), fetched into ``cache`` if
    needed. ``1.6`` on a machine whose own containerd is 1.6 is that one (nothing to fetch)."""
    if choice == SYSTEM:
        binary = which("containerd")
        if binary is None:
            raise EnvironmentProblem(
                "the lab needs containerd",
                fix="sudo make setup (installs containerd), or lab up --containerd 1.6|1.7|2.1",
            )
        return _local(SYSTEM, Path(binary), "system", which)
    release = next((r for r in RELEASES if r.label == choice), None)
    if release is None:
        return _local(choice, Path(choice), "path", which)
    system = which("containerd")
    if system is not None and _minor(version_of(system)) == release.label:
        return _local(release.label, Path(system), "system", which)
    return fetch(release, cache, say)


def _minor(version: str) -> str:
    return ".".join(version.split(".")[:2])


def _local(label: str, binary: Path, source: str, which: Callable[[str], str | None]) -> Containerd:
    binary = binary.absolute()
    version = version_of(binary)
    bin_dir = binary.parent
    missing = [t for t in TOOLS[1:] if not (bin_dir / t).exists() and which(t) is None]
    if missing:
        raise EnvironmentProblem(
            f"{binary} has no {' or '.join(missing)} beside it or on PATH",
            fix="put containerd, ctr and containerd-shim-runc-v2 in one directory",
        )
    return Containerd(label, version, str(bin_dir), source, config_version_for(version))


# --- Debian packages ----------------------------------------------------------------------


def debian_mirror(sources: Sequence[Path] = ()) -> str:
    """The machine's Debian mirror (``$STARTPROF_DEBIAN_MIRROR`` first): the first URI of an
    apt source that serves Debian's main archive (not -security, not a third party)."""
    env = os.environ.get(MIRROR_ENV)
    if env:
        return env.rstrip("/")
    files = list(sources) or [
        Path("/etc/apt/sources.list"),
        *sorted(Path("/etc/apt/sources.list.d").glob("*.sources")),
        *sorted(Path("/etc/apt/sources.list.d").glob("*.list")),
    ]
    for f in files:
        try:
            text = f.read_text()
        except OSError:
            continue
        for uri in re.findall(r"(?m)^\s*URIs:\s*(\S+)|^\s*deb\s+(?:\[[^\]]*\]\s+)?(\S+)", text):
            url = str(uri[0] or uri[1]).rstrip("/")
            if url.endswith("/debian") and "security" not in url:
                return url
    return DEFAULT_MIRROR


@dataclass(frozen=True)
class Fetched:
    """What one fetch downloaded (for the figures in docs/containerd.md)."""

    package: str
    size_bytes: int
    seconds: float


def fetch(release: Release, cache: Path, say: Callable[[str], None]) -> Containerd:
    """Debian's containerd of ``release`` from the cache, else downloaded and unpacked there."""
    home = cache / release.label
    manifest = home / "manifest.json"
    cached = _load_manifest(manifest)
    if cached is not None:
        return cached
    if not KEYRING.exists():
        raise EnvironmentProblem(
            f"cannot verify Debian's packages: {KEYRING} is missing",
            fix="apt-get install debian-archive-keyring",
        )
    mirror = debian_mirror()
    apt_dir = cache / "apt" / release.suite
    say(f"fetching containerd {release.label} from Debian {release.suite} ({mirror})")
    t0 = time.monotonic()
    deb = _apt_download(apt_dir, mirror, release.suite, "containerd")
    size = deb.stat().st_size
    expected = _apt_field(apt_dir, mirror, release.suite, "containerd", "SHA256")
    digest = _sha256(deb)
    if expected and digest != expected:
        raise EnvironmentProblem(
            f"{deb.name}: sha256 {digest} is not the {expected} Debian's index lists",
            fix=f"rm -r {apt_dir} and retry",
        )
    staging = home.with_name(home.name + ".new")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    _run(["dpkg-deb", "-x", str(deb), str(staging / "root")], f"unpacking {deb.name}")
    bin_dir = staging / "root" / "usr" / "bin"
    missing = [t for t in TOOLS if not (bin_dir / t).exists()]
    if missing:
        raise EnvironmentProblem(f"{deb.name} holds no {', '.join(missing)}")
    version = version_of(bin_dir / "containerd")
    if _minor(version) != release.label:
        raise EnvironmentProblem(
            f"Debian {release.suite} now ships containerd {version}, not {release.label}",
            fix=f"use --containerd {_minor(version)} or a path to a containerd {release.label}",
        )
    shutil.copy2(deb, staging / deb.name)
    deb.unlink()
    shutil.rmtree(home, ignore_errors=True)
    staging.rename(home)
    result = Containerd(
        label=release.label,
        version=version,
        bin_dir=str(home / "root" / "usr" / "bin"),
        source=f"debian {release.suite} {deb.name}",
        config_version=release.config_version,
        deb_sha256=digest,
    )
    doc = {
        **result.to_dict(),
        "binaries_sha256": {t: _sha256(Path(result.bin_dir, t)) for t in TOOLS},
        "fetched": asdict(Fetched(deb.name, size, round(time.monotonic() - t0, 2))),
    }
    manifest.write_text(json.dumps(doc, indent=2) + "\n")
    took = time.monotonic() - t0
    say(f"containerd {version}: {size / 1e6:.1f} MB in {took:.1f} s, sha256 {digest}")
    return result


def _load_manifest(path: Path) -> Containerd | None:
    """A cached containerd whose binaries still hash as recorded (else it is fetched again)."""
    try:
        doc = json.loads(path.read_text())
        found = Containerd.from_dict(doc)
        sums = doc["binaries_sha256"]
        if all(_sha256(Path(found.bin_dir, t)) == sums[t] for t in TOOLS):
            return found
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return None


def _apt_options(apt_dir: Path, mirror: str, suite: str) -> list[str]:
    """A private apt: its own sources list, lists, cache and (empty) dpkg status."""
    for d in ("lists/partial", "cache/archives/partial", "etc"):
        (apt_dir / d).mkdir(parents=True, exist_ok=True)
    sources = apt_dir / "etc" / "sources.list"
    sources.write_text(f"deb [signed-by={KEYRING}] {mirror} {suite} main\n")
    status = apt_dir / "etc" / "status"
    status.touch()
    return [
        "-q",
        "-o", f"Dir::Etc::sourcelist={sources}",
        "-o", "Dir::Etc::sourceparts=/nonexistent",
        "-o", f"Dir::State::Lists={apt_dir / 'lists'}",
        "-o", f"Dir::Cache={apt_dir / 'cache'}",
        "-o", f"Dir::State::status={status}",
        "-o", "Debug::NoLocking=1",
        "-o", "APT::Sandbox::User=root",
        "-o", "Acquire::Retries=2",
    ]  # fmt: skip


def _apt_download(apt_dir: Path, mirror: str, suite: str, package: str) -> Path:
    opts = _apt_options(apt_dir, mirror, suite)
    _run(["apt-get", *opts, "update"], f"apt-get update of Debian {suite} from {mirror}")
    out = apt_dir / "download"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    _run(["apt-get", *opts, "download", package], f"downloading {package} from {suite}", cwd=out)
    debs = sorted(out.glob(f"{package}_*.deb"))
    if not debs:
        raise EnvironmentProblem(f"apt-get download {package} from {suite} left no .deb")
    return debs[-1]


def _apt_field(apt_dir: Path, mirror: str, suite: str, package: str, field: str) -> str:
    opts = _apt_options(apt_dir, mirror, suite)
    text = _run(["apt-cache", *opts, "show", package], f"apt-cache show {package}")
    m = re.search(rf"(?m)^{field}:\s*(\S+)", text)
    return m.group(1) if m else ""


def _run(argv: list[str], what: str, cwd: Path | None = None) -> str:
    if shutil.which(argv[0], path=_PATH) is None:
        raise EnvironmentProblem(f"{what}: {argv[0]} is not installed", fix="apt-get install apt")
    try:
        proc = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            timeout=APT_TIMEOUT,
            check=False,
            cwd=cwd,
            env={"PATH": _PATH, "LC_ALL": "C", "DEBIAN_FRONTEND": "noninteractive"},
        )
    except subprocess.TimeoutExpired as exc:
        raise EnvironmentProblem(
            f"{what}: no answer in {APT_TIMEOUT:.0f} s",
            fix=f"check the network to the Debian mirror, or set ${MIRROR_ENV}",
        ) from exc
    # apt-get update exits 0 on some failures and says so with "W:"/"E:" lines.
    errors = [
        line
        for line in (proc.stderr + proc.stdout).splitlines()
        if line.startswith("E:") or (line.startswith("W:") and "Failed to fetch" in line)
        or line.startswith("Err:")
    ]  # fmt: skip
    if proc.returncode != 0 or errors:
        detail = " ".join((errors or proc.stderr.strip().splitlines() or ["failed"])[0].split())
        raise EnvironmentProblem(
            f"{what} failed: {detail}",
            fix=f"the lab fetches Debian's containerd from the mirror: check the network, or set "
            f"${MIRROR_ENV}",
        )
    return proc.stdout


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def recording_metadata(cri_socket: str | None, containerd_pids: Sequence[int]) -> dict[str, Any]:
    """What a recording's header says about the containerd behind ``cri_socket``: the lab's
    state when it is a lab's socket, else what the listening binary says it is; {} if neither.
    """
    if cri_socket:
        from startprof.lab.paths import LabPaths

        try:
            doc = json.loads(LabPaths.from_socket(cri_socket).lab_state.read_text())
            found = Containerd.from_dict(doc["containerd"])
            return {
                "version": found.version,
                "label": found.label,
                "source": found.source,
                "config_version": found.config_version,
                "lab": str(LabPaths.from_socket(cri_socket).root),
            }
        except (OSError, ValueError, KeyError, TypeError):
            pass
    for pid in containerd_pids:
        try:
            exe = os.readlink(f"/proc/{pid}/exe")
            return {"version": version_of(f"/proc/{pid}/exe"), "binary": exe}
        except (OSError, EnvironmentProblem):
            continue
    return {}


# --- crun and newer runtime-spec versions ---------------------------------------------------

CRUN_ACCEPTS_ANY_SPEC = (1, 14, 3)
"""crun before 1.14.3 refuses any ``ociVersion`` but 1.0.x ("unknown version specified");
containerd 1.7 writes runtime-spec 1.2.0 and 2.1 writes 1.2.1 (Debian 12's crun is 1.8.1).
containerd's ``base_runtime_spec`` cannot help: pause containers never use it."""
FRONT_SOURCE = "crun-oldspec.c"


def runtime_version(binary: str) -> tuple[int, ...] | None:
    """``crun --version``'s first line as numbers: (1, 8, 1); None when it cannot tell."""
    try:
        proc = subprocess.run(
            [binary, "--version"], capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    m = re.search(r"version (\d+(?:\.\d+)*)", proc.stdout)
    return tuple(int(x) for x in m.group(1).split(".")) if m else None


def needs_old_spec(containerd: Containerd, crun_version: tuple[int, ...] | None) -> bool:
    """Whether this containerd's specs must be labelled 1.0.x for this crun."""
    if crun_version is None or crun_version >= CRUN_ACCEPTS_ANY_SPEC:
        return False
    major, minor = (int(x) for x in containerd.version.split(".")[:2])
    return (major, minor) >= (1, 7)


def old_spec_front(crun: str, bin_dir: Path) -> Path:
    """The lab's ``crun`` front (lab/images/crun-oldspec.c) for the real ``crun``, compiled
    once into ``bin_dir/crun-oldspec-<hash>/crun`` (named crun: the profiler and crun's own
    messages see the runtime's name)."""
    from importlib import resources

    from startprof.lab.images import compile_static

    source = (Path(str(resources.files("startprof.lab"))) / "images" / FRONT_SOURCE).read_bytes()
    source = f"#define REAL_CRUN {json.dumps(crun)}\n".encode() + source
    out = bin_dir / f"crun-oldspec-{hashlib.sha256(source).hexdigest()[:12]}" / "crun"
    if not out.exists():
        compile_static(source, out)
    return out
