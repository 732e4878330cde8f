"""Feast glue: the settings-driven Redis online store, opening the store, applying the repo.

feature_repo/feature_store.yaml names ``homefeed.feature_store.HomefeedRedisOnlineStore`` as its
online store type. It is Feast's own Redis store; the only difference is that its connection
string, ``redis_type`` (standalone / cluster / sentinel) and sentinel master default to homefeed
settings (``REDIS_URL``, ``HOMEFEED_REDIS_MODE``, ... or the local stack's ports), so the YAML holds
no second copy of them and plain ``feast apply`` works on a fresh clone. The offline store
(point-in-time training data) is homefeed.offline_store: DuckDB or Spark over the log.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from pathlib import Path
from typing import Literal

from feast.infra.online_stores.redis import RedisOnlineStore, RedisOnlineStoreConfig, RedisType
from pydantic import Field, StrictStr

from homefeed.errors import UserError
from homefeed.settings import load_settings

log = logging.getLogger(__name__)

def _connection_from_settings() -> str:
    return load_settings().feast_redis_connection_string


def _redis_type_from_settings() -> RedisType:
    return {"standalone": RedisType.redis, "cluster": RedisType.redis_cluster,
            "sentinel": RedisType.redis_sentinel}[load_settings().redis_mode]


def _sentinel_master_from_settings() -> str:
    return load_settings().redis_sentinel_master


class HomefeedRedisOnlineStoreConfig(RedisOnlineStoreConfig):
    type: Literal["homefeed.feature_store.HomefeedRedisOnlineStore"] = (
        "homefeed.feature_store.HomefeedRedisOnlineStore"
    )
    connection_string: StrictStr = Field(default_factory=_connection_from_settings)
    redis_type: RedisType = Field(default_factory=_redis_type_from_settings)
    sentinel_master: StrictStr = Field(default_factory=_sentinel_master_from_settings)


class HomefeedRedisOnlineStore(RedisOnlineStore):
    """Feast's RedisOnlineStore, configured from homefeed settings."""


def feature_repo_path() -> Path:
    return load_settings().feature_repo


def repo_project(repo_path: Path | None = None) -> str:
    """The Feast project a repo declares (without opening the store)."""
    import yaml

    path = Path(repo_path) if repo_path else feature_repo_path()
    return str(yaml.safe_load((path / "feature_store.yaml").read_text())["project"])


def open_store(repo_path: Path | None = None):
    """The FeatureStore every stage uses (pipeline, training, serving)."""
    from feast import FeatureStore

    path = Path(repo_path) if repo_path else feature_repo_path()
    if not (path / "feature_store.yaml").is_file():
        raise UserError(f"no feature_store.yaml in {path}; set HOMEFEED_FEATURE_REPO")
    return FeatureStore(repo_path=str(path))


def apply_repo(repo_path: Path | None = None) -> list[str]:
    """Programmatic `feast apply`: registers every object the repo defines."""
    from feast.repo_operations import apply_total, cli_check_repo

    path = Path(repo_path) if repo_path else feature_repo_path()
    # Feast imports the repo's files as top-level modules ("definitions"); a module cached from an
    # earlier apply in this process would register that apply's settings (paths, Kafka servers).
    for py in path.glob("*.py"):
        sys.modules.pop(py.stem, None)
    store = open_store(path)
    cli_check_repo(path, path / "feature_store.yaml")
    with contextlib.redirect_stdout(sys.stderr):  # Feast prints progress; keep stdout for results
        apply_total(store.config, path, skip_source_validation=False)
    names = sorted(fv.name for fv in open_store(path).list_feature_views())
    log.info("applied feature repo %s: feature views %s", path, names)
    return names
