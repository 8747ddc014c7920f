"""The CRI stream decoder, tested on real bytes between grpcio/h2 clients and a grpcio server.

The captures in tests/data/grpc were recorded by tests/tools/capture_grpc.py (regenerate with
``python tests/tools/capture_grpc.py --generate tests/data/grpc``).
"""

from __future__ import annotations

import importlib.util
import json
import os
import random
import sys
from collections import defaultdict
from collections.abc import Callable, Iterable
from pathlib import Path
from types import ModuleType
from typing import Any

import pandas as pd
import pytest
from hpack import Encoder
from hyperframe.frame import ContinuationFrame, DataFrame, Frame, HeadersFrame
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from startprof.analysis.cri_naming import name_calls
from startprof.cri.stream import PREFACE, CriStreamDecoder, TolerantHpack, decode_all

DATA_DIR = Path(__file__).parents[1] / "data" / "grpc"
TOOL = Path(__file__).parents[1] / "tools" / "capture_grpc.py"
RUNTIME = "/runtime.v1.RuntimeService/"

Event = dict[str, Any]


def _load_tool() -> ModuleType:
    spec = importlib.util.spec_from_file_location("capture_grpc", TOOL)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["capture_grpc"] = module
    spec.loader.exec_module(module)
    return module


capture_grpc = _load_tool()


def capture(name: str) -> list[Event]:
    events: list[Event] = capture_grpc.load_capture(DATA_DIR / f"{name}.jsonl")
    return events


def decode(events: Iterable[Event]) -> list[Event]:
    decoder = CriStreamDecoder()
    calls: list[Event] = []
    for event in events:
        calls.extend(decoder.feed(event))
    calls.extend(decoder.finish())
    assert decoder.stats["internal_errors"] == 0
    return calls


def by_stream(calls: list[Event]) -> dict[tuple[int, int], Event]:
    return {(c["conn_id"], c["stream_id"]): c for c in calls}


def attrs(call: Event) -> dict[str, Any]:
    return json.loads(call["attrs"]) if call["attrs"] else {}


def without_times(calls: list[Event]) -> list[Event]:
    drop = ("ts_ns", "start_ns", "end_ns", "pid", "tid")
    return sorted(
        ({k: v for k, v in c.items() if k not in drop} for c in calls),
        key=lambda c: (c["conn_id"], c["stream_id"]),
    )


def split_at(events: list[Event], index: int, at: int) -> list[Event]:
    """The same events with event ``index``'s data split into two events at byte ``at``."""
    event = events[index]
    first, second = dict(event), dict(event)
    first["data"], second["data"] = event["data"][:at], event["data"][at:]
    return [*events[:index], first, second, *events[index + 1 :]]


def rechunk(events: list[Event], sizes: Callable[[int], list[int]]) -> list[Event]:
    """Each data event cut into pieces of the given sizes, all with the original timestamp."""
    out: list[Event] = []
    for event in events:
        data = event.get("data")
        if event["kind"] != "cri_data" or not data:
            out.append(event)
            continue
        i = 0
        for size in sizes(len(data)):
            piece = dict(event)
            piece["data"] = data[i : i + size]
            out.append(piece)
            i += size
        assert i == len(data)
    return out


def reframe(events: list[Event], transform: Callable[[Frame], list[Frame]]) -> list[Event]:
    """The capture with every HTTP/2 frame replaced by ``transform(frame)`` (hyperframe parses
    and serialises, independently of the decoder). New frames keep the timestamp of the event
    that completed the original frame."""
    pending: dict[tuple[int, str], bytearray] = defaultdict(bytearray)
    out: list[Event] = []
    for event in events:
        if event["kind"] != "cri_data":
            out.append(event)
            continue
        key = (event["conn_id"], event["direction"])
        if key not in pending and event["data"].startswith(PREFACE):
            out.append({**event, "data": PREFACE})
            pending[key] += event["data"][len(PREFACE) :]
        else:
            pending[key] += event["data"]
        buf = pending[key]
        new = bytearray()
        while len(buf) >= 9:
            frame, length = Frame.parse_frame_header(memoryview(buf[:9]))
            if len(buf) < 9 + length:
                break
            frame.parse_body(memoryview(buf[9 : 9 + length]))
            del buf[: 9 + length]
            for replacement in transform(frame):
                new += replacement.serialize()
        if new:
            out.append({**event, "data": bytes(new)})
    return out


# --- what real captures decode to -----------------------------------------------------------------
LIFECYCLE_METHODS = [
    "Version",
    "RunPodSandbox",
    "ImageStatus",
    "CreateContainer",
    "StartContainer",
    "ContainerStatus",
    "StopContainer",
    "RemoveContainer",
    "StopPodSandbox",
    "RemovePodSandbox",
    "ContainerStatus",
]


def test_lifecycle_methods_streams_and_fields() -> None:
    calls = decode(capture("lifecycle"))
    assert [c["stream_id"] for c in calls] == list(range(1, 2 * len(calls), 2))
    names = [c["method"].rsplit("/", 1)[1] for c in calls]
    second_pod = LIFECYCLE_METHODS[1:-1]
    assert names == [*LIFECYCLE_METHODS, *second_pod, "PodSandboxStatus", "ListMetricDescriptors"]
    assert calls[2]["method"] == "/runtime.v1.ImageService/ImageStatus"

    run, image, create, start, status = calls[1:6]
    assert (run["pod"], run["namespace"], run["uid"]) == (
        "nginx-1",
        "web",
        "11111111-aaaa-4bbb-8ccc-000000000001",
    )
    sandbox_id = run["sandbox_id"]
    assert sandbox_id.startswith("sb11111111")
    assert attrs(run) == {"runtime_handler": "runc"}
    assert attrs(image)["image"] == "docker.io/library/app:1"
    assert attrs(image)["image_id"].startswith("sha256:")
    assert (create["sandbox_id"], create["container"], create["pod"]) == (
        sandbox_id,
        "app",
        "nginx-1",
    )
    container_id = create["container_id"]
    assert container_id.startswith("ct11111111app")
    assert start["container_id"] == container_id
    assert (status["container_id"], status["container"]) == (container_id, "app")
    stop_sandbox, remove_sandbox = calls[8:10]
    assert stop_sandbox["sandbox_id"] == remove_sandbox["sandbox_id"] == sandbox_id
    assert attrs(calls[0]) == {"runtime_name": "fake", "runtime_version": "1.0"}
    assert all(c["kind"] == "cri_call" and c["conn_id"] == 1 for c in calls)
    pod_status = calls[-2]
    assert (pod_status["pod"], pod_status["uid"]) == (
        "nginx-2",
        "11111111-aaaa-4bbb-8ccc-000000000002",
    )
    assert attrs(pod_status)["pod_ip"] == "10.88.0.7"


def test_error_reply_status_and_message() -> None:
    calls = decode(capture("lifecycle"))
    statuses = [c["grpc_status"] for c in calls]
    assert statuses.count("NOT_FOUND") == 1
    assert statuses.count("UNIMPLEMENTED") == 1
    assert set(statuses) == {"OK", "NOT_FOUND", "UNIMPLEMENTED"}
    missing = calls[10]
    assert missing["grpc_status"] == "NOT_FOUND"
    assert missing["container_id"] == "deadbeef"
    assert attrs(missing) == {"grpc_message": 'container "deadbeef" not found'}


def test_unknown_method_keeps_timing_without_fields() -> None:
    unknown = decode(capture("lifecycle"))[-1]
    assert unknown["method"] == capture_grpc.UNKNOWN_METHOD
    assert unknown["grpc_status"] == "UNIMPLEMENTED"
    assert unknown["start_ns"] < unknown["end_ns"]
    for column in ("pod", "namespace", "uid", "sandbox_id", "container", "container_id"):
        assert column not in unknown


@pytest.mark.parametrize("name", ["lifecycle", "concurrent", "large", "bigframes", "deadline"])
def test_timing_comes_from_the_frames(name: str) -> None:
    events = capture(name)
    ts_in = {e["ts_ns"] for e in events if e["kind"] == "cri_data" and e["direction"] == "in"}
    ts_out = {e["ts_ns"] for e in events if e["kind"] == "cri_data" and e["direction"] == "out"}
    first, last = events[0]["ts_ns"], events[-1]["ts_ns"]
    calls = decode(events)
    assert calls
    for call in calls:
        assert first <= call["start_ns"] <= call["end_ns"] <= last
        assert call["ts_ns"] == call["start_ns"]
        assert call["start_ns"] in ts_in
        reset_by_client = attrs(call).get("reset_by") == "client"
        assert call["end_ns"] in (ts_in if reset_by_client else ts_out)
        assert call["grpc_status"] is not None


def test_interleaved_streams_on_two_connections() -> None:
    calls = by_stream(decode(capture("concurrent")))
    assert calls[1, 1]["method"] == calls[2, 1]["method"] == RUNTIME + "Version"
    bursts = [calls[1, sid] for sid in (3, 5, 7, 9, 11)]
    assert sorted(c["pod"] for c in bursts) == [f"burst-{i}" for i in range(5)]
    for call in bursts:
        assert call["sandbox_id"].startswith("sb22222222")
        assert call["uid"].replace("-", "") in call["sandbox_id"]  # each reply with its request
    # the five requests were in flight together: every one started before the first ended
    assert max(c["start_ns"] for c in bursts) < min(c["end_ns"] for c in bursts)
    pull = calls[2, 3]
    assert pull["method"] == "/runtime.v1.ImageService/PullImage"
    assert attrs(pull)["image"] == "registry.local/busybox:1.36"


def _frame_types(events: list[Event], direction: str) -> list[tuple[str, int]]:
    kinds: list[tuple[str, int]] = []

    def note(frame: Frame) -> list[Frame]:
        kinds.append((type(frame).__name__, len(frame.serialize()) - 9))
        return [frame]

    reframe([e for e in events if e.get("direction") in (None, direction)], note)
    return kinds


def test_continuation_and_message_over_several_data_frames() -> None:
    events = capture("large")
    kinds = _frame_types([e for e in events if e.get("conn_id") == 1], "in")
    assert ("ContinuationFrame", 16_384) not in kinds  # sanity of the helper: payload sizes
    assert any(kind == "ContinuationFrame" for kind, _ in kinds)
    assert sum(kind == "DataFrame" for kind, _ in kinds) >= 2
    first, gzipped = decode(events)
    assert (first["pod"], first["namespace"]) == ("big-pod", "kube-system")
    assert first["sandbox_id"].startswith("sb33333333")
    assert first["grpc_status"] == "OK"
    assert (gzipped["pod"], gzipped["conn_id"]) == ("big-pod-gzip", 2)


def test_gzip_compressed_message() -> None:
    events = [e for e in capture("large") if e.get("conn_id") == 2]
    request_data = b"".join(
        e["data"] for e in events if e["kind"] == "cri_data" and e["direction"] == "in"
    )
    assert b"big-pod-gzip" not in request_data  # really compressed on the wire
    (call,) = decode(events)
    assert call["pod"] == "big-pod-gzip"
    assert call["uid"] == "33333333-0000-4000-8000-000000000002"


def test_frames_larger_than_16k_after_settings() -> None:
    events = capture("bigframes")
    assert max(size for kind, size in _frame_types(events, "in") if kind == "DataFrame") > 16_384
    (call,) = decode(events)
    assert call["pod"] == "big-frame"


def test_deadline_and_client_cancel() -> None:
    calls = decode(capture("deadline"))
    deadline, cancelled = calls[2], calls[3]
    # at the deadline the server sends DEADLINE_EXCEEDED and the client resets: whichever first
    if deadline["grpc_status"] == "CANCELLED":
        assert attrs(deadline)["reset_by"] == "client"
    else:
        assert deadline["grpc_status"] == "DEADLINE_EXCEEDED"
    assert 150e6 < deadline["end_ns"] - deadline["start_ns"] < 1e9
    assert cancelled["grpc_status"] == "CANCELLED"
    assert attrs(cancelled) == {"rst_stream": "CANCEL", "reset_by": "client"}
    assert cancelled["container_id"] == calls[1]["container_id"]


def test_other_event_kinds_are_ignored() -> None:
    decoder = CriStreamDecoder()
    assert decoder.feed({"kind": "exec", "pid": 1, "conn_id": 3}) == []
    assert decoder.feed({"kind": "cri_data", "conn_id": None, "data": b"x"}) == []
    assert decoder.finish() == []


# --- chunking never changes the result ------------------------------------------------------------
@pytest.mark.parametrize("name", ["deadline", "concurrent"])
def test_every_split_position_gives_the_same_calls(name: str) -> None:
    events = capture(name)
    expected = decode(events)
    for index, event in enumerate(events):
        for at in range(1, len(event.get("data") or b"")):
            assert decode(split_at(events, index, at)) == expected, (index, at)


@pytest.mark.parametrize("name", ["lifecycle", "concurrent", "large", "bigframes", "deadline"])
def test_one_byte_chunks_give_the_same_calls(name: str) -> None:
    events = capture(name)
    assert decode(rechunk(events, lambda n: [1] * n)) == decode(events) == decode_all(events)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), most=st.integers(1, 400))
def test_random_chunkings_give_the_same_calls(seed: int, most: int) -> None:
    rng = random.Random(seed)

    def sizes(n: int) -> list[int]:
        out = []
        while n:
            out.append(min(n, rng.randint(1, most)))
            n -= out[-1]
        return out

    events = capture("lifecycle")
    assert decode(rechunk(events, sizes)) == decode(events)


# --- frames real peers rarely send: padding, priority, small CONTINUATION -------------------------
def _pad(frame: Frame) -> list[Frame]:
    if isinstance(frame, DataFrame | HeadersFrame):
        frame.flags.add("PADDED")
        frame.pad_length = 13
    if isinstance(frame, HeadersFrame):
        frame.flags.add("PRIORITY")
        frame.depends_on, frame.stream_weight, frame.exclusive = 0, 15, False
    return [frame]


def _split_headers(frame: Frame) -> list[Frame]:
    if not isinstance(frame, HeadersFrame):
        return [frame]
    block = frame.data
    frame.data = block[:3]
    end_headers = "END_HEADERS" in frame.flags
    frame.flags.discard("END_HEADERS")
    frames: list[Frame] = [frame]
    for i in range(3, len(block), 5):
        frames.append(ContinuationFrame(frame.stream_id, data=block[i : i + 5]))
    if len(frames) == 1:
        frames.append(ContinuationFrame(frame.stream_id, data=b""))
    if end_headers:
        frames[-1].flags.add("END_HEADERS")
    return frames


@pytest.mark.parametrize("transform", [_pad, _split_headers], ids=["padded", "continuation"])
@pytest.mark.parametrize("name", ["lifecycle", "concurrent", "large", "deadline"])
def test_reframed_capture_gives_the_same_calls(
    name: str, transform: Callable[[Frame], list[Frame]]
) -> None:
    events = capture(name)
    changed = reframe(events, transform)
    assert changed != events
    assert without_times(decode(changed)) == without_times(decode(events))


# --- connections that began before the recording -------------------------------------------------
def _after(events: list[Event], predicate: Callable[[Event], bool]) -> list[Event]:
    """The data events from the first one matching ``predicate`` on, without cri_accept."""
    start = next(i for i, e in enumerate(events) if predicate(e))
    return [e for e in events[start:] if e["kind"] == "cri_data"]


def assert_never_wrong(partial: list[Event], truth: list[Event]) -> None:
    """Whatever the decoder says about a call from partial bytes is what it says from all bytes."""
    truth_by_stream = by_stream(truth)
    for call in partial:
        real = truth_by_stream[call["conn_id"], call["stream_id"]]
        for key, value in call.items():
            if key in ("attrs", "ts_ns", "start_ns", "end_ns", "pid", "tid") or value is None:
                continue
            assert value == real[key], (key, call, real)
        if call["end_ns"] is not None and "rst_stream" not in attrs(real):
            assert call["end_ns"] == real["end_ns"]
        extra = attrs(call)
        for key, value in attrs(real).items():
            assert extra.get(key, value) == value


def test_preexisting_connection_mid_session() -> None:
    """The recording starts just before the second pod: the client's dynamic table holds the
    paths and the server's the trailers of the first pod's calls."""
    events = capture("lifecycle")
    truth = decode(events)
    second_pod = truth[11]
    assert second_pod["pod"] == "nginx-2"
    partial = decode(_after(events, lambda e: e["ts_ns"] >= second_pod["start_ns"]))
    assert_never_wrong(partial, truth)
    assert [c["stream_id"] for c in partial] == [c["stream_id"] for c in truth[11:]]
    reused = [c for c in partial if c["method"] is None]
    assert reused, "the paths of the first pod's methods come from the dynamic table"
    for call in partial:
        assert call["start_ns"] <= call["end_ns"]
        if call["method"] is None or call["grpc_status"] is None:
            assert attrs(call)["hpack"] == "unknown"
    # methods the first pod never used are sent as literals: known, with their fields
    pod_status = next(c for c in partial if c["stream_id"] == truth[-2]["stream_id"])
    assert pod_status["method"] == RUNTIME + "PodSandboxStatus"
    assert pod_status["sandbox_id"] == second_pod["sandbox_id"]
    assert partial[-1]["method"] == capture_grpc.UNKNOWN_METHOD


@pytest.mark.parametrize("name", ["lifecycle", "concurrent", "deadline", "large"])
def test_preexisting_connection_starting_mid_frame(name: str) -> None:
    """Drop the first n bytes of each direction (so the preface and first HEADERS too): the
    decoder finds the frames again and never reports anything the full stream contradicts."""
    events = capture(name)
    truth = decode(events)
    for cut in (1, 5, 24, 33, 50, 97, 140, 300, 511):
        taken: dict[tuple[int, str], int] = defaultdict(int)
        partial_events = []
        for event in events:
            if event["kind"] != "cri_data":
                continue
            key = (event["conn_id"], event["direction"])
            skip = max(0, min(len(event["data"]), cut - taken[key]))
            taken[key] += skip
            if skip < len(event["data"]):
                partial_events.append({**event, "data": event["data"][skip:]})
        partial = decode(partial_events)
        assert_never_wrong(partial, truth)
        if name == "lifecycle":
            assert len(partial) >= len(truth) - 2, cut


def test_preexisting_flag_with_the_preface_is_a_fresh_connection() -> None:
    events = [
        {**e, "attrs": json.dumps({"preexisting": True})}
        for e in capture("deadline")
        if e["kind"] == "cri_data"
    ]
    assert decode(events) == decode(capture("deadline"))


# --- lost bytes -----------------------------------------------------------------------------------
def _drop_event(events: list[Event], index: int, mark: dict[str, Any] | None) -> list[Event]:
    dropped = events[index]
    out = events[:index]
    rest = events[index + 1 :]
    for i, event in enumerate(rest):
        if event["kind"] == "cri_data" and (event["conn_id"], event["direction"]) == (
            dropped["conn_id"],
            dropped["direction"],
        ):
            if mark is not None:
                event = {
                    **event,
                    "attrs": json.dumps(
                        {k: (len(dropped["data"]) if v is None else v) for k, v in mark.items()}
                    ),
                }
            return out + rest[:i] + [event] + rest[i + 1 :]
    return out + rest


@pytest.mark.parametrize("mark", [{"gap": True}, {"lost": None}], ids=["gap", "lost-count"])
def test_lost_chunk_never_gives_wrong_calls(mark: dict[str, Any]) -> None:
    events = capture("lifecycle")
    truth = decode(events)
    data_indexes = [i for i, e in enumerate(events) if e["kind"] == "cri_data"]
    decoded_after_loss = 0
    for index in data_indexes[3:]:
        partial = decode(_drop_event(events, index, mark))
        assert_never_wrong(partial, truth)
        decoded_after_loss += sum(
            1 for c in partial if c["start_ns"] > events[index]["ts_ns"] and c["method"]
        )
    assert decoded_after_loss > 0


def test_unflagged_loss_does_not_raise() -> None:
    """Bytes lost without a flag cannot be noticed (the next chunk may start on a frame
    boundary with a now-shifted HPACK table): the decoder survives, correctness is not promised."""
    events = capture("lifecycle")
    for index in range(2, len(events)):
        decode(_drop_event(events, index, None))


def test_known_hole_in_a_message_keeps_the_framing() -> None:
    """``lost`` with a count inside one DATA frame: later frames are still found in place."""
    events = capture("large")
    conn1_in = [
        i for i, e in enumerate(events) if e.get("conn_id") == 1 and e.get("direction") == "in"
    ]
    big = max(conn1_in, key=lambda i: len(events[i]["data"]))
    data = events[big]["data"]
    cut = data.find(b"example.com/key-150")  # inside the request message, in a DATA frame
    assert cut > 0
    head, tail = data[:cut], data[cut + 100 :]
    changed = [
        *events[:big],
        {**events[big], "data": head},
        {**events[big], "data": tail, "attrs": json.dumps({"lost": 100})},
        *events[big + 1 :],
    ]
    decoder = CriStreamDecoder()
    calls = [c for e in changed for c in decoder.feed(e)] + decoder.finish()
    assert decoder.stats["resyncs"] == 0
    first = next(c for c in calls if c["conn_id"] == 1)
    assert first["method"] == RUNTIME + "RunPodSandbox"
    assert first["grpc_status"] == "OK"
    assert first["sandbox_id"].startswith("sb33333333")  # from the reply
    assert "pod" not in first  # the request message lost bytes
    assert attrs(first)["in_body"] == "bytes lost"


def test_unfinished_calls_come_out_of_finish() -> None:
    events = capture("deadline")
    truth = decode(events)
    last_request = max(
        i
        for i, e in enumerate(events)
        if e.get("direction") == "in" and e["ts_ns"] <= truth[1]["start_ns"]
    )
    decoder = CriStreamDecoder()
    done = [c for e in events[: last_request + 1] for c in decoder.feed(e)]
    assert [c["stream_id"] for c in done] == [1]
    (open_call,) = decoder.finish()
    assert open_call["stream_id"] == 3
    assert open_call["method"] == RUNTIME + "CreateContainer"
    assert open_call["end_ns"] is None and open_call["grpc_status"] is None
    assert attrs(open_call)["incomplete"] is True
    assert open_call["sandbox_id"] == truth[0]["sandbox_id"]


# --- robustness -----------------------------------------------------------------------------------
def _fuzz_events(draw: st.DrawFn) -> list[Event]:
    events: list[Event] = []
    for _ in range(draw(st.integers(1, 12))):
        conn = draw(st.integers(1, 3))
        if draw(st.integers(0, 9)) == 0:
            events.append({"kind": "cri_accept", "conn_id": conn, "ts_ns": len(events)})
            continue
        data = draw(st.binary(max_size=300))
        if draw(st.booleans()):
            data = PREFACE + data
        raw_attrs = draw(
            st.sampled_from(
                [None, '{"gap": true}', '{"lost": 7}', '{"truncated": true}', "{bad", "[1]"]
            )
        )
        direction = draw(st.sampled_from(["in", "out"]))
        events.append(
            {
                "kind": "cri_data",
                "conn_id": conn,
                "ts_ns": len(events),
                "direction": direction,
                "data": data,
                "attrs": raw_attrs,
            }
        )
    return events


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.composite(_fuzz_events)())
def test_random_bytes_never_raise(events: list[Event]) -> None:
    for call in decode(events):
        assert call["kind"] == "cri_call"
        json.loads(call["attrs"] or "{}")


@settings(max_examples=150, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    flips=st.integers(1, 40),
    name=st.sampled_from(["lifecycle", "concurrent", "large"]),
)
def test_damaged_real_bytes_never_raise(seed: int, flips: int, name: str) -> None:
    rng = random.Random(seed)
    events = [dict(e) for e in capture(name)]
    data_events = [e for e in events if e["kind"] == "cri_data"]
    for _ in range(flips):
        event = rng.choice(data_events)
        data = bytearray(event["data"])
        i = rng.randrange(len(data))
        data[i] = rng.randrange(256)
        event["data"] = bytes(data)
    decode(events)


# --- HPACK with an unknown beginning --------------------------------------------------------------
header_lists = st.lists(
    st.lists(
        st.tuples(
            st.sampled_from(
                [":path", ":status", "grpc-status", "content-type", "x-a", "x-b", "user-agent"]
            ),
            st.text("abc/0123", max_size=30),
        ),
        max_size=8,
    ),
    min_size=1,
    max_size=12,
)


@settings(max_examples=200, deadline=None)
@given(blocks=header_lists, table_size=st.sampled_from([0, 64, 256, 4096]), skip=st.integers(0, 12))
def test_tolerant_hpack_is_right_or_silent(
    blocks: list[list[tuple[str, str]]], table_size: int, skip: int
) -> None:
    encoder = Encoder()
    encoder.header_table_size = table_size
    encoded = [encoder.encode(block) for block in blocks]
    full = TolerantHpack(4096)
    assert [full.decode(e)[0] for e in encoded] == [[(n, v, None) for n, v in b] for b in blocks]
    late = TolerantHpack(4096)
    meaning: dict[str, tuple[str, str]] = {}
    for block, data in list(zip(blocks, encoded, strict=True))[skip:]:
        headers, resolved = late.decode(data)
        assert len(headers) == len(block)
        for (name, value, symbol), (real_name, real_value) in zip(headers, block, strict=True):
            assert name in (None, real_name)
            assert value in (None, real_value)
            if name is None and value is None:
                # an entry from before the start: its symbol always means the same entry
                assert symbol is not None
                assert meaning.setdefault(symbol, (real_name, real_value)) == (
                    real_name,
                    real_value,
                )
        assert resolved == all(n is not None and v is not None for n, v, _ in headers)


# --- the capture tool itself ----------------------------------------------------------------------
def test_capture_proxy_records_a_live_grpcio_session(tmp_path: Path) -> None:
    out = tmp_path / "live.jsonl"
    with capture_grpc._capturing(out) as sock:
        client = capture_grpc.CriClient(sock)
        ids = capture_grpc.pod_lifecycle(client, "live", "55555555-0000-4000-8000-000000000001")
        client.close()
    events = capture_grpc.load_capture(out)
    assert events[0]["kind"] == "cri_accept"
    assert os.path.getsize(out) > 0
    calls = decode(events)
    assert [c["method"].rsplit("/", 1)[1] for c in calls] == LIFECYCLE_METHODS[1:-1]
    assert calls[0]["pod"] == "live"
    assert calls[0]["sandbox_id"] == ids["sandbox_id"]
    assert calls[2]["container_id"] == ids["container_id"]


@pytest.mark.parametrize("name", ["lifecycle", "concurrent", "deadline", "large"])
def test_calls_of_an_aged_connection_are_named_right_or_not_at_all(name: str) -> None:
    """Start the recording before each call in turn: every call the naming pass names (from
    the messages' shapes and ids alone: a capture has no kernel events) has its real method,
    and its fields are the real ones."""
    events = capture(name)
    truth = by_stream(decode(events))
    named = total = 0
    for first in sorted({e["ts_ns"] for e in events if e["kind"] == "cri_data"})[1::3]:
        partial = decode(_after(events, lambda e, t=first: e["ts_ns"] >= t))
        if not partial:
            continue
        frame = pd.DataFrame(partial)
        for column in ("sandbox_id", "container_id", "pod"):
            if column not in frame:
                frame[column] = None
        calls, _ = name_calls(frame)
        for call in calls.to_dict("records"):
            real = truth[call["conn_id"], call["stream_id"]]
            total += 1
            if not isinstance(call["method"], str):
                continue
            named += 1
            assert call["method"] == real["method"], (first, call, real)
            for key in ("pod", "sandbox_id", "container_id"):
                if isinstance(call.get(key), str):
                    assert call[key] == real[key], (key, call, real)
    assert total and named / total > 0.5, (named, total)
