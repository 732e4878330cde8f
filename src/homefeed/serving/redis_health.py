"""The online store's health as the ranking service sees it: an error type and a circuit breaker.

1. `FeatureStoreUnavailable`: what every failed online-store read raises (refused, timeout,
   reset, or the breaker open); the service decides how to degrade (e.g. serve pins from the
   cache only).
2. `RedisHealth`: the first failure opens the breaker; while open, reads fail at once without
   touching the network, and a background thread pings Redis every `probe_interval_s` (1 s);
   the first answer closes it. So a dead or paused Redis costs one request one timeout, not
   every request, and no request ever waits for a probe.
"""

from __future__ import annotations

import logging
import threading
from typing import Callable

log = logging.getLogger(__name__)


class FeatureStoreUnavailable(RuntimeError):
    """The online store (Redis) could not be read: connection refused, timeout, reset, ..."""


class RedisHealth:
    """Circuit breaker over the online store, probed in the background (see module docstring).

    ``ping``: a bounded health check (True when Redis answers); ``on_change(up: bool)`` is called
    on every transition (the service sets its `homefeed_redis_up` gauge from it)."""

    def __init__(self, ping: Callable[[], bool], probe_interval_s: float = 1.0,
                 on_change: Callable[[bool], None] | None = None):
        self._ping = ping
        self.probe_interval_s = float(probe_interval_s)
        self.on_change = on_change
        self._up = True
        self._lock = threading.Lock()
        self._prober: threading.Thread | None = None
        self._closed = threading.Event()
        self.opened = 0  # how many times the breaker opened
        self.last_error = ""

    @property
    def up(self) -> bool:
        return self._up

    def check(self) -> None:
        """Raise at once (no I/O) while the breaker is open."""
        if not self._up:
            raise FeatureStoreUnavailable(f"online store marked down ({self.last_error}); "
                                          f"probing every {self.probe_interval_s:g}s")

    def failed(self, exc: BaseException) -> None:
        with self._lock:
            self.last_error = f"{type(exc).__name__}: {exc}"[:200]
            if not self._up:
                return
            self._up = False
            self.opened += 1
            if self._prober is None or not self._prober.is_alive():
                self._prober = threading.Thread(target=self._probe, name="redis-probe", daemon=True)
                self._prober.start()
        log.warning("online store down (%s): answering from the pin cache, probing every %gs",
                    self.last_error, self.probe_interval_s)
        if self.on_change:
            self.on_change(False)

    def _probe(self) -> None:
        while not self._closed.wait(self.probe_interval_s):
            if self._ping():
                with self._lock:
                    self._up = True
                log.warning("online store back: reading Redis again")
                if self.on_change:
                    self.on_change(True)
                return

    def close(self) -> None:
        self._closed.set()


__all__ = ["FeatureStoreUnavailable", "RedisHealth"]
