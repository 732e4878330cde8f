"""The feed page's candidate source: a small, documented STAND-IN for real retrieval.

A real homefeed retrieves candidates (embedding ANN, graph walks, follows) and ranks them; this
project ranks only. So that the page has something to rank, this module picks candidates from a
world's files (`pins.parquet`: pin_id, topic_id; `events.parquet`: user_id, pin_id, action_type,
event_time), deterministically:

1. engagement of a pin = its repins + clicks - hides over the whole event log;
2. the user's recent topics = the topics of their newest `RECENT_ACTIONS` repins and clicks in
   the log, most frequent first (a new user has none);
3. candidates = the most engaged pins of each recent topic (`PER_RECENT_TOPIC` each), then the
   most engaged pins of every topic taken in turn (so every topic is on the table) until `size`.

The set is computed once per user and page load and stays fixed while the user acts: the ranking,
not the candidate set, is what the page shows moving.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from homefeed.events import ActionType

RECENT_ACTIONS = 20
PER_RECENT_TOPIC = 8
DEFAULT_SIZE = 60
ENGAGEMENT = {ActionType.REPIN.wire_name: 1.0, ActionType.CLICK.wire_name: 1.0, ActionType.HIDE.wire_name: -1.0}


@dataclass
class CandidateSource:
    pins: pd.DataFrame  # pin_id, topic_id
    events: pd.DataFrame  # user_id, pin_id, action_type, event_time

    def __post_init__(self) -> None:
        self.topic_of = dict(zip(self.pins["pin_id"].astype(int), self.pins["topic_id"].astype(int)))
        score = self.events["action_type"].map(ENGAGEMENT).fillna(0.0)
        engagement = score.groupby(self.events["pin_id"]).sum()
        pins = self.pins[["pin_id", "topic_id"]].copy()
        pins["engagement"] = pins["pin_id"].map(engagement).fillna(0.0)
        # most engaged first, pin id breaking ties: the same order on every run
        pins = pins.sort_values(["engagement", "pin_id"], ascending=[False, True], kind="stable")
        self.by_topic = {int(t): g["pin_id"].astype(int).tolist() for t, g in pins.groupby("topic_id", sort=True)}
        users = self.events["user_id"].value_counts()
        self.active_users = users.index.astype(int).tolist()
        positive = self.events[self.events["action_type"].isin(["repin", "click"])]
        newest = positive.sort_values("event_time", kind="stable").groupby("user_id").tail(RECENT_ACTIONS)
        self._recent_pins = {int(u): g.tolist() for u, g in newest.groupby("user_id")["pin_id"]}

    @classmethod
    def from_world(cls, world_dir: Path | str) -> "CandidateSource":
        from homefeed.world.format import EVENTS_FILE, PINS_FILE

        path = Path(world_dir)
        return cls(pd.read_parquet(path / PINS_FILE, columns=["pin_id", "topic_id"]),
                   pd.read_parquet(path / EVENTS_FILE, columns=["user_id", "pin_id", "action_type", "event_time"]))

    def recent_topics(self, user_id: int) -> list[int]:
        """Topics of the user's newest repins and clicks in the log, most frequent first."""
        topics = pd.Series([self.topic_of.get(int(p)) for p in self._recent_pins.get(user_id, [])],
                           dtype="float64").dropna().astype(int)
        counts = topics.value_counts(sort=False)
        return sorted(counts.index.tolist(), key=lambda t: (-counts[t], t))

    def candidates(self, user_id: int, size: int = DEFAULT_SIZE) -> list[int]:
        chosen: list[int] = []
        seen: set[int] = set()

        def take(pin: int) -> None:
            if pin not in seen and len(chosen) < size:
                seen.add(pin)
                chosen.append(pin)

        for topic in self.recent_topics(user_id)[:3]:
            for pin in self.by_topic.get(topic, [])[:PER_RECENT_TOPIC]:
                take(pin)
        queues = [iter([p for p in v if p not in seen]) for v in self.by_topic.values()]
        while len(chosen) < size and queues:
            alive = []
            for q in queues:
                pin = next(q, None)
                if pin is not None:
                    take(pin)
                    alive.append(q)
            queues = alive
        return chosen

    def users(self, n: int = 20) -> list[int]:
        """The most active users of the log (the page's user picker)."""
        return self.active_users[:n]

    def new_user_id(self) -> int:
        """An id no user of the log has (for "start a new user")."""
        return int(max(self.active_users, default=0)) + 1 + int(np.random.default_rng().integers(1, 1_000_000))

    def describe(self, pins: list[int]) -> list[dict]:
        return [{"pin_id": p, "topic_id": self.topic_of.get(p)} for p in pins]
