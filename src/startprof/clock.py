"""Monotonic kernel timestamps to wall clock.

The probes stamp events with ``bpf_ktime_get_ns()`` (CLOCK_MONOTONIC). The recorder samples the
offset to CLOCK_REALTIME once at recording start and stores it; everything that shows or exports
wall-clock times converts with that one offset, so all outputs of a recording agree.
"""

from __future__ import annotations

import time


def sample_offset(samples: int = 9) -> int:
    """``realtime - monotonic`` in ns, from the tightest of several back-to-back readings."""
    best: tuple[int, int] | None = None
    for _ in range(samples):
        m0 = time.monotonic_ns()
        wall = time.time_ns()
        m1 = time.monotonic_ns()
        width = m1 - m0
        offset = wall - (m0 + width // 2)
        if best is None or width < best[0]:
            best = (width, offset)
    assert best is not None
    return best[1]


def to_wall(monotonic_ns: int, offset_ns: int) -> int:
    return monotonic_ns + offset_ns
