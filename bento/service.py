"""homefeed ranking service: online Feast features -> TransAct (GPU or CPU) -> top-k candidates.

    bentoml serve bento.service:Ranking            # from the repo root
    homefeed bento build                           # the bento homefeed-service, model inside
    curl -s localhost:3000/rank -H 'content-type: application/json' \
         -d '{"user_id": 17, "candidates": [1, 2, 3], "k": 2}'

Configuration: homefeed settings (homefeed.settings; each documented once in docs/serving.md,
"Settings"): `model` (HOMEFEED_MODEL), `rank_blend`, `pin_cache_s`, `serving_dtype`,
`serving_threads`, `serving_workers`, `serving_max_inflight`, `serving_retry_after_s`, `host`,
plus the connection settings (REDIS_URL, ...). /livez, /readyz, /metrics and
the OpenAPI docs at / come from BentoML; /info says what this worker serves (model, dtype,
kernels, workers x threads). /readyz means "this replica can answer" (model loaded):
a Redis outage does not take replicas out of a load balancer, it makes answers `degraded`
(see docs/reliability.md); Redis health is the `homefeed_redis_up` gauge in /metrics.
"""

from __future__ import annotations

import gc
import logging
import os
import warnings
from typing import Annotated

import bentoml
from pydantic import Field

from homefeed.events import MAX_ID, MIN_EVENT_TIME_MS
from homefeed.serving.http import BodyLimit, LoadShed, install_client_error_filter
from homefeed.serving.resources import serving_cpus
from homefeed.settings import load_settings

MAX_CANDIDATES = 2000
MAX_REQUEST_TIME_MS = 4_102_444_800_000  # 2100-01-01: past this an epoch-ms value is a unit bug
MAX_BLEND_WEIGHT = 1000.0

log = logging.getLogger("homefeed.service")

STAGE_SECONDS = bentoml.metrics.Histogram(
    name="homefeed_rank_stage_seconds", documentation="Time per ranking stage",
    labelnames=["stage"], buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5))
DEGRADED = bentoml.metrics.Counter(
    name="homefeed_degraded_answers_total",
    documentation="Answers ranked without Redis (pin cache and an empty sequence)")
UNKNOWN_PINS = bentoml.metrics.Counter(
    name="homefeed_rank_unknown_pins_total", documentation="Candidates with no pin features")
REDIS_UP = bentoml.metrics.Gauge(
    name="homefeed_redis_up", documentation="1 while the online store answers, 0 while the breaker is open")
SHED = bentoml.metrics.Counter(
    name="homefeed_serving_shed_total",
    documentation="/rank requests answered 503 + Retry-After: the worker had serving_max_inflight in flight")
INFLIGHT = bentoml.metrics.Gauge(
    name="homefeed_serving_inflight", documentation="/rank requests in flight (all workers)",
    multiprocess_mode="livesum")
REDIS_ERRORS = bentoml.metrics.Counter(
    name="homefeed_redis_errors_total", documentation="Failed online-store reads (each opens the breaker)")

SETTINGS = load_settings()
SERVING_WORKERS, SERVING_THREADS = serving_cpus(SETTINGS)  # workers x threads (homefeed.serving.resources)

# Ids are strict integers: JSON true, "7" and 3.0 are refused, not coerced (true would rank user 1).
PinId = Annotated[int, Field(gt=0, le=MAX_ID, strict=True)]
Weight = Annotated[float, Field(ge=-MAX_BLEND_WEIGHT, le=MAX_BLEND_WEIGHT, allow_inf_nan=False)]


def stop_server(message: str) -> None:
    """Log one line and stop `bentoml serve` itself (its arbiter is this worker's parent), instead
    of letting the arbiter restart a worker that will fail the same way forever."""
    import signal

    log.error("%s; stopping the server", message)
    for handler in logging.getLogger().handlers + log.handlers:
        handler.flush()
    os.kill(os.getppid(), signal.SIGTERM)
    os._exit(2)  # no traceback: the line above says everything


# Loopback unless configured (HOMEFEED_HOST; the bento's image sets 0.0.0.0): plain `bentoml serve
# bento.service:Ranking` must not expose an unauthenticated service. `--host` still wins.
@bentoml.service(name="homefeed-service", traffic={"timeout": 10}, workers=SERVING_WORKERS,
                 resources={"cpu": str(SERVING_WORKERS * SERVING_THREADS)},
                 http={"host": SETTINGS.host})
class Ranking:
    def __init__(self) -> None:
        import torch

        from homefeed.errors import UserError
        from homefeed.feature_store import open_store
        from homefeed.model.store import load_exported
        from homefeed.serving.fast_model import ServedRanker
        from homefeed.serving.online_features import OnlineFeatureReader
        from homefeed.serving.ranking import RankingEngine, parse_blend

        install_client_error_filter()
        # BentoML's root handler passes WARNING and up; our INFO lines (start-up, shed requests)
        # go through the same handler.
        logging.getLogger("homefeed").setLevel(logging.INFO)
        cuda = torch.cuda.is_available()
        if not cuda:
            # One intra-op thread: OpenMP barriers thrash on shared cores. The CPUs go to
            # SERVING_THREADS Python threads scoring a request's candidate chunks side by side.
            torch.set_num_threads(1)
        tag = SETTINGS.model
        # Refuses a model whose feature-schema fingerprint differs from the running feature repo.
        try:
            model, config, meta = load_exported(tag)
        except UserError as exc:  # a configuration error: restarting the worker cannot fix it
            stop_server(f"cannot serve HOMEFEED_MODEL={tag}: {exc}")
        # "auto": bf16 on CUDA and on CPUs with native bf16 (AVX512-BF16/AMX), else fp32
        served = ServedRanker(model, dtype=SETTINGS.serving_dtype,
                              workers=1 if cuda else SERVING_THREADS)
        self.info_ = {"model": meta["tag"], "served": served.describe(), "tolerance": served.tolerance,
                      "workers": SERVING_WORKERS, "threads_per_worker": SERVING_THREADS, "pid": os.getpid()}
        try:
            store = open_store(SETTINGS.feature_repo)
        except UserError as exc:  # no or a corrupt registry: a restart cannot fix it
            stop_server(f"cannot open the feature store: {exc}")
        reader = OnlineFeatureReader(store, SETTINGS,
                                     max_staleness_s=SETTINGS.pin_cache_s,
                                     on_health_change=lambda up: REDIS_UP.set(1 if up else 0),
                                     impressions=config.sequence_impressions)  # only if the model reads them
        REDIS_UP.set(1 if reader.ping() else 0)
        self.engine = RankingEngine(served, reader, meta["tag"], parse_blend(SETTINGS.rank_blend))
        served.warmup()
        # Other packages' deprecation warnings (BentoML's on every request) are for their
        # developers, not for the serving log; Feast's import above had turned them on.
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"(?!homefeed\.|bento\.)")
        gc.freeze()  # start-up objects never need collecting: keeps full GC passes off the p99
        log.info("serving %s (%s) on %s", meta["tag"], config.encoder, served.describe())

    @bentoml.api(route="/info")
    def info(self) -> dict:
        """What this worker serves: model tag, dtype, kernels, workers x threads."""
        return self.info_

    def __is_ready__(self) -> bool:
        return True  # the model is loaded (__init__ finished): this replica can answer

    @bentoml.api(route="/rank")
    def rank(
        self,
        user_id: Annotated[int, Field(gt=0, le=MAX_ID, strict=True, description="the user to rank for")],
        candidates: Annotated[list[PinId], Field(min_length=1, max_length=MAX_CANDIDATES,
                                                 description="candidate pin ids (duplicates ranked once)")],
        k: Annotated[int, Field(ge=1, le=MAX_CANDIDATES, strict=True, description="how many to return")] = 10,
        request_time_ms: Annotated[int | None, Field(ge=MIN_EVENT_TIME_MS, le=MAX_REQUEST_TIME_MS, strict=True,
                                                     description="epoch ms; default now")] = None,
        blend: Annotated[dict[str, Weight] | None,
                         Field(description="head weights, e.g. {'repin': 1}; finite, |w| <= 1000")] = None,
    ) -> dict:
        from homefeed.serving.ranking import BadRequest

        errors_before = self.engine.reader.stats.errors
        try:
            result = self.engine.rank(user_id, candidates, k=k, request_time_ms=request_time_ms, blend=blend)
        except BadRequest as exc:
            raise bentoml.exceptions.InvalidArgument(str(exc)) from None
        finally:
            REDIS_ERRORS.inc(self.engine.reader.stats.errors - errors_before)
        for stage, ms in result["timings_ms"].items():
            STAGE_SECONDS.labels(stage=stage).observe(ms / 1000)
        if result["degraded"]:
            DEGRADED.inc()
        UNKNOWN_PINS.inc(len(result["unknown_pins"]))
        return result


# Outermost of ours: a shed request costs no body read, no parse. Per worker (each has its own).
Ranking.add_asgi_middleware(LoadShed, limit=SETTINGS.serving_max_inflight,
                            retry_after_s=SETTINGS.serving_retry_after_s,
                            on_shed=lambda: SHED.inc(), on_inflight=lambda n: INFLIGHT.set(n))
Ranking.add_asgi_middleware(BodyLimit)
