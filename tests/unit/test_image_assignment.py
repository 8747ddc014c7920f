"""Which pod, and container, each ImageStatus and PullImage call was for.

The calls carry no pod (an ImageStatus names only its image), so they go by time: the kubelet
asks right after the pod's previous step returned. Pod workers are not served in the order
their steps returned, and the assignment must not leave a pod without its call when another
pod's call crossed it."""

from __future__ import annotations

from typing import Any

from startprof.analysis.inputs import (
    CREATE_CONTAINER,
    IMAGE_STATUS,
    PULL_IMAGE,
    RUN_POD_SANDBOX,
    Call,
    PodInputs,
)
from startprof.analysis.phases import assign_image_calls

MS = 1_000_000
IMAGE = "localhost:5000/app:1"


def _call(method: str, start_ms: float, end_ms: float, **fields: Any) -> Call:
    attrs = {"image": fields.pop("image")} if "image" in fields else {}
    base: dict[str, Any] = dict.fromkeys(
        ("status", "sandbox_id", "container", "container_id", "pod", "namespace", "uid")
    )
    base.update(fields)
    return Call(method, int(start_ms * MS), int(end_ms * MS), attrs=attrs, **base)


def _pod(sid: str, ready_ms: float, create_ms: float, **rps: Any) -> PodInputs:
    calls = [
        _call(RUN_POD_SANDBOX, ready_ms - 50, ready_ms, sandbox_id=sid, **rps),
        _call(CREATE_CONTAINER, create_ms, create_ms + 5, container="app", image=IMAGE),
    ]
    return PodInputs(sid, calls=calls)


def _owners(pods: dict[str, PodInputs], calls: list[Call]) -> dict[str, list[float]]:
    found = assign_image_calls(pods, calls)
    return {sid: [c.start_ns / MS for c, _ in found.get(sid, [])] for sid in pods}


def test_each_pod_takes_the_first_call_after_its_sandbox() -> None:
    pods = {"a": _pod("a", 10, 30), "b": _pod("b", 12, 40)}
    calls = [_call(IMAGE_STATUS, 13, 14, image=IMAGE), _call(IMAGE_STATUS, 15, 16, image=IMAGE)]
    assert _owners(pods, calls) == {"a": [13], "b": [15]}


def test_a_pod_served_late_does_not_leave_the_other_without_its_call() -> None:
    # b's sandbox returned later than a's, but b's worker asked first (15) and created at 20;
    # a asked at 25: the first call in a's window is b's, whose window holds no other
    pods = {"a": _pod("a", 10, 30), "b": _pod("b", 12, 20)}
    calls = [_call(IMAGE_STATUS, 15, 16, image=IMAGE), _call(IMAGE_STATUS, 25, 26, image=IMAGE)]
    assert _owners(pods, calls) == {"a": [25], "b": [15]}


def test_crossings_chain_through_several_pods() -> None:
    # c asked first, then b, then a, each window nested in the previous one
    pods = {"a": _pod("a", 10, 40), "b": _pod("b", 11, 30), "c": _pod("c", 12, 20)}
    calls = [_call(IMAGE_STATUS, t, t + 1, image=IMAGE) for t in (15, 25, 35)]
    assert _owners(pods, calls) == {"a": [35], "b": [25], "c": [15]}


def test_a_call_of_another_image_is_never_taken() -> None:
    pods = {"a": _pod("a", 10, 30)}
    calls = [_call(IMAGE_STATUS, 15, 16, image="other:1")]
    assert _owners(pods, calls) == {"a": []}


def test_a_pull_that_names_its_pod_brings_its_image_status() -> None:
    pods = {"a": _pod("a", 10, 300, uid="u-a"), "b": _pod("b", 12, 40)}
    calls = [
        _call(IMAGE_STATUS, 13, 14, image=IMAGE),
        _call(IMAGE_STATUS, 15, 16, image=IMAGE),
        _call(PULL_IMAGE, 17, 250, image=IMAGE, uid="u-a"),
    ]
    assert _owners(pods, calls) == {"a": [15, 17], "b": [13]}
