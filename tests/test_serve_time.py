"""Serve-time histories: every dataset row sees what serving read when that impression was served.

A KuaiRand log (written here in the official layout) serves each impression at its own time. One
user's test day: a click at 10:00, nothing at 10:10, a like at 10:20, nothing at 10:30. The log is
replayed through the real path in two phases (everything that arrived before the 10:30 impression
was served, then the rest), the ranking service's online reader reads the user's sequence between
the phases, and `dataset build` then gives each impression its own snapshot:

* the same-day click is visible from the 10:10 impression on, the like only at 10:30 (a same-day
  action must be, and a later one must not be, in the history);
* the 10:30 impression's sequence is exactly what the online reader returned at that moment
  (training/serving parity), and the leakage audit finds 0 leaked actions;
* the four impressions stay one request (HIT@3's unit) with four snapshots;
* the engagement counters too: the 10:30 impression's user and pin counter rows are what the
  online reader returned then, and the model's engagement features from the training set equal
  those serving builds from the reader at that instant (the same decay, the same numbers);
* and the pin's metadata: its video duration reaches the model the same way on both sides;
* and the impression sequence (the pins shown): each impression's row holds the day's earlier
  impressions, never its own or a later one, the 10:30 row exactly what the online reader
  returned then, and a model with `sequence_impressions` gets the same merged sequence from the
  training row as serving builds from the reader.
"""

from __future__ import annotations

import numpy as np
import pytest
from helpers import replay
from test_kuairand import DAY0_BJ, H, row, write_features, write_log

from homefeed import features as F
from homefeed.events import ActionEvent, ActionType
from homefeed.world import DAY_MS, load_world
from homefeed.world.kuairand import KuaiRandParams, import_kuairand

pytestmark = [pytest.mark.integration, pytest.mark.slow]
USER = 0  # KuaiRand id; homefeed id USER + 1
TEST_DAY = 3
MIN = 60_000
V = (11, 12, 13, 14)  # the test day's videos, in time order


def _rows():
    rows = []
    for day in range(TEST_DAY):  # earlier days: a little history for everyone
        for user in range(3):
            for k in range(3):
                rows.append(row(user, (user + day + k) % 10, DAY0_BJ + day * DAY_MS + 9 * H + k * MIN,
                                click=int(k != 1)))
    t = DAY0_BJ + TEST_DAY * DAY_MS + 10 * H
    rows += [row(USER, 11, t, click=1), row(USER, 12, t + 10 * MIN),
             row(USER, 13, t + 20 * MIN, click=1, like=1), row(USER, 14, t + 30 * MIN)]
    rows += [row(1, 5, t, click=1), row(1, 6, t + 5 * MIN)]
    rows += [row(2, 14, t + 5 * MIN, click=1)]  # the 10:30 candidate's pin has a click by then
    return rows, t


def _events(world, arrived_before=None, arrived_from=None):
    ev = world.events
    keep = np.ones(len(ev), dtype=bool)
    if arrived_before is not None:
        keep &= ev["arrival_time"].to_numpy() < arrived_before
    if arrived_from is not None:
        keep &= ev["arrival_time"].to_numpy() >= arrived_from
    return [(ActionEvent(r.event_id, int(r.user_id), int(r.pin_id), ActionType.parse(r.action_type),
                         int(r.event_time)), int(r.arrival_time)) for r in ev[keep].itertuples()]


def test_each_impression_sees_the_history_serving_read_when_it_was_served(pipeline, tmp_path):
    from homefeed.feature_store import open_store
    from homefeed.serving.online_features import OnlineFeatureReader
    from homefeed.training.dataset import build_dataset, load_dataset
    from homefeed.training.profiles_job import run_profile_job

    rows, t = _rows()
    src = write_log(tmp_path / "src", rows)
    write_features(src)
    import_kuairand(src, tmp_path / "world", KuaiRandParams(embedding_dim=pipeline.embedding_dim,
                                                            eval_days=1, max_vocab=50))
    world = load_world(tmp_path / "world")
    user = USER + 1
    mine = world.requests[(world.requests[F.USER_ID] == user) & (world.requests["day"] == TEST_DAY)]
    served = dict(zip(mine[F.PIN_ID] - 1, mine[F.SERVED_TIME]))  # KuaiRand video id -> serve ms
    assert mine[F.REQUEST_ID].nunique() == 1 and len(served) == 4
    shift = world.meta["kuairand"]["time_shift_ms"]
    # each impression 1 ms before its own time, not at its request's start
    assert [served[v] for v in V] == [t + shift + k * 10 * MIN - 1 for k in range(4)]

    # Phase 1: everything that arrived before the 10:30 impression was served; serving reads then.
    cut = int(served[14])
    shown = world.impressions()
    early = shown["arrival_time"].to_numpy() < cut
    replay(pipeline, _events(world, arrived_before=cut), world.pins, world.start_ms, batch_max_events=50,
           impressions=shown[early])
    store = open_store(pipeline.feature_repo)
    reader = OnlineFeatureReader(store, pipeline, max_staleness_s=0, impressions=True)
    online = reader.user_features(user)
    online_pin = reader.pin_features(np.asarray([14 + 1]))  # the 10:30 candidate (homefeed id)
    replay(pipeline, _events(world, arrived_from=cut), batch_max_events=50, impressions=shown[~early])
    run_profile_job(pipeline)

    meta = build_dataset(tmp_path / "world", tmp_path / "ds", pipeline, store=store, warmup_days=1,
                         valid_days=1, test_days=1, validate=False, progress=False)
    assert meta["audit"]["leaked_actions"] == 0
    assert meta["audit"]["leaked_impressions"] == meta["audit"]["unmatched_impressions"] == 0
    assert meta["audit"]["sequence_impressions"] > 0
    ds = load_dataset(tmp_path / "ds")
    imp = ds.impressions[ds.impressions[F.USER_ID] == user].merge(
        ds.requests[[F.SNAPSHOT_ID, "request_time_ms", F.SEQ_PIN_IDS, F.SEQ_ACTION_TIMES]],
        on=F.SNAPSHOT_ID)
    today = imp[imp[F.REQUEST_ID] == mine[F.REQUEST_ID].iloc[0]]
    today = today.set_index(today[F.PIN_ID] - 1)
    assert today[F.REQUEST_ID].nunique() == 1 and today[F.SNAPSHOT_ID].nunique() == 4
    seq = {v: [p - 1 for p in today.loc[v, F.SEQ_PIN_IDS]] for v in V}
    assert 11 not in seq[11] and 13 not in seq[11]   # its own click happens after it is served
    assert seq[12][0] == 11 and 13 not in seq[12]    # the same day's earlier click is visible
    assert seq[13][0] == 11 and 13 not in seq[13]    # ... the later like is not
    assert seq[14][:2] == [13, 11]                   # both, newest first
    assert len(seq[11]) > 0                          # (and the earlier days' history)
    for v in V:                           # every action before its serve time
        assert all(x < served[v] for x in today.loc[v, F.SEQ_ACTION_TIMES])

    # Parity: the 10:30 row is what the online reader returned at that moment.
    assert list(today.loc[14, F.SEQ_PIN_IDS]) == online.seq_pin_ids.tolist()
    assert list(today.loc[14, F.SEQ_ACTION_TIMES]) == online.seq_action_times.tolist()
    assert meta["counts"]["test"]["snapshots"] > meta["counts"]["test"]["requests"]

    # Impression sequences: as of each serve time (arrived before it), the 10:30 one what serving read.
    shown_seq = ds.requests.set_index(F.SNAPSHOT_ID).loc[today[F.SNAPSHOT_ID]]
    shown_seq.index = today.index
    imps = {v: [p - 1 for p in shown_seq.loc[v, F.IMP_PIN_IDS]] for v in V}
    assert imps[12][0] == 11 and imps[14][:3] == [13, 12, 11]  # the day's earlier impressions
    for k, v in enumerate(V):  # never its own impression nor a later one
        assert not set(imps[v]) & set(V[k:])
        assert all(x < served[v] for x in shown_seq.loc[v, F.IMP_TIMES])
    assert list(shown_seq.loc[14, F.IMP_PIN_IDS]) == online.imp_pin_ids.tolist()
    assert list(shown_seq.loc[14, F.IMP_TIMES]) == online.imp_times.tolist()
    # ... and the merged model input is the same on both sides (homefeed.model.merge_impressions)
    from homefeed.model import ModelConfig
    from homefeed.serving.fast_model import ServedRanker
    from homefeed.serving.ranking import RankingEngine
    from homefeed.training.data import PinTable, RankingData

    seq_len = pipeline.sequence_length
    row = ds.requests[ds.requests[F.SNAPSHOT_ID] == today.loc[14, F.SNAPSHOT_ID]]
    trained_seq = RankingData(row, ds.impressions[ds.impressions[F.SNAPSHOT_ID].isin(row[F.SNAPSHOT_ID])],
                              PinTable(ds.pins, pipeline.embedding_dim), seq_len, ("click",),
                              sequence_impressions=True)
    n = int(trained_seq.seq_lengths[0])
    assert n > len(online.seq_pin_ids)  # impressions are in it
    from homefeed.model import build_model

    engine = RankingEngine(ServedRanker(build_model(ModelConfig(
        seq_len=seq_len, emb_dim=pipeline.embedding_dim, sequence_impressions=True, heads=("click",)))),
        reader, "parity", blend={"click": 1.0})
    served_seq = engine.sequence(online)
    for got, want in zip(served_seq, (trained_seq.seq_pins, trained_seq.seq_actions, trained_seq.seq_times)):
        assert got.tolist() == want[0, :n].tolist()

    # Engagement parity: the same stored rows, and the same dense features at the serve time.
    from homefeed import engagement as EN
    from homefeed.model.dense import dense_feature_names, dense_features, dense_from_inputs
    from homefeed.serving.ranking import dense_candidates, dense_user

    at = int(served[14])
    req = ds.requests[ds.requests[F.SNAPSHOT_ID] == today.loc[14, F.SNAPSHOT_ID]].reset_index(drop=True)
    cand = ds.impressions[ds.impressions[F.SNAPSHOT_ID] == req.loc[0, F.SNAPSHOT_ID]].reset_index(drop=True)
    assert list(req.loc[0, F.UE_DECAYED]) == online.engagement_decayed.tolist()
    assert req.loc[0, F.UE_AS_OF_MS] == online.engagement_as_of_ms
    assert list(cand.loc[0, F.PE_DECAYED]) == online_pin.engagement[0].tolist()
    assert cand.loc[0, F.PE_AS_OF_MS] == online_pin.engagement_as_of_ms[0]
    click = F.ENGAGEMENT_KINDS.index("click")
    assert req.loc[0, F.UE_TOTALS][click] >= 2 and cand.loc[0, F.PE_TOTALS][click] == 1  # not trivial
    trained = dense_features(req, cand, req["request_time_ms"].to_numpy(), np.zeros(1, np.int64))
    serving = dense_from_inputs(dense_user(online, pipeline.embedding_dim), dense_candidates(online_pin), at)
    names = dense_feature_names(pipeline.embedding_dim)
    cols = [names.index(n) for n in EN.dense_names("user") + EN.dense_names("pin")]
    assert req.loc[0, "request_time_ms"] == at
    np.testing.assert_array_equal(trained[:, cols], serving[:, cols])
    assert np.abs(serving[:, cols]).sum() > 0

    # Pin metadata parity: the video's duration (video_duration in the feature file) through the
    # pin upsert, the online store and the training set, the same dense inputs on both sides.
    assert online_pin.duration_ms[0] == cand.loc[0, F.PIN_DURATION_MS] == 105_000  # video 14
    meta_cols = [names.index(n) for n in ("log_pin_age_days", "log_pin_duration_s", "has_pin_duration")]
    np.testing.assert_array_equal(trained[:, meta_cols], serving[:, meta_cols])
    assert serving[0, meta_cols[2]] == 1 and serving[0, meta_cols[1]] == np.float32(np.log1p(105.0))
