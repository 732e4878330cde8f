"""Point-in-time training datasets: a world's logged impressions + features from Feast.

One training row = one (request, candidate pin) impression with one 0/1 label per head. Its
features are what serving would have read at the moment that impression was served (the world's
``served_time``), from Feast's historical retrieval with ``filter_by_created_timestamp=True``:

* the user's action sequence: the newest snapshot whose event time AND ingestion time
  (``created``) are before the serve time, so an action that happened before it but reached us
  after it (a late event) is not in it, and one that arrived earlier the same day is;
* the user's impression sequence (`user_impression_sequence`: the pins shown to the user), the
  same way; a model trained with `sequence_impressions` merges it into its sequence input
  (homefeed.model.batch.merge_impressions), the rest ignore it;
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
   Requests stay the unit of HIT@3; AUC and GAUC are per impression. Counts, splits and the
   label-rate bounds of the `training_set` checkpoint come from these id-and-label columns of the
   whole dataset;
3. chunks of users by a stable hash of user_id (`user_chunk`; `chunks`, default one per
   TARGET_CHUNK_IMPRESSIONS impressions). A chunk holds whole users, so every request, snapshot
   and (request_id, pin_id) key, and everything the audit compares, lies in one chunk. Per chunk:
   a. point-in-time features from Feast: sequence, impression sequence, profile and user
      engagement per snapshot, pin and pin engagement per impression;
   b. assembly and the leakage audit (every sequence action and every impression in the
      impression sequence arrived before its serve time);
   c. the `training_set` Great Expectations checkpoint on the chunk's flat frame, with the
      dataset-wide label-rate bounds of step 2;
   d. its part of each table, written; nothing holds the features of more than one chunk;
4. the parts' schemas unified (a column all null in one chunk), pins, dataset.json last (the
   audit and validation merged from the chunks' partials, each chunk's result kept).

On disk a dataset is a directory (the user side is stored once per snapshot, not once per
candidate, exactly the shape serving sees); the two big tables are directories of parts, one per
chunk of users (``part-NNN.parquet``, same schema; pyarrow and Spark read such a directory as one
table), and `load_dataset` puts the rows back in build order, so a dataset is the same whatever
its chunk count::

    requests.parquet/    snapshot_id, request_id, user_id, event_timestamp (serve time),
                         request_time_ms (serve time, epoch ms), day, split, segment, is_core,
                         seq_*, imp_*, profile_* and ue_* features: one row per (request,
                         serve time)
    impressions.parquet/ snapshot_id, request_id, user_id, pin_id, event_timestamp (serve time),
                         label_*, pin features, pe_* features
    pins.parquet         newest logged features of every pin (engaged-pin embeddings)
    dataset.json         splits, counts, layout (chunks, parts), schema fingerprint, leakage audit,
                         validation result (per chunk too), stage times and peak memory

`training_frame` joins the first two into the flat one-row-per-impression frame the
`training_set` Great Expectations checkpoint validates.
"""

from __future__ import annotations

import json
import logging
import os
import resource
import shutil
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
IMPRESSION_SEQUENCE_FEATURES = F.feature_refs(F.USER_IMPRESSION_SEQUENCE, F.IMPRESSION_SEQUENCE_FEATURE_NAMES)
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
    """Read a dataset directory: its tables as one frame each (parts in build order)."""
    path = Path(path)
    if not (path / META_FILE).is_file():
        raise UserError(f"{path} is not a dataset directory (no {META_FILE}); "
                        "create one with `homefeed dataset build`")
    meta = json.loads((path / META_FILE).read_text())
    requests, impressions = pd.read_parquet(path / REQUESTS_FILE), pd.read_parquet(path / IMPRESSIONS_FILE)
    if meta.get("layout", {}).get("chunks", 1) > 1:
        requests, impressions = in_build_order(requests, impressions)
    return Dataset(path, requests, impressions, pd.read_parquet(path / PINS_FILE), meta)


def in_build_order(requests: pd.DataFrame, impressions: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Snapshots by snapshot_id; impressions by request (its first snapshot), then position."""
    requests = requests.sort_values(F.SNAPSHOT_ID, kind="stable").reset_index(drop=True)
    first_snap = impressions.groupby(F.REQUEST_ID)[F.SNAPSHOT_ID].transform("min").to_numpy()
    order = np.lexsort((impressions["position"].to_numpy(), first_snap))
    return requests, impressions.iloc[order].reset_index(drop=True)


def training_frame(ds: Dataset, splits: tuple[str, ...] = SPLITS) -> pd.DataFrame:
    """The flat frame: one row per impression with its snapshot's user-side features repeated."""
    return flat_frame(*ds.split(*splits))


def flat_frame(req: pd.DataFrame, imp: pd.DataFrame) -> pd.DataFrame:
    """`training_frame` of given (requests, impressions) rows."""
    # the split lets the training_set checkpoint bound later label rates by the training period's
    user_cols = [F.SNAPSHOT_ID, "split", *F.SEQUENCE_FEATURE_NAMES,
                 *(c for c in F.IMPRESSION_SEQUENCE_FEATURE_NAMES if c in req), *F.PROFILE_FEATURE_NAMES,
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


def _fill_empty_sequences(frame: pd.DataFrame, view: F.SequenceView = F.ACTION_SEQUENCE) -> pd.DataFrame:
    """No sequence of `view` servable yet = an empty sequence (what serving sees for a new user)."""
    missing = frame[view.length].isna().to_numpy()
    for col, dtype in ((view.pin_ids, np.int64), (view.action_types, np.int32), (view.times, np.int64)):
        if col is None:
            continue
        values = frame[col].to_numpy(dtype=object).copy()
        for i in np.flatnonzero(missing):
            values[i] = np.zeros(0, dtype=dtype)
        frame[col] = values
    frame[view.length] = frame[view.length].fillna(0).astype(np.int32)
    return frame


# -- audit ---------------------------------------------------------------------------------------

def sequence_audit(requests: pd.DataFrame, events: pd.DataFrame) -> dict:
    """Checks every request's sequence against the logged events (with their arrival times).

    * ``leaked_actions``: sequence actions that had not arrived by the request time (must be 0);
    * ``stale_requests``: requests whose newest sequence action is older than the newest action
      that had arrived before the request (the sequence lags the stream; the replay's micro-batch
      granularity causes it), with the median lag of those.

    The build audits chunk by chunk of users (`audit_events`, `audit_part`, `merge_audits`); the
    merged answer is this one's.
    """
    if events.empty or requests.empty:
        return {"requests": int(len(requests)), "leaked_actions": 0}
    return merge_audits([audit_part(requests, audit_events(events))])


def audit_events(events: pd.DataFrame) -> pd.DataFrame:
    """The logged events as the audit reads them: ids, action id, event and arrival times."""
    action_id = {a.wire_name: int(a) for a in ActionType}
    return pd.DataFrame({
        F.USER_ID: events[F.USER_ID].astype(np.int64), F.PIN_ID: events[F.PIN_ID].astype(np.int64),
        "action": events["action_type"].map(action_id).astype(np.int64),
        "time": events["event_time"].astype(np.int64), "arrival": events["arrival_time"].astype(np.int64)})


def audit_part(requests: pd.DataFrame, ev: pd.DataFrame) -> dict:
    """`sequence_audit`'s counts for some users' requests against those users' `audit_events`,
    plus the stale requests' lags (``lags_s``) that `merge_audits` takes the median of."""
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
    return {"requests": int(len(requests)), "sequence_actions": int(len(flat)),
            "leaked_actions": int(leaked.sum()), "unmatched_actions": unknown,
            "stale_requests": int(stale.sum()),
            "lags_s": (want - np.maximum(have, 0))[stale & (have >= 0)] / 1000}


def audit_shown(shown: pd.DataFrame) -> pd.DataFrame:
    """The logged impressions as `impression_audit_part` reads them: the first arrival of each
    (user, pin, time)."""
    frame = pd.DataFrame({F.USER_ID: shown[F.USER_ID].astype(np.int64), F.PIN_ID: shown[F.PIN_ID].astype(np.int64),
                          "time": shown["event_time"].astype(np.int64),
                          "arrival": shown["arrival_time"].astype(np.int64)})
    return frame.groupby([F.USER_ID, F.PIN_ID, "time"], as_index=False)["arrival"].min()


def impression_audit_part(requests: pd.DataFrame, shown: pd.DataFrame) -> dict:
    """The impression sequences' audit against those users' `audit_shown`: impressions in the
    sequences, those that had not arrived by the request time (``leaked_impressions``, must be
    0) and those not in the log (``unmatched_impressions``)."""
    lengths = requests[F.IMP_LENGTH].to_numpy(dtype=np.int64)
    row = np.repeat(np.arange(len(requests)), lengths)
    flat = pd.DataFrame({"row": row, F.USER_ID: requests[F.USER_ID].to_numpy(np.int64)[row],
                         F.PIN_ID: _concat(requests[F.IMP_PIN_IDS], np.int64),
                         "time": _concat(requests[F.IMP_TIMES], np.int64)})
    flat = flat.merge(shown, on=[F.USER_ID, F.PIN_ID, "time"], how="left")
    request_ms = requests["request_time_ms"].to_numpy(np.int64)
    leaked = flat["arrival"].to_numpy(np.float64) >= request_ms[flat["row"].to_numpy()]
    return {"sequence_impressions": int(len(flat)), "leaked_impressions": int(leaked.sum()),
            "unmatched_impressions": int(flat["arrival"].isna().sum())}


def merge_audits(parts: list[dict]) -> dict:
    """One audit from `audit_part`s of disjoint users (each with its `impression_audit_part` when
    impressions were logged): sums, the stale share and median lag."""
    total = {k: sum(p[k] for p in parts) for k in ("requests", "sequence_actions", "leaked_actions",
                                                   "unmatched_actions", "stale_requests",
                                                   "sequence_impressions", "leaked_impressions",
                                                   "unmatched_impressions")
             if all(k in p for p in parts)}
    lag_s = np.concatenate([p["lags_s"] for p in parts]) if parts else np.zeros(0)
    return {**total,
            "stale_share": round(total["stale_requests"] / total["requests"], 4) if total["requests"] else 0.0,
            "stale_median_lag_s": round(float(np.median(lag_s)), 1) if len(lag_s) else 0.0}


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
    for view in (F.USER_ACTION_SEQUENCE, F.USER_IMPRESSION_SEQUENCE, F.PIN_FEATURES, F.USER_PROFILE,
                 *F.ENGAGEMENT_VIEWS):
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


def _versions(settings: Settings, table: str, key: str) -> tuple[np.ndarray, np.ndarray]:
    """(keys, event times in epoch ms) of one log table's versions, read once per build."""
    versions = offline_log.read(settings.offline_dir, table, columns=[key, F.EVENT_TIMESTAMP])
    if not len(versions):
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    return (versions[key].to_numpy(np.int64),
            offline_log.to_utc_us(versions[F.EVENT_TIMESTAMP]).astype("int64").to_numpy() // 1000)


def _pair_chunks(versions: tuple[np.ndarray, np.ndarray], rows: pd.DataFrame, key: str) -> list[np.ndarray]:
    """`pair_chunks` of `rows` (key column + request_time_ms) against the versions of their keys."""
    keys = rows[key].to_numpy(np.int64)
    mine = np.isin(versions[0], np.unique(keys))
    return pair_chunks(rows["request_time_ms"].to_numpy(), keys, versions[0][mine], versions[1][mine],
                       MAX_CALL_PAIRS, MAX_CALL_ROWS)


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


# -- chunks ---------------------------------------------------------------------------------------

# Default chunk size: the chunk's flat frame (validated at once) and its sequences' flat arrays
# stay a few hundred MB at 100-long sequences.
TARGET_CHUNK_IMPRESSIONS = 200_000
LAYOUT = "parts by user hash"


def user_chunk(user_ids, chunks: int) -> np.ndarray:
    """The chunk of each user id: splitmix64's finalizer of the id, modulo `chunks` (stable across
    runs, machines and engines; consecutive ids spread over the chunks)."""
    x = np.asarray(user_ids, dtype=np.int64).view(np.uint64)
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        x = x ^ (x >> np.uint64(31))
    return (x % np.uint64(max(int(chunks), 1))).astype(np.int64)


def part_name(chunk: int) -> str:
    return f"part-{chunk:03d}.parquet"


def _reset(path: Path) -> None:
    """Remove a table of an earlier dataset at `path`: a file (one-file layout) or a directory."""
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def _unify_parts(directory: Path) -> None:
    """Give every part the same schema: a column all null in one chunk is typed as in the others
    (and integers in one chunk are floats where another chunk had nulls)."""
    parts = sorted(directory.glob("part-*.parquet"))
    schemas = [pq.read_schema(p) for p in parts]
    if not parts or all(sc.equals(schemas[0]) for sc in schemas):
        return
    unified = pa.unify_schemas(schemas, promote_options="permissive")
    for part, schema in zip(parts, schemas):
        if not schema.equals(unified):
            table = pq.read_table(part).select(unified.names).cast(unified)
            tmp = part.with_name(f".{part.name}.tmp")
            pq.write_table(table, tmp, compression="zstd")
            os.replace(tmp, part)


def _peak_rss_mib() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # Linux: KiB


def _chunk_features(store, settings: Settings, requests: pd.DataFrame, impressions: pd.DataFrame,
                    versions: dict, bar) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Steps 3a-b of one chunk: its requests and impressions with their point-in-time features."""
    # Calls in time order, sized by join pairs (user side) and rows, one feature view per call
    # (each view's join reads its own log table; a multi-view call would only carry one view's
    # columns through the next).
    user_parts, imp_seq_parts, pin_parts, user_eng_parts, pin_eng_parts = [], [], [], [], []
    user_key, pin_key = [F.SNAPSHOT_ID, F.USER_ID], [F.SNAPSHOT_ID, F.PIN_ID]
    for rows in _pair_chunks(versions[F.USER_ACTION_SEQUENCE], requests, F.USER_ID):
        part = requests.iloc[rows]
        seq = historical(store, part, SEQUENCE_FEATURES, user_key)
        profile = historical(store, part, PROFILE_FEATURES, user_key)
        user_parts.append(seq.merge(profile, on=user_key, validate="one_to_one"))
    if len(versions[F.USER_IMPRESSION_SEQUENCE][0]):  # none logged (a world without impressions): empty
        for rows in _pair_chunks(versions[F.USER_IMPRESSION_SEQUENCE], requests, F.USER_ID):
            imp_seq_parts.append(historical(store, requests.iloc[rows], IMPRESSION_SEQUENCE_FEATURES, user_key))
    for rows in row_chunks(impressions["request_time_ms"].to_numpy(), MAX_CALL_ROWS):
        pin_parts.append(historical(store, impressions.iloc[rows], PIN_FEATURES, pin_key))
    for parts, view, frame, refs, key in (
            (user_eng_parts, F.USER_ENGAGEMENT, requests, USER_ENGAGEMENT_FEATURES, user_key),
            (pin_eng_parts, F.PIN_ENGAGEMENT, impressions, PIN_ENGAGEMENT_FEATURES, pin_key)):
        for rows in _pair_chunks(versions[view], frame, key[1]):
            parts.append(historical(store, frame.iloc[rows], refs, key))
    bar.set_postfix_str("assembling")

    user_feats = _fill_empty_sequences(pd.concat(user_parts, ignore_index=True)).merge(
        _concat_parts(imp_seq_parts, user_key, F.IMPRESSION_SEQUENCE_FEATURE_NAMES), on=user_key,
        how="left", validate="one_to_one").merge(
        _concat_parts(user_eng_parts, user_key, F.USER_ENGAGEMENT_FEATURE_NAMES), on=user_key,
        how="left", validate="one_to_one")
    user_feats = _fill_empty_sequences(user_feats, F.IMPRESSION_SEQUENCE)
    requests = requests.merge(user_feats.drop(columns=[F.USER_ID]), on=F.SNAPSHOT_ID, validate="one_to_one")
    requests.insert(3, F.EVENT_TIMESTAMP, pd.to_datetime(requests["request_time_ms"], unit="ms", utc=True)
                    .astype("datetime64[us, UTC]"))

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
    return in_build_order(requests, impressions)


def merge_validations(reports: list[tuple[int, object]]) -> dict:
    """One `training_set` result from the chunks' (chunk, ValidationReport)s: it passes when every
    chunk does; failures carry their chunk; `chunks` keeps each chunk's result."""
    first = reports[0][1].to_dict()
    return {**first, "success": all(r.success for _, r in reports),
            "rows": sum(r.rows for _, r in reports),
            "failures": [dict(f, chunk=c) for c, r in reports for f in r.to_dict()["failures"]],
            "elapsed_ms": round(sum(r.elapsed_ms for _, r in reports), 1),
            "notes": [f"run per chunk of users ({len(reports)}): (request_id, pin_id) keys never span "
                      "chunks, and the label-rate bounds come from the whole dataset's training period",
                      *first["notes"][1:]],
            "chunks": [{"chunk": c, "rows": r.rows, "success": r.success, "failed_checks": r.failed_checks,
                        "elapsed_ms": round(r.elapsed_ms, 1)} for c, r in reports]}


# -- build ---------------------------------------------------------------------------------------

def build_dataset(world_dir: Path | str, out_dir: Path | str, settings: Settings, *, store=None,
                  warmup_days: int = 1, valid_days: int = 1, test_days: int = 2,
                  validate: bool = True, progress: bool = True, chunks: int | None = None) -> dict:
    """Build the dataset of a replayed world; returns its metadata (also in dataset.json).
    `chunks`: how many chunks of users (default: one per TARGET_CHUNK_IMPRESSIONS impressions)."""
    from homefeed.world import load_world

    started = time.perf_counter()
    world = load_world(world_dir)
    _require_logged(settings)
    if store is None:
        from homefeed.feature_store import open_store

        store = open_store(settings.feature_repo)
    check_sources(store, settings)

    # 1. impressions, split by request day (the world's own frame: the build keeps one copy)
    impressions, world.requests, world.events, world.pins = world.requests, None, None, None
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
    meta = {
        "world": str(Path(world_dir).resolve()),
        "world_params": world.params.to_dict(),
        "start_ms": int(world.start_ms),
        "days": n_days,
        "splits": {s: sorted(int(d) for d in requests.loc[requests["split"] == s, "day"].unique())
                   for s in SPLITS},
        "counts": _counts(requests, impressions),
    }
    bounds = None
    if validate:
        from homefeed.validation import derive_label_rate_bounds, run_checkpoint

        # what the checkpoint derives from the whole flat frame: its labels and splits are these
        bounds, _ = derive_label_rate_bounds(impressions[[*F.LABEL_COLUMNS, "split"]])
    one_per_request = len(requests) == requests[F.REQUEST_ID].nunique()
    del world

    # 3. chunks of users
    n_chunks = int(chunks) if chunks else max(1, -(-len(impressions) // TARGET_CHUNK_IMPRESSIONS))
    if n_chunks < 1:
        raise UserError(f"chunks must be >= 1, got {chunks}")
    req_chunk = user_chunk(requests[F.USER_ID], n_chunks)
    imp_chunk = user_chunk(impressions[F.USER_ID], n_chunks)
    versions = {F.USER_ACTION_SEQUENCE: _versions(settings, F.USER_ACTION_SEQUENCE, F.USER_ID),
                F.USER_IMPRESSION_SEQUENCE: _versions(settings, F.USER_IMPRESSION_SEQUENCE, F.USER_ID),
                F.USER_ENGAGEMENT: _versions(settings, F.USER_ENGAGEMENT, F.USER_ID),
                F.PIN_ENGAGEMENT: _versions(settings, F.PIN_ENGAGEMENT, F.PIN_ID)}
    events = logged_events(settings)
    events = audit_events(events) if len(events) else None
    ev_chunk = user_chunk(events[F.USER_ID], n_chunks) if events is not None else None
    shown = offline_log.read(settings.offline_dir, F.IMPRESSION_EVENTS,
                             columns=[F.USER_ID, F.PIN_ID, "event_time", "arrival_time"])
    shown = audit_shown(shown) if len(shown) else None
    shown_chunk = user_chunk(shown[F.USER_ID], n_chunks) if shown is not None else None

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / META_FILE).unlink(missing_ok=True)
    for name in (REQUESTS_FILE, IMPRESSIONS_FILE):
        _reset(out / name)
        (out / name).mkdir()
    timings = {"setup": round(time.perf_counter() - started, 2), "point_in_time_and_assembly": 0.0,
               "audit": 0.0, "validation": 0.0, "write": 0.0}
    peak = {"setup": _peak_rss_mib()}

    def done(stage: str, since: float) -> float:
        """Adds a stage's seconds; its peak RSS is read after the first chunk's (peaks only grow)."""
        timings[stage] += time.perf_counter() - since
        peak.setdefault(stage, _peak_rss_mib())
        return time.perf_counter()

    audits, reports, parts = [], [], []
    null_profiles = empty_sequences = 0
    with tqdm(total=n_chunks, desc="chunks of users", unit="chunk", disable=not progress) as bar:
        for c in range(n_chunks):
            bar.update()
            if not (req_chunk == c).any():
                continue
            mark = time.perf_counter()
            req, imp = _chunk_features(store, settings, requests[req_chunk == c], impressions[imp_chunk == c],
                                       versions, bar)
            mark = done("point_in_time_and_assembly", mark)
            if events is not None:
                audits.append(audit_part(req, events[ev_chunk == c]))
                if shown is not None:
                    audits[-1].update(impression_audit_part(req, shown[shown_chunk == c]))
                leaked = audits[-1]["leaked_actions"] + audits[-1].get("leaked_impressions", 0)
                if leaked:
                    for name in (REQUESTS_FILE, IMPRESSIONS_FILE):
                        _reset(out / name)
                    raise RuntimeError(f"point-in-time violation: {leaked} sequence actions or impressions "
                                       "arrived after their request; the dataset is not written")
            mark = done("audit", mark)
            if validate:
                report = run_checkpoint("training_set", flat_frame(req, imp), settings=settings,
                                        label_rate_bounds=bounds)
                reports.append((c, report))
                log.info("chunk %d: %s", c, report.to_text())
            mark = done("validation", mark)
            null_profiles += int(req[F.PROFILE_ACTIONS_28D].isna().sum())
            empty_sequences += int((req[F.SEQ_LENGTH] == 0).sum())
            _write_parquet(req, out / REQUESTS_FILE / part_name(c))
            _write_parquet(imp, out / IMPRESSIONS_FILE / part_name(c))
            parts.append({"chunk": c, "snapshots": int(len(req)), "impressions": int(len(imp))})
            done("write", mark)
            del req, imp
    peak["all_chunks"] = _peak_rss_mib()

    # 4. parts' schemas, pins, dataset.json
    mark = time.perf_counter()
    for name in (REQUESTS_FILE, IMPRESSIONS_FILE):
        _unify_parts(out / name)
    _write_parquet(latest_pins(settings), out / PINS_FILE)
    timings["write"] += time.perf_counter() - mark
    audit = merge_audits(audits) if audits else {"requests": int(len(requests)), "leaked_actions": 0}
    meta.update({
        "layout": {"chunks": n_chunks, "by": LAYOUT, "parts": parts},
        "embedding_dim": settings.embedding_dim,
        "sequence_length": settings.sequence_length,
        "schema_fingerprint": F.schema_fingerprint(settings.embedding_dim, settings.sequence_length),
        "feature_refs": (SEQUENCE_FEATURES + IMPRESSION_SEQUENCE_FEATURES + PROFILE_FEATURES + PIN_FEATURES
                         + USER_ENGAGEMENT_FEATURES + PIN_ENGAGEMENT_FEATURES),
        "feature_repo": str(settings.feature_repo),
        "offline_dir": str(settings.offline_dir),
        "snapshots": ("one user-side row per (request, serve time): "
                      + ("one per request" if one_per_request else "impressions served at their own times")),
        "null_profile_share": round(null_profiles / len(requests), 4) if len(requests) else 0.0,
        "empty_sequence_share": round(empty_sequences / len(requests), 4) if len(requests) else 0.0,
        "audit": audit,
    })
    if reports:
        meta["validation"] = merge_validations(reports)
    meta["build_seconds"] = round(time.perf_counter() - started, 1)
    peak["end"] = _peak_rss_mib()
    meta["build_timings_s"] = {**{k: round(v, 2) for k, v in timings.items()}, "peak_rss_mib": peak}
    (out / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    return meta


def save_dataset(ds: Dataset) -> None:
    """Write a dataset directory in one chunk (parquet parts first, dataset.json last: a directory
    with a dataset.json is complete)."""
    ds.path.mkdir(parents=True, exist_ok=True)
    (ds.path / META_FILE).unlink(missing_ok=True)
    for name, frame in ((REQUESTS_FILE, ds.requests), (IMPRESSIONS_FILE, ds.impressions)):
        _reset(ds.path / name)
        (ds.path / name).mkdir()
        _write_parquet(frame, ds.path / name / part_name(0))
    _write_parquet(ds.pins, ds.path / PINS_FILE)
    ds.meta["layout"] = {**ds.meta.get("layout", {}), "chunks": 1, "by": LAYOUT,
                         "parts": [{"chunk": 0, "snapshots": len(ds.requests),
                                    "impressions": len(ds.impressions)}]}
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
