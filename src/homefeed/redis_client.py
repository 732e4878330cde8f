"""Redis clients, built in one place from settings, so every one of them has timeouts and the
right topology (standalone, cluster or sentinel: `Settings.redis_mode`).

1. `make_client(settings, timeout_s, **extra)`: the one factory. Standalone: `redis.Redis`;
   cluster: `RedisCluster` over `redis_node_list`; sentinel: the master of
   `redis_sentinel_master` found through the sentinels. Password and TLS come from REDIS_URL /
   REDIS_PASSWORD (the environment).
2. `pipeline_client`: the stream consumer, backfill, status and benchmarks. Waits up to
   `redis_timeout_ms` per call; callers retry whole batches on failure.
3. `serving_kwargs`: the ranking service's reads. A short timeout and at most one immediate
   retry (redis-py 7's default is 3 retries with backoff up to 10 s, which turns one dead Redis
   into multi-second requests); the service answers from its cache instead of waiting.
4. `healthy`: PING with a short timeout, for `homefeed stack`.

Feast's own Redis client gets the same topology and the pipeline timeouts through its online store
config (`homefeed.feature_store`: `redis_type` and `Settings.feast_redis_connection_string`).
Keys that must be read or written together live in one hash slot: every per-user key is one key.
"""

from __future__ import annotations

from urllib.parse import unquote, urlparse

from homefeed.settings import Settings


def _auth(settings: Settings) -> dict:
    url = urlparse(settings.effective_redis_url)
    out: dict = {}
    if url.password:
        out["password"] = unquote(url.password)
    if url.username:
        out["username"] = unquote(url.username)
    if url.scheme == "rediss":
        out["ssl"] = True
    return out


def make_client(settings: Settings, timeout_s: float, connect_timeout_s: float | None = None, **extra):
    import redis

    timeouts = {"socket_timeout": timeout_s,
                "socket_connect_timeout": timeout_s if connect_timeout_s is None else connect_timeout_s}
    if settings.redis_mode == "cluster":
        from redis.cluster import ClusterNode, RedisCluster

        nodes = [ClusterNode(h, p) for h, p in settings.redis_node_list]
        return RedisCluster(startup_nodes=nodes, **_auth(settings), **timeouts, **extra)
    if settings.redis_mode == "sentinel":
        from redis.sentinel import Sentinel

        sentinel = Sentinel(settings.redis_node_list, sentinel_kwargs=timeouts, **_auth(settings), **timeouts)
        return sentinel.master_for(settings.redis_sentinel_master, **extra)
    return redis.Redis.from_url(settings.effective_redis_url, **timeouts, **extra)


def pipeline_client(settings: Settings):
    return make_client(settings, settings.redis_timeout_ms / 1000, settings.redis_connect_timeout_ms / 1000)


def serving_kwargs(settings: Settings) -> dict:
    from redis.backoff import NoBackoff
    from redis.exceptions import ConnectionError
    from redis.retry import Retry

    # One immediate retry, on a dropped connection only (a pooled socket that died with a Redis
    # restart); a timeout is not retried: the caller degrades instead.
    return {"retry": Retry(NoBackoff(), 1, supported_errors=(ConnectionError,))}


def serving_client(settings: Settings):
    return make_client(settings, settings.serving_redis_timeout_ms / 1000, **serving_kwargs(settings))


def healthy(settings: Settings, timeout_s: float = 0.5) -> bool:
    import redis

    try:
        client = make_client(settings, timeout_s)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except (redis.RedisError, OSError):
        return False
