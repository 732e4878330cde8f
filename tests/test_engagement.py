"""Engagement counters against a real Redis: exactly once per record, versions Feast accepts,
and the read-time rule training and serving share (homefeed.engagement)."""

from __future__ import annotations

import itertools
import uuid

import numpy as np
import pytest

from homefeed import engagement as EN
from homefeed import features as F
from homefeed.stream.engagement import EngagementCounters, EngagementEvent, reference_counts

pytestmark = pytest.mark.integration

T0 = 1_767_571_200_000
H = 3_600_000
_ids = itertools.count(1)


def counters(redis_client) -> EngagementCounters:
    return EngagementCounters(redis_client, f"test-{uuid.uuid4().hex[:8]}", granularity_ms=1000)


def events(user: int, pins: list[int], kinds: list[str], times: list[int], arrivals: list[int],
           topic: str = "actions", partition: int = 0, first_offset: int = 0) -> list[EngagementEvent]:
    return [EngagementEvent(user, p, k, t, a, topic, partition, first_offset + i)
            for i, (p, k, t, a) in enumerate(zip(pins, kinds, times, arrivals))]


def check_against_reference(c: EngagementCounters, view: str, entity: int, evs: list[EngagementEvent]):
    want_d, want_n, want_a = reference_counts([(e.kind, e.event_time_ms) for e in evs])
    got = c.read(view, [entity])[entity]
    assert got["totals"] == want_n and got["as_of"] == want_a
    np.testing.assert_allclose(got["decayed"], want_d, rtol=1e-12)


def test_a_replayed_batch_counts_once_and_returns_the_current_rows(redis_client):
    c = counters(redis_client)
    user = next(_ids)
    batch = events(user, [7, 8, 7, 9], ["impression", "click", "impression", "repin"],
                   [T0, T0 + 10, T0 + H, T0 + 2 * H], [T0 + 5, T0 + 20, T0 + H + 5, T0 + 2 * H + 5])
    first = c.apply(batch)
    again = c.apply(batch)  # the crash-before-commit replay
    check_against_reference(c, F.USER_ENGAGEMENT, user, batch)
    check_against_reference(c, F.PIN_ENGAGEMENT, 7, [e for e in batch if e.pin_id == 7])
    # one version per arrival window; the replay counts nothing and returns the newest version
    assert [r[F.EVENT_TIMESTAMP] for r in first[F.USER_ENGAGEMENT]] == [T0 + 10, T0 + H, T0 + 2 * H]
    assert again[F.USER_ENGAGEMENT] == first[F.USER_ENGAGEMENT][-1:]
    assert {r[F.PIN_ID] for r in again[F.PIN_ENGAGEMENT]} == {7, 8, 9}
    # the same records delivered again in a later batch, mixed with new ones: only the new count
    later = events(user, [8], ["hide"], [T0 + 3 * H], [T0 + 3 * H], first_offset=4)
    c.apply(batch[2:] + later)
    check_against_reference(c, F.USER_ENGAGEMENT, user, batch + later)


def test_pins_count_records_of_every_partition_once_in_any_order(redis_client):
    """A pin receives events from every partition (users are partitioned, pins are not); marks
    are per (topic, partition), so a late event and an impression of another topic count too."""
    c = counters(redis_client)
    pin = 10_000 + next(_ids)
    p0 = events(1, [pin] * 3, ["click", "impression", "click"], [T0, T0 + 1, T0 + 2 * H],
                [T0 + 1, T0 + 2, T0 + 2 * H], partition=0)
    p1 = events(2, [pin] * 2, ["hide", "repin"], [T0 - H, T0 + 3 * H], [T0 + 2 * H + 1, T0 + 3 * H],
                partition=1)  # the hide is a late event: older than what the pin holds
    imp = events(3, [pin], ["impression"], [T0 + 3], [T0 + 4], topic="impressions")
    rows = []
    for batch in (p0[:2], p1[:1], imp, p0, p1, p0[2:], imp):  # overlapping redeliveries
        rows += c.apply(batch)[F.PIN_ENGAGEMENT]
    check_against_reference(c, F.PIN_ENGAGEMENT, pin, p0 + p1 + imp)
    versions = [r[F.EVENT_TIMESTAMP] for r in rows]
    assert versions == sorted(versions)  # never older; strictly newer whenever something counted
    new = [r for i, r in enumerate(rows) if i == 0 or r[F.PE_TOTALS] != rows[i - 1][F.PE_TOTALS]]
    assert len({r[F.EVENT_TIMESTAMP] for r in new}) == len(new)
    late = next(r for r in rows if r[F.PE_TOTALS][F.ENGAGEMENT_KINDS.index("hide")] == 1)
    assert late[F.CREATED] >= T0 + 2 * H + 1  # a training row served before it arrived cannot see it
    assert all(r[F.CREATED] >= r[F.EVENT_TIMESTAMP] for r in rows)


def test_an_unknown_kind_is_refused_before_anything_is_counted(redis_client):
    c = counters(redis_client)
    with pytest.raises(ValueError, match="unknown engagement kinds"):
        c.apply(events(next(_ids), [1], ["share"], [T0], [T0]))


def test_read_time_rule_decays_and_smooths():
    stored = [1.0] * EN.N_VALUES
    block = EN.dense_block([stored, None], [T0, None], [T0 + H, T0])
    names = EN.dense_names("pin")
    assert block.shape == (2, len(names))
    col = {n: i for i, n in enumerate(names)}
    assert block[0, col["pin_log_click_1h"]] == pytest.approx(np.log1p(0.5))  # one half-life later
    assert block[0, col["pin_log_click_1d"]] == pytest.approx(np.log1p(2 ** (-1 / 24)))
    # no row: zero counts and the prior rates
    assert block[1, col["pin_log_impression_7d"]] == 0.0
    assert block[1, col["pin_click_rate_1d"]] == pytest.approx(EN.PRIOR_RATE["click"])
    # a row stamped after the read time is not decayed upwards
    assert EN.dense_block([stored], [T0 + H], [T0])[0, col["pin_log_click_1h"]] == pytest.approx(np.log1p(1.0))


def test_the_logged_counter_versions_pass_their_suite_and_a_bad_row_fails(redis_client, tmp_path):
    from homefeed.settings import Settings
    from homefeed.stream.engagement import engagement_table
    from homefeed.validation import runner
    from homefeed.validation import suites as S

    c = counters(redis_client)
    user = next(_ids)
    rows = c.apply(events(user, [3, 4, 3], ["click", "repin", "hide"], [T0, T0 + H, T0 - H],
                          [T0 + 1, T0 + H + 1, T0 + H + 2]))
    S.init_context(tmp_path / "validation")
    try:
        for view, key in ((F.USER_ENGAGEMENT, F.USER_ID), (F.PIN_ENGAGEMENT, F.PIN_ID)):
            frame = engagement_table(view, rows[view]).to_pandas()
            report = runner.validate_dataframe(view, frame, project_dir=tmp_path / "validation",
                                               settings=Settings())
            assert report.success, report.to_text()
            decayed = F.ENGAGEMENT_VIEWS[view][1][0]
            bad = frame.copy()
            bad.at[0, decayed] = [5.0] * EN.N_VALUES  # more than ever counted
            report = runner.validate_dataframe(view, bad, project_dir=tmp_path / "validation",
                                               settings=Settings())
            assert not report.success and "bad_counters" in report.failed_checks
    finally:
        runner.clear_cache()
