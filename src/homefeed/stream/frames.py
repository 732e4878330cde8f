"""The offline log's rows, built in one place for the consumer, backfill and validation.

1. user events (`events_frame`, `impressions_frame`): one shape for the log, the push and the
   batch suites;
2. sequence versions (`sequence_row`, `sequence_table`), one per user and
   `SNAPSHOT_GRANULARITY_MS` of arrival (backfill: one per rebuild);
3. pin features (`pin_row`, `pin_frame`).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa

from homefeed import events as E
from homefeed import features as F
from homefeed import offline_log
from homefeed.sequence import SequenceState

# A micro-batch replaying history can span hours of event time. The offline log keeps one sequence
# version per user per this much arrival time, so point-in-time joins see the sequence as it was
# servable then, not as of the end of the batch. Live batches (~100 ms) give one version per user.
SNAPSHOT_GRANULARITY_MS = 1000


def events_frame(evs: list[E.ActionEvent], arrival_ms: list[int]) -> pd.DataFrame:
    return _user_event_frame(evs, arrival_ms, action_type=[e.action_type.wire_name for e in evs])


def impressions_frame(evs: list[E.ImpressionEvent], arrival_ms: list[int]) -> pd.DataFrame:
    """The `impression_events` log's rows (request_id NO_REQUEST_ID when sent without one)."""
    return _user_event_frame(evs, arrival_ms, request_id=pd.array(
        [E.NO_REQUEST_ID if e.request_id is None else e.request_id for e in evs], dtype="int64"))


def _user_event_frame(evs: list, arrival_ms: list[int], **own) -> pd.DataFrame:
    """The columns every user event's frame has (ids, times, surface, log timestamps), with the
    kind's `own` columns after pin_id."""
    frame = pd.DataFrame({
        "event_id": [e.event_id for e in evs],
        F.USER_ID: pd.array([e.user_id for e in evs], dtype="int64"),
        F.PIN_ID: pd.array([e.pin_id for e in evs], dtype="int64"),
        **own,
        "event_time": pd.array([e.event_time for e in evs], dtype="int64"),
        "arrival_time": pd.array(arrival_ms, dtype="int64"),
        "surface": [e.surface for e in evs],
    })
    frame[F.EVENT_TIMESTAMP] = offline_log.to_utc_us(frame["event_time"])
    frame[F.CREATED] = offline_log.to_utc_us(frame["arrival_time"])
    return frame


def sequence_row(user_id: int, state: SequenceState, view: F.SequenceView, created_ms: int) -> dict:
    """One version of a user's sequence in `view`, as logged and pushed: the state's snapshot
    time as event timestamp, `created_ms` (when it became servable) and the view's features."""
    return {F.USER_ID: user_id, F.EVENT_TIMESTAMP: state.snapshot_ms, F.CREATED: created_ms,
            **state.feature_row(view)}


def sequence_table(rows: list[dict], view: F.SequenceView = F.ACTION_SEQUENCE) -> pa.Table:
    """Sequence rows of `view` (feature rows with user id and epoch-ms timestamps) as the log's
    Arrow table, column by column: no pandas round trip for the list columns, which are most of
    a batch's log write."""
    def column(name: str) -> list:
        return [r[name] for r in rows]

    def utc_us(name: str) -> pa.Array:
        return pa.array(np.asarray(column(name), dtype=np.int64) * 1000, pa.timestamp("us", tz="UTC"))

    return pa.table({
        F.USER_ID: pa.array(column(F.USER_ID), pa.int64()),
        F.EVENT_TIMESTAMP: utc_us(F.EVENT_TIMESTAMP),
        F.CREATED: utc_us(F.CREATED),
        **{name: offline_log.int64_lists(column(name))
           for name in (view.pin_ids, view.action_types, view.times) if name},
        view.length: pa.array(column(view.length), pa.int32()),
    })


def pin_row(pin_id: int, embedding: list[float], topic_id: int, created_ms: int, duration_ms: int | None,
            event_ms: int, arrival_ms: int) -> dict:
    """One pin's features, as logged (`pin_frame`) and pushed; times in epoch ms."""
    return {F.PIN_ID: pin_id, F.PIN_EMBEDDING: embedding, F.PIN_TOPIC: topic_id, F.PIN_CREATED_MS: created_ms,
            F.PIN_DURATION_MS: duration_ms, F.EVENT_TIMESTAMP: event_ms, F.CREATED: arrival_ms}


def pin_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """Pin rows as logged: epoch-ms times as UTC timestamps, the optional duration as a nullable
    int64 (a batch of unknown durations is an int64 column of nulls, not an untyped one)."""
    frame = frame.copy()
    if F.PIN_DURATION_MS in frame:
        frame[F.PIN_DURATION_MS] = frame[F.PIN_DURATION_MS].astype("Int64")
    for col in (F.EVENT_TIMESTAMP, F.CREATED):
        frame[col] = offline_log.to_utc_us(frame[col].astype("int64"))
    return frame
