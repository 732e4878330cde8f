"""Per-user latest-N sequences (actions; impressions, the pins shown): the one place that says
how a sequence is built. Both views (homefeed.features.SEQUENCE_VIEWS) follow the same rules;
an impression is kept with action type 0 (its view has no action-type column).

The stream consumer, the backfill command and training-time checks all use `merge`, so the
online feature and anything rebuilt offline are the same function of the same events.

Rules:
* newest first, ordered by (event_time, event_id) descending: a late event lands where its
  event time says, not where it arrived;
* deduplicated by event_id: a redelivered or replayed event changes nothing;
* capped at N: an event older than the N-th kept action is not in the sequence (it stays in the
  offline log);
* the snapshot's event timestamp strictly increases with every new version, because Feast's
  Redis store skips a write whose timestamp is not newer than the stored one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from homefeed import features as F


@dataclass
class SequenceState:
    """What the consumer keeps per user (in Redis, next to the Feast row): the kept actions
    with their event ids, newest first, and the last pushed snapshot timestamp."""

    event_ids: list[str] = field(default_factory=list)
    pin_ids: list[int] = field(default_factory=list)
    action_types: list[int] = field(default_factory=list)
    action_times: list[int] = field(default_factory=list)
    snapshot_ms: int = 0  # event timestamp of the last pushed version (0: never pushed)

    def __len__(self) -> int:
        return len(self.event_ids)

    def to_bytes(self) -> bytes:
        return json.dumps([self.event_ids, self.pin_ids, self.action_types, self.action_times,
                           self.snapshot_ms], separators=(",", ":")).encode()

    @classmethod
    def from_bytes(cls, raw: bytes | None) -> "SequenceState":
        if not raw:
            return cls()
        e, p, a, t, snap = json.loads(raw)
        return cls(e, p, a, t, snap)

    def feature_row(self, view: F.SequenceView = F.ACTION_SEQUENCE) -> dict:
        """The feature values of this state in `view` (user_action_sequence by default)."""
        values = {view.pin_ids: list(self.pin_ids), view.action_types: list(self.action_types),
                  view.times: list(self.action_times), view.length: len(self.pin_ids)}
        return {name: values[name] for name in view.feature_names}


# (event_id, pin_id, action_type_id, event_time_ms); an impression's action type is 0
Action = tuple[str, int, int, int]
IMPRESSION_TYPE = 0


def merge(state: SequenceState, actions: list[Action], cap: int) -> tuple[SequenceState, bool]:
    """Merge new actions into a state. Returns (new state, whether the kept sequence changed).

    The returned state's snapshot_ms is not advanced here; `next_snapshot_ms` does that when the
    caller decides to push.
    """
    seen = set(state.event_ids)
    fresh = []
    for action in actions:
        if action[0] not in seen:
            seen.add(action[0])
            fresh.append(action)
    if not fresh:
        return state, False
    kept = list(zip(state.event_ids, state.pin_ids, state.action_types, state.action_times))
    combined = sorted(kept + fresh, key=lambda a: (a[3], a[0]), reverse=True)[:cap]
    if combined == kept:  # every new action was older than the cap-th kept one
        return state, False
    return SequenceState(
        event_ids=[a[0] for a in combined],
        pin_ids=[a[1] for a in combined],
        action_types=[a[2] for a in combined],
        action_times=[a[3] for a in combined],
        snapshot_ms=state.snapshot_ms,
    ), True


def next_snapshot_ms(state: SequenceState) -> int:
    """Event timestamp for a new version: the newest action's time, or 1 ms after the previous
    version when a late event changed the sequence without adding a newer action."""
    newest = state.action_times[0] if state.action_times else 0
    return max(newest, state.snapshot_ms + 1)


def build(actions: list[Action], cap: int) -> SequenceState:
    """A sequence from scratch (backfill, tests)."""
    return merge(SequenceState(), actions, cap)[0]
