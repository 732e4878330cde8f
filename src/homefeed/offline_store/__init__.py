"""The offline store Feast answers point-in-time queries with: one store, two engines.

feature_repo/feature_store.yaml names ``homefeed.offline_store.HomefeedOfflineStore``; the
feature views' batch sources are ``FileSource``s over the partitioned parquet log
(homefeed.offline_log), whichever engine answers. The ``offline_store`` setting
(``HOMEFEED_OFFLINE_STORE``) picks the engine when a store is opened:

* ``duckdb`` (default, embedded): Feast's DuckDB offline store (homefeed.offline_store.duckdb);
* ``spark`` (distributed): Feast's Spark offline store (homefeed.offline_store.spark), on the
  Spark master and conf of the ``spark_master`` / ``spark_conf`` settings (``local[2]`` by
  default); installed with ``pip install -e '.[spark]'`` plus a Java runtime.

1. Both engines read only what a call's entity rows can use (homefeed.offline_store.reading):
   the log partitions in range, and of the history before the call's oldest row only each key's
   newest row.
2. Both run Feast's own point-in-time join (newest row by event time, then created time; with
   ``filter_by_created_timestamp`` only rows created by the entity time) and hand back the same
   frame: UTC timestamps, one column per feature. tests/test_offline_parity.py builds one
   dataset with each and compares them cell for cell.

Pulls for materialization (``feast materialize``) and offline writes run on DuckDB with either
engine: the online store is fed by the stream consumer, so they are not on the training path.
"""

from __future__ import annotations

from typing import Dict, Literal, Optional

from feast.infra.offline_stores.duckdb import DuckDBOfflineStore, DuckDBOfflineStoreConfig
from pydantic import Field

from homefeed.offline_store import duckdb as _duckdb
from homefeed.settings import load_settings


def _engine_from_settings() -> str:
    return load_settings().offline_store


def _spark_conf_from_settings() -> Dict[str, str]:
    return load_settings().spark_conf_map


class HomefeedOfflineStoreConfig(DuckDBOfflineStoreConfig):
    type: Literal["homefeed.offline_store.HomefeedOfflineStore"] = (
        "homefeed.offline_store.HomefeedOfflineStore"
    )
    engine: Literal["duckdb", "spark"] = Field(default_factory=_engine_from_settings)
    """duckdb (embedded) or spark; defaults to the offline_store setting"""
    spark_conf: Optional[Dict[str, str]] = Field(default_factory=_spark_conf_from_settings)
    """the Spark session conf (engine spark); defaults to the spark_master / spark_conf settings"""


class HomefeedOfflineStore(DuckDBOfflineStore):
    """Point-in-time retrieval over the parquet log by the configured engine."""

    @staticmethod
    def get_historical_features(config, feature_views, feature_refs, entity_df, registry, project,
                                full_feature_names: bool = False,
                                filter_by_created_timestamp: bool = False, **kwargs):
        if getattr(config.offline_store, "engine", "duckdb") == "spark":
            from homefeed.offline_store import spark

            return spark.get_historical_features(
                config, feature_views, feature_refs, entity_df, registry, project,
                full_feature_names=full_feature_names,
                filter_by_created_timestamp=filter_by_created_timestamp)
        return _duckdb.get_historical_features(
            config, feature_views, feature_refs, entity_df, registry, project,
            full_feature_names=full_feature_names,
            filter_by_created_timestamp=filter_by_created_timestamp)
