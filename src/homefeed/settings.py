"""Settings: the single source of connection values, ports, paths and sizes.

Precedence: environment variables > config file > defaults.

* Config file: the path in ``HOMEFEED_CONFIG``, else the first ``homefeed.toml`` found in the
  current directory or one of its parents. Keys are the field names below (flat TOML).
* Environment: ``HOMEFEED_<FIELD>`` for every field (``HOMEFEED_REDIS_PORT=16380``), plus the two
  conventional names ``REDIS_URL`` and ``KAFKA_BOOTSTRAP_SERVERS``. Setting either of those means
  "use this infrastructure": `homefeed stack up` then starts nothing for it.

Credentials belong in ``REDIS_URL`` (``redis://:password@host:port/0``) or the environment, never
in code or in the committed config file: the fields in ``SECRET_FIELDS`` are read from the
environment only, and a config file that sets one is an error.

Kafka security (a managed Kafka): ``kafka_security_protocol`` (PLAINTEXT, SSL, SASL_PLAINTEXT,
SASL_SSL), ``kafka_sasl_mechanism`` (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512, GSSAPI, AWS_MSK_IAM),
``kafka_sasl_username``, ``kafka_ssl_cafile`` / ``_certfile`` / ``_keyfile``, and the secrets
``HOMEFEED_KAFKA_SASL_PASSWORD`` and ``HOMEFEED_KAFKA_SSL_PASSWORD`` (the key's password).
`Settings.kafka_client_config()` turns them into kafka-python keyword arguments, the same for
producers, consumers and admin clients.
"""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from urllib.parse import quote, unquote, urlparse

ENV_PREFIX = "HOMEFEED_"
REDIS_MODES = ("standalone", "cluster", "sentinel")
# The variables that point Kafka clients at external brokers (a private local stack unsets them).
KAFKA_ENV = ("KAFKA_BOOTSTRAP_SERVERS", *(ENV_PREFIX + n for n in (
    "KAFKA_SECURITY_PROTOCOL", "KAFKA_SASL_MECHANISM", "KAFKA_SSL_CAFILE", "KAFKA_SSL_CERTFILE",
    "KAFKA_SSL_KEYFILE")))
# Credentials: environment only (HOMEFEED_<NAME>), never from the config file, never in repr().
SECRET_FIELDS = ("kafka_sasl_password", "kafka_ssl_password", "redis_password")
KAFKA_SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
# kafka-python's mechanisms that need no Python object in the config (OAUTHBEARER needs a token
# provider: build that client yourself).
KAFKA_SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "GSSAPI", "AWS_MSK_IAM")
POSITIVE_FIELDS = ("serving_threads", "serving_workers")  # at least 1 when set
OFFLINE_STORES = ("duckdb", "spark")  # engines of the `offline_store` setting (homefeed/offline_store/)


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
    redis_url: str = field(default="", repr=False)  # may hold a password
    kafka_bootstrap_servers: str = ""
    # Kafka client security (see the module docstring); empty = PLAINTEXT, no SASL.
    kafka_security_protocol: str = ""
    kafka_sasl_mechanism: str = ""
    kafka_sasl_username: str = ""
    kafka_sasl_password: str = field(default="", repr=False)
    kafka_sasl_kerberos_service_name: str = ""
    kafka_ssl_cafile: Path | None = None
    kafka_ssl_certfile: Path | None = None
    kafka_ssl_keyfile: Path | None = None
    kafka_ssl_password: str = field(default="", repr=False)
    # Where run files (pids, logs), the offline log and generated data live.
    home: Path = field(default_factory=_default_home)
    feature_repo: Path = field(default_factory=_default_feature_repo)
    # Feast registry: empty = a file registry under `home` (feast/registry.db) that every process
    # with this home shares; else a SQLAlchemy URL for Feast's SQL registry
    # (postgresql+psycopg://user@host/db; a password belongs in the environment variable).
    feast_registry: str = field(default="", repr=False)
    # Topics.
    actions_topic: str = "user-actions"
    pins_topic: str = "pin-upserts"
    dead_letter_topic: str = "user-actions-dlq"
    topic_partitions: int = 4
    consumer_group: str = "homefeed-sequence-builder"
    # Impressions (a pin shown to a user: homefeed.events.ImpressionEvent), keyed by user id like
    # actions, logged to `impression_events`. Empty `impressions_consumer_group`: the group above
    # reads them in the same process; a group name: their own process reads them in that group
    # (`homefeed stream consume --impressions`), so they never hold up an action batch; that
    # process's batch window is `impressions_batch_max_ms` (no one waits on an impression: fewer,
    # larger batches leave the cores to the action path).
    impressions_topic: str = "impressions"
    impressions_consumer_group: str = ""
    impressions_batch_max_ms: int = 1000
    # Feature sizes.
    embedding_dim: int = 32
    sequence_length: int = 100
    # Offline store Feast answers point-in-time queries with (homefeed/offline_store.py).
    offline_store: str = "duckdb"
    # The Spark engine (offline_store = "spark"): the master URL, and more Spark conf as
    # "key=value;key=value" (spark.executor.memory=4g;spark.sql.shuffle.partitions=64).
    spark_master: str = "local[2]"
    spark_conf: str = ""
    # Stream processing.
    max_future_skew_ms: int = 5 * 60 * 1000
    batch_max_events: int = 5000
    batch_max_ms: int = 100  # the longest a record waits (from its broker timestamp) for its batch to fill
    # `homefeed stream consume`: a process stuck this long between two steps of its loop writes every
    # thread's stack and exits for its supervisor to restart it (homefeed/stream/watchdog.py); 0: off.
    consumer_watchdog_s: float = 120.0
    # Redis client timeouts. The pipeline (consumer, backfill, Feast writes) waits a while and
    # retries its batch; serving answers from its cache instead of waiting (see docs/reliability.md).
    redis_timeout_ms: int = 5000
    redis_connect_timeout_ms: int = 2000
    serving_redis_timeout_ms: int = 100  # sized in docs/reliability.md, "Degraded, never down"
    # Serving load shedding (homefeed.serving.http.LoadShed): at most this many /rank requests in
    # flight per worker process (0: no limit); past it a 503 with Retry-After:
    # serving_retry_after_s. Sized in docs/benchmarks.md, "Overload and load shedding".
    serving_max_inflight: int = 8
    serving_retry_after_s: int = 1
    # The ranking service (bento/service.py; docs/serving.md). `model`: the BentoML model tag it
    # serves (HOMEFEED_MODEL). `rank_blend`: head weights "repin=1,click=0.25,hide=-1" (empty:
    # homefeed.serving.ranking.DEFAULT_BLEND). `pin_cache_s`: how stale a cached pin's features may
    # be, in seconds. `serving_dtype`: auto / float32 / bfloat16 ("auto": bf16 on CUDA and on CPUs
    # with native bf16, else fp32). `serving_threads`: CPU threads per worker scoring a request's
    # candidate chunks; `serving_workers`: worker processes (unset: the available CPUs / threads;
    # homefeed.serving.resources).
    model: str = "homefeed-ranker:latest"
    rank_blend: str = ""
    pin_cache_s: float = 60.0
    serving_dtype: str = "auto"
    serving_threads: int = 1
    serving_workers: int | None = None
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
    # `homefeed world fetch` (homefeed/world/fetch.py): where downloaded archives are kept
    # (default: $HOMEFEED_HOME/cache when that variable is set, else $XDG_CACHE_HOME/homefeed or
    # ~/.cache/homefeed), and a mirror URL that holds the archives under their file names
    # (empty = each archive's official URL).
    data_cache: Path | None = None
    data_mirror: str = ""

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

    def kafka_client_config(self) -> dict:
        """kafka-python keyword arguments to reach the brokers: bootstrap servers plus the
        security settings, for KafkaProducer, KafkaConsumer and KafkaAdminClient alike, e.g.
        ``KafkaConsumer(**settings.kafka_client_config(), group_id=...)``. Raises UserError
        for an inconsistent setup (a SASL mechanism without a SASL protocol, a missing
        password or certificate file)."""
        from homefeed.errors import UserError

        protocol = (self.kafka_security_protocol or "PLAINTEXT").upper()
        mechanism = self.kafka_sasl_mechanism.upper()
        if protocol not in KAFKA_SECURITY_PROTOCOLS:
            raise UserError(f"kafka_security_protocol={self.kafka_security_protocol!r}: use one of "
                            f"{', '.join(KAFKA_SECURITY_PROTOCOLS)}")
        config: dict = {"bootstrap_servers": self.effective_kafka_bootstrap, "security_protocol": protocol}
        sasl = protocol.startswith("SASL_")
        if sasl != bool(mechanism):
            raise UserError(f"Kafka security protocol {protocol} "
                            + ("needs kafka_sasl_mechanism" if sasl else
                               f"takes no SASL mechanism ({mechanism}); use SASL_SSL or SASL_PLAINTEXT"))
        if sasl:
            if mechanism not in KAFKA_SASL_MECHANISMS:
                raise UserError(f"kafka_sasl_mechanism={self.kafka_sasl_mechanism!r}: use one of "
                                f"{', '.join(KAFKA_SASL_MECHANISMS)}")
            config["sasl_mechanism"] = mechanism
            if mechanism in ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"):
                if not self.kafka_sasl_username or not self.kafka_sasl_password:
                    raise UserError(f"SASL {mechanism} needs kafka_sasl_username (HOMEFEED_KAFKA_SASL_USERNAME "
                                    "or homefeed.toml) and HOMEFEED_KAFKA_SASL_PASSWORD in the environment")
                config["sasl_plain_username"] = self.kafka_sasl_username
                config["sasl_plain_password"] = self.kafka_sasl_password
            if mechanism == "GSSAPI" and self.kafka_sasl_kerberos_service_name:
                config["sasl_kerberos_service_name"] = self.kafka_sasl_kerberos_service_name
        ssl_files = {"ssl_cafile": self.kafka_ssl_cafile, "ssl_certfile": self.kafka_ssl_certfile,
                     "ssl_keyfile": self.kafka_ssl_keyfile}
        if any(ssl_files.values()) and not protocol.endswith("SSL"):
            raise UserError(f"Kafka SSL files are set but the security protocol is {protocol}; "
                            "use SSL or SASL_SSL")
        for key, path in ssl_files.items():
            if path is not None:
                if not Path(path).is_file():
                    raise UserError(f"kafka_{key}={path} is not a file")
                config[key] = str(path)
        if self.kafka_ssl_password:
            config["ssl_password"] = self.kafka_ssl_password
        return config

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
    def spark_conf_map(self) -> dict[str, str]:
        """The Spark session conf of the spark offline store: homefeed's defaults (UTC session
        time zone, Arrow transfers, no UI), the master, then `spark_conf` on top."""
        conf = {"spark.master": self.spark_master, "spark.app.name": "homefeed-offline",
                "spark.sql.session.timeZone": "UTC", "spark.ui.enabled": "false",
                "spark.ui.showConsoleProgress": "false",
                "spark.sql.execution.arrow.pyspark.enabled": "true"}
        local = re.fullmatch(r"local\[(\d+)\]", self.spark_master.strip())
        if local:  # Spark's 200 shuffle partitions are for a cluster; one per local core here
            conf["spark.sql.shuffle.partitions"] = local.group(1)
        for part in self.spark_conf.replace("\n", ";").split(";"):
            if part.strip():
                key, sep, value = part.partition("=")
                if not sep or not key.strip():
                    raise ValueError(f"spark_conf entry {part.strip()!r} is not key=value")
                conf[key.strip()] = value.strip()
        return conf

    @property
    def run_dir(self) -> Path:
        return self.home / "run"

    @property
    def feast_registry_path(self) -> Path:
        """The default (file) Feast registry, shared by everything using this home."""
        return self.home / "feast" / "registry.db"

    @property
    def gx_output_dir(self) -> Path:
        """Great Expectations' run-time output: stored validation results and Data Docs."""
        return self.home / "validation"

    @property
    def offline_dir(self) -> Path:
        """Root of the partitioned parquet log that Feast's batch sources read."""
        return self.home / "offline"

    def local_kafka(self, **changes) -> "Settings":
        """These settings pointed at a local, plaintext broker (a private stack): no external
        bootstrap servers and no security settings."""
        return self.replace(kafka_bootstrap_servers="", kafka_security_protocol="", kafka_sasl_mechanism="",
                            kafka_ssl_cafile=None, kafka_ssl_certfile=None, kafka_ssl_keyfile=None,
                            **changes)

    def replace(self, **changes) -> "Settings":
        return dataclasses.replace(self, **changes)


def _coerce(name: str, raw, kind):
    try:
        if kind is Path:
            return Path(raw).expanduser().resolve()
        if kind is int:
            return int(raw)
        if kind is float:
            return float(raw)
        return str(raw)
    except (TypeError, ValueError):
        raise ValueError(f"setting {name}={raw!r} ({ENV_PREFIX}{name.upper()}) is not a valid "
                         f"{kind.__name__}") from None


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
    types = {f.name: {"int": int, "int | None": int, "float": float, "str": str, "Path": Path,
                      "Path | None": Path}[f.type]
             for f in fields(Settings)}
    values: dict[str, object] = {}

    path = config_file if config_file is not None else find_config_file()
    if path is not None:
        with open(path, "rb") as fh:
            file_values = tomllib.load(fh)
        unknown = sorted(set(file_values) - set(types))
        if unknown:
            raise ValueError(f"{path}: unknown setting(s) {unknown}; known: {sorted(types)}")
        secrets = sorted(set(file_values) & set(SECRET_FIELDS))
        if secrets:
            raise ValueError(f"{path}: {', '.join(secrets)} is a credential: set "
                             f"{', '.join(ENV_PREFIX + n.upper() for n in secrets)} in the "
                             "environment, not in the config file")
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
    for name in POSITIVE_FIELDS:
        value = getattr(settings, name)
        if value is not None and value < 1:
            raise ValueError(f"setting {name}={value} ({ENV_PREFIX}{name.upper()}) must be a positive integer")
    if settings.redis_mode not in REDIS_MODES:
        raise ValueError(f"redis_mode={settings.redis_mode!r}; expected one of {REDIS_MODES}")
    if settings.offline_store not in OFFLINE_STORES:
        raise ValueError(f"setting offline_store={settings.offline_store!r} is not one of "
                         f"{', '.join(OFFLINE_STORES)} (Feast's file/dask store is not offered: it "
                         "picks the wrong row when two feature rows share an event time)")
    settings.spark_conf_map  # a malformed spark_conf fails here, not at the first query
    return settings
