"""containerd versions of the lab: choices, version strings, config version 3, the fetch cache,
and what recordings say about the containerd (no root, no network, no containerd)."""

from __future__ import annotations

import json
import os
import tomllib
from pathlib import Path

import pytest

from startprof.errors import EnvironmentProblem, InputError
from startprof.lab import versions
from startprof.lab.config import available_handlers, render_containerd_config
from startprof.lab.paths import LabPaths
from startprof.lab.versions import Containerd


def _fake_containerd(directory: Path, says: str, tools: bool = True) -> Path:
    """A containerd look-alike whose --version prints ``says``; ctr and the shim beside it."""
    directory.mkdir(parents=True, exist_ok=True)
    binary = directory / "containerd"
    binary.write_text(f"#!/bin/sh\necho '{says}'\n")
    binary.chmod(0o755)
    for tool in ("ctr", "containerd-shim-runc-v2") if tools else ():
        (directory / tool).write_text("#!/bin/sh\n")
        (directory / tool).chmod(0o755)
    return binary


def _nothing(_: str) -> str | None:
    return None


def test_choices_are_labels_or_an_executable_path(tmp_path: Path) -> None:
    assert versions.parse_choice("2.1") == "2.1"
    assert versions.parse_choice(" system ") == "system"
    binary = _fake_containerd(tmp_path, "containerd x v1.7.3 abc")
    assert versions.parse_choice(str(binary)) == str(binary)
    with pytest.raises(InputError, match=r"unknown containerd version '3\.0'; valid: system, 1\.6"):
        versions.parse_choice("3.0")
    with pytest.raises(InputError, match="no executable containerd binary there"):
        versions.parse_choice(str(tmp_path / "nope" / "containerd"))


@pytest.mark.parametrize(
    ("says", "version", "config"),
    [
        (
            "containerd github.com/containerd/containerd 1.6.20~ds1 1.6.20~ds1-1+deb12u3",
            "1.6.20",
            2,
        ),
        (
            "containerd github.com/containerd/containerd 1.7.24~ds1 1.7.24~ds1-6+deb13u1",
            "1.7.24",
            2,
        ),
        ("containerd github.com/containerd/containerd/v2 2.1.9+unknown ", "2.1.9", 3),
        ("containerd github.com/containerd/containerd/v2 v2.0.5 fb4c30d4", "2.0.5", 3),
    ],
)
def test_version_strings(tmp_path: Path, says: str, version: str, config: int) -> None:
    binary = _fake_containerd(tmp_path, says)
    assert versions.version_of(binary) == version
    assert versions.config_version_for(version) == config


def test_not_a_containerd_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(EnvironmentProblem, match="is not a containerd binary"):
        versions.version_of(_fake_containerd(tmp_path, "hello"))


def test_a_path_choice_runs_that_binary_and_its_shim(tmp_path: Path) -> None:
    binary = _fake_containerd(tmp_path / "bin", "containerd x/v2 v2.1.0 abc")
    found = versions.resolve(str(binary), tmp_path / "cache", _nothing)
    assert (found.label, found.version, found.source) == (str(binary), "2.1.0", "path")
    assert found.bin_dir == str(tmp_path / "bin") and found.config_version == 3
    lonely = _fake_containerd(tmp_path / "lonely", "containerd x v1.7.0 abc", tools=False)
    with pytest.raises(EnvironmentProblem, match="no ctr or containerd-shim-runc-v2 beside it"):
        versions.resolve(str(lonely), tmp_path / "cache", _nothing)


def test_the_machines_own_16_is_used_for_16(tmp_path: Path) -> None:
    system = _fake_containerd(tmp_path / "usr", "containerd x 1.6.20~ds1 1.6.20~ds1-1")

    def which(name: str) -> str | None:
        return str(system.parent / name)

    found = versions.resolve("1.6", tmp_path / "cache", which)
    assert (found.label, found.source, found.version) == ("1.6", "system", "1.6.20")
    assert not (tmp_path / "cache").exists()  # nothing fetched


def test_a_cached_fetch_is_reused_only_while_its_binaries_hash_as_recorded(
    tmp_path: Path,
) -> None:
    cache = tmp_path / "cache"
    bin_dir = cache / "2.1" / "root" / "usr" / "bin"
    _fake_containerd(bin_dir, "containerd x/v2 2.1.9+unknown ")
    entry = Containerd("2.1", "2.1.9", str(bin_dir), "debian sid containerd_2.1.9.deb", 3, "ab")
    doc = {
        **entry.to_dict(),
        "binaries_sha256": {t: versions._sha256(bin_dir / t) for t in versions.TOOLS},
    }
    (cache / "2.1" / "manifest.json").write_text(json.dumps(doc))
    assert versions.resolve("2.1", cache, _nothing) == entry  # no apt-get: from the cache
    (bin_dir / "ctr").write_text("#!/bin/sh\necho tampered\n")
    assert versions._load_manifest(cache / "2.1" / "manifest.json") is None


def test_the_mirror_is_the_machines_debian_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(versions.MIRROR_ENV, raising=False)
    deb822 = tmp_path / "debian.sources"
    deb822.write_text(
        "Types: deb\nURIs: http://mirror.example/debian-security\nSuites: bookworm-security\n\n"
        "Types: deb\nURIs: http://mirror.example/debian/\nSuites: bookworm\n"
    )
    assert versions.debian_mirror([deb822]) == "http://mirror.example/debian"
    one_line = tmp_path / "sources.list"
    one_line.write_text("deb [signed-by=/k.gpg] http://other.example/debian bookworm main\n")
    assert versions.debian_mirror([one_line]) == "http://other.example/debian"
    assert versions.debian_mirror([tmp_path / "missing"]) == versions.DEFAULT_MIRROR
    monkeypatch.setenv(versions.MIRROR_ENV, "http://env.example/debian/")
    assert versions.debian_mirror([one_line]) == "http://env.example/debian"


def test_apt_runs_privately(tmp_path: Path) -> None:
    apt = tmp_path / "apt"
    opts = " ".join(versions._apt_options(apt, "http://m/debian", "sid"))
    assert "Dir::Etc::sourceparts=/nonexistent" in opts
    assert f"Dir::State::Lists={apt}/lists" in opts
    assert f"Dir::Cache={apt}/cache" in opts
    assert f"Dir::State::status={apt}/etc/status" in opts
    sources = (apt / "etc" / "sources.list").read_text()
    assert sources == f"deb [signed-by={versions.KEYRING}] http://m/debian sid main\n"


def test_config_version_3_for_containerd_2() -> None:
    def which(name: str) -> str | None:
        return f"/usr/sbin/{name.rsplit('/', 1)[-1]}"

    paths = LabPaths(Path("/tmp/lab x"))
    handlers = available_handlers(which)
    doc = tomllib.loads(render_containerd_config(paths, handlers, "startprof.invalid/p:1", 3))
    assert doc["version"] == 3
    plugins = doc["plugins"]
    assert plugins["io.containerd.internal.v1.opt"]["path"] == "/tmp/lab x/opt"
    assert plugins["io.containerd.nri.v1.nri"]["socket_path"] == "/tmp/lab x/run/nri.sock"
    images = plugins["io.containerd.cri.v1.images"]
    assert images["pinned_images"]["sandbox"] == "startprof.invalid/p:1"
    runtime = plugins["io.containerd.cri.v1.runtime"]
    for key in (
        "restrict_oom_score_adj",
        "disable_apparmor",
        "disable_hugetlb_controller",
        "netns_mounts_under_state_dir",
    ):
        assert runtime[key] is True, key
    assert runtime["cni"]["bin_dirs"] == ["/usr/lib/cni"]
    crun = runtime["containerd"]["runtimes"]["crun-ptp"]
    assert crun["runtime_type"] == "io.containerd.runc.v2"
    assert crun["cni_conf_dir"] == "/tmp/lab x/cni/net.d/ptp"
    assert crun["options"] == {
        "BinaryName": "/usr/sbin/crun",
        "Root": "/tmp/lab x/run/runtime/crun",
        "SystemdCgroup": False,
    }
    assert "io.containerd.grpc.v1.cri" in doc["required_plugins"]
    # nothing of 1.x's CRI table layout is left
    assert "containerd" not in plugins["io.containerd.grpc.v1.cri"]
    with pytest.raises(ValueError, match="config version 4"):
        render_containerd_config(paths, handlers, "x:1", 4)


def test_recordings_name_the_labs_containerd(tmp_path: Path) -> None:
    paths = LabPaths(tmp_path)
    paths.run_dir.mkdir()
    entry = Containerd("2.1", "2.1.9", "/c/bin", "debian sid containerd_2.1.9.deb", 3)
    paths.lab_state.write_text(json.dumps({"containerd": entry.to_dict()}))
    meta = versions.recording_metadata(str(paths.socket), [])
    assert meta == {
        "version": "2.1.9",
        "label": "2.1",
        "source": "debian sid containerd_2.1.9.deb",
        "config_version": 3,
        "lab": str(tmp_path),
    }
    # not a lab: what the listening binary says it is (here: this test's own python is not one)
    assert versions.recording_metadata(str(tmp_path / "other.sock"), [os.getpid()]) == {}
