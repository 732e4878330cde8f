"""The ranking service's in-process pin cache: one slot per pin id, a staleness bound per entry.

What a slot holds: embedding [D], topic, created, duration, known, engagement counters
[kinds x half-lives] and their as-of time (the values `OnlineFeatureReader` reads from a pin's
Redis hash, in its `_fetch_pins` order), plus the id and the entry's expiry.

1. `read(ids, now, cache_only)`: the cached values aligned with `ids` (zeros, -1 or False where
   not served) and which ids were fresh; counts the lookup in the reader's stats.
2. `store(ids, values, now)`: insert or overwrite unique ids; each entry expires at
   ``now + max_staleness_s x U[0.75, 1]`` (so a warmed cache does not expire in one burst).
   When full, the cache grows up to `max_entries`, then evicts expired entries first, then the
   soonest to expire. ``max_staleness_s <= 0`` disables it (nothing is stored).
3. `due(now, ahead_s, limit)`: the ids expiring within `ahead_s`, soonest first (to refresh).
4. `invalidate(ids)` forgets entries; ``len(cache)`` is how many it holds.

Thread safety: one lock, held only for dict/array work; callers do their I/O outside it.
"""

from __future__ import annotations

import itertools
import threading
from typing import Any

import numpy as np

# (name, dtype, fill for "not served", extra shape: "dim" or "counters")
_COLUMNS = (("emb", np.float32, 0.0, "dim"), ("topic", np.int64, -1, None), ("created", np.int64, 0, None),
            ("known", bool, False, None), ("eng", np.float64, 0.0, "counters"),
            ("eng_as_of", np.int64, 0, None), ("duration", np.int64, -1, None))


class PinCache:
    """Slot arrays + an id -> slot dict (see the module docstring). ``stats``: the reader's
    `ReaderStats` (requests, pins, hits, misses, expired, evictions and cache_size are counted)."""

    def __init__(self, dim: int, n_counters: int, max_entries: int, max_staleness_s: float, stats: Any,
                 seed: int = 0):
        self.max_entries = int(max_entries)
        self.max_staleness_s = float(max_staleness_s)
        self.stats = stats
        self._shapes = {"dim": (dim,), "counters": (n_counters,), None: ()}
        self._rng = np.random.default_rng(seed)
        self.lock = threading.Lock()
        self._slot_of: dict[int, int] = {}
        cap = min(self.max_entries, 4096)
        self._cols = [self._empty(cap, c) for c in _COLUMNS]
        self._expires = np.full(cap, -np.inf)
        self._id = np.zeros(cap, dtype=np.int64)
        self._free: list[int] = list(range(cap - 1, -1, -1))

    def _empty(self, n: int, column: tuple) -> np.ndarray:
        _, dtype, fill, extra = column
        return np.full((n, *self._shapes[extra]), fill, dtype=dtype)

    def __len__(self) -> int:
        return len(self._slot_of)

    # -- 1. read ----------------------------------------------------------------------------------
    def read(self, ids: np.ndarray, now: float, cache_only: bool) -> tuple[list[np.ndarray], np.ndarray]:
        """-> (the 7 value arrays aligned with `ids`, fresh [n] bool). Served: fresh entries, or
        with `cache_only` every present entry (expired or not); the rest get the "not served"
        fill (zeros, topic -1, duration -1, known False)."""
        n = ids.size
        with self.lock:
            slots = self._lookup(ids)
            present = slots >= 0
            fresh = present.copy()
            fresh[present] = self._expires[slots[present]] > now
            use = present if cache_only else fresh
            s = np.where(use, slots, 0)
            values = [col[s] for col in self._cols]
            n_fresh = int(fresh.sum())
            st = self.stats
            st.requests += 1
            st.pins += n
            st.hits += n_fresh
            st.misses += int((~present).sum())
            st.expired += int((present & ~fresh).sum())
        if not use.all():
            for out, (_, _, fill, _) in zip(values, _COLUMNS):
                out[~use] = fill
        return values, fresh

    # -- 2. store ---------------------------------------------------------------------------------
    def store(self, ids: np.ndarray, values: tuple[np.ndarray, ...], now: float) -> None:
        """Insert or overwrite unique `ids` with `values` (the 7 arrays, in `read`'s order)."""
        if not ids.size or self.max_staleness_s <= 0:
            return
        with self.lock:
            if ids.size > self.max_entries:  # cannot all fit: cache the first max_entries
                ids, values = ids[: self.max_entries], tuple(v[: self.max_entries] for v in values)
            slots = self._lookup(ids)
            new = slots < 0
            n_new = int(new.sum())
            if n_new > len(self._free):
                self._grow(n_new - len(self._free))
            if n_new > len(self._free):
                self._evict(n_new - len(self._free), now, protect=slots[~new])
            if n_new:
                fresh = np.asarray([self._free.pop() for _ in range(n_new)], dtype=np.int64)
                slots[new] = fresh
                for pid, slot in zip(ids[new].tolist(), fresh.tolist()):
                    self._slot_of[pid] = slot
            for col, v in zip(self._cols, values):
                col[slots] = v
            self._id[slots] = ids
            jitter = self._rng.uniform(0.75, 1.0, size=slots.size)
            self._expires[slots] = now + self.max_staleness_s * jitter
            self.stats.cache_size = len(self._slot_of)

    def _lookup(self, ids: np.ndarray) -> np.ndarray:
        return np.fromiter(map(self._slot_of.get, ids.tolist(), itertools.repeat(-1)),
                           dtype=np.int64, count=ids.size)

    def _grow(self, need: int) -> None:
        cap = self._id.shape[0]
        new_cap = min(self.max_entries, max(cap * 2, cap + need))
        if new_cap <= cap:
            return
        extra = new_cap - cap
        self._cols = [np.concatenate([col, self._empty(extra, c)]) for col, c in zip(self._cols, _COLUMNS)]
        self._expires = np.concatenate([self._expires, np.full(extra, -np.inf)])
        self._id = np.concatenate([self._id, np.zeros(extra, np.int64)])
        self._free.extend(range(new_cap - 1, cap - 1, -1))

    def _evict(self, need: int, now: float, protect: np.ndarray) -> None:
        """Free at least `need` slots: expired entries first, then the soonest to expire;
        slots in `protect` (entries being refreshed) stay."""
        used = np.fromiter(self._slot_of.values(), dtype=np.int64, count=len(self._slot_of))
        used = used[~np.isin(used, protect)]
        order = used[np.argsort(self._expires[used], kind="stable")]
        n_expired = int((self._expires[order] <= now).sum())
        drop = order[: max(need, n_expired)]
        for slot in drop.tolist():
            del self._slot_of[int(self._id[slot])]
            self._free.append(slot)
        self.stats.evictions += int(drop.size)

    # -- 3. due, 4. invalidate --------------------------------------------------------------------
    def due(self, now: float, ahead_s: float, limit: int) -> np.ndarray:
        """Ids of up to `limit` entries expiring by ``now + ahead_s``, soonest first."""
        with self.lock:
            used = np.fromiter(self._slot_of.values(), dtype=np.int64, count=len(self._slot_of))
            due = used[self._expires[used] <= now + ahead_s]
            due = due[np.argsort(self._expires[due])][:limit]
            return self._id[due].copy()

    def invalidate(self, pin_ids: Any = None) -> None:
        """Forget cached pins (all when `pin_ids` is None)."""
        with self.lock:
            if pin_ids is None:
                self._free.extend(self._slot_of.values())
                self._slot_of.clear()
            else:
                for pid in np.asarray(pin_ids, dtype=np.int64).reshape(-1).tolist():
                    slot = self._slot_of.pop(pid, -1)
                    if slot >= 0:
                        self._free.append(slot)
            self.stats.cache_size = len(self._slot_of)


__all__ = ["PinCache"]
