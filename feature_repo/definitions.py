"""Feast definitions for homefeed.

Names, shapes and paths come from the homefeed package (homefeed.features, homefeed.settings)
so the stream consumer, training and serving use exactly what is registered here.

Realtime path: Kafka `user-actions` -> our consumer (homefeed stream consume) builds each user's
latest-100 sequence -> `store.push()` into the `user_action_sequence_push` PushSource (Redis) and
appends the same rows to the partitioned parquet log the batch source below reads. Impressions
(their own topic) build the user's latest-100 impressions the same way
(`user_impression_sequence`).
"""

from datetime import timedelta

from feast import Entity, FeatureService, FeatureView, Field, FileSource, KafkaSource, PushSource
from feast.data_format import JsonFormat, ParquetFormat
from feast.types import Array, Float32, Float64, Int32, Int64
from feast.value_type import ValueType

from homefeed import features as F
from homefeed import offline_log
from homefeed.settings import load_settings

settings = load_settings()
DIM = settings.embedding_dim
OFFLINE = settings.offline_dir
# The log tables exist (with their schema file) from the first apply on, so Feast can validate
# the sources below on a fresh clone, before anything was logged.
offline_log.ensure_tables(OFFLINE)

# -- entities --------------------------------------------------------------------------------
user = Entity(name="user", join_keys=[F.USER_ID], value_type=ValueType.INT64,
              description="A person using the homefeed")
pin = Entity(name="pin", join_keys=[F.PIN_ID], value_type=ValueType.INT64,
             description="A pin (an item that can be shown in the homefeed)")


def _log_source(name: str) -> FileSource:
    """A batch source over one table of the partitioned parquet log (directory of files)."""
    return FileSource(
        name=f"{name}_log",
        path=str(OFFLINE / name),
        file_format=ParquetFormat(),
        timestamp_field=F.EVENT_TIMESTAMP,
        created_timestamp_column=F.CREATED,
    )


# -- realtime user action sequence -----------------------------------------------------------
user_action_sequence_push = PushSource(
    name="user_action_sequence_push",
    batch_source=_log_source(F.USER_ACTION_SEQUENCE),
    description="Per-user latest actions, pushed by the stream consumer once per micro-batch",
)

user_action_sequence = FeatureView(
    name=F.USER_ACTION_SEQUENCE,
    entities=[user],
    ttl=timedelta(0),  # a sequence stays valid until replaced, however old
    schema=[
        Field(name=F.SEQ_PIN_IDS, dtype=Array(Int64), description="engaged pin ids, newest first"),
        Field(name=F.SEQ_ACTION_TYPES, dtype=Array(Int32), description="ActionType ids, aligned"),
        Field(name=F.SEQ_ACTION_TIMES, dtype=Array(Int64), description="action times, epoch ms"),
        Field(name=F.SEQ_LENGTH, dtype=Int32, description=f"<= {settings.sequence_length}"),
    ],
    source=user_action_sequence_push,
    online=True,
    description=f"The user's latest {settings.sequence_length} actions (TransAct's realtime input)",
    tags={"freshness": "realtime", "producer": "homefeed stream consume"},
)

# -- realtime user impression sequence (pins shown; a model setting puts them in its sequence) --
user_impression_sequence_push = PushSource(
    name="user_impression_sequence_push",
    batch_source=_log_source(F.USER_IMPRESSION_SEQUENCE),
    description="Per-user latest impressions, pushed by the stream consumer once per micro-batch",
)

user_impression_sequence = FeatureView(
    name=F.USER_IMPRESSION_SEQUENCE,
    entities=[user],
    ttl=timedelta(0),
    schema=[
        Field(name=F.IMP_PIN_IDS, dtype=Array(Int64), description="shown pin ids, newest first"),
        Field(name=F.IMP_TIMES, dtype=Array(Int64), description="impression times, epoch ms"),
        Field(name=F.IMP_LENGTH, dtype=Int32, description=f"<= {settings.sequence_length}"),
    ],
    source=user_impression_sequence_push,
    online=True,
    description=f"The user's latest {settings.sequence_length} impressions (same rules as the "
                "action sequence; read by models trained with sequence_impressions)",
    tags={"freshness": "realtime", "producer": "homefeed stream consume"},
)

# -- pins --------------------------------------------------------------------------------------
pin_features_push = PushSource(
    name="pin_features_push",
    batch_source=_log_source(F.PIN_FEATURES),
    description="Pin upserts (new pins, embedding refreshes) from the pin-upserts topic",
)

pin_features = FeatureView(
    name=F.PIN_FEATURES,
    entities=[pin],
    ttl=timedelta(0),
    schema=[
        Field(name=F.PIN_EMBEDDING, dtype=Array(Float32), description=f"{DIM}-d content embedding"),
        Field(name=F.PIN_TOPIC, dtype=Int64),
        Field(name=F.PIN_CREATED_MS, dtype=Int64, description="pin creation time, epoch ms"),
        Field(name=F.PIN_DURATION_MS, dtype=Int64,
              description="how long the pin's media runs (video duration), ms; null = unknown"),
    ],
    source=pin_features_push,
    online=True,
    tags={"embedding_dim": str(DIM)},
)

# -- realtime engagement counters (homefeed.stream.engagement) ----------------------------------
# Decayed counts stored as of `*_as_of_ms`; readers decay them to their own time with
# homefeed.engagement (training at each row's serve time, serving at the request time).
_KINDS = ", ".join(F.ENGAGEMENT_KINDS)
_HALF_LIVES = ", ".join(f"{h // 3_600_000} h" for h in F.ENGAGEMENT_HALF_LIVES_MS)


def _engagement_view(name: str, entity: Entity, what: str) -> FeatureView:
    decayed, totals, as_of = F.ENGAGEMENT_VIEWS[name][1]
    push = PushSource(
        name=f"{name}_push",
        batch_source=_log_source(name),
        description=f"{what} engagement counter versions, pushed by the stream consumer",
    )
    return FeatureView(
        name=name,
        entities=[entity],
        ttl=timedelta(0),  # a counter row stays valid until replaced: readers decay it
        schema=[
            Field(name=decayed, dtype=Array(Float64),
                  description=f"decayed counts as of {as_of}, kind-major: ({_KINDS}) x ({_HALF_LIVES})"),
            Field(name=totals, dtype=Array(Int64), description=f"exact lifetime counts of ({_KINDS})"),
            Field(name=as_of, dtype=Int64, description="newest counted event time, epoch ms"),
        ],
        source=push,
        online=True,
        description=f"{what} realtime engagement: half-life decayed counts of impressions and actions",
        tags={"freshness": "realtime", "producer": "homefeed stream consume"},
    )


user_engagement = _engagement_view(F.USER_ENGAGEMENT, user, "Per-user")
pin_engagement = _engagement_view(F.PIN_ENGAGEMENT, pin, "Per-pin")

# -- long-term user profile (the article's PinnerSAGE role), computed in batch -----------------
user_profile = FeatureView(
    name=F.USER_PROFILE,
    entities=[user],
    ttl=timedelta(days=60),
    schema=[
        Field(name=F.PROFILE_EMBEDDING, dtype=Array(Float32),
              description="engagement-weighted mean of engaged pin embeddings, last 28 days"),
        Field(name=F.PROFILE_ACTIONS_28D, dtype=Int64),
        Field(name=F.PROFILE_REPIN_RATE_28D, dtype=Float32),
        Field(name=F.PROFILE_HIDE_RATE_28D, dtype=Float32),
        Field(name=F.PROFILE_DAYS_ACTIVE_28D, dtype=Int64),
    ],
    source=_log_source(F.USER_PROFILE),
    online=True,
    tags={"freshness": "daily batch"},
)

# -- where realtime data comes from (documentation in the registry; our consumer reads it) -----
user_actions_stream = KafkaSource(
    name="user_actions_stream",
    kafka_bootstrap_servers=settings.effective_kafka_bootstrap,
    topic=settings.actions_topic,
    timestamp_field=F.EVENT_TIMESTAMP,
    message_format=JsonFormat(schema_json=(
        "schema_version int, event_id string, user_id long, pin_id long, action_type string, "
        "event_time long, surface string"
    )),
    batch_source=_log_source("action_events"),
    description="Raw user action events (JSON, schema in homefeed/events.py); the consumer "
                "turns them into user_action_sequence rows",
)

# -- what the ranker reads -------------------------------------------------------------------
ranking = FeatureService(
    name=F.RANKING_SERVICE,
    features=[user_action_sequence, user_impression_sequence, user_profile, pin_features, user_engagement,
              pin_engagement],
    description="Everything the TransAct ranker reads for one (user, candidate) pair",
)
