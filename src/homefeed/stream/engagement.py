"""Realtime engagement counters: exactly-once decayed counts per user and per pin in Redis.

Input: a micro-batch's `EngagementEvent`s: its new actions, and its impressions (their own
topic; read by the same consumer or by a process of their own, `stream consume --impressions`:
the offset marks are per topic and partition, so either way each record counts once). Output: the new
versions of every touched entity's counters, as rows for the
`user_engagement` / `pin_engagement` views (homefeed.features), which the consumer writes to the
offline log and to Feast's online store like the sequences.

1. Events are grouped per entity (the user's counters and the pin's) and, within an entity, into
   arrival windows of `granularity_ms` (the sequences' snapshot granularity): one version per
   window, so a replay of history logs counters as they were servable, not as of a batch's end.
2. Per entity, one Lua script (EVALSHA, one key: Redis Cluster safe; pipelined per node) applies
   the windows atomically. The entity's hash holds the decayed values (`d`, kind-major, as of
   `a`, the newest counted event time), exact totals (`n`), the last version (`v`), the newest
   counted arrival (`r`) and, per (topic, partition), the highest offset applied (`o:<tp>`). A
   record is counted only if its offset is above that mark, and the mark moves with the increment
   in the same script: a replayed record never counts twice, whatever consumer replays it.
3. Counting: an event at t > a decays every value to t first (a = t); one at t <= a (late) adds
   2^-((a - t)/half_life). The result does not depend on arrival order (up to rounding).
4. Each window that counted something yields a version: event timestamp
   v = max(previous v + 1, a) (strictly newer, Feast's push dedupe needs it; never before a
   counted event), created = max(v, r) (never before a counted event arrived: a training row
   served earlier cannot see it). A call that counts nothing for an entity (a replay) returns
   the entity's current row, so it is (re)written.

Crash points (the consumer's order: this script, then the log, then Feast, then the sequence
state, then the Kafka commit; a crash anywhere before the commit replays the batch):
* before or during the script: the script is atomic, nothing or everything of an entity counted;
  the replay counts it;
* after the script, before the log or Feast write: the replay counts nothing (offsets applied)
  and gets the current rows back, which are logged and pushed then (a version lost this way was
  never servable, so the log still describes what serving could read);
* after the log, before Feast: the replay logs the same row again (readers keep one per entity
  and timestamp) and pushes it;
* after Feast: the push is a no-op (same timestamp), the log gets a duplicate row.
A fenced zombie (its partition moved) replays nothing: the new owner's marks are above its
offsets; it only rewrites current rows, and Feast keeps the newest. Producer duplicates (one event
at two offsets) are for the caller to drop before (the consumer drops actions its sequence state
already holds).

When Redis loses its data, the generation restore (homefeed.stream.generation) puts every
entity's newest logged version back (`put`, from `homefeed stream backfill`'s code).

Known limits: a producer duplicate of an action older than the user's kept sequence is counted
again (the state remembers only the kept actions' ids), and so is a producer duplicate of an
impression in another micro-batch (impressions keep no state; copies within one batch are
dropped); a record isolated as poison after the
script counted it (a batch that failed for a non-outage reason further down) stays counted.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from itertools import groupby

import numpy as np
import pyarrow as pa

from homefeed import features as F
from homefeed.redis_client import KeyScript

KINDS = F.ENGAGEMENT_KINDS
HALF_LIVES_MS = F.ENGAGEMENT_HALF_LIVES_MS
KEY = "homefeed:engagement:{project}:{view}:{entity}"
VIEW_KEY = {F.USER_ENGAGEMENT: F.USER_ID, F.PIN_ENGAGEMENT: F.PIN_ID}
COLUMNS = {view: names for view, (_, names) in F.ENGAGEMENT_VIEWS.items()}  # decayed, totals, as_of


@dataclass(frozen=True)
class EngagementEvent:
    user_id: int
    pin_id: int
    kind: str  # one of features.ENGAGEMENT_KINDS
    event_time_ms: int
    arrival_ms: int  # the record's broker timestamp
    topic: str
    partition: int
    offset: int


# ARGV: n_windows, then per window: arrival_ms, n_items, then per item: tp, offset, kind (0-based),
# event_ms. Returns one {v, created, d, n, a} per window that counted something, or the current
# row when none did (nothing when the entity has no row).
_APPLY = """
local K, H = %(K)d, %(H)d
local HL = {%(HL)s}
local function nums(s, n)
  local out = {}
  if s then for x in string.gmatch(s, '[^,]+') do out[#out + 1] = tonumber(x) end end
  if #out ~= n then out = {} for i = 1, n do out[i] = 0 end end
  return out
end
local function join(t, fmt)
  local s = {}
  for i = 1, #t do s[i] = string.format(fmt, t[i]) end
  return table.concat(s, ',')
end
local cur = redis.call('HMGET', KEYS[1], 'd', 'n', 'a', 'v', 'r')
local d, n = nums(cur[1], K * H), nums(cur[2], K)
local a, v, r = tonumber(cur[3]) or 0, tonumber(cur[4]) or 0, tonumber(cur[5]) or 0
local seen, top, out = {}, {}, {}
local i = 2
for w = 1, tonumber(ARGV[1]) do
  local arrival, m = tonumber(ARGV[i]), tonumber(ARGV[i + 1])
  i = i + 2
  local counted = false
  for j = 1, m do
    local tp, off, k, t = ARGV[i], tonumber(ARGV[i + 1]), tonumber(ARGV[i + 2]), tonumber(ARGV[i + 3])
    i = i + 4
    if seen[tp] == nil then seen[tp] = tonumber(redis.call('HGET', KEYS[1], 'o:' .. tp)) or -1 end
    if off > seen[tp] then
      if t > a then
        for h = 1, H do
          local f = 2 ^ (-(t - a) / HL[h])
          for kk = 0, K - 1 do d[kk * H + h] = d[kk * H + h] * f end
        end
        a = t
      end
      for h = 1, H do d[k * H + h] = d[k * H + h] + 2 ^ (-(a - t) / HL[h]) end
      n[k + 1] = n[k + 1] + 1
      if arrival > r then r = arrival end
      if top[tp] == nil or off > top[tp] then top[tp] = off end
      counted = true
    end
  end
  if counted then
    v = math.max(v + 1, a)
    out[#out + 1] = {string.format('%%.0f', v), string.format('%%.0f', math.max(v, r)),
                     join(d, '%%.17g'), join(n, '%%.0f'), string.format('%%.0f', a)}
  end
end
if #out > 0 then
  local set = {'d', join(d, '%%.17g'), 'n', join(n, '%%.0f'), 'a', string.format('%%.0f', a),
               'v', string.format('%%.0f', v), 'r', string.format('%%.0f', r)}
  for tp, off in pairs(top) do
    set[#set + 1] = 'o:' .. tp
    set[#set + 1] = string.format('%%.0f', off)
  end
  redis.call('HSET', KEYS[1], unpack(set))
elseif cur[4] then
  out[1] = {string.format('%%.0f', v), string.format('%%.0f', math.max(v, r)), cur[1], cur[2], cur[3]}
end
return out
""" % {"K": len(KINDS), "H": len(HALF_LIVES_MS), "HL": ", ".join(str(h) for h in HALF_LIVES_MS)}


def windows(events: list[EngagementEvent], granularity_ms: int) -> list[tuple[int, list[EngagementEvent]]]:
    """(latest arrival, events) per arrival window, in arrival order (offset order within)."""
    ordered = sorted(events, key=lambda e: (e.arrival_ms, e.topic, e.partition, e.offset))
    out = []
    for _, group in groupby(ordered, key=lambda e: e.arrival_ms // granularity_ms):
        group = list(group)
        out.append((group[-1].arrival_ms, group))
    return out


class EngagementCounters:
    """Applies batches of EngagementEvents to the counters in Redis (steps 1-4)."""

    def __init__(self, redis_client, project: str, granularity_ms: int):
        self.redis = redis_client
        self.project = project
        self.granularity_ms = int(granularity_ms)
        self._apply = KeyScript(redis_client, _APPLY)

    def key(self, view: str, entity: int) -> str:
        return KEY.format(project=self.project, view=view, entity=int(entity))

    def apply(self, events: list[EngagementEvent]) -> dict[str, list[dict]]:
        """Count `events` exactly once; {view: version rows (oldest first per entity)}."""
        unknown = {e.kind for e in events} - set(KINDS)
        if unknown:
            raise ValueError(f"unknown engagement kinds {sorted(unknown)}; expected {KINDS}")
        per_entity: dict[tuple[str, int], list[EngagementEvent]] = defaultdict(list)
        for e in events:
            per_entity[(F.USER_ENGAGEMENT, e.user_id)].append(e)
            per_entity[(F.PIN_ENGAGEMENT, e.pin_id)].append(e)
        calls = []
        for (view, entity), evs in per_entity.items():
            argv: list = []
            groups = windows(evs, self.granularity_ms)
            argv.append(len(groups))
            for arrival, group in groups:
                argv += [arrival, len(group)]
                for e in group:
                    argv += [f"{e.topic}:{e.partition}", e.offset, KINDS.index(e.kind), e.event_time_ms]
            calls.append((self.key(view, entity), argv))
        replies = self._apply.run(calls)
        out: dict[str, list[dict]] = {view: [] for view in VIEW_KEY}
        for (view, entity), reply in zip(per_entity, replies):
            decayed, totals, as_of = COLUMNS[view]
            for version, created, d, n, a in reply:
                out[view].append({
                    VIEW_KEY[view]: int(entity), F.EVENT_TIMESTAMP: int(version), F.CREATED: int(created),
                    decayed: [float(x) for x in _text(d).split(",")],
                    totals: [int(x) for x in _text(n).split(",")], as_of: int(_text(a))})
        return out

    def put(self, view: str, rows: list[dict]) -> None:
        """Store version rows (one per entity, `apply`'s shape) as the entities' counters: the
        restore after Redis lost its data (homefeed.stream.ops.restore_counters). Offset marks
        stay unset: the consumers read on from their committed offsets, past every record whose
        counts the logged rows hold (records counted and logged but not yet committed when the
        data went are counted again: the same window as a crash before the commit, once)."""
        decayed, totals, as_of = COLUMNS[view]
        pipe = self.redis.pipeline(transaction=False)
        for r in rows:
            pipe.hset(self.key(view, r[VIEW_KEY[view]]), mapping={
                "d": ",".join(repr(float(x)) for x in r[decayed]),
                "n": ",".join(str(int(x)) for x in r[totals]), "a": int(r[as_of]),
                "v": int(r[F.EVENT_TIMESTAMP]), "r": int(r[F.CREATED])})
        pipe.execute()

    def read(self, view: str, entities: list[int]) -> dict[int, dict]:
        """Current stored counters of some entities (absent ones left out): for checks and tools."""
        out = {}
        for entity in entities:
            d, n, a = self.redis.hmget(self.key(view, entity), ["d", "n", "a"])
            if d is not None:
                out[int(entity)] = {"decayed": [float(x) for x in _text(d).split(",")],
                                    "totals": [int(x) for x in _text(n).split(",")], "as_of": int(_text(a))}
        return out

def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def engagement_table(view: str, rows: list[dict]) -> pa.Table:
    """Version rows as the offline log's Arrow table (timestamps microsecond UTC)."""
    decayed, totals, as_of = COLUMNS[view]

    def utc_us(name: str) -> pa.Array:
        return pa.array(np.asarray([r[name] for r in rows], dtype=np.int64) * 1000,
                        pa.timestamp("us", tz="UTC"))

    return pa.table({
        VIEW_KEY[view]: pa.array([r[VIEW_KEY[view]] for r in rows], pa.int64()),
        F.EVENT_TIMESTAMP: utc_us(F.EVENT_TIMESTAMP),
        F.CREATED: utc_us(F.CREATED),
        decayed: pa.array([r[decayed] for r in rows], pa.list_(pa.float64())),
        totals: pa.array([r[totals] for r in rows], pa.list_(pa.int64())),
        as_of: pa.array([r[as_of] for r in rows], pa.int64()),
    })


def reference_counts(events: list[tuple[str, int]]) -> tuple[list[float], list[int], int]:
    """What the counters of one entity must hold after `events` ((kind, event ms) pairs) were each
    counted once, in any order: (decayed values at as_of, totals, as_of). The exactly-once checks
    compare the store with this, computed from the event log."""
    as_of = max((t for _, t in events), default=0)
    decayed = [0.0] * (len(KINDS) * len(HALF_LIVES_MS))
    totals = [0] * len(KINDS)
    for kind, t in events:
        k = KINDS.index(kind)
        totals[k] += 1
        for h, hl in enumerate(HALF_LIVES_MS):
            decayed[k * len(HALF_LIVES_MS) + h] += 2 ** (-(as_of - t) / hl)
    return decayed, totals, as_of
