"""Feast glue: the settings-driven Redis online store, opening the store, applying the repo.

feature_repo/feature_store.yaml names ``homefeed.feature_store.HomefeedRedisOnlineStore`` as its
online store type. It is Feast's own Redis store; the only difference is that its connection
string, ``redis_type`` (standalone / cluster / sentinel) and sentinel master default to homefeed
settings (``REDIS_URL``, ``HOMEFEED_REDIS_MODE``, ... or the local stack's ports), so the YAML holds
no second copy of them and plain ``feast apply`` works on a fresh clone. The offline store
(point-in-time training data) is homefeed.offline_store: DuckDB or Spark over the log.

The registry is one per HOMEFEED_HOME, shared by every process and container that uses that home:

1. `registry_config` picks it from settings: a file registry at ``$HOMEFEED_HOME/feast/registry.db``
   by default, Feast's SQL registry when ``feast_registry`` (``HOMEFEED_FEAST_REGISTRY``) holds a
   SQLAlchemy URL (``postgresql+psycopg://user@db/feast``; the password from the environment).
2. `open_store` builds the FeatureStore from feature_store.yaml with that registry, and refuses, in
   one line, a registry nothing has been applied to (instead of Feast's FeatureViewNotFound later).
3. `apply_repo` (`homefeed feast apply`) registers the repo's objects there, once for all.
4. Feast's own commands (`feast apply`, `plan`, `ui`, `serve`, ...) find the same registry:
   feature_store.yaml says ``registry_type: homefeed``, which `HomefeedRegistryConfig` turns into
   `registry_config`'s block. Feast expands ``${VAR}`` in the YAML from the environment only, so a
   path there cannot follow homefeed.toml or the default home; and Feast's registry types are a
   fixed table (``feast.repo_config.REGISTRY_CLASS_FOR_TYPE``), to which importing this module
   adds ``homefeed``. Feast imports this module while it validates the YAML (the online store
   type), before it reads the registry block.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import sys
from pathlib import Path
from typing import Literal

from feast.infra.online_stores.redis import RedisOnlineStore, RedisOnlineStoreConfig, RedisType
from feast.infra.registry.file import FileRegistryStore
from feast.infra.registry.sql import SqlRegistryConfig
from feast.repo_config import REGISTRY_CLASS_FOR_TYPE
from pydantic import Field, StrictStr, model_validator

from homefeed import feast_compat  # noqa: F401  (after Feast: undoes its metrics side effect)
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


def registry_config(settings=None) -> dict:
    """Feast's `registry:` block for these settings (see the module docstring)."""
    s = settings or load_settings()
    common = {"cache_ttl_seconds": 60}
    if s.feast_registry:
        return {"registry_type": "sql", "path": s.feast_registry, **common}
    return {"registry_type": "file", "path": str(s.feast_registry_path),
            "registry_store_type": f"{__name__}.{HomefeedFileRegistryStore.__name__}", **common}


class HomefeedFileRegistryStore(FileRegistryStore):
    """Feast's file registry store, which also creates the home (Feast's creates only the
    registry file's own directory)."""

    def update_registry_proto(self, registry_proto) -> None:
        self._filepath.parent.mkdir(parents=True, exist_ok=True)
        super().update_registry_proto(registry_proto)


class HomefeedRegistryConfig(SqlRegistryConfig):
    """``registry_type: homefeed`` in feature_store.yaml: the registry of homefeed settings, so
    plain `feast` commands use the same one as every `homefeed` command run from the same
    directory (HOMEFEED_HOME, HOMEFEED_FEAST_REGISTRY, homefeed.toml or the default home). It
    becomes a file or a SQL registry config (this class has the fields of both); other keys in
    the YAML block are refused."""

    @model_validator(mode="before")
    @classmethod
    def _from_settings(cls, values):
        if not isinstance(values, dict) or values.get("registry_type", "homefeed") != "homefeed":
            return values
        extra = sorted(set(values) - {"registry_type"})
        if extra:
            raise ValueError(f"registry_type: homefeed takes its registry from homefeed settings "
                             f"(HOMEFEED_HOME, HOMEFEED_FEAST_REGISTRY); remove {', '.join(extra)}")
        return registry_config()


# Feast looks `registry_type` up in this table and builds the config from "<entry>Config":
# HomefeedRegistryConfig. No class "HomefeedRegistry" is needed: FeatureStore then picks Feast's
# file or SQL registry from the config's resolved type.
REGISTRY_CLASS_FOR_TYPE.setdefault("homefeed", f"{__name__}.HomefeedRegistry")


def copy_registry(source, target) -> None:
    """Give `target`'s home the Feast registry applied for `source` (settings of two homes on
    the same stack): a file registry is one per home; a SQL registry is already shared."""
    if source.feast_registry or source.feast_registry_path == target.feast_registry_path:
        return
    target.feast_registry_path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(source.feast_registry_path, target.feast_registry_path)


def _describe_registry(registry: dict) -> str:
    if registry["registry_type"] == "file":
        return f"at {registry['path']}"
    return f"in {registry['path'].split('@')[-1]} (HOMEFEED_FEAST_REGISTRY)"  # no password in logs


def check_registry_file(path: Path) -> None:
    """A file registry that does not parse (truncated, overwritten) is one line naming the file
    and the command that rebuilds it, not a protobuf traceback in every process that opens it."""
    from feast.protos.feast.core.Registry_pb2 import Registry as RegistryProto
    from google.protobuf.message import DecodeError

    try:
        RegistryProto().ParseFromString(path.read_bytes())
    except (DecodeError, OSError) as exc:
        raise UserError(f"the Feast registry {path} is corrupt or unreadable ({type(exc).__name__}: "
                        f"{exc}); rebuild it with `homefeed feast apply`") from None


def set_aside_corrupt_registry(registry: dict) -> Path | None:
    """`homefeed feast apply` rebuilds a corrupt file registry: the bad file is kept beside it
    (`registry.db.corrupt-<epoch s>`) for a post-mortem. Returns where it went (None: nothing to do)."""
    import time

    path = Path(registry["path"])
    if registry["registry_type"] != "file" or not path.is_file():
        return None
    try:
        check_registry_file(path)
        return None
    except UserError:
        aside = path.with_name(f"{path.name}.corrupt-{int(time.time())}")
        path.replace(aside)
        log.warning("the Feast registry %s was corrupt: moved to %s; applying the repo afresh", path, aside)
        return aside


def open_store(repo_path: Path | None = None, *, require_applied: bool = True):
    """The FeatureStore every stage uses (pipeline, training, serving), on the shared registry.
    Raises UserError when nothing has been applied to that registry (unless `require_applied`
    is false: `apply_repo` opens it to apply)."""
    import yaml
    from feast import FeatureStore
    from feast.repo_config import RepoConfig

    path = Path(repo_path) if repo_path else feature_repo_path()
    yaml_path = path / "feature_store.yaml"
    if not yaml_path.is_file():
        raise UserError(f"no feature_store.yaml in {path}; set HOMEFEED_FEATURE_REPO")
    settings = load_settings()
    registry = registry_config(settings)
    if registry["registry_type"] == "file":
        if require_applied and not Path(registry["path"]).is_file():
            raise UserError(f"no Feast registry {_describe_registry(registry)}: nothing has been "
                            f"applied for HOMEFEED_HOME={settings.home}; run `homefeed feast apply` first")
        if require_applied:
            check_registry_file(Path(registry["path"]))
    raw = yaml.safe_load(os.path.expandvars(yaml_path.read_text()))  # as Feast reads it
    raw["registry"] = registry
    store = FeatureStore(repo_path=str(path), config=RepoConfig(repo_path=path, **raw))
    if require_applied and registry["registry_type"] != "file" and not store.list_feature_views():
        raise UserError(f"no feature views in the Feast registry {_describe_registry(registry)}: "
                        "nothing has been applied; run `homefeed feast apply` first")
    return store


def apply_repo(repo_path: Path | None = None) -> list[str]:
    """Programmatic `feast apply`: registers every object the repo defines."""
    from feast.repo_operations import apply_total, cli_check_repo

    path = Path(repo_path) if repo_path else feature_repo_path()
    # Feast imports the repo's files as top-level modules ("definitions"); a module cached from an
    # earlier apply in this process would register that apply's settings (paths, Kafka servers).
    for py in path.glob("*.py"):
        sys.modules.pop(py.stem, None)
    set_aside_corrupt_registry(registry_config())
    store = open_store(path, require_applied=False)
    cli_check_repo(path, path / "feature_store.yaml")
    with contextlib.redirect_stdout(sys.stderr):  # Feast prints progress; keep stdout for results
        apply_total(store.config, path, skip_source_validation=False)
    names = sorted(fv.name for fv in open_store(path).list_feature_views())
    log.info("applied feature repo %s to the registry %s: feature views %s", path,
             _describe_registry(registry_config()), names)
    return names
