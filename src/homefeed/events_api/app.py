"""The events API and the feed page: one small ASGI app (Starlette on uvicorn).

1. `POST /v1/<kind>` (today `/v1/actions`) takes one event (a JSON object) or a batch (a JSON
   array of at most `MAX_BATCH` events), checks each with the stream consumer's own parser
   (`homefeed.events_api.kinds`), produces the valid ones keyed by user and answers only after the
   broker acknowledged them all (acks=all, idempotent producer): 202 with a result per event. A
   bad event is rejected with the consumer's dead-letter reason and the field it names; the rest
   of its batch is still accepted. Nothing valid: 400. Broker down: 503 with Retry-After, within
   the producer's bounded timeouts. Bodies are limited by the bytes received (413).
2. `/metrics` (Prometheus: accepted, rejected by reason, produce latency), `/livez`, `/readyz`
   (the broker is connected).
3. The feed page (`/`, static files from `static/`, no build step, no CDN) and its two helpers:
   `/v1/feed/candidates` (the stand-in candidate source, `homefeed.events_api.candidates`) and
   `/v1/feed/rank` (forwards to the ranking service's /rank, adding each pin's topic).
4. Each call with a rejection logs one INFO line; nothing logs a traceback for a client's error.
"""

from __future__ import annotations

import contextvars
import json
import logging
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from homefeed.events_api.kinds import KINDS, EventKind, Rejection, check
from homefeed.events_api.producer import AckedProducer, BrokerUnavailable
from homefeed.serving.http import BodyLimit
from homefeed.settings import Settings

log = logging.getLogger("homefeed.events_api")

STATIC = Path(__file__).resolve().parent / "static"
MAX_BATCH = 500
MAX_BODY_BYTES = 1024 * 1024  # 500 events of ~1 KB; one event's own bound is events.MAX_EVENT_BYTES
FEED_K = 20
RANK_TIMEOUT_S = 10.0


@dataclass
class Metrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        self.accepted = Counter("homefeed_events_accepted_total", "Events acknowledged by the broker",
                                ["kind"], registry=self.registry)
        self.rejected = Counter("homefeed_events_rejected_total",
                                "Events refused (the contract's reason codes, or body_too_large, "
                                "batch_too_large, broker_unavailable)", ["kind", "reason"],
                                registry=self.registry)
        self.produce_seconds = Histogram(
            "homefeed_events_produce_seconds", "Per request: records handed to Kafka -> all acknowledged",
            ["kind"], registry=self.registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5))


_PATH: contextvars.ContextVar[str] = contextvars.ContextVar("path", default="")


class CountedBodyLimit(BodyLimit):
    """homefeed.serving.http.BodyLimit, counted and logged like the API's other rejections."""

    def __init__(self, app, metrics: Metrics, max_bytes: int = MAX_BODY_BYTES):
        super().__init__(app, max_bytes)
        self.metrics = metrics

    async def __call__(self, scope, receive, send):
        _PATH.set(scope.get("path", ""))  # per request: each runs in its own task and context
        return await super().__call__(scope, receive, send)

    async def _refuse(self, send) -> None:
        path = _PATH.get()
        kind = path.rsplit("/", 1)[-1]
        self.metrics.rejected.labels(kind=kind if kind in KINDS else "other", reason="body_too_large").inc()
        log.info("%s: rejected 413 (request body over %d bytes)", path, self.max_bytes)
        await super()._refuse(send)


def error(status: int, message: str, **extra) -> JSONResponse:
    headers = {"Retry-After": str(extra.pop("retry_after"))} if "retry_after" in extra else None
    return JSONResponse({"error": message, **extra}, status_code=status, headers=headers)


class EventsAPI:
    def __init__(self, settings: Settings, producer: AckedProducer | None = None, candidates=None,
                 ranking_url: str | None = None, metrics: Metrics | None = None):
        self.settings = settings
        self.producer = producer or AckedProducer(settings)
        self.candidates = candidates  # CandidateSource or None (no page data)
        self.ranking_url = ranking_url.rstrip("/") if ranking_url else None
        self.metrics = metrics or Metrics()
        self._http = None

    # -- events ------------------------------------------------------------------------------
    async def post_events(self, request: Request) -> Response:
        kind = KINDS.get(request.path_params["kind"])
        path = request.url.path
        if kind is None:
            log.info("%s: rejected 404 (no such event kind)", path)
            return error(404, f"no event kind {request.path_params['kind']!r}; one of {sorted(KINDS)}")
        try:
            body = json.loads(await request.body())
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
            return self._reject_call(path, kind, 400, "not_json", f"body is not JSON: {exc}")
        single = isinstance(body, dict)
        items = [body] if single else body
        if not isinstance(items, list) or not items:
            return self._reject_call(path, kind, 400, "not_object",
                                     "body must be one event (a JSON object) or a non-empty array of events")
        if len(items) > MAX_BATCH:
            return self._reject_call(path, kind, 413, "batch_too_large",
                                     f"{len(items)} events > {MAX_BATCH} per request")
        now_ms = time.time_ns() // 1_000_000  # one clock read per request
        checked = [check(kind, obj, now_ms=now_ms, max_future_skew_ms=self.settings.max_future_skew_ms)
                   for obj in items]
        rejected = [(i, c) for i, c in enumerate(checked) if isinstance(c, Rejection)]
        valid = [(i, c) for i, c in enumerate(checked) if not isinstance(c, Rejection)]
        for _, r in rejected:
            self.metrics.rejected.labels(kind=kind.name, reason=r.reason).inc()
        results: list[dict] = [r.to_dict(i) for i, r in rejected]
        if valid:
            started = time.perf_counter()
            try:
                acks = await self.producer.send(getattr(self.settings, kind.topic_setting),
                                                [c for _, c in valid])
            except BrokerUnavailable as exc:
                self.metrics.rejected.labels(kind=kind.name, reason="broker_unavailable").inc(len(valid))
                log.info("%s: rejected 503 (%d events; %s)", path, len(valid), exc)
                return error(503, f"the event broker is unavailable: {exc}", reason="broker_unavailable",
                             retry_after=self.producer.retry_after_s)
            self.metrics.produce_seconds.labels(kind=kind.name).observe(time.perf_counter() - started)
            self.metrics.accepted.labels(kind=kind.name).inc(len(valid))
            results += [{"index": i, "status": "accepted", "partition": a.partition, "offset": a.offset}
                        for (i, _), a in zip(valid, acks)]
        results.sort(key=lambda r: r["index"])
        out = {"accepted": len(valid), "rejected": len(rejected), "results": results}
        if rejected:
            first = rejected[0][1]
            status = 202 if valid else 400
            log.info("%s: %d, %d of %d events rejected (first: event %d, %s: %s)", path, status,
                     len(rejected), len(items), rejected[0][0], first.reason, first.detail[:200])
            if status == 400:  # the first rejection's reason and field, for a caller that reads one
                out.update(error=f"{first.reason}: {first.detail}", reason=first.reason, field=first.field)
            return JSONResponse(out, status_code=status)
        return JSONResponse(out, status_code=202)

    def _reject_call(self, path: str, kind: EventKind, status: int, reason: str, message: str) -> JSONResponse:
        self.metrics.rejected.labels(kind=kind.name, reason=reason).inc()
        log.info("%s: rejected %d (%s: %s)", path, status, reason, message[:200])
        return error(status, f"{reason}: {message}", reason=reason, field=None)

    # -- health and metrics ------------------------------------------------------------------
    async def metrics_endpoint(self, request: Request) -> Response:
        return Response(generate_latest(self.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    async def livez(self, request: Request) -> Response:
        return Response("ok")

    async def readyz(self, request: Request) -> Response:
        import anyio

        if await anyio.to_thread.run_sync(self.producer.connected):
            return Response("ok")
        return Response("the event broker is not connected", status_code=503)

    # -- the feed page's helpers -------------------------------------------------------------
    async def feed_users(self, request: Request) -> Response:
        if self.candidates is None:
            return error(404, "no candidate source: start the API with --world DIR")
        return JSONResponse({"users": self.candidates.users(), "new_user": self.candidates.new_user_id()})

    async def feed_candidates(self, request: Request) -> Response:
        if self.candidates is None:
            return error(404, "no candidate source: start the API with --world DIR")
        user = request.query_params.get("user_id", "")
        if not user.isdigit() or not 0 < int(user) <= 2**53 - 1:
            return error(400, "user_id must be a positive integer")
        pins = self.candidates.candidates(int(user))
        return JSONResponse({"user_id": int(user), "candidates": self.candidates.describe(pins),
                             "source": "stand-in: the user's recent topics + the most engaged pins "
                                       "(not real retrieval; see docs/events-api.md)"})

    async def feed_rank(self, request: Request) -> Response:
        """The page's /rank: the ranking service's answer plus each pin's topic."""
        import httpx

        if self.ranking_url is None:
            return error(404, "no ranking service: start the API with --ranking-url URL")
        try:
            body = json.loads(await request.body())
        except (UnicodeDecodeError, json.JSONDecodeError):
            return error(400, "body is not JSON")
        if not isinstance(body, dict):
            return error(400, "body must be a JSON object")
        body.setdefault("k", FEED_K)
        if self._http is None:
            self._http = httpx.AsyncClient(timeout=RANK_TIMEOUT_S)
        try:
            resp = await self._http.post(self.ranking_url + "/rank", json=body)
        except httpx.HTTPError as exc:
            log.info("/v1/feed/rank: ranking service unavailable (%s)", exc)
            return error(503, f"the ranking service does not answer: {exc}", retry_after=1)
        if resp.status_code != 200:
            return Response(resp.content, status_code=resp.status_code, media_type="application/json")
        out = resp.json()
        if self.candidates is not None:
            for item in out.get("items", []):
                item["topic_id"] = self.candidates.topic_of.get(item["pin_id"])
        return JSONResponse(out)

    async def index(self, request: Request) -> Response:
        return FileResponse(STATIC / "index.html", headers={"cache-control": "no-cache"})

    async def close(self) -> None:
        if self._http is not None:
            await self._http.aclose()
        self.producer.close()


def create_app(api: EventsAPI) -> Starlette:
    @asynccontextmanager
    async def lifespan(app):
        yield
        await api.close()  # after uvicorn drained in-flight requests: flush, then close

    app = Starlette(routes=[
        Route("/", api.index),
        Route("/v1/feed/users", api.feed_users),
        Route("/v1/feed/candidates", api.feed_candidates),
        Route("/v1/feed/rank", api.feed_rank, methods=["POST"]),
        Route("/v1/{kind}", api.post_events, methods=["POST"]),
        Route("/metrics", api.metrics_endpoint),
        Route("/livez", api.livez),
        Route("/readyz", api.readyz),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ], lifespan=lifespan)
    app.state.api = api
    return CountedBodyLimit(app, api.metrics)
