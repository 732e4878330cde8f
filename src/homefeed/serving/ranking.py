"""One ranking request, HTTP-free: online features -> the training code's tensors -> model -> top k.

bento/service.py is a thin shell around `RankingEngine.rank`; tests and benchmarks call it too.
Tensors are built by the same functions training uses (`UserTensors.from_sequence` pads with
`homefeed.model.pad_rows`, `homefeed.model.merge_impressions` for a model trained with
`sequence_impressions`, `homefeed.model.dense.dense_from_inputs` fed the typed online features
by `dense_user` / `dense_candidates`), so serving cannot drift from training.

What a request can count on:
1. duplicate candidate ids are ranked once (first occurrence kept; `duplicates_dropped` says how
   many were removed);
2. a pin without features gets a neutral (all-zero) embedding and `unknown_pin: true`; a user
   without a sequence is ranked as a cold start (`cold_start: true`);
3. when Redis cannot be read, the answer comes from the pin cache and an empty sequence, flagged
   `degraded: true`: never an error;
4. `BadRequest` (a blend naming a head the model does not have) is the only error a caller causes.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np

from homefeed.model import merge_impressions
from homefeed.model.dense import CandidateInputs, UserInputs, dense_from_inputs
from homefeed.serving.fast_model import ServedRanker, UserTensors
from homefeed.serving.online_features import (
    FeatureStoreUnavailable,
    OnlineFeatureReader,
    PinFeatures,
    UserFeatures,
)

log = logging.getLogger(__name__)

DEFAULT_BLEND = {"repin": 1.0, "click": 0.25, "hide": -1.0}


class BadRequest(ValueError):
    """The caller's request cannot be served as asked (HTTP 400)."""


def parse_blend(text: str | None) -> dict[str, float]:
    """"repin=1,click=0.25,hide=-1" -> dict (the HOMEFEED_RANK_BLEND format)."""
    if not text:
        return dict(DEFAULT_BLEND)
    out = {}
    for part in text.split(","):
        name, _, weight = part.partition("=")
        out[name.strip()] = float(weight)
    return out


@dataclass
class StageTimer:
    marks: dict[str, float] = field(default_factory=dict)
    _last: float = field(default_factory=time.perf_counter)

    def lap(self, stage: str) -> None:
        now = time.perf_counter()
        self.marks[stage] = (now - self._last) * 1000
        self._last = now


def cold_start_user(user_id: int) -> UserFeatures:
    empty = np.zeros(0, dtype=np.int64)
    return UserFeatures(user_id, empty, empty.copy(), empty.copy(), None, None)


def dense_user(user: UserFeatures, emb_dim: int) -> UserInputs:
    """One user's typed online features as `homefeed.model.dense`'s inputs (no column round trip)."""
    present = user.profile_embedding is not None and user.profile_embedding.size == emb_dim
    emb = user.profile_embedding if present else np.zeros(emb_dim, dtype=np.float32)
    scalars = np.array([np.nan if v is None else float(v) for v in (
        user.profile_actions_28d, user.profile_repin_rate_28d, user.profile_hide_rate_28d,
        user.profile_days_active_28d)], dtype=np.float64)
    return UserInputs([np.asarray(user.seq_action_times, dtype=np.int64)],
                      emb.astype(np.float32, copy=False)[None], np.array([present]),
                      np.where(np.isnan(scalars), 0.0, scalars)[None],
                      [user.engagement_decayed], [user.engagement_as_of_ms])


def dense_candidates(pins: PinFeatures, start: int = 0) -> CandidateInputs:
    """Candidate rows `start:` of a PinFeatures as `homefeed.model.dense`'s inputs: an unknown pin
    has no embedding nor created time, a duration of -1 (unknown) is training's null."""
    known = pins.known[start:]
    duration = pins.duration_ms
    return CandidateInputs(
        np.where(known[:, None], pins.embedding[start:], 0.0).astype(np.float32, copy=False),
        np.where(known, pins.created_ms[start:], np.nan),
        (np.full(known.size, np.nan) if duration is None else
         np.where(known & (duration[start:] >= 0), duration[start:], np.nan)),
        None if pins.engagement is None else pins.engagement[start:],
        None if pins.engagement_as_of_ms is None else pins.engagement_as_of_ms[start:])


class RankingEngine:
    def __init__(self, served: ServedRanker, reader: OnlineFeatureReader, model_version: str,
                 blend: dict[str, float] | None = None):
        self.served = served
        self.reader = reader
        self.config = served.config
        self.model_version = model_version
        self.heads = list(served.heads)
        self.blend = self._check_blend(blend or DEFAULT_BLEND)
        if self.config.sequence_impressions and not reader.impressions:
            raise ValueError("the model reads impressions in its sequence (sequence_impressions): "
                             "its reader must read them (OnlineFeatureReader(impressions=True))")

    def _check_blend(self, blend: dict[str, float]) -> dict[str, float]:
        unknown = sorted(set(blend) - set(self.heads))
        if unknown:
            raise BadRequest(f"blend names unknown heads {unknown}; the model has {self.heads}")
        return blend

    def sequence(self, user: UserFeatures) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The model's sequence input (pin ids, action ids, times; newest first, at most seq_len):
        the user's actions, or for a model with `sequence_impressions` the actions and impressions
        merged as training merges them (homefeed.model.merge_impressions)."""
        L = self.config.seq_len
        if not self.config.sequence_impressions:
            return user.seq_pin_ids[:L], user.seq_action_types[:L], user.seq_action_times[:L]
        empty = np.zeros(0, dtype=np.int64)
        pins, acts, times, lens = merge_impressions(
            [user.seq_pin_ids], [user.seq_action_types], [user.seq_action_times],
            [empty if user.imp_pin_ids is None else user.imp_pin_ids],
            [empty if user.imp_times is None else user.imp_times], L)
        n = int(lens[0])
        return pins[0, :n], acts[0, :n], times[0, :n]

    def features(self, user_id: int, candidates: np.ndarray):
        """(user, model sequence (`sequence`), sequence + candidate pins, degraded): Redis down ->
        empty user and the pin cache only, flagged, instead of an error."""
        try:
            user = self.reader.user_features(user_id)
            degraded = False
        except FeatureStoreUnavailable as exc:  # the breaker logs transitions; this is per request
            log.debug("ranking degraded: %s", exc)
            user, degraded = cold_start_user(user_id), True
        seq = self.sequence(user)
        ids = np.concatenate([seq[0], candidates])
        try:
            pins = self.reader.pin_features(ids, cache_only=degraded)
        except FeatureStoreUnavailable as exc:
            log.debug("pins from cache only: %s", exc)
            pins, degraded = self.reader.pin_features(ids, cache_only=True), True
        return user, seq, pins, degraded

    def rank(self, user_id: int, candidates: list[int], k: int = 10, request_time_ms: int | None = None,
             blend: dict[str, float] | None = None) -> dict:
        timer = StageTimer()
        request_time_ms = int(request_time_ms if request_time_ms is not None else time.time() * 1000)
        cand = np.asarray(candidates, dtype=np.int64)
        _, first = np.unique(cand, return_index=True)
        duplicates = cand.size - first.size
        if duplicates:
            cand = cand[np.sort(first)]
        weights = self._check_blend(blend) if blend else self.blend
        user, (_, seq_acts, seq_times), pins, degraded = self.features(user_id, cand)
        timer.lap("features")

        n_seq = seq_acts.size
        user_tensors = UserTensors.from_sequence(
            pins.embedding[:n_seq], seq_acts, seq_times, self.config.seq_len, request_time_ms,
            emb_dim=self.config.emb_dim)
        cand_emb = pins.embedding[n_seq:]
        known = pins.known[n_seq:]
        dense = dense_from_inputs(dense_user(user, self.config.emb_dim), dense_candidates(pins, n_seq),
                                  request_time_ms)
        timer.lap("tensors")

        probs = self.served.score(user_tensors, cand_emb, dense)  # [N, H]
        timer.lap("model")

        blended = sum(w * probs[:, self.heads.index(h)] for h, w in weights.items())
        order = np.argsort(-blended, kind="stable")[:k]
        items = [{
            "pin_id": int(cand[i]),
            "score": float(blended[i]),
            "heads": {h: float(probs[i, j]) for j, h in enumerate(self.heads)},
            **({} if known[i] else {"unknown_pin": True}),
        } for i in order]
        timer.lap("rank")
        return {
            "user_id": int(user_id),
            "items": items,
            "model_version": self.model_version,
            "request_time_ms": request_time_ms,
            "cold_start": not user.has_sequence,
            # what the answer saw of the user's actions (a client waits for its own action here)
            "sequence_newest_ms": int(user.seq_action_times.max()) if user.seq_action_times.size else None,
            "unknown_pins": [int(p) for p in cand[~known]],
            "duplicates_dropped": int(duplicates),
            "degraded": degraded,
            "timings_ms": {s: round(v, 3) for s, v in timer.marks.items()},
        }
