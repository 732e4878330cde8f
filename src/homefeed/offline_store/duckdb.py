"""Feast's DuckDB offline store over the partitioned log: the embedded default engine.

It is Feast's own DuckDB offline store (``feast[duckdb]``, the ibis point-in-time join: per
entity row the newest feature row by event time, then by created time, with event time <= the
entity time, within the view's ttl and, with ``filter_by_created_timestamp``, created <= the
entity time). The one difference is how a batch source is read:

1. list and prune the log's partitions for this call's entity rows
   (homefeed.offline_store.reading.source_files);
2. hand the remaining files to DuckDB (``ibis.read_parquet`` of the file list), keeping of the
   history before the call's oldest entity row only each key's newest row (`newest_before`).

A call therefore reads what its rows can use, and the builder's calls are sized by rows, in time
order (homefeed.training.dataset).
"""

from __future__ import annotations

from datetime import datetime

import pandas as pd
from feast.infra.offline_stores.duckdb import DuckDBOfflineStore, _write_data_source
from feast.infra.offline_stores.ibis import get_historical_features_ibis

from homefeed import feast_compat  # noqa: F401  (after Feast: undoes its metrics side effect)
from homefeed.offline_store.reading import entity_time_range, source_files, view_keys


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
        view = views[data_source.name]
        files, partitioned = source_files(data_source, repo_path, view, min_ts, max_ts, "duckdb")
        table = ibis.read_parquet([str(f) for f in files])
        if not partitioned:
            return table
        return newest_before(table, min_ts, view_keys(view), data_source.timestamp_field,
                             data_source.created_timestamp_column or None)

    return read


def get_historical_features(config, feature_views, feature_refs, entity_df, registry, project,
                            full_feature_names: bool = False, filter_by_created_timestamp: bool = False):
    """Feast's DuckDB point-in-time join, each source read through `pruned_reader`."""
    if not isinstance(entity_df, pd.DataFrame) or entity_df.empty:
        return DuckDBOfflineStore.get_historical_features(
            config, feature_views, feature_refs, entity_df, registry, project,
            full_feature_names=full_feature_names,
            filter_by_created_timestamp=filter_by_created_timestamp)
    min_ts, max_ts = entity_time_range(entity_df)
    views = {fv.batch_source.name: fv for fv in feature_views if fv.batch_source is not None}
    return get_historical_features_ibis(
        config=config, feature_views=feature_views, feature_refs=feature_refs,
        entity_df=entity_df, registry=registry, project=project,
        full_feature_names=full_feature_names, data_source_reader=pruned_reader(min_ts, max_ts, views),
        data_source_writer=_write_data_source, staging_location=config.offline_store.staging_location,
        staging_location_endpoint_override=config.offline_store.staging_location_endpoint_override,
        filter_by_created_timestamp=filter_by_created_timestamp)
