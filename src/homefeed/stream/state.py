"""The stream's state in Redis: per-user sequence states and the consumer group's counters.

1. one key per user and sequence view (`STATE_KEYS`), a `homefeed.sequence.SequenceState`;
2. written with a compare-and-set against the bytes the writer loaded (`StateFenced` when another
   consumer changed them meanwhile: the partition moved);
3. per consumer group, the record counters of every batch (`COUNTERS_KEY`, `COUNTER_FIELDS`),
   added together by one script, so `homefeed stream status` can show that they add up.
"""

from __future__ import annotations

from homefeed import features as F

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
