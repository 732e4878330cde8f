"""Work-arounds for the Feast 0.67 file (dask) offline store, applied by homefeed.feature_store.

1. A bug (`patch_dask_point_in_time_join`):

`get_historical_features` on the `file` (dask) offline store fails with "Divisions calculation
failed for non-numeric column 'created'" whenever an entity row has no feature row at all (a new
user without a sequence yet): the left join leaves NaT in the timestamp columns and dask cannot
sort a multi-partition frame with NaT. Such rows carry no feature values, so giving their (soon
dropped) timestamp columns a fixed epoch value changes no result; it only lets the sort run.

2. A cost (`patch_dask_tokenize_of_array_columns`): Feast persists the joined frames, and every
later dask expression tokenizes (hashes) the persisted pandas partitions. A column of arrays
(our sequences: pin ids, action types, times) is an object array, which dask hashes by pickling
it three times and unpickling it to prove determinism; profiled on a 600-user world, that was
98% of `homefeed dataset build`. Tokens only name graph nodes, so for such arrays an identity
token (one fresh uuid per live array object; an array that is freed never lends its token to
another) is correct: equal objects get equal tokens, and equal contents in two objects only
lose a deduplication dask does not need here.
"""

from __future__ import annotations

import functools
import uuid
import weakref


def patch_dask_point_in_time_join() -> None:
    import feast.infra.offline_stores.dask as dask_store
    import pandas as pd

    original = dask_store._drop_duplicates
    if getattr(original, "_homefeed_patched", False):
        return

    @functools.wraps(original)
    def drop_duplicates(df, all_join_keys, timestamp_field, created_timestamp_column, entity_ts_col):
        epoch = pd.Timestamp(0, tz="UTC")
        df = df.assign(**{c: df[c].fillna(epoch) for c in (timestamp_field, created_timestamp_column) if c})
        return original(df, all_join_keys, timestamp_field, created_timestamp_column, entity_ts_col)

    drop_duplicates._homefeed_patched = True
    dask_store._drop_duplicates = drop_duplicates


_array_tokens: dict[int, tuple[weakref.ref, str]] = {}


def _identity_token(x) -> tuple[str, str]:
    key = id(x)
    entry = _array_tokens.get(key)
    if entry is not None and entry[0]() is x:
        return "homefeed-object-array", entry[1]
    token = uuid.uuid4().hex
    _array_tokens[key] = (weakref.ref(x, lambda _ref, key=key: _array_tokens.pop(key, None)), token)
    return "homefeed-object-array", token


def patch_dask_tokenize_of_array_columns() -> None:
    import numpy as np
    from dask.tokenize import normalize_token

    original = normalize_token.dispatch(np.ndarray)
    if getattr(original, "_homefeed_patched", False):
        return

    @functools.wraps(original)
    def normalize_array(x):
        # only object arrays whose cells are arrays (list-typed feature columns); all else as before
        if x.dtype.hasobject and x.size and isinstance(x.flat[0], np.ndarray):
            return _identity_token(x)
        return original(x)

    normalize_array._homefeed_patched = True
    normalize_token.register(np.ndarray)(normalize_array)
