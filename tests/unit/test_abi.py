"""bpf/startprof.h against its ctypes mirror: compile the header with cc, print every sizeof
and offsetof, and compare with startprof.probes.abi field by field."""

from __future__ import annotations

import ctypes as ct
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from startprof.probes import PROBES, abi, preferred_tracepoints, required_tracepoints
from startprof.probes.session import ProbeSession, expand_source
from startprof.resources import bpf_dir

CC = shutil.which("cc") or shutil.which("gcc")


def _c_program() -> str:
    lines = [
        "#include <stdio.h>",
        "#include <stddef.h>",
        '#include "startprof.h"',
        "#define M(s, f) sizeof(((struct s *)0)->f)",
        "int main(void) {",
    ]
    for cname, cls in abi.STRUCTS.items():
        lines.append(f'printf("sizeof {cname} %zu\\n", sizeof(struct {cname}));')
        for fname, *_ in cls._fields_:
            lines.append(
                f'printf("field {cname} {fname} %zu %zu\\n", '
                f"offsetof(struct {cname}, {fname}), M({cname}, {fname}));"
            )
    for name in abi.CONSTANTS:
        lines.append(f'printf("const {name} %llu\\n", (unsigned long long)({name}));')
    lines += ["return 0;", "}"]
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def c_layout(tmp_path_factory: pytest.TempPathFactory) -> dict[str, int]:
    if CC is None:
        pytest.skip("no C compiler (cc/gcc) to compile bpf/startprof.h with")
    work = tmp_path_factory.mktemp("abi")
    src = work / "layout.c"
    src.write_text(_c_program())
    exe = work / "layout"
    subprocess.run(
        [CC, "-std=gnu11", "-Wall", "-Werror", f"-I{bpf_dir()}", str(src), "-o", str(exe)],
        check=True,
        capture_output=True,
        text=True,
    )
    out = subprocess.run([str(exe)], check=True, capture_output=True, text=True).stdout
    layout: dict[str, int] = {}
    for line in out.splitlines():
        what, *rest = line.split()
        if what == "sizeof":
            layout[f"sizeof {rest[0]}"] = int(rest[1])
        elif what == "field":
            layout[f"offsetof {rest[0]}.{rest[1]}"] = int(rest[2])
            layout[f"sizeof {rest[0]}.{rest[1]}"] = int(rest[3])
        else:
            layout[f"const {rest[0]}"] = int(rest[1])
    return layout


def _python_layout() -> dict[str, int]:
    layout: dict[str, int] = {}
    for cname, cls in abi.STRUCTS.items():
        layout[f"sizeof {cname}"] = ct.sizeof(cls)
        for fname, ftype, *_ in cls._fields_:
            layout[f"offsetof {cname}.{fname}"] = getattr(cls, fname).offset
            layout[f"sizeof {cname}.{fname}"] = ct.sizeof(ftype)
    for name, value in abi.CONSTANTS.items():
        layout[f"const {name}"] = value & 0xFFFFFFFFFFFFFFFF  # C prints them unsigned
    return layout


def test_every_size_offset_and_constant_matches_the_header(c_layout: dict[str, int]) -> None:
    py = _python_layout()
    assert set(py) == set(c_layout)
    mismatches = {k: (c_layout[k], py[k]) for k in py if py[k] != c_layout[k]}
    assert mismatches == {}, "C vs ctypes (C first)"


def test_fixed_parts_end_where_the_tail_array_starts(c_layout: dict[str, int]) -> None:
    for cname, (fixed, tail) in abi.FIXED_PARTS.items():
        assert ct.sizeof(fixed) == c_layout[f"offsetof {cname}.{tail}"], cname
        full = abi.STRUCTS[cname]
        assert [f[0] for f in fixed._fields_] == [f[0] for f in full._fields_][:-1]


def test_header_is_48_bytes_without_padding(c_layout: dict[str, int]) -> None:
    assert c_layout["sizeof sp_header"] == 48
    assert sum(c_layout[f"sizeof sp_header.{f[0]}"] for f in abi.Header._fields_) == 48


def test_every_record_type_in_the_header_enum_is_mirrored() -> None:
    text = (Path(bpf_dir()) / "startprof.h").read_text()
    enum = text[text.index("enum sp_type {") : text.index("};", text.index("enum sp_type {"))]
    names = {line.split("=")[0].strip() for line in enum.splitlines() if "=" in line}
    assert names == {f"SP_{t.name}" for t in abi.RecordType}


def test_abi_version_is_the_headers() -> None:
    text = (Path(bpf_dir()) / "startprof.h").read_text()
    assert f"#define STARTPROF_ABI_VERSION {abi.STARTPROF_ABI_VERSION}\n" in text


def test_loaded_source_inlines_every_probe_and_shows_its_settings() -> None:
    session = ProbeSession(
        follow_all=True,
        ringbuf_pages=64,
        probes=("exec", "cri"),
        cri_sock_tracepoints=True,
        syscall_hooks="tracepoint",
    )
    assert session.cflags() == [
        "-DSP_RINGBUF_PAGES=64",
        "-DSP_FOLLOW_ALL=1",
        "-DSP_PROBE_EXEC=1",
        "-DSP_PROBE_NAMESPACES=0",
        "-DSP_PROBE_NETLINK=0",
        "-DSP_PROBE_CRI=1",
        "-DSP_PROBE_RUNTIME=0",
        "-DSP_PROBE_IMAGE=0",
        "-DSP_CRI_SOCK_TP=1",
        "-DSP_ENV_FILTER=0",
        "-DSP_SYSCALL_FENTRY=0",
    ]
    assert "-DSP_CRI_SOCK_TP=0" in ProbeSession(cri_sock_tracepoints=False).cflags()
    # the environment is read only where CNI_* can be once there are CRI listeners to start from
    assert "-DSP_ENV_FILTER=1" in ProbeSession(cri_socket="/run/x.sock").cflags()
    assert "-DSP_ENV_FILTER=0" in ProbeSession(cri_socket="/run/x.sock", follow_all=True).cflags()
    text = session.c_source()
    head = text[: text.index("*/")]
    assert all(flag in head for flag in session.cflags())
    # the header and every probe file inlined (the -D flags decide what compiles)
    for name in ("startprof.h", *(f"{p.name}.bpf.c" for p in PROBES)):
        assert f'#line 1 "{name}"' in text
    assert '#include "' not in text
    assert text.count("#define STARTPROF_ABI_VERSION") == 1


def test_settings_are_validated() -> None:
    with pytest.raises(ValueError, match="power of two"):
        ProbeSession(ringbuf_pages=100)
    with pytest.raises(ValueError, match="unknown probe"):
        ProbeSession(probes=("exec", "kprobes"))


def test_probe_table_lists_every_tracepoint_the_c_attaches() -> None:
    text = expand_source()
    attached = {
        f"{cat}:{event}" for cat, event in re.findall(r"TRACEPOINT_PROBE\((\w+), (\w+)\)", text)
    } | {
        f"syscalls:sys_{edge.lower()}_{name}"
        for edge, name in re.findall(r"^SP_SYSCALL_(ENTER|EXIT)\((\w+)\)", text, re.M)
    }
    assert attached == set(required_tracepoints()) | set(preferred_tracepoints())
