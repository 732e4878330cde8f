"""Settings: the single source of connection values, ports, paths and sizes.

Precedence: environment variables > config file > defaults.

* Config file: the path in ``HOMEFEED_CONFIG``, else the first ``homefeed.toml`` found in the
  current directory or one of its parents. Keys are the field names below (flat TOML).
* Environment: ``HOMEFEED_<FIELD>`` for every field (``HOMEFEED_REDIS_PORT=16380``), plus the two
  conventional names ``REDIS_URL`` and ``KAFKA_BOOTSTRAP_SERVERS``. Setting either of those means
  "use this infrastructure": `homefeed stack up` then starts nothing for it.

Credentials belong in ``REDIS_URL`` (``redis://:password@host:port/0``) or the environment, never
in code or in the committed config file.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from urllib.parse import urlparse

ENV_PREFIX = "HOMEFEED_"
OFFLINE_STORES = ("duckdb",)  # engines of the `offline_store` setting this version ships


# The source checkout (editable install); installed elsewhere, set HOMEFEED_FEATURE_REPO.
SOURCE_ROOT = Path(__file__).resolve().parents[2]


def _default_home() -> Path:
    return Path.cwd() / ".homefeed"


def _default_feature_repo() -> Path:
    return SOURCE_ROOT / "feature_repo"


@dataclass(frozen=True)
class Settings:
    # Local stack: ports the project's own redis-server and broker listen on.
    host: str = "127.0.0.1"
    redis_port: int = 16379
    kafka_port: int = 19092
    # External infrastructure; empty means "the local stack".
    redis_url: str = ""
    kafka_bootstrap_servers: str = ""
    # Where run files (pids, logs), the offline log and generated data live.
    home: Path = field(default_factory=_default_home)
    feature_repo: Path = field(default_factory=_default_feature_repo)
    # Topics.
    actions_topic: str = "user-actions"
    pins_topic: str = "pin-upserts"
    dead_letter_topic: str = "user-actions-dlq"
    topic_partitions: int = 4
    consumer_group: str = "homefeed-sequence-builder"
    # Feature sizes.
    embedding_dim: int = 32
    sequence_length: int = 100
    # Offline store Feast answers point-in-time queries with (homefeed/offline_store.py).
    offline_store: str = "duckdb"
    # Stream processing.
    max_future_skew_ms: int = 5 * 60 * 1000
    batch_max_events: int = 5000
    batch_max_ms: int = 100

    # -- derived values ---------------------------------------------------------------------
    @property
    def redis_external(self) -> bool:
        return bool(self.redis_url)

    @property
    def kafka_external(self) -> bool:
        return bool(self.kafka_bootstrap_servers)

    @property
    def effective_redis_url(self) -> str:
        return self.redis_url or f"redis://{self.host}:{self.redis_port}/0"

    @property
    def effective_kafka_bootstrap(self) -> str:
        return self.kafka_bootstrap_servers or f"{self.host}:{self.kafka_port}"

    @property
    def feast_redis_connection_string(self) -> str:
        """Feast's Redis store wants ``host:port,db=N,password=...,ssl=true``, not a URL."""
        url = urlparse(self.effective_redis_url)
        parts = [f"{url.hostname or 'localhost'}:{url.port or 6379}"]
        db = (url.path or "/0").lstrip("/") or "0"
        if db != "0":
            parts.append(f"db={db}")
        if url.password:
            parts.append(f"password={url.password}")
        if url.scheme == "rediss":
            parts.append("ssl=true")
        return ",".join(parts)

    @property
    def run_dir(self) -> Path:
        return self.home / "run"

    @property
    def offline_dir(self) -> Path:
        """Root of the partitioned parquet log that Feast's batch sources read."""
        return self.home / "offline"

    def replace(self, **changes) -> "Settings":
        return dataclasses.replace(self, **changes)


def _coerce(name: str, raw, kind):
    try:
        if kind is Path:
            return Path(raw).expanduser().resolve()
        if kind is int:
            return int(raw)
        return str(raw)
    except (TypeError, ValueError):
        raise ValueError(f"setting {name}={raw!r} is not a valid {kind.__name__}") from None


def find_config_file(start: Path | None = None) -> Path | None:
    explicit = os.environ.get(ENV_PREFIX + "CONFIG")
    if explicit:
        path = Path(explicit).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"HOMEFEED_CONFIG points to {path}, which is not a file")
        return path
    here = (start or Path.cwd()).resolve()
    for directory in (here, *here.parents):
        candidate = directory / "homefeed.toml"
        if candidate.is_file():
            return candidate
    return None


def load_settings(env: dict[str, str] | None = None, config_file: Path | None = None) -> Settings:
    env = os.environ if env is None else env
    types = {f.name: {"int": int, "str": str, "Path": Path}[f.type] for f in fields(Settings)}
    values: dict[str, object] = {}

    path = config_file if config_file is not None else find_config_file()
    if path is not None:
        with open(path, "rb") as fh:
            file_values = tomllib.load(fh)
        unknown = sorted(set(file_values) - set(types))
        if unknown:
            raise ValueError(f"{path}: unknown setting(s) {unknown}; known: {sorted(types)}")
        for name, raw in file_values.items():
            if types[name] is Path:  # relative to the config file, not to wherever we run from
                raw = (path.parent / str(raw)).resolve()
            values[name] = _coerce(name, raw, types[name])

    for name, kind in types.items():
        raw = env.get(ENV_PREFIX + name.upper())
        if raw is not None and raw != "":
            values[name] = _coerce(name, raw, kind)
    if env.get("REDIS_URL"):
        values["redis_url"] = env["REDIS_URL"]
    if env.get("KAFKA_BOOTSTRAP_SERVERS"):
        values["kafka_bootstrap_servers"] = env["KAFKA_BOOTSTRAP_SERVERS"]

    settings = Settings(**values)
    if settings.embedding_dim <= 0 or settings.sequence_length <= 0:
        raise ValueError("embedding_dim and sequence_length must be positive")
    if settings.offline_store not in OFFLINE_STORES:
        raise ValueError(f"setting offline_store={settings.offline_store!r} is not one of "
                         f"{', '.join(OFFLINE_STORES)} (Feast's file/dask store is not offered: it "
                         "picks the wrong row when two feature rows share an event time)")
    return settings
