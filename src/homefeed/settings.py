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
from urllib.parse import quote, unquote, urlparse

ENV_PREFIX = "HOMEFEED_"
REDIS_MODES = ("standalone", "cluster", "sentinel")


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
    # Stream processing.
    max_future_skew_ms: int = 5 * 60 * 1000
    batch_max_events: int = 5000
    batch_max_ms: int = 100
    # Redis client timeouts. The pipeline (consumer, backfill, Feast writes) waits a while and
    # retries its batch; serving answers from its cache instead of waiting (see docs/reliability.md).
    redis_timeout_ms: int = 5000
    redis_connect_timeout_ms: int = 2000
    serving_redis_timeout_ms: int = 250
    # Address the local stack's redis-server listens on. Loopback by default; any other address
    # requires REDIS_PASSWORD in the environment (the server then runs with protected mode and
    # requirepass). `host` is only where our own HTTP/metrics endpoints bind.
    redis_bind: str = "127.0.0.1"
    # Only from the environment (REDIS_PASSWORD or HOMEFEED_REDIS_PASSWORD), never from a file.
    redis_password: str = field(default="", repr=False)
    # Redis topology: standalone | cluster | sentinel. `redis_nodes` lists host:port pairs (cluster
    # startup nodes, or the sentinels); empty means REDIS_URL's host, or for a local cluster
    # `redis_cluster_size` nodes on redis_port, redis_port+1, ...
    redis_mode: str = "standalone"
    redis_nodes: str = ""
    redis_sentinel_master: str = "mymaster"
    redis_cluster_size: int = 3

    # -- derived values ---------------------------------------------------------------------
    @property
    def redis_external(self) -> bool:
        return bool(self.redis_url) or (self.redis_mode != "standalone" and bool(self.redis_nodes))

    @property
    def redis_node_list(self) -> list[tuple[str, int]]:
        """(host, port) of every Redis node clients start from (one for standalone)."""
        if self.redis_nodes:
            out = []
            for part in self.redis_nodes.split(","):
                host, _, port = part.strip().rpartition(":")
                out.append((host or "127.0.0.1", int(port)))
            return out
        if self.redis_url:
            url = urlparse(self.redis_url)
            return [(url.hostname or "localhost", url.port or 6379)]
        size = self.redis_cluster_size if self.redis_mode == "cluster" else 1
        return [(self.redis_address, self.redis_port + i) for i in range(size)]

    @property
    def kafka_external(self) -> bool:
        return bool(self.kafka_bootstrap_servers)

    @property
    def redis_address(self) -> str:
        """Where clients reach the local stack's redis-server."""
        return "127.0.0.1" if self.redis_bind in ("", "0.0.0.0", "::", "*") else self.redis_bind

    @property
    def redis_bind_is_loopback(self) -> bool:
        return self.redis_bind in ("127.0.0.1", "::1", "localhost") or self.redis_bind.startswith("127.")

    @property
    def effective_redis_url(self) -> str:
        if self.redis_url:
            return self.redis_url
        auth = f":{quote(self.redis_password, safe='')}@" if self.redis_password else ""
        return f"redis://{auth}{self.redis_address}:{self.redis_port}/0"

    @property
    def effective_kafka_bootstrap(self) -> str:
        return self.kafka_bootstrap_servers or f"{self.host}:{self.kafka_port}"

    @property
    def feast_redis_connection_string(self) -> str:
        """Feast's Redis store wants ``host:port[,host:port...],db=N,password=...,ssl=true``."""
        url = urlparse(self.effective_redis_url)
        if self.redis_mode == "standalone":
            parts = [f"{url.hostname or 'localhost'}:{url.port or 6379}"]
        else:
            parts = [f"{h}:{p}" for h, p in self.redis_node_list]
        db = (url.path or "/0").lstrip("/") or "0"
        if db != "0" and self.redis_mode == "cluster":
            raise ValueError("Redis Cluster has only database 0: drop the /N from REDIS_URL")
        if db != "0":
            parts.append(f"db={db}")
        if url.password:
            parts.append(f"password={unquote(url.password)}")
        if url.scheme == "rediss":
            parts.append("ssl=true")
        # Feast's store passes these to redis-py: no Feast write can block forever.
        parts.append(f"socket_timeout={self.redis_timeout_ms / 1000:g}")
        parts.append(f"socket_connect_timeout={self.redis_connect_timeout_ms / 1000:g}")
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
        if "redis_password" in file_values:
            raise ValueError(f"{path}: redis_password belongs in the environment (REDIS_PASSWORD), "
                             "never in a file")
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
    if env.get("REDIS_PASSWORD"):
        values["redis_password"] = env["REDIS_PASSWORD"]

    settings = Settings(**values)
    if settings.embedding_dim <= 0 or settings.sequence_length <= 0:
        raise ValueError("embedding_dim and sequence_length must be positive")
    if settings.redis_mode not in REDIS_MODES:
        raise ValueError(f"redis_mode={settings.redis_mode!r}; expected one of {REDIS_MODES}")
    return settings
