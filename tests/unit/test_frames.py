"""The events frame's helpers (``analysis/frames.py``) on the shapes Arrow hands over."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa

from startprof.analysis.frames import string_lists
from startprof.analysis.inputs import _env_maps


def test_string_lists_share_each_distinct_string() -> None:
    """Sliced chunks, a null list, a null item (read as ""), an empty list; a string seen in
    two chunks is one object."""
    lists = pa.array([["a", "b"], None, ["c", None, "a"], [], ["x"]], pa.list_(pa.string()))
    chunked = pa.chunked_array([lists.slice(1, 3), lists.slice(0, 2), lists.slice(4, 1)])
    got = string_lists(pd.Series(pd.arrays.ArrowExtensionArray(chunked)))
    assert got == [None, ["c", "", "a"], [], ["a", "b"], None, ["x"]]
    assert got[1][2] is got[3][0]


def test_string_lists_of_python_objects() -> None:
    series = pd.Series([["a", None], None], dtype=object)
    assert string_lists(series) == [["a", ""], None]


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
        assert string_lists(series, rows) == [None, ["b", "c"], ["a", ""]]
        assert string_lists(series, np.array([], dtype="int64")) == []
