"""The Feast-Redis online store's byte layout: keys, field names, values (both directions).

Feast's Redis store keeps one hash per entity key (``serialize_entity_key(key, v3) + project``),
one field per feature (``mmh3("<view>:<feature>")``, `feast.infra.online_stores.helpers._mmh3`)
holding a serialized `ValueProto`, plus ``_ts:<view>`` holding the event timestamp. Feast's own
helpers compute the layout; this module applies it to many rows at once. It sits below
`homefeed.serving` (the reader, `OnlineFeatureReader`) and `homefeed.stream` (the writer) and
imports neither; feast and protobuf are imported inside the functions that need them.

1. Keys: `entity_key(join_key, id)` is the `EntityKey` proto of one int64 entity;
   `Int64KeyTemplate` splices the Redis keys of N ids from one Feast-computed template with numpy
   (checked against Feast's `_redis_key` when built).
2. Fields: `field_names(store, view, features)` -> the hash fields of those features and the
   view's timestamp field (versioned view names included).
3. Decoding values: `decode_value` (one `ValueProto` -> python/numpy, None when null),
   `decode_ts` (the ``_ts:<view>`` field), `decode_int64_many` (a column of ints) and
   `FloatListDecoder` (a column of float/double lists: one `np.frombuffer` for packed rows).
4. Encoding values (the write side: what `homefeed.stream.online_writer` hands to Feast's
   `online_write_batch`): `event_time(ms)` (the row's timestamps), `optional_int` and
   `optional_int64` (a nullable int column: None, NaN or pandas' NA -> an unset `Value`).
"""

from __future__ import annotations

import math
from datetime import datetime, timezone
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd

# ---------------------------------------------------------------------------------------------
# 1. keys and 2. fields
# ---------------------------------------------------------------------------------------------


def entity_key(join_key: str, value: int) -> Any:
    """The `EntityKey` proto of one int64 entity (`user_id`, `pin_id`)."""
    from feast.protos.feast.types.EntityKey_pb2 import EntityKey
    from feast.protos.feast.types.Value_pb2 import Value

    return EntityKey(join_keys=[join_key], entity_values=[Value(int64_val=int(value))])


def field_names(store: Any, view_name: str, names: Sequence[str], versioning: bool = False) -> list[bytes | str]:
    """The Redis hash fields of feature view `view_name`'s features `names` (in that order),
    then the view's timestamp field; ValueError when the view lacks one of them.
    `versioning`: the registry's ``enable_online_feature_view_versioning``."""
    from feast.infra.online_stores.helpers import _mmh3, compute_versioned_name

    fv = store.get_feature_view(view_name)
    have = {f.name for f in fv.features}
    missing = [n for n in names if n not in have]
    if missing:
        raise ValueError(f"feature view {view_name!r} lacks features {missing}")
    name = compute_versioned_name(fv, versioning)
    return [_mmh3(f"{name}:{n}") for n in names] + [f"_ts:{name}"]


class Int64KeyTemplate:
    """Vectorised `_redis_key(project, EntityKey([join_key], [int64]))` for many ids.

    The layout comes from Feast's own helper: the key of one id, with the 8 value bytes located
    by comparing two ids' keys; `check()` re-derives sample keys with `_redis_key`."""

    def __init__(self, project: str, join_key: str, version: int):
        from feast.infra.online_stores.helpers import _redis_key

        self.project, self.join_key, self.version = project, join_key, version

        def feast_key(value: int) -> bytes:
            return _redis_key(project, entity_key(join_key, value), entity_key_serialization_version=version)

        self._feast_key = feast_key
        a, b = feast_key(0), feast_key(-1)  # 0 -> eight 0x00 bytes, -1 -> eight 0xff bytes
        diff = [i for i in range(len(a)) if a[i] != b[i]]
        if len(a) != len(b) or len(diff) != 8 or diff != list(range(diff[0], diff[0] + 8)):
            raise RuntimeError("unexpected Feast entity key layout")
        self.offset = diff[0]
        self.length = len(a)
        self.template = np.frombuffer(a, dtype=np.uint8)
        if not a.endswith(project.encode()) or not project or a[-1:] == b"\x00":
            raise RuntimeError("unexpected Feast entity key layout (project suffix)")
        self.check([0, 1, -1, 255, 256, 2**40 + 7, 2**63 - 1, -(2**63), 1234567890123])

    def keys(self, ids: np.ndarray) -> list[bytes]:
        ids = np.ascontiguousarray(ids, dtype="<i8")
        n = ids.size
        buf = np.empty((n, self.length), dtype=np.uint8)
        buf[:] = self.template
        buf[:, self.offset: self.offset + 8] = ids.view(np.uint8).reshape(n, 8)
        # The key ends with the (non-empty) project name, so numpy's 'S' dtype (which strips
        # trailing NULs) returns every key intact.
        return buf.view(f"S{self.length}").ravel().tolist()

    def check(self, ids: Iterable[int]) -> None:
        ids = list(ids)
        got = self.keys(np.asarray(ids, dtype=np.int64))
        for value, key in zip(ids, got):
            if key != self._feast_key(value):
                raise RuntimeError(f"vectorised Redis key differs from Feast's for id {value}")


# ---------------------------------------------------------------------------------------------
# 3. decoding
# ---------------------------------------------------------------------------------------------


def decode_value(raw: bytes | None) -> Any:
    """A Feast ValueProto (serialized) -> python/numpy value, None when missing or null."""
    if not raw:
        return None
    from feast.protos.feast.types.Value_pb2 import Value as ValueProto

    v = ValueProto()
    v.ParseFromString(raw)
    kind = v.WhichOneof("val")
    if kind is None or kind == "null_val":
        return None
    val = getattr(v, kind)
    if kind.endswith("_list_val"):
        dtype = {"float_list_val": np.float32, "double_list_val": np.float64,
                 "int32_list_val": np.int64, "int64_list_val": np.int64,
                 "bool_list_val": np.bool_}.get(kind)
        return np.array(val.val, dtype=dtype) if dtype else list(val.val)
    return val


def decode_ts(raw: bytes | None) -> datetime | None:
    if not raw:
        return None
    from google.protobuf.timestamp_pb2 import Timestamp

    ts = Timestamp()
    ts.ParseFromString(raw)
    return datetime.fromtimestamp(ts.seconds + ts.nanos / 1e9, tz=timezone.utc)


class FloatListDecoder:
    """Decode many serialized `ValueProto(float_list_val=[D floats])` at once (or, with
    `double=True`, `double_list_val`: the engagement counters).

    Feast writes a packed FloatList, so every such value is ``header + D little-endian float32``
    with a fixed header (taken from protobuf's own serialization of a D-float list). Rows with
    that exact length and header are decoded with one frombuffer; anything else (missing, a
    different length, a non-packed encoding) goes through `ValueProto.ParseFromString`."""

    def __init__(self, dim: int, double: bool = False):
        from feast.protos.feast.types.Value_pb2 import DoubleList, FloatList, Value

        self.dim = dim
        self.dtype, width = (np.float64, 8) if double else (np.float32, 4)
        blob = (Value(double_list_val=DoubleList(val=[0.0] * dim)) if double
                else Value(float_list_val=FloatList(val=[0.0] * dim))).SerializeToString()
        self.header = np.frombuffer(blob[: len(blob) - width * dim], dtype=np.uint8)
        self.row_len = len(blob)

    def decode(self, raws: Sequence[bytes | None]) -> tuple[np.ndarray, np.ndarray, int]:
        """-> (embeddings [n, D] float32 (zeros where not valid), valid [n] bool, bad count)."""
        n = len(raws)
        out = np.zeros((n, self.dim), dtype=self.dtype)
        valid = np.zeros(n, dtype=bool)
        fast = np.fromiter((r is not None and len(r) == self.row_len for r in raws), dtype=bool, count=n)
        idx = np.flatnonzero(fast)
        if idx.size:
            blob = b"".join([raws[i] for i in idx.tolist()])  # type: ignore[misc]
            buf = np.frombuffer(blob, dtype=np.uint8).reshape(idx.size, self.row_len)
            h = self.header.size
            ok = (buf[:, :h] == self.header).all(axis=1)
            good = idx[ok]
            out[good] = buf[ok, h:].copy().view("<f8" if self.dtype == np.float64 else "<f4").reshape(-1, self.dim)
            valid[good] = True
            fast[idx[~ok]] = False
        bad = 0
        for i in np.flatnonzero(~fast).tolist():
            raw = raws[i]
            if raw is None:
                continue
            value = decode_value(raw)
            if value is None:
                continue
            arr = np.asarray(value, dtype=self.dtype).reshape(-1)
            if arr.size != self.dim:
                bad += 1
                continue
            out[i] = arr
            valid[i] = True
        return out, valid, bad


def decode_int64_many(raws: Sequence[bytes | None], missing: int) -> np.ndarray:
    """Serialized int32/int64 `ValueProto`s -> int64 [n], `missing` where absent or null."""
    out = np.full(len(raws), missing, dtype=np.int64)
    for i, raw in enumerate(raws):
        if raw:
            v = decode_value(raw)
            if v is not None:
                out[i] = int(v)
    return out


# ---------------------------------------------------------------------------------------------
# 4. encoding
# ---------------------------------------------------------------------------------------------


def event_time(ms: int) -> datetime:
    """An epoch-ms timestamp as the UTC datetime Feast's `online_write_batch` takes."""
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc)


def optional_int(value: Any) -> int | None:
    """An optional integer column's value: None for None, NaN or pandas' NA, else an int."""
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return None
    return int(value)


def optional_int64(value: Any) -> Any:
    """A nullable int64 feature value: an unset `Value` (Feast reads it back as None) for a
    missing one, else ``Value(int64_val=...)``."""
    from feast.protos.feast.types.Value_pb2 import Value

    v = optional_int(value)
    return Value() if v is None else Value(int64_val=v)


__all__ = ["FloatListDecoder", "Int64KeyTemplate", "decode_int64_many", "decode_ts", "decode_value",
           "entity_key", "event_time", "field_names", "optional_int", "optional_int64"]
