"""startprof.probes.hooks: how the syscall hooks attach, and the names of their programs."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from startprof.probes import hooks, required_tracepoints
from startprof.probes.session import ProbeSession, expand_source


def test_fentry_needs_x86_64_btf_trampolines_and_a_kernel_that_loads_it() -> None:
    yes = lambda *_: True  # noqa: E731
    no = lambda *_: False  # noqa: E731
    assert hooks.fentry_usable("x86_64", yes, yes, loads=yes)
    assert not hooks.fentry_usable("aarch64", yes, yes, loads=yes)
    assert not hooks.fentry_usable("x86_64", no, yes, loads=yes)  # no BTF
    assert not hooks.fentry_usable("x86_64", yes, no, loads=yes)  # no trampolines
    assert not hooks.fentry_usable("x86_64", yes, yes, loads=no)  # this CI VM: EPERM


def test_kallsyms_scan_matches_whole_names(tmp_path: Path) -> None:
    kallsyms = tmp_path / "kallsyms"
    kallsyms.write_text(
        "ffffffff81544b90 T bpf_trampoline_link_prog\nffffffff81544c00 t x_bpf_trampoline\n"
    )
    assert hooks.kernel_has_symbol("bpf_trampoline_link_prog", str(kallsyms))
    assert not hooks.kernel_has_symbol("trampoline_link_prog", str(kallsyms))
    assert not hooks.kernel_has_symbol("bpf_trampoline", str(kallsyms))
    assert not hooks.kernel_has_symbol("x", str(tmp_path / "absent"))


def test_modes_are_checked() -> None:
    assert hooks.use_fentry("fentry") and not hooks.use_fentry("tracepoint")
    with pytest.raises(ValueError, match="syscall hooks must be one of"):
        hooks.use_fentry("kprobe")


@pytest.mark.parametrize(
    ("program", "hook"),
    [
        ("tracepoint__syscalls__sys_enter_setns", "syscalls:sys_enter_setns"),
        ("tracepoint__sched__sched_process_exec", "sched:sched_process_exec"),
        ("kfunc____x64_sys_setns", "syscalls:sys_enter_setns"),  # bcc 0.26
        ("kretfunc____x64_sys_clone3", "syscalls:sys_exit_clone3"),
        ("kfunc__vmlinux____x64_sys_execve", "syscalls:sys_enter_execve"),  # later bcc
        ("sp_floor", None),
    ],
)
def test_program_names_map_back_to_hooks(program: str, hook: str | None) -> None:
    assert hooks.hook_of_program(program) == hook


def test_every_syscall_hook_maps_back_from_its_fentry_programs() -> None:
    syscall_hooks = [tp for tp in required_tracepoints() if tp.startswith("syscalls:")]
    assert syscall_hooks
    for tp in syscall_hooks:
        edge, name = re.fullmatch(r"syscalls:sys_(enter|exit)_(\w+)", tp).groups()  # type: ignore[union-attr]
        program = f"{'kfunc' if edge == 'enter' else 'kretfunc'}____x64_sys_{name}"
        assert hooks.hook_of_program(program) == tp
    assert hooks.hook_of_program("sched_process_exec") is None


def test_both_modes_compile_from_one_source() -> None:
    """Every syscall hook goes through SP_SYSCALL_ENTER/EXIT, so one flag switches them all,
    and no hook body reads a tracepoint field by name (fentry has no such struct)."""
    text = expand_source()
    assert not re.search(r"^TRACEPOINT_PROBE\(syscalls,", text, re.M)
    for body in re.findall(r"^SP_SYSCALL_(?:ENTER|EXIT)\(\w+\)\n\{\n(.*?)^\}", text, re.S | re.M):
        assert "args->" not in body
    flags = {mode: ProbeSession(syscall_hooks=mode).cflags() for mode in ("fentry", "tracepoint")}
    assert "-DSP_SYSCALL_FENTRY=1" in flags["fentry"]
    assert "-DSP_SYSCALL_FENTRY=0" in flags["tracepoint"]
