"""Produce a request's events and wait for the broker's acknowledgement, without ever hanging.

1. The Kafka producer is made on first use (a broker that is down at start-up is a 503, not a
   crash) with acks from all in-sync replicas and idempotence on, and with bounded waits: metadata
   (`max_block_ms`), one request (`request_timeout_ms`), one record end to end
   (`delivery_timeout_ms`).
2. `send(topic, records)` hands the records to the producer (on a worker thread until the
   producer has the topic's metadata: kafka-python's send blocks while fetching it) and awaits
   every acknowledgement on the event loop.
3. Any broker failure raises `BrokerUnavailable`, drops the producer (a fresh one is made on the
   next call) and opens a short breaker: for `retry_after_s` requests fail at once (the API
   answers 503 with Retry-After) instead of each waiting out the delivery timeout.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time

import anyio

from homefeed.settings import Settings

log = logging.getLogger(__name__)

# Bounded waits (ms): how long a request can take when the broker is gone.
MAX_BLOCK_MS = 1000
REQUEST_TIMEOUT_MS = 1500
DELIVERY_TIMEOUT_MS = 2500
RETRY_AFTER_S = 1


class BrokerUnavailable(RuntimeError):
    """The broker did not acknowledge (down, unreachable, timed out)."""


def producer_config(**overrides) -> dict:
    """What the API's producer sets on top of the project's (`make_producer`: the settings' Kafka
    client config, acks=all): idempotent, and bounded in every wait."""
    return dict(enable_idempotence=True, linger_ms=2, max_block_ms=MAX_BLOCK_MS,
                request_timeout_ms=REQUEST_TIMEOUT_MS, delivery_timeout_ms=DELIVERY_TIMEOUT_MS,
                bootstrap_timeout_ms=MAX_BLOCK_MS, reconnect_backoff_max_ms=1000, **overrides)


class AckedProducer:
    def __init__(self, settings: Settings, retry_after_s: float = RETRY_AFTER_S, **overrides):
        self.settings = settings
        self.config = producer_config(**overrides)
        self.retry_after_s = retry_after_s
        self._producer = None
        self._lock = threading.Lock()
        self._open_until = 0.0  # breaker: fail fast until this monotonic time
        self._warm: set[str] = set()  # topics whose metadata this producer has
        self.ack_timeout_s = self.config["delivery_timeout_ms"] / 1000 + 1.0

    def _get(self):
        with self._lock:
            if self._producer is None:
                from homefeed.stream.clients import make_producer

                try:
                    self._producer = make_producer(self.settings, **self.config)
                except Exception as exc:  # NoBrokersAvailable, a timeout, a refused connection
                    raise BrokerUnavailable(f"cannot connect to Kafka: {exc}") from None
            return self._producer

    def _send_all(self, topic: str, records: list[tuple[bytes, bytes]]) -> list:
        producer = self._get()
        try:
            return [producer.send(topic, key=key, value=value) for key, value in records]
        except Exception as exc:  # KafkaTimeoutError on metadata, a closed producer
            raise BrokerUnavailable(f"Kafka did not take the records: {exc}") from None

    async def send(self, topic: str, records: list[tuple[bytes, bytes]]) -> list:
        """Produce, then wait for every acknowledgement: RecordMetadata per record, in order."""
        if time.monotonic() < self._open_until:
            raise BrokerUnavailable("Kafka failed moments ago; retrying after the breaker closes")
        try:
            if topic in self._warm:  # metadata known: send() does not wait, no thread hop
                futures = self._send_all(topic, records)
            else:
                futures = await anyio.to_thread.run_sync(self._send_all, topic, records)
                self._warm.add(topic)
            loop = asyncio.get_running_loop()
            waiting = [self._bridge(loop, f) for f in futures]
            return await asyncio.wait_for(asyncio.gather(*waiting), self.ack_timeout_s)
        except BrokerUnavailable:
            self._trip()
            raise
        except Exception as exc:  # a failed or timed-out acknowledgement
            self._trip()
            raise BrokerUnavailable(f"Kafka did not acknowledge: {type(exc).__name__}: {exc}") from None

    @staticmethod
    def _bridge(loop: asyncio.AbstractEventLoop, kafka_future) -> asyncio.Future:
        out = loop.create_future()

        def done(value=None, error=None):
            if not out.done():
                if error is not None:
                    out.set_exception(error)
                else:
                    out.set_result(value)

        kafka_future.add_callback(lambda meta: loop.call_soon_threadsafe(done, meta))
        kafka_future.add_errback(lambda exc: loop.call_soon_threadsafe(done, None, exc))
        return out

    def _trip(self) -> None:
        """Open the breaker and drop the producer: an idempotent producer can be left in a fatal
        state by a broker that went away (its producer id unknown to the one that came back);
        the next call after the breaker makes a fresh one. Records still inside the old one
        were never acknowledged, so no caller got a 202 for them."""
        self._open_until = time.monotonic() + self.retry_after_s
        with self._lock:
            old, self._producer = self._producer, None
            self._warm = set()
        if old is not None:
            threading.Thread(target=old.close, kwargs={"timeout": 0}, daemon=True).start()

    def connected(self) -> bool:
        """Ready to take events: the breaker is closed, a bootstrap server accepts a connection
        (homefeed.preflight's check) and the producer exists."""
        from homefeed.errors import UserError
        from homefeed.preflight import KAFKA, require

        if time.monotonic() < self._open_until:
            return False
        try:
            require((KAFKA,), self.settings)
            self._get()
        except (BrokerUnavailable, UserError):
            return False
        return True

    def close(self, timeout_s: float = 10.0) -> None:
        """Flush what was handed over (every 202 was acknowledged already) and close."""
        with self._lock:
            if self._producer is not None:
                try:
                    self._producer.flush(timeout=timeout_s)
                finally:
                    self._producer.close(timeout=timeout_s)
                self._producer = None
