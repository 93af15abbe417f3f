"""Conversion of the caller's data into what the server accepts.

The server's Flight DoPut and DoExchange take ``string`` (utf8) id, behavior
and category columns and a ``ts`` that is a timestamp (any unit) or int64
Unix milliseconds; they refuse ``large_string`` (what pandas 3 and
``string[pyarrow]`` columns become in Arrow), ``string_view``, dictionaries
(pandas categoricals) and other integer widths. REST takes ``ts`` as Unix
milliseconds. This module turns frames, tables and dicts into those types:

- strings of any Arrow flavour, dictionaries and integer ids become ``string``;
  ``large_binary``/``binary_view`` become ``binary``, large and view lists
  become lists (also inside other columns, which the spine passes through);
- ``ts`` becomes ``timestamp[ms, UTC]``: timestamps of any unit are converted
  (naive ones are taken as UTC, sub-millisecond parts are dropped), strings
  are parsed as ISO 8601 / RFC 3339, integers are Unix milliseconds unless
  ``ts_unit`` says otherwise, and integral floats (an int column with NaN) are
  integers. Never seconds read as milliseconds: a spine whose integer ``ts``
  looks like seconds is refused unless ``ts_unit`` is given.
"""

from __future__ import annotations

import datetime as _dt
import math
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, Literal

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from .errors import InvalidArgument

TsUnit = Literal["s", "ms", "us", "ns"]

EVENT_STRING_COLUMNS = ("user_id", "item_id", "category_id", "behavior", "event_id")
TS = pa.timestamp("ms", tz="UTC")
_TO_MS = {"s": (1000, 1), "ms": (1, 1), "us": (1, 1000), "ns": (1, 1_000_000)}
# Integer ts values in [1e8, 1e11) are 1970-01-02 .. 1973-03-03 as milliseconds,
# and 1973 .. 5138 as seconds: behavior data in seconds, almost surely.
_SECONDS_LO, _SECONDS_HI = 10**8, 10**11


def to_table(data: Any, what: str) -> pa.Table:
    """An Arrow table of a DataFrame, Table, RecordBatch or list of dicts."""
    if isinstance(data, pa.Table):
        return data
    if isinstance(data, pa.RecordBatch):
        return pa.Table.from_batches([data])
    if isinstance(data, pd.DataFrame):
        return pa.Table.from_pandas(data, preserve_index=False)
    if isinstance(data, list) and all(isinstance(r, Mapping) for r in data):
        return pa.Table.from_pylist(data)
    raise TypeError(f"{what}: want a pandas DataFrame or a pyarrow Table, got {type(data).__name__}")


def plain_type(t: pa.DataType) -> pa.DataType:
    """t with every large, view and dictionary type replaced by its plain form."""
    if pa.types.is_dictionary(t):
        return plain_type(t.value_type)
    if pa.types.is_large_string(t) or _is(t, "is_string_view"):
        return pa.string()
    if pa.types.is_large_binary(t) or _is(t, "is_binary_view"):
        return pa.binary()
    if pa.types.is_large_list(t) or pa.types.is_list(t) or _is(t, "is_list_view") or _is(t, "is_large_list_view"):
        return pa.list_(t.value_field.with_type(plain_type(t.value_type)))
    if pa.types.is_fixed_size_list(t):
        return pa.list_(t.value_field.with_type(plain_type(t.value_type)), t.list_size)
    if pa.types.is_struct(t):
        return pa.struct([t.field(i).with_type(plain_type(t.field(i).type)) for i in range(t.num_fields)])
    if pa.types.is_map(t):
        return pa.map_(plain_type(t.key_type), plain_type(t.item_type))
    return t


def _is(t: pa.DataType, pred: str) -> bool:
    f = getattr(pa.types, pred, None)  # view types are newer than some pyarrow versions
    return bool(f and f(t))


def to_string(col: pa.ChunkedArray | pa.Array, field: str) -> pa.ChunkedArray | pa.Array:
    """An id-like column as utf8 strings: strings of any flavour, dictionaries, integers,
    integral floats (an int column with NaN)."""
    t = col.type
    if pa.types.is_dictionary(t):
        col = col.cast(t.value_type)
        t = col.type
    if t == pa.string():
        return col
    if pa.types.is_string(t) or pa.types.is_large_string(t) or _is(t, "is_string_view"):
        return col.cast(pa.string())
    if pa.types.is_integer(t):
        return col.cast(pa.string())
    if pa.types.is_floating(t):
        try:
            return col.cast(pa.int64()).cast(pa.string())
        except pa.ArrowInvalid:
            raise InvalidArgument(f"{field}: float values that are not integers cannot be ids; pass strings",
                                  field=field) from None
    if pa.types.is_null(t):
        return col.cast(pa.string())
    raise InvalidArgument(f"{field}: type {t} cannot be sent as a string column", field=field)


def to_ts(col: pa.ChunkedArray | pa.Array, field: str, unit: TsUnit | None, guard_seconds: bool) -> pa.ChunkedArray | pa.Array:
    """A time column as timestamp[ms, UTC] (see the module doc)."""
    t = col.type
    if pa.types.is_dictionary(t):
        col = col.cast(t.value_type)
        t = col.type
    if pa.types.is_timestamp(t):
        if t.unit in ("s", "ms"):
            return col.cast(TS)
        return col.cast(TS, safe=False)  # drops the sub-millisecond part
    if pa.types.is_date(t):
        return col.cast(TS)
    if pa.types.is_string(t) or pa.types.is_large_string(t) or _is(t, "is_string_view"):
        try:
            return col.cast(pa.string()).cast(TS)
        except pa.ArrowInvalid as exc:
            raise InvalidArgument(f"{field}: not an ISO 8601 time: {exc}", field=field) from None
    if pa.types.is_floating(t):
        try:
            col = col.cast(pa.int64())
        except pa.ArrowInvalid:
            raise InvalidArgument(f"{field}: float times must be whole numbers of {unit or 'ms'}", field=field) from None
        t = col.type
    if pa.types.is_integer(t):
        col = col.cast(pa.int64())
        if unit is None and guard_seconds:
            mm = pc.min_max(col)
            hi = mm["max"].as_py()
            if hi is not None and _SECONDS_LO <= hi < _SECONDS_HI:
                raise InvalidArgument(
                    f"{field}: integer times up to {hi} look like Unix seconds (as milliseconds they are before "
                    "1973-03-03); pass milliseconds (ts * 1000), a timestamp column, or ts_unit='s'", field=field)
        mul, div = _TO_MS[unit or "ms"]
        if mul != 1:
            col = pc.multiply_checked(col, mul)
        if div != 1:
            col = pc.divide(col, div)  # integer division: drops the sub-millisecond part
        return col.cast(TS)
    if pa.types.is_null(t):
        return col.cast(TS)
    raise InvalidArgument(f"{field}: type {t} is not a time (want a timestamp, Unix ms integers or ISO 8601 strings)",
                          field=field)


def normalize(table: pa.Table, *, strings: Iterable[str], ts: str = "ts", ts_field: str = "ts",
              unit: TsUnit | None = None, guard_seconds: bool = False) -> pa.Table:
    """table with `strings` columns as utf8, `ts` as timestamp[ms, UTC] and every other
    column in its plain type (no large, view or dictionary types)."""
    strings = set(strings)
    cols, names = [], []
    for name, col in zip(table.column_names, table.columns):
        if name == ts:
            col = to_ts(col, ts_field, unit, guard_seconds)
        elif name in strings:
            col = to_string(col, name)
        else:
            plain = plain_type(col.type)
            if plain != col.type:
                col = col.cast(plain)
        cols.append(col)
        names.append(name)
    return pa.Table.from_arrays(cols, names=names)


def batches(table: pa.Table, rows: int) -> Iterator[pa.RecordBatch]:
    """table in record batches of at most `rows` rows."""
    yield from table.to_batches(max_chunksize=rows)


# -- REST events ---------------------------------------------------------------

_EPOCH = _dt.datetime(1970, 1, 1, tzinfo=_dt.timezone.utc)


def _exact_ms(v: _dt.datetime) -> int:
    d = v - _EPOCH
    return (d.days * 86_400 + d.seconds) * 1000 + d.microseconds // 1000


def json_value(key: str, v: Any, unit: TsUnit | None) -> Any:
    """A JSON-ready value of an event field, or None to leave the field out."""
    if v is None or v is pd.NA or v is pd.NaT:
        return None
    if isinstance(v, float) and math.isnan(v):
        return None
    if isinstance(v, pd.Timestamp):
        if v.tzinfo is None:
            v = v.tz_localize("UTC")
        return int(v.value // 1_000_000)  # ns since the epoch, as ms
    if isinstance(v, np.datetime64):
        if np.isnat(v):
            return None
        return int(v.astype("datetime64[ms]").astype(np.int64))
    if isinstance(v, _dt.datetime):
        return _exact_ms(v if v.tzinfo else v.replace(tzinfo=_dt.timezone.utc))
    if isinstance(v, np.generic):
        v = v.item()
        if isinstance(v, float) and math.isnan(v):
            return None
    if key == "ts":
        if isinstance(v, float):
            if not v.is_integer():
                raise InvalidArgument(f"ts: {v} is not a whole number of {unit or 'ms'}", field="ts")
            v = int(v)
        if isinstance(v, int) and not isinstance(v, bool) and unit not in (None, "ms"):
            mul, div = _TO_MS[unit]
            v = v * mul // div
    return v


def event_dicts(data: Any, unit: TsUnit | None) -> list[dict[str, Any]]:
    """JSON-ready events of a list of dicts, a DataFrame or a pyarrow Table."""
    if isinstance(data, (pd.DataFrame, pa.Table, pa.RecordBatch)):
        t = to_table(data, "events")
        if "ts" in t.column_names:
            t = normalize(t, strings=EVENT_STRING_COLUMNS, unit=unit)
            i = t.column_names.index("ts")
            t = t.set_column(i, "ts", t.column("ts").cast(pa.int64()))
        else:
            t = normalize(t, strings=EVENT_STRING_COLUMNS, ts="")
        return [{k: v for k, v in row.items() if v is not None} for row in t.to_pylist()]
    if isinstance(data, Mapping):
        raise TypeError("events: want a list of events (dicts), a DataFrame or a pyarrow Table, got one dict")
    out = []
    for e in data:
        if not isinstance(e, Mapping):
            raise TypeError(f"events: want dicts, got {type(e).__name__}")
        row = {}
        for k, v in e.items():
            jv = json_value(k, v, unit)
            if jv is not None:
                row[k] = jv
        out.append(row)
    return out
