"""Great Expectations suites, checkpoints, report, data loading and the `validate` command.

One GX context (initialised from code into a temp dir) is shared by the whole module.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from homefeed import features as F
from homefeed.errors import UserError
from homefeed.events import MAX_ID, MIN_EVENT_TIME_MS, ActionType, action_names
from homefeed.settings import Settings
from homefeed.validation import cli as vcli
from homefeed.validation import runner
from homefeed.validation import suites as S

NOW = 1_767_225_600_000  # 2026-01-01T00:00:00Z in epoch ms
NOW_TS = pd.Timestamp(NOW, unit="ms", tz="UTC")
SETTINGS = Settings()  # defaults: embedding_dim 32, sequence_length 100, skew 5 min
DIM = SETTINGS.embedding_dim
REPIN, CLICK, HIDE = (F.label_column(a) for a in (ActionType.REPIN, ActionType.CLICK, ActionType.HIDE))


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """A GX project of its own; its run-time output goes to a home of its own."""
    root = tmp_path_factory.mktemp("gx") / "validation"
    saved = os.environ.get("HOMEFEED_HOME")
    os.environ["HOMEFEED_HOME"] = str(root.parent / "home")
    S.init_context(root)
    yield root
    runner.clear_cache()
    if saved is None:
        os.environ.pop("HOMEFEED_HOME", None)
    else:
        os.environ["HOMEFEED_HOME"] = saved


def validate(suite: str, df: pd.DataFrame, project: Path, **kw) -> runner.ValidationReport:
    kw.setdefault("settings", SETTINGS)
    if suite == S.ACTION_EVENTS and "max_event_time_ms" not in kw:
        kw.setdefault("now_ms", NOW)
    return runner.validate_dataframe(suite, df, project_dir=project, **kw)


def checks(report: runner.ValidationReport) -> set[str]:
    return set(report.failed_checks)


def failure(report: runner.ValidationReport, check: str, column: str | None = None):
    found = [f for f in report.failures if f.check == check and (column is None or f.column == column)]
    assert found, f"no failure {check}/{column} in:\n{report.to_text()}"
    return found[0]


def events(n: int = 50) -> pd.DataFrame:
    rng = np.random.default_rng(1)
    return pd.DataFrame({
        "event_id": [f"u{i % 7}-{i:06d}" for i in range(n)],
        "user_id": rng.integers(1, 1000, n, dtype=np.int64),
        "pin_id": rng.integers(1, 10**6, n, dtype=np.int64),
        "action_type": [action_names()[i % 3] for i in range(n)],
        "event_time": NOW - rng.integers(0, 600_000, n, dtype=np.int64),
        "surface": "homefeed",
    })


def _sequence(length: int, end_ms: int, rng) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    gaps = rng.integers(1, 5_000, length, dtype=np.int64)
    times = end_ms - np.cumsum(gaps)  # strictly before end_ms, newest first
    pins = rng.integers(1, 10**6, length, dtype=np.int64)
    acts = rng.choice([int(a) for a in ActionType], length).astype(np.int32)
    return pins, acts, times


def sequence_rows(n: int = 20) -> pd.DataFrame:
    rng = np.random.default_rng(2)
    rows = []
    for i in range(n):
        length = [0, 1, 5, 100][i % 4]  # empty and full-length sequences are valid
        ts = NOW_TS + pd.Timedelta(seconds=i)
        pins, acts, times = _sequence(length, NOW + i * 1000, rng)
        if i % 2:  # JSON/Python lists as well as numpy arrays (what parquet gives back)
            pins, acts, times = pins.tolist(), acts.tolist(), times.tolist()
        rows.append({F.USER_ID: i + 1, F.EVENT_TIMESTAMP: ts, F.CREATED: ts + pd.Timedelta(milliseconds=5),
                     F.SEQ_PIN_IDS: pins, F.SEQ_ACTION_TYPES: acts, F.SEQ_ACTION_TIMES: times,
                     F.SEQ_LENGTH: length})
    df = pd.DataFrame(rows)
    df[F.SEQ_LENGTH] = df[F.SEQ_LENGTH].astype("int32")
    return df


def pin_rows(n: int = 20) -> pd.DataFrame:
    rng = np.random.default_rng(3)
    return pd.DataFrame({
        F.PIN_ID: np.arange(1, n + 1, dtype=np.int64),
        F.PIN_EMBEDDING: [rng.standard_normal(DIM).astype(np.float32) for _ in range(n)],
        F.PIN_TOPIC: rng.integers(0, 50, n, dtype=np.int64),
        F.PIN_CREATED_MS: NOW - rng.integers(10**6, 10**9, n, dtype=np.int64),
        F.PIN_DURATION_MS: pd.array([None if i % 4 == 0 else 1_000 * i for i in range(n)], dtype="Int64"),
        F.EVENT_TIMESTAMP: [NOW_TS] * n,
    })


def training_rows(n: int = 200) -> pd.DataFrame:
    rng = np.random.default_rng(4)
    rows = []
    for i in range(n):
        request_ts = NOW_TS + pd.Timedelta(seconds=i // 10)
        pins, acts, times = _sequence([0, 3, 17][i % 3], NOW + (i // 10) * 1000, rng)
        rows.append({
            F.REQUEST_ID: f"r{i // 10}", F.USER_ID: i // 10 + 1, F.PIN_ID: i + 1,
            F.EVENT_TIMESTAMP: request_ts,
            REPIN: int(i % 10 == 0), CLICK: int(i % 3 == 0), HIDE: int(i % 20 == 1),
            F.SEQ_PIN_IDS: pins, F.SEQ_ACTION_TYPES: acts, F.SEQ_ACTION_TIMES: times,
            F.SEQ_LENGTH: len(times),
            F.PIN_EMBEDDING: rng.standard_normal(DIM).astype(np.float32),
            F.PROFILE_EMBEDDING: rng.standard_normal(DIM).astype(np.float32),
            F.PROFILE_ACTIONS_28D: int(rng.integers(0, 500)),
            F.PROFILE_REPIN_RATE_28D: float(rng.random()),
            F.PROFILE_HIDE_RATE_28D: float(rng.random() / 10),
            F.PROFILE_DAYS_ACTIVE_28D: int(rng.integers(0, 28)),
        })
    return pd.DataFrame(rows)


# ------------------------------------------------------------------------ action_events


def test_action_events_good_batch_passes(project):
    report = validate("action_events", events(), project)
    assert report.success, report.to_text()
    assert report.failures == [] and report.evaluated == len(S.suite_specs()["action_events"].checks)
    assert report.parameters["max_event_time_ms"] == NOW + SETTINGS.max_future_skew_ms


def test_action_events_extra_columns_are_allowed(project):
    df = events().drop(columns=["surface"]).assign(arrival_time=NOW, metadata="{}")
    assert validate("action_events", df, project).success


def test_unknown_action_type(project):
    df = events()
    df.loc[3, "action_type"] = "like"
    report = validate("action_events", df, project)
    assert checks(report) == {"unknown_action"}
    f = failure(report, "unknown_action", "action_type")
    assert f.unexpected_count == 1 and f.examples == ["like"]


def test_negative_id(project):
    df = events()
    df.loc[4, "user_id"] = -5
    report = validate("action_events", df, project)
    assert checks(report) == {"bad_id"}
    assert failure(report, "bad_id", "user_id").examples == [-5]


def test_id_above_max_id(project):
    df = events()
    df.loc[5, "pin_id"] = MAX_ID + 1
    assert failure(validate("action_events", df, project), "bad_id", "pin_id").unexpected_count == 1


def test_duplicate_event_id(project):
    df = events()
    df.loc[6, ["user_id", "event_id"]] = df.loc[7, ["user_id", "event_id"]].to_numpy()
    report = validate("action_events", df, project)
    assert checks(report) == {"duplicate_event_id"}
    assert failure(report, "duplicate_event_id").unexpected_count == 2


def test_same_event_id_for_two_users_is_two_events(project):
    df = events()
    df.loc[6, "event_id"] = df.loc[7, "event_id"]
    df.loc[6, "user_id"] = int(df.loc[7, "user_id"]) + 1
    assert validate("action_events", df, project).success


def test_future_event_time(project):
    df = events()
    df.loc[8, "event_time"] = NOW + SETTINGS.max_future_skew_ms + 1
    df.loc[9, "event_time"] = NOW + SETTINGS.max_future_skew_ms  # exactly at the bound: fine
    report = validate("action_events", df, project)
    assert checks(report) == {"future_time"}
    assert failure(report, "future_time").examples == [NOW + SETTINGS.max_future_skew_ms + 1]


def test_future_time_relative_to_max_arrival_time(project):
    df = events().assign(arrival_time=NOW)
    df.loc[1, "event_time"] = NOW + 10 * SETTINGS.max_future_skew_ms
    report = runner.validate_dataframe("action_events", df, settings=SETTINGS, project_dir=project)
    assert checks(report) == {"future_time"}
    assert report.parameters["max_event_time_ms"] == NOW + SETTINGS.max_future_skew_ms


def test_ancient_event_time(project):
    df = events()
    df.loc[2, "event_time"] = NOW // 1000  # seconds instead of milliseconds
    report = validate("action_events", df, project)
    assert checks(report) == {"ancient_time"}
    assert MIN_EVENT_TIME_MS > NOW // 1000


def test_wrong_type_column(project):
    df = events()
    df["user_id"] = df["user_id"].astype(str)
    report = validate("action_events", df, project)
    assert "wrong_type" in checks(report)
    assert failure(report, "wrong_type", "user_id")


def test_float_id_column_is_wrong_type(project):
    df = events()
    df["event_time"] = df["event_time"].astype(float)
    assert failure(validate("action_events", df, project), "wrong_type", "event_time")


def test_missing_column(project):
    report = validate("action_events", events().drop(columns=["pin_id"]), project)
    assert not report.success
    assert failure(report, "missing_column", "pin_id")


def test_null_values(project):
    df = events()
    df.loc[0, "event_id"] = None
    report = validate("action_events", df, project)
    assert checks(report) == {"null"}
    assert failure(report, "null", "event_id").unexpected_count == 1


# -------------------------------------------------------------------- sequence_features


def test_sequence_features_good_rows_pass(project):
    report = validate("sequence_features", sequence_rows(), project)
    assert report.success, report.to_text()


def test_misaligned_arrays(project):
    df = sequence_rows()
    df.at[2, F.SEQ_PIN_IDS] = df.at[2, F.SEQ_PIN_IDS][:-1]
    report = validate("sequence_features", df, project)
    assert checks(report) == {"misaligned"}
    f = failure(report, "misaligned", "_aligned")
    assert f.unexpected_count == 1 and f.examples[0]["row"] == 2 and f.examples[0][F.USER_ID] == 3


def test_seq_length_disagrees_with_arrays(project):
    df = sequence_rows()
    df.loc[6, F.SEQ_LENGTH] = 4
    assert checks(validate("sequence_features", df, project)) == {"misaligned"}


def test_unsorted_times(project):
    df = sequence_rows()
    df.at[2, F.SEQ_ACTION_TIMES] = np.asarray(df.at[2, F.SEQ_ACTION_TIMES])[::-1].copy()
    report = validate("sequence_features", df, project)
    assert checks(report) == {"unsorted_times"}


def test_sequence_time_after_row_timestamp(project):
    df = sequence_rows()
    times = list(df.at[2, F.SEQ_ACTION_TIMES])
    row_ms = df.at[2, F.EVENT_TIMESTAMP].value // 1_000_000
    times[0] = row_ms + 1
    df.at[2, F.SEQ_ACTION_TIMES] = times
    assert checks(validate("sequence_features", df, project)) == {"time_after_row"}
    times[0] = row_ms  # at the row's own timestamp: allowed in the feature view
    df.at[2, F.SEQ_ACTION_TIMES] = times
    assert validate("sequence_features", df, project).success


def test_too_long_sequence(project):
    df = sequence_rows()
    rng = np.random.default_rng(9)
    pins, acts, times = _sequence(SETTINGS.sequence_length + 1, NOW, rng)
    df.at[3, F.SEQ_PIN_IDS], df.at[3, F.SEQ_ACTION_TYPES], df.at[3, F.SEQ_ACTION_TIMES] = pins, acts, times
    df.loc[3, F.SEQ_LENGTH] = SETTINGS.sequence_length + 1
    report = validate("sequence_features", df, project)
    assert checks(report) == {"sequence_too_long"}
    assert failure(report, "sequence_too_long").examples == [SETTINGS.sequence_length + 1]
    # the bound comes from settings, not from the committed JSON
    longer = SETTINGS.replace(sequence_length=SETTINGS.sequence_length + 1)
    assert validate("sequence_features", df, project, settings=longer).success


def test_invalid_action_id_in_sequence(project):
    df = sequence_rows()
    acts = np.asarray(df.at[2, F.SEQ_ACTION_TYPES]).copy()
    acts[1] = 0  # padding id, never an action
    df.at[2, F.SEQ_ACTION_TYPES] = acts
    assert checks(validate("sequence_features", df, project)) == {"unknown_action"}


def test_null_sequence_and_naive_timestamp(project):
    df = sequence_rows()
    df.at[1, F.SEQ_ACTION_TIMES] = None
    df[F.CREATED] = df[F.CREATED].dt.tz_localize(None)
    report = validate("sequence_features", df, project)
    assert failure(report, "null", F.SEQ_ACTION_TIMES).unexpected_count == 1
    assert failure(report, "wrong_type", F.CREATED)


# ------------------------------------------------------------------------- pin_features


def test_pin_features_good_rows_pass(project):
    assert validate("pin_features", pin_rows(), project).success


def test_wrong_embedding_dim(project):
    df = pin_rows()
    df.at[4, F.PIN_EMBEDDING] = np.zeros(DIM + 1, dtype=np.float32)
    report = validate("pin_features", df, project)
    assert checks(report) == {"embedding_dim"}
    assert failure(report, "embedding_dim").examples[0]["row"] == 4
    wider = SETTINGS.replace(embedding_dim=DIM + 1)
    failed = failure(validate("pin_features", df, project, settings=wider), "embedding_dim")
    assert failed.unexpected_count == len(df) - 1


def test_non_finite_embedding(project):
    df = pin_rows()
    df.at[1, F.PIN_EMBEDDING] = np.full(DIM, np.nan, dtype=np.float32)
    emb = df.at[2, F.PIN_EMBEDDING].copy()
    emb[5] = np.inf
    df.at[2, F.PIN_EMBEDDING] = emb
    report = validate("pin_features", df, project)
    assert checks(report) == {"non_finite_embedding"}
    assert failure(report, "non_finite_embedding").unexpected_count == 2


def test_duplicate_pin_id(project):
    df = pin_rows()
    df.loc[3, F.PIN_ID] = df.loc[4, F.PIN_ID]
    assert checks(validate("pin_features", df, project)) == {"duplicate_pin_id"}


def test_pin_duration_may_be_null_but_not_bad(project):
    df = pin_rows()
    # as read back from parquet without pandas metadata: float64 with NaN for the nulls
    floats = df.astype({F.PIN_DURATION_MS: "float64"})
    assert validate("pin_features", floats, project).success
    unknown = df.assign(**{F.PIN_DURATION_MS: pd.array([None] * len(df), dtype="Int64")})
    assert validate("pin_features", unknown, project).success  # every duration unknown
    bad = df.astype({F.PIN_DURATION_MS: object})
    bad.at[1, F.PIN_DURATION_MS] = "87433"
    bad.at[2, F.PIN_DURATION_MS] = 1.5
    bad.at[3, F.PIN_DURATION_MS] = -1
    bad.at[5, F.PIN_DURATION_MS] = 10**11  # microseconds
    report = validate("pin_features", bad, project)
    assert checks(report) == {"wrong_type", "bad_duration"}
    assert failure(report, "wrong_type").unexpected_count == 2
    assert failure(report, "bad_duration").unexpected_count == 2
    missing = validate("pin_features", df.drop(columns=[F.PIN_DURATION_MS]), project)
    assert not missing.success and "missing_column" in checks(missing)


def test_embedding_not_a_list(project):
    df = pin_rows().astype({F.PIN_EMBEDDING: object})
    df.at[0, F.PIN_EMBEDDING] = "0.1,0.2"
    assert checks(validate("pin_features", df, project)) == {"embedding_dim", "non_finite_embedding"}


# ------------------------------------------------------------------------- training_set


def test_training_set_good_rows_pass(project):
    report = validate("training_set", training_rows(), project)
    assert report.success, report.to_text()


def test_non_binary_label(project):
    df = training_rows()
    df.loc[5, CLICK] = 2
    report = validate("training_set", df, project)
    assert "non_binary_label" in checks(report)
    assert failure(report, "non_binary_label", CLICK).examples == [2]


def periods(df: pd.DataFrame, later_share: float = 0.25) -> pd.DataFrame:
    """`df` with a split column: the last `later_share` of its rows valid/test, the rest train."""
    n_later = int(len(df) * later_share)
    split = ["train"] * (len(df) - n_later) + ["valid", "test"] * (n_later // 2) + ["test"] * (n_later % 2)
    return df.assign(split=split)


def test_label_rate_drift_after_the_training_period_fails_naming_the_label(project):
    df = periods(training_rows(1000))
    later = df["split"] != "train"
    assert validate("training_set", df, project).success  # same rates in every period
    df.loc[later, CLICK] = 1  # every later candidate clicked: 1.0 against ~0.33 in training
    df.loc[later, REPIN] = 0  # never repinned later: 0 against 0.1
    report = validate("training_set", df, project)
    assert checks(report) == {"positive_rate"}
    assert {f.column for f in report.failures} == {CLICK, REPIN}
    click = failure(report, "positive_rate", CLICK)
    assert click.observed_value == 1.0 and "label_click_max_rate=0.604849" in click.describe()
    assert f"({CLICK}) [positive_rate]" in report.to_text()
    # The same drift found by time when the frame has no split column: its last day is later.
    days = np.where(later, 3, np.arange(len(df)) * 2 // len(df))  # train on days 0-1, later day 3
    by_time = df.drop(columns="split")
    by_time[F.EVENT_TIMESTAMP] += pd.to_timedelta(days, unit="D")
    assert S.later_rows(by_time).tolist() == later.tolist()
    assert {f.column for f in validate("training_set", by_time, project).failures} == {CLICK, REPIN}


def test_explicit_feedback_rates_pass_and_a_head_without_positives_is_a_note(project):
    """Every row a like or a hate (KuaiRand's explicit-feedback shape): 81% repin, no clicks."""
    df = periods(training_rows(400))
    rng = np.random.default_rng(7)
    df[REPIN] = (rng.random(len(df)) < 0.81).astype(int)
    df[HIDE] = 1 - df[REPIN]
    df[CLICK] = 0
    report = validate("training_set", df, project)
    assert report.success, report.to_text()
    assert f"{CLICK}: no positives in the training period" in report.to_text()
    assert not any(REPIN in n or HIDE in n for n in report.notes[1:])
    lo, hi = report.parameters["label_repin_min_rate"], report.parameters["label_repin_max_rate"]
    train_rate, n_later = df.loc[df["split"] == "train", REPIN].mean(), (df["split"] != "train").sum()
    tolerated = train_rate * 0.5 - 0.01  # then 3 standard errors of a rate at that bound
    assert (lo, hi) == (round(tolerated - 3 * np.sqrt(tolerated * (1 - tolerated) / n_later), 6), 1.0)
    # a head without positives in training that gets some later is drift, not a note
    df.loc[df["split"] != "train", CLICK] = 1
    assert failure(validate("training_set", df, project), "positive_rate", CLICK).observed_value == 1.0
    # the recipe's own bounds replace the derived ones
    bounded = validate("training_set", df.assign(**{CLICK: 0}), project,
                       label_rate_bounds={"click": (0.005, 0.8)})
    assert failure(bounded, "positive_rate", CLICK).observed_value == 0.0


def test_positive_rate_bounds_are_configurable(project):
    df = training_rows()  # one period (one day, no split column): rates are not compared
    df[CLICK] = 1
    report = validate("training_set", df, project)
    assert report.success and "one period" in report.notes[0]
    assert report.notes[1].startswith(f"{CLICK}: no negatives in the training period")
    report = validate("training_set", df, project, label_rate_bounds={"click": (0.5, 1.0)})
    assert report.success, report.to_text()
    assert report.parameters["label_click_max_rate"] == 1.0
    tight = validate("training_set", training_rows(), project, label_hide_max_rate=0.01)
    assert failure(tight, "positive_rate", HIDE)
    loose = validate("training_set", periods(training_rows(400)), project, label_rate_tolerance=(0.0, 0.0))
    assert checks(loose) <= {"positive_rate"}  # no tolerance: the later rates must equal training's
    with pytest.raises(UserError, match="unknown parameter"):
        validate("training_set", df, project, label_like_max_rate=0.5)
    with pytest.raises(UserError, match="periods"):
        validate("training_set", df, project, periods="nope")
    with pytest.raises(UserError, match=r"must be \(min, max\)"):
        validate("training_set", df, project, label_rate_bounds={"click": (0.5,)})
    assert S.later_rows(df.assign(split="test")) is None  # no training rows: one period


def test_leakage_sequence_time_at_or_after_request(project):
    df = training_rows()
    row = 4  # a row with 3 actions
    request_ms = df.at[row, F.EVENT_TIMESTAMP].value // 1_000_000
    times = list(df.at[row, F.SEQ_ACTION_TIMES])
    times[0] = request_ms  # same millisecond as the request: leaks the label
    df.at[row, F.SEQ_ACTION_TIMES] = times
    report = validate("training_set", df, project)
    assert checks(report) == {"leakage"}
    f = failure(report, "leakage", "_no_leakage")
    assert f.examples == [{"row": row, F.REQUEST_ID: df.at[row, F.REQUEST_ID], F.PIN_ID: df.at[row, F.PIN_ID]}]


def test_excessive_nulls(project):
    df = training_rows()
    df.loc[df.index[:20], F.PIN_EMBEDDING] = None  # 10% > 5%
    df.loc[df.index[:4], F.SEQ_LENGTH] = None  # 2%: within the bound
    df.loc[df.index[:80], F.PROFILE_DAYS_ACTIVE_28D] = None  # 40%: new users, within the profile bound
    report = validate("training_set", df, project)
    assert checks(report) == {"null_rate"}
    assert failure(report, "null_rate").column == F.PIN_EMBEDDING


def test_profile_nulls_beyond_their_bound(project):
    df = training_rows()
    df.loc[df.index[: int(len(df) * 0.6)], F.PROFILE_REPIN_RATE_28D] = None  # 60% > 50%
    report = validate("training_set", df, project)
    assert failure(report, "null_rate").column == F.PROFILE_REPIN_RATE_28D


def test_null_sequences_within_bound_and_empty_lists(project):
    df = training_rows()
    for i in range(4):  # 2% null sequences; the rest include empty lists
        df.at[i, F.SEQ_ACTION_TIMES] = None
    assert (df[F.SEQ_LENGTH] == 0).any()
    assert validate("training_set", df, project).success
    for i in range(4, 20):  # 10% null
        df.at[i, F.SEQ_ACTION_TIMES] = None
    assert failure(validate("training_set", df, project), "null_rate", F.SEQ_ACTION_TIMES)


def test_missing_label_column(project):
    report = validate("training_set", training_rows().drop(columns=[HIDE]), project)
    assert failure(report, "missing_column", HIDE)


# ----------------------------------------------------------------- derivation and report


def test_derived_time_comparisons_are_exact():
    ts = NOW_TS + pd.Timedelta(microseconds=500)  # request at NOW + 0.5 ms (us precision)
    df = pd.DataFrame({F.EVENT_TIMESTAMP: pd.Series([ts, ts]).dt.as_unit("us"),
                       F.SEQ_PIN_IDS: [[1], [1]], F.SEQ_ACTION_TYPES: [[1], [1]],
                       F.SEQ_ACTION_TIMES: [[NOW], [NOW + 1]], F.SEQ_LENGTH: [1, 1]})
    seq = S.derive_columns("sequence_features", df)
    assert seq["_max_time_ok"].tolist() == [True, False]
    train = S.derive_columns("training_set", df.assign(embedding=[[0.0] * DIM] * 2))
    assert train["_no_leakage"].tolist() == [True, False]  # NOW is strictly before NOW + 0.5 ms
    assert S.derive_columns("action_events", df) is df  # no derived columns: no copy


def test_derived_columns_of_shared_cells_are_per_row():
    """One sequence object on many rows (a request's impressions) is read once, but each row is
    judged against its own timestamp, and the answers equal those of separate copies."""
    shared_times, shared_pins, shared_acts = [NOW - 5, NOW - 9], [3, 4], [1, 2]
    ts = pd.Series([NOW_TS, NOW_TS - pd.Timedelta(milliseconds=7), NOW_TS, NOW_TS]).dt.as_unit("us")
    rows = {F.EVENT_TIMESTAMP: ts, F.SEQ_LENGTH: [2, 2, 2, 3],
            F.SEQ_PIN_IDS: [shared_pins] * 3 + [[1, 2, 3]],
            F.SEQ_ACTION_TYPES: [shared_acts] * 3 + [[1, 9, 1]],
            F.SEQ_ACTION_TIMES: [shared_times] * 3 + [[NOW - 1, NOW - 2, NOW - 3]],
            "embedding": [[0.0] * DIM] * 2 + [[1.0] * 3, None]}
    shared = S.derive_columns("training_set", pd.DataFrame(rows))
    copies = S.derive_columns("training_set", pd.DataFrame(
        {k: [list(v) if isinstance(v, list) else v for v in vals] for k, vals in rows.items()}))
    assert shared["_no_leakage"].tolist() == [True, False, True, True]  # row 1: NOW - 5 >= its time
    assert shared["_aligned"].tolist() == [True, True, True, True]
    assert shared["_embedding_dim"].tolist()[:3] == [DIM, DIM, 3] and pd.isna(shared["_embedding_dim"][3])
    for col in S.SUITE_DERIVED["training_set"]:
        assert shared[col].equals(copies[col]), col


def test_report_text_and_dict(project):
    df = events(30)
    df["action_type"] = "like"
    df.loc[0, "user_id"] = 0
    report = validate("action_events", df, project)
    assert not report and not report.success
    unknown = failure(report, "unknown_action")
    assert unknown.unexpected_count == 30 and len(unknown.examples) == S.MAX_EXAMPLES
    text = report.to_text()
    assert "FAILED" in text and "action_type" in text and "30 unexpected" in text
    data = json.loads(json.dumps(report.to_dict()))
    assert data["success"] is False and data["rows"] == 30
    assert {f["check"] for f in data["failures"]} == {"unknown_action", "bad_id"}
    assert {"type", "column", "unexpected_count", "examples"} <= set(data["failures"][0])


def test_failing_rows_for_the_dead_letter_path(project):
    df = events(20).assign(arrival_time=NOW)
    assert runner.failing_rows("action_events", df, project_dir=project, settings=SETTINGS) == {}
    df.loc[3, "action_type"] = "like"
    df.loc[5, ["user_id", "event_id"]] = df.loc[4, ["user_id", "event_id"]].to_numpy()  # row 4 stays valid
    df.loc[7, "event_time"] = NOW + 120_000
    rejected = runner.failing_rows("action_events", df, project_dir=project, settings=SETTINGS,
                                   now_ms=NOW, max_future_skew_ms=60_000)
    assert sorted(rejected) == [3, 5, 7]
    assert rejected[3].startswith("unknown_action: expect_column_values_to_be_in_set(action_type)")
    assert "duplicate_event_id" in rejected[5] and "future_time" in rejected[7]
    # a batch-level failure rejects every row
    whole = runner.failing_rows("action_events", events(5).drop(columns=["pin_id"]),
                                project_dir=project, settings=SETTINGS, now_ms=NOW)
    assert sorted(whole) == [0, 1, 2, 3, 4] and "missing_column" in whole[0]


def test_the_stream_skips_only_structure_checks_and_rejects_the_same_rows(project):
    full = runner.get_project(project).suite("action_events")
    values = runner.get_project(project).suite("action_events", structure=False)
    kept = {e.expectation_type for e in values.expectations}
    assert not kept & S.STRUCTURE_TYPES and len(values.expectations) == 7
    assert len(full.expectations) - len(values.expectations) == 15  # exists, not null, types x 5
    df = events(20).assign(arrival_time=NOW)
    df.loc[3, "action_type"] = "like"
    df.loc[5, ["user_id", "event_id"]] = df.loc[4, ["user_id", "event_id"]].to_numpy()
    df.loc[7, "event_time"] = NOW + 120_000
    df.loc[9, "pin_id"] = MAX_ID + 1
    df.loc[11, "event_id"] = "x" * 500
    both = [runner.failing_rows("action_events", df, project_dir=project, settings=SETTINGS,
                                now_ms=NOW, max_future_skew_ms=60_000, structure=structure)
            for structure in (True, False)]
    assert both[0] == both[1] and sorted(both[0]) == [3, 5, 7, 9, 11]


def test_the_consumers_batch_frame_meets_the_structure_checks_by_construction(project):
    """The stream skips the structure checks because `events_frame` guarantees them: the whole
    suite passes on what it builds from parsed events, edge values included."""
    from homefeed.events import ActionEvent
    from homefeed.stream.frames import events_frame

    evs = [ActionEvent(f"e{i}", [1, MAX_ID, 7][i % 3], [MAX_ID, 1, 42][i % 3], ActionType(1 + i % 3),
                       MIN_EVENT_TIME_MS + i, surface=["homefeed", "", "search"][i % 3])
           for i in range(9)]
    for batch in (evs, evs[:1]):
        frame = events_frame(batch, [NOW] * len(batch))
        report = runner.validate_dataframe("action_events", frame, project_dir=project,
                                           settings=SETTINGS, now_ms=NOW)
        assert report.success, report.to_text()


def test_run_checkpoint_stores_result(project):
    report = runner.run_checkpoint("pin_features", pin_rows(), settings=SETTINGS, project_dir=project)
    assert report.success, report.to_text()
    df = pin_rows()
    df.loc[0, F.PIN_ID] = -1
    report = runner.run_checkpoint("pin_features", df, settings=SETTINGS, project_dir=project)
    assert checks(report) == {"bad_id"}
    # results go under HOMEFEED_HOME, never into the project (the source tree, or an image's)
    stored = list((project.parent / "home" / "validation" / "validations" / "pin_features").rglob("*.json"))
    assert len(stored) >= 2
    assert not list((project / "gx").rglob("*pin_features*/**/*.json"))


def test_unknown_suite_name(project):
    with pytest.raises(UserError, match="unknown checkpoint"):
        runner.validate_dataframe("events", events(), project_dir=project)


# ----------------------------------------------------------------------- context on disk


def test_init_is_idempotent_and_deterministic(project, tmp_path):
    def snapshot(root: Path) -> dict[str, str]:
        gx_dir = root / "gx"
        return {str(p.relative_to(gx_dir)): p.read_text() for p in sorted(gx_dir.rglob("*"))
                if p.is_file() and "uncommitted" not in p.parts and p.name != ".ge_store_backend_id"}

    other = tmp_path / "validation"
    S.init_context(other)
    first = snapshot(other)
    S.init_context(other)
    assert snapshot(other) == first  # rerun: byte-identical
    fresh, ours = dict(first), snapshot(project)
    for files in (fresh, ours):  # a fresh context differs only in its random data_context_id
        files["great_expectations.yml"] = "\n".join(
            line for line in files["great_expectations.yml"].splitlines()
            if not line.startswith("data_context_id"))
    assert fresh == ours
    assert {"expectations/action_events.json", "checkpoints/training_set.json",
            "validation_definitions/sequence_features.json"} <= set(first)
    assert S.context_drift(other) == []


def test_drift_is_detected(tmp_path):
    root = tmp_path / "validation"
    S.init_context(root)
    path = root / "gx" / "expectations" / "pin_features.json"
    suite = json.loads(path.read_text())
    suite["expectations"].pop()
    path.write_text(json.dumps(suite))
    assert any("pin_features" in p for p in S.context_drift(root))
    assert vcli.cmd_init(argparse.Namespace(project_dir=root, check=True)) == 1
    assert vcli.cmd_init(argparse.Namespace(project_dir=root, check=False)) == 0
    assert S.context_drift(root) == []


def test_committed_context_matches_code():
    """validation/ in the repo is what `homefeed validate init` writes from this code."""
    committed = Path(__file__).resolve().parents[1] / "validation"
    if not S.context_exists(committed):
        pytest.skip("validation/ has not been generated yet (run `homefeed validate init`)")
    assert S.context_drift(committed) == []


# -------------------------------------------------------------------------- data loading


def test_load_parquet_roundtrip_keeps_list_and_time_types(project, tmp_path):
    path = tmp_path / "seq.parquet"
    sequence_rows().to_parquet(path)
    df = runner.load_data(path)
    assert isinstance(df.at[2, F.SEQ_PIN_IDS], np.ndarray)
    assert validate("sequence_features", df, project).success
    train = tmp_path / "train.parquet"
    training_rows().to_parquet(train)
    assert validate("training_set", runner.load_data(train), project).success


def test_load_jsonl(project, tmp_path):
    path = tmp_path / "events.jsonl"
    events().to_json(path, orient="records", lines=True)
    df = runner.load_data(path)
    assert df["event_time"].dtype == np.int64  # not parsed as dates despite the _time suffix
    assert validate("action_events", df, project).success
    seq = tmp_path / "seq.jsonl"
    sequence_rows().to_json(seq, orient="records", lines=True, date_format="iso")
    df = runner.load_data(seq)
    assert isinstance(df[F.EVENT_TIMESTAMP].dtype, pd.DatetimeTZDtype)
    assert validate("sequence_features", df, project).success


def test_load_missing_file(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        runner.load_data(tmp_path / "nope.parquet")


def test_load_unsupported_file(tmp_path):
    path = tmp_path / "events.csv"
    path.write_text("a,b\n1,2\n")
    with pytest.raises(UserError, match="unsupported data file"):
        runner.load_data(path)


def test_load_corrupt_parquet(tmp_path):
    path = tmp_path / "broken.parquet"
    path.write_bytes(b"this is not parquet")
    with pytest.raises(UserError, match="cannot read parquet"):
        runner.load_data(path)


def test_load_bad_jsonl_line(tmp_path):
    path = tmp_path / "events.jsonl"
    path.write_text('{"event_id": "a"}\n{"event_id": \n')
    with pytest.raises(UserError, match=r"events.jsonl:2: not valid JSON"):
        runner.load_data(path)


# ------------------------------------------------------------------------------- command


@pytest.fixture
def cli_env(monkeypatch, tmp_path):
    """Default settings for the command (no homefeed.toml, no HOMEFEED_* overrides)."""
    monkeypatch.chdir(tmp_path)
    for name in ("HOMEFEED_CONFIG", "HOMEFEED_EMBEDDING_DIM", "HOMEFEED_SEQUENCE_LENGTH",
                 "HOMEFEED_MAX_FUTURE_SKEW_MS"):
        monkeypatch.delenv(name, raising=False)
    runner._default_settings.cache_clear()
    yield tmp_path
    runner._default_settings.cache_clear()


def run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    """Like `homefeed validate ...`: UserError -> message on stderr, exit 2."""
    parser = argparse.ArgumentParser(prog="homefeed validate")
    vcli.register(parser)
    args = parser.parse_args(argv)
    try:
        code = int(args.func(args) or 0)
    except UserError as exc:
        print(f"homefeed: error: {exc}", file=__import__("sys").stderr)
        code = 2
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_run_passes(project, cli_env, capsys):
    path = cli_env / "events.parquet"
    events().to_parquet(path)
    code, out, _ = run_cli(["run", "action_events", "--data", str(path), "--now-ms", str(NOW),
                            "--project-dir", str(project)], capsys)
    assert code == 0 and "action_events: OK" in out


def test_cli_run_fails_with_counts_and_examples(project, cli_env, capsys):
    df = events()
    df.loc[[1, 2], "action_type"] = "share"
    df.loc[3, "event_time"] = 123
    path = cli_env / "events.jsonl"
    df.to_json(path, orient="records", lines=True)
    code, out, _ = run_cli(["run", "action_events", "--data", str(path), "--now-ms", str(NOW),
                            "--project-dir", str(project)], capsys)
    assert code == 1
    assert "FAILED" in out
    assert "expect_column_values_to_be_in_set(action_type) [unknown_action]: 2 unexpected" in out
    assert "'share'" in out and "[ancient_time]" in out
    code, out, _ = run_cli(["run", "action_events", "--data", str(path), "--now-ms", str(NOW),
                            "--project-dir", str(project), "--json"], capsys)
    assert code == 1 and json.loads(out)["success"] is False


def test_cli_run_param_override(project, cli_env, capsys):
    df = training_rows()
    df[CLICK] = 1
    path = cli_env / "train.parquet"
    df.to_parquet(path)
    base = ["run", "training_set", "--data", str(path), "--project-dir", str(project)]
    assert run_cli(base, capsys)[0] == 0  # one period: the rate is not compared
    assert run_cli(base + ["--param", "label_click_max_rate=0.9"], capsys)[0] == 1
    code, _, err = run_cli(base + ["--param", "label_click_max_rate"], capsys)
    assert code == 2 and "NAME=VALUE" in err


def test_cli_usage_errors_exit_2(project, cli_env, capsys):
    path = cli_env / "events.parquet"
    events().to_parquet(path)
    code, out, err = run_cli(["run", "no_such_checkpoint", "--data", str(path),
                              "--project-dir", str(project)], capsys)
    assert code == 2 and "unknown checkpoint 'no_such_checkpoint'" in err and "action_events" in err
    code, _, err = run_cli(["run", "action_events", "--data", str(cli_env / "missing.parquet"),
                            "--project-dir", str(project)], capsys)
    assert code == 2 and "missing.parquet does not exist" in err
    unreadable = cli_env / "events.jsonl"
    unreadable.write_text("not json\n")
    code, _, err = run_cli(["run", "action_events", "--data", str(unreadable),
                            "--project-dir", str(project)], capsys)
    assert code == 2 and "not valid JSON" in err
    code, _, err = run_cli(["run", "action_events", "--data", str(path),
                            "--project-dir", str(cli_env / "nowhere")], capsys)
    assert code == 2 and "validate init" in err


def test_cli_through_homefeed_main(project, cli_env, capsys, monkeypatch):
    from homefeed import cli as main_cli

    if not any(name == "validate" for name, _, _ in main_cli.STAGES):
        monkeypatch.setattr(main_cli, "STAGES", [*main_cli.STAGES,
                            ("validate", "homefeed.validation.cli", "data validation")])
    path = cli_env / "pins.parquet"
    pin_rows().to_parquet(path)
    argv = ["validate", "run", "pin_features", "--data", str(path), "--project-dir", str(project)]
    assert main_cli.main(argv) == 0
    assert main_cli.main(["validate", "run", "nope", "--data", str(path)]) == 2
    assert "homefeed: error: unknown checkpoint" in capsys.readouterr().err


def test_cli_list_and_init_check(project, cli_env, capsys):
    code, out, _ = run_cli(["list", "--project-dir", str(project)], capsys)
    assert code == 0 and "in sync" in out
    for name in S.CHECKPOINT_NAMES:
        assert f"{name}:" in out
    assert "max_event_time_ms" in out and "label_repin_min_rate" in out
    code, out, _ = run_cli(["init", "--check", "--project-dir", str(project)], capsys)
    assert code == 0 and "in sync" in out


def test_cli_docs(project, cli_env, capsys):
    code, out, _ = run_cli(["docs", "--project-dir", str(project)], capsys)
    index = Path(out.strip())
    assert code == 0 and index.name == "index.html" and index.is_file()
    assert index.is_relative_to(project.parent / "home" / "validation")  # not the project's uncommitted/


def test_bench_validate_json(project, capsys):
    from homefeed.bench import validation as bench

    parser = argparse.ArgumentParser(prog="homefeed bench")
    bench.add_bench_validate_parser(parser.add_subparsers())
    args = parser.parse_args(["validate", "--json", "--sizes", "200", "--repeats", "2",
                              "--project-dir", str(project)])
    assert args.func is bench.bench_validate
    assert args.func(args) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["suite"] == "action_events"
    passing = [r for r in data["results"] if r["passing"]]
    assert [r["events"] for r in passing] == [200]
    assert passing[0]["median_ms"] > 0 and passing[0]["p95_ms"] >= passing[0]["median_ms"]
    stream = passing[0]["stream_path"]
    assert stream["median_ms"] > 0 and stream["p95_ms"] >= stream["median_ms"]


# ----------------------------------------------------------- plain GX and `great_expectations`


def test_plain_gx_runs_the_stored_checkpoints_without_parameters(project):
    """GX 1.x has no default for a $PARAMETER: the stored suites hold the defaults, so a plain
    `checkpoint.run(batch_parameters={"dataframe": df})` works (after derive_columns, for the
    suites with list columns) and still catches defects."""
    context = runner.get_project(project).context  # a plain GX FileDataContext
    good = {S.ACTION_EVENTS: events(), S.SEQUENCE_FEATURES: sequence_rows(),
            S.PIN_FEATURES: pin_rows(), S.TRAINING_SET: training_rows()}
    for name, df in good.items():
        data = df if name == S.ACTION_EVENTS else S.derive_columns(name, df)
        result = context.checkpoints.get(name).run(batch_parameters={"dataframe": data})
        assert result.success, name
    bad = events()
    bad.loc[4, "action_type"] = "like"
    result = context.checkpoints.get(S.ACTION_EVENTS).run(batch_parameters={"dataframe": bad})
    assert not result.success
    # the stored default of a parameter is what plain GX checks; the runner still fills it in
    far = events()
    far.loc[0, "event_time"] = S.DEFAULT_MAX_EVENT_TIME_MS + 1
    assert not context.checkpoints.get(S.ACTION_EVENTS).run(batch_parameters={"dataframe": far}).success
    soon = events()
    soon.loc[0, "event_time"] = NOW + 86_400_000
    assert context.checkpoints.get(S.ACTION_EVENTS).run(batch_parameters={"dataframe": soon}).success
    assert checks(validate(S.ACTION_EVENTS, soon, project)) == {"future_time"}


def gx_command(argv: list[str], capsys) -> tuple[int, str, str]:
    from homefeed.validation import gx_cli

    try:
        code = gx_cli.main(argv)
    except SystemExit as exc:  # argparse usage errors
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def test_great_expectations_command_lists(project, capsys):
    code, out, _ = gx_command(["-c", str(project), "checkpoint", "list"], capsys)
    assert code == 0 and out.startswith(f"Found {len(S.CHECKPOINT_NAMES)} Checkpoints.")
    assert [line.strip(" -") for line in out.splitlines()[1:]] == sorted(S.CHECKPOINT_NAMES)
    for config in (project / "gx", project / "gx" / "great_expectations.yml"):
        assert gx_command(["--config", str(config), "suite", "list"], capsys)[1].splitlines()[0] == \
            f"{len(S.SUITE_NAMES)} Expectation Suites found:"


def test_great_expectations_checkpoint_run_exit_codes(project, cli_env, capsys):
    run = ["-c", str(project), "checkpoint", "run", "action_events", "--now-ms", str(NOW), "--data"]
    good = cli_env / "good.parquet"
    events().to_parquet(good)
    code, out, _ = gx_command(run + [str(good)], capsys)
    assert code == 0 and "action_events: OK" in out and "Validation succeeded!" in out
    defects = {
        "unknown_action": lambda df: df.assign(action_type=["like"] + list(df.action_type[1:])),
        "bad_id": lambda df: df.assign(user_id=[0] + list(df.user_id[1:])),
        "duplicate_event_id": lambda df: df.assign(event_id=[df.event_id[1]] + list(df.event_id[1:]),
                                                   user_id=[df.user_id[1]] + list(df.user_id[1:])),
        "future_time": lambda df: df.assign(event_time=[NOW + 3_600_000] + list(df.event_time[1:])),
        "ancient_time": lambda df: df.assign(event_time=[NOW // 1000] + list(df.event_time[1:])),
        "missing_column": lambda df: df.drop(columns="pin_id"),
        "wrong_type": lambda df: df.assign(user_id=df.user_id.astype(float)),
    }
    for check, plant in defects.items():
        path = cli_env / f"{check}.parquet"
        plant(events()).to_parquet(path)
        code, out, _ = gx_command(run + [str(path)], capsys)
        assert code == 1, (check, out)
        assert f"[{check}]" in out and "Validation failed!" in out
    assert gx_command(["-c", str(project), "checkpoint", "run", "nope", "--data", str(good)], capsys)[0] == 2
    assert gx_command(run + [str(cli_env / "missing.parquet")], capsys)[0] == 2
    assert gx_command(["-c", str(project), "checkpoint"], capsys)[0] == 2
    code, out, _ = gx_command(["-c", str(project), "docs", "build", "--no-view", "--site-name", "local_site"],
                              capsys)
    assert code == 0 and Path(out.strip()).name == "index.html"
    assert gx_command(["-c", str(project), "docs", "build", "--site-name", "s3_site"], capsys)[0] == 2
    code, _, err = gx_command(["-c", str(cli_env), "checkpoint", "list"], capsys)
    assert code == 2 and err.startswith("great_expectations: error: no Great Expectations context")


def test_great_expectations_checkpoint_run_defaults_to_the_offline_log(project, cli_env, capsys,
                                                                       monkeypatch):
    from homefeed import offline_log

    monkeypatch.setenv("HOMEFEED_HOME", str(cli_env / "home"))
    run = ["-c", str(project), "checkpoint", "run"]
    code, _, err = gx_command(run + ["action_events"], capsys)
    assert code == 2 and "no action_events rows" in err
    frame = events(6).assign(arrival_time=NOW)  # the consumer's log columns
    frame[F.EVENT_TIMESTAMP] = offline_log.to_utc_us(frame["event_time"])
    frame[F.CREATED] = offline_log.to_utc_us(frame["arrival_time"])
    offline_dir = cli_env / "home" / "offline"
    offline_log.append(offline_dir, "action_events", frame)
    offline_log.append(offline_dir, "action_events", frame.head(2))  # a replayed batch
    code, out, _ = gx_command(run + ["action_events"], capsys)
    assert code == 0 and "passed on 6 rows" in out
    code, _, err = gx_command(run + ["training_set"], capsys)
    assert code == 2 and "pass --data" in err


def test_great_expectations_is_a_console_script():
    import importlib
    import tomllib

    scripts = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]["scripts"]
    module, _, func = scripts["great_expectations"].partition(":")
    from homefeed.validation import gx_cli

    assert getattr(importlib.import_module(module), func) is gx_cli.main


# ------------------------------------------------------------------------ impression_events
def impressions(n: int = 30) -> pd.DataFrame:
    return events(n).drop(columns=["action_type"]).assign(
        event_id=[f"i{i // 5}-{i % 5}" for i in range(n)], request_id=np.arange(n, dtype=np.int64) // 5)


def test_impression_events_suite_shares_the_action_rules_and_checks_request_ids(project):
    df = impressions()
    report = validate(S.IMPRESSION_EVENTS, df, project, now_ms=NOW)
    assert report.success, report.to_text()
    assert report.evaluated == len(S.suite_specs()[S.IMPRESSION_EVENTS].checks)
    df.loc[0, "request_id"] = -1  # sent without one: valid
    df.loc[2, "request_id"] = -7
    df.loc[4, "pin_id"] = 0
    df.loc[6, "event_time"] = NOW + 120_000
    df.loc[9, ["user_id", "event_id"]] = df.loc[8, ["user_id", "event_id"]].to_numpy()  # 8 stays valid
    rejected = runner.failing_rows(S.IMPRESSION_EVENTS, df, project_dir=project, settings=SETTINGS,
                                   now_ms=NOW, max_future_skew_ms=60_000, structure=False)
    assert sorted(rejected) == [2, 4, 6, 9]
    assert rejected[2].startswith("bad_id") and "request_id" in rejected[2]
    assert "future_time" in rejected[6] and "duplicate_event_id" in rejected[9]
    # an impression frame has no action_type, and an action suite check never runs on it
    assert "action_type" not in {c.column for c in S.suite_specs()[S.IMPRESSION_EVENTS].checks}
