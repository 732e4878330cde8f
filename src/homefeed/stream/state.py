"""The stream's state in Redis: per-user sequence states and the consumer group's counters.

1. one key per user and sequence view (`STATE_KEYS`), a `homefeed.sequence.SequenceState`;
2. written with a compare-and-set against the bytes the writer loaded (`StateFenced` when another
   consumer changed them meanwhile: the partition moved);
3. per consumer group, the record counters of every batch (`COUNTERS_KEY`, `COUNTER_FIELDS`),
   added together by one script, so `homefeed stream status` can show that they add up.
"""

from __future__ import annotations

import hashlib

from homefeed import features as F
from homefeed.redis_client import KeyScript
from homefeed.sequence import SequenceState

STATE_KEY = "homefeed:seqstate:{project}:{user_id}"
# One state per sequence view and user (same compare-and-set, same format: SequenceState).
STATE_KEYS = {F.USER_ACTION_SEQUENCE: STATE_KEY,
              F.USER_IMPRESSION_SEQUENCE: "homefeed:impseqstate:{project}:{user_id}"}
# Per consumer group: records, applied, duplicates, dead_lettered, pin_upserts, impressions,
# incremented together (one script) after every batch, so `homefeed stream status` can show that
# they add up.
COUNTERS_KEY = "homefeed:consumer:{project}:{group}"
COUNTER_FIELDS = ("records", "applied", "duplicates", "dead_lettered", "pin_upserts", "impressions")
# Compare-and-set of one user's state: written only if the stored value is still the one this
# consumer loaded (its SHA-1; '' = no state yet). One key per call: cluster-safe.
_CAS_STATE = """
local cur = redis.call('GET', KEYS[1])
local seen = ''
if cur then seen = redis.sha1hex(cur) end
if seen ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2])
return 1
"""
_ADD_COUNTERS = """
for i = 1, #ARGV, 2 do redis.call('HINCRBY', KEYS[1], ARGV[i], ARGV[i + 1]) end
return 1
"""


class StateFenced(RuntimeError):
    """Another consumer wrote these users' state since this one loaded it: the partition moved
    (this consumer stalled past its poll interval and is a zombie). The batch is abandoned
    uncommitted; whoever owns the partition now replays it."""

    def __init__(self, users: list[int]):
        super().__init__(f"state of {len(users)} users changed under this consumer (e.g. {users[:3]})")
        self.users = users


class StateStore:
    """One Feast project's sequence states (per user and view) and its consumer groups'
    counters, in Redis: the sequence builder's, and backfill's and status' without one."""

    def __init__(self, redis_client, project: str):
        self.redis = redis_client
        self.project = project
        self._cas = KeyScript(redis_client, _CAS_STATE)  # the state compare-and-set

    def state_key(self, user_id: int, view: F.SequenceView = F.ACTION_SEQUENCE) -> str:
        return STATE_KEYS[view.name].format(project=self.project, user_id=user_id)

    def load_states(self, user_ids: list[int], raw_out: dict | None = None,
                    view: F.SequenceView = F.ACTION_SEQUENCE) -> dict[int, SequenceState]:
        """States of `user_ids` in `view`; `raw_out` receives the stored bytes (for `save_states`'
        fence)."""
        keys = [self.state_key(u, view) for u in user_ids]
        # Each user's state is one key. On a cluster the keys of a batch span slots: the
        # non-atomic variants split them per node (MGET/MSET would fail with CROSSSLOT).
        mget = getattr(self.redis, "mget_nonatomic", self.redis.mget)
        raw = mget(keys) if keys else []
        if raw_out is not None:
            raw_out.update(zip(user_ids, raw))
        return {u: SequenceState.from_bytes(r) for u, r in zip(user_ids, raw)}

    def save_states(self, states: dict[int, SequenceState], loaded: dict | None = None,
                    view: F.SequenceView = F.ACTION_SEQUENCE) -> None:
        """Write states. With `loaded` (the bytes `load_states` saw), each write is a
        compare-and-set, and StateFenced names the users whose state another consumer changed
        meanwhile (their writes are refused; the others are applied)."""
        if not states:
            return
        if loaded is None:  # unfenced (backfill: converges with the consumer by timestamps)
            mset = getattr(self.redis, "mset_nonatomic", self.redis.mset)
            mset({self.state_key(u, view): s.to_bytes() for u, s in states.items()})
            return
        users = list(states)
        ok = self._compare_and_set([(
            self.state_key(u, view),
            hashlib.sha1(loaded[u]).hexdigest() if loaded.get(u) is not None else "",
            states[u].to_bytes()) for u in users])
        fenced = [u for u, done in zip(users, ok) if not done]
        if fenced:
            raise StateFenced(fenced)

    def _compare_and_set(self, items: list[tuple[str, str, bytes]]) -> list[bool]:
        """Run the CAS script for each (key, sha1 seen, new value), one round trip per node."""
        return [bool(done) for done in self._cas.run([(key, [seen, value]) for key, seen, value in items])]

    def counters_key(self, group: str) -> str:
        return COUNTERS_KEY.format(project=self.project, group=group)

    def add_counters(self, group: str, values: dict[str, int]) -> None:
        """Add `values` (COUNTER_FIELDS) to `group`'s counters, atomically."""
        # one key, one script: atomic on a single node and on a cluster alike
        self.redis.eval(_ADD_COUNTERS, 1, self.counters_key(group), *[x for kv in values.items() for x in kv])

    def read_counters(self, group: str) -> dict[str, int] | None:
        """`group`'s counters (COUNTER_FIELDS), or None when it has none."""
        raw = self.redis.hgetall(self.counters_key(group))
        if not raw:
            return None
        return {name: int(raw.get(name.encode(), 0)) for name in COUNTER_FIELDS}
