"""The event kinds the events API takes: one entry per topic contract, checked by the consumer's code.

1. `EventKind` names a kind (the URL path `/v1/<name>`), the settings field of its topic, the
   contract's parser (the same function the stream consumer runs on every record, so a 400 names
   the field and the reason code the consumer's dead-letter entry would) and the record key.
2. `check(kind, obj)` turns one JSON value of a request into either the bytes to produce or a
   `Rejection` (reason code, one-line detail, the field it names).

Two kinds today, both from `homefeed.events`: `actions` (what a user did) and `impressions`
(what a user was shown: the denominator of the engagement counters). Another kind is one more
`EventKind` entry: its parser and its key.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from typing import Any, Callable

from homefeed import events as E


@dataclass(frozen=True)
class EventKind:
    name: str  # URL path segment and metric label
    topic_setting: str  # the Settings field holding its topic
    parse: Callable[..., Any]  # bytes -> event, or raises events.InvalidEvent
    key: Callable[[Any], bytes]  # the record key (per-user order: one user, one partition)
    fields: tuple[str, ...]  # the contract's field names (a rejection names the one it is about)


KINDS: dict[str, EventKind] = {
    "actions": EventKind("actions", "actions_topic", E.parse_event, lambda ev: str(ev.user_id).encode(),
                         (*E.REQUIRED_FIELDS, "surface", "metadata")),
    "impressions": EventKind("impressions", "impressions_topic", E.parse_impression,
                             lambda ev: str(ev.user_id).encode(), E.IMPRESSION_COLUMNS),
}


@dataclass(frozen=True)
class Rejection:
    reason: str  # events.REASON_* (the consumer's dead-letter reason)
    detail: str
    field: str | None

    def to_dict(self, index: int) -> dict:
        return {"index": index, "status": "rejected", "reason": self.reason, "field": self.field,
                "error": f"{self.reason}: {self.detail}"}


def field_of(kind: EventKind, exc: E.InvalidEvent) -> str | None:
    """The contract field an InvalidEvent's detail names first ("field 'pin_id' is missing",
    "user_id 0 outside 1..", "unknown action_type 'like'"); None for a whole-message reason."""
    match = re.search(r"\b(" + "|".join(map(re.escape, kind.fields)) + r")\b", exc.detail)
    return match.group(1) if match else None


def check(kind: EventKind, obj: Any, *, now_ms: int | None = None,
          max_future_skew_ms: int = E.MAX_FUTURE_SKEW_MS) -> tuple[bytes, bytes] | Rejection:
    """One event of a request -> (key, value to produce) or a Rejection. The value is the
    event's canonical wire form (what the consumer parses), checked by the consumer's parser."""
    raw = json.dumps(obj, separators=(",", ":")).encode()  # ASCII: as events.ActionEvent.to_json
    try:
        event = kind.parse(raw, now_ms=now_ms if now_ms is not None else time.time_ns() // 1_000_000,
                           max_future_skew_ms=max_future_skew_ms)
    except E.InvalidEvent as exc:
        return Rejection(exc.reason, exc.detail, field_of(kind, exc))
    return kind.key(event), event.to_json()
