"""Feast's Spark offline store over the partitioned log: the distributed engine.

Feast's Spark store (``feast.infra.offline_stores.contrib.spark_offline_store``) reads
``SparkSource``s and runs Feast's point-in-time join template in Spark SQL. The feature repo
keeps its ``FileSource``s over the log, so one registry serves both engines; per call:

1. start (or reuse) the Spark session from the store's ``spark_conf`` (homefeed settings:
   ``spark_master``, default ``local[2]``, UTC session time zone, Arrow transfers);
2. per feature view, read the log files the call's rows can use (the same pruning as DuckDB,
   homefeed.offline_store.reading) into a temporary view, and keep of the history before the
   call's oldest entity row only each key's newest row (`newest_before`, in SQL);
3. hand Feast's Spark store copies of the feature views whose batch source is a ``SparkSource``
   over that query;
4. return its job, whose frame has UTC timestamps (Spark hands back naive ones in the session
   time zone), one row per entity row (exact duplicate log rows are read once in step 2).
"""

from __future__ import annotations

import functools
import os
import shutil
import uuid
import warnings
from datetime import datetime, timezone

import pandas as pd

from homefeed.errors import UserError
from homefeed.offline_store.reading import entity_time_range, source_files, view_keys

INSTALL_HINT = ("the spark offline store needs pyspark (pip install -e '.[spark]') and a Java "
                "runtime (`make setup` installs a headless JDK with apt; or set JAVA_HOME)")


def _require_spark():
    try:
        import pyspark  # noqa: F401
    except ImportError:
        raise UserError(f"offline_store=spark: pyspark is not installed; {INSTALL_HINT}") from None
    if not os.environ.get("JAVA_HOME") and not shutil.which("java"):
        raise UserError(f"offline_store=spark: no java on PATH and JAVA_HOME is unset; {INSTALL_HINT}")


def spark_store_config(config):
    """Feast's SparkOfflineStoreConfig from homefeed's store config."""
    from feast.infra.offline_stores.contrib.spark_offline_store.spark import SparkOfflineStoreConfig

    ours = config.offline_store
    return SparkOfflineStoreConfig(spark_conf=dict(ours.spark_conf or {}),
                                   staging_location=ours.staging_location)


def session(spark_config):
    from feast.infra.offline_stores.contrib.spark_offline_store.spark import (
        get_spark_session_or_start_new_with_repoconfig,
    )

    return get_spark_session_or_start_new_with_repoconfig(spark_config)


def _literal(ts: datetime) -> str:
    utc = pd.Timestamp(ts).tz_convert("UTC")
    return f"TIMESTAMP '{utc.strftime('%Y-%m-%d %H:%M:%S.%f')}+00:00'"


def newest_before(table: str, columns: list[str], start: datetime, keys: list[str], ts: str,
                  created: str | None) -> str:
    """Spark SQL for `table` with the rows that cannot matter to entity rows at or after `start`
    removed (homefeed.offline_store.duckdb.newest_before, the same rule): of the rows with event
    and created time before `start`, only the newest per key. Of the other rows, exact copies of
    one (key, event time, created time) are kept once: Feast's Spark join would return one
    answer per copy."""
    settled = f"`{ts}` < {_literal(start)}" + (f" AND `{created}` <= {_literal(start)}" if created else "")
    times = [ts] + ([created] if created else [])
    cols = ", ".join(f"`{c}`" for c in columns)

    def first(where: str, partition: list[str]) -> str:
        part = ", ".join(f"`{c}`" for c in partition)
        order = ", ".join(f"`{c}` DESC" for c in times)
        return (f"SELECT {cols} FROM (SELECT {cols}, ROW_NUMBER() OVER (PARTITION BY {part} "
                f"ORDER BY {order}) AS homefeed_rn FROM `{table}` WHERE {where}) WHERE homefeed_rn = 1")

    return f"{first(settled, keys)} UNION ALL {first(f'NOT ({settled})', keys + times)}"


def spark_view(spark, view, repo_path: str, min_ts: datetime, max_ts: datetime):
    """A copy of `view` whose batch source is a SparkSource over the log rows this call can use."""
    from feast.infra.offline_stores.contrib.spark_offline_store.spark_source import SparkSource

    source = view.batch_source
    files, partitioned = source_files(source, repo_path, view, min_ts, max_ts, "spark")
    frame = spark.read.parquet(*[str(f) for f in files])
    table = f"homefeed_{source.name}_{uuid.uuid4().hex[:12]}"
    frame.createOrReplaceTempView(table)
    query = (newest_before(table, frame.columns, min_ts, view_keys(view), source.timestamp_field,
                           source.created_timestamp_column or None)
             if partitioned else f"SELECT * FROM `{table}`")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # "experimental" notice of SparkSource
        spark_source = SparkSource(name=source.name, query=query, timestamp_field=source.timestamp_field,
                                   created_timestamp_column=source.created_timestamp_column,
                                   field_mapping=source.field_mapping)
    copy = view.__copy__()
    copy.batch_source = spark_source
    return copy


def _utc_frame(frame: pd.DataFrame, session_tz: str) -> pd.DataFrame:
    for col in frame.columns:
        if pd.api.types.is_datetime64_dtype(frame[col]) and getattr(frame[col].dt, "tz", None) is None:
            frame[col] = frame[col].dt.tz_localize(session_tz).dt.tz_convert("UTC")
    return frame


@functools.cache
def _job_class():
    from feast.infra.offline_stores.contrib.spark_offline_store.spark import SparkRetrievalJob

    class UtcSparkRetrievalJob(SparkRetrievalJob):
        """Feast's Spark job whose frames carry UTC timestamps, as the DuckDB store's do."""

        def _to_df_internal(self, timeout=None) -> pd.DataFrame:
            tz = self.spark_session.conf.get("spark.sql.session.timeZone") or "UTC"
            return _utc_frame(super()._to_df_internal(timeout=timeout), tz)

    return UtcSparkRetrievalJob


def get_historical_features(config, feature_views, feature_refs, entity_df, registry, project,
                            full_feature_names: bool = False, filter_by_created_timestamp: bool = False):
    """Feast's Spark point-in-time join over the log (steps 1-4 of the module docstring)."""
    _require_spark()
    from feast.infra.offline_stores.contrib.spark_offline_store.spark import SparkOfflineStore

    if not isinstance(entity_df, pd.DataFrame):
        raise UserError("the spark offline store of homefeed takes a pandas entity frame")
    spark_config = spark_store_config(config)
    spark = session(spark_config)
    if entity_df.empty:
        min_ts = max_ts = datetime.now(timezone.utc)
    else:
        min_ts, max_ts = entity_time_range(entity_df)
    views = [spark_view(spark, fv, str(config.repo_path), min_ts, max_ts) for fv in feature_views]
    spark_repo_config = config.model_copy()
    spark_repo_config._offline_store = spark_config
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # "experimental" notice of the store
        job = SparkOfflineStore.get_historical_features(
            spark_repo_config, views, feature_refs, entity_df, registry, project,
            full_feature_names=full_feature_names,
            filter_by_created_timestamp=filter_by_created_timestamp)
    return _job_class()(spark_session=job.spark_session, query=job.query,
                        full_feature_names=job.full_feature_names, config=spark_repo_config,
                        on_demand_feature_views=job.on_demand_feature_views, metadata=job.metadata)
