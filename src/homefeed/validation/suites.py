"""Great Expectations suites, validation definitions and checkpoints, built from the schema code.

The GX 1.x file context under ``validation/`` (repo root) is *generated*: `init_context()`
(``homefeed validate init``) writes it from the constants in `homefeed.events` and
`homefeed.features`, so the committed JSON cannot drift from the schemas the code uses.
Reruns are idempotent and byte-stable: every id (datasource, assets, batch definitions,
suites, expectations, validation definitions, checkpoints) is a uuid5 of its name, and GX
writes the JSON with sorted keys. `context_drift()` (``homefeed validate init --check``)
reports any difference between the files on disk and what this module would write.

Layout: one pandas datasource ``homefeed`` with one dataframe asset per suite and a
whole-dataframe batch definition ``dataframe``; the data is handed over at run time
(``batch_parameters={"dataframe": df}``), so one checkpoint validates any dataframe.

Values that depend on `Settings` (embedding_dim, sequence_length, clock skew) or on the run
(``now``) and the label positive-rate bounds (derived from the data's own training period, see
`later_rows` and `homefeed.validation.runner`) are *run-time parameters*. GX 1.x has no default
for a ``{"$PARAMETER": name}`` (a run without it raises SuiteParameterError), so the stored
suites hold each parameter's default value (`parameter_defaults()`: the `Settings` defaults,
2100-01-01 as the latest event time, since plain GX knows no "now", and [0, 1] as a label's
rate bounds, since plain GX knows no training period) and record the
parameter's name in the expectation's ``meta.parameters``. Plain GX runs them as stored
(``context.checkpoints.get("action_events").run(batch_parameters={"dataframe": df})``);
`runtime_suite()` turns the recorded kwargs back into ``$PARAMETER`` references, which
`homefeed.validation.runner` fills in per run. Values fixed by the contract (MAX_ID,
MIN_EVENT_TIME_MS, the ActionType ids) are written into the suites. Checkpoint names equal
suite names.

GX has no expectations on list columns, so list-valued features are checked through
derived per-row columns (names start with ``_``) that `derive_columns()` adds before
validation; every suite expects them to be true (or, for ``_embedding_dim``, equal to the
configured dimension). `derive_columns()` is the only place that computes them. The same
goes for a label's rate after the training period: ``_checked_<label>`` holds the label on
the rows whose rate is checked (null elsewhere) and the suite bounds its mean.
"""

from __future__ import annotations

import json
import logging
import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from homefeed import events as E
from homefeed import features as F

# -- names ---------------------------------------------------------------------------------
ACTION_EVENTS = "action_events"
IMPRESSION_EVENTS = "impression_events"
SEQUENCE_FEATURES = "sequence_features"
PIN_FEATURES = "pin_features"
TRAINING_SET = "training_set"
SUITE_NAMES = (ACTION_EVENTS, IMPRESSION_EVENTS, SEQUENCE_FEATURES, PIN_FEATURES, TRAINING_SET)
CHECKPOINT_NAMES = SUITE_NAMES  # one checkpoint per suite, same name

DATASOURCE_NAME = "homefeed"
BATCH_DEFINITION_NAME = "dataframe"
CONTEXT_SUBDIR = "gx"  # GX puts its files under <project_root_dir>/gx
VALIDATION_DIR_ENV = "HOMEFEED_VALIDATION_DIR"

# Result format of the checkpoints: counts plus a few examples, not every unexpected row.
MAX_EXAMPLES = 5
RESULT_FORMAT: dict[str, Any] = {"result_format": "SUMMARY", "partial_unexpected_count": MAX_EXAMPLES}

_ID_NAMESPACE = uuid.UUID("8d0c7a52-3f7e-5b0e-9d55-6a1f0c2b4e10")

# -- bounds ---------------------------------------------------------------------------------
# Training set: at most this share of nulls per feature column (sequence columns may hold
# empty lists, which are not nulls).
MAX_FEATURE_NULL_RATE = 0.05
# Profiles are a daily batch over past activity: a user new since the last run has none. Those
# are exactly the non-core users the realtime sequence is for, so a larger share is normal.
MAX_PROFILE_NULL_RATE = 0.5

# Label positive rates (training_set): each label's rate in the training period, widened by
# LABEL_RATE_TOLERANCE = (relative, absolute), bounds its rate in the later periods (valid/test):
# [rate * (1 - rel) - abs, rate * (1 + rel) + abs], clipped to [0, 1]. Explicit bounds (recipe,
# `run_checkpoint(..., label_rate_bounds={...})`, `--param label_click_max_rate=0.9`) replace them.
LABEL_RATE_TOLERANCE: tuple[float, float] = (0.5, 0.01)
# ... and by chance: this many standard errors of a rate at the bound, over the later rows' count.
LABEL_RATE_SAMPLING_Z = 3.0
# What plain GX checks (no training period known): a rate is a rate.
STORED_LABEL_RATE_BOUNDS: tuple[float, float] = (0.0, 1.0)
# The training period: rows whose `split` is "train" when the frame has that column (or the
# caller passes the splits); else, by time, all but the last LATER_DAYS_SHARE of the frame's
# UTC days (at least one day later, none when the frame spans a single day).
SPLIT_COLUMN = "split"
TRAINING_SPLIT = "train"
LATER_DAYS_SHARE = 0.25
DAY_NS = 86_400 * 10**9

ACTION_IDS = sorted(int(a) for a in E.ActionType)

# Action-event columns the suite requires. `surface` (in EVENT_COLUMNS) and `arrival_time`
# are optional: a batch may carry them or any other extra column.
ACTION_EVENT_REQUIRED = ("event_id", "user_id", "pin_id", "action_type", "event_time")
# Impression-event columns the suite requires (homefeed.events.ImpressionEvent; request_id is
# NO_REQUEST_ID for one sent without it); `surface` and `arrival_time` are optional.
IMPRESSION_EVENT_REQUIRED = ("event_id", "user_id", "pin_id", "event_time", "request_id")
ARRIVAL_TIME = "arrival_time"  # optional: epoch ms when the event reached us

# -- derived columns (see derive_columns) ---------------------------------------------------
D_ALIGNED = "_aligned"
D_SORTED_DESC = "_sorted_desc"
D_MAX_TIME_OK = "_max_time_ok"
D_ACTIONS_VALID = "_actions_valid"
D_PIN_IDS_VALID = "_pin_ids_valid"
D_TIMES_VALID = "_times_valid"
D_NO_LEAKAGE = "_no_leakage"
D_EMBEDDING_DIM = "_embedding_dim"
D_EMBEDDING_FINITE = "_embedding_finite"
D_DURATION_WHOLE_MS = "_duration_whole_ms"
D_DURATION_IN_RANGE = "_duration_in_range"


def checked_label_column(label: str) -> str:
    """The derived column whose mean the training_set suite bounds for `label`."""
    return f"_checked_{label}"


D_CHECKED_LABELS = tuple(checked_label_column(label) for label in F.LABEL_COLUMNS)
# Derived columns that stand for one source column in reports.
DERIVED_SOURCE = {checked_label_column(label): label for label in F.LABEL_COLUMNS}

DERIVED_COLUMNS: dict[str, str] = {
    D_ALIGNED: "seq_pin_ids, seq_action_types and seq_action_times are numeric lists of "
               "length seq_length",
    D_SORTED_DESC: "seq_action_times is newest-first (non-increasing)",
    D_MAX_TIME_OK: "no seq_action_times value is after the row's event_timestamp",
    D_ACTIONS_VALID: "every seq_action_types value is an ActionType id",
    D_PIN_IDS_VALID: "every seq_pin_ids value is in 1..MAX_ID",
    D_TIMES_VALID: "every seq_action_times value is >= MIN_EVENT_TIME_MS (not a seconds/ms bug)",
    D_NO_LEAKAGE: "every seq_action_times value is strictly before the request time "
                  "(event_timestamp): the label leakage guard",
    D_EMBEDDING_DIM: "len(embedding); -1 when the value is not a list of numbers",
    D_EMBEDDING_FINITE: "every embedding value is finite (no NaN/inf)",
    D_DURATION_WHOLE_MS: "pin_duration_ms is a whole number of ms where known (null = unknown; a "
                         "float column is fine: nulls make pandas read integers as floats)",
    D_DURATION_IN_RANGE: "0 <= pin_duration_ms <= MAX_DURATION_MS (24 h) where it is a whole number",
    **{checked_label_column(label): f"{label} on the rows whose positive rate is checked: those "
       "after the training period (`later_rows`), every row when the frame holds one period; "
       "null elsewhere" for label in F.LABEL_COLUMNS},
}

# Which derived columns each suite needs.
SUITE_DERIVED: dict[str, tuple[str, ...]] = {
    ACTION_EVENTS: (),
    IMPRESSION_EVENTS: (),
    SEQUENCE_FEATURES: (D_ALIGNED, D_SORTED_DESC, D_MAX_TIME_OK, D_ACTIONS_VALID,
                        D_PIN_IDS_VALID, D_TIMES_VALID),
    PIN_FEATURES: (D_EMBEDDING_DIM, D_EMBEDDING_FINITE, D_DURATION_WHOLE_MS, D_DURATION_IN_RANGE),
    TRAINING_SET: (D_ALIGNED, D_NO_LEAKAGE, D_EMBEDDING_DIM, *D_CHECKED_LABELS),
}

# Columns that identify a row in failure examples of derived checks.
SUITE_KEY_COLUMNS: dict[str, tuple[str, ...]] = {
    ACTION_EVENTS: ("event_id",),
    IMPRESSION_EVENTS: ("event_id",),
    SEQUENCE_FEATURES: (F.USER_ID, F.EVENT_TIMESTAMP),
    PIN_FEATURES: (F.PIN_ID,),
    TRAINING_SET: (F.REQUEST_ID, F.PIN_ID),
}

TRAINING_FEATURE_COLUMNS = (*F.SEQUENCE_FEATURE_NAMES, F.PIN_EMBEDDING, *F.PROFILE_FEATURE_NAMES)


def label_rate_parameters(label: str) -> tuple[str, str]:
    return f"{label}_min_rate", f"{label}_max_rate"


# Run-time expectation parameters of each suite (filled in by the runner).
P_MAX_EVENT_TIME_MS = "max_event_time_ms"
P_MAX_SEQUENCE_LENGTH = "max_sequence_length"
P_EMBEDDING_DIM = "embedding_dim"
SUITE_PARAMETERS: dict[str, tuple[str, ...]] = {
    ACTION_EVENTS: (P_MAX_EVENT_TIME_MS,),
    IMPRESSION_EVENTS: (P_MAX_EVENT_TIME_MS,),
    SEQUENCE_FEATURES: (P_MAX_SEQUENCE_LENGTH,),
    PIN_FEATURES: (P_EMBEDDING_DIM,),
    TRAINING_SET: (P_EMBEDDING_DIM,
                   *(p for label in F.LABEL_COLUMNS for p in label_rate_parameters(label))),
}

# Stored default of max_event_time_ms: plain GX has no clock, so the stored suite only rejects
# times past 2100-01-01 (microseconds or nanoseconds passed as milliseconds). The runner checks
# against now (or the batch's latest arrival time) + max_future_skew_ms.
DEFAULT_MAX_EVENT_TIME_MS = 4_102_444_800_000


def parameter_defaults() -> dict[str, int | float]:
    """The value stored in the suites for each run-time parameter (what plain GX checks)."""
    from homefeed.settings import Settings

    code_defaults = Settings()  # class defaults, not the environment: the files are committed
    defaults: dict[str, int | float] = {
        P_MAX_EVENT_TIME_MS: DEFAULT_MAX_EVENT_TIME_MS,
        P_MAX_SEQUENCE_LENGTH: code_defaults.sequence_length,
        P_EMBEDDING_DIM: code_defaults.embedding_dim,
    }
    for label in F.LABEL_COLUMNS:
        p_lo, p_hi = label_rate_parameters(label)
        defaults[p_lo], defaults[p_hi] = (float(b) for b in STORED_LABEL_RATE_BOUNDS)
    return defaults


INT_TYPES = ["int64", "int32"]
LABEL_TYPES = ["int64", "int32", "int16", "int8", "bool"]
STR_TYPES = ["str", "StringDtype"]
# A tz-aware pandas datetime column has dtype.type == pd.Timestamp (any unit); a naive one
# (numpy datetime64) or strings/ints fail this check.
UTC_DATETIME_TYPE = "Timestamp"


# -- expectation specs --------------------------------------------------------------------
@dataclass(frozen=True)
class Check:
    """One expectation: GX type, kwargs, and a short stable code (`check`) that reports,
    metrics and dead-letter reasons can use."""

    type: str
    kwargs: dict[str, Any]
    check: str
    notes: str = ""

    @property
    def column(self) -> str | None:
        kw = self.kwargs
        if "column" in kw:
            return kw["column"]
        if "column_list" in kw:
            return ",".join(kw["column_list"])
        if "column_A" in kw:
            return f"{kw['column_A']},{kw['column_B']}"
        return None


@dataclass(frozen=True)
class SuiteSpec:
    name: str
    description: str
    checks: tuple[Check, ...] = field(default_factory=tuple)

    @property
    def parameters(self) -> tuple[str, ...]:
        return SUITE_PARAMETERS[self.name]


def _param(name: str) -> dict[str, str]:
    return {"$PARAMETER": name}


def _exists(col: str) -> Check:
    return Check("expect_column_to_exist", {"column": col}, "missing_column", f"column {col} exists")


def _not_null(col: str, mostly: float | None = None) -> Check:
    kwargs: dict[str, Any] = {"column": col}
    if mostly is None:
        return Check("expect_column_values_to_not_be_null", kwargs, "null", f"{col} is never null")
    kwargs["mostly"] = mostly
    return Check("expect_column_values_to_not_be_null", kwargs, "null_rate",
                 f"at most {1 - mostly:.0%} of {col} is null")


def _types(col: str, types: list[str]) -> Check:
    return Check("expect_column_values_to_be_in_type_list", {"column": col, "type_list": list(types)},
                 E.REASON_WRONG_TYPE, f"{col} has one of the dtypes {types}")


def _utc_datetime(col: str) -> Check:
    return Check("expect_column_values_to_be_of_type", {"column": col, "type_": UTC_DATETIME_TYPE},
                 E.REASON_WRONG_TYPE, f"{col} is a timezone-aware (UTC) datetime column")


def _id_range(col: str) -> Check:
    return Check("expect_column_values_to_be_between",
                 {"column": col, "min_value": 1, "max_value": E.MAX_ID},
                 E.REASON_BAD_ID, f"{col} is in 1..MAX_ID ({E.MAX_ID})")


def _true(derived: str, check: str) -> Check:
    return Check("expect_column_values_to_be_in_set", {"column": derived, "value_set": [True]},
                 check, f"derived {derived}: {DERIVED_COLUMNS[derived]}")


def _embedding_dim() -> Check:
    return Check("expect_column_values_to_be_between",
                 {"column": D_EMBEDDING_DIM, "min_value": _param(P_EMBEDDING_DIM),
                  "max_value": _param(P_EMBEDDING_DIM)},
                 "embedding_dim", "len(embedding) == embedding_dim (settings)")


def _user_event_checks(types: dict[str, list[str]], own: list[Check]) -> list[Check]:
    """The checks of a user event table (actions, impressions): each required column (`types`,
    in order) exists, is never null and has its dtypes; event ids are 1..MAX_EVENT_ID_CHARS long
    and unique per user; then the table's `own` value checks; ids in 1..MAX_ID; the event-time
    window."""
    cols = tuple(types)
    checks = [_exists(c) for c in cols]
    checks += [_not_null(c) for c in cols]
    checks += [_types(c, t) for c, t in types.items()]
    checks += [
        Check("expect_column_value_lengths_to_be_between",
              {"column": "event_id", "min_value": 1, "max_value": E.MAX_EVENT_ID_CHARS},
              E.REASON_BAD_ID, f"event_id has 1..{E.MAX_EVENT_ID_CHARS} characters"),
        Check("expect_compound_columns_to_be_unique", {"column_list": ["user_id", "event_id"]},
              "duplicate_event_id", "(user_id, event_id) is unique within the batch (ids are per user)"),
        *own,
        _id_range("user_id"),
        _id_range("pin_id"),
        Check("expect_column_values_to_be_between",
              {"column": "event_time", "min_value": E.MIN_EVENT_TIME_MS},
              E.REASON_ANCIENT_TIME, "event_time >= MIN_EVENT_TIME_MS (2000-01-01): not seconds"),
        Check("expect_column_values_to_be_between",
              {"column": "event_time", "max_value": _param(P_MAX_EVENT_TIME_MS)},
              E.REASON_FUTURE_TIME,
              "event_time <= max_event_time_ms (now + allowed clock skew at run time; "
              "stored default 2100-01-01)"),
    ]
    return checks


def _action_events() -> SuiteSpec:
    types = {"event_id": STR_TYPES, "user_id": INT_TYPES, "pin_id": INT_TYPES,
             "action_type": STR_TYPES, "event_time": INT_TYPES}
    assert tuple(types) == ACTION_EVENT_REQUIRED
    checks = _user_event_checks(types, [
        Check("expect_column_values_to_be_in_set",
              {"column": "action_type", "value_set": E.action_names()},
              E.REASON_UNKNOWN_ACTION, "action_type is an ActionType wire name"),
    ])
    return SuiteSpec(ACTION_EVENTS, "A micro-batch or log of user action events "
                     "(homefeed.events contract, one row per event).", tuple(checks))


def _impression_events() -> SuiteSpec:
    types = {"event_id": STR_TYPES, "user_id": INT_TYPES, "pin_id": INT_TYPES,
             "event_time": INT_TYPES, "request_id": INT_TYPES}
    assert tuple(types) == IMPRESSION_EVENT_REQUIRED
    checks = _user_event_checks(types, [
        Check("expect_column_values_to_be_between",
              {"column": "request_id", "min_value": E.NO_REQUEST_ID, "max_value": E.MAX_ID},
              E.REASON_BAD_ID, f"request_id is in 0..MAX_ID, or {E.NO_REQUEST_ID} for an "
              "impression sent without one"),
    ])
    return SuiteSpec(IMPRESSION_EVENTS, "A micro-batch or log of impression events: a pin shown "
                     "to a user (homefeed.events.ImpressionEvent, one row per impression).", tuple(checks))


def _sequence_features() -> SuiteSpec:
    cols = (F.USER_ID, F.EVENT_TIMESTAMP, F.CREATED, *F.SEQUENCE_FEATURE_NAMES)
    checks = [_exists(c) for c in cols]
    checks += [_not_null(c) for c in cols]
    checks += [
        _types(F.USER_ID, INT_TYPES),
        _types(F.SEQ_LENGTH, INT_TYPES),
        _utc_datetime(F.EVENT_TIMESTAMP),
        _utc_datetime(F.CREATED),
        _id_range(F.USER_ID),
        Check("expect_column_values_to_be_between",
              {"column": F.SEQ_LENGTH, "min_value": 0, "max_value": _param(P_MAX_SEQUENCE_LENGTH)},
              "sequence_too_long", "0 <= seq_length <= sequence_length (settings)"),
        _true(D_ALIGNED, "misaligned"),
        _true(D_SORTED_DESC, "unsorted_times"),
        _true(D_MAX_TIME_OK, "time_after_row"),
        _true(D_ACTIONS_VALID, E.REASON_UNKNOWN_ACTION),
        _true(D_PIN_IDS_VALID, E.REASON_BAD_ID),
        _true(D_TIMES_VALID, E.REASON_ANCIENT_TIME),
    ]
    return SuiteSpec(SEQUENCE_FEATURES, "Rows of the user_action_sequence feature view "
                     "(aligned arrays, newest action first).", tuple(checks))


def _pin_features() -> SuiteSpec:
    cols = (F.PIN_ID, *F.PIN_FEATURE_NAMES, F.EVENT_TIMESTAMP)
    checks = [_exists(c) for c in cols]
    checks += [_not_null(c) for c in cols if c != F.PIN_DURATION_MS]  # duration: null = unknown
    checks += [
        _types(F.PIN_ID, INT_TYPES),
        _types(F.PIN_TOPIC, INT_TYPES),
        _types(F.PIN_CREATED_MS, INT_TYPES),
        _true(D_DURATION_WHOLE_MS, E.REASON_WRONG_TYPE),  # optional: null = unknown
        _utc_datetime(F.EVENT_TIMESTAMP),
        _id_range(F.PIN_ID),
        Check("expect_column_values_to_be_unique", {"column": F.PIN_ID}, "duplicate_pin_id",
              "one row per pin"),
        Check("expect_column_values_to_be_between", {"column": F.PIN_TOPIC, "min_value": 0},
              "bad_topic", "topic_id >= 0"),
        Check("expect_column_values_to_be_between",
              {"column": F.PIN_CREATED_MS, "min_value": E.MIN_EVENT_TIME_MS},
              E.REASON_ANCIENT_TIME, "pin_created_ms >= MIN_EVENT_TIME_MS: epoch ms, not seconds"),
        _true(D_DURATION_IN_RANGE, E.REASON_BAD_DURATION),
        _embedding_dim(),
        _true(D_EMBEDDING_FINITE, "non_finite_embedding"),
    ]
    return SuiteSpec(PIN_FEATURES, "A snapshot of the pin_features view (one row per pin).",
                     tuple(checks))


def _training_set() -> SuiteSpec:
    keys = (F.REQUEST_ID, F.USER_ID, F.PIN_ID, F.EVENT_TIMESTAMP)
    cols = (*keys, *F.LABEL_COLUMNS, *TRAINING_FEATURE_COLUMNS)
    checks = [_exists(c) for c in cols]
    checks += [_not_null(c) for c in (*keys, *F.LABEL_COLUMNS)]
    checks += [_not_null(c, mostly=round(1 - (MAX_PROFILE_NULL_RATE if c in F.PROFILE_FEATURE_NAMES
                                              else MAX_FEATURE_NULL_RATE), 6))
               for c in TRAINING_FEATURE_COLUMNS]
    checks += [
        _types(F.USER_ID, INT_TYPES),
        _types(F.PIN_ID, INT_TYPES),
        _utc_datetime(F.EVENT_TIMESTAMP),
        _id_range(F.USER_ID),
        _id_range(F.PIN_ID),
        Check("expect_compound_columns_to_be_unique", {"column_list": [F.REQUEST_ID, F.PIN_ID]},
              "duplicate_row", "one row per (request_id, pin_id)"),
    ]
    for label in F.LABEL_COLUMNS:
        lo, hi = label_rate_parameters(label)
        checks += [
            _types(label, LABEL_TYPES),
            Check("expect_column_values_to_be_in_set", {"column": label, "value_set": [0, 1]},
                  "non_binary_label", f"{label} is 0 or 1"),
            Check("expect_column_mean_to_be_between",
                  {"column": checked_label_column(label), "min_value": _param(lo),
                   "max_value": _param(hi)},
                  "positive_rate", f"positive rate of {label} after the training period (of "
                  f"every row when the frame holds one period) within [{lo}, {hi}]"),
        ]
    checks += [
        _true(D_NO_LEAKAGE, "leakage"),
        _true(D_ALIGNED, "misaligned"),
        _embedding_dim(),
    ]
    return SuiteSpec(TRAINING_SET, "Training rows: one per (request, candidate pin), binary "
                     "label per action head, features as of the request time.", tuple(checks))


# -- engagement counters: rows of the user_engagement and pin_engagement log tables -----------
# (homefeed.stream.engagement writes them; one suite per table, named as the view.)
USER_ENGAGEMENT = F.USER_ENGAGEMENT
PIN_ENGAGEMENT = F.PIN_ENGAGEMENT
ENGAGEMENT_SUITES = (USER_ENGAGEMENT, PIN_ENGAGEMENT)
D_COUNTERS_VALID = "_counters_valid"
DERIVED_COLUMNS[D_COUNTERS_VALID] = (
    "the decayed counts are kinds x half-lives finite values in [0, the kind's total], the totals "
    "one count >= 0 per kind, and as_of <= event_timestamp <= created (a version is never stamped "
    "before an event it counts)")
for _suite in ENGAGEMENT_SUITES:
    SUITE_DERIVED[_suite] = (D_COUNTERS_VALID,)
    SUITE_KEY_COLUMNS[_suite] = (F.ENGAGEMENT_VIEWS[_suite][0], F.EVENT_TIMESTAMP)
    SUITE_PARAMETERS[_suite] = ()
SUITE_NAMES = (*SUITE_NAMES, *ENGAGEMENT_SUITES)
CHECKPOINT_NAMES = SUITE_NAMES


def _engagement_suite(view: str) -> SuiteSpec:
    key, (decayed, totals, as_of) = F.ENGAGEMENT_VIEWS[view]
    cols = (key, F.EVENT_TIMESTAMP, F.CREATED, decayed, totals, as_of)
    checks = [_exists(c) for c in cols]
    checks += [_not_null(c) for c in cols]
    checks += [
        _types(key, INT_TYPES),
        _types(as_of, INT_TYPES),
        _utc_datetime(F.EVENT_TIMESTAMP),
        _utc_datetime(F.CREATED),
        _id_range(key),
        Check("expect_column_values_to_be_between", {"column": as_of, "min_value": E.MIN_EVENT_TIME_MS},
              E.REASON_ANCIENT_TIME, f"{as_of} >= MIN_EVENT_TIME_MS: epoch ms, not seconds"),
        _true(D_COUNTERS_VALID, "bad_counters"),
    ]
    return SuiteSpec(view, f"Versions of the {view} feature view's engagement counters (decayed "
                     "counts as of their newest event, exact totals), as logged.", tuple(checks))


def engagement_counters_valid(df: pd.DataFrame, suite_name: str) -> pd.Series:
    """The D_COUNTERS_VALID column of an engagement table (None where a source is null)."""
    _, (decayed, totals, as_of) = F.ENGAGEMENT_VIEWS[suite_name]
    n_kinds, n_hl = len(F.ENGAGEMENT_KINDS), len(F.ENGAGEMENT_HALF_LIVES_MS)
    if not {decayed, totals, as_of, F.EVENT_TIMESTAMP, F.CREATED} <= set(df.columns):
        return pd.Series([None] * len(df), dtype=object)
    dec, tot = df[decayed].tolist(), df[totals].tolist()
    known = np.array([d is not None and t is not None and not (isinstance(d, float) or isinstance(t, float))
                      for d, t in zip(dec, tot)], dtype=bool)
    shape = np.array([_is_listlike(d) and _is_listlike(t) and len(d) == n_kinds * n_hl
                      and len(t) == n_kinds for d, t in zip(dec, tot)], dtype=bool)
    ok = shape.copy()
    rows = np.flatnonzero(shape)
    if rows.size:
        counts = np.stack([np.asarray(dec[i], dtype=np.float64) for i in rows]).reshape(-1, n_kinds, n_hl)
        total = np.stack([np.asarray(tot[i], dtype=np.float64) for i in rows])
        ok[rows] = (np.isfinite(counts).all(axis=(1, 2)) & (counts >= 0).all(axis=(1, 2))
                    & (total >= 0).all(axis=1)
                    & (counts <= total[:, :, None] * (1 + 1e-9) + 1e-9).all(axis=(1, 2)))
    stamps = [_time_ns(df[c].reset_index(drop=True)) for c in (F.EVENT_TIMESTAMP, F.CREATED)]
    if stamps[0] is None or stamps[1] is None:
        return pd.Series([None] * len(df), dtype=object)
    (ts_ns, ts_known), (created_ns, created_known) = stamps
    as_of_ms = pd.to_numeric(df[as_of], errors="coerce").to_numpy(np.float64)
    ok &= (as_of_ms * 1_000_000 <= ts_ns) & (ts_ns <= created_ns)
    return _tri(ok, known & ts_known & created_known & ~np.isnan(as_of_ms))


def suite_specs() -> dict[str, SuiteSpec]:
    specs = [_action_events(), _impression_events(), _sequence_features(), _pin_features(),
             _training_set(), *(_engagement_suite(v) for v in ENGAGEMENT_SUITES)]
    return {s.name: s for s in specs}


# -- derivation ----------------------------------------------------------------------------
def _is_listlike(value: Any) -> bool:
    return isinstance(value, (list, tuple, np.ndarray))


class _Ragged:
    """A list-valued column as flat numeric values plus per-row lengths.

    ``state`` per row: 1 = numeric list, 0 = null, -1 = not a list of numbers. A cell object that
    fills many rows (a request's sequence repeated on each of its impressions in the flat training
    frame) is read and checked once: ``flat`` and ``row`` hold each distinct cell once, and the
    per-row answers are mapped back through ``inverse``.
    """

    def __init__(self, series: pd.Series, kind: str):
        values = series.tolist()
        seen: dict[int, int] = {}
        inverse = np.empty(len(values), dtype=np.int64)
        cells = []
        for i, value in enumerate(values):
            at = seen.setdefault(id(value), len(cells))
            if at == len(cells):
                cells.append(value)
            inverse[i] = at
        self.inverse = inverse
        m = len(cells)
        state = np.zeros(m, dtype=np.int8)
        lengths = np.zeros(m, dtype=np.int64)
        parts = []
        for i, value in enumerate(cells):
            if _is_listlike(value):
                try:
                    arr = np.asarray(value)
                except (TypeError, ValueError):  # ragged nested lists
                    state[i] = -1
                    continue
                if arr.ndim != 1 or (arr.size and arr.dtype.kind not in ("i", "u", "f")):
                    state[i] = -1
                    continue
                if kind == "i" and arr.size and arr.dtype.kind == "f":
                    finite_ints = np.isfinite(arr).all() and (arr == np.round(arr)).all()
                    if not finite_ints:
                        state[i] = -1
                        continue
                state[i] = 1
                lengths[i] = arr.size
                parts.append(arr.astype(np.float64 if kind == "f" else np.int64, copy=False))
            elif value is None or (isinstance(value, float) and np.isnan(value)) or value is pd.NA:
                state[i] = 0
            else:
                state[i] = -1
        dtype = np.float64 if kind == "f" else np.int64
        self.flat = np.concatenate(parts) if parts else np.zeros(0, dtype=dtype)
        self.row = np.repeat(np.arange(m), lengths)  # distinct cell of each flat value
        self._state, self._lengths = state, lengths
        self.state, self.lengths = state[inverse], lengths[inverse]  # per row

    def all_ok(self, bad: np.ndarray) -> np.ndarray:
        """Per row: a numeric list none of whose flat values is flagged in `bad`."""
        clean = np.bincount(self.row[bad], minlength=len(self._state)) == 0
        return (clean & (self._state == 1))[self.inverse]

    def max_per_row(self) -> np.ndarray:
        """Per row, the largest value of its list (the dtype's minimum for an empty or null one)."""
        low = np.iinfo(np.int64).min if self.flat.dtype.kind == "i" else -np.inf
        out = np.full(len(self._state), low, dtype=self.flat.dtype)
        nonempty = self._lengths > 0
        if nonempty.any():
            starts = (np.cumsum(self._lengths) - self._lengths)[nonempty]
            out[nonempty] = np.maximum.reduceat(self.flat, starts)
        return out[self.inverse]


def _time_ns(series: pd.Series) -> tuple[np.ndarray, np.ndarray] | None:
    """(ns since epoch, valid mask) of a tz-aware datetime column; None for any other dtype."""
    if not isinstance(series.dtype, pd.DatetimeTZDtype):
        return None
    values = series.dt.tz_convert("UTC").dt.tz_localize(None).to_numpy(dtype="datetime64[ns]")
    ns = values.view(np.int64)
    return ns, ~np.isnat(values)


def _tri(ok: np.ndarray, known: np.ndarray) -> pd.Series:
    """bool where known, None (skipped by GX map expectations) elsewhere."""
    out = np.where(known, ok, None).astype(object)
    return pd.Series(out, dtype=object)


def _duration_checks(values: pd.Series | None, n: int) -> tuple[pd.Series, pd.Series]:
    """(whole number of ms, in 0..MAX_DURATION_MS) per row of the optional pin_duration_ms:
    None where the value is null (unknown) or the column is absent (an old log: all unknown)."""
    if values is None:
        none = pd.Series([None] * n, dtype=object)
        return none, none.copy()
    known = values.notna().to_numpy(dtype=bool)
    if values.dtype.kind in "iu" or str(values.dtype) in ("Int64", "Int32", "UInt64", "UInt32"):
        number = values.astype("float64").to_numpy(dtype=np.float64, na_value=np.nan)
        whole = known.copy()
    else:  # floats (nulls read back as NaN) or objects: each value must be an integral number
        number = np.array([float(v) if isinstance(v, (int, float, np.integer, np.floating))
                           and not isinstance(v, (bool, np.bool_)) else np.nan
                           for v in values.tolist()], dtype=np.float64)
        with np.errstate(invalid="ignore"):
            whole = known & np.isfinite(number) & (np.floor(number) == number)
    with np.errstate(invalid="ignore"):
        in_range = (number >= 0) & (number <= E.MAX_DURATION_MS)
    return _tri(whole, known), _tri(in_range, whole)


def later_rows(df: pd.DataFrame, periods: Any = None) -> np.ndarray | None:
    """Which rows of a training frame come after its training period (bool per row), or None
    when the frame holds one period (nothing to compare a rate with).

    `periods`: one split name per row ("train" = the training period), or the name of a column
    of `df` holding them; default: the frame's `split` column when it has one, else by time: the
    last LATER_DAYS_SHARE of the frame's UTC days of `event_timestamp` (at least one) are later.
    """
    if isinstance(periods, str):
        if periods not in df.columns:
            raise ValueError(f"no column {periods!r} to take the periods from")
        periods = df[periods]
    if periods is None and SPLIT_COLUMN in df.columns:
        periods = df[SPLIT_COLUMN]
    if periods is not None:
        split = np.asarray(periods, dtype=object).reshape(-1)
        if split.size != len(df):
            raise ValueError(f"periods ({split.size}) and rows ({len(df)}) differ in length")
        later = split != TRAINING_SPLIT
    else:
        parsed = _time_ns(df[F.EVENT_TIMESTAMP]) if F.EVENT_TIMESTAMP in df.columns else None
        if parsed is None:
            return None
        ns, known = parsed
        day = ns // DAY_NS
        days = np.unique(day[known])
        if days.size < 2:
            return None
        first_later = days[-max(1, int(np.ceil(days.size * LATER_DAYS_SHARE)))]
        later = known & (day >= first_later)
    if later.all() or not later.any():
        return None
    return later


def derive_columns(suite_name: str, df: pd.DataFrame, periods: Any = None) -> pd.DataFrame:
    """The documented pre-step: add the derived per-row columns `suite_name` expects.

    Returns `df` itself when the suite needs none, else a shallow copy with the columns in
    SUITE_DERIVED[suite_name] added (see DERIVED_COLUMNS for their meaning). A derived value
    is None (not checked) where its source is null, so the suites' null checks alone report
    nulls; it is False where the source is present but not a list of numbers. Missing source
    columns leave the derived columns all-None: the `expect_column_to_exist` checks report them.
    Times are compared exactly: epoch-ms sequence times against the row timestamp in ns.
    `periods` (training_set): see `later_rows`.
    """
    wanted = SUITE_DERIVED[suite_name]
    if not wanted:
        return df
    n = len(df)
    out: dict[str, pd.Series] = {}
    none = pd.Series([None] * n, dtype=object)

    def col(name: str) -> pd.Series | None:
        return df[name].reset_index(drop=True) if name in df.columns else None

    needs_seq = bool({D_ALIGNED, D_SORTED_DESC, D_MAX_TIME_OK, D_ACTIONS_VALID, D_PIN_IDS_VALID,
                      D_TIMES_VALID, D_NO_LEAKAGE} & set(wanted))
    pins = acts = times = None
    if needs_seq:
        pins_s, acts_s, times_s = col(F.SEQ_PIN_IDS), col(F.SEQ_ACTION_TYPES), col(F.SEQ_ACTION_TIMES)
        pins = _Ragged(pins_s, "i") if pins_s is not None else None
        acts = _Ragged(acts_s, "i") if acts_s is not None else None
        times = _Ragged(times_s, "i") if times_s is not None else None

    if D_ALIGNED in wanted:
        length_s = col(F.SEQ_LENGTH)
        if pins is None or acts is None or times is None or length_s is None:
            out[D_ALIGNED] = none
        else:
            seq_len = pd.to_numeric(length_s, errors="coerce").to_numpy(dtype=np.float64)
            known = (pins.state != 0) & (acts.state != 0) & (times.state != 0) & ~np.isnan(seq_len)
            ok = ((pins.state == 1) & (acts.state == 1) & (times.state == 1)
                  & (pins.lengths == acts.lengths) & (acts.lengths == times.lengths)
                  & (times.lengths == seq_len))
            out[D_ALIGNED] = _tri(ok, known)

    if D_SORTED_DESC in wanted:
        if times is None:
            out[D_SORTED_DESC] = none
        else:
            same_row = times.row[1:] == times.row[:-1]
            rising = np.zeros(times.flat.size, dtype=bool)
            rising[1:] = same_row & (times.flat[1:] > times.flat[:-1])
            out[D_SORTED_DESC] = _tri(times.all_ok(rising), times.state != 0)

    if D_ACTIONS_VALID in wanted:
        if acts is None:
            out[D_ACTIONS_VALID] = none
        else:
            out[D_ACTIONS_VALID] = _tri(acts.all_ok(~np.isin(acts.flat, ACTION_IDS)), acts.state != 0)

    if D_PIN_IDS_VALID in wanted:
        if pins is None:
            out[D_PIN_IDS_VALID] = none
        else:
            bad = (pins.flat < 1) | (pins.flat > E.MAX_ID)
            out[D_PIN_IDS_VALID] = _tri(pins.all_ok(bad), pins.state != 0)

    if D_TIMES_VALID in wanted:
        if times is None:
            out[D_TIMES_VALID] = none
        else:
            out[D_TIMES_VALID] = _tri(times.all_ok(times.flat < E.MIN_EVENT_TIME_MS), times.state != 0)

    for name, strict in ((D_MAX_TIME_OK, False), (D_NO_LEAKAGE, True)):
        if name not in wanted:
            continue
        ts = col(F.EVENT_TIMESTAMP)
        parsed = _time_ns(ts) if ts is not None else None
        if times is None or parsed is None:
            out[name] = none
            continue
        ns, ts_known = parsed
        # a_ms * 1e6 <= ns  <=>  a_ms <= floor(ns / 1e6);  a_ms * 1e6 < ns  <=>  a_ms < ceil(ns / 1e6)
        floor_ms = ns // 1_000_000
        ceil_ms = -((-ns) // 1_000_000)
        newest = times.max_per_row()  # a row is bad if any action is after its limit
        bad = newest >= ceil_ms if strict else newest > floor_ms
        out[name] = _tri(~bad & (times.state == 1), (times.state != 0) & ts_known)

    if D_EMBEDDING_DIM in wanted or D_EMBEDDING_FINITE in wanted:
        emb_s = col(F.PIN_EMBEDDING)
        if emb_s is None:
            for name in (D_EMBEDDING_DIM, D_EMBEDDING_FINITE):
                if name in wanted:
                    out[name] = none
        else:
            emb = _Ragged(emb_s, "f")
            if D_EMBEDDING_DIM in wanted:
                dim = np.where(emb.state == 1, emb.lengths, -1).astype(np.float64)
                dim[emb.state == 0] = np.nan
                out[D_EMBEDDING_DIM] = pd.Series(dim)
            if D_EMBEDDING_FINITE in wanted:
                out[D_EMBEDDING_FINITE] = _tri(emb.all_ok(~np.isfinite(emb.flat)), emb.state != 0)

    if D_DURATION_WHOLE_MS in wanted or D_DURATION_IN_RANGE in wanted:
        whole, in_range = _duration_checks(col(F.PIN_DURATION_MS), n)
        for name, values in ((D_DURATION_WHOLE_MS, whole), (D_DURATION_IN_RANGE, in_range)):
            if name in wanted:
                out[name] = values

    if set(D_CHECKED_LABELS) & set(wanted):
        later = later_rows(df, periods)
        for label in F.LABEL_COLUMNS:
            source = col(label)
            values = (np.full(n, np.nan) if source is None
                      else pd.to_numeric(source, errors="coerce").to_numpy(dtype=np.float64))
            if later is not None:
                values[~later] = np.nan
            out[checked_label_column(label)] = pd.Series(values)

    if D_COUNTERS_VALID in wanted:
        out[D_COUNTERS_VALID] = engagement_counters_valid(df, suite_name)

    derived = df.copy(deep=False)
    for name in wanted:
        values = out[name]
        values.index = df.index
        derived[name] = values
    # One consolidated copy (cell objects are shared, not copied): GX filters the frame once per
    # expectation, and each filter of a fragmented frame would consolidate its own copy again.
    return derived.copy()


# -- the file context ------------------------------------------------------------------------
def default_project_dir() -> Path:
    """Where the GX project lives: $HOMEFEED_VALIDATION_DIR, else <repo>/validation for a source
    checkout, else ./validation."""
    explicit = os.environ.get(VALIDATION_DIR_ENV)
    if explicit:
        return Path(explicit).expanduser().resolve()
    repo = Path(__file__).resolve().parents[3]
    if (repo / "pyproject.toml").is_file() and (repo / "src" / "homefeed").is_dir():
        return repo / "validation"
    return (Path.cwd() / "validation").resolve()


def context_exists(project_dir: Path) -> bool:
    return (Path(project_dir) / CONTEXT_SUBDIR / "great_expectations.yml").is_file()


def stable_id(*parts: str) -> str:
    return str(uuid.uuid5(_ID_NAMESPACE, "/".join(parts)))


def import_gx():
    """Import great_expectations quietly (no usage statistics, no progress bars)."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    import great_expectations as gx
    from great_expectations.data_context import data_context_variables

    # GX logs routine INFO lines on every context save, under loggers named by package and,
    # in this module, by file path.
    for name in ("great_expectations", data_context_variables.__file__):
        gx_logger = logging.getLogger(name)
        if gx_logger.level == logging.NOTSET:
            gx_logger.setLevel(logging.WARNING)

    return gx


def open_context(project_dir: Path, *, create: bool = False):
    """The file context at `project_dir` (GX files under project_dir/gx)."""
    from homefeed.errors import UserError

    project_dir = Path(project_dir)
    if not create and not context_exists(project_dir):
        raise UserError(
            f"no Great Expectations context at {project_dir / CONTEXT_SUBDIR}; "
            "run `homefeed validate init` to create it"
        )
    gx = import_gx()
    # GX builds the project's own results store first and warns when it cannot create its
    # directory (a read-only project, as in an image); `redirect_output` replaces that store.
    backend_log = logging.getLogger("great_expectations.data_context.store._store_backend")
    level = backend_log.level
    backend_log.setLevel(logging.ERROR)
    try:
        context = gx.get_context(mode="file", project_root_dir=str(project_dir))
    finally:
        backend_log.setLevel(level)
    redirect_output(context)
    return context


def output_dir() -> Path:
    """Where GX's run-time output goes: $HOMEFEED_HOME/validation (results, Data Docs), never
    the project directory (source tree, read-only in an image)."""
    from homefeed.settings import load_settings

    return load_settings().gx_output_dir


def redirect_output(context) -> None:
    """Point the context's validation-results store and Data Docs site at `output_dir()`, in
    memory only (great_expectations.yml keeps GX's defaults: never save this context's
    variables; `init_context` opens its own)."""
    from great_expectations.data_context.store import ValidationResultsStore

    out = output_dir()
    name = context.variables.validation_results_store_name
    context._stores[name] = ValidationResultsStore(
        store_name=name, store_backend={"class_name": "TupleFilesystemStoreBackend",
                                        "base_directory": str(out / "validations")})
    for site in (context.variables.config["data_docs_sites"] or {}).values():  # the raw config
        backend = site.get("store_backend") or {}
        if backend.get("class_name") == "TupleFilesystemStoreBackend":
            backend["base_directory"] = str(out / "data_docs" / "local_site")


def expectation_id(suite_name: str, check: Check) -> str:
    return stable_id("expectation", suite_name, check.type, check.column or "", check.check)


def _stored_kwargs(kwargs: dict[str, Any], defaults: dict[str, Any]) -> tuple[dict, dict]:
    """(kwargs with each $PARAMETER replaced by its default, {kwarg: parameter name})."""
    stored, parameters = {}, {}
    for key, value in kwargs.items():
        if isinstance(value, dict) and "$PARAMETER" in value:
            parameters[key] = value["$PARAMETER"]
            value = defaults[value["$PARAMETER"]]
        stored[key] = value
    return stored, parameters


def suite_document(spec: SuiteSpec) -> dict[str, Any]:
    """The suite as GX stores it (without GX's version stamp): what init writes. Run-time
    parameters hold their default; ``meta.parameters`` names them (see `runtime_suite`)."""
    expectations = []
    seen = set()
    defaults = parameter_defaults()
    for check in spec.checks:
        key = (check.type, check.column or "", check.check)
        if key in seen:
            raise ValueError(f"duplicate check {key} in suite {spec.name}")
        seen.add(key)
        kwargs, parameters = _stored_kwargs(check.kwargs, defaults)
        meta: dict[str, Any] = {"check": check.check}
        if parameters:
            meta["parameters"] = parameters
        expectations.append({
            "type": check.type,
            "kwargs": kwargs,
            "meta": meta,
            "notes": check.notes or None,
            "id": expectation_id(spec.name, check),
        })
    return {
        "name": spec.name,
        "id": stable_id("suite", spec.name),
        "expectations": expectations,
        "notes": spec.description,
        "meta": {"generated_by": "homefeed.validation.suites (homefeed validate init)"},
    }


# Expectations on a frame's structure: its columns, dtypes and nulls. A frame that code builds
# from parsed, typed records (the stream consumer's micro-batch, `events_frame`) meets them by
# construction, so the stream runs only the other (value) checks: GX's cost is per expectation,
# whatever the rows (`homefeed bench validate`), and action_events has 15 structure checks of 22.
STRUCTURE_TYPES = frozenset({
    "expect_column_to_exist", "expect_column_values_to_not_be_null",
    "expect_column_values_to_be_in_type_list", "expect_column_values_to_be_of_type",
})


def runtime_suite(stored, structure: bool = True):
    """An in-memory copy of a stored GX suite whose parameter kwargs (``meta.parameters``) are
    ``{"$PARAMETER": name}`` references again, for the runner to fill in. Same name, ids and
    expectations otherwise (without the STRUCTURE_TYPES ones when `structure` is false); it is
    never saved."""
    gx = import_gx()
    expectations = []
    for expectation in stored.expectations:
        if not structure and expectation.expectation_type in STRUCTURE_TYPES:
            continue
        config = expectation.configuration.to_json_dict()
        for key, name in ((config.get("meta") or {}).get("parameters") or {}).items():
            config["kwargs"][key] = {"$PARAMETER": name}
        expectations.append({k: config[k] for k in ("type", "kwargs", "meta", "notes", "id")
                             if config.get(k) is not None})
    return gx.ExpectationSuite(name=stored.name, id=stored.id, expectations=expectations,
                               notes=stored.notes, meta=dict(stored.meta or {}))


def init_context(project_dir: Path | None = None) -> dict[str, list[str]]:
    """Create or refresh the GX project from code (idempotent). Returns what it wrote."""
    from great_expectations.data_context.types.base import ProgressBarsConfig
    from great_expectations.data_context.types.resource_identifiers import ExpectationSuiteIdentifier

    project_dir = Path(project_dir or default_project_dir())
    project_dir.mkdir(parents=True, exist_ok=True)
    gx = import_gx()
    context = gx.get_context(mode="file", project_root_dir=str(project_dir))
    context.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
    context.enable_analytics(False)  # also saves the variables above

    specs = suite_specs()
    datasource = context.data_sources.add_or_update_pandas(
        name=DATASOURCE_NAME,
        id=stable_id("datasource", DATASOURCE_NAME),
        assets=[
            {
                "type": "dataframe",
                "name": name,
                "id": stable_id("asset", DATASOURCE_NAME, name),
                "batch_definitions": [{
                    "name": BATCH_DEFINITION_NAME,
                    "id": stable_id("batch_definition", DATASOURCE_NAME, name, BATCH_DEFINITION_NAME),
                    "partitioner": None,
                }],
            }
            for name in SUITE_NAMES
        ],
    )
    store = context.expectations_store
    for name in SUITE_NAMES:
        # Written through the store: GX's suite factory would give every expectation a fresh
        # uuid4 on each run; these ids are stable.
        suite = gx.ExpectationSuite(**suite_document(specs[name]))
        store.add_or_update(key=ExpectationSuiteIdentifier(name=name), value=suite)
        suite = context.suites.get(name)
        batch_definition = datasource.get_asset(name).get_batch_definition(BATCH_DEFINITION_NAME)
        # Validation definitions and checkpoints are also written through their stores: GX's
        # factories give a new object a uuid4 id.
        definition = gx.ValidationDefinition(name=name, data=batch_definition, suite=suite,
                                             id=stable_id("validation_definition", name))
        vd_store = context.validation_definition_store
        vd_store.add_or_update(key=vd_store.get_key(name=name), value=definition)
        definition = context.validation_definitions.get(name)
        checkpoint = gx.Checkpoint(name=name, validation_definitions=[definition], actions=[],
                                   result_format=RESULT_FORMAT, id=stable_id("checkpoint", name))
        context.checkpoint_store.add_or_update(key=context.checkpoint_store.get_key(name=name),
                                               value=checkpoint)
    _remove_unknown(context, project_dir)
    return {"suites": list(SUITE_NAMES), "checkpoints": list(CHECKPOINT_NAMES),
            "context": [str(project_dir / CONTEXT_SUBDIR)]}


def _remove_unknown(context, project_dir: Path) -> None:
    """Drop suites/definitions/checkpoints that the code no longer defines."""
    gx_dir = Path(project_dir) / CONTEXT_SUBDIR
    for sub in ("checkpoints", "validation_definitions", "expectations"):
        for path in (gx_dir / sub).glob("*.json"):
            if path.stem not in SUITE_NAMES:
                path.unlink()


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def context_drift(project_dir: Path | None = None) -> list[str]:
    """Differences between the context on disk and what `init_context` would write
    (empty when in sync). Compares suites (expectations, kwargs, ids), checkpoints,
    validation definitions and the datasource's assets; no GX import needed."""
    project_dir = Path(project_dir or default_project_dir())
    gx_dir = project_dir / CONTEXT_SUBDIR
    if not context_exists(project_dir):
        return [f"no context at {gx_dir}"]
    problems: list[str] = []
    specs = suite_specs()
    for sub in ("expectations", "checkpoints", "validation_definitions"):
        extra = sorted(p.stem for p in (gx_dir / sub).glob("*.json") if p.stem not in SUITE_NAMES)
        if extra:
            problems.append(f"{sub}/: unknown {extra}")
    for name in SUITE_NAMES:
        want = json.loads(json.dumps(suite_document(specs[name])))
        have = _read_json(gx_dir / "expectations" / f"{name}.json")
        if have is None:
            problems.append(f"suite {name}: missing")
            continue
        have_exps = [{k: e.get(k) for k in ("type", "kwargs", "meta", "notes", "id")}
                     for e in have.get("expectations", [])]
        if have_exps != want["expectations"]:  # 1 == 1.0: GX stores some bounds as floats
            problems.append(f"suite {name}: expectations differ from the code")
        for key in ("id", "notes"):
            if have.get(key) != want[key]:
                problems.append(f"suite {name}: {key} differs")
        checkpoint = _read_json(gx_dir / "checkpoints" / f"{name}.json")
        if not checkpoint or checkpoint.get("id") != stable_id("checkpoint", name) or \
                checkpoint.get("result_format") != RESULT_FORMAT or \
                [v.get("name") for v in checkpoint.get("validation_definitions", [])] != [name]:
            problems.append(f"checkpoint {name}: missing or differs")
        definition = _read_json(gx_dir / "validation_definitions" / f"{name}.json")
        if not definition or definition.get("id") != stable_id("validation_definition", name) or \
                (definition.get("suite") or {}).get("id") != stable_id("suite", name) or \
                (definition.get("data") or {}).get("asset", {}).get("name") != name:
            problems.append(f"validation definition {name}: missing or differs")
    config = (gx_dir / "great_expectations.yml").read_text()
    for name in SUITE_NAMES:
        if stable_id("asset", DATASOURCE_NAME, name) not in config:
            problems.append(f"datasource {DATASOURCE_NAME}: asset {name} missing or differs")
    return problems

