"""The events frame's helpers (``analysis/frames.py``) on the shapes Arrow hands over."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from startprof.analysis.frames import cells, index_kinds, ints, ints_at, kind_mask, string_lists
from startprof.analysis.inputs import _env_maps
from startprof.events import KINDS


def test_string_lists_share_each_distinct_string() -> None:
    """Sliced chunks, a null list, a null item (read as ""), an empty list; a string seen in
    two chunks is one object."""
    lists = pa.array([["a", "b"], None, ["c", None, "a"], [], ["x"]], pa.list_(pa.string()))
    chunked = pa.chunked_array([lists.slice(1, 3), lists.slice(0, 2), lists.slice(4, 1)])
    got = string_lists(pd.Series(pd.arrays.ArrowExtensionArray(chunked)))
    assert got == [None, ("c", "", "a"), (), ("a", "b"), None, ("x",)]
    assert got[1][2] is got[3][0]


def test_string_lists_of_python_objects() -> None:
    series = pd.Series([["a", None], None], dtype=object)
    assert string_lists(series) == [("a", ""), None]


def test_env_maps_split_at_the_first_equals_sign() -> None:
    envs = [["CNI_COMMAND=ADD", "CNI_ARGS=a=b;c=d", "NOEQ", "EMPTY="], None, [], ["=x"]]
    maps = _env_maps(envs)
    assert maps == [{"CNI_COMMAND": "ADD", "CNI_ARGS": "a=b;c=d", "EMPTY": ""}, {}, {}, {"": "x"}]


def test_string_lists_at_rows_read_those_lists_only() -> None:
    lists = pa.array([["a"], None, ["b", "c"], ["a", None], []], pa.list_(pa.string()))
    chunked = pa.chunked_array([lists.slice(0, 2), lists.slice(2, 3)])
    arrow = pd.Series(pd.arrays.ArrowExtensionArray(chunked))
    python = pd.Series(lists.to_pylist(), dtype=object)
    rows = np.array([1, 2, 3])
    for series in (arrow, python):
        assert string_lists(series, rows) == [None, ("b", "c"), ("a", "")]
        assert string_lists(series, np.array([], dtype="int64")) == []


def test_string_cells_share_each_distinct_string() -> None:
    """Sliced chunks, nulls, a string in two chunks (one object), a string[pyarrow] column."""
    values = pa.array(["a", None, "b", "a", None])
    chunked = pa.chunked_array([values.slice(2, 3), values.slice(0, 3)])
    got = cells(pd.Series(pd.arrays.ArrowExtensionArray(chunked)))
    assert got == ["b", "a", None, "a", None, "b"]
    assert got[1] is got[3]
    assert cells(pd.Series(["x", None, "x"], dtype="string[pyarrow]")) == ["x", None, "x"]
    assert cells(pd.Series(pd.arrays.ArrowExtensionArray(pa.chunked_array([], pa.string())))) == []


def test_env_maps_share_a_repeated_environment() -> None:
    maps = _env_maps([["CNI_COMMAND=ADD"], ["CNI_COMMAND=ADD"], ["CNI_COMMAND=DEL"]])
    assert maps[0] is maps[1] and maps[2] == {"CNI_COMMAND": "DEL"}


def test_every_kind_fits_its_byte() -> None:
    frame = pd.DataFrame(
        {"kind": pd.Series(["exec", None, "new-kind", "end"], dtype="string[pyarrow]")}
    )
    index_kinds(frame)
    assert len(KINDS) < 128
    assert kind_mask(frame, "exec").tolist() == [True, False, False, False]
    assert kind_mask(frame, "end", "exec").tolist() == [True, False, False, True]
    assert kind_mask(frame, "new-kind").tolist() == [False, False, True, False]  # not in KINDS


@pytest.mark.parametrize(
    ("series", "expected"),
    [
        (
            pd.Series(pa.chunked_array([[1, None], [3]], pa.int32()), dtype="int32[pyarrow]"),
            [1, None, 3],
        ),
        (pd.Series(pa.chunked_array([[1, 2, 3]], pa.int64()), dtype="int64[pyarrow]"), [1, 2, 3]),
        (pd.Series([1, None, 3], dtype="Int64"), [1, None, 3]),
        (pd.Series([1.0, float("nan"), 3.0]), [1, None, 3]),
    ],
)
def test_ints_are_the_values_and_where_they_are(
    series: pd.Series, expected: list[int | None]
) -> None:
    valid, values = ints(series)
    assert valid.tolist() == [v is not None for v in expected]
    assert values.dtype == np.int64
    assert values.tolist() == [0 if v is None else v for v in expected]


def test_ints_at_reads_only_the_rows_asked_for() -> None:
    arrow = pd.Series(pa.chunked_array([[5, None], [7, 8]], pa.int32()), dtype="int32[pyarrow]")
    for series in (arrow, pd.Series([5, None, 7, 8], dtype="Int64")):
        valid, values = ints_at(series, np.array([3, 1, 0]))
        assert valid.tolist() == [True, False, True]
        assert values.tolist() == [8, 0, 5]
        assert values.dtype == np.int64
