"""A hung `stream consume` process writes every thread's stack and exits, so its supervisor
(compose's restart policy, systemd, Kubernetes) starts it again.

1. The consumer loop calls `arm()` at every step (a poll, a batch, a retry of an outage): the
   process has `consumer_watchdog_s` seconds to reach the next step.
2. Past that, faulthandler's own C thread, which needs no GIL (it works while a C call holds the
   GIL forever, when no Python thread can run), writes every thread's stack to stderr and ends
   the process with exit code 1.
3. Work that may rightly take longer (restoring Redis from the log) runs inside `paused()`.

A restart loses nothing and counts nothing twice: offsets are committed after a batch is applied,
and every write is exact under redelivery (docs/reliability.md). The timer is one per process, so
only the CLI's consumer process arms it (`StreamConsumer(watchdog_s=...)`), never an in-process
consumer of a test or a benchmark.
"""

from __future__ import annotations

import contextlib
import faulthandler
import logging
import sys

log = logging.getLogger(__name__)

_seconds = 0.0  # armed for this long; 0: off


def arm(seconds: float | None = None) -> None:
    """Step 1: (re)start the timer (`seconds` sets it, once; later calls reuse it)."""
    global _seconds
    if seconds is not None:
        _seconds = float(seconds)
    if _seconds > 0:
        try:
            faulthandler.dump_traceback_later(_seconds, exit=True, file=sys.stderr)
        except (ValueError, OSError) as exc:  # stderr is not a file (captured): no watchdog
            log.warning("consumer watchdog off: %s", exc)
            _seconds = 0.0


def disarm() -> None:
    global _seconds
    if _seconds > 0:
        faulthandler.cancel_dump_traceback_later()
    _seconds = 0.0


@contextlib.contextmanager
def paused():
    """Step 3: no timer inside the block; re-armed after it when it was armed."""
    if _seconds <= 0:
        yield
        return
    faulthandler.cancel_dump_traceback_later()
    try:
        yield
    finally:
        arm()
