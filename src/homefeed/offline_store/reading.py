"""What one point-in-time call reads of the partitioned log, the same for every engine.

1. The batch source must be a ``FileSource`` over a log table (homefeed.offline_log); a single
   parquet file, or a URI with a scheme (an object-storage glob), is read whole.
2. Of the table's ``month=YYYY-MM`` partitions, keep those that can hold an answer for entity
   rows in [min_ts, max_ts]: a feature row answers an entity row only if its event time is <= the
   entity time, so partitions after max_ts are dropped; with a ttl, so are those before
   min_ts - ttl.
3. With nothing in range, one file still gives the schema (its rows all fall outside the join's
   time bounds); with nothing logged at all the call is a user error.

The engines then keep, of the history before min_ts, only each key's newest row (`newest_before`
in homefeed.offline_store.duckdb and .spark): the join pairs every entity row with every earlier
row of its key, so without it a user's cost would grow with requests x versions over the log.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pandas as pd
from feast.infra.offline_stores.file_source import FileSource

from homefeed import feast_compat  # noqa: F401  (after Feast: undoes its metrics side effect)
from homefeed.errors import UserError
from homefeed.offline_log import partition_files


def _date(ts: datetime) -> str:
    return pd.Timestamp(ts).tz_convert("UTC").strftime("%Y-%m-%d")


def view_keys(view) -> list[str]:
    """The join key columns of a feature view (after any join key mapping)."""
    return list(view.projection.join_key_map or {e.name: e.name for e in view.entity_columns})


def source_files(data_source, repo_path: str, view, min_ts: datetime, max_ts: datetime,
                 engine: str) -> tuple[list[Path | str], bool]:
    """(the parquet files of `data_source` that entity rows in [min_ts, max_ts] can use, whether
    they are a partitioned log table; a single-file source is read whole)."""
    if not isinstance(data_source, FileSource):
        raise UserError(f"batch source {data_source.name} is not a FileSource; "
                        f"the {engine} offline store reads the parquet log")
    uri = FileSource.get_uri_for_file_path(repo_path, data_source.path)
    if "://" in uri:  # object storage (s3://, gs://, s3a://...): the engine reads it whole
        return [uri], False
    path = Path(uri)
    if path.suffix == ".parquet" or not path.is_dir():
        return [path], False
    first = _date(min_ts - view.ttl) if view.ttl else None
    files = partition_files(path, first, _date(max_ts)) or partition_files(path)[:1]
    if not files:
        raise UserError(f"nothing logged under {path} yet; the point-in-time join has no rows "
                        "to read (replay events, run `homefeed dataset profiles`)")
    return files, True


def entity_time_range(entity_df: pd.DataFrame) -> tuple[datetime, datetime]:
    """(oldest, newest) entity row time of a pandas entity frame, UTC."""
    from feast.infra.offline_stores.offline_utils import infer_event_timestamp_from_entity_df

    ts_col = infer_event_timestamp_from_entity_df(dict(zip(entity_df.columns, entity_df.dtypes)))
    stamps = pd.to_datetime(entity_df[ts_col], utc=True)
    return stamps.min().to_pydatetime(), stamps.max().to_pydatetime()
