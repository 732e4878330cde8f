"""Friendly failures when Redis or Kafka is down: one line, in about a second, exit 2.

Client libraries retry a dead service for 20-40 s and then raise a traceback (redis-py's
backoff, kafka-python's bootstrap and metadata timeouts). The CLI avoids both:

1. A command declares the services it talks to (``parser.set_defaults(needs=("kafka",))``);
   `require` opens a TCP connection to each one's configured address (1 s timeout) before the
   command runs and raises `ServiceUnavailable` naming the service, the address and what to do
   (`homefeed stack up`, or the environment variable that points at your own service).
2. A service that goes away while a command runs surfaces as the client library's connection
   error; `translate` turns those into the same `ServiceUnavailable` (`homefeed.cli` calls it
   on any exception a command raises).
"""

from __future__ import annotations

import socket
import sys
from urllib.parse import urlparse

from homefeed.errors import ServiceUnavailable

REDIS, KAFKA = "redis", "kafka"
CONNECT_TIMEOUT_S = 1.0


def redis_address(settings) -> str:
    """host:port of the configured Redis (never the password)."""
    url = urlparse(settings.effective_redis_url)
    return f"{url.hostname or 'localhost'}:{url.port or 6379}"


def kafka_addresses(settings) -> list[str]:
    return [a.strip() for a in settings.effective_kafka_bootstrap.split(",") if a.strip()]


def _hint(service: str, settings) -> str:
    if service == REDIS:
        if settings.redis_external:
            return "check REDIS_URL (it points at this server)"
        return "start the local stack with `homefeed stack up`, or set REDIS_URL to your Redis"
    if settings.kafka_external:
        return "check KAFKA_BOOTSTRAP_SERVERS (it points at these brokers)"
    return ("start the local stack with `homefeed stack up`, or set KAFKA_BOOTSTRAP_SERVERS "
            "to your Kafka brokers")


def _label(service: str) -> str:
    return "Redis" if service == REDIS else "Kafka"


def _connect(address: str, timeout: float) -> str | None:
    """None when a TCP connection to host:port opens, else the reason it did not."""
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]") or "localhost", int(port)), timeout=timeout):
            return None
    except ValueError:
        return f"{address!r} is not host:port"
    except socket.timeout:
        return f"no answer within {timeout:g} s"
    except OSError as exc:
        return exc.strerror or type(exc).__name__


def unavailable(service: str, settings, reason: str) -> ServiceUnavailable:
    address = redis_address(settings) if service == REDIS else ",".join(kafka_addresses(settings))
    return ServiceUnavailable(_label(service), address, reason, _hint(service, settings))


def require(services, settings=None, timeout: float = CONNECT_TIMEOUT_S) -> None:
    """Raise ServiceUnavailable for the first of `services` ("redis", "kafka") that does not
    accept a TCP connection. Kafka needs one reachable bootstrap server."""
    if not services:
        return
    if settings is None:
        from homefeed.settings import load_settings

        settings = load_settings()
    for service in services:
        if service == REDIS:
            if urlparse(settings.effective_redis_url).scheme == "unix":
                continue
            reason = _connect(redis_address(settings), timeout)
        elif service == KAFKA:
            reasons = [_connect(a, timeout) for a in kafka_addresses(settings)] or ["no address"]
            reason = None if any(r is None for r in reasons) else reasons[0]
        else:
            raise ValueError(f"unknown service {service!r}")
        if reason is not None:
            raise unavailable(service, settings, reason)


def translate(exc: BaseException, settings=None) -> ServiceUnavailable | None:
    """The ServiceUnavailable for a Redis or Kafka client connection error, else None.
    Looks only at client modules already imported (no import cost for other errors)."""
    service = None
    redis_exc = sys.modules.get("redis.exceptions")
    kafka_errors = sys.modules.get("kafka.errors")
    if redis_exc is not None and isinstance(exc, (redis_exc.ConnectionError, redis_exc.TimeoutError)):
        service = REDIS
    elif kafka_errors is not None and isinstance(exc, (
            kafka_errors.KafkaConnectionError, kafka_errors.KafkaTimeoutError,
            kafka_errors.NodeNotReadyError, kafka_errors.MetadataEmptyBrokerList)):
        service = KAFKA
    if service is None:
        return None
    if settings is None:
        from homefeed.settings import load_settings

        try:
            settings = load_settings()
        except (ValueError, OSError):
            return None
    reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return unavailable(service, settings, reason[:200])
