"""The offline store Feast answers point-in-time queries with: DuckDB over the partitioned log.

feature_repo/feature_store.yaml names ``homefeed.offline_store.HomefeedOfflineStore``. It is
Feast's own DuckDB offline store (``feast[duckdb]``, the ibis point-in-time join: per entity row
the newest feature row by event time, then by created time, with event time <= the entity time,
within the view's ttl and, with ``filter_by_created_timestamp``, created <= the entity time).
The one difference is how a batch source is read: the log's partitions are listed and pruned
before DuckDB opens a file.

1. List the table's partitions (``<table>/month=YYYY-MM/*.parquet``, homefeed.offline_log).
2. Keep the partitions that can hold an answer for this call's entity rows: a feature row
   answers an entity row only if its event time is <= the entity time, so partitions after the
   newest entity time are dropped; with a ttl, so are those before the oldest entity time - ttl.
3. Hand the remaining files to DuckDB (``ibis.read_parquet`` of the file list), keeping of the
   history before the call's oldest entity row only each key's newest row (`newest_before`):
   the join pairs every entity row with every earlier row of its key, so without this a user's
   cost would grow with (requests x sequence versions) over the whole log.

A call therefore reads what its rows can use, and the builder's calls are sized by rows, in time
order (homefeed.training.dataset). The engine is chosen by the ``offline_store`` setting
(``HOMEFEED_OFFLINE_STORE``); ``duckdb`` is the one this version ships.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path
from typing import Literal

import pandas as pd
from feast.infra.offline_stores.duckdb import (
    DuckDBOfflineStore,
    DuckDBOfflineStoreConfig,
    _write_data_source,
)
from feast.infra.offline_stores.file_source import FileSource
from feast.infra.offline_stores.ibis import get_historical_features_ibis
from feast.infra.offline_stores.offline_utils import infer_event_timestamp_from_entity_df

from homefeed.errors import UserError
from homefeed.offline_log import partition_files


class HomefeedOfflineStoreConfig(DuckDBOfflineStoreConfig):
    type: Literal["homefeed.offline_store.HomefeedOfflineStore"] = (
        "homefeed.offline_store.HomefeedOfflineStore"
    )


def _date(ts: datetime) -> str:
    return pd.Timestamp(ts).tz_convert("UTC").strftime("%Y-%m-%d")


def newest_before(table, start: datetime, keys: list[str], ts: str, created: str | None):
    """`table` with the rows that cannot matter to entity rows at or after `start` removed.

    A row with event time and created time both before `start` is usable by every such entity
    row, so of those only the newest per key (by event time, then created time) can win the join;
    rows from `start` on, and older rows that arrived (were created) after it, stay as they are.
    The join's answer is unchanged; its size no longer grows with each key's whole history.
    """
    import ibis

    settled = table[ts] < start
    if created:
        settled = settled & (table[created] <= start)
    old = table.filter(settled)
    order = [ibis.desc(old[ts])] + ([ibis.desc(old[created])] if created else [])
    old = old.mutate(_rn=ibis.row_number().over(group_by=[old[k] for k in keys], order_by=order))
    return old.filter(old["_rn"] == 0).drop("_rn").union(table.filter(~settled), distinct=False)


def pruned_reader(min_ts: datetime, max_ts: datetime, views: dict):
    """A Feast data-source reader for entity rows in [min_ts, max_ts]: opens only the partitions
    those rows can use and keeps, of the history before min_ts, only each key's newest row.
    `views` maps a batch source name to its feature view (ttl, join keys)."""
    import ibis

    def read(data_source, repo_path: str):
        if not isinstance(data_source, FileSource):
            raise UserError(f"batch source {data_source.name} is not a FileSource; "
                            "the duckdb offline store reads the parquet log")
        path = Path(FileSource.get_uri_for_file_path(repo_path, data_source.path))
        if path.suffix == ".parquet" or not path.is_dir():
            return ibis.read_parquet(str(path))
        view = views[data_source.name]
        first = _date(min_ts - view.ttl) if view.ttl else None
        files = partition_files(path, first, _date(max_ts))
        if not files:
            # Nothing in range: any one file gives the schema, and its rows all fall outside the
            # join's time bounds (they are later than every entity row or older than the ttl).
            files = partition_files(path)[:1]
        if not files:
            raise UserError(f"nothing logged under {path} yet; the point-in-time join has no rows "
                            "to read (replay events, run `homefeed dataset profiles`)")
        keys = list(view.projection.join_key_map or {e.name: e.name for e in view.entity_columns})
        return newest_before(ibis.read_parquet([str(f) for f in files]), min_ts, keys,
                             data_source.timestamp_field, data_source.created_timestamp_column or None)

    return read


class HomefeedOfflineStore(DuckDBOfflineStore):
    """Feast's DuckDB offline store reading the partitioned log with partition pruning."""

    @staticmethod
    def get_historical_features(config, feature_views, feature_refs, entity_df, registry, project,
                                full_feature_names: bool = False,
                                filter_by_created_timestamp: bool = False):
        if not isinstance(entity_df, pd.DataFrame) or entity_df.empty:
            return DuckDBOfflineStore.get_historical_features(
                config, feature_views, feature_refs, entity_df, registry, project,
                full_feature_names=full_feature_names,
                filter_by_created_timestamp=filter_by_created_timestamp)
        ts_col = infer_event_timestamp_from_entity_df(dict(zip(entity_df.columns, entity_df.dtypes)))
        stamps = pd.to_datetime(entity_df[ts_col], utc=True)
        views = {fv.batch_source.name: fv for fv in feature_views if fv.batch_source is not None}
        reader = pruned_reader(stamps.min().to_pydatetime(), stamps.max().to_pydatetime(), views)
        return get_historical_features_ibis(
            config=config, feature_views=feature_views, feature_refs=feature_refs,
            entity_df=entity_df, registry=registry, project=project,
            full_feature_names=full_feature_names, data_source_reader=reader,
            data_source_writer=_write_data_source, staging_location=config.offline_store.staging_location,
            staging_location_endpoint_override=config.offline_store.staging_location_endpoint_override,
            filter_by_created_timestamp=filter_by_created_timestamp)
