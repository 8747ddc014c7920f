#!/usr/bin/env python3
"""Run a command with empty BPF programs attached to tracepoints: the floor any probe pays.

Attaching a program to any ``syscalls:*`` tracepoint switches every task on the machine to the
kernel's slow syscall path (``SYSCALL_WORK_SYSCALL_TRACEPOINT``), whatever the program does;
``benchmarks/probe_overhead.py --arms 'floor=tp:syscalls:sys_enter_getppid'`` measures what
that alone costs a pod start, against the arm without anything loaded.

    sudo .venv/bin/python benchmarks/tp_floor.py syscalls:sys_enter_getppid -- CMD ...
"""

from __future__ import annotations

import subprocess
import sys


def main() -> int:
    argv = sys.argv[1:]
    if "--" not in argv:
        print(__doc__, file=sys.stderr)
        return 2
    split = argv.index("--")
    tracepoints, command = argv[:split], argv[split + 1 :]
    from bcc import BPF

    text = "\n".join(
        f"TRACEPOINT_PROBE({tp.split(':')[0]}, {tp.split(':')[1]}) {{ return 0; }}"
        for tp in tracepoints
    )
    bpf = BPF(text=text.encode())
    try:
        return subprocess.run(command, check=False).returncode
    finally:
        bpf.cleanup()


if __name__ == "__main__":
    sys.exit(main())
