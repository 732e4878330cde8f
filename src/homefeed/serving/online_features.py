"""Fast online feature reads for ranking: the Redis hashes Feast wrote, read without the SDK.

Why: `FeatureStore.get_online_features` for hundreds of pins costs tens of milliseconds with p99
spikes (per-row proto conversion, response building, registry lookups). A ranking request needs
1 user (sequence + profile) and ~1,000 candidate pins.

Read path
---------
* **Same bytes as Feast.** `online_read` issues one HMGET per entity in a non-transactional
  pipeline. We do exactly that, with the layout of `homefeed.redis_codec` (Feast's helpers
  computing keys and field names, views resolved through the registry, versioned names
  included), but vectorised: the keys of N int64 entities are spliced from one template, and
  embeddings are decoded from the packed `FloatList` bytes with one `np.frombuffer`.
* **User read**: sequence, profile and engagement counters live in the same Redis hash (same
  entity key `user_id`), so one HMGET returns all three views; with ``impressions=True`` (a model
  trained with `sequence_impressions`) the same HMGET also reads the impression sequence. Not
  cached: the realtime sequence must be fresh.
* **Pin cache** (`homefeed.serving.pin_cache.PinCache`): an in-process table of embedding
  [capacity, D] + topic + created + known + engagement counters (`pin_engagement` lives in the
  pin's hash: the same HMGET), one slot per pin id, filled by batched reads. Counters are stored
  as of their newest event and decayed to the request time by the caller (homefeed.engagement),
  so a cached entry is never stale in value; it lacks at most `max_staleness_s` of newer events.
  An entry is served for at most `max_staleness_s` after it was read from Redis (each entry gets
  a random expiry in [0.75, 1] x max_staleness_s so a warmed cache does not expire in one
  burst); after that the next request re-reads it. Unknown pins are cached too (known=False,
  zeros), under the same bound. So a pin update written to Redis at time t is served from
  t + max_staleness_s at the latest. `refresh(ahead_s)` re-reads entries about to expire (a
  background task can call it so requests rarely miss).
* **Errors**: any Redis failure (refused, timeout, reset) raises `FeatureStoreUnavailable`; the
  service decides how to degrade (e.g. serve from cache only with `pin_features(..., cache_only=True)`).
  Calls are bounded: a short socket timeout and at most one immediate retry on a dropped
  connection (`homefeed.redis_client.serving_kwargs`).
* **Circuit breaker** (`homefeed.serving.redis_health.RedisHealth`): while open, reads fail at
  once without touching the network; a background probe closes it.

Thread safety: the cache's lock is held only for dict/array work, never during I/O.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Callable, Sequence

import numpy as np

from homefeed import engagement as EN
from homefeed import features as F
from homefeed import redis_codec as codec
from homefeed.serving.pin_cache import PinCache
from homefeed.serving.redis_health import FeatureStoreUnavailable, RedisHealth
from homefeed.settings import Settings

# ---------------------------------------------------------------------------------------------
# results
# ---------------------------------------------------------------------------------------------


@dataclass
class UserFeatures:
    """One user's online features. Sequences are newest first; empty for an unknown user.

    Profile fields are None when the user has no profile row (what Feast returns as None)."""

    user_id: int
    seq_pin_ids: np.ndarray  # int64 [n]
    seq_action_types: np.ndarray  # int64 [n] (ActionType ids; Feast type Int32)
    seq_action_times: np.ndarray  # int64 [n] epoch ms
    seq_length: int | None  # the view's seq_length column (None: no sequence row)
    profile_embedding: np.ndarray | None  # float32 [D]
    profile_actions_28d: int | None = None
    profile_repin_rate_28d: float | None = None
    profile_hide_rate_28d: float | None = None
    profile_days_active_28d: int | None = None
    sequence_event_time: datetime | None = None
    profile_event_time: datetime | None = None
    engagement_decayed: np.ndarray | None = None  # float64 [kinds x half-lives] as of the next
    engagement_as_of_ms: int | None = None  # None: no counters yet
    # the impression sequence (newest first), read only for a model with sequence_impressions;
    # None: not read (or no row: an empty sequence)
    imp_pin_ids: np.ndarray | None = None  # int64 [m]
    imp_times: np.ndarray | None = None  # int64 [m] epoch ms

    @property
    def has_sequence(self) -> bool:
        return self.seq_length is not None

    @property
    def has_profile(self) -> bool:
        return self.profile_embedding is not None

    def profile_scalars(self) -> np.ndarray:
        """[4] float32: actions, repin rate, hide rate, days active (0 where missing)."""
        vals = (self.profile_actions_28d, self.profile_repin_rate_28d, self.profile_hide_rate_28d,
                self.profile_days_active_28d)
        return np.array([0.0 if v is None else float(v) for v in vals], dtype=np.float32)

    def profile_vector(self, emb_dim: int) -> np.ndarray:
        """[emb_dim + 4] float32: profile embedding then the scalars; zeros for no profile."""
        emb = (np.zeros(emb_dim, dtype=np.float32) if self.profile_embedding is None
               else self.profile_embedding)
        return np.concatenate([emb, self.profile_scalars()])


@dataclass
class PinFeatures:
    """Features of N pins, aligned with the requested ids (duplicates allowed)."""

    pin_ids: np.ndarray  # int64 [N]
    embedding: np.ndarray  # float32 [N, D]; zeros where not known
    topic: np.ndarray  # int64 [N]; -1 where missing
    created_ms: np.ndarray  # int64 [N]; 0 where missing
    known: np.ndarray  # bool [N]: the pin has an embedding in the online store
    engagement: np.ndarray | None = None  # float64 [N, kinds x half-lives]; zeros: no counters
    engagement_as_of_ms: np.ndarray | None = None  # int64 [N]
    duration_ms: np.ndarray | None = None  # int64 [N]; -1 where unknown (null) or missing

    def __len__(self) -> int:
        return int(self.pin_ids.size)


@dataclass
class ReaderStats:
    requests: int = 0  # pin_features calls
    pins: int = 0  # pins requested (with duplicates)
    hits: int = 0  # served from a fresh cache entry
    misses: int = 0  # not in the cache
    expired: int = 0  # in the cache but older than the staleness bound (re-read)
    redis_reads: int = 0  # HMGET commands sent for pins
    pipelines: int = 0  # pipeline round trips (pins and users)
    user_reads: int = 0
    errors: int = 0
    evictions: int = 0
    bad_rows: int = 0  # embeddings of the wrong length (treated as unknown)
    cache_size: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in self.__dict__.items() if k != "extra"}
        looked = self.hits + self.misses + self.expired
        out["hit_rate"] = round(self.hits / looked, 4) if looked else None
        return out


# ---------------------------------------------------------------------------------------------
# the reader
# ---------------------------------------------------------------------------------------------


class OnlineFeatureReader:
    """Reads user and pin features straight from Feast's Redis hashes, with a pin cache.

    ``store``: the `feast.FeatureStore` (its registry, project, key serialization version and Redis
    connection are used); ``settings``: homefeed settings (embedding_dim, sequence_length).
    ``max_staleness_s``: how long a cached pin entry may be served (0 disables the cache).
    ``max_entries``: cache capacity (pins). ``timeout_s``: Redis socket timeout (default:
    settings.serving_redis_timeout_ms). ``client``: a redis-py client to use instead of one built
    from the store's config. ``clock``: monotonic time source (tests inject one).
    ``probe_interval_s`` and ``on_health_change``: the circuit breaker (`RedisHealth`).
    ``impressions``: also read the user's impression sequence (same round trip).
    """

    def __init__(self, store: Any, settings: Settings, max_staleness_s: float = 60.0, *,
                 max_entries: int = 500_000, timeout_s: float | None = None, client: Any = None,
                 clock: Callable[[], float] = time.monotonic, seed: int = 0,
                 probe_interval_s: float = 1.0,
                 on_health_change: Callable[[bool], None] | None = None, impressions: bool = False):
        self.store = store
        self.settings = settings
        self.dim = int(settings.embedding_dim)
        self.seq_len = int(settings.sequence_length)
        self.max_staleness_s = float(max_staleness_s)
        self.max_entries = int(max_entries)
        self.timeout_s = (settings.serving_redis_timeout_ms / 1000 if timeout_s is None
                          else float(timeout_s))
        self.clock = clock
        config = store.config
        self.project = config.project
        version = int(getattr(config, "entity_key_serialization_version", 3) or 3)
        versioning = bool(getattr(config.registry, "enable_online_feature_view_versioning", False))

        def fields_of(view_name: str, names: Sequence[str]) -> list[bytes | str]:
            return codec.field_names(store, view_name, names, versioning)

        self._pin_fields = (fields_of(F.PIN_FEATURES, F.PIN_FEATURE_NAMES)
                            + fields_of(F.PIN_ENGAGEMENT, (F.PE_DECAYED, F.PE_AS_OF_MS)))
        self._user_fields = (fields_of(F.USER_ACTION_SEQUENCE, F.SEQUENCE_FEATURE_NAMES)
                             + fields_of(F.USER_PROFILE, F.PROFILE_FEATURE_NAMES)
                             + fields_of(F.USER_ENGAGEMENT, (F.UE_DECAYED, F.UE_AS_OF_MS)))
        self.impressions = bool(impressions)
        if self.impressions:  # last, so the other views' positions do not move
            self._user_fields += fields_of(F.USER_IMPRESSION_SEQUENCE, (F.IMP_PIN_IDS, F.IMP_TIMES))
        self._pin_keys = codec.Int64KeyTemplate(self.project, F.PIN_ID, version)
        self._user_keys = codec.Int64KeyTemplate(self.project, F.USER_ID, version)
        self._emb = codec.FloatListDecoder(self.dim)
        self._counts = codec.FloatListDecoder(EN.N_VALUES, double=True)
        self._client = client if client is not None else self._make_client(config.online_store)
        self.health = RedisHealth(self.ping, probe_interval_s, on_health_change)
        self.stats = ReaderStats()
        self._cache = PinCache(self.dim, EN.N_VALUES, self.max_entries, self.max_staleness_s, self.stats, seed)

    # -- connection -------------------------------------------------------------------------------
    def _make_client(self, online_config: Any) -> Any:
        """The serving client from settings (standalone, cluster or sentinel; see
        homefeed.redis_client), with this reader's timeout and at most one immediate retry."""
        from homefeed.redis_client import make_client, serving_kwargs

        return make_client(self.settings, self.timeout_s, **serving_kwargs(self.settings))

    def _hmget_many(self, keys: Sequence[bytes], fields: Sequence[bytes | str]) -> list[list[bytes | None]]:
        """One non-transactional pipeline of HMGETs (what Feast's online_read sends)."""
        import redis

        self.health.check()
        try:
            with self._client.pipeline(transaction=False) as pipe:
                for key in keys:
                    pipe.hmget(key, fields)
                out = pipe.execute()
        except (redis.RedisError, OSError) as exc:
            self.stats.errors += 1
            self.health.failed(exc)
            raise FeatureStoreUnavailable(f"online store read failed: {exc}") from exc
        self.stats.pipelines += 1
        return out

    def ping(self) -> bool:
        import redis

        try:
            return bool(self._client.ping())
        except (redis.RedisError, OSError):
            return False

    def close(self) -> None:
        self.health.close()
        close = getattr(self._client, "close", None)
        if close:
            close()

    # -- users ----------------------------------------------------------------------------------
    def user_features(self, user_id: int) -> UserFeatures:
        """Sequence + profile of one user in one round trip (never cached)."""
        key = self._user_keys.keys(np.asarray([user_id], dtype=np.int64))
        row = self._hmget_many(key, self._user_fields)[0]
        self.stats.user_reads += 1
        return self._user_from_row(int(user_id), row)

    def users_features(self, user_ids: Sequence[int]) -> list[UserFeatures]:
        ids = np.asarray(user_ids, dtype=np.int64).reshape(-1)
        rows = self._hmget_many(self._user_keys.keys(ids), self._user_fields) if ids.size else []
        self.stats.user_reads += int(ids.size)
        return [self._user_from_row(int(u), r) for u, r in zip(ids, rows)]

    def _user_from_row(self, user_id: int, row: list[bytes | None]) -> UserFeatures:
        pins, acts, times, length, seq_ts, emb, actions, repin, hide, days, prof_ts = row[:11]
        eng, eng_as_of = codec.decode_value(row[11]), codec.decode_value(row[12])
        imp_pins, imp_times = ((codec.decode_value(row[14]), codec.decode_value(row[15])) if self.impressions
                               else (None, None))
        seq_pins = codec.decode_value(pins)
        seq_acts = codec.decode_value(acts)
        seq_times = codec.decode_value(times)
        length_v = codec.decode_value(length)
        prof = codec.decode_value(emb)
        empty = np.zeros(0, dtype=np.int64)
        return UserFeatures(
            user_id=user_id,
            seq_pin_ids=empty if seq_pins is None else np.asarray(seq_pins, dtype=np.int64),
            seq_action_types=empty.copy() if seq_acts is None else np.asarray(seq_acts, dtype=np.int64),
            seq_action_times=empty.copy() if seq_times is None else np.asarray(seq_times, dtype=np.int64),
            seq_length=None if length_v is None else int(length_v),
            profile_embedding=None if prof is None else np.asarray(prof, dtype=np.float32),
            profile_actions_28d=_opt(codec.decode_value(actions), int),
            profile_repin_rate_28d=_opt(codec.decode_value(repin), float),
            profile_hide_rate_28d=_opt(codec.decode_value(hide), float),
            profile_days_active_28d=_opt(codec.decode_value(days), int),
            sequence_event_time=codec.decode_ts(seq_ts) if length_v is not None or seq_pins is not None else None,
            profile_event_time=codec.decode_ts(prof_ts) if prof is not None else None,
            engagement_decayed=None if eng is None else np.asarray(eng, dtype=np.float64),
            engagement_as_of_ms=_opt(eng_as_of, int),
            imp_pin_ids=None if imp_pins is None else np.asarray(imp_pins, dtype=np.int64),
            imp_times=None if imp_times is None else np.asarray(imp_times, dtype=np.int64),
        )

    # -- pins -------------------------------------------------------------------------------------
    def pin_features(self, pin_ids: Any, cache_only: bool = False) -> PinFeatures:
        """Features of `pin_ids` (any int array, duplicates allowed), aligned with it.

        Fresh cache entries are served from memory; missing and expired ones are read from Redis
        in one pipeline and cached. With `cache_only`, nothing is read (degraded mode: what the
        cache has, expired or not; the rest unknown) and no Redis error can occur."""
        ids = np.asarray(pin_ids, dtype=np.int64).reshape(-1)
        n = ids.size
        values, fresh = self._cache.read(ids, self.clock(), cache_only)
        n_fresh = int(fresh.sum())
        if not cache_only and n_fresh < n:
            rows = np.flatnonzero(~fresh)
            need, inverse = np.unique(ids[rows], return_inverse=True)
            fetched = self._fetch_pins(need)
            for out, got in zip(values, fetched):
                out[rows] = got[inverse]
            self._cache.store(need, fetched, now=self.clock())
        emb, topic, created, known, eng, eng_as_of, duration = values
        return PinFeatures(ids, emb, topic, created, known, eng, eng_as_of, duration)

    def warm(self, pin_ids: Any, batch_size: int = 10_000) -> int:
        """Load `pin_ids` into the cache (in pipelines of `batch_size`); returns how many are known."""
        ids = np.unique(np.asarray(pin_ids, dtype=np.int64).reshape(-1))
        known = 0
        for s in range(0, ids.size, batch_size):
            part = ids[s: s + batch_size]
            fetched = self._fetch_pins(part)
            known += int(fetched[3].sum())
            self._cache.store(part, fetched, now=self.clock())
        return known

    def refresh(self, ahead_s: float = 0.0, limit: int = 10_000) -> int:
        """Re-read up to `limit` cached pins that expire within `ahead_s` (oldest first)."""
        ids = self._cache.due(self.clock(), ahead_s, limit)
        if ids.size:
            self._cache.store(ids, self._fetch_pins(ids), now=self.clock())
        return int(ids.size)

    def invalidate(self, pin_ids: Any = None) -> None:
        """Forget cached pins (all when `pin_ids` is None)."""
        self._cache.invalidate(pin_ids)

    def cache_size(self) -> int:
        return len(self._cache)

    def stats_dict(self) -> dict[str, Any]:
        self.stats.cache_size = len(self._cache)
        return self.stats.as_dict()

    # -- internals --------------------------------------------------------------------------------
    def _fetch_pins(self, ids: np.ndarray) -> tuple[np.ndarray, ...]:
        """Read unique `ids` from Redis -> (emb [n, D], topic [n], created [n], known [n],
        engagement [n, kinds x half-lives], engagement as of [n], duration [n], -1 = unknown)."""
        if not ids.size:
            return (np.zeros((0, self.dim), np.float32), np.zeros(0, np.int64), np.zeros(0, np.int64),
                    np.zeros(0, bool), np.zeros((0, EN.N_VALUES)), np.zeros(0, np.int64),
                    np.zeros(0, np.int64))
        rows = self._hmget_many(self._pin_keys.keys(ids), self._pin_fields)
        self.stats.redis_reads += int(ids.size)
        emb, known, bad = self._emb.decode([r[0] for r in rows])
        self.stats.bad_rows += bad
        topic = codec.decode_int64_many([r[1] for r in rows], -1)
        created = codec.decode_int64_many([r[2] for r in rows], 0)
        duration = codec.decode_int64_many([r[3] for r in rows], -1)  # null (unknown) -> -1
        # r[4] is pin_features' timestamp field; then pin_engagement's counters and as-of
        eng, _, _ = self._counts.decode([r[5] for r in rows])
        eng_as_of = codec.decode_int64_many([r[6] for r in rows], 0)
        return emb, topic, created, known, eng, eng_as_of, duration


def _opt(value: Any, kind: type) -> Any:
    return None if value is None else kind(value)


__all__ = ["FeatureStoreUnavailable", "OnlineFeatureReader", "PinFeatures", "ReaderStats",
           "UserFeatures"]
