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
5. `KeyScript`: a one-key Lua script run for many keys in one round trip per Redis node (the
   consumer's state compare-and-set, the engagement counters).

Feast's own Redis client gets the same topology and the pipeline timeouts through its online store
config (`homefeed.feature_store`: `redis_type` and `Settings.feast_redis_connection_string`).
Keys that must be read or written together live in one hash slot: every per-user key is one key.
"""

from __future__ import annotations

from collections import defaultdict
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


class KeyScript:
    """A Lua script that touches one key, run for many (key, args) calls, pipelined per Redis
    node: a cluster client's own pipeline refuses scripts, and each key lives on one node. The
    script is registered once per node connection."""

    def __init__(self, redis_client, source: str):
        self.redis = redis_client
        self.source = source
        self._registered: dict = {}

    def run(self, calls: list[tuple[str, list]]) -> list:
        """The script's reply for each (key, args), in order."""
        groups: dict = defaultdict(list)
        if hasattr(self.redis, "get_node_from_key"):  # RedisCluster
            for i, (key, _) in enumerate(calls):
                groups[self.redis.get_node_from_key(key).name].append(i)
            clients = {name: self.redis.get_node(node_name=name).redis_connection for name in groups}
        else:
            groups["single"] = list(range(len(calls)))
            clients = {"single": self.redis}
        out: list = [None] * len(calls)
        for name, idx in groups.items():
            client = clients[name]
            script = self._registered.get(name)
            if script is None or script.registered_client is not client:
                script = self._registered[name] = client.register_script(self.source)
            pipe = client.pipeline(transaction=False)
            for i in idx:
                script(keys=[calls[i][0]], args=calls[i][1], client=pipe)
            for i, reply in zip(idx, pipe.execute()):
                out[i] = reply
        return out


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
