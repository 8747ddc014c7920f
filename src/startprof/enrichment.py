"""User-space enrichment of kernel events with facts that live in files.

When ``runc``/``crun create --bundle DIR ... ID`` is exec'ed, the OCI bundle's ``config.json``
names the pod and container that the runtime is about to create. The file exists only while the
container lives, so it is read at once, when the exec event arrives, and stored as an
``annotation`` event.

Only an allow-list of CRI annotations is copied: a pod's own annotations can hold anything.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path

from startprof.events import Event

RUNTIMES = frozenset({"runc", "crun"})

# containerd CRI annotation -> event column (or attrs key when prefixed with "attrs.")
ANNOTATIONS: dict[str, str] = {
    "io.kubernetes.cri.sandbox-id": "sandbox_id",
    "io.kubernetes.cri.sandbox-name": "pod",
    "io.kubernetes.cri.sandbox-namespace": "namespace",
    "io.kubernetes.cri.sandbox-uid": "uid",
    "io.kubernetes.cri.container-name": "container",
    "io.kubernetes.cri.container-type": "attrs.container_type",
    "io.kubernetes.cri.image-name": "attrs.image",
}


def runtime_create_bundle(argv: Sequence[str]) -> tuple[str, str] | None:
    """``(bundle dir, container id)`` when argv is an OCI runtime's ``create``, else None."""
    if not argv or os.path.basename(argv[0]) not in RUNTIMES or "create" not in argv:
        return None
    args = list(argv[argv.index("create") + 1 :])
    bundle = None
    for i, arg in enumerate(args):
        if arg in ("--bundle", "-b") and i + 1 < len(args):
            bundle = args[i + 1]
        elif arg.startswith("--bundle="):
            bundle = arg.split("=", 1)[1]
    if bundle is None or not args or args[-1].startswith("-"):
        return None
    return bundle, args[-1]


def read_bundle_config(bundle: str) -> bytes | None:
    try:
        return (Path(bundle) / "config.json").read_bytes()
    except OSError:
        return None


def annotation_event(
    exec_event: Event, reader: Callable[[str], bytes | None] = read_bundle_config
) -> Event | None:
    """The ``annotation`` event for an exec of ``runc|crun create``, or None."""
    found = runtime_create_bundle(exec_event.get("argv") or ())
    if found is None:
        return None
    bundle, container_id = found
    raw = reader(bundle)
    attrs: dict[str, object] = {"bundle": bundle}
    event: Event = {
        "kind": "annotation",
        "ts_ns": exec_event.get("ts_ns"),
        "pid": exec_event.get("pid"),
        "tid": exec_event.get("tid"),
        "comm": exec_event.get("comm"),
        "container_id": container_id,
    }
    annotations: dict[str, object] = {}
    if raw is None:
        attrs["error"] = "config.json not readable"
    else:
        try:
            doc = json.loads(raw)
        except ValueError:
            doc = None
            attrs["error"] = "config.json is not valid JSON"
        if isinstance(doc, dict) and isinstance(doc.get("annotations"), dict):
            annotations = doc["annotations"]
        elif "error" not in attrs:
            attrs["error"] = "config.json has no annotations"
    for key, column in ANNOTATIONS.items():
        value = annotations.get(key)
        if not isinstance(value, str):
            continue
        if column.startswith("attrs."):
            attrs[column[6:]] = value
        else:
            event[column] = value
    event["attrs"] = json.dumps(attrs, sort_keys=True)
    return event
