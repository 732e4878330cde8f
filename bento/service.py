"""homefeed ranking service: online Feast features -> TransAct (GPU or CPU) -> top-k candidates.

    bentoml serve bento.service:Ranking            # from the repo root
    curl -s localhost:3000/rank -H 'content-type: application/json' \
         -d '{"user_id": 17, "candidates": [1, 2, 3], "k": 2}'

Configuration (environment): HOMEFEED_MODEL (BentoML model tag, default homefeed-ranker:latest),
HOMEFEED_RANK_BLEND ("repin=1,click=0.25,hide=-1"), HOMEFEED_PIN_CACHE_S (pin-feature staleness
bound, default 60), plus the usual homefeed settings (REDIS_URL, ...). /livez, /readyz, /metrics and
the OpenAPI docs at / come from BentoML; /readyz is false while Redis cannot be read.
"""

from __future__ import annotations

import gc
import logging
import os
from typing import Annotated

import bentoml
from pydantic import Field

from homefeed.events import MAX_ID

MAX_CANDIDATES = 2000
MAX_BODY_BYTES = 256 * 1024  # 2,000 ids and options fit in ~30 KB

log = logging.getLogger("homefeed.service")

STAGE_SECONDS = bentoml.metrics.Histogram(
    name="homefeed_rank_stage_seconds", documentation="Time per ranking stage",
    labelnames=["stage"], buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5))
DEGRADED = bentoml.metrics.Counter(
    name="homefeed_rank_degraded_total", documentation="Requests ranked without Redis (cache only)")
UNKNOWN_PINS = bentoml.metrics.Counter(
    name="homefeed_rank_unknown_pins_total", documentation="Candidates with no pin features")

PinId = Annotated[int, Field(gt=0, le=MAX_ID)]


class BodyLimit:
    """ASGI middleware: refuse bodies over MAX_BODY_BYTES with 413 before parsing them."""

    def __init__(self, app, max_bytes: int = MAX_BODY_BYTES):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            length = dict(scope.get("headers") or []).get(b"content-length")
            if length is not None and int(length) > self.max_bytes:
                body = f'{{"error": "request body over {self.max_bytes} bytes"}}'.encode()
                await send({"type": "http.response.start", "status": 413,
                            "headers": [(b"content-type", b"application/json")]})
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)


@bentoml.service(name="homefeed-ranker", traffic={"timeout": 10}, resources={"cpu": "1"})
class Ranking:
    def __init__(self) -> None:
        import torch

        from homefeed.feature_store import open_store
        from homefeed.serving.fast_model import ServedRanker
        from homefeed.serving.online_features import OnlineFeatureReader
        from homefeed.serving.ranking import RankingEngine, parse_blend
        from homefeed.settings import load_settings
        from homefeed.training.export import load_exported

        settings = load_settings()
        if not torch.cuda.is_available():
            torch.set_num_threads(1)  # one thread per worker: OpenMP barriers thrash on shared cores
        tag = os.environ.get("HOMEFEED_MODEL", "homefeed-ranker:latest")
        # Refuses a model whose feature-schema fingerprint differs from the running feature repo.
        model, config, meta = load_exported(tag)
        served = ServedRanker(model)
        reader = OnlineFeatureReader(open_store(settings.feature_repo), settings,
                                     max_staleness_s=float(os.environ.get("HOMEFEED_PIN_CACHE_S", 60)))
        self.engine = RankingEngine(served, reader, meta["tag"], parse_blend(os.environ.get("HOMEFEED_RANK_BLEND")))
        served.warmup()
        gc.freeze()  # start-up objects never need collecting: keeps full GC passes off the p99
        log.info("serving %s (%s) on %s", meta["tag"], config.encoder, served.describe())

    def __is_ready__(self) -> bool:
        return self.engine.reader.ping()

    @bentoml.api(route="/rank")
    def rank(
        self,
        user_id: Annotated[int, Field(gt=0, le=MAX_ID, description="the user to rank for")],
        candidates: Annotated[list[PinId], Field(min_length=1, max_length=MAX_CANDIDATES,
                                                 description="candidate pin ids")],
        k: Annotated[int, Field(ge=1, le=MAX_CANDIDATES, description="how many to return")] = 10,
        request_time_ms: Annotated[int | None, Field(gt=0, description="epoch ms; default now")] = None,
        blend: Annotated[dict[str, float] | None, Field(description="head weights, e.g. {'repin': 1}")] = None,
    ) -> dict:
        try:
            result = self.engine.rank(user_id, candidates, k=k, request_time_ms=request_time_ms, blend=blend)
        except ValueError as exc:  # e.g. a blend naming a head the model does not have
            raise bentoml.exceptions.InvalidArgument(f"blend: {exc}") from None
        for stage, ms in result["timings_ms"].items():
            STAGE_SECONDS.labels(stage=stage).observe(ms / 1000)
        if result["degraded"]:
            DEGRADED.inc()
        UNKNOWN_PINS.inc(len(result["unknown_pins"]))
        return result


Ranking.add_asgi_middleware(BodyLimit)
