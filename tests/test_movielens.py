"""MovieLens adapter: small hand-made GroupLens files (both layouts) -> the world file contract."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers import assert_same_contract_as_generator

from homefeed.cli import main
from homefeed.errors import UserError
from homefeed.events import MIN_EVENT_TIME_MS, action_names
from homefeed.features import LABEL_COLUMNS
from homefeed.world import DAY_MS, WORLD_FILES, load_world
from homefeed.world.movielens import (
    ImportParams,
    RatingMapping,
    genre_embedding,
    import_movielens,
    parse_bucket,
    read_movielens,
)

PARQUETS = [name for name in WORLD_FILES if name.endswith(".parquet")]
DAY_S = 86_400
BASE_S = 874_713_600  # 1997-09-20 00:00 UTC, ML-100K's first day (a Saturday)
GENRES = ["unknown", "Action", "Comedy", "Drama", "Sci-Fi"]
# item -> genre flags (index into GENRES); item 12 is never rated.
ITEM_GENRES = {
    1: [1], 2: [1, 4], 3: [2], 4: [2, 3], 5: [3], 6: [3, 4], 7: [1, 2], 8: [4],
    9: [2], 10: [3], 11: [1, 3], 12: [0],
}
EVAL_ONLY_ITEM = 11  # rated only on the last days (evaluation period)
N_DAYS = 10
EVAL_DAYS = 3  # split day 7
PARAMS = ImportParams(embedding_dim=8, eval_days=EVAL_DAYS, core_min_events=6)


def make_ratings(seed: int = 7) -> list[tuple[int, int, int, int]]:
    """(user, item, rating, unix seconds): 8 users over 10 days, many same-second ties."""
    rng = np.random.default_rng(seed)
    rows: dict[tuple[int, int], tuple[int, int]] = {}
    for user in range(1, 9):
        days = sorted(rng.choice(N_DAYS - EVAL_DAYS, size=2 + user % 3, replace=False).tolist())
        if user % 2:
            days.append(int(rng.integers(N_DAYS - EVAL_DAYS, N_DAYS)))
        for day in days:
            second = BASE_S + day * DAY_S + int(rng.integers(3_600, 80_000))
            for item in rng.choice(10, size=int(rng.integers(2, 6)), replace=False).tolist():
                if (user, item + 1) in rows:
                    continue
                # Half of the ratings of a day share the day's first second (ties).
                t = second if rng.random() < 0.5 else second + int(rng.integers(1, 500))
                rows[(user, item + 1)] = (int(rng.integers(1, 6)), t)
    # Fixed rows: a three-way tie (items 9, 3, 5 in one second) and the eval-only item, and
    # ratings on day 0 and on the last day so the span is exactly N_DAYS days.
    tie_s = BASE_S + 1 * DAY_S + 50_000
    for item, rating in ((9, 5), (3, 1), (5, 3)):
        rows[(9, item)] = (rating, tie_s)
    rows[(9, 1)] = (4, BASE_S + 600)
    rows[(2, EVAL_ONLY_ITEM)] = (5, BASE_S + (N_DAYS - 1) * DAY_S + 100)
    rows[(3, EVAL_ONLY_ITEM)] = (2, BASE_S + (N_DAYS - 2) * DAY_S + 100)
    return [(u, i, r, t) for (u, i), (r, t) in sorted(rows.items())]


def write_100k(path: Path, ratings, *, shuffle: int | None = None) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    rows = list(ratings)
    if shuffle is not None:
        rows = [rows[i] for i in np.random.default_rng(shuffle).permutation(len(rows))]
    (path / "u.data").write_text("".join(f"{u}\t{i}\t{r}\t{t}\n" for u, i, r, t in rows))
    (path / "u.genre").write_text("".join(f"{g}|{k}\n" for k, g in enumerate(GENRES)) + "\n")
    lines = []
    for item, flags in ITEM_GENRES.items():
        bits = "|".join("1" if k in flags else "0" for k in range(len(GENRES)))
        lines.append(f"{item}|Movie {item} (1995)|01-Jan-1995||http://x/{item}|{bits}\n")
    (path / "u.item").write_text("".join(lines), encoding="latin-1")
    return path


def write_csv(path: Path, ratings) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "ratings.csv").write_text(
        "userId,movieId,rating,timestamp\n" + "".join(f"{u},{i},{float(r)},{t}\n" for u, i, r, t in ratings))
    lines = ["movieId,title,genres\n"]
    for item, flags in ITEM_GENRES.items():
        genres = "|".join(GENRES[k] for k in flags if k) or "(no genres listed)"
        lines.append(f'{item},"Movie {item}, The (1995)",{genres}\n')
    (path / "movies.csv").write_text("".join(lines))
    return path


@pytest.fixture(scope="module")
def ratings():
    return make_ratings()


@pytest.fixture(scope="module", params=["ml-100k", "csv"])
def layout_world(request, tmp_path_factory, ratings):
    root = tmp_path_factory.mktemp(request.param)
    src = (write_100k if request.param == "ml-100k" else write_csv)(root / "src", ratings)
    import_movielens(src, root / "world", PARAMS)
    return load_world(root / "world")


@pytest.fixture(scope="module")
def world_dir(tmp_path_factory, ratings):
    root = tmp_path_factory.mktemp("ml")
    import_movielens(write_100k(root / "src", ratings), root / "world", PARAMS)
    return root / "world"


@pytest.fixture(scope="module")
def world(world_dir):
    return load_world(world_dir)


# -- the rating -> action mapping --------------------------------------------------------------


def test_default_mapping():
    m = RatingMapping()
    names = ["", "repin", "click", "hide"]
    got = [names[a] for a in m.actions(np.array([0.5, 1, 2, 2.5, 3, 3.5, 4, 4.5, 5]))]
    assert got == ["hide", "hide", "hide", "", "click", "click", "repin", "repin", "repin"]


def test_mapping_is_configurable():
    m = RatingMapping.parse(["repin=5,click=4", "hide=2.5"])
    assert (m.repin, m.click, m.hide) == (5, 4, 2.5)
    assert m.actions(np.array([5, 4.5, 4, 3, 2.5])).tolist() == [1, 2, 2, 0, 3]
    assert RatingMapping.parse(None) == RatingMapping()
    for bad, message in (("like=4", "ACTION=RATING"), ("repin=x", "not a rating"),
                         ("repin", "ACTION=RATING"), ("click=5,repin=4", "hide < click <= repin")):
        with pytest.raises(UserError, match=re.escape(message)):
            RatingMapping.parse(bad)


def test_labels_and_events_follow_the_mapping(layout_world, ratings):
    w = layout_world
    rating = {(u, i): r for u, i, r, _ in ratings}
    want = {r: ("repin" if r >= 4 else "click" if r == 3 else "hide") for r in range(1, 6)}
    ev = w.events
    assert len(ev) == len(ratings)  # every rating is one event
    assert [want[rating[(u, i)]] for u, i in zip(ev.user_id, ev.pin_id)] == ev.action_type.tolist()
    assert ev.event_id.tolist() == [f"ml{u}-{i}" for u, i in zip(ev.user_id, ev.pin_id)]
    assert (ev.surface == "movielens").all()
    req = w.requests
    assert (req[list(LABEL_COLUMNS)].sum(axis=1) == 1).all()  # one label per rated item
    joined = ev.merge(req, on=["request_id", "pin_id"], how="left", suffixes=("", "_req"),
                      validate="one_to_one")
    assert (joined.user_id == joined.user_id_req).all()
    for action in action_names():
        rows = joined[joined.action_type == action]
        assert (rows[f"label_{action}"] == 1).all() and len(rows) == req[f"label_{action}"].sum()


def test_custom_mapping_leaves_unmapped_ratings_as_ignored_impressions(tmp_path, ratings):
    params = ImportParams(embedding_dim=8, eval_days=EVAL_DAYS,
                          mapping=RatingMapping.parse("repin=5,click=4,hide=1"))
    meta = import_movielens(write_100k(tmp_path / "src", ratings), tmp_path / "w", params)
    w = load_world(tmp_path / "w")
    middle = sum(1 for _, _, r, _ in ratings if r in (2, 3))
    assert len(w.events) == len(ratings) - middle == meta["summary"]["events"]
    assert len(w.requests) == len(ratings)
    assert (w.requests[list(LABEL_COLUMNS)].sum(axis=1) == 0).sum() == middle
    assert meta["mapping"]["spec"] == "repin=5,click=4,hide=1"


# -- time: ties, total order, no leakage into histories ------------------------------------------


def test_ties_are_broken_by_item_id_within_the_second(world):
    ev = world.events
    shift = world.meta["movielens"]["time_shift_ms"]
    tie = ev[ev.user_id == 9].sort_values("event_time")
    tie_s = BASE_S + DAY_S + 50_000
    in_tie = tie[(tie.event_time - shift) // 1000 == tie_s]
    assert in_tie.pin_id.tolist() == [3, 5, 9]
    assert in_tie.event_time.is_monotonic_increasing and in_tie.event_time.is_unique
    # Each user's events are totally ordered: no two share an event time.
    assert not ev.duplicated(["user_id", "event_time"]).any()
    # ... and every event stays inside its original second.
    original = {(u, i): t for u, i, _, t in make_ratings()}
    secs = (ev.event_time - shift) // 1000
    assert (secs.to_numpy() == [original[(u, i)] for u, i in zip(ev.user_id, ev.pin_id)]).all()


def test_tie_breaking_is_stable_under_input_order(tmp_path, ratings, world_dir):
    src = write_100k(tmp_path / "src", ratings, shuffle=3)
    import_movielens(src, tmp_path / "w", PARAMS)
    for name in WORLD_FILES:
        assert (tmp_path / "w" / name).read_bytes() == (world_dir / name).read_bytes(), name


def test_requests_see_only_strictly_earlier_events(layout_world):
    w = layout_world
    req = w.requests.drop_duplicates("request_id")[["request_id", "user_id", "request_time"]]
    ev = w.events.merge(req[["request_id", "request_time"]].rename(
        columns={"request_time": "own_request_time"}), on="request_id")
    assert (ev.own_request_time < ev.event_time).all()  # a request's own ratings come after it
    # Every (request, event of the same user) pair: the event is strictly before the request
    # and then belongs to an earlier request, or strictly after and belongs to it or a later one.
    pairs = ev.merge(req, on="user_id", suffixes=("_ev", ""))
    assert len(pairs) > len(ev)
    assert (pairs.event_time != pairs.request_time).all()
    before = pairs.event_time < pairs.request_time
    assert (pairs.own_request_time[before] < pairs.request_time[before]).all()
    assert (pairs.own_request_time[~before] >= pairs.request_time[~before]).all()
    assert before.any() and (~before).any()
    # Arrival after the event, no late arrivals.
    lag = ev.arrival_time - ev.event_time
    assert (lag == PARAMS.arrival_delay_ms).all()


def test_request_is_the_users_ratings_of_one_day(layout_world):
    w = layout_world
    ev = w.events.assign(day=lambda d: (d.event_time - w.start_ms) // DAY_MS)
    per_request = ev.groupby("request_id").agg(users=("user_id", "nunique"), days=("day", "nunique"))
    assert (per_request.users == 1).all() and (per_request.days == 1).all()
    assert ev.groupby(["user_id", "day"]).request_id.nunique().eq(1).all()


def test_bucket_and_max_items_split_requests(tmp_path, ratings):
    src = write_100k(tmp_path / "src", ratings)
    import_movielens(src, tmp_path / "w", ImportParams(embedding_dim=8, eval_days=EVAL_DAYS, max_items=2))
    w = load_world(tmp_path / "w")
    ev = w.events.assign(second=lambda d: d.event_time // 1000)
    # One user's ratings of one second are never split over two requests ...
    assert ev.groupby(["user_id", "second"]).request_id.nunique().eq(1).all()
    # ... otherwise a request holds fewer than max_items ratings before its last second.
    last = ev.groupby("request_id").second.transform("max")
    assert (ev[ev.second < last].groupby("request_id").size() < 2).all()
    assert ev.groupby("request_id").size().max() > 2  # a tie group made one request bigger
    n_days = ev.assign(d=ev.event_time // DAY_MS).groupby(["user_id", "d"]).ngroups
    assert ev.request_id.nunique() > n_days
    req = w.requests.drop_duplicates("request_id")
    own = w.events.merge(req[["request_id", "request_time"]], on="request_id")
    assert (own.request_time < own.event_time).all()
    assert parse_bucket("day") == DAY_MS and parse_bucket("hour") == 3_600_000
    assert parse_bucket("30m") == 1_800_000 and parse_bucket("6h") == 6 * 3_600_000
    for bad in ("7h", "2d", "week", "0s"):
        with pytest.raises(UserError, match="bucket"):
            parse_bucket(bad)


def test_time_shift_keeps_weekday_and_lands_after_2000(world):
    meta = world.meta
    shift = meta["movielens"]["time_shift_ms"]
    assert shift % (7 * DAY_MS) == 0 and shift > 0
    assert world.start_ms == BASE_S * 1000 + shift >= MIN_EVENT_TIME_MS
    assert meta["start_iso"] == "2000-01-01T00:00:00Z"  # 1997-09-20 + 119 weeks
    assert meta["days"] == N_DAYS and meta["split_day"] == N_DAYS - EVAL_DAYS
    assert meta["split_ms"] == world.start_ms + (N_DAYS - EVAL_DAYS) * DAY_MS
    assert world.events.event_time.min() >= MIN_EVENT_TIME_MS
    assert (world.pins.pin_created_ms >= world.start_ms).all()


def test_recent_data_is_not_shifted_and_start_can_be_set(tmp_path, ratings):
    later = [(u, i, r, t + 200_000_000) for u, i, r, t in ratings]  # 2004
    src = write_100k(tmp_path / "src", later)
    meta = import_movielens(src, tmp_path / "a", PARAMS)
    assert meta["movielens"]["time_shift_ms"] == 0
    start = 1_767_571_200_000  # 2026-01-05
    meta = import_movielens(src, tmp_path / "b", dataclasses.replace(PARAMS, **{"start_ms": start}))
    assert meta["start_ms"] == start
    with pytest.raises(UserError, match="midnight"):
        import_movielens(src, tmp_path / "c", dataclasses.replace(PARAMS, **{"start_ms": start + 1}))


# -- items, embeddings, users ---------------------------------------------------------------------


def test_pins_topics_and_creation(layout_world, ratings):
    w = layout_world
    pins = w.pins
    rated = sorted({i for _, i, _, _ in ratings})
    assert pins.pin_id.tolist() == rated  # items never rated are not pins
    emb = np.stack(pins.embedding.to_numpy())
    assert emb.shape == (len(rated), 8) and emb.dtype == np.float32
    assert np.allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    names = w.meta["topics"]
    assert w.meta["n_topics"] == len(names) == w.params.n_topics
    for pin, topic in zip(pins.pin_id, pins.topic_id):
        assert names[topic] in [GENRES[k] for k in ITEM_GENRES[pin]]
    # Created at the UTC day start of the first rating; shown only after creation.
    first = w.events.groupby("pin_id").event_time.min()
    created = pins.set_index("pin_id").pin_created_ms
    assert (created == w.start_ms + (first - w.start_ms) // DAY_MS * DAY_MS).all()
    shown = w.requests.merge(pins, on="pin_id")
    assert (shown.pin_created_ms < shown.request_time).all()
    assert pins.pin_duration_ms.isna().all()  # a rating log has no running time: all unknown


def test_primary_genre_is_the_most_specific_one(world):
    pins = world.pins.set_index("pin_id")
    # The least frequent of the item's genres in the catalogue; ties: the lower genre index.
    counts = np.zeros(len(GENRES), dtype=int)
    for flags in ITEM_GENRES.values():
        counts[flags] += 1
    for pin, flags in ITEM_GENRES.items():
        if pin in pins.index:
            want = min(flags, key=lambda k: (counts[k], k))
            assert pins.topic_id[pin] == want


def test_eval_only_item_gets_a_genre_only_embedding(layout_world):
    w = layout_world
    data_genres = np.zeros((1, len(w.meta["topics"])), dtype=bool)
    for k in ITEM_GENRES[EVAL_ONLY_ITEM]:
        data_genres[0, w.meta["topics"].index(GENRES[k])] = True
    want = genre_embedding(data_genres, PARAMS)[0]
    got = w.pin_embedding_matrix()[EVAL_ONLY_ITEM]
    np.testing.assert_array_equal(got, want)
    # Items rated in training get a collaborative part: not equal to their genre-only vector.
    trained = w.events[w.events.event_time < w.meta["split_ms"]].pin_id.unique()
    pins = w.pins.set_index("pin_id")
    for pin in trained:
        flags = np.zeros((1, len(w.meta["topics"])), dtype=bool)
        flags[0, [w.meta["topics"].index(GENRES[k]) for k in ITEM_GENRES[pin]]] = True
        assert not np.allclose(pins.embedding[pin], genre_embedding(flags, PARAMS)[0]), pin
    emb_info = w.meta["summary"]["embedding"]
    assert emb_info["items_with_cf"] == len(trained)
    assert emb_info["items_genre_only"] == len(w.pins) - len(trained) >= 1


def test_eval_period_ratings_never_change_an_embedding(tmp_path, ratings, world):
    split_s = BASE_S + (N_DAYS - EVAL_DAYS) * DAY_S
    rows = {}
    for u, i, r, t in ratings:
        if split_s <= t < BASE_S + (N_DAYS - 1) * DAY_S and (u + i) % 2:
            continue  # drop some evaluation ratings (keep the last day: the span stays)
        rows[(u, i)] = ((r % 5) + 1 if t >= split_s else r, t)  # and change the rest
    # New evaluation-period ratings, of items also rated in training and of a new item (12).
    added = 0
    for u, i, r, t in ((7, 8, 5, split_s + 5_000), (8, 2, 1, split_s + DAY_S + 9),
                       (5, 4, 2, split_s + 3), (6, 1, 5, split_s + 40), (1, 12, 4, split_s + 77)):
        if (u, i) not in rows:
            rows[(u, i)] = (r, t)
            added += 1
    assert added >= 2
    changed = [(u, i, r, t) for (u, i), (r, t) in sorted(rows.items())]
    assert changed != ratings
    import_movielens(write_100k(tmp_path / "src", changed), tmp_path / "w", PARAMS)
    other = load_world(tmp_path / "w")
    assert other.meta["split_ms"] == world.meta["split_ms"]
    a = world.pins.set_index("pin_id").embedding
    b = other.pins.set_index("pin_id").embedding
    for pin in a.index.intersection(b.index):
        np.testing.assert_array_equal(a[pin], b[pin], err_msg=f"pin {pin}")
    # The training part of the requests table is unchanged too.
    split = world.meta["split_ms"]
    ra, rb = world.requests, other.requests
    pd.testing.assert_frame_equal(ra[ra.request_time < split].reset_index(drop=True),
                                  rb[rb.request_time < split].reset_index(drop=True))


def test_user_segments_by_training_events(world, ratings):
    split_s = BASE_S + (N_DAYS - EVAL_DAYS) * DAY_S
    n_train = pd.Series([u for u, _, _, t in ratings if t < split_s]).value_counts()
    users = world.users.set_index("user_id")
    for user, row in users.iterrows():
        n = int(n_train.get(user, 0))
        want = "core" if n >= PARAMS.core_min_events else "casual" if n else "new"
        assert row.segment == want and row.is_core == (want == "core")
    first = world.requests.groupby("user_id").request_time.min()
    assert (users.first_active_ms == first).all()


# -- negatives --------------------------------------------------------------------------------------


def test_negatives_are_unrated_catalogue_items_with_zero_labels(tmp_path, ratings):
    src = write_100k(tmp_path / "src", ratings)
    params = dataclasses.replace(PARAMS, **{"negatives": 2})
    import_movielens(src, tmp_path / "a", params)
    w = load_world(tmp_path / "a")
    req, ev = w.requests, w.events
    is_neg = req[list(LABEL_COLUMNS)].sum(axis=1) == 0
    neg = req[is_neg]
    assert len(neg) > 0 and neg.groupby("request_id").size().max() <= 2
    assert (~is_neg).groupby(req.request_id).sum().min() >= 1  # the rated items stay
    assert (~is_neg).sum() == len(ev) == len(ratings)
    assert not req.duplicated(["request_id", "pin_id"]).any()
    # Never an item the user rated before or in this request (a later rating is allowed) ...
    rated = neg.merge(ev[["user_id", "pin_id", "event_time"]], on=["user_id", "pin_id"])
    assert (rated.event_time > rated.request_time).all()
    # ... and always an item already in the catalogue (created before the request).
    shown = neg.merge(w.pins, on="pin_id")
    assert (shown.pin_created_ms < shown.request_time).all()
    per_request = req.groupby("request_id").position.agg(["min", "max", "size"])
    assert (per_request["min"] == 0).all() and (per_request["max"] + 1 == per_request["size"]).all()
    # Deterministic, and the seed matters.
    import_movielens(src, tmp_path / "b", params)
    import_movielens(src, tmp_path / "c", dataclasses.replace(params, seed=5))
    requests = {name: (tmp_path / name / "requests.parquet").read_bytes() for name in "abc"}
    assert requests["a"] == requests["b"] and requests["a"] != requests["c"]


# -- contract, determinism, CLI ---------------------------------------------------------------------


def test_same_schemas_and_sort_orders_as_the_generator(tmp_path, world_dir, world):
    meta = assert_same_contract_as_generator(world_dir, tmp_path)
    assert meta["source"] == "movielens-100k" and meta["negatives"] == 0
    req = world.requests
    ids = req.drop_duplicates("request_id")
    assert ids.request_id.tolist() == list(range(1, len(ids) + 1))
    assert (req.day == (req.request_time - world.start_ms) // DAY_MS).all()
    assert req.day.between(0, N_DAYS - 1).all()
    assert world.params.days == N_DAYS and world.end_ms == world.start_ms + N_DAYS * DAY_MS
    assert world.pin_embedding_matrix().shape == (12, 8)
    assert meta["summary"]["requests"] == len(ids) and meta["summary"]["events"] == len(world.events)


def test_both_layouts_give_the_same_interactions(tmp_path, ratings, world_dir):
    import_movielens(write_csv(tmp_path / "csv", ratings), tmp_path / "w", PARAMS)
    for name in ("requests.parquet", "events.parquet", "users.parquet"):
        a = pd.read_parquet(world_dir / name)
        b = pd.read_parquet(tmp_path / "w" / name)
        pd.testing.assert_frame_equal(a, b)
    meta = json.loads((tmp_path / "w" / "world.json").read_text())
    assert meta["source"] == "movielens-csv"
    assert meta["topics"] == ["(no genres listed)", "Action", "Comedy", "Drama", "Sci-Fi"]


def test_csv_half_star_ratings_and_quoted_titles(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "ratings.csv").write_text("userId,movieId,rating,timestamp\n"
                                     "1,10,4.5,1500000000\n1,20,2.5,1500000000\n"
                                     "2,20,0.5,1500090000\n2,10,3.5,1500200000\n")
    (src / "movies.csv").write_text('movieId,title,genres\n10,"Heat, The (1995)",Action|Crime\n'
                                    "20,Toy Story (1995),Animation|Children|Comedy\n")
    params = ImportParams(embedding_dim=8, eval_days=1, mapping=RatingMapping.parse("hide=2.5"))
    meta = import_movielens(src, tmp_path / "w", params)
    w = load_world(tmp_path / "w")
    assert meta["movielens"]["time_shift_ms"] == 0  # 2017: no shift
    by = w.events.set_index("event_id").action_type.to_dict()
    assert by == {"ml1-10": "repin", "ml1-20": "hide", "ml2-20": "hide", "ml2-10": "click"}
    assert meta["topics"] == ["(no genres listed)", "Action", "Animation", "Children", "Comedy", "Crime"]


def test_import_is_deterministic_and_the_cli_matches(tmp_path, world_dir, capsys, ratings):
    src = write_100k(tmp_path / "src", ratings)
    args = ["world", "import-movielens", "--src", str(src), "--out", str(tmp_path / "cli"),
            "--embedding-dim", "8", "--eval-days", str(EVAL_DAYS), "--core-min-events", "6",
            "--mapping", "repin=4,click=3,hide=2"]
    assert main(args) == 0
    assert "world written to" in capsys.readouterr().out
    for name in WORLD_FILES:
        assert (tmp_path / "cli" / name).read_bytes() == (world_dir / name).read_bytes(), name


# -- errors ------------------------------------------------------------------------------------------


def test_exact_duplicate_rows_are_dropped_and_counted(tmp_path, ratings, world_dir):
    src = write_100k(tmp_path / "src", list(ratings) + list(ratings[:3]))
    meta = import_movielens(src, tmp_path / "world", PARAMS)
    assert meta["summary"]["duplicate_rows_dropped"] == 3
    for name in PARQUETS:
        assert (tmp_path / "world" / name).read_bytes() == (world_dir / name).read_bytes()


def test_missing_directory_and_files(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        import_movielens(tmp_path / "nope", tmp_path / "w", PARAMS)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="holds no MovieLens ratings"):
        import_movielens(tmp_path / "empty", tmp_path / "w", PARAMS)
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "u.data").write_text("1\t1\t5\t874724710\n")
    with pytest.raises(UserError, match="no u.item"):
        import_movielens(tmp_path / "half", tmp_path / "w", PARAMS)
    (tmp_path / "csvhalf").mkdir()
    (tmp_path / "csvhalf" / "ratings.csv").write_text("userId,movieId,rating,timestamp\n")
    with pytest.raises(UserError, match="no movies.csv"):
        import_movielens(tmp_path / "csvhalf", tmp_path / "w", PARAMS)
    assert not (tmp_path / "w").exists()


@pytest.mark.parametrize("line, message", [
    ("1\tx\t5\t874724710", "line 3: bad item id"),
    ("1\t2\tfive\t874724710", "line 3: bad rating"),
    ("1\t2\t5", "line 3: bad timestamp"),
    ("0\t2\t5\t874724710", "line 3: bad user id"),
    ("1\t2\t5\t874724710.5", "line 3: bad timestamp"),
    ("1\t99\t5\t874724710", "missing from the item file"),
    ("1\t1\t3\t874724799", "repeated (user, item)"),
])
def test_unparseable_ratings_are_user_errors(tmp_path, line, message):
    src = write_100k(tmp_path / "src", [(1, 1, 5, BASE_S + 10), (2, 3, 4, BASE_S + 20)])
    with open(src / "u.data", "a") as fh:
        fh.write(line + "\n")
    with pytest.raises(UserError, match=re.escape(message)):
        read_movielens(src)


def test_bad_item_files_and_options(tmp_path, ratings):
    src = write_100k(tmp_path / "src", ratings)
    with open(src / "u.item", "a", encoding="latin-1") as fh:
        fh.write("13|Broken|01-Jan-1995||url|1|0\n")
    with pytest.raises(UserError, match=r"u.item line 13: expected 10 '\|'-separated fields"):
        read_movielens(src)
    good = write_100k(tmp_path / "good", ratings)
    with pytest.raises(UserError, match="--eval-days 10"):
        import_movielens(good, tmp_path / "w", ImportParams(embedding_dim=8, eval_days=10))
    with pytest.raises(UserError, match="embedding_dim"):
        import_movielens(good, tmp_path / "w", ImportParams(embedding_dim=1))
    csv_src = write_csv(tmp_path / "csv", ratings)
    (csv_src / "ratings.csv").write_text("user,movie,rating,time\n1,1,4,874724710\n")
    with pytest.raises(UserError, match="expected the header"):
        read_movielens(csv_src)
    assert not (tmp_path / "w").exists()


def test_cli_reports_user_errors(tmp_path, capsys):
    assert main(["world", "import-movielens", "--src", str(tmp_path / "nope"),
                 "--out", str(tmp_path / "w")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["world", "import-movielens", "--src", str(tmp_path), "--out", str(tmp_path / "w"),
                 "--bucket", "7h"]) == 2
    assert "bucket" in capsys.readouterr().err


def test_movielens_has_no_impressions(world, world_dir):
    """Its negatives are sampled, not shown: nothing goes to the impressions topic."""
    assert json.loads((world_dir / "world.json").read_text())["has_impressions"] is False
    assert not world.has_impressions and world.impressions().empty
