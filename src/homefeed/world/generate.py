"""The synthetic homefeed world: pins, users, ranked requests and the action events they produce.

The generative model (docs/world.md explains each part and the paper result it lets show up):

* pins belong to topics; a pin's embedding is its topic centroid plus noise, so embeddings carry
  the topic and a model can generalise to pins it never saw (some pins appear mid-world);
* users have a long-term interest mix (Dirichlet over topics) that a daily profile can learn, and
  short session intents (minutes to hours) that only a realtime action sequence can see;
* users dislike a few topics, get tired of topics they engaged with a lot recently, and keep
  hiding a topic for a while after hiding it once: the hide effects;
* topic popularity drifts day by day, so a model trained on old days decays;
* core users act every day; non-core users are new (start mid-world), casual (few sessions) or
  resurrected (active early, long gap, back with changed interests).

Everything is drawn from numpy PCG64 streams derived from the seed, and written with fixed
parquet options, so the same parameters and seed give byte-identical files.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
from tqdm import tqdm

from homefeed.errors import UserError
from homefeed.events import IMPRESSION_LAG_MS, MAX_ID, MIN_EVENT_TIME_MS, ActionType
from homefeed.features import (
    PIN_CREATED_MS,
    PIN_DURATION_MS,
    PIN_EMBEDDING,
    PIN_ID,
    PIN_TOPIC,
    REQUEST_ID,
    SERVED_TIME,
    USER_ID,
)
from homefeed.world.format import (
    DAY_MS,
    EVENTS_FILE,
    FORMAT_VERSION,
    HAS_IMPRESSIONS,
    HOUR_MS,
    LABEL_CLICK,
    LABEL_HIDE,
    LABEL_REPIN,
    MAX_EMBEDDING_DIM,
    META_FILE,
    MINUTE_MS,
    PINS_FILE,
    REQUESTS_FILE,
    SECOND_MS,
    SURFACE,
    USERS_FILE,
    WORLD_FILES,
    list_array,
    make_out,
    prepare_out,
    utc_iso,
    write_meta,
    write_parquet,
)

DEFAULT_START_MS = 1_767_571_200_000  # 2026-01-05 00:00 UTC, a Monday
SEGMENTS = ("core", "new", "casual", "resurrected")  # index = segment code
CORE, NEW, CASUAL, RESURRECTED = range(4)

# Sanity caps: beyond these a run is almost certainly a typo (and would not fit in memory).
MAX_USERS = 1_000_000
MAX_PINS = 10_000_000
MAX_DAYS = 366
MAX_TOPICS = 1_000
MAX_CANDIDATES = 200


@dataclass(frozen=True)
class WorldParams:
    """What `homefeed world generate` takes. Everything else is a fixed `Behaviour` constant."""

    users: int = 2000
    pins: int = 5000
    days: int = 14
    seed: int = 0
    start_ms: int = DEFAULT_START_MS
    embedding_dim: int = 32
    n_topics: int = 24
    non_core_share: float = 0.4  # share of users that are new, casual or resurrected
    late_fraction: float = 0.03  # share of events that reach us minutes to hours late
    new_pin_share: float = 0.2  # share of pins created during the world (not shown before)
    intent_outside_share: float = 0.5  # session intents drawn from trends, not the long-term mix
    min_candidates: int = 12
    max_candidates: int = 24

    def validate(self) -> None:
        """Raise UserError naming every bad parameter; does no work and writes nothing."""
        problems: list[str] = []

        def check_int(name: str, low: int, high: int) -> None:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                problems.append(f"{name} must be an integer, got {value!r}")
            elif not low <= value <= high:
                problems.append(f"{name} must be in {low}..{high}, got {value}")

        def check_fraction(name: str) -> None:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float, np.floating)):
                problems.append(f"{name} must be a number, got {value!r}")
            elif not 0.0 <= float(value) <= 1.0:  # also rejects NaN
                problems.append(f"{name} must be in [0, 1], got {value}")

        check_int("users", 1, MAX_USERS)
        check_int("pins", 1, MAX_PINS)
        check_int("days", 2, MAX_DAYS)
        check_int("seed", 0, 2**63 - 1)
        check_int("start_ms", MIN_EVENT_TIME_MS, MAX_ID - (MAX_DAYS + 1) * DAY_MS)
        check_int("embedding_dim", 2, MAX_EMBEDDING_DIM)
        check_int("n_topics", 2, MAX_TOPICS)
        check_int("min_candidates", 1, MAX_CANDIDATES)
        check_int("max_candidates", 1, MAX_CANDIDATES)
        for name in ("non_core_share", "late_fraction", "new_pin_share", "intent_outside_share"):
            check_fraction(name)
        if not problems:
            if self.min_candidates > self.max_candidates:
                problems.append(
                    f"min_candidates ({self.min_candidates}) must be <= max_candidates "
                    f"({self.max_candidates})"
                )
            if self.pins < self.n_topics:  # every topic needs at least one pin on day 0
                problems.append(f"pins ({self.pins}) must be >= n_topics ({self.n_topics})")
        if problems:
            raise UserError("invalid world parameters: " + "; ".join(problems))

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, values: dict) -> "WorldParams":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})

    @property
    def end_ms(self) -> int:
        return self.start_ms + self.days * DAY_MS


@dataclass(frozen=True)
class Behaviour:
    """Fixed constants of the generative model (recorded in world.json, documented in world.md).

    Engagement is three logistic models per impression. Terms: `interest` = log1p(n_topics *
    long-term weight of the pin's topic) (0 for a topic the user never cares about, ~0.7 for an
    average one, ~2.5 for a favourite); `intent` = 1 when the pin's topic is the session intent;
    `recent_hide` = decayed count of hides of that topic (capped); `fatigue` = decayed engagement
    count of the topic above a threshold; `popularity` = the topic's trend logit today.
    """

    # Repin: the session intent is the strongest term, and it is the one a daily profile misses.
    repin_base: float = -5.0
    repin_interest: float = 0.7
    repin_intent: float = 2.1
    repin_popularity: float = 0.35
    repin_recent_hide: float = -1.0
    # Click: same shape, weaker intent; a repin makes a click (closeup) much more likely.
    click_base: float = -3.4
    click_interest: float = 0.5
    click_intent: float = 0.9
    click_popularity: float = 0.3
    click_recent_hide: float = -0.7
    click_given_repin: float = 1.5
    # Hide: disliked topics, recent hides of the same topic, topic fatigue.
    hide_base: float = -4.7
    hide_disliked: float = 3.0
    hide_interest: float = -0.6
    hide_intent: float = -1.0
    hide_recent_hide: float = 1.1
    hide_fatigue: float = 0.35
    fatigue_threshold: float = 4.0
    recent_hide_cap: float = 3.0
    recent_hide_half_life_ms: int = 6 * HOUR_MS
    fatigue_half_life_ms: int = 2 * HOUR_MS
    pin_quality_sd: float = 0.3  # per-pin latent appeal, added to click and repin logits
    # Interests and topics.
    interest_concentration: float = 0.3  # Dirichlet alpha: small = a few favourite topics
    topic_size_concentration: float = 2.0
    pin_embedding_noise: float = 0.8  # noise norm relative to the unit topic centroid
    popularity_sd: float = 0.6  # day-0 spread of topic trend logits
    popularity_drift_sd: float = 0.3  # daily random-walk step of each topic's trend logit
    resurrected_interest_change: float = 0.6  # weight of a fresh mix after the gap
    # Sessions and requests.
    intent_switch_prob: float = 0.15  # per request after the first in a session
    intent_carry_prob: float = 0.4  # a session starting < carry window later keeps the intent
    intent_carry_window_ms: int = 3 * HOUR_MS
    candidate_source_mix: tuple = (0.45, 0.25, 0.30)  # long-term interest, intent, trending
    max_sessions_per_day: int = 8
    max_requests_per_session: int = 10
    extra_requests_per_session: float = 2.0  # Poisson mean on top of the first request
    request_gap_min_ms: int = 20 * SECOND_MS
    request_gap_mean_ms: int = 100 * SECOND_MS  # exponential part of the gap between requests
    first_session_latest_ms: int = 14 * HOUR_MS
    session_gap_min_ms: int = 20 * MINUTE_MS
    session_gap_mean_ms: int = int(2.5 * HOUR_MS)
    day_end_margin_ms: int = 10 * MINUTE_MS
    # Segments: (probability a day is active, Poisson mean of extra sessions on an active day).
    core_activity: tuple = (0.92, 1.5)
    new_activity: tuple = (0.8, 1.2)
    casual_activity: tuple = (0.2, 0.0)
    resurrected_activity: tuple = (0.85, 1.0)
    resurrected_early_share: float = 0.25  # first quarter of the world
    resurrected_late_share: float = 0.3  # last 30% of the world
    # Event timing.
    react_min_ms: int = 1 * SECOND_MS
    react_per_position_ms: int = 1200
    react_median_ms: int = 5 * SECOND_MS
    react_sigma: float = 0.9
    react_max_ms: int = 10 * MINUTE_MS
    repin_after_click_min_ms: int = 1500
    repin_after_click_mean_ms: int = 6 * SECOND_MS
    arrival_min_ms: int = 50
    arrival_max_ms: int = 800
    late_min_ms: int = 2 * MINUTE_MS
    late_max_ms: int = 6 * HOUR_MS

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}


BEHAVIOUR = Behaviour()


@dataclass(frozen=True)
class WorldSummary:
    """Counts and rates of a generated world; `to_dict()` is world.json's "summary"."""

    users: int
    pins: int
    requests: int
    impressions: int
    events: int
    events_by_action: dict
    rate_per_impression: dict
    late_fraction: float
    non_core_share: float
    segment_users: dict
    events_per_user: dict
    effects: dict
    pins_created_during_world: int

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class World:
    """A generated (or imported) world loaded back from its directory."""

    params: WorldParams
    pins: pd.DataFrame
    users: pd.DataFrame
    requests: pd.DataFrame
    events: pd.DataFrame
    meta: dict
    path: Path

    @property
    def start_ms(self) -> int:
        return self.params.start_ms

    @property
    def end_ms(self) -> int:
        return self.params.end_ms

    @property
    def has_impressions(self) -> bool:
        """world.json `has_impressions`: every row of requests.parquet is a pin that was shown
        (synthetic, KuaiRand), not a sampled negative (MovieLens). Worlds written before the
        flag say nothing and have none: regenerate or re-import them to get impressions."""
        return bool(self.meta.get(HAS_IMPRESSIONS, False))

    def impressions(self) -> pd.DataFrame:
        """The world's impression events (homefeed.events.ImpressionEvent), derived from
        requests.parquet, in time order: one per shown candidate, shown IMPRESSION_LAG_MS after
        its serve time (so the request's own features never hold it), arriving at once. Empty
        for a world without impressions."""
        rows = self.requests if self.has_impressions else self.requests.iloc[:0]
        shown = rows[SERVED_TIME].to_numpy(np.int64) + IMPRESSION_LAG_MS
        rid, pos = rows[REQUEST_ID].to_numpy(np.int64), rows["position"].to_numpy(np.int64)
        frame = pd.DataFrame({
            "event_id": [f"i{r}-{p}" for r, p in zip(rid.tolist(), pos.tolist())],
            USER_ID: rows[USER_ID].to_numpy(np.int64),
            PIN_ID: rows[PIN_ID].to_numpy(np.int64),
            "event_time": shown,
            "arrival_time": shown,
            "surface": self._surface(),
            REQUEST_ID: rid,
        })
        order = np.lexsort((pos, rid, shown))
        return frame.iloc[order].reset_index(drop=True)

    def _surface(self) -> str:
        """The surface the world's events name (one per world)."""
        if "surface" in self.events and len(self.events):
            return str(self.events["surface"].iloc[0])
        return SURFACE

    def pin_embedding_matrix(self) -> np.ndarray:
        """float32 [max pin_id + 1, embedding_dim], row = pin_id; row 0 (never a pin) is zeros."""
        ids = self.pins[PIN_ID].to_numpy()
        matrix = np.zeros((int(ids.max()) + 1, self.params.embedding_dim), dtype=np.float32)
        matrix[ids] = np.stack(self.pins[PIN_EMBEDDING].to_numpy())
        return matrix


# -- helpers -------------------------------------------------------------------------------------


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _sample_rows(cdf: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Inverse-CDF draw per row: cdf [n, K] (rows end at 1), r [n] uniform -> index in 0..K-1."""
    return np.minimum((cdf < r[:, None]).sum(axis=1), cdf.shape[1] - 1)


def _cdf(weights: np.ndarray) -> np.ndarray:
    cdf = np.cumsum(weights, axis=-1)
    return cdf / cdf[..., -1:]


def _decay(dt_ms: np.ndarray, half_life_ms: int) -> np.ndarray:
    return np.exp2(-dt_ms / half_life_ms)


# -- pins and users ------------------------------------------------------------------------------


@dataclass
class _Pins:
    topic: np.ndarray  # [M] int64
    embedding: np.ndarray  # [M, D] float32
    created_ms: np.ndarray  # [M] int64
    quality: np.ndarray  # [M] float64, latent
    # Lookup "pins of topic k created by time t": pins sorted by (topic, created).
    sorted_index: np.ndarray
    sorted_key: np.ndarray
    topic_offset: np.ndarray  # [K + 1]
    duration_ms: np.ndarray | None = None  # [M] int64, media duration (see _pin_durations)


_TOPIC_KEY = np.int64(1 << 42)  # > any created-time span in ms, so (topic, time) keys never mix


# Pin media durations: each topic has a typical length (log-uniform between these, in seconds),
# each pin a log-normal spread around it, clipped to [DURATION_MIN_S, DURATION_MAX_S].
DURATION_TOPIC_MEDIAN_S = (8.0, 180.0)
DURATION_SIGMA = 0.6
DURATION_MIN_S, DURATION_MAX_S = 1.0, 1_800.0


def _pin_durations(topic: np.ndarray, n_topics: int, rng: np.random.Generator) -> np.ndarray:
    """int64 [M] ms: the synthetic counterpart of a video's duration, drawn per pin from its
    topic. Behaviour does not depend on it (the simulation never reads it), so it tells a model
    about a pin's topic and nothing more; it is there so that every world has the same pin
    features (KuaiRand's come from the log, MovieLens has none)."""
    lo, hi = np.log(DURATION_TOPIC_MEDIAN_S)
    median_s = np.exp(rng.uniform(lo, hi, size=n_topics))
    seconds = median_s[topic] * np.exp(rng.standard_normal(topic.size) * DURATION_SIGMA)
    return np.round(np.clip(seconds, DURATION_MIN_S, DURATION_MAX_S) * SECOND_MS).astype(np.int64)


def _make_pins(p: WorldParams, b: Behaviour, rng: np.random.Generator) -> _Pins:
    K, M, D = p.n_topics, p.pins, p.embedding_dim
    centroids = rng.standard_normal((K, D))
    centroids /= np.linalg.norm(centroids, axis=1, keepdims=True)
    # Topics differ in size. The first K pins (before shuffling) cover every topic and are
    # never "new", so each topic has a pin to show from the first request on.
    sizes = rng.dirichlet(np.full(K, b.topic_size_concentration))
    topic = np.concatenate([np.arange(K), rng.choice(K, size=M - K, p=sizes)]).astype(np.int64)
    is_new = np.zeros(M, dtype=bool)
    n_new = min(int(round(p.new_pin_share * M)), M - K)
    is_new[K + rng.permutation(M - K)[:n_new]] = True
    shuffle = rng.permutation(M)
    topic, is_new = topic[shuffle], is_new[shuffle]

    noise = rng.standard_normal((M, D)) * (b.pin_embedding_noise / np.sqrt(D))
    embedding = centroids[topic] + noise
    embedding = (embedding / np.linalg.norm(embedding, axis=1, keepdims=True)).astype(np.float32)

    # Old pins were created up to 90 days before the world; new ones at any time during it.
    old_age = rng.integers(1, 90 * DAY_MS, size=M)
    new_age = rng.integers(0, p.days * DAY_MS, size=M)
    created_ms = np.where(is_new, p.start_ms + new_age, p.start_ms - old_age).astype(np.int64)
    quality = rng.standard_normal(M) * b.pin_quality_sd

    order = np.lexsort((created_ms, topic))
    key = topic[order] * _TOPIC_KEY + (created_ms[order] - p.start_ms)
    offset = np.searchsorted(topic[order], np.arange(K + 1), side="left")
    return _Pins(topic, embedding, created_ms, quality, order, key, offset)


@dataclass
class _Users:
    segment: np.ndarray  # [N] int8 code into SEGMENTS
    theta: np.ndarray  # [N, K] long-term interest mix (changes for resurrected users)
    theta_after_gap: np.ndarray  # [N, K] resurrected users' mix after the gap
    comeback_day: np.ndarray  # [N] int64, -1 unless resurrected
    disliked: np.ndarray  # [N, K] bool
    sessions: np.ndarray  # [N, days] sessions per day, 0 = inactive
    first_day: np.ndarray  # [N] first day with sessions


def _make_users(p: WorldParams, b: Behaviour, rng: np.random.Generator) -> _Users:
    N, K, T = p.users, p.n_topics, p.days
    # Exact share of non-core users (not a coin per user): small worlds still match the setting.
    n_non_core = int(round(p.non_core_share * N))
    segment = np.zeros(N, dtype=np.int8)
    non_core = rng.permutation(N)[:n_non_core]
    segment[non_core] = np.array([NEW, CASUAL, RESURRECTED], dtype=np.int8)[np.arange(n_non_core) % 3]

    alpha = np.full(K, b.interest_concentration)
    theta = rng.dirichlet(alpha, size=N)
    fresh = rng.dirichlet(alpha, size=N)
    theta_after_gap = (1 - b.resurrected_interest_change) * theta + b.resurrected_interest_change * fresh
    # One or two disliked topics, among those the user cares least about.
    least = np.argsort(theta + rng.random((N, K)) * 1e-9, axis=1)[:, :2]
    disliked = np.zeros((N, K), dtype=bool)
    disliked[np.arange(N), least[:, 0]] = True
    second = rng.random(N) < 0.5
    disliked[np.arange(N)[second], least[second, 1]] = True

    days = np.arange(T)
    window = np.zeros((N, T), dtype=bool)  # days on which a user can be active at all
    forced = np.zeros((N, T), dtype=bool)  # days on which a user is certainly active
    prob = np.zeros(N)
    extra = np.zeros(N)
    rows = np.arange(N)
    for code, (p_active, lam) in (
        (CORE, b.core_activity), (NEW, b.new_activity),
        (CASUAL, b.casual_activity), (RESURRECTED, b.resurrected_activity),
    ):
        prob[segment == code], extra[segment == code] = p_active, lam
    is_core, is_new = segment == CORE, segment == NEW
    is_casual, is_res = segment == CASUAL, segment == RESURRECTED
    window[is_core | is_casual] = True
    forced[rows[is_core], 0] = True
    casual_day = rng.integers(0, T, size=N)
    forced[rows[is_casual], casual_day[is_casual]] = True
    start_day = rng.integers(1, T, size=N)  # new users start mid-world (never on day 0)
    window[is_new] = days[None, :] >= start_day[is_new, None]
    forced[rows[is_new], start_day[is_new]] = True
    early_end = max(1, int(round(T * b.resurrected_early_share)))
    comeback = max(early_end, T - max(1, int(round(T * b.resurrected_late_share))))
    window[is_res] = (days < early_end) | (days >= comeback)
    forced[rows[is_res], 0] = True
    forced[rows[is_res], comeback] = True
    comeback_day = np.where(is_res, comeback, -1).astype(np.int64)

    active = window & ((rng.random((N, T)) < prob[:, None]) | forced)
    n_sessions = 1 + rng.poisson(extra[:, None], size=(N, T))
    sessions = np.where(active, np.minimum(n_sessions, b.max_sessions_per_day), 0)
    first_day = np.argmax(sessions > 0, axis=1)
    return _Users(segment, theta, theta_after_gap, comeback_day, disliked, sessions, first_day)


def _popularity(p: WorldParams, b: Behaviour, rng: np.random.Generator) -> np.ndarray:
    """[days, K] topic trend logits: a random walk, centred each day."""
    steps = rng.standard_normal((p.days, p.n_topics)) * b.popularity_drift_sd
    steps[0] = rng.standard_normal(p.n_topics) * b.popularity_sd
    walk = np.cumsum(steps, axis=0)
    return walk - walk.mean(axis=1, keepdims=True)


# -- one day: schedule, then serve requests round by round ---------------------------------------


@dataclass
class _State:
    """What a user carries from one request to the next (and across days)."""

    theta_cdf: np.ndarray  # [N, K]
    recent_hide: np.ndarray  # [N, K] decayed hide counts
    fatigue: np.ndarray  # [N, K] decayed engagement counts
    last_ms: np.ndarray  # [N] time of the last request (decays are relative to it)
    last_intent: np.ndarray  # [N] intent of the last request, -1 if none yet


def _schedule_day(p, b, users, state, pop_cdf, day, rng):
    """Requests of one day: user, time, session intent. Sorted by (user, time)."""
    K = p.n_topics
    day_start = p.start_ms + day * DAY_MS
    active = np.flatnonzero(users.sessions[:, day])
    A, S, R = len(active), b.max_sessions_per_day, b.max_requests_per_session
    n_sessions = users.sessions[active, day]
    n_requests = 1 + np.minimum(rng.poisson(b.extra_requests_per_session, size=(A, S)), R - 1)
    gaps = b.request_gap_min_ms + rng.exponential(b.request_gap_mean_ms, size=(A, S, R))
    gaps[:, :, 0] = 0
    offsets = np.cumsum(gaps, axis=2)
    duration = np.take_along_axis(offsets, (n_requests - 1)[:, :, None], axis=2)[:, :, 0]
    session_gap = b.session_gap_min_ms + rng.exponential(b.session_gap_mean_ms, size=(A, S))
    session_gap[:, 0] = rng.uniform(0, b.first_session_latest_ms, size=A)
    prev_duration = np.concatenate([np.zeros((A, 1)), duration[:, :-1]], axis=1)
    session_start = np.cumsum(session_gap + prev_duration, axis=1)
    times = (day_start + session_start[:, :, None] + offsets).astype(np.int64)
    keep = (
        (np.arange(S)[None, :, None] < n_sessions[:, None, None])
        & (np.arange(R)[None, None, :] < n_requests[:, :, None])
        & (times < day_start + DAY_MS - b.day_end_margin_ms)
    )
    a_idx, _, r_idx = np.nonzero(keep)  # row-major: per user, in time order
    user = active[a_idx]
    t = times[keep]
    n = len(user)

    # Session intents: a fresh topic at each session start (unless the previous session was
    # recent and the intent carries over) and at occasional switches within a session.
    first_of_user = np.ones(n, dtype=bool)
    first_of_user[1:] = user[1:] != user[:-1]
    prev_ms = np.empty(n, dtype=np.int64)
    prev_ms[1:] = t[:-1]
    prev_ms[first_of_user] = state.last_ms[user[first_of_user]]
    prev_intent_known = ~first_of_user | (state.last_intent[user] >= 0)
    session_first = r_idx == 0
    carry = (
        session_first
        & prev_intent_known
        & (t - prev_ms < b.intent_carry_window_ms)
        & (rng.random(n) < b.intent_carry_prob)
    )
    switch = ~session_first & (rng.random(n) < b.intent_switch_prob)
    from_trend = rng.random(n) < p.intent_outside_share
    r = rng.random(n)
    fresh = np.where(
        from_trend,
        np.minimum(np.searchsorted(pop_cdf, r), K - 1),
        _sample_rows(state.theta_cdf[user], r),
    )
    # A carried intent at a user's first request of the day comes from yesterday's state.
    carried_in = carry & first_of_user
    fresh[carried_in] = state.last_intent[user[carried_in]]
    flag = (session_first & ~carry) | switch | carried_in
    source = np.maximum.accumulate(np.where(flag, np.arange(n), 0))
    intent = fresh[source]

    if n:
        last = np.flatnonzero(np.append(user[1:] != user[:-1], True))
        state.last_intent[user[last]] = intent[last]
    rank = np.arange(n) - np.flatnonzero(first_of_user)[np.cumsum(first_of_user) - 1]
    return user, t, intent, rank


_REDRAWS = 4


def _pick_pins(pins: _Pins, topic, t_rel, trend, rng) -> np.ndarray:
    """A pin of each slot's topic created by the request time (uniformly among them); trending
    slots take the better of two draws, so they lean to popular (high-quality) pins."""
    lo = pins.topic_offset[topic]
    available = np.searchsorted(pins.sorted_key, topic * _TOPIC_KEY + t_rel, side="right") - lo
    pick = pins.sorted_index[lo + (rng.random(len(topic)) * available).astype(np.int64)]
    other = pins.sorted_index[lo + (rng.random(len(topic)) * available).astype(np.int64)]
    better = trend & (pins.quality[other] > pins.quality[pick])
    pick[better] = other[better]
    return pick


def _repeated(key: np.ndarray) -> np.ndarray:
    """True where a key already occurred earlier in the array."""
    order = np.argsort(key, kind="stable")
    mask = np.zeros(len(key), dtype=bool)
    mask[order[1:]] = key[order][1:] == key[order][:-1]
    return mask


def _serve_round(p, b, pins, users, state, pop, req_user, req_ms, req_intent, rng):
    """Show each request a candidate set and draw its engagements. Returns impression arrays."""
    K, M = p.n_topics, p.pins
    n_cand = rng.integers(p.min_candidates, p.max_candidates + 1, size=len(req_user))
    req = np.repeat(np.arange(len(req_user)), n_cand)
    n = len(req)
    user = req_user[req]

    # Which retrieval source fills each slot, then the slot's topic.
    source_cdf = _cdf(np.array(b.candidate_source_mix))
    source = np.minimum(np.searchsorted(source_cdf, rng.random(n), side="right"), 2)
    r = rng.random(n)
    topic = req_intent[req].copy()
    lt = source == 0
    topic[lt] = _sample_rows(state.theta_cdf[user[lt]], r[lt])
    trend = source == 2
    topic[trend] = np.minimum(np.searchsorted(_cdf(np.exp(pop)), r[trend]), K - 1)

    t_rel = req_ms[req] - p.start_ms
    pick = _pick_pins(pins, topic, t_rel, trend, rng)
    # A pin shown twice in one request is redrawn from a trending topic; the rare pin still
    # repeated after a few tries is dropped. Then positions are numbered 0..n-1.
    for _ in range(_REDRAWS):
        again = _repeated(req * np.int64(M) + pick)
        if not again.any():
            break
        topic[again] = np.minimum(np.searchsorted(_cdf(np.exp(pop)), rng.random(again.sum())), K - 1)
        trend[again] = True
        pick[again] = _pick_pins(pins, topic[again], t_rel[again], trend[again], rng)
    keep = np.flatnonzero(~_repeated(req * np.int64(M) + pick))
    req, user, topic, pin = req[keep], user[keep], topic[keep], pick[keep]
    block_start = np.searchsorted(req, req, side="left")
    position = np.arange(len(req)) - block_start

    interest = np.log1p(K * users.theta[user, topic])
    is_intent = topic == req_intent[req]
    disliked = users.disliked[user, topic]
    recent_hide = np.minimum(state.recent_hide[user, topic], b.recent_hide_cap)
    fatigue = np.maximum(state.fatigue[user, topic] - b.fatigue_threshold, 0.0)
    trend_logit = pop[topic]
    quality = pins.quality[pin]

    hide_logit = (
        b.hide_base + b.hide_disliked * disliked + b.hide_interest * interest
        + b.hide_intent * is_intent + b.hide_recent_hide * recent_hide + b.hide_fatigue * fatigue
    )
    repin_logit = (
        b.repin_base + b.repin_interest * interest + b.repin_intent * is_intent
        + b.repin_popularity * trend_logit + b.repin_recent_hide * recent_hide + quality
    )
    click_logit = (
        b.click_base + b.click_interest * interest + b.click_intent * is_intent
        + b.click_popularity * trend_logit + b.click_recent_hide * recent_hide + quality
    )
    u_hide, u_repin, u_click = rng.random((3, len(req)))
    # A hide ends the interaction with that pin; repin and click are then drawn together
    # (a repin from the grid needs no click, but usually comes with a closeup).
    hide = u_hide < _sigmoid(hide_logit)
    repin = ~hide & (u_repin < _sigmoid(repin_logit))
    click = ~hide & (u_click < _sigmoid(click_logit + b.click_given_repin * repin))

    np.add.at(state.recent_hide, (user[hide], topic[hide]), 1.0)
    engaged = repin | click
    np.add.at(state.fatigue, (user[engaged], topic[engaged]), repin[engaged] + 0.5 * click[engaged])
    return dict(
        req=req, position=position, pin=pin, repin=repin, click=click, hide=hide,
        is_intent=is_intent, disliked=disliked, recent_hide=recent_hide > 0.5, fatigued=fatigue > 0,
    )


def _simulate(p, b, pins, users, pop, rng, progress):
    """Run the world day by day. Returns per-impression arrays sorted by (time, request, position)."""
    N, K = p.users, p.n_topics
    state = _State(
        theta_cdf=_cdf(users.theta),
        recent_hide=np.zeros((N, K)),
        fatigue=np.zeros((N, K)),
        last_ms=np.full(N, np.iinfo(np.int64).min // 2, dtype=np.int64),
        last_intent=np.full(N, -1, dtype=np.int64),
    )
    theta = users.theta.copy()
    users = dataclasses.replace(users, theta=theta)
    parts: list[dict] = []
    next_request_id = 1
    for day in tqdm(range(p.days), desc="world", unit="day", disable=not progress):
        back = users.comeback_day == day  # resurrected users return with changed interests
        theta[back] = users.theta_after_gap[back]
        state.theta_cdf[back] = _cdf(theta[back])
        pop_cdf = _cdf(np.exp(pop[day]))
        user, t, intent, rank = _schedule_day(p, b, users, state, pop_cdf, day, rng)
        # Request ids follow time (ties: user id), across days.
        request_id = np.empty(len(user), dtype=np.int64)
        request_id[np.lexsort((user, t))] = next_request_id + np.arange(len(user))
        next_request_id += len(user)
        # Rounds: every user's k-th request of the day, so one user's requests stay in order
        # and each sees the hides and fatigue its earlier requests caused.
        by_rank = np.argsort(rank, kind="stable")
        bounds = np.searchsorted(rank[by_rank], np.arange(rank.max(initial=-1) + 2))
        for k in range(len(bounds) - 1):
            sel = by_rank[bounds[k]:bounds[k + 1]]
            u = user[sel]
            dt = t[sel] - state.last_ms[u]
            state.recent_hide[u] *= _decay(dt, b.recent_hide_half_life_ms)[:, None]
            state.fatigue[u] *= _decay(dt, b.fatigue_half_life_ms)[:, None]
            state.last_ms[u] = t[sel]
            out = _serve_round(p, b, pins, users, state, pop[day], u, t[sel], intent[sel], rng)
            req = out.pop("req")
            out.update(user=u[req], request_ms=t[sel][req], request_id=request_id[sel][req])
            parts.append(out)
    imp = {key: np.concatenate([part[key] for part in parts]) for key in parts[0]}
    order = np.lexsort((imp["position"], imp["request_id"], imp["request_ms"]))
    return {key: value[order] for key, value in imp.items()}


# -- events ---------------------------------------------------------------------------------------


def _make_events(p, b, imp, rng):
    """Action events of the engaged impressions: times after the request, arrival after that."""
    n = len(imp["pin"])
    react = (
        b.react_min_ms + b.react_per_position_ms * imp["position"]
        + rng.lognormal(np.log(b.react_median_ms), b.react_sigma, size=n)
    )
    react = np.minimum(react, b.react_max_ms).astype(np.int64)
    act_ms = imp["request_ms"] + react
    repin_delay = b.repin_after_click_min_ms + rng.exponential(b.repin_after_click_mean_ms, size=n)
    repin_delay = repin_delay.astype(np.int64)
    repin_ms = np.where(imp["click"], act_ms + repin_delay, act_ms)

    pieces = []
    for action, mask, when in (
        (ActionType.REPIN, imp["repin"], repin_ms),
        (ActionType.CLICK, imp["click"], act_ms),
        (ActionType.HIDE, imp["hide"], act_ms),
    ):
        idx = np.flatnonzero(mask)
        pieces.append((idx, np.full(len(idx), int(action), dtype=np.int8), when[idx]))
    idx = np.concatenate([x[0] for x in pieces])
    action = np.concatenate([x[1] for x in pieces])
    event_ms = np.concatenate([x[2] for x in pieces])
    # Event ids number events in event-time order (ties: impression order, then action id).
    order = np.lexsort((action, idx, event_ms))
    idx, action, event_ms = idx[order], action[order], event_ms[order]
    m = len(idx)

    late = rng.random(m) < p.late_fraction
    on_time_delay = rng.integers(b.arrival_min_ms, b.arrival_max_ms + 1, size=m)
    late_delay = np.exp(rng.uniform(np.log(b.late_min_ms), np.log(b.late_max_ms), size=m)).astype(np.int64)
    arrival_ms = event_ms + np.where(late, late_delay, on_time_delay)

    number = np.arange(m)
    replay = np.lexsort((number, arrival_ms))  # arrival order; ties by event id
    names = np.array([""] + [a.wire_name for a in ActionType], dtype=object)
    return dict(
        number=number[replay],
        user=imp["user"][idx][replay],
        pin=imp["pin"][idx][replay],
        action=action[replay],
        action_name=names[action[replay]],
        event_ms=event_ms[replay],
        arrival_ms=arrival_ms[replay],
        request_id=imp["request_id"][idx][replay],
        late=late[replay],
    )


# -- summary, writing, loading --------------------------------------------------------------------


def _rate(numerator: np.ndarray, mask: np.ndarray | None = None) -> float:
    values = numerator if mask is None else numerator[mask]
    return round(float(values.mean()), 6) if len(values) else 0.0


def _summarise(p, pins, users, imp, ev) -> WorldSummary:
    n_imp = len(imp["pin"])
    events_per_user = np.bincount(ev["user"], minlength=p.users)
    quantiles = {
        f"p{q}": round(float(np.percentile(events_per_user, q)), 3) for q in (10, 25, 50, 75, 90, 99)
    }
    quantiles["mean"] = round(float(events_per_user.mean()), 3)
    quantiles["max"] = int(events_per_user.max())
    quantiles["users_without_events"] = int((events_per_user == 0).sum())
    seg_events = {
        SEGMENTS[c]: int(events_per_user[users.segment == c].sum()) for c in range(len(SEGMENTS))
    }
    quantiles["events_by_segment"] = seg_events
    repin, click, hide = imp["repin"], imp["click"], imp["hide"]
    effects = {
        # Ground truth the model cannot see directly; shows how strong each effect is.
        "repin_rate_intent_topic": _rate(repin, imp["is_intent"]),
        "repin_rate_other_topics": _rate(repin, ~imp["is_intent"]),
        "click_rate_intent_topic": _rate(click, imp["is_intent"]),
        "click_rate_other_topics": _rate(click, ~imp["is_intent"]),
        "hide_rate_disliked_topic": _rate(hide, imp["disliked"]),
        "hide_rate_other_topics": _rate(hide, ~imp["disliked"]),
        "hide_rate_after_recent_hide": _rate(hide, imp["recent_hide"]),
        "hide_rate_fatigued_topic": _rate(hide, imp["fatigued"]),
        "repin_rate_after_recent_hide": _rate(repin, imp["recent_hide"]),
        "intent_impression_share": _rate(imp["is_intent"]),
        "click_share_of_repins": _rate(click, repin),
    }
    return WorldSummary(
        users=p.users,
        pins=p.pins,
        requests=int(len(np.unique(imp["request_id"]))),
        impressions=n_imp,
        events=len(ev["number"]),
        events_by_action={a.wire_name: int((ev["action"] == int(a)).sum()) for a in ActionType},
        rate_per_impression={"repin": _rate(repin), "click": _rate(click), "hide": _rate(hide)},
        late_fraction=_rate(ev["late"]),
        non_core_share=round(float((users.segment != CORE).mean()), 6),
        segment_users={SEGMENTS[c]: int((users.segment == c).sum()) for c in range(len(SEGMENTS))},
        events_per_user=quantiles,
        effects=effects,
        pins_created_during_world=int((pins.created_ms >= p.start_ms).sum()),
    )


def _write(p, b, out, pins, users, first_active_ms, imp, ev, summary) -> None:
    M, N = p.pins, p.users
    write_parquet(pa.table({
        PIN_ID: pa.array(np.arange(1, M + 1, dtype=np.int64)),
        PIN_TOPIC: pa.array(pins.topic.astype(np.int64)),
        PIN_EMBEDDING: list_array(pins.embedding),
        PIN_CREATED_MS: pa.array(pins.created_ms.astype(np.int64)),
        PIN_DURATION_MS: pa.array(pins.duration_ms.astype(np.int64)),
    }), out / PINS_FILE)
    write_parquet(pa.table({
        USER_ID: pa.array(np.arange(1, N + 1, dtype=np.int64)),
        "segment": pa.array(np.array(SEGMENTS, dtype=object)[users.segment], type=pa.string()),
        "is_core": pa.array(users.segment == CORE),
        "first_active_ms": pa.array(first_active_ms.astype(np.int64)),
    }), out / USERS_FILE)
    write_parquet(pa.table({
        REQUEST_ID: pa.array(imp["request_id"].astype(np.int64)),
        USER_ID: pa.array((imp["user"] + 1).astype(np.int64)),
        "request_time": pa.array(imp["request_ms"].astype(np.int64)),
        "day": pa.array(((imp["request_ms"] - p.start_ms) // DAY_MS).astype(np.int32)),
        "position": pa.array(imp["position"].astype(np.int32)),
        PIN_ID: pa.array((imp["pin"] + 1).astype(np.int64)),
        SERVED_TIME: pa.array(imp["request_ms"].astype(np.int64)),  # one instant per request
        LABEL_REPIN: pa.array(imp["repin"].astype(np.int8)),
        LABEL_CLICK: pa.array(imp["click"].astype(np.int8)),
        LABEL_HIDE: pa.array(imp["hide"].astype(np.int8)),
    }), out / REQUESTS_FILE)
    write_parquet(pa.table({
        "event_id": pa.array([f"e{n:010d}" for n in ev["number"].tolist()], type=pa.string()),
        USER_ID: pa.array((ev["user"] + 1).astype(np.int64)),
        PIN_ID: pa.array((ev["pin"] + 1).astype(np.int64)),
        "action_type": pa.array(ev["action_name"], type=pa.string()),
        "event_time": pa.array(ev["event_ms"].astype(np.int64)),
        "arrival_time": pa.array(ev["arrival_ms"].astype(np.int64)),
        "surface": pa.array(np.full(len(ev["number"]), SURFACE, dtype=object), type=pa.string()),
        REQUEST_ID: pa.array(ev["request_id"].astype(np.int64)),
    }), out / EVENTS_FILE)
    meta = {
        "format_version": FORMAT_VERSION,
        "source": "synthetic",
        **p.to_dict(),
        "end_ms": p.end_ms,
        "start_iso": utc_iso(p.start_ms),
        "end_iso": utc_iso(p.end_ms),
        "files": list(WORLD_FILES[:-1]),
        HAS_IMPRESSIONS: True,  # every candidate of a request was shown
        "behaviour": b.to_dict(),
        "summary": summary.to_dict(),
    }
    write_meta(meta, out)


def generate_world(params: WorldParams, out: Path, *, progress: bool = True) -> WorldSummary:
    """Generate a world into `out` (created if needed; world files in it are replaced)."""
    params.validate()
    out = prepare_out(out)
    b = BEHAVIOUR
    # Independent streams per part: changing the user count does not reshuffle the pins.
    # (A fifth stream, spawned after the first four, leaves them and so every other file as they
    # were before pins had durations.)
    pin_ss, user_ss, sim_ss, event_ss, duration_ss = np.random.SeedSequence(params.seed).spawn(5)
    pins = _make_pins(params, b, np.random.Generator(np.random.PCG64(pin_ss)))
    pins.duration_ms = _pin_durations(pins.topic, params.n_topics,
                                      np.random.Generator(np.random.PCG64(duration_ss)))
    users_rng = np.random.Generator(np.random.PCG64(user_ss))
    users = _make_users(params, b, users_rng)
    pop = _popularity(params, b, users_rng)
    imp = _simulate(params, b, pins, users, pop, np.random.Generator(np.random.PCG64(sim_ss)), progress)
    ev = _make_events(params, b, imp, np.random.Generator(np.random.PCG64(event_ss)))

    # First request per user (requests are time-sorted); a user without any falls back to the
    # start of the first day they were scheduled for.
    first_active_ms = params.start_ms + users.first_day.astype(np.int64) * DAY_MS
    seen, first_index = np.unique(imp["user"], return_index=True)
    first_active_ms[seen] = imp["request_ms"][first_index]

    summary = _summarise(params, pins, users, imp, ev)
    make_out(out)
    _write(params, b, out, pins, users, first_active_ms, imp, ev, summary)
    return summary


def load_world(directory: Path | str) -> World:
    """Read a world directory written by `generate_world` (or an importer using the same files)."""
    path = Path(directory)
    missing = [name for name in WORLD_FILES if not (path / name).is_file()]
    if missing:
        raise UserError(
            f"{path} is not a world directory (missing {', '.join(missing)}); "
            "create one with `homefeed world generate --out DIR`"
        )
    meta = json.loads((path / META_FILE).read_text())
    requests = pd.read_parquet(path / REQUESTS_FILE)
    if SERVED_TIME not in requests:  # written before serve times: served at the request time
        requests[SERVED_TIME] = requests["request_time"]
    pins = pd.read_parquet(path / PINS_FILE)
    # nullable int64 (null = unknown); a world written before durations: every one unknown
    pins[PIN_DURATION_MS] = (pins[PIN_DURATION_MS] if PIN_DURATION_MS in pins
                             else pd.Series([None] * len(pins), dtype=object)).astype("Int64")
    return World(
        params=WorldParams.from_dict(meta),
        pins=pins,
        users=pd.read_parquet(path / USERS_FILE),
        requests=requests,
        events=pd.read_parquet(path / EVENTS_FILE),
        meta=meta,
        path=path,
    )
