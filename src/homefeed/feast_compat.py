"""Work-around for one Feast 0.67 file-offline-store bug, applied by homefeed.feature_store.

`get_historical_features` on the `file` (dask) offline store fails with "Divisions calculation
failed for non-numeric column 'created'" whenever an entity row has no feature row at all (a new
user without a sequence yet): the left join leaves NaT in the timestamp columns and dask cannot
sort a multi-partition frame with NaT. Such rows carry no feature values, so giving their (soon
dropped) timestamp columns a fixed epoch value changes no result; it only lets the sort run.
"""

from __future__ import annotations

import functools


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
