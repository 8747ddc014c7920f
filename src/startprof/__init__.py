"""startprof: an eBPF profiler for Kubernetes pod startup."""

from __future__ import annotations

__version__ = "0.1.0"
