"""The event contracts' cheap checks (homefeed.events), without a broker: impressions share the
action contract's envelope, id and time rules and add their own."""

from __future__ import annotations

import json

import pytest

from homefeed import events as E

NOW = 1_767_571_200_000


def impression(**changes) -> bytes:
    obj = {"schema_version": 1, "event_id": "i7-0", "user_id": 3, "pin_id": 9, "event_time": NOW - 5,
           "surface": "homefeed", "request_id": 7, **changes}
    return json.dumps({k: v for k, v in obj.items() if v is not ...}).encode()


def test_an_impression_round_trips():
    ev = E.ImpressionEvent("i7-0", 3, 9, NOW - 5, request_id=7)
    assert E.parse_impression(ev.to_json(), now_ms=NOW) == ev
    bare = E.ImpressionEvent("x", 3, 9, NOW - 5)  # request_id is optional
    assert "request_id" not in bare.to_dict() and E.parse_impression(bare.to_json(), now_ms=NOW) == bare


@pytest.mark.parametrize("raw, reason", [
    (b"", E.REASON_EMPTY),
    (None, E.REASON_EMPTY),
    (b"{nope", E.REASON_NOT_JSON),
    (b"[1]", E.REASON_NOT_OBJECT),
    (impression(surface="x" * E.MAX_EVENT_BYTES), E.REASON_TOO_LARGE),
    (impression(pin_id=...), E.REASON_MISSING_FIELD),
    (impression(user_id="3"), E.REASON_WRONG_TYPE),
    (impression(event_time=True), E.REASON_WRONG_TYPE),
    (impression(schema_version=2), E.REASON_SCHEMA_VERSION),
    (impression(user_id=0), E.REASON_BAD_ID),
    (impression(pin_id=E.MAX_ID + 1), E.REASON_BAD_ID),
    (impression(event_id=""), E.REASON_BAD_ID),
    (impression(request_id=-1), E.REASON_BAD_ID),
    (impression(request_id="7"), E.REASON_WRONG_TYPE),
    (impression(surface=5), E.REASON_WRONG_TYPE),
    (impression(event_time=NOW + E.MAX_FUTURE_SKEW_MS + 1), E.REASON_FUTURE_TIME),
    (impression(event_time=NOW // 1000), E.REASON_ANCIENT_TIME),
    (impression(action_type="repin"), E.REASON_WRONG_TOPIC),
])
def test_a_bad_impression_gets_its_reason(raw, reason):
    with pytest.raises(E.InvalidEvent) as err:
        E.parse_impression(raw, now_ms=NOW)
    assert err.value.reason == reason and reason in E.DEAD_LETTER_REASONS


def test_actions_keep_their_reasons_after_sharing_the_checks():
    good = {"schema_version": 1, "event_id": "a", "user_id": 1, "pin_id": 1, "action_type": "repin",
            "event_time": NOW - 1, "surface": "homefeed", "metadata": {}}
    assert E.parse_event(json.dumps(good).encode(), now_ms=NOW).action_type is E.ActionType.REPIN
    for changes, reason in [({"action_type": "like", "user_id": 0}, E.REASON_UNKNOWN_ACTION),
                            ({"user_id": 0}, E.REASON_BAD_ID), ({"metadata": [1]}, E.REASON_WRONG_TYPE),
                            ({"surface": 1}, E.REASON_WRONG_TYPE)]:
        with pytest.raises(E.InvalidEvent) as err:
            E.parse_event(json.dumps({**good, **changes}).encode(), now_ms=NOW)
        assert err.value.reason == reason


def pin_upsert(**changes) -> bytes:
    obj = {"schema_version": 1, "pin_id": 9, "topic_id": 2, "embedding": [0.5, -0.5],
           "created_ms": NOW - 86_400_000, "event_time": NOW - 5, **changes}
    return json.dumps({k: v for k, v in obj.items() if v is not ...}).encode()


def test_a_pin_upsert_carries_an_optional_duration():
    up = E.PinUpsert(9, 2, (0.5, -0.5), NOW - 86_400_000, NOW - 5, duration_ms=87_433)
    assert json.loads(up.to_json())["duration_ms"] == 87_433
    assert E.parse_pin_upsert(up.to_json(), embedding_dim=2, now_ms=NOW) == up
    unknown = E.PinUpsert(9, 2, (0.5, -0.5), NOW - 86_400_000, NOW - 5)  # no duration: not sent
    assert "duration_ms" not in json.loads(unknown.to_json())
    # records written before the field existed, and an explicit null, parse as unknown
    for raw in (unknown.to_json(), pin_upsert(), pin_upsert(duration_ms=None)):
        assert E.parse_pin_upsert(raw, embedding_dim=2, now_ms=NOW).duration_ms is None
    for ok in (0, E.MAX_DURATION_MS):
        assert E.parse_pin_upsert(pin_upsert(duration_ms=ok), embedding_dim=2, now_ms=NOW).duration_ms == ok


@pytest.mark.parametrize("duration, reason", [
    ("87433", E.REASON_WRONG_TYPE),
    (87.5, E.REASON_WRONG_TYPE),
    (True, E.REASON_WRONG_TYPE),
    (-1, E.REASON_BAD_DURATION),
    (E.MAX_DURATION_MS + 1, E.REASON_BAD_DURATION),
    (120_000_000_000, E.REASON_BAD_DURATION),  # a 2-minute video in microseconds
])
def test_a_bad_pin_duration_gets_its_reason(duration, reason):
    with pytest.raises(E.InvalidEvent) as err:
        E.parse_pin_upsert(pin_upsert(duration_ms=duration), embedding_dim=2, now_ms=NOW)
    assert err.value.reason == reason and reason in E.DEAD_LETTER_REASONS
