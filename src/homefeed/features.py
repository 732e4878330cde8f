"""Feature schema: names, shapes and the fingerprint shared by the feature repo, the
pipeline, training and serving.

The Feast definitions in feature_repo/ are built from these constants, the stream consumer
writes rows with these column names, and training/serving read them back by the same names.
A model records `schema_fingerprint()` at export; serving refuses a model whose fingerprint
differs from the running feature repo's.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from homefeed.events import ActionType

# Entities (Feast join keys).
USER_ID = "user_id"
PIN_ID = "pin_id"

# Feature views.
PIN_FEATURES = "pin_features"
USER_ACTION_SEQUENCE = "user_action_sequence"
USER_IMPRESSION_SEQUENCE = "user_impression_sequence"
USER_PROFILE = "user_profile"
RANKING_SERVICE = "ranking"
# The raw, validated action events (an offline log table; the KafkaSource's batch source).
ACTION_EVENTS = "action_events"
# The raw, validated impression events (an offline log table: pins shown to users).
IMPRESSION_EVENTS = "impression_events"

# Columns every pushed/logged feature row carries besides its features.
EVENT_TIMESTAMP = "event_timestamp"  # the time the row describes (Feast's timestamp_field)
CREATED = "created"  # when it became servable (ingestion time; point-in-time uses it)

# pin_features
PIN_EMBEDDING = "embedding"  # Array(Float32) of embedding_dim
PIN_TOPIC = "topic_id"  # Int64
PIN_CREATED_MS = "pin_created_ms"  # Int64 epoch ms
# Int64 ms the pin's media runs (a video's duration); null = unknown (no duration in the source,
# an image, an upsert without it). Null everywhere it is stored: the world's pins.parquet, the
# offline log, the online store (an unset Value); never a sentinel number.
PIN_DURATION_MS = "pin_duration_ms"

# user_action_sequence: aligned arrays, newest action first, at most sequence_length long.
SEQ_PIN_IDS = "seq_pin_ids"  # Array(Int64)
SEQ_ACTION_TYPES = "seq_action_types"  # Array(Int32), values are ActionType ids
SEQ_ACTION_TIMES = "seq_action_times"  # Array(Int64), epoch ms
SEQ_LENGTH = "seq_length"  # Int32, len() of the arrays

# user_profile: the long-term view (the article's PinnerSAGE role), computed in batch.
PROFILE_EMBEDDING = "profile_embedding"  # Array(Float32): engagement-weighted mean pin embedding
PROFILE_ACTIONS_28D = "profile_actions_28d"  # Int64
PROFILE_REPIN_RATE_28D = "profile_repin_rate_28d"  # Float32, repins / actions
PROFILE_HIDE_RATE_28D = "profile_hide_rate_28d"  # Float32, hides / actions
PROFILE_DAYS_ACTIVE_28D = "profile_days_active_28d"  # Int64

# user_impression_sequence: the user's latest impressions (pins shown), same rules and cap as
# the action sequence (homefeed.sequence); aligned arrays, newest first.
IMP_PIN_IDS = "imp_pin_ids"  # Array(Int64)
IMP_TIMES = "imp_times"  # Array(Int64), epoch ms
IMP_LENGTH = "imp_length"  # Int32

PIN_FEATURE_NAMES = (PIN_EMBEDDING, PIN_TOPIC, PIN_CREATED_MS, PIN_DURATION_MS)
SEQUENCE_FEATURE_NAMES = (SEQ_PIN_IDS, SEQ_ACTION_TYPES, SEQ_ACTION_TIMES, SEQ_LENGTH)
IMPRESSION_SEQUENCE_FEATURE_NAMES = (IMP_PIN_IDS, IMP_TIMES, IMP_LENGTH)
PROFILE_FEATURE_NAMES = (
    PROFILE_EMBEDDING,
    PROFILE_ACTIONS_28D,
    PROFILE_REPIN_RATE_28D,
    PROFILE_HIDE_RATE_28D,
    PROFILE_DAYS_ACTIVE_28D,
)


# -- realtime engagement counters (homefeed.engagement; stream: homefeed.stream.engagement) --------
# Per user and per pin, half-life decayed counts of each counted kind, kept by the stream
# consumer and stored as (value at as_of) rows: a reader decays them to its own time, so a value
# never goes stale between events. Kinds are the actions (ActionType wire names) and impressions.
USER_ENGAGEMENT = "user_engagement"
PIN_ENGAGEMENT = "pin_engagement"
ENGAGEMENT_KINDS = ("impression", *(a.wire_name for a in ActionType))
ENGAGEMENT_HALF_LIVES_MS = (3_600_000, 86_400_000, 7 * 86_400_000)  # 1 h, 1 d, 7 d
# Columns (prefixed per view: a training row carries both). `*_decayed`: Array(Float64) of
# len(KINDS) * len(HALF_LIVES), kind-major (kind k, half-life h at k * H + h), each value as of
# `*_as_of_ms` (Int64, the newest counted event time); `*_totals`: Array(Int64), exact lifetime
# counts per kind (what the exactly-once checks compare with the event log).
UE_DECAYED, UE_TOTALS, UE_AS_OF_MS = "ue_decayed", "ue_totals", "ue_as_of_ms"
PE_DECAYED, PE_TOTALS, PE_AS_OF_MS = "pe_decayed", "pe_totals", "pe_as_of_ms"
USER_ENGAGEMENT_FEATURE_NAMES = (UE_DECAYED, UE_TOTALS, UE_AS_OF_MS)
PIN_ENGAGEMENT_FEATURE_NAMES = (PE_DECAYED, PE_TOTALS, PE_AS_OF_MS)
ENGAGEMENT_VIEWS = {USER_ENGAGEMENT: (USER_ID, USER_ENGAGEMENT_FEATURE_NAMES),
                    PIN_ENGAGEMENT: (PIN_ID, PIN_ENGAGEMENT_FEATURE_NAMES)}


@dataclass(frozen=True)
class SequenceView:
    """The columns of one per-user latest-N sequence view (homefeed.sequence builds both):
    pins, times and length, and the action types where the view has them."""

    name: str
    pin_ids: str
    times: str
    length: str
    action_types: str | None = None

    @property
    def feature_names(self) -> tuple[str, ...]:
        return tuple(n for n in (self.pin_ids, self.action_types, self.times, self.length) if n)


ACTION_SEQUENCE = SequenceView(USER_ACTION_SEQUENCE, SEQ_PIN_IDS, SEQ_ACTION_TIMES, SEQ_LENGTH,
                               SEQ_ACTION_TYPES)
IMPRESSION_SEQUENCE = SequenceView(USER_IMPRESSION_SEQUENCE, IMP_PIN_IDS, IMP_TIMES, IMP_LENGTH)
SEQUENCE_VIEWS = (ACTION_SEQUENCE, IMPRESSION_SEQUENCE)


def feature_refs(view: str, names: tuple[str, ...]) -> list[str]:
    return [f"{view}:{name}" for name in names]


def schema_description(embedding_dim: int, sequence_length: int) -> dict:
    """Everything a trained model depends on, in a stable JSON-able form."""
    return {
        "entities": [USER_ID, PIN_ID],
        PIN_FEATURES: list(PIN_FEATURE_NAMES),
        USER_ACTION_SEQUENCE: list(SEQUENCE_FEATURE_NAMES),
        USER_IMPRESSION_SEQUENCE: list(IMPRESSION_SEQUENCE_FEATURE_NAMES),
        USER_PROFILE: list(PROFILE_FEATURE_NAMES),
        USER_ENGAGEMENT: list(USER_ENGAGEMENT_FEATURE_NAMES),
        PIN_ENGAGEMENT: list(PIN_ENGAGEMENT_FEATURE_NAMES),
        "engagement": {"kinds": list(ENGAGEMENT_KINDS),
                       "half_lives_ms": list(ENGAGEMENT_HALF_LIVES_MS)},
        "embedding_dim": embedding_dim,
        "sequence_length": sequence_length,
        "actions": {a.wire_name: int(a) for a in ActionType},
    }


def schema_fingerprint(embedding_dim: int, sequence_length: int) -> str:
    blob = json.dumps(schema_description(embedding_dim, sequence_length), sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


# Training rows: one per (request, candidate pin), one binary label per action head.
REQUEST_ID = "request_id"
REQUEST_TIME = EVENT_TIMESTAMP  # Feast's entity-row timestamp is the request time
# When an impression was served (a world's requests.parquet column): its features are what serving
# read at that instant. A request served at one instant (the synthetic world) has one serve time;
# a logged feed (KuaiRand) serves each impression at its own time, so a request's candidates may
# carry different histories. Requests stay the unit of HIT@3.
SERVED_TIME = "served_time"
# A dataset's user-side row: one per distinct (request, serve time); impressions reference it.
SNAPSHOT_ID = "snapshot_id"


def label_column(action: ActionType) -> str:
    return f"label_{action.wire_name}"


LABEL_COLUMNS = tuple(label_column(a) for a in ActionType)
