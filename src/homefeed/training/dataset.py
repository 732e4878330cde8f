"""Point-in-time training datasets: a world's logged impressions + features from Feast.

One training row = one (request, candidate pin) impression with one 0/1 label per head. Its
features are what serving would have read at the moment that impression was served (the world's
``served_time``), from Feast's historical retrieval with ``filter_by_created_timestamp=True``:

* the user's action sequence: the newest snapshot whose event time AND ingestion time
  (``created``) are before the serve time, so an action that happened before it but reached us
  after it (a late event) is not in it, and one that arrived earlier the same day is;
* the user's daily profile, the same way;
* the candidate pin's features;
* the user's and the candidate pin's engagement counters (`user_engagement`, `pin_engagement`),
  the same way: the stored row (values as of its newest counted event) serving would have read;
  the model's dense features decay it to the serve time with the rule serving applies at the
  request time (homefeed.engagement).

Entity rows are queried 1 microsecond before the serve time, so everything used is strictly
earlier (an impression's own action happens after it is served, anyway).

Steps of `build_dataset`:

1. impressions of the world's requests, split by request day (warm-up days dropped);
2. user-side snapshots: one per distinct (request, serve time). A request served at one instant
   (the synthetic world) has one; a logged feed that serves each impression at its own time
   (KuaiRand) has one per impression, so a request's candidates may carry different histories.
   Requests stay the unit of HIT@3; AUC and GAUC are per impression;
3. point-in-time features from Feast: sequence, profile and user engagement per snapshot, pin
   and pin engagement per impression;
4. assembly and the leakage audit (every sequence action arrived before its serve time);
5. the `training_set` Great Expectations checkpoint on the flat frame;
6. the directory, dataset.json last.

On disk a dataset is a directory (the user side is stored once per snapshot, not once per
candidate, exactly the shape serving sees)::

    requests.parquet     snapshot_id, request_id, user_id, event_timestamp (serve time),
                         request_time_ms (serve time, epoch ms), day, split, segment, is_core,
                         seq_*, profile_* and ue_* features: one row per (request, serve time)
    impressions.parquet  snapshot_id, request_id, user_id, pin_id, event_timestamp (serve time),
                         label_*, pin features, pe_* features
    pins.parquet         newest logged features of every pin (engaged-pin embeddings)
    dataset.json         splits, counts, schema fingerprint, leakage audit, validation result

`training_frame` joins the first two into the flat one-row-per-impression frame the
`training_set` Great Expectations checkpoint validates.
"""

from __future__ import annotations

import json
import logging
import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from homefeed import features as F
from homefeed import offline_log
from homefeed.errors import UserError
from homefeed.events import ActionType
from homefeed.settings import Settings
from homefeed.training.profiles_job import latest_pins, logged_events

log = logging.getLogger(__name__)

DAY_MS = 86_400_000
SPLITS = ("train", "valid", "test")
REQUESTS_FILE = "requests.parquet"
IMPRESSIONS_FILE = "impressions.parquet"
PINS_FILE = "pins.parquet"
META_FILE = "dataset.json"
SEQUENCE_FEATURES = F.feature_refs(F.USER_ACTION_SEQUENCE, F.SEQUENCE_FEATURE_NAMES)
PROFILE_FEATURES = F.feature_refs(F.USER_PROFILE, F.PROFILE_FEATURE_NAMES)
PIN_FEATURES = F.feature_refs(F.PIN_FEATURES, F.PIN_FEATURE_NAMES)
USER_ENGAGEMENT_FEATURES = F.feature_refs(F.USER_ENGAGEMENT, F.USER_ENGAGEMENT_FEATURE_NAMES)
PIN_ENGAGEMENT_FEATURES = F.feature_refs(F.PIN_ENGAGEMENT, F.PIN_ENGAGEMENT_FEATURE_NAMES)
ONE_US = pd.Timedelta(microseconds=1)


@dataclass
class Dataset:
    path: Path
    requests: pd.DataFrame
    impressions: pd.DataFrame
    pins: pd.DataFrame
    meta: dict

    def __post_init__(self) -> None:
        # datasets written before serve times have one snapshot per request
        for frame in (self.requests, self.impressions):
            if F.SNAPSHOT_ID not in frame:
                frame.insert(0, F.SNAPSHOT_ID, frame[F.REQUEST_ID].to_numpy())

    def split(self, *names: str) -> tuple[pd.DataFrame, pd.DataFrame]:
        """(requests, impressions) of the given splits."""
        return self._rows(self.requests["split"].isin(names))

    def days(self, *days: int) -> tuple[pd.DataFrame, pd.DataFrame]:
        """(requests, impressions) of the given request days (0 = the world's first day)."""
        return self._rows(self.requests["day"].isin([int(d) for d in days]))

    def _rows(self, selected: pd.Series) -> tuple[pd.DataFrame, pd.DataFrame]:
        req = self.requests[selected]
        imp = self.impressions[self.impressions[F.REQUEST_ID].isin(req[F.REQUEST_ID])]
        return req.reset_index(drop=True), imp.reset_index(drop=True)


def load_dataset(path: Path | str) -> Dataset:
    path = Path(path)
    if not (path / META_FILE).is_file():
        raise UserError(f"{path} is not a dataset directory (no {META_FILE}); "
                        "create one with `homefeed dataset build`")
    return Dataset(path, pd.read_parquet(path / REQUESTS_FILE), pd.read_parquet(path / IMPRESSIONS_FILE),
                   pd.read_parquet(path / PINS_FILE), json.loads((path / META_FILE).read_text()))


def training_frame(ds: Dataset, splits: tuple[str, ...] = SPLITS) -> pd.DataFrame:
    """The flat frame: one row per impression with its snapshot's user-side features repeated."""
    req, imp = ds.split(*splits)
    # the split lets the training_set checkpoint bound later label rates by the training period's
    user_cols = [F.SNAPSHOT_ID, "split", *F.SEQUENCE_FEATURE_NAMES, *F.PROFILE_FEATURE_NAMES,
                 *(c for c in F.USER_ENGAGEMENT_FEATURE_NAMES if c in req)]
    return imp.merge(req[user_cols], on=F.SNAPSHOT_ID, how="left", validate="many_to_one")


# -- splits -------------------------------------------------------------------------------------

def assign_splits(day: np.ndarray, n_days: int, warmup_days: int, valid_days: int,
                  test_days: int) -> np.ndarray:
    """Time-based split per request day: warm-up days are dropped (no sequences or profiles
    yet), the last `test_days` are test, the `valid_days` before them validation, the rest train."""
    train_days = n_days - warmup_days - valid_days - test_days
    if min(warmup_days, valid_days, test_days) < 0 or train_days < 1:
        raise UserError(f"{n_days} days cannot hold {warmup_days} warm-up, {valid_days} validation "
                        f"and {test_days} test days plus at least one training day")
    test_from = n_days - test_days
    valid_from = test_from - valid_days
    return np.select([day < warmup_days, day < valid_from, day < test_from],
                     ["warmup", "train", "valid"], "test").astype(object)


# -- Feast --------------------------------------------------------------------------------------

def _entity_time(request_ms: pd.Series) -> pd.Series:
    return (pd.to_datetime(request_ms, unit="ms", utc=True) - ONE_US).astype("datetime64[us, UTC]")


def historical(store, entities: pd.DataFrame, refs: list[str], key: list[str]) -> pd.DataFrame:
    """Point-in-time features for `entities` (key columns + request_time_ms), merged back on `key`.

    An entity row for which no feature row is old enough keeps null features (nothing was
    servable yet); the merge back on our own key puts the answer in the caller's row order.
    """
    entity_df = entities[key].copy()
    entity_df[F.EVENT_TIMESTAMP] = _entity_time(entities["request_time_ms"]).to_numpy()
    got = store.get_historical_features(entity_df=entity_df, features=refs,
                                        filter_by_created_timestamp=True).to_df()
    names = [r.split(":", 1)[1] for r in refs]
    got = got.drop_duplicates(key)[key + names]
    return entities[key].merge(got, on=key, how="left", validate="one_to_one")


def _fill_empty_sequences(frame: pd.DataFrame) -> pd.DataFrame:
    """No sequence servable yet = an empty sequence (what serving sees for a new user)."""
    missing = frame[F.SEQ_LENGTH].isna().to_numpy()
    for col, dtype in ((F.SEQ_PIN_IDS, np.int64), (F.SEQ_ACTION_TYPES, np.int32),
                       (F.SEQ_ACTION_TIMES, np.int64)):
        values = frame[col].to_numpy(dtype=object).copy()
        for i in np.flatnonzero(missing):
            values[i] = np.zeros(0, dtype=dtype)
        frame[col] = values
    frame[F.SEQ_LENGTH] = frame[F.SEQ_LENGTH].fillna(0).astype(np.int32)
    return frame


# -- audit ---------------------------------------------------------------------------------------

def sequence_audit(requests: pd.DataFrame, events: pd.DataFrame) -> dict:
    """Checks every request's sequence against the logged events (with their arrival times).

    * ``leaked_actions``: sequence actions that had not arrived by the request time (must be 0);
    * ``stale_requests``: requests whose newest sequence action is older than the newest action
      that had arrived before the request (the sequence lags the stream; the replay's micro-batch
      granularity causes it), with the median lag of those.
    """
    if events.empty or requests.empty:
        return {"requests": int(len(requests)), "leaked_actions": 0}
    action_id = {a.wire_name: int(a) for a in ActionType}
    ev = pd.DataFrame({
        F.USER_ID: events[F.USER_ID].astype(np.int64), F.PIN_ID: events[F.PIN_ID].astype(np.int64),
        "action": events["action_type"].map(action_id).astype(np.int64),
        "time": events["event_time"].astype(np.int64), "arrival": events["arrival_time"].astype(np.int64)})

    lengths = requests[F.SEQ_LENGTH].to_numpy(dtype=np.int64)
    row = np.repeat(np.arange(len(requests)), lengths)
    flat = pd.DataFrame({
        "row": row,
        F.USER_ID: requests[F.USER_ID].to_numpy(np.int64)[row],
        F.PIN_ID: _concat(requests[F.SEQ_PIN_IDS], np.int64),
        "action": _concat(requests[F.SEQ_ACTION_TYPES], np.int64),
        "time": _concat(requests[F.SEQ_ACTION_TIMES], np.int64),
    })
    first_arrival = ev.groupby([F.USER_ID, F.PIN_ID, "action", "time"], as_index=False)["arrival"].min()
    flat = flat.merge(first_arrival, on=[F.USER_ID, F.PIN_ID, "action", "time"], how="left")
    request_ms = requests["request_time_ms"].to_numpy(np.int64)
    leaked = flat["arrival"].to_numpy(np.float64) >= request_ms[flat["row"].to_numpy()]
    unknown = int(flat["arrival"].isna().sum())

    # Newest action that had arrived before each request (running max of event time by arrival).
    ev = ev.sort_values("arrival", kind="stable")
    ev["newest"] = ev.groupby(F.USER_ID)["time"].cummax()
    req = pd.DataFrame({"row": np.arange(len(requests)), F.USER_ID: requests[F.USER_ID].to_numpy(np.int64),
                        "t": request_ms}).sort_values("t", kind="stable")
    ideal = pd.merge_asof(req, ev[[F.USER_ID, "arrival", "newest"]], left_on="t", right_on="arrival",
                          by=F.USER_ID, allow_exact_matches=False).sort_values("row")
    have = np.array([s[0] if len(s) else -1 for s in requests[F.SEQ_ACTION_TIMES]], dtype=np.int64)
    want = ideal["newest"].fillna(-1).to_numpy(np.int64)
    stale = want > have
    lag_s = (want - np.maximum(have, 0))[stale & (have >= 0)] / 1000
    return {
        "requests": int(len(requests)),
        "sequence_actions": int(len(flat)),
        "leaked_actions": int(leaked.sum()),
        "unmatched_actions": unknown,
        "stale_requests": int(stale.sum()),
        "stale_share": round(float(stale.mean()), 4),
        "stale_median_lag_s": round(float(np.median(lag_s)), 1) if len(lag_s) else 0.0,
    }


def _concat(values: pd.Series, dtype) -> np.ndarray:
    parts = [np.asarray(v, dtype=dtype) for v in values if len(v)]
    return np.concatenate(parts) if parts else np.zeros(0, dtype=dtype)


# -- build ---------------------------------------------------------------------------------------

def _require_logged(settings: Settings) -> None:
    for table, hint in ((F.USER_ACTION_SEQUENCE, "replay the world: `homefeed stream produce "
                         "--world DIR` and `homefeed stream consume --exit-when-idle 3`"),
                        (F.PIN_FEATURES, "replay the world's pins (`homefeed stream produce`)"),
                        (F.USER_PROFILE, "run the profile job: `homefeed dataset profiles`")):
        if not offline_log.partition_files(offline_log.table_dir(settings.offline_dir, table)):
            raise UserError(f"nothing logged in {table} under {settings.offline_dir}; {hint}")


def check_sources(store, settings: Settings) -> None:
    """The registry's batch sources must read the offline log these settings write, else the
    dataset would silently come from another run's log (a repo applied with another home)."""
    for view in (F.USER_ACTION_SEQUENCE, F.PIN_FEATURES, F.USER_PROFILE, *F.ENGAGEMENT_VIEWS):
        path = Path(store.get_feature_view(view).batch_source.path)
        if path != offline_log.table_dir(settings.offline_dir, view):
            raise UserError(f"feature view {view} reads {path}, but the offline log is under "
                            f"{settings.offline_dir}; re-apply the feature repo with these "
                            "settings (`homefeed feast apply`)")


# Point-in-time calls. A join pairs each entity row with the feature rows of its key from the
# call's first entity time up to its own (plus one settled row; homefeed.offline_store), so
# user-side calls are cut by that pair count (sequence rows carry three 100-long arrays) and
# every call by rows.
MAX_CALL_ROWS = 100_000
MAX_CALL_PAIRS = 100_000


def row_chunks(times: np.ndarray, max_rows: int) -> list[np.ndarray]:
    """Row positions in time order, cut into consecutive runs of at most max_rows rows."""
    order = np.argsort(np.asarray(times), kind="stable")
    return [order[i:i + max_rows] for i in range(0, len(order), max_rows)]


def pair_chunks(times: np.ndarray, keys: np.ndarray, feature_keys: np.ndarray,
                feature_times: np.ndarray, max_pairs: int, max_rows: int) -> list[np.ndarray]:
    """Row positions in time order, cut into consecutive runs whose point-in-time join stays
    under max_pairs (entity row, feature row) pairs and max_rows rows.

    A run from time t0 pairs row k (key u, time t) with one row settled before t0 and the rows of
    u with t0 <= time <= t. A single row always forms a run, however many pairs it makes.
    """
    times = np.asarray(times, dtype=np.int64)
    order = np.argsort(times, kind="stable")
    if not len(order):
        return []
    codes, uniques = pd.factorize(np.concatenate([np.asarray(keys), np.asarray(feature_keys)]))
    key_code, feat_code = codes[:len(keys)].astype(np.int64), codes[len(keys):].astype(np.int64)
    span = int(max(times.max(), np.max(feature_times, initial=0))) + 1
    if len(uniques) * span >= 2**62:  # the composite (key, time) would overflow: rows only
        return row_chunks(times, max_rows)
    sorted_feat = np.sort(feat_code * span + np.asarray(feature_times, dtype=np.int64))
    t, kc = times[order], key_code[order]
    upto = np.searchsorted(sorted_feat, kc * span + t, side="right")  # rows of key with time <= t
    chunks, i, n, window = [], 0, len(order), 1024
    while i < n:
        last = min(i + max_rows, n)
        end = min(i + window, last)
        before = np.searchsorted(sorted_feat, kc[i:end] * span + t[i], side="left")
        pairs = np.cumsum(1 + upto[i:end] - before)
        if pairs[-1] <= max_pairs and end < last:
            window *= 4  # the budget reaches further than the rows looked at: look further
            continue
        j = i + max(int(np.searchsorted(pairs, max_pairs, side="right")), 1)
        chunks.append(order[i:j])
        i, window = j, max(1024, 2 * len(chunks[-1]))
    return chunks


def share_equal_arrays(values: pd.Series) -> pd.Series:
    """`values` with equal array cells as one shared object (nulls left as they are).

    A pin's features repeat on each of its impressions; one object per distinct embedding keeps
    the flat training frame small and lets the training_set checkpoint read each one once."""
    shared: dict[bytes, object] = {}

    def key(a: np.ndarray) -> bytes:
        return a.tobytes() + str(a.dtype).encode()

    out = [v if v is None or not hasattr(v, "__len__") else shared.setdefault(key(np.asarray(v)), v)
           for v in values.tolist()]
    return pd.Series(out, index=values.index, dtype=object)


def _pair_chunks(settings: Settings, table: str, rows: pd.DataFrame, key: str) -> list[np.ndarray]:
    """`pair_chunks` of `rows` (key column + request_time_ms) against one log table's versions."""
    versions = offline_log.read(settings.offline_dir, table, columns=[key, F.EVENT_TIMESTAMP])
    times = (offline_log.to_utc_us(versions[F.EVENT_TIMESTAMP]).astype("int64").to_numpy() // 1000
             if len(versions) else np.zeros(0, dtype=np.int64))
    return pair_chunks(rows["request_time_ms"].to_numpy(), rows[key].to_numpy(),
                       versions[key].to_numpy() if len(versions) else np.zeros(0, dtype=np.int64),
                       times, MAX_CALL_PAIRS, MAX_CALL_ROWS)


def _concat_parts(parts: list[pd.DataFrame], key: list[str], names: tuple[str, ...]) -> pd.DataFrame:
    """The point-in-time answers of one view, or the bare key columns' frame when it had no calls."""
    if parts:
        return pd.concat(parts, ignore_index=True)
    return pd.DataFrame({**{k: pd.Series(dtype=np.int64) for k in key},
                         **{n: pd.Series(dtype=object) for n in names}})


def _write_parquet(frame: pd.DataFrame, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), tmp, compression="zstd")
    os.replace(tmp, path)


def build_dataset(world_dir: Path | str, out_dir: Path | str, settings: Settings, *, store=None,
                  warmup_days: int = 1, valid_days: int = 1, test_days: int = 2,
                  validate: bool = True, progress: bool = True) -> dict:
    """Build the dataset of a replayed world; returns its metadata (also in dataset.json)."""
    from homefeed.world import load_world

    started = time.perf_counter()
    world = load_world(world_dir)
    _require_logged(settings)
    if store is None:
        from homefeed.feature_store import open_store

        store = open_store(settings.feature_repo)
    check_sources(store, settings)

    # 1. impressions, split by request day
    impressions = world.requests.copy()
    impressions["day"] = ((impressions["request_time"].astype(np.int64) - world.start_ms)
                          // DAY_MS).astype(np.int32)
    impressions["request_time_ms"] = impressions[F.SERVED_TIME].astype(np.int64)  # the serve time
    n_days = int(world.params.days)
    impressions["split"] = assign_splits(impressions["day"].to_numpy(), n_days, warmup_days,
                                         valid_days, test_days)
    impressions = impressions[impressions["split"] != "warmup"]
    # 2. one user-side snapshot per (request, serve time), numbered in serve-time order
    snap_key = [F.REQUEST_ID, "request_time_ms"]
    requests = (impressions.drop_duplicates(snap_key)[[F.REQUEST_ID, F.USER_ID, "request_time_ms",
                                                       "day", "split"]]
                .sort_values(["request_time_ms", F.REQUEST_ID], kind="stable")
                .merge(world.users[[F.USER_ID, "segment", "is_core"]], on=F.USER_ID, how="left"))
    requests.insert(0, F.SNAPSHOT_ID, np.arange(1, len(requests) + 1, dtype=np.int64))
    impressions = impressions.merge(requests[[F.SNAPSHOT_ID, *snap_key]], on=snap_key,
                                    validate="many_to_one")

    timings = {"setup": round(time.perf_counter() - started, 2)}
    mark = time.perf_counter()
    # 3. Calls in time order, sized by join pairs (user side) and rows, one feature view per call
    # (each view's join reads its own log table; a multi-view call would only carry one view's
    # columns through the next).
    user_parts, pin_parts, user_eng_parts, pin_eng_parts = [], [], [], []
    user_key, pin_key = [F.SNAPSHOT_ID, F.USER_ID], [F.SNAPSHOT_ID, F.PIN_ID]
    user_chunks = _pair_chunks(settings, F.USER_ACTION_SEQUENCE, requests, F.USER_ID)
    user_eng_chunks = _pair_chunks(settings, F.USER_ENGAGEMENT, requests, F.USER_ID)
    pin_eng_chunks = _pair_chunks(settings, F.PIN_ENGAGEMENT, impressions, F.PIN_ID)
    pin_chunks = row_chunks(impressions["request_time_ms"].to_numpy(), MAX_CALL_ROWS)
    calls = 2 * len(user_chunks) + len(pin_chunks) + len(user_eng_chunks) + len(pin_eng_chunks)
    with tqdm(total=calls, desc="point-in-time features", unit="call", disable=not progress) as bar:
        for rows in user_chunks:
            part = requests.iloc[rows]
            seq = historical(store, part, SEQUENCE_FEATURES, user_key)
            bar.update()
            profile = historical(store, part, PROFILE_FEATURES, user_key)
            bar.update()
            user_parts.append(seq.merge(profile, on=user_key, validate="one_to_one"))
        for rows in pin_chunks:
            pin_parts.append(historical(store, impressions.iloc[rows], PIN_FEATURES, pin_key))
            bar.update()
        for parts, chunks, frame, refs, key in (
                (user_eng_parts, user_eng_chunks, requests, USER_ENGAGEMENT_FEATURES, user_key),
                (pin_eng_parts, pin_eng_chunks, impressions, PIN_ENGAGEMENT_FEATURES, pin_key)):
            for rows in chunks:
                parts.append(historical(store, frame.iloc[rows], refs, key))
                bar.update()

    timings["point_in_time"] = round(time.perf_counter() - mark, 2)
    mark = time.perf_counter()
    # 4. assembly and audit
    user_feats = _fill_empty_sequences(pd.concat(user_parts, ignore_index=True)).merge(
        _concat_parts(user_eng_parts, user_key, F.USER_ENGAGEMENT_FEATURE_NAMES), on=user_key,
        how="left", validate="one_to_one")
    requests = requests.merge(user_feats.drop(columns=[F.USER_ID]), on=F.SNAPSHOT_ID, validate="one_to_one")
    requests.insert(3, F.EVENT_TIMESTAMP, pd.to_datetime(requests["request_time_ms"], unit="ms", utc=True)
                    .astype("datetime64[us, UTC]"))
    requests = requests.sort_values(F.SNAPSHOT_ID).reset_index(drop=True)

    labels = list(F.LABEL_COLUMNS)
    impressions = impressions[[F.SNAPSHOT_ID, F.REQUEST_ID, F.USER_ID, F.PIN_ID, "request_time_ms",
                               "position", *labels]]
    impressions = impressions.merge(pd.concat(pin_parts, ignore_index=True), on=[F.SNAPSHOT_ID, F.PIN_ID],
                                    validate="one_to_one")
    impressions = impressions.merge(_concat_parts(pin_eng_parts, pin_key, F.PIN_ENGAGEMENT_FEATURE_NAMES),
                                    on=pin_key, how="left", validate="one_to_one")
    impressions[F.PIN_EMBEDDING] = share_equal_arrays(impressions[F.PIN_EMBEDDING])
    impressions.insert(4, F.EVENT_TIMESTAMP, pd.to_datetime(impressions["request_time_ms"], unit="ms",
                                                            utc=True).astype("datetime64[us, UTC]"))
    impressions = impressions.drop(columns=["request_time_ms"])
    # in request order (the first snapshot of each request), then position
    first_snap = impressions.groupby(F.REQUEST_ID)[F.SNAPSHOT_ID].transform("min").to_numpy()
    impressions = impressions.iloc[np.lexsort((impressions["position"].to_numpy(), first_snap))]
    impressions = impressions.reset_index(drop=True)
    pins = latest_pins(settings)

    audit = sequence_audit(requests, logged_events(settings))
    timings["assemble_and_audit"] = round(time.perf_counter() - mark, 2)
    mark = time.perf_counter()
    if audit["leaked_actions"]:
        raise RuntimeError(f"point-in-time violation: {audit['leaked_actions']} sequence actions "
                           "arrived after their request; the dataset is not written")
    meta = {
        "world": str(Path(world_dir).resolve()),
        "world_params": world.params.to_dict(),
        "start_ms": int(world.start_ms),
        "days": n_days,
        "splits": {s: sorted(int(d) for d in requests.loc[requests["split"] == s, "day"].unique())
                   for s in SPLITS},
        "counts": _counts(requests, impressions),
        "embedding_dim": settings.embedding_dim,
        "sequence_length": settings.sequence_length,
        "schema_fingerprint": F.schema_fingerprint(settings.embedding_dim, settings.sequence_length),
        "feature_refs": (SEQUENCE_FEATURES + PROFILE_FEATURES + PIN_FEATURES + USER_ENGAGEMENT_FEATURES
                         + PIN_ENGAGEMENT_FEATURES),
        "feature_repo": str(settings.feature_repo),
        "offline_dir": str(settings.offline_dir),
        "snapshots": ("one user-side row per (request, serve time): "
                      + ("one per request" if len(requests) == requests[F.REQUEST_ID].nunique()
                         else "impressions served at their own times")),
        "null_profile_share": round(float(requests[F.PROFILE_ACTIONS_28D].isna().mean()), 4),
        "empty_sequence_share": round(float((requests[F.SEQ_LENGTH] == 0).mean()), 4),
        "audit": audit,
    }
    ds = Dataset(Path(out_dir), requests, impressions, pins, meta)
    if validate:
        from homefeed.validation import run_checkpoint

        report = run_checkpoint("training_set", training_frame(ds), settings=settings)
        meta["validation"] = report.to_dict()
        log.info("%s", report.to_text())
    timings["validation"] = round(time.perf_counter() - mark, 2)
    meta["build_seconds"] = round(time.perf_counter() - started, 1)
    meta["build_timings_s"] = timings
    save_dataset(ds)
    return meta


def save_dataset(ds: Dataset) -> None:
    """Write a dataset directory (parquet files first, dataset.json last: a directory with a
    dataset.json is complete)."""
    ds.path.mkdir(parents=True, exist_ok=True)
    (ds.path / META_FILE).unlink(missing_ok=True)
    _write_parquet(ds.requests, ds.path / REQUESTS_FILE)
    _write_parquet(ds.impressions, ds.path / IMPRESSIONS_FILE)
    _write_parquet(ds.pins, ds.path / PINS_FILE)
    (ds.path / META_FILE).write_text(json.dumps(ds.meta, indent=2) + "\n")


def _counts(requests: pd.DataFrame, impressions: pd.DataFrame) -> dict:
    split_of = requests.set_index(F.SNAPSHOT_ID)["split"]
    imp_split = split_of.loc[impressions[F.SNAPSHOT_ID]].to_numpy()
    out = {}
    for s in SPLITS:
        sel = imp_split == s
        snaps = requests["split"] == s
        out[s] = {"requests": int(requests.loc[snaps, F.REQUEST_ID].nunique()),
                  "snapshots": int(snaps.sum()), "impressions": int(sel.sum()),
                  **{c: int(impressions.loc[sel, c].sum()) for c in F.LABEL_COLUMNS}}
    return out


# -- offline log compaction ----------------------------------------------------------------------

def compact_table(offline_dir: Path, table: str) -> dict:
    """Merge each partition's files of one log table into a single file.

    The log writes one file per micro-batch; every point-in-time call opens each file of the
    partitions it reads, so fewer files make every call cheaper. Rows are kept as they are
    (readers deduplicate). Safe
    next to a running consumer: it only adds new files, and only files listed here are replaced.
    (A stop-gap that belongs in homefeed.offline_log.)
    """
    before = after = 0
    for _, _, directory in offline_log.partitions(offline_log.table_dir(offline_dir, table)):
        files = sorted(p for p in directory.glob("*.parquet") if not p.name.startswith("."))
        before += len(files)
        if len(files) <= 1:
            after += len(files)
            continue
        merged = pa.concat_tables([pq.read_table(p) for p in files], promote_options="permissive")
        name = f"{files[-1].name.split('-')[0]}-compact-{uuid.uuid4().hex[:12]}.parquet"
        tmp = directory / f".{name}.tmp"
        pq.write_table(merged, tmp, compression="zstd")
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, directory / name)
        for p in files:
            p.unlink()
        after += 1
    return {"table": table, "files_before": before, "files_after": after}
