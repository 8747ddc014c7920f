"""Helpers over the events frame's columns, shared by the analysis' modules.

The frame is Arrow-backed (``recording.read_recording``): 30 of the recording's 40 columns
(``pipeline.UNREAD`` are left out), list columns (argv, env) among them, in chunks of 65,536
events. pandas' own paths copy those columns slowly (a row selection is a take, a cell read
boxes through pandas), so the analysis reads them here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from startprof.events import KINDS


def missing(value: Any) -> bool:
    """None, pandas' NA or a float NaN: what an empty cell of any column type reads as."""
    return value is None or value is pd.NA or (isinstance(value, float) and value != value)


def cells(series: pd.Series) -> list[Any]:
    """A column as Python objects (lists for list columns), None for every kind of null (NA,
    NaN, None). Arrow-backed columns go through Arrow, which is fast for them and turns NaN
    into null; an object column is Python objects already (through Arrow it would be
    converted there and back: 2 s for the argv of 460,000 processes)."""
    if series.dtype == object:
        return _python_cells(series)
    values = series.array
    if isinstance(values, pd.arrays.ArrowExtensionArray):
        column = pa.chunked_array(pa.array(values))
        if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
            return _shared_strings(column)
    try:
        return pa.array(series, from_pandas=True).to_pylist()  # type: ignore[no-any-return]
    except (pa.ArrowException, TypeError, ValueError):
        return _python_cells(series)


def _shared_strings(column: pa.ChunkedArray) -> list[str | None]:
    """A string column as Python ``str``s, each distinct one made once and shared by every
    cell that holds it: ids, paths and names repeat (the process table's 460,000 file names
    at 10,000 pods are a few dozen), and a ``str`` per cell was 30 MB per column there, for
    no less time than Arrow's dictionary encoding takes."""
    known: dict[str, str] = {}
    out: list[str | None] = []
    for chunk in column.chunks:
        names, codes = _shared_codes(chunk, known, None)
        out += map(names.__getitem__, codes.tolist())
    return out


def _shared_codes(
    strings: pa.Array, known: dict[str, str], null: str | None
) -> tuple[list[Any], np.ndarray]:
    """Arrow's dictionary encoding of ``strings``: each distinct one as one ``str`` (``known``
    shares them across chunks), ``null`` last, and each item's index among them."""
    encoded = pc.dictionary_encode(strings)
    names: list[Any] = [known.setdefault(s, s) for s in encoded.dictionary.to_pylist()]
    names.append(null)
    codes = encoded.indices.fill_null(len(names) - 1).to_numpy(zero_copy_only=False)
    return names, codes


def _python_cells(series: pd.Series) -> list[Any]:
    """The cells as pandas holds them, every kind of null made None. The nulls are found in
    one vectorised pass (most cells are none): ``missing`` per cell was a quarter of building
    the Proc objects."""
    values = series.tolist()
    for i in np.flatnonzero(pd.isna(series.to_numpy())).tolist():
        values[i] = None
    return values


def ints(series: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """An integer column as (which cells hold a value, the values as int64 with 0 for the
    empty ones). An Arrow column goes through Arrow: pandas' ``notna`` and
    ``to_numpy(na_value=...)`` of the 6.9 M pids of 10,000 pods took 0.65 s against 0.2 s."""
    values = series.array
    if isinstance(values, pd.arrays.ArrowExtensionArray):
        column = pa.chunked_array(pa.array(values))
        if pa.types.is_integer(column.type):
            return _valid_ints(column)
    return series.notna().to_numpy(dtype=bool), series.to_numpy(dtype="int64", na_value=0)


def ints_at(series: pd.Series, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """:func:`ints` of the cells at the positions ``rows`` only (Arrow's take, not a copy of
    the whole column)."""
    values = series.array
    if isinstance(values, pd.arrays.ArrowExtensionArray):
        column = pa.chunked_array(pa.array(values))
        if pa.types.is_integer(column.type):
            return _valid_ints(column.take(pa.array(rows, type=pa.int64())))
    return ints(series.iloc[rows])


def _valid_ints(column: pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    if not column.null_count:
        return np.ones(len(column), dtype=bool), np.asarray(column).astype("int64", copy=False)
    valid = np.asarray(column.is_valid())
    return valid, np.asarray(column.fill_null(0)).astype("int64", copy=False)


def string_lists(series: pd.Series, rows: np.ndarray | None = None) -> list[Any]:
    """A list<string> column (argv, env) as Python tuples of ``str``, None for a missing list;
    only the lists at the positions ``rows`` (ascending) when given. A null item in a list (a
    damaged recording) reads as ``""``, so that the code reading command lines never meets
    anything but text (and needs no ``str()`` per argument).

    Each distinct string becomes one Python object, shared by every list that holds it: the
    first execs of 10,000 pods carry 3.7 M argv strings, 2% of them distinct (iptables,
    ``-t``, ``nat``, ...), and one ``str`` each was most of the process table's memory. The
    lists are read in place, by their offsets, not copied out by a row selection first."""
    values = series.array
    if not isinstance(values, pd.arrays.ArrowExtensionArray):
        picked = series if rows is None else series.iloc[rows]
        return [
            None if v is None else tuple("" if x is None else str(x) for x in v)
            for v in cells(picked)
        ]
    known: dict[str, str] = {}
    out: list[Any] = []
    base = 0
    for chunk in pa.chunked_array(pa.array(values)).chunks:
        n = len(chunk)
        if rows is None:
            out += _shared_lists(chunk, known, None)
        else:
            lo, hi = np.searchsorted(rows, [base, base + n])
            if hi > lo:
                out += _shared_lists(chunk, known, rows[lo:hi] - base)
        base += n
    return out


def _shared_lists(chunk: pa.Array, known: dict[str, str], rows: np.ndarray | None) -> list[Any]:
    """One chunk of :func:`string_lists`: its items dictionary-encoded by Arrow, each distinct
    one made a ``str`` once (``known`` shares them across chunks), the lists cut from those."""
    names, codes = _shared_codes(chunk.values, known, "")
    offsets = chunk.offsets.to_numpy(zero_copy_only=False).astype("int64")
    valid = chunk.is_valid().to_numpy(zero_copy_only=False)
    if rows is None:
        starts, ends = offsets[:-1], offsets[1:]
    else:
        starts, ends, valid = offsets[rows], offsets[rows + 1], valid[rows]
    lengths = np.where(valid, ends - starts, 0)
    cuts = np.concatenate(([0], np.cumsum(lengths)))
    items = np.repeat(starts - cuts[:-1], lengths) + np.arange(cuts[-1])
    picked = codes[items]
    strings = tuple(map(names.__getitem__, picked.tolist()))  # its slices are tuples
    bounds = cuts.tolist()
    return [
        strings[lo:hi] if ok else None
        for lo, hi, ok in zip(bounds[:-1], bounds[1:], valid.tolist(), strict=True)
    ]


KIND_CODES = "_kind_code"
"""The column :func:`index_kinds` adds: each event's kind as a small integer."""
KIND_INDEX = {kind: i for i, kind in enumerate(KINDS)}
"""The integer of each kind the recording format knows (``events.KINDS``, fewer than 128: a
byte per event); -1 is any other."""


def index_kinds(frame: pd.DataFrame) -> None:
    """Add each event's kind as an integer column (``KIND_INDEX``), in place, so that
    :func:`kind_mask` compares integers: a comparison of the 6.9 M kind strings of 10,000 pods
    costs 60 ms, and the analysis makes one per kind it reads. The codes are fixed, not kept
    in ``frame.attrs``: pandas deep-copies those into every frame and column it derives (some
    650 times per recording)."""
    encoded = pa.chunked_array(pa.array(frame["kind"].array)).dictionary_encode().combine_chunks()
    names = encoded.dictionary.to_pylist()
    codes = np.array([KIND_INDEX.get(str(k), -1) for k in names] + [-1], dtype="int8")
    frame[KIND_CODES] = codes[encoded.indices.fill_null(len(names)).to_numpy(zero_copy_only=False)]


def kind_mask(frame: pd.DataFrame, *kinds: str) -> np.ndarray:
    """Which events are of one of ``kinds``, as a bool array (a null kind is none of them)."""
    if KIND_CODES not in frame or not all(k in KIND_INDEX for k in kinds):
        return frame["kind"].isin(kinds).to_numpy(dtype=bool, na_value=False)
    column = frame[KIND_CODES].to_numpy()
    if len(kinds) == 1:
        return column == KIND_INDEX[kinds[0]]  # type: ignore[no-any-return]
    return np.isin(column, [KIND_INDEX[k] for k in kinds])


def has_proc(frame: pd.DataFrame) -> np.ndarray:
    """Which events belong to a process lifetime (``processes`` added their ``proc_id``)."""
    return frame["proc_id"].notna().to_numpy(dtype=bool)


def rows_where(
    frame: pd.DataFrame, mask: np.ndarray | pd.Series, columns: Sequence[str]
) -> pd.DataFrame:
    """``frame.loc[mask, columns]``, with Arrow's filter for Arrow columns: pandas selects
    rows by a take, which copies a list column of many chunks slowly (2.4 s for the argv
    of 6.9 M events at 10,000 pods, against 0.14 s filtered). A null in ``mask`` is False."""
    if isinstance(mask, pd.Series):
        mask = mask.to_numpy(dtype=bool, na_value=False)
    keep = pa.array(mask)
    out = {}
    for column in columns:
        values = frame[column].array
        if isinstance(values, pd.arrays.ArrowExtensionArray):
            picked = pa.chunked_array(pa.array(values)).filter(keep)
            out[column] = pd.arrays.ArrowExtensionArray(picked)
        else:
            out[column] = values[mask]
    return pd.DataFrame(out, index=frame.index[mask])
