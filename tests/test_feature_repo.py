"""The Feast repo against real Redis: apply, push, online read, point-in-time read."""

import os
import shutil
import subprocess

import numpy as np
import pandas as pd
import pytest

from homefeed import features as F
from homefeed import offline_log
from homefeed.feature_store import open_store

pytestmark = pytest.mark.integration

T0 = pd.Timestamp("2026-01-05 12:00", tz="UTC")


def sequence_row(user_id: int, ts: pd.Timestamp, created: pd.Timestamp, n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    newest = ts.value // 1_000_000
    return {
        F.USER_ID: user_id, F.EVENT_TIMESTAMP: ts, F.CREATED: created,
        F.SEQ_PIN_IDS: rng.integers(1, 10_000, n).astype(np.int64),
        F.SEQ_ACTION_TYPES: rng.integers(1, 4, n).astype(np.int32),
        F.SEQ_ACTION_TIMES: newest - np.sort(rng.integers(0, 86_400_000, n)).astype(np.int64),
        F.SEQ_LENGTH: np.int32(n),
    }


def test_feast_cli_apply_works_on_a_fresh_copy(stack, tmp_path):
    from conftest import REPO_ROOT

    repo = tmp_path / "feature_repo"
    shutil.copytree(REPO_ROOT / "feature_repo", repo, ignore=shutil.ignore_patterns("data"))
    feast = shutil.which("feast", path=os.path.dirname(os.sys.executable))
    env = dict(os.environ, HOMEFEED_HOME=str(tmp_path / "home"))  # nothing logged yet
    result = subprocess.run([feast, "-c", str(repo), "apply"], capture_output=True, text=True,
                            timeout=180, cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    assert "WARNING" not in result.stderr, result.stderr  # every batch source validates
    for view in F.SEQUENCE_VIEWS:
        assert (tmp_path / "home" / "offline" / view.name / offline_log.SCHEMA_FILE).is_file()
    assert (tmp_path / "home" / "feast" / "registry.db").is_file()  # the home's one registry
    assert not (repo / "data").exists()
    listed = subprocess.run([feast, "-c", str(repo), "feature-views", "list"], capture_output=True,
                            text=True, timeout=120, cwd=tmp_path, env=env)
    for view in (F.PIN_FEATURES, F.USER_ACTION_SEQUENCE, F.USER_IMPRESSION_SEQUENCE, F.USER_PROFILE):
        assert view in listed.stdout
    sources = subprocess.run([feast, "-c", str(repo), "data-sources", "list"], capture_output=True,
                             text=True, timeout=120, cwd=tmp_path, env=env)
    assert "user_actions_stream" in sources.stdout  # the Kafka topic is documented in the registry


def test_a_registry_nothing_was_applied_to_is_one_clear_line(stack, tmp_path):
    """Another home has its own (empty) registry: opening the store says so, it does not fail
    later with Feast's FeatureViewNotFoundException; the CLI prints that one line."""
    from conftest import REPO_ROOT

    from homefeed.errors import UserError

    env = dict(os.environ, HOMEFEED_HOME=str(tmp_path / "empty-home"))
    saved = os.environ["HOMEFEED_HOME"]
    os.environ["HOMEFEED_HOME"] = env["HOMEFEED_HOME"]
    try:
        with pytest.raises(UserError, match="nothing has been applied.*homefeed feast apply"):
            open_store(REPO_ROOT / "feature_repo")
    finally:
        os.environ["HOMEFEED_HOME"] = saved
    homefeed = shutil.which("homefeed", path=os.path.dirname(os.sys.executable))
    result = subprocess.run([homefeed, "feast", "user", "1", "--repo", str(REPO_ROOT / "feature_repo")],
                            capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "nothing has been applied" in lines[0], result.stderr
    assert not (tmp_path / "empty-home" / "feast" / "registry.db").exists()


def test_a_corrupt_registry_is_one_line_and_feast_apply_rebuilds_it(stack, tmp_path):
    """A truncated registry.db: opening the store (every consumer, the service) is one line
    naming the file and the command; `homefeed feast apply` sets the bad file aside and rebuilds."""
    from conftest import REPO_ROOT

    home = tmp_path / "home"
    env = dict(os.environ, HOMEFEED_HOME=str(home))
    homefeed = shutil.which("homefeed", path=os.path.dirname(os.sys.executable))
    repo = ["--repo", str(REPO_ROOT / "feature_repo")]
    applied = subprocess.run([homefeed, "feast", "apply", *repo], capture_output=True, text=True,
                             timeout=300, env=env)
    assert applied.returncode == 0, applied.stderr[-2000:]
    registry = home / "feast" / "registry.db"
    registry.write_bytes(registry.read_bytes()[: registry.stat().st_size // 2])

    for argv in (["feast", "user", "1", *repo], ["stream", "consume", "--exit-when-idle", "1"]):
        result = subprocess.run([homefeed, *argv], capture_output=True, text=True, timeout=300, env=env)
        assert result.returncode == 2, result.stderr[-2000:]
        lines = [line for line in result.stderr.strip().splitlines() if "Warning" not in line]
        assert len(lines) == 1 and str(registry) in lines[0] and "homefeed feast apply" in lines[0], \
            result.stderr[-2000:]
        assert "Traceback" not in result.stderr

    rebuilt = subprocess.run([homefeed, "feast", "apply", *repo], capture_output=True, text=True,
                             timeout=300, env=env)
    assert rebuilt.returncode == 0, rebuilt.stderr[-2000:]
    assert "was corrupt" in rebuilt.stderr and list(registry.parent.glob("registry.db.corrupt-*"))
    ok = subprocess.run([homefeed, "feast", "user", "1", *repo], capture_output=True, text=True,
                        timeout=300, env=env)
    assert ok.returncode == 0, ok.stderr[-2000:]


def test_push_100_long_sequence_reads_back_equal_from_redis(feature_repo):
    store = open_store(feature_repo)
    row = sequence_row(101, T0, T0, 100, seed=1)
    store.push("user_action_sequence_push", pd.DataFrame([row]))
    got = store.get_online_features(
        features=F.feature_refs(F.USER_ACTION_SEQUENCE, F.SEQUENCE_FEATURE_NAMES),
        entity_rows=[{F.USER_ID: 101}],
    ).to_dict()
    assert got[F.SEQ_PIN_IDS][0] == row[F.SEQ_PIN_IDS].tolist()
    assert got[F.SEQ_ACTION_TYPES][0] == row[F.SEQ_ACTION_TYPES].tolist()
    assert got[F.SEQ_ACTION_TIMES][0] == row[F.SEQ_ACTION_TIMES].tolist()
    assert got[F.SEQ_LENGTH][0] == 100

    # Feast's Redis write skips rows that are not strictly newer: a replay changes nothing.
    stale = sequence_row(101, T0, T0, 5, seed=2)
    store.push("user_action_sequence_push", pd.DataFrame([stale]))
    again = store.get_online_features(
        features=[f"{F.USER_ACTION_SEQUENCE}:{F.SEQ_LENGTH}"], entity_rows=[{F.USER_ID: 101}]
    ).to_dict()
    assert again[F.SEQ_LENGTH][0] == 100


def test_point_in_time_rows_from_the_log(feature_repo, stack):
    """The same kind of rows through get_historical_features: latest row whose event time AND
    ingestion (created) time are <= the entity row's time; unknown users get nulls."""
    store = open_store(feature_repo)
    first = sequence_row(202, T0, T0, 100, seed=3)
    # A later version that describes 13:00 but was only ingested at 14:00 (a late event).
    late = sequence_row(202, T0 + pd.Timedelta("1h"), T0 + pd.Timedelta("2h"), 99, seed=4)
    offline_log.append(stack.offline_dir, F.USER_ACTION_SEQUENCE, pd.DataFrame([first]))
    offline_log.append(stack.offline_dir, F.USER_ACTION_SEQUENCE, pd.DataFrame([late]))

    entity = pd.DataFrame({
        F.USER_ID: [202, 202, 202, 999_999],
        F.EVENT_TIMESTAMP: pd.to_datetime([T0 + pd.Timedelta("30min"), T0 + pd.Timedelta("90min"),
                                           T0 + pd.Timedelta("3h"), T0]).astype("datetime64[us, UTC]"),
        "row": [0, 1, 2, 3],
    })
    out = store.get_historical_features(
        entity_df=entity, features=F.feature_refs(F.USER_ACTION_SEQUENCE, F.SEQUENCE_FEATURE_NAMES),
        filter_by_created_timestamp=True,
    ).to_df().sort_values("row").reset_index(drop=True)
    assert out[F.SEQ_LENGTH].tolist()[:3] == [100, 100, 99]  # 13:30: the 13:00 row was not servable yet
    assert list(out.loc[0, F.SEQ_PIN_IDS]) == first[F.SEQ_PIN_IDS].tolist()
    assert list(out.loc[2, F.SEQ_ACTION_TIMES]) == late[F.SEQ_ACTION_TIMES].tolist()
    assert pd.isna(out.loc[3, F.SEQ_LENGTH])  # a user with no sequence yet


def test_point_in_time_join_on_hard_cases(feature_repo, stack):
    """The offline store against a hand-computed answer: two rows with one event time and
    different created times (the newer created wins, unless it was not created yet), late
    arrivals kept out by the created-time filter, an exact duplicate log row, entity rows
    without any feature row (kept, with nulls), array columns read back exactly."""
    store = open_store(feature_repo)
    user, t = 303, T0 + pd.Timedelta("1d")
    a = sequence_row(user, t, t, 3, seed=5)
    b = sequence_row(user, t, t + pd.Timedelta("10min"), 7, seed=6)  # same event time, newer created
    late = sequence_row(user, t + pd.Timedelta("1h"), t + pd.Timedelta("5h"), 9, seed=7)
    # other partitions (days) and users, one exact duplicate written twice
    other = sequence_row(304, t - pd.Timedelta("2d"), t - pd.Timedelta("2d"), 2, seed=8)
    for rows in ([a, other], [b], [late], [b]):
        offline_log.append(stack.offline_dir, F.USER_ACTION_SEQUENCE, pd.DataFrame(rows))

    times = [t - pd.Timedelta("1min"), t + pd.Timedelta("5min"), t + pd.Timedelta("15min"),
             t + pd.Timedelta("2h"), t + pd.Timedelta("6h"), t, t]
    users = [user, user, user, user, user, 304, 888_888]
    want = [None, 3, 7, 7, 9, 2, None]  # newest servable row per request, by hand
    entity = pd.DataFrame({F.USER_ID: users, "row": range(len(users)),
                           F.EVENT_TIMESTAMP: pd.to_datetime(times).astype("datetime64[us, UTC]")})
    refs = F.feature_refs(F.USER_ACTION_SEQUENCE, F.SEQUENCE_FEATURE_NAMES)
    for _ in range(3):  # the same answer every run (no unstable sort decides a tie)
        out = store.get_historical_features(entity_df=entity, features=refs,
                                            filter_by_created_timestamp=True).to_df()
        out = out.sort_values("row").reset_index(drop=True)
        assert len(out) == len(entity)
        got = [None if pd.isna(n) else int(n) for n in out[F.SEQ_LENGTH]]
        assert got == want
        by_length = {3: a, 7: b, 9: late, 2: other}
        for i, n in enumerate(got):
            if n is None:
                assert out.loc[i, F.SEQ_PIN_IDS] is None or len(out.loc[i, F.SEQ_PIN_IDS]) == 0
                continue
            for col in (F.SEQ_PIN_IDS, F.SEQ_ACTION_TYPES, F.SEQ_ACTION_TIMES):
                assert list(out.loc[i, col]) == by_length[n][col].tolist()

    # A call whose rows all come later: a and b are history (only the newest is read), the late
    # row happened before the call's first row but arrived after it, so it is still considered.
    later = entity.iloc[[3, 4]].reset_index(drop=True)
    out = store.get_historical_features(entity_df=later, features=refs,
                                        filter_by_created_timestamp=True).to_df().sort_values("row")
    assert out[F.SEQ_LENGTH].tolist() == [7, 9]

    # Without the created-time filter the late row leaks into the request at +2 h.
    naive = store.get_historical_features(entity_df=entity, features=refs).to_df().sort_values("row")
    assert int(naive[F.SEQ_LENGTH].iloc[3]) == 9
