"""The fast online read path (homefeed.serving.online_features) against Feast's own reads.

Every value the reader returns is compared with `store.get_online_features` for the same keys,
on the session's real Redis (rows written with Feast's push / write_to_online_store). Ids live in
a range no other test module uses.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from homefeed import features as F
from homefeed.settings import load_settings

pytestmark = pytest.mark.integration

BASE = 7_000_000  # pin and user ids of this module
T0 = pd.Timestamp("2026-02-01 12:00", tz="UTC")


class FakeClock:
    def __init__(self, t: float = 1000.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


def pin_frame(ids, dim, ts, seed=0):
    rng = np.random.default_rng(seed)
    n = len(ids)
    return pd.DataFrame({
        F.PIN_ID: np.asarray(ids, dtype=np.int64),
        F.PIN_EMBEDDING: [rng.normal(size=dim).astype(np.float32) for _ in range(n)],
        F.PIN_TOPIC: rng.integers(0, 50, n).astype(np.int64),
        F.PIN_CREATED_MS: (T0.value // 1_000_000 - rng.integers(0, 10**9, n)).astype(np.int64),
        # every third pin has no known duration (null), one in 50 a zero one
        F.PIN_DURATION_MS: pd.array([None if i % 3 == 0 else int(d) for i, d in
                                     enumerate(rng.integers(0, 600_000, n) * (np.arange(n) % 50 != 1))],
                                    dtype="Int64"),
        F.EVENT_TIMESTAMP: [ts] * n,
        F.CREATED: [ts] * n,
    })


def sequence_frame(user_ids, ts, lengths, seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for uid, n in zip(user_ids, lengths):
        newest = ts.value // 1_000_000
        rows.append({
            F.USER_ID: uid, F.EVENT_TIMESTAMP: ts, F.CREATED: ts,
            F.SEQ_PIN_IDS: rng.integers(1, 10**7, n).astype(np.int64),
            F.SEQ_ACTION_TYPES: rng.integers(1, 4, n).astype(np.int32),
            F.SEQ_ACTION_TIMES: newest - np.sort(rng.integers(0, 86_400_000, n)).astype(np.int64),
            F.SEQ_LENGTH: np.int32(n),
        })
    return pd.DataFrame(rows)


def profile_frame(user_ids, dim, ts, seed=0):
    rng = np.random.default_rng(seed)
    n = len(user_ids)
    return pd.DataFrame({
        F.USER_ID: np.asarray(user_ids, dtype=np.int64),
        F.PROFILE_EMBEDDING: [rng.normal(size=dim).astype(np.float32) for _ in range(n)],
        F.PROFILE_ACTIONS_28D: rng.integers(0, 500, n).astype(np.int64),
        F.PROFILE_REPIN_RATE_28D: rng.random(n).astype(np.float32),
        F.PROFILE_HIDE_RATE_28D: rng.random(n).astype(np.float32),
        F.PROFILE_DAYS_ACTIVE_28D: rng.integers(0, 28, n).astype(np.int64),
        F.EVENT_TIMESTAMP: [ts] * n,
        F.CREATED: [ts] * n,
    })


def feast_pins(store, ids):
    return store.get_online_features(features=F.feature_refs(F.PIN_FEATURES, F.PIN_FEATURE_NAMES),
                                     entity_rows=[{F.PIN_ID: int(i)} for i in ids]).to_dict()


def feast_users(store, ids):
    refs = (F.feature_refs(F.USER_ACTION_SEQUENCE, F.SEQUENCE_FEATURE_NAMES)
            + F.feature_refs(F.USER_PROFILE, F.PROFILE_FEATURE_NAMES))
    return store.get_online_features(features=refs, entity_rows=[{F.USER_ID: int(i)} for i in ids]).to_dict()


def assert_pins_equal_feast(got, want):
    for i in range(len(got)):
        emb = want[F.PIN_EMBEDDING][i]
        if emb is None:
            assert not got.known[i]
            assert not got.embedding[i].any()
            assert got.topic[i] == -1 and got.created_ms[i] == 0 and got.duration_ms[i] == -1
        else:
            assert got.known[i]
            assert got.embedding[i].tolist() == emb  # bit-exact float32
            assert got.topic[i] == want[F.PIN_TOPIC][i]
            assert got.created_ms[i] == want[F.PIN_CREATED_MS][i]
            duration = want[F.PIN_DURATION_MS][i]  # None: unknown, which the reader returns as -1
            assert got.duration_ms[i] == (-1 if duration is None else duration)


def assert_user_equal_feast(u, want, i):
    seq = want[F.SEQ_PIN_IDS][i]
    if seq is None:
        assert u.seq_length is None and not u.has_sequence
        assert u.seq_pin_ids.size == u.seq_action_types.size == u.seq_action_times.size == 0
    else:
        assert u.seq_pin_ids.tolist() == seq
        assert u.seq_action_types.tolist() == want[F.SEQ_ACTION_TYPES][i]
        assert u.seq_action_times.tolist() == want[F.SEQ_ACTION_TIMES][i]
        assert u.seq_length == want[F.SEQ_LENGTH][i]
    prof = want[F.PROFILE_EMBEDDING][i]
    assert (u.profile_embedding is None) == (prof is None)
    if prof is not None:
        assert u.profile_embedding.tolist() == prof
    assert u.profile_actions_28d == want[F.PROFILE_ACTIONS_28D][i]
    assert u.profile_repin_rate_28d == want[F.PROFILE_REPIN_RATE_28D][i]
    assert u.profile_hide_rate_28d == want[F.PROFILE_HIDE_RATE_28D][i]
    assert u.profile_days_active_28d == want[F.PROFILE_DAYS_ACTIVE_28D][i]


@pytest.fixture(scope="module")
def store(feature_repo):
    from homefeed.feature_store import open_store

    st = open_store(feature_repo)
    dim = load_settings().embedding_dim
    st.push("pin_features_push", pin_frame(BASE + np.arange(300), dim, T0, seed=1))
    st.push("user_action_sequence_push", sequence_frame(
        [BASE + 1, BASE + 2, BASE + 3], T0, [100, 7, 0], seed=2))
    st.write_to_online_store(F.USER_PROFILE, profile_frame([BASE + 1, BASE + 4], dim, T0, seed=3))
    return st


def make_reader(store, **kw):
    from homefeed.serving.online_features import OnlineFeatureReader

    return OnlineFeatureReader(store, load_settings(), **kw)


# -- pure helpers (no Redis) --------------------------------------------------------------------


def test_vectorised_keys_equal_feasts_redis_key():
    from feast.infra.online_stores.helpers import _redis_key
    from feast.protos.feast.types.EntityKey_pb2 import EntityKey
    from feast.protos.feast.types.Value_pb2 import Value

    from homefeed.redis_codec import Int64KeyTemplate

    tpl = Int64KeyTemplate("homefeed", F.PIN_ID, 3)
    ids = np.array([0, 1, 255, 256, 65536, 2**31, 2**62 + 3, -5], dtype=np.int64)
    want = [_redis_key("homefeed", EntityKey(join_keys=[F.PIN_ID], entity_values=[Value(int64_val=int(i))]),
                       entity_key_serialization_version=3) for i in ids]
    assert tpl.keys(ids) == want


def test_codec_encode_side_round_trips_through_its_decoders():
    """The write side's values (what the stream's writer hands Feast) decode back as written."""
    import pandas as pd

    from homefeed.redis_codec import decode_int64_many, decode_value, entity_key, event_time, optional_int64

    raws = [optional_int64(v).SerializeToString() for v in (87_433, 0, None, float("nan"), pd.NA)]
    assert [decode_value(r) for r in raws] == [87_433, 0, None, None, None]
    assert decode_int64_many(raws, -1).tolist() == [87_433, 0, -1, -1, -1]
    assert event_time(1_767_225_600_123).timestamp() == 1_767_225_600.123
    key = entity_key(F.PIN_ID, 42)
    assert list(key.join_keys) == [F.PIN_ID] and key.entity_values[0].int64_val == 42


def test_float_list_decoder_matches_protobuf_for_every_encoding():
    from feast.protos.feast.types.Value_pb2 import FloatList, Value

    from homefeed.redis_codec import FloatListDecoder

    dim = 4
    dec = FloatListDecoder(dim)
    good = np.array([1.5, -2.25, 3e-8, 7.0], dtype=np.float32)
    packed = Value(float_list_val=FloatList(val=good.tolist())).SerializeToString()
    # the same list written unpacked (valid protobuf, different bytes) must decode the same
    unpacked = b"\x82\x01" + bytes([4 * 5]) + b"".join(b"\x0d" + np.float32(x).tobytes() for x in good)
    assert np.array_equal(np.array(Value.FromString(unpacked).float_list_val.val, np.float32), good)
    short = Value(float_list_val=FloatList(val=[1.0, 2.0])).SerializeToString()
    emb, valid, bad = dec.decode([packed, None, unpacked, short, b""])
    assert valid.tolist() == [True, False, True, False, False]
    assert bad == 1
    assert np.array_equal(emb[0], good) and np.array_equal(emb[2], good)
    assert not emb[[1, 3, 4]].any()


# -- against Feast on real Redis ------------------------------------------------------------------


def test_pin_features_equal_feast_including_unknown_and_duplicates(store):
    reader = make_reader(store, max_staleness_s=60)
    rng = np.random.default_rng(0)
    ids = np.concatenate([BASE + rng.integers(0, 300, 200), BASE + 10_000 + np.arange(20),
                          [BASE + 5, BASE + 5, -1, 0]]).astype(np.int64)
    rng.shuffle(ids)
    want = feast_pins(store, ids)
    cold = reader.pin_features(ids)
    assert_pins_equal_feast(cold, want)
    assert cold.embedding.dtype == np.float32 and cold.embedding.shape == (ids.size, reader.dim)
    assert reader.stats.hits == 0 and reader.stats.misses == ids.size
    assert reader.stats.redis_reads == np.unique(ids).size  # duplicates read once
    warm = reader.pin_features(ids)  # all from the cache, unknown pins included
    assert_pins_equal_feast(warm, want)
    assert reader.stats.hits == ids.size and reader.stats.redis_reads == np.unique(ids).size


def test_pin_durations_written_by_the_stream_read_back_as_feast_reads_them(store):
    """The stream's writer (OnlineWriter, not Feast's push): a known, a zero, a null and an
    absent duration; Feast's SDK and the reader agree, and the candidates' dense duration
    inputs follow (unknown: log 0, has 0)."""
    from homefeed.model.dense import dense_feature_names, dense_from_inputs, user_inputs
    from homefeed.serving.ranking import dense_candidates
    from homefeed.stream.online_writer import OnlineWriter

    dim = load_settings().embedding_dim
    ids = [BASE + 600, BASE + 601, BASE + 602, BASE + 603]
    t = T0.value // 1_000_000
    base = {F.PIN_EMBEDDING: [0.5] * dim, F.PIN_TOPIC: 3, F.PIN_CREATED_MS: t - 86_400_000,
            F.EVENT_TIMESTAMP: t, F.CREATED: t}
    OnlineWriter(store).write_pins([
        {**base, F.PIN_ID: ids[0], F.PIN_DURATION_MS: 87_433},
        {**base, F.PIN_ID: ids[1], F.PIN_DURATION_MS: 0},
        {**base, F.PIN_ID: ids[2], F.PIN_DURATION_MS: None},
        {**base, F.PIN_ID: ids[3]},  # a writer that predates durations
    ])
    want = feast_pins(store, ids)
    assert want[F.PIN_DURATION_MS] == [87_433, 0, None, None]
    got = make_reader(store).pin_features(np.asarray(ids + [BASE + 99_999]))  # and an unknown pin
    assert_pins_equal_feast(got, {k: v + [None] for k, v in want.items()})
    assert got.duration_ms.tolist() == [87_433, 0, -1, -1, -1]
    user = {F.SEQ_ACTION_TIMES: [[]], **{k: [None] for k in F.PROFILE_FEATURE_NAMES}}
    dense = dense_from_inputs(user_inputs(user, dim), dense_candidates(got), t + 1000)
    names = list(dense_feature_names(dim))
    log_s, has = dense[:, names.index("log_pin_duration_s")], dense[:, names.index("has_pin_duration")]
    assert has.tolist() == [1, 1, 0, 0, 0]
    assert np.allclose(log_s, [np.log1p(87.433), 0, 0, 0, 0])


def test_user_features_equal_feast_for_every_kind_of_user(store):
    reader = make_reader(store)
    users = [BASE + 1, BASE + 2, BASE + 3, BASE + 4, BASE + 999]  # seq+profile, seq, empty seq,
    want = feast_users(store, users)                               # profile only, unknown
    got = [reader.user_features(u) for u in users]
    for i, u in enumerate(got):
        assert_user_equal_feast(u, want, i)
    assert got[0].has_sequence and got[0].has_profile and got[0].seq_pin_ids.size == 100
    assert got[2].has_sequence and got[2].seq_pin_ids.size == 0  # a row with an empty sequence
    assert not got[4].has_sequence and not got[4].has_profile
    assert got[4].profile_vector(reader.dim).shape == (reader.dim + 4,)
    assert not got[4].profile_vector(reader.dim).any()
    assert got[0].sequence_event_time == T0.to_pydatetime()
    batch = reader.users_features(users)
    for i, u in enumerate(batch):
        assert_user_equal_feast(u, want, i)


def test_user_update_is_visible_at_once(store):
    reader = make_reader(store)
    uid = BASE + 50
    store.push("user_action_sequence_push", sequence_frame([uid], T0, [5], seed=10))
    assert reader.user_features(uid).seq_length == 5
    store.push("user_action_sequence_push", sequence_frame([uid], T0 + pd.Timedelta("1s"), [6], seed=11))
    assert_user_equal_feast(reader.user_features(uid), feast_users(store, [uid]), 0)
    assert reader.user_features(uid).seq_length == 6


def test_pin_update_is_served_within_the_staleness_bound(store):
    dim = load_settings().embedding_dim
    clock = FakeClock()
    reader = make_reader(store, max_staleness_s=30, clock=clock)
    ids = np.array([BASE + 400, BASE + 401, BASE + 402], dtype=np.int64)
    store.push("pin_features_push", pin_frame(ids[:2], dim, T0, seed=20))  # 402 does not exist yet
    before = reader.pin_features(ids)
    assert before.known.tolist() == [True, True, False]

    store.push("pin_features_push", pin_frame(ids, dim, T0 + pd.Timedelta("1min"), seed=21))
    now_feast = feast_pins(store, ids)
    clock.t += 10  # within the bound: the cached (old) values, also for the unknown pin
    cached = reader.pin_features(ids)
    assert np.array_equal(cached.embedding, before.embedding) and not cached.known[2]
    assert cached.embedding[0].tolist() != now_feast[F.PIN_EMBEDDING][0]
    clock.t += 20.001  # past max_staleness_s since the read: the update must be served
    after = reader.pin_features(ids)
    assert_pins_equal_feast(after, now_feast)
    assert reader.stats.expired == 3
    # refresh() re-reads entries about to expire, so requests keep hitting
    clock.t += 29
    assert reader.refresh(ahead_s=5) == 3
    clock.t += 5
    hits = reader.stats.hits
    reader.pin_features(ids)
    assert reader.stats.hits == hits + 3


def test_cache_disabled_and_capacity_bounded(store):
    ids = BASE + np.arange(100, dtype=np.int64)
    want = feast_pins(store, ids)
    nocache = make_reader(store, max_staleness_s=0)
    assert_pins_equal_feast(nocache.pin_features(ids), want)
    assert_pins_equal_feast(nocache.pin_features(ids), want)
    assert nocache.cache_size() == 0 and nocache.stats.redis_reads == 200

    small = make_reader(store, max_staleness_s=60, max_entries=64)
    assert_pins_equal_feast(small.pin_features(ids), want)  # more ids than the cache holds
    assert small.cache_size() <= 64
    assert_pins_equal_feast(small.pin_features(ids[::-1]), {k: v[::-1] for k, v in want.items()})
    assert small.cache_size() <= 64 and small.stats.evictions > 0
    assert small.warm(ids[:50]) == 50


def test_redis_down_raises_feature_store_unavailable(store, tmp_path, redis_client):
    """A private redis (not the session's): copy Feast's hashes into it, read, stop it."""
    import redis

    from homefeed.serving.online_features import FeatureStoreUnavailable
    from homefeed.stack import LocalStack, free_port

    local = LocalStack(load_settings().replace(home=tmp_path, redis_port=free_port()))
    local._up_redis()
    try:
        private = redis.Redis.from_url(local.settings.effective_redis_url, socket_timeout=0.5,
                                       socket_connect_timeout=0.5)
        session = make_reader(store)
        ids = BASE + np.arange(5, dtype=np.int64)
        for key in session._pin_keys.keys(ids) + session._user_keys.keys(np.array([BASE + 1])):
            private.restore(key, 0, redis_client.dump(key), replace=True)
        reader = make_reader(store, max_staleness_s=60, client=private)
        assert_pins_equal_feast(reader.pin_features(ids), feast_pins(store, ids))
        assert reader.user_features(BASE + 1).seq_length == 100
    finally:
        local.down()
    with pytest.raises(FeatureStoreUnavailable):
        reader.user_features(BASE + 1)
    assert not reader.health.up  # the first failure opened the breaker
    with pytest.raises(FeatureStoreUnavailable, match="marked down"):
        reader.pin_features(np.array([BASE + 6]))  # a miss needs Redis: refused without I/O
    assert reader.stats.errors == 1
    cached = reader.pin_features(ids)  # fresh cache entries need no Redis
    assert cached.known.all()
    degraded = reader.pin_features(np.array([BASE + 1, BASE + 6]), cache_only=True)
    assert degraded.known.tolist() == [True, False]
    assert not reader.ping()
