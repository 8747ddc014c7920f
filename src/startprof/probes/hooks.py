"""How the probes' syscall hooks attach: fentry/fexit on the syscall's kernel function, or the
``syscalls:sys_enter_*``/``sys_exit_*`` tracepoints.

``bpf/startprof.bpf.c``'s ``SP_SYSCALL_ENTER``/``SP_SYSCALL_EXIT`` compile to either
(``-DSP_SYSCALL_FENTRY``); the probe table (``startprof.probes.PROBES``) names each hook by its
tracepoint either way. Enabling any syscall tracepoint sends every syscall of every task on the
machine down the kernel's slow path (``syscall_trace_enter``), whichever syscall it is, and each
hit of a hooked one builds a tracepoint record (``perf_syscall_enter/exit``) before its program
runs; an fentry program costs only the callers of its own syscall, a trampoline call each
(docs/probes.md, "Syscall hooks").
"""

from __future__ import annotations

import functools
import os
import platform
from collections.abc import Callable

FENTRY_PREFIX = "__x64_sys_"
"""The x86_64 syscall wrappers (``long __x64_sys_setns(const struct pt_regs *)``)."""

TRAMPOLINE_SYMBOL = "bpf_trampoline_link_prog"
"""In kallsyms where the kernel can attach fentry/fexit programs (bcc's own test)."""

MODES = ("auto", "fentry", "tracepoint")
"""``auto``: fentry where the kernel can (:func:`fentry_usable`), else tracepoints."""

BTF = "/sys/kernel/btf/vmlinux"
KALLSYMS = "/proc/kallsyms"


def kernel_has_symbol(name: str, kallsyms: str = KALLSYMS) -> bool:
    """Whether ``name`` is a kernel symbol (a scan of ``/proc/kallsyms``: ~40 ms)."""
    needle = f" {name}\n".encode()
    try:
        with open(kallsyms, "rb") as f:
            for line in f:
                if line.endswith(needle) and line.split()[2:3] == [needle.strip()]:
                    return True
    except OSError:
        return False
    return False


def fentry_usable(
    machine: str | None = None,
    exists: Callable[[str], bool] = os.path.exists,
    has_symbol: Callable[[str], bool] = kernel_has_symbol,
    loads: Callable[[], bool] | None = None,
) -> bool:
    """Can the syscall hooks be fentry/fexit programs? Needs x86_64 (``__x64_sys_*`` and its
    register convention; bcc has trampolines on no other architecture), the kernel's BTF, BPF
    trampolines (Linux 5.5 with the JIT), and a kernel that lets them load: some refuse
    tracing programs whatever the privileges (this project's CI VM answers EPERM), so the
    last test is loading one (:func:`fentry_loads`)."""
    if (machine or platform.machine()) != "x86_64":
        return False
    if not (exists(BTF) and has_symbol(TRAMPOLINE_SYMBOL)):
        return False
    return (loads or fentry_loads)()


@functools.cache
def fentry_loads() -> bool:
    """Whether an empty fentry program on ``__x64_sys_close`` loads and attaches (~0.6 s of
    compiling, once per process). libbcc's own complaints go to /dev/null: a refusal here is
    an answer, not an error."""
    if os.geteuid() != 0:
        return False  # nothing loads; the session says so itself
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
        from bcc import BPF

        bpf = BPF(text=TRIAL_PROGRAM.encode())
    except Exception:  # bcc raises bare Exception for compile, load and attach
        return False
    finally:
        os.dup2(saved, 2)
        os.close(saved)
    bpf.cleanup()
    return True


TRIAL_PROGRAM = """#include <uapi/linux/ptrace.h>
KFUNC_PROBE(__x64_sys_close, struct pt_regs *regs) { return 0; }
"""


def use_fentry(mode: str) -> bool:
    """``mode`` (one of :data:`MODES`) decided for this kernel."""
    if mode not in MODES:
        raise ValueError(f"syscall hooks must be one of {', '.join(MODES)}, not {mode!r}")
    return fentry_usable() if mode == "auto" else mode == "fentry"


def hook_of_program(name: str) -> str | None:
    """The tracepoint name of the hook bcc loaded as program ``name``: a tracepoint program
    (``tracepoint__syscalls__sys_enter_setns``), or an fentry/fexit one (bcc 0.26:
    ``kfunc____x64_sys_setns``; later: ``kfunc__vmlinux____x64_sys_setns``)."""
    if name.startswith("tracepoint__"):
        category, _, event = name.removeprefix("tracepoint__").partition("__")
        return f"{category}:{event}"
    for prefix, edge in (("kfunc__", "enter"), ("kretfunc__", "exit")):
        if name.startswith(prefix) and FENTRY_PREFIX in name:
            return f"syscalls:sys_{edge}_{name.split(FENTRY_PREFIX, 1)[1]}"
    return None
