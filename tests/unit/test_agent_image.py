"""The agent image's file tree (lab/agent_image.py): host paths kept with every symlink on the
way, as a merged-/usr Debian has them (``/lib -> usr/lib``)."""

from __future__ import annotations

from pathlib import Path

from startprof.lab.agent_image import _Tree, runtime_distributions


def test_a_path_through_symlinks_keeps_the_links_and_their_targets(tmp_path: Path) -> None:
    (tmp_path / "usr" / "lib").mkdir(parents=True)
    (tmp_path / "usr" / "lib" / "libz.so.1.2").write_bytes(b"z")
    (tmp_path / "usr" / "lib" / "libz.so.1").symlink_to("libz.so.1.2")
    (tmp_path / "lib").symlink_to("usr/lib")
    tree = _Tree()
    tree.mirror(tmp_path / "lib" / "libz.so.1")
    assert set(tree.entries) == {
        str(tmp_path / "lib"),  # the directory link
        str(tmp_path / "usr" / "lib"),  # its target
        str(tmp_path / "usr" / "lib" / "libz.so.1"),  # the file link, under the real parent
        str(tmp_path / "usr" / "lib" / "libz.so.1.2"),  # and its target
    }
    tree.mirror(tmp_path / "no-such-file")  # nothing to copy: nothing added
    assert len(tree.entries) == 4


def test_the_runtime_distributions_are_startprofs_requirements_without_dev_extras() -> None:
    names = {d.metadata["Name"].lower().replace("_", "-") for d in runtime_distributions()}
    assert {"startprof", "pyarrow", "pandas", "grpcio", "opentelemetry-sdk", "pyyaml"} <= names
    assert not names & {"pytest", "mypy", "ruff", "hypothesis"}
