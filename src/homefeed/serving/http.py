"""HTTP concerns of the ranking service that are not ranking: load, request size, error logging.

0. `LoadShed`: an ASGI middleware that counts the /rank requests in flight in this worker and
   answers 503 + Retry-After at once past a limit, instead of queueing without bound (BentoML's
   own `max_concurrency` answers 429 without Retry-After). Health and metrics are never shed.
1. `BodyLimit`: an ASGI middleware that counts the bytes actually received (Content-Length or
   chunked) and answers 413 as soon as a body passes the limit, before anything parses it.
2. `ClientErrorsAtInfo`: BentoML logs every rejected request (a 400 from validation) as ERROR
   with a traceback; this log filter turns client errors into one INFO line.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Callable

MAX_BODY_BYTES = 256 * 1024  # 2,000 ids and options fit in ~30 KB

log = logging.getLogger("homefeed.service")


class LoadShed:
    """At most `limit` requests to `paths` in flight in this worker; past it, 503 at once.

    A request counts from the moment its headers arrive (before its body is read: a slow upload
    holds a slot too) until its last response byte is handed to the server, or the app returns,
    whichever comes first; so a client that got its answer can always send the next one.
    Shed requests get `Retry-After: retry_after_s` and a JSON body with the reason; they are
    logged at INFO, one line per second at most with the count (an overload must not turn into
    a flood of log lines), and `on_shed()` is called for each (the service's counter).
    `on_inflight(n)` sees every change of the count (a gauge). `limit <= 0` disables shedding.
    The count lives in this worker's event loop: no lock is needed, and each worker process has
    its own limit."""

    def __init__(self, app, limit: int, retry_after_s: int = 1, paths: tuple[str, ...] = ("/rank",),
                 on_shed: Callable[[], None] | None = None,
                 on_inflight: Callable[[int], None] | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.app, self.limit, self.retry_after_s = app, int(limit), max(0, int(retry_after_s))
        self.paths = frozenset(paths)
        self.on_shed, self.on_inflight, self.clock = on_shed, on_inflight, clock
        self.inflight = 0
        self.shed = 0
        self._unlogged, self._logged_at = 0, float("-inf")

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or self.limit <= 0 or scope.get("path") not in self.paths:
            return await self.app(scope, receive, send)
        if self.inflight >= self.limit:
            return await self._refuse(scope, send)
        self._change(+1)
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self._change(-1)

        async def counted_send(message):
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                release()
            await send(message)

        try:
            await self.app(scope, receive, counted_send)
        finally:
            release()

    def _change(self, delta: int) -> None:
        self.inflight += delta
        if self.on_inflight:
            self.on_inflight(self.inflight)

    async def _refuse(self, scope, send) -> None:
        self.shed += 1
        if self.on_shed:
            self.on_shed()
        self._unlogged += 1
        now = self.clock()
        if now - self._logged_at >= 1.0:
            log.info("%s [%s]: shed %d request(s) with 503 (%d in flight, limit %d per worker)",
                     scope.get("path"), scope.get("method"), self._unlogged, self.inflight, self.limit)
            self._unlogged, self._logged_at = 0, now
        body = json.dumps({"error": "overloaded", "reason": f"{self.inflight} requests in flight in "
                           f"this worker, limit {self.limit}; retry after {self.retry_after_s} s",
                           "retry_after_s": self.retry_after_s}).encode()
        await send({"type": "http.response.start", "status": 503,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode()),
                                (b"retry-after", str(self.retry_after_s).encode())]})
        await send({"type": "http.response.body", "body": body})


class BodyLimit:
    """Refuse request bodies over `max_bytes` with 413, counting what arrives, not the headers."""

    def __init__(self, app, max_bytes: int = MAX_BODY_BYTES):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            return await self._refuse(send)
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            body = message.get("body", b"")
            size += len(body)
            if size > self.max_bytes:
                return await self._refuse(send)
            chunks.append(body)
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()  # after the body: wait for the disconnect, as a server would

        await self.app(scope, replay, send)

    async def _refuse(self, send) -> None:
        body = json.dumps({"error": f"request body over {self.max_bytes} bytes"}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})


def is_client_error(exc: BaseException | None) -> bool:
    from bentoml.exceptions import BentoMLException
    from pydantic import ValidationError

    if isinstance(exc, ValidationError):
        return True
    return isinstance(exc, BentoMLException) and 400 <= int(exc.error_code.value) < 500


class ClientErrorsAtInfo(logging.Filter):
    """Rewrite BentoML's "Exception on /rank [POST]" ERROR+traceback for a 4xx into one INFO line."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if record.levelno >= logging.ERROR and is_client_error(exc):
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            where = record.getMessage().removeprefix("Exception on ")
            record.msg, record.args = "%s: rejected (%s)", (where, first[:300])
            record.levelno, record.levelname = logging.INFO, "INFO"
            record.exc_info, record.exc_text = None, None
        return True


def install_client_error_filter() -> None:
    logging.getLogger("bentoml._internal.server.http_app").addFilter(ClientErrorsAtInfo())
