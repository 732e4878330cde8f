"""The daily batch profile job: action_events log -> user_profile rows (offline log + online store).

It reads only what the pipeline logged (the `action_events` and `pin_features` tables of the
offline log), never a world directory, so any source replayed through Kafka (the synthetic world,
MovieLens, live traffic) gets profiles the same way.

Snapshot d is taken at a UTC midnight and uses only events that had *arrived* before it
(homefeed.profiles.build_daily_profiles): a late event cannot reach a profile computed before it
existed. Snapshots are never taken after "now" (a snapshot of today's midnight is complete; one of
tomorrow's would miss the rest of today). Re-running the job appends only snapshots newer than the
latest one already logged, so it is idempotent and cheap to schedule daily.
"""

from __future__ import annotations

import logging
import time

import numpy as np
import pandas as pd

from homefeed import features as F
from homefeed import offline_log
from homefeed.errors import UserError
from homefeed.profiles import DAY_MS, build_daily_profiles
from homefeed.settings import Settings

log = logging.getLogger(__name__)

ACTION_EVENTS = "action_events"


def logged_events(settings: Settings) -> pd.DataFrame:
    """Every logged action event once (the log is at-least-once: dedupe by event_id)."""
    events = offline_log.read(settings.offline_dir, ACTION_EVENTS)
    if events.empty:
        return events
    return events.drop_duplicates("event_id", keep="first").reset_index(drop=True)


def latest_pins(settings: Settings) -> pd.DataFrame:
    """The newest logged version of every pin: pin_id and the pin_features columns."""
    pins = offline_log.read(settings.offline_dir, F.PIN_FEATURES)
    if pins.empty:
        return pd.DataFrame(columns=[F.PIN_ID, *F.PIN_FEATURE_NAMES])
    pins = pins.sort_values([F.EVENT_TIMESTAMP, F.CREATED], kind="stable")
    pins = pins.drop_duplicates(F.PIN_ID, keep="last").sort_values(F.PIN_ID)
    return pins[[F.PIN_ID, *F.PIN_FEATURE_NAMES]].reset_index(drop=True)


def snapshot_days(events: pd.DataFrame, now_ms: int) -> tuple[int, int]:
    """(first snapshot time, number of daily snapshots) covering the logged events.

    The first snapshot is the midnight of the earliest event; the last is the midnight after the
    last arrival (it then contains every event), but never later than today's midnight.
    """
    first = int(events["event_time"].min()) // DAY_MS * DAY_MS
    last = min(int(events["arrival_time"].max()) // DAY_MS * DAY_MS + DAY_MS, now_ms // DAY_MS * DAY_MS)
    return first, max((last - first) // DAY_MS + 1, 1)


def latest_logged_snapshot_ms(settings: Settings) -> int | None:
    logged = offline_log.read(settings.offline_dir, F.USER_PROFILE, columns=[F.EVENT_TIMESTAMP])
    if logged.empty:
        return None
    return int(offline_log.to_utc_us(logged[F.EVENT_TIMESTAMP]).max().value // 1_000_000)


def run_profile_job(settings: Settings, store=None, *, write_online: bool = True,
                    now_ms: int | None = None) -> dict:
    """Compute missing daily snapshots, append them to the log, write the latest one online.

    Returns a summary: snapshots computed and appended, rows appended, users written online.
    """
    started = time.perf_counter()
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    events = logged_events(settings)
    if events.empty:
        raise UserError(f"no action events logged under {settings.offline_dir}; replay a world "
                        "(`homefeed stream produce` + `homefeed stream consume`) first")
    pins = latest_pins(settings)
    start_ms, days = snapshot_days(events, now_ms)
    profiles = build_daily_profiles(events, pins, start_ms, days, settings.embedding_dim)

    # Only snapshots newer than what is already logged: reruns append nothing twice.
    done_ms = latest_logged_snapshot_ms(settings)
    snapshot_ms = profiles[F.EVENT_TIMESTAMP].astype("int64") // 1000  # us -> ms
    new = profiles[snapshot_ms > done_ms] if done_ms is not None else profiles
    if not new.empty:
        offline_log.append(settings.offline_dir, F.USER_PROFILE, new)

    # Online: each user's newest snapshot (Redis keeps a row only if its timestamp is newer).
    online_users = 0
    if write_online and not profiles.empty:
        latest = profiles.sort_values(F.EVENT_TIMESTAMP).drop_duplicates(F.USER_ID, keep="last")
        latest = latest.assign(**{F.PROFILE_EMBEDDING: [np.asarray(v, dtype=np.float32).tolist()
                                                        for v in latest[F.PROFILE_EMBEDDING]]})
        if store is None:
            from homefeed.feature_store import open_store

            store = open_store(settings.feature_repo)
        store.write_to_online_store(F.USER_PROFILE, latest.reset_index(drop=True))
        online_users = len(latest)

    summary = {
        "events": int(len(events)),
        "first_snapshot": _iso(start_ms),
        "last_snapshot": _iso(start_ms + (days - 1) * DAY_MS),
        "snapshots": int(days),
        "snapshots_appended": int(new[F.EVENT_TIMESTAMP].nunique()) if not new.empty else 0,
        "rows_appended": int(len(new)),
        "users_online": online_users,
        "seconds": round(time.perf_counter() - started, 2),
    }
    log.info("profile job: %s", summary)
    return summary


def _iso(ms: int) -> str:
    return pd.Timestamp(ms, unit="ms", tz="UTC").isoformat()
