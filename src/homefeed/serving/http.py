"""HTTP concerns of the ranking service that are not ranking: request size and error logging.

1. `BodyLimit`: an ASGI middleware that counts the bytes actually received (Content-Length or
   chunked) and answers 413 as soon as a body passes the limit, before anything parses it.
2. `ClientErrorsAtInfo`: BentoML logs every rejected request (a 400 from validation) as ERROR
   with a traceback; this log filter turns client errors into one INFO line.
"""

from __future__ import annotations

import json
import logging

MAX_BODY_BYTES = 256 * 1024  # 2,000 ids and options fit in ~30 KB


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
