"""The event contracts: the one place that says what a user action event (and an impression,
a pin upsert) is.

Producer, consumer, validation, world generator and training all import this module, so the
JSON on the wire, the parquet columns and the model's action vocabulary cannot drift apart.

Wire format (JSON, UTF-8), schema version 1::

    {"schema_version": 1, "event_id": "u17-000123", "user_id": 17, "pin_id": 4242,
     "action_type": "repin", "event_time": 1767225600000, "surface": "homefeed",
     "metadata": {}}

`event_time` is when the user acted (epoch milliseconds, UTC). The time the event reached us
(arrival/ingest time) is not part of the event: the Kafka record timestamp carries it.
"""

from __future__ import annotations

import enum
import json
import math
from dataclasses import dataclass, field
from typing import Any

SCHEMA_VERSION = 1

# Bounds that make an id or a message obviously wrong rather than merely unknown.
MAX_ID = 2**53 - 1  # ids must survive a round trip through JSON numbers in any client
MAX_EVENT_BYTES = 4096
MAX_EVENT_ID_CHARS = 128
MAX_FUTURE_SKEW_MS = 5 * 60 * 1000  # default clock-skew allowance; configurable in settings
MIN_EVENT_TIME_MS = 946_684_800_000  # 2000-01-01: anything older is a unit bug (seconds vs ms)


class ActionType(enum.IntEnum):
    """Closed vocabulary of user actions.

    Ids start at 1: id 0 is never an action, so a zero in a padded tensor can never be
    mistaken for a real one (the reference TransAct code reuses its lowest action id as
    padding; we keep padding in an explicit mask instead). Append new actions at the end:
    ids are part of trained models' vocabularies and of the feature-schema fingerprint.
    """

    REPIN = 1  # save to a board: the main positive
    CLICK = 2  # click-through / closeup: a weak positive
    HIDE = 3  # "see less like this": the main negative

    @classmethod
    def parse(cls, name: str) -> "ActionType":
        try:
            return cls[name.upper()]
        except KeyError:
            raise ValueError(
                f"unknown action_type {name!r}; expected one of {action_names()}"
            ) from None

    @property
    def wire_name(self) -> str:
        return self.name.lower()


def action_names() -> list[str]:
    return [a.wire_name for a in ActionType]


# Size of an action-embedding table: ids are 1..max, index 0 stays unused (padding).
ACTION_VOCAB_SIZE = max(ActionType) + 1

REQUIRED_FIELDS: dict[str, type | tuple[type, ...]] = {
    "schema_version": int,
    "event_id": str,
    "user_id": int,
    "pin_id": int,
    "action_type": str,
    "event_time": int,
}


@dataclass(frozen=True, slots=True)
class ActionEvent:
    event_id: str
    user_id: int
    pin_id: int
    action_type: ActionType
    event_time: int  # epoch ms when the user acted
    surface: str = "homefeed"
    metadata: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": SCHEMA_VERSION,
            "event_id": self.event_id,
            "user_id": self.user_id,
            "pin_id": self.pin_id,
            "action_type": self.action_type.wire_name,
            "event_time": self.event_time,
            "surface": self.surface,
            "metadata": self.metadata,
        }

    def to_json(self) -> bytes:
        return json.dumps(self.to_dict(), separators=(",", ":")).encode()


class InvalidEvent(ValueError):
    """An event that must go to the dead-letter topic. `reason` is a short stable code
    (used as a metric label); the message says what exactly was wrong."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


# Stable reason codes, one per way an event can be rejected.
REASON_EMPTY = "empty"  # a tombstone (null value) or zero bytes
REASON_NOT_JSON = "not_json"
REASON_NOT_OBJECT = "not_object"
REASON_TOO_LARGE = "too_large"
REASON_MISSING_FIELD = "missing_field"
REASON_WRONG_TYPE = "wrong_type"
REASON_SCHEMA_VERSION = "schema_version"
REASON_UNKNOWN_ACTION = "unknown_action"
REASON_BAD_ID = "bad_id"
REASON_FUTURE_TIME = "future_time"
REASON_ANCIENT_TIME = "ancient_time"
REASON_BATCH_SUITE = "batch_suite"  # caught by the micro-batch GX suite, not the cheap checks

REASON_APPLY_FAILED = "apply_failed"  # passed every check but could not be applied (see detail)
REASON_WRONG_TOPIC = "wrong_topic"  # a valid record of another kind (an action on the impressions topic)
REASON_BAD_DURATION = "bad_duration"  # a pin upsert's duration_ms outside 0..MAX_DURATION_MS

DEAD_LETTER_REASONS = (
    REASON_EMPTY, REASON_NOT_JSON, REASON_NOT_OBJECT, REASON_TOO_LARGE, REASON_MISSING_FIELD,
    REASON_WRONG_TYPE, REASON_SCHEMA_VERSION, REASON_UNKNOWN_ACTION, REASON_BAD_ID,
    REASON_FUTURE_TIME, REASON_ANCIENT_TIME, REASON_BATCH_SUITE, REASON_APPLY_FAILED, REASON_WRONG_TOPIC,
    REASON_BAD_DURATION,
)


MAX_INT64 = 2**63 - 1
MAX_FLOAT32 = 3.4028234663852886e38


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_text(value: Any) -> bool:
    """A str that survives UTF-8 encoding (JSON can carry lone surrogates, parquet cannot)."""
    if not isinstance(value, str):
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _load_json_object(raw: bytes | None, max_bytes: int) -> dict:
    """Bytes -> a JSON object, or InvalidEvent. The shared first step of every topic's parser:
    no input (a tombstone, a huge value, deep nesting, bad UTF-8) raises anything else."""
    if raw is None or len(raw) == 0:
        raise InvalidEvent(REASON_EMPTY, "record has no value (tombstone or empty message)")
    if len(raw) > max_bytes:
        raise InvalidEvent(REASON_TOO_LARGE, f"{len(raw)} bytes > {max_bytes}")
    try:
        obj = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidEvent(REASON_NOT_JSON, str(exc)) from None
    except RecursionError:
        raise InvalidEvent(REASON_NOT_JSON, "JSON nested too deeply") from None
    if not isinstance(obj, dict):
        raise InvalidEvent(REASON_NOT_OBJECT, f"expected a JSON object, got {type(obj).__name__}")
    return obj


def check_time(name: str, value: int, *, now_ms: int, max_future_skew_ms: int) -> None:
    """One time rule for every epoch-ms field: not before 2000 (a unit bug), not ahead of the
    consumer clock by more than the allowed skew (a far-future time would freeze the entity:
    Feast only accepts strictly newer rows)."""
    if value > now_ms + max_future_skew_ms:
        raise InvalidEvent(
            REASON_FUTURE_TIME,
            f"{name} {value} is {value - now_ms} ms ahead of the consumer clock "
            f"(allowed skew {max_future_skew_ms} ms)",
        )
    if value < MIN_EVENT_TIME_MS:
        raise InvalidEvent(REASON_ANCIENT_TIME, f"{name} {value} is before year 2000")


def _check_fields(obj: dict, required: dict[str, type | tuple[type, ...]]) -> None:
    """Every required field present with its type, and the schema version ours."""
    for name, kind in required.items():
        if name not in obj:
            raise InvalidEvent(REASON_MISSING_FIELD, f"field {name!r} is missing")
        value = obj[name]
        ok = _is_int(value) if kind is int else isinstance(value, kind)
        if not ok:
            raise InvalidEvent(
                REASON_WRONG_TYPE, f"field {name!r} must be {kind.__name__}, got {type(value).__name__}"
            )
    if obj["schema_version"] != SCHEMA_VERSION:
        raise InvalidEvent(
            REASON_SCHEMA_VERSION, f"schema_version {obj['schema_version']} != {SCHEMA_VERSION}"
        )


def _check_identity(obj: dict, *, now_ms: int, max_future_skew_ms: int) -> str:
    """The checks every user event shares (actions, impressions): ids in bounds, event_id
    1..MAX_EVENT_ID_CHARS of UTF-8 text, event_time by `check_time`. Returns the surface."""
    for name in ("user_id", "pin_id"):
        if not 0 < obj[name] <= MAX_ID:
            raise InvalidEvent(REASON_BAD_ID, f"{name} {obj[name]} outside 1..{MAX_ID}")
    event_id = obj["event_id"]
    if not event_id or len(event_id) > MAX_EVENT_ID_CHARS:
        raise InvalidEvent(REASON_BAD_ID, f"event_id must be 1..{MAX_EVENT_ID_CHARS} characters")
    if not _is_text(event_id):
        raise InvalidEvent(REASON_BAD_ID, "event_id is not valid UTF-8 text (lone surrogate)")
    check_time("event_time", obj["event_time"], now_ms=now_ms, max_future_skew_ms=max_future_skew_ms)
    surface = obj.get("surface", "homefeed")
    if not _is_text(surface):
        raise InvalidEvent(REASON_WRONG_TYPE, "surface must be UTF-8 text")
    return surface


def parse_event(
    raw: bytes, *, now_ms: int, max_future_skew_ms: int = MAX_FUTURE_SKEW_MS
) -> ActionEvent:
    """Cheap per-message checks. Raises InvalidEvent with a reason code and a message.

    These run on every message (microseconds each); the Great Expectations suite runs
    once per micro-batch on top of them.
    """
    obj = _load_json_object(raw, MAX_EVENT_BYTES)
    _check_fields(obj, REQUIRED_FIELDS)
    try:
        action = ActionType.parse(obj["action_type"])
    except ValueError as exc:
        raise InvalidEvent(REASON_UNKNOWN_ACTION, str(exc)) from None
    surface = _check_identity(obj, now_ms=now_ms, max_future_skew_ms=max_future_skew_ms)
    metadata = obj.get("metadata") or {}
    if not isinstance(metadata, dict):
        raise InvalidEvent(REASON_WRONG_TYPE, "metadata must be an object")
    return ActionEvent(
        event_id=obj["event_id"],
        user_id=obj["user_id"],
        pin_id=obj["pin_id"],
        action_type=action,
        event_time=obj["event_time"],
        surface=surface,
        metadata=metadata,
    )


# Columns of the action-event tables (world output and the pipeline's raw-event log).
EVENT_COLUMNS = ("event_id", "user_id", "pin_id", "action_type", "event_time", "surface")


# -- impressions (their own topic): a pin shown to a user ----------------------------------------
#
# Not an ActionType: an impression is what the user was shown, not what they did, so it feeds no
# label column, no model vocabulary and no schema fingerprint. Wire format, schema version 1:
#
#     {"schema_version": 1, "event_id": "i42-3", "user_id": 17, "pin_id": 4242,
#      "event_time": 1767225600001, "surface": "homefeed", "request_id": 42}
#
# `event_time` is when the pin was shown: strictly after the serve time of the request it belongs
# to (IMPRESSION_LAG_MS), so the features that request was served with can never include it.

IMPRESSION_LAG_MS = 1  # impression time = its request's serve time + this
IMPRESSION_REQUIRED_FIELDS: dict[str, type | tuple[type, ...]] = {
    "schema_version": int,
    "event_id": str,
    "user_id": int,
    "pin_id": int,
    "event_time": int,
}
# Columns of the impression-event tables (the pipeline's `impression_events` log).
IMPRESSION_COLUMNS = ("event_id", "user_id", "pin_id", "event_time", "surface", "request_id")
NO_REQUEST_ID = -1  # request_id of an impression sent without one (log and frames: int64, never null)


@dataclass(frozen=True, slots=True)
class ImpressionEvent:
    event_id: str
    user_id: int
    pin_id: int
    event_time: int  # epoch ms when the pin was shown
    surface: str = "homefeed"
    request_id: int | None = None

    def to_dict(self) -> dict[str, Any]:
        out = {"schema_version": SCHEMA_VERSION, "event_id": self.event_id, "user_id": self.user_id,
               "pin_id": self.pin_id, "event_time": self.event_time, "surface": self.surface}
        if self.request_id is not None:
            out["request_id"] = self.request_id
        return out

    def to_json(self) -> bytes:
        return json.dumps(self.to_dict(), separators=(",", ":")).encode()


def parse_impression(
    raw: bytes | None, *, now_ms: int, max_future_skew_ms: int = MAX_FUTURE_SKEW_MS
) -> ImpressionEvent:
    """Checks for the impressions topic: the action contract's envelope, id, event-id and time
    rules (shared code), then its own: an optional request_id in 0..MAX_ID, and no action_type
    (an action sent to this topic would otherwise be logged as a mere impression: it is
    dead-lettered as `wrong_topic`, so it can be re-sent where it belongs)."""
    obj = _load_json_object(raw, MAX_EVENT_BYTES)
    if "action_type" in obj:
        raise InvalidEvent(REASON_WRONG_TOPIC, "an action event (it has action_type) on the impressions topic")
    _check_fields(obj, IMPRESSION_REQUIRED_FIELDS)
    surface = _check_identity(obj, now_ms=now_ms, max_future_skew_ms=max_future_skew_ms)
    request_id = obj.get("request_id")
    if request_id is not None:
        if not _is_int(request_id):
            raise InvalidEvent(REASON_WRONG_TYPE, f"field 'request_id' must be int, got {type(request_id).__name__}")
        if not 0 <= request_id <= MAX_ID:
            raise InvalidEvent(REASON_BAD_ID, f"request_id {request_id} outside 0..{MAX_ID}")
    return ImpressionEvent(obj["event_id"], obj["user_id"], obj["pin_id"], obj["event_time"],
                           surface=surface, request_id=request_id)


# -- pin upserts (second topic): new pins and embedding refreshes -----------------------------

@dataclass(frozen=True, slots=True)
class PinUpsert:
    pin_id: int
    topic_id: int
    embedding: tuple[float, ...]
    created_ms: int  # when the pin was created
    event_time: int  # when this version of the pin's features was computed (epoch ms)
    # How long the pin's media runs (a video's duration), ms; None = unknown. Optional on the
    # wire: a record without it (or with null) parses, and the pin's duration is unknown.
    duration_ms: int | None = None

    def to_json(self) -> bytes:
        obj = {
            "schema_version": SCHEMA_VERSION, "pin_id": self.pin_id, "topic_id": self.topic_id,
            "embedding": list(self.embedding), "created_ms": self.created_ms,
            "event_time": self.event_time,
        }
        if self.duration_ms is not None:
            obj["duration_ms"] = self.duration_ms
        return json.dumps(obj, separators=(",", ":")).encode()


MAX_PIN_UPSERT_BYTES = 64 * 1024
# A pin's media runs at most a day: a longer value is a unit bug (microseconds for ms) or garbage.
MAX_DURATION_MS = 86_400_000


def parse_pin_upsert(raw: bytes | None, *, embedding_dim: int, now_ms: int,
                     max_future_skew_ms: int = MAX_FUTURE_SKEW_MS) -> PinUpsert:
    """Checks for the pin topic: the same envelope and time rules as actions; `duration_ms` is
    optional (absent or null: unknown), else an int in 0..MAX_DURATION_MS."""
    obj = _load_json_object(raw, MAX_PIN_UPSERT_BYTES)
    for name in ("schema_version", "pin_id", "topic_id", "created_ms", "event_time"):
        if name not in obj:
            raise InvalidEvent(REASON_MISSING_FIELD, f"field {name!r} is missing")
        if not _is_int(obj[name]):
            raise InvalidEvent(REASON_WRONG_TYPE, f"field {name!r} must be int")
    if obj["schema_version"] != SCHEMA_VERSION:
        raise InvalidEvent(REASON_SCHEMA_VERSION, f"schema_version {obj['schema_version']}")
    if not 0 < obj["pin_id"] <= MAX_ID:
        raise InvalidEvent(REASON_BAD_ID, f"pin_id {obj['pin_id']} outside 1..{MAX_ID}")
    if not 0 <= obj["topic_id"] <= MAX_INT64:
        raise InvalidEvent(REASON_BAD_ID, f"topic_id {obj['topic_id']} outside 0..{MAX_INT64}")
    check_time("event_time", obj["event_time"], now_ms=now_ms, max_future_skew_ms=max_future_skew_ms)
    check_time("created_ms", obj["created_ms"], now_ms=now_ms, max_future_skew_ms=max_future_skew_ms)
    emb = obj.get("embedding")
    if not isinstance(emb, list) or len(emb) != embedding_dim or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
            and abs(v) <= MAX_FLOAT32 for v in emb):
        raise InvalidEvent(REASON_WRONG_TYPE, f"embedding must be {embedding_dim} finite float32 numbers")
    duration = obj.get("duration_ms")
    if duration is not None:
        if not _is_int(duration):
            raise InvalidEvent(REASON_WRONG_TYPE, f"field 'duration_ms' must be int or null, got "
                               f"{type(duration).__name__}")
        if not 0 <= duration <= MAX_DURATION_MS:
            raise InvalidEvent(REASON_BAD_DURATION, f"duration_ms {duration} outside 0..{MAX_DURATION_MS}")
    return PinUpsert(obj["pin_id"], obj["topic_id"], tuple(float(v) for v in emb),
                     obj["created_ms"], obj["event_time"], duration)
