"""Redis clients, built in one place from settings, so every one of them has timeouts.

1. `pipeline_client`: the stream consumer, backfill and benchmarks. Waits up to
   `redis_timeout_ms` per call; callers retry whole batches on failure.
2. `serving_kwargs`: the ranking service's reads. A short timeout and at most one immediate
   retry (redis-py 7's default is 3 retries with backoff up to 10 s, which turns one dead Redis
   into multi-second requests); the service answers from its cache instead of waiting.

Feast's own Redis client gets the pipeline timeouts through its connection string
(`Settings.feast_redis_connection_string`).
"""

from __future__ import annotations

from homefeed.settings import Settings


def pipeline_client(settings: Settings):
    import redis

    return redis.Redis.from_url(settings.effective_redis_url,
                                socket_timeout=settings.redis_timeout_ms / 1000,
                                socket_connect_timeout=settings.redis_connect_timeout_ms / 1000)


def serving_kwargs(settings: Settings) -> dict:
    from redis.backoff import NoBackoff
    from redis.exceptions import ConnectionError
    from redis.retry import Retry

    timeout = settings.serving_redis_timeout_ms / 1000
    # One immediate retry, on a dropped connection only (a pooled socket that died with a Redis
    # restart); a timeout is not retried: the caller degrades instead.
    return {"socket_timeout": timeout, "socket_connect_timeout": timeout,
            "retry": Retry(NoBackoff(), 1, supported_errors=(ConnectionError,))}
