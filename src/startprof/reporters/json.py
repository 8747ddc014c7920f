"""The ``analyze --json`` document (documented in docs/analyze.md)."""

from __future__ import annotations

import json
from collections.abc import Sequence

from startprof.analysis.model import Analysis, Pod

SCHEMA_VERSION = 1


def document(analysis: Analysis, pods: Sequence[Pod] | None = None) -> dict[str, object]:
    doc = analysis.to_dict()
    if pods is not None:
        doc["pods"] = [p.to_dict() for p in pods]
    return {"schema_version": SCHEMA_VERSION, **doc}


def dumps(analysis: Analysis, pods: Sequence[Pod] | None = None) -> str:
    return json.dumps(document(analysis, pods), indent=1)
