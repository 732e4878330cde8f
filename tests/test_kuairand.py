"""KuaiRand adapter: a few rows in the official layout (written here) -> the world file contract;
plus one run on the real KuaiRand-Pure slice when ../shared/data/kuairand-pure is present."""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers import assert_same_contract_as_generator

from homefeed.cli import main
from homefeed.errors import UserError
from homefeed.world import DAY_MS, WORLD_FILES, load_world
from homefeed.world.kuairand import KuaiRandParams, LabelMapping, import_kuairand

PARQUETS = [name for name in WORLD_FILES if name.endswith(".parquet")]
REAL = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "kuairand-pure"
LOG_HEADER = ("user_id,video_id,date,hourmin,time_ms,is_click,is_like,is_follow,is_comment,"
              "is_forward,is_hate,long_view,play_time_ms,duration_ms,profile_stay_time,"
              "comment_stay_time,is_profile_enter,is_rand,tab")
FLAGS = ("is_click", "is_like", "is_follow", "is_comment", "is_forward", "is_hate")
H = 3_600_000
# 2022-04-25 00:00 in Beijing (UTC+8) = 2022-04-24 16:00 UTC.
DAY0_BJ = 1_650_816_000_000
EIGHT_H = 8 * H
N_DAYS = 6
PARAMS = KuaiRandParams(embedding_dim=8, eval_days=2, max_vocab=50)


def row(user, video, t, play=1000, **flags) -> dict:
    out = {"user_id": user, "video_id": video, "time_ms": t, "play_time_ms": play}
    out.update({f: 0 for f in FLAGS})
    out.update({f"is_{k}" if not k.startswith("is_") else k: v for k, v in flags.items()})
    return out


def make_rows() -> list[dict]:
    """6 Beijing days, users 0..5, videos 0..9; every day's rows at 09:00 + minutes."""
    rng = np.random.default_rng(3)
    rows = []
    for user in range(6):
        for day in range(N_DAYS):
            if (user + day) % 3 == 0:
                continue
            videos = rng.choice(10, size=int(rng.integers(2, 6)), replace=False)
            for k, video in enumerate(videos.tolist()):
                t = DAY0_BJ + day * DAY_MS + 9 * H + k * 60_000 + int(rng.integers(0, 50_000))
                rows.append(row(user, video, t, click=int(rng.random() < 0.5)))
    # Fixed rows: like + click (repin wins), hate + click (hide wins), a same-ms tie of two
    # videos, an exact duplicate, a near duplicate, a video shown twice the same day.
    # Videos 20.. appear only here (and are missing from the video file: untagged).
    t = DAY0_BJ + 9 * H + 30 * 60_000
    rows += [row(0, 20, t, click=1, like=1), row(0, 21, t + 10, click=1, hate=1),
             row(0, 23, t + 20, click=1), row(0, 22, t + 20, click=1)]
    rows += [row(1, 24, DAY0_BJ + 1 * DAY_MS + 23 * H)] * 2  # exact duplicate (23:00 Beijing)
    rows += [row(1, 25, DAY0_BJ + 1 * DAY_MS + 23 * H + 5, play=1),
             row(1, 25, DAY0_BJ + 1 * DAY_MS + 23 * H + 5, play=2)]  # near duplicate: kept
    rows += [row(2, 26, DAY0_BJ + 2 * DAY_MS + 10 * H, click=1),
             row(2, 26, DAY0_BJ + 2 * DAY_MS + 11 * H, forward=1)]  # shown twice on one day
    return rows


def write_log(path: Path, rows, name="log_standard_4_22_to_5_08_pure.csv", *, shuffle=None, rand=0) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    rows = list(rows)
    if shuffle is not None:
        rows = [rows[i] for i in np.random.default_rng(shuffle).permutation(len(rows))]
    lines = [LOG_HEADER]
    for r in rows:
        t = r["time_ms"]
        d = dt.datetime.fromtimestamp((t + EIGHT_H) // 1000, dt.timezone.utc)
        vals = {**r, "date": d.strftime("%Y%m%d"), "hourmin": d.hour * 100, "long_view": 0,
                "duration_ms": 9000, "profile_stay_time": 0, "comment_stay_time": 0,
                "is_profile_enter": 0, "is_rand": rand, "tab": 1}
        lines.append(",".join(str(vals[c]) for c in LOG_HEADER.split(",")))
    (path / name).write_text("\n".join(lines) + "\n")
    return path


def write_features(path: Path, *, users=True, videos=True) -> None:
    if users:
        degrees = ["full_active", "high_active", "middle_active", "low_active", "UNKNOWN", "2_14_day_new"]
        (path / "user_features_pure.csv").write_text(
            "user_id,user_active_degree,is_lowactive_period,follow_user_num_range\n"
            + "".join(f'{u},{d},0,"[0,10)"\n' for u, d in enumerate(degrees)))
    if videos:
        tags = {0: "39", 1: "2", 2: '"20,43"', 3: "7", 4: '"62,7"', 5: "2", 6: "", 7: "39", 8: "43", 9: "7"}
        # videos 10..19: listed with a duration only (no upload date, no tag); 20 and up: not listed
        (path / "video_features_basic_pure.csv").write_text(
            "video_id,author_id,video_type,upload_dt,video_duration,tag\n"
            + "".join(f"{v},{100 + v},NORMAL,2022-04-1{v % 3},{VIDEO_DURATION[v]},{t}\n"
                      for v, t in tags.items())
            + "".join(f"{v},{100 + v},NORMAL,,{VIDEO_DURATION[v]},\n" for v in range(10, 20)))


# video_duration as KuaiRand writes it ("87433.0"), once as a plain integer, once empty (unknown)
VIDEO_DURATION = {v: f"{(v + 1) * 7_000}.0" for v in range(20)} | {6: "", 9: "12500"}


def expected_duration_ms(video: int) -> int | None:
    text = VIDEO_DURATION.get(video, "")
    return int(float(text)) if text else None


def labels_of(req, user, pin) -> list[int]:
    [one] = req.loc[(req.user_id == user) & (req.pin_id == pin),
                    ["label_repin", "label_click", "label_hide"]].to_numpy().tolist()
    return one


@pytest.fixture(scope="module")
def src(tmp_path_factory):
    d = write_log(tmp_path_factory.mktemp("kr") / "src", make_rows())
    write_features(d)
    return d


@pytest.fixture(scope="module")
def world_dir(src):
    out = src.parent / "world"
    import_kuairand(src, out, PARAMS)
    return out


@pytest.fixture(scope="module")
def world(world_dir):
    return load_world(world_dir)


def test_labels_follow_the_mapping_with_priority(world):
    req, ev = world.requests, world.events
    assert labels_of(req, 1, 21) == [1, 0, 0]  # ids + 1: user 0, video 20 (like + click)
    assert labels_of(req, 1, 22) == [0, 0, 1]  # hate + click
    shown = req[(req.user_id == 2) & (req.pin_id == 25)]  # no flag: labels all 0
    assert len(shown) == 1 and shown[["label_repin", "label_click", "label_hide"]].sum(axis=1).item() == 0
    # Every event matches one impression whose label is 1, every positive label has one event.
    m = ev.merge(req, on=["request_id", "pin_id", "user_id"], how="left", validate="one_to_one")
    assert m.request_time.notna().all() and (m.event_time > m.request_time).all()
    for name in ("repin", "click", "hide"):
        assert (m.loc[m.action_type == name, f"label_{name}"] == 1).all()
        assert req[f"label_{name}"].sum() == (ev.action_type == name).sum()
    assert (req[["label_repin", "label_click", "label_hide"]].sum(axis=1) <= 1).all()
    assert world.meta["mapping"]["spec"] == "repin=like|follow|forward|comment,click=click,hide=hate"


def test_mapping_is_configurable_and_recorded(tmp_path, src):
    mapping = LabelMapping.parse("repin=like,click=click|long_view,hide=")
    assert mapping.repin == ("is_like",) and mapping.click == ("is_click", "long_view") and mapping.hide == ()
    meta = import_kuairand(src, tmp_path / "w", KuaiRandParams(embedding_dim=8, eval_days=2, mapping=mapping))
    assert meta["mapping"]["hide"]["any_of"] == [] and meta["summary"]["events_by_action"]["hide"] == 0
    # The hated-and-clicked video is now a click.
    assert labels_of(load_world(tmp_path / "w").requests, 1, 22) == [0, 1, 0]
    for bad in ("repin=likes", "share=like", "repin=like,click=like"):
        with pytest.raises(UserError):
            LabelMapping.parse(bad)


def test_duplicates_ties_and_time(world):
    s = world.meta["summary"]
    assert s["duplicate_rows_dropped"] == 1  # the near duplicate (other play time) stays
    assert s["rows"] == len(make_rows()) and s["impressions"] == len(make_rows()) - 1
    ev = world.events
    req = world.requests
    # The same-ms pair: video 22 before video 23 (by id), 1 ms apart, after the +8 h shift.
    t = DAY0_BJ + 9 * H + 30 * 60_000 + 20 + EIGHT_H
    tie = req[(req.user_id == 1) & req.pin_id.isin([23, 24])]
    assert len(tie) == 2 and tie.request_id.nunique() == 1
    assert ev.loc[(ev.user_id == 1) & (ev.pin_id == 23), "event_time"].item() == t
    assert ev.loc[(ev.user_id == 1) & (ev.pin_id == 24), "event_time"].item() == t + 1
    assert not ev.duplicated(["user_id", "event_time"]).any()
    # The world's UTC days are the Beijing days: day 0 starts at 2022-04-25 00:00Z.
    assert world.start_ms == DAY0_BJ + EIGHT_H and world.start_ms % DAY_MS == 0
    assert world.params.days == N_DAYS and world.meta["split_day"] == N_DAYS - 2
    assert world.meta["kuairand"]["time_shift_ms"] == EIGHT_H


def test_tie_breaking_is_stable_under_input_order(tmp_path, world_dir):
    src = write_log(tmp_path / "src", make_rows(), shuffle=5)
    write_features(src)
    import_kuairand(src, tmp_path / "w", PARAMS)
    for name in (*PARQUETS, "world.json"):
        assert (tmp_path / "w" / name).read_bytes() == (world_dir / name).read_bytes(), name


def test_requests_are_a_users_day_and_never_repeat_a_video(world):
    req, ev = world.requests, world.events
    per = req.groupby("request_id").agg(user=("user_id", "nunique"), day=("day", "nunique"))
    assert (per.user == 1).all() and (per.day == 1).all()
    assert not req.duplicated(["request_id", "pin_id"]).any()
    twice = req[(req.user_id == 3) & (req.pin_id == 27)]
    assert len(twice) == 2 and twice.request_id.nunique() == 2
    assert world.meta["summary"]["requests_cut_at_a_repeated_video"] >= 1
    # A request sees only strictly earlier events: its own are all after request_time.
    first = req.drop_duplicates("request_id").set_index("request_id")["request_time"]
    assert (ev.event_time > first.loc[ev.request_id].to_numpy()).all()
    # Judgeable request counts are recorded per period and head.
    assert set(world.meta["summary"]["eval"]["judgeable_requests"]) >= {"click", "repin", "hide"}


def test_max_gap_cuts_requests(tmp_path, src, world):
    meta = import_kuairand(src, tmp_path / "w", KuaiRandParams(embedding_dim=8, eval_days=2,
                                                                max_gap_ms=20_000))
    assert meta["summary"]["requests"] > world.meta["summary"]["requests"]


def test_topics_from_first_tag_and_segments_from_activity_degree(world):
    pins = world.pins.set_index("pin_id")
    topics = world.meta["topics"]
    assert topics[pins.loc[5, "topic_id"]] == "62"  # video 4: tags 62,7 -> first tag
    assert topics[pins.loc[3, "topic_id"]] == "20"
    assert topics[pins.loc[7, "topic_id"]] == "untagged"  # video 6 has no tag
    assert topics[pins.loc[21, "topic_id"]] == "untagged"  # video 20 is not in the file
    assert world.params.n_topics == len(topics) == 7  # 2, 7, 20, 39, 43, 62, untagged
    users = world.users.set_index("user_id")
    assert users.loc[1, "segment"] == "full_active" and users.loc[1, "is_core"]
    assert users.loc[2, "segment"] == "high_active" and users.loc[2, "is_core"]
    assert users.loc[3, "segment"] == "middle_active" and not users.loc[3, "is_core"]
    assert users.loc[6, "segment"] == "2_14_day_new" and not users.loc[6, "is_core"]
    # Created: the upload day (2022-04-1x) when known, else the day of the first impression.
    listed = world.pins.pin_id <= 10
    assert (world.pins.pin_created_ms[listed] < world.start_ms).all()
    first = world.requests.groupby("pin_id").request_time.min() + 1
    day_start = world.start_ms + (first - world.start_ms) // DAY_MS * DAY_MS
    unlisted = world.pins[~listed].set_index("pin_id").pin_created_ms
    assert unlisted.equals(day_start.loc[unlisted.index].rename("pin_created_ms"))


def test_pin_durations_come_from_video_duration(world):
    """Durations in ms where the file has one; empty or not listed: null (unknown)."""
    pins = world.pins.set_index("pin_id")
    assert str(pins["pin_duration_ms"].dtype) == "Int64"
    for pin, got in pins["pin_duration_ms"].items():
        want = expected_duration_ms(pin - 1)  # homefeed id = KuaiRand id + 1
        assert (got is pd.NA) if want is None else got == want, (pin, got, want)
    assert pins.loc[7, "pin_duration_ms"] is pd.NA  # video 6: empty
    assert pins.loc[10, "pin_duration_ms"] == 12_500  # video 9: an integer in the file
    assert pins.loc[21, "pin_duration_ms"] is pd.NA  # video 20: not in the file
    assert world.meta["summary"]["pins_with_duration"] == int(pins["pin_duration_ms"].notna().sum()) > 0


def test_defaults_without_feature_files(tmp_path):
    src = write_log(tmp_path / "src", make_rows())
    meta = import_kuairand(src, tmp_path / "w", KuaiRandParams(embedding_dim=8, eval_days=2,
                                                                core_min_events=5))
    w = load_world(tmp_path / "w")
    assert meta["topics"] == ["all"] and (w.pins.topic_id == 0).all()
    assert w.pins.pin_duration_ms.isna().all() and meta["summary"]["pins_with_duration"] == 0
    assert set(w.users.segment) <= {"core", "casual", "new"}
    assert (w.users.is_core == (w.users.segment == "core")).all()
    assert meta["kuairand"]["segment_rule"].startswith("no user feature file")
    assert meta["kuairand"]["files"] == ["log_standard_4_22_to_5_08_pure.csv"]


def test_random_log_is_optional(tmp_path):
    src = write_log(tmp_path / "src", make_rows())
    write_log(src, [row(0, 1, DAY0_BJ + 3 * DAY_MS + 12 * H, click=1)],
              name="log_random_4_22_to_5_08_pure.csv", rand=1)
    meta = import_kuairand(src, tmp_path / "w", PARAMS)
    assert meta["summary"]["random_rows"] == 1
    assert "log_random_4_22_to_5_08_pure.csv" in meta["kuairand"]["files"]
    skip = import_kuairand(src, tmp_path / "w2", KuaiRandParams(embedding_dim=8, eval_days=2,
                                                                include_random=False))
    assert skip["summary"]["random_rows"] == 0
    assert skip["summary"]["impressions"] == meta["summary"]["impressions"] - 1


def test_eval_period_clicks_never_change_an_embedding(tmp_path, world):
    rows = make_rows()
    split = DAY0_BJ + (N_DAYS - 2) * DAY_MS
    flipped = [dict(r, is_click=1 - r["is_click"]) if r["time_ms"] >= split else r for r in rows]
    src = write_log(tmp_path / "src", flipped)
    write_features(src)
    import_kuairand(src, tmp_path / "w", PARAMS)
    other = load_world(tmp_path / "w")
    assert not other.requests.label_click.equals(world.requests.label_click)
    np.testing.assert_array_equal(other.pin_embedding_matrix(), world.pin_embedding_matrix())


def test_same_schemas_as_the_generator(tmp_path, world_dir, world):
    assert_same_contract_as_generator(world_dir, tmp_path)
    req = world.requests
    assert (req.user_id >= 1).all() and (req.pin_id >= 1).all()  # KuaiRand's id 0 -> 1


@pytest.mark.parametrize("edit, message", [
    (lambda s: s.replace("\n0,", "\n0x,", 1), "line 2: bad user_id '0x'"),
    (lambda s: s + "3,4,20220425,900,16508,1,0,0,0,0,2,0,1,1,0,0,0,0,1\n", "bad is_hate '2'"),
    (lambda s: s + "3,4,20220425,900,,1,0,0,0,0,0,0,1,1,0,0,0,0,1\n", "bad time_ms ''"),
    (lambda s: s.replace("is_hate", "hate"), "missing column(s) is_hate"),
])
def test_bad_rows_fail_before_anything_is_written(tmp_path, edit, message):
    src = write_log(tmp_path / "src", make_rows()[:5])
    log = src / "log_standard_4_22_to_5_08_pure.csv"
    log.write_text(edit(log.read_text()))
    with pytest.raises(UserError, match=re.escape(message)) as info:
        import_kuairand(src, tmp_path / "out", PARAMS)
    assert str(log) in str(info.value) and "\n" not in str(info.value)
    assert not (tmp_path / "out").exists()


def test_bad_feature_rows_and_layouts(tmp_path):
    src = write_log(tmp_path / "src", make_rows())
    (src / "video_features_basic_pure.csv").write_text("video_id,tag\n0,39\n1,2;3\n")
    with pytest.raises(UserError, match=r"video_features_basic_pure.csv line 3: bad tag"):
        import_kuairand(src, tmp_path / "out", PARAMS)
    for bad in ("-5.0", "1.5", "5e3", "abc", "90000000000.0"):  # negative, fraction, not digits, > 24 h
        (src / "video_features_basic_pure.csv").write_text(f"video_id,video_duration\n0,87433.0\n1,\n2,{bad}\n")
        with pytest.raises(UserError, match=rf"video_features_basic_pure.csv line 4: bad video_duration "
                                            rf"'{re.escape(bad)}' \(expected a duration in ms") as info:
            import_kuairand(src, tmp_path / "out", PARAMS)
        assert "\n" not in str(info.value)
    (src / "video_features_basic_pure.csv").unlink()
    (src / "user_features_pure.csv").write_text("user_id,user_active_degree\n0,full active\n")
    with pytest.raises(UserError, match=r"user_features_pure.csv line 2: bad user_active_degree"):
        import_kuairand(src, tmp_path / "out", PARAMS)
    with pytest.raises(UserError, match="no KuaiRand standard log"):
        import_kuairand(tmp_path, tmp_path / "out", PARAMS)
    write_log(src, make_rows()[:3], name="log_standard_4_08_to_4_21_1k.csv")
    with pytest.raises(UserError, match="mixes KuaiRand releases"):
        import_kuairand(src, tmp_path / "out", PARAMS)
    assert not (tmp_path / "out").exists()


def test_cli(tmp_path, src, world_dir, capsys):
    out = tmp_path / "w"
    assert main(["world", "import-kuairand", "--src", str(src), "--out", str(out), "--embedding-dim", "8",
                 "--eval-days", "2", "--max-vocab", "50"]) == 0
    assert "kuairand-pure" in capsys.readouterr().out
    for name in (*PARQUETS, "world.json"):
        assert (out / name).read_bytes() == (world_dir / name).read_bytes(), name
    assert main(["world", "import-kuairand", "--src", str(src), "--out", str(out),
                 "--mapping", "repin=nope"]) == 2
    err = capsys.readouterr().err
    assert "nope" in err and len(err.strip().splitlines()) == 1
    assert main(["world", "import-kuairand", "--src", str(src), "--out", str(out), "--eval-days", "9"]) == 2


def test_max_users_keeps_the_most_active_users(tmp_path, src):
    rows = make_rows()
    counts = {}
    for r in rows:
        counts[r["user_id"]] = counts.get(r["user_id"], 0) + 1
    counts[1] -= 1  # user 1's exact duplicate row is dropped before the slice
    top = sorted(counts, key=lambda u: (-counts[u], u))[:2]
    meta = import_kuairand(src, tmp_path / "w", replace(PARAMS, max_users=2))
    w = load_world(tmp_path / "w")
    assert sorted(w.users.user_id) == sorted(u + 1 for u in top)
    s = meta["summary"]
    assert s["rows_outside_the_user_slice"] == sum(c for u, c in counts.items() if u not in top)
    assert s["rows"] == len(rows) and meta["kuairand"]["max_users"] == 2
    assert main(["world", "import-kuairand", "--src", str(src), "--out", str(tmp_path / "w2"),
                 "--embedding-dim", "8", "--eval-days", "2", "--max-vocab", "50", "--max-users", "2"]) == 0
    assert (tmp_path / "w2" / "world.json").read_bytes() == (tmp_path / "w" / "world.json").read_bytes()


@pytest.mark.skipif(not REAL.is_dir(), reason="../shared/data/kuairand-pure is not present")
def test_real_kuairand_pure(tmp_path):
    meta = import_kuairand(REAL, tmp_path / "w", KuaiRandParams(max_vocab=500))
    s = meta["summary"]
    assert (s["rows"], s["duplicate_rows_dropped"], s["users"], s["pins"]) == (228_329, 5_460, 25_156, 6_361)
    assert s["impressions"] == 228_329 - 5_460
    assert s["events_by_action"]["click"] + s["events_by_action"]["repin"] + s["events_by_action"]["hide"] \
        == s["events"]
    assert meta["eval_days"] == 4 and meta["split_iso"] == "2022-05-05T00:00:00Z"
    assert s["eval"]["judgeable_requests"]["click"] > 1_500
    assert 0.05 < s["non_core_share"] < 0.2


# -- an explicit-feedback slice: every row a like or a hate, no clicks ------------------------

def explicit_feedback_rows() -> list[dict]:
    """6 Beijing days, users 0..7, 4-6 videos a day each; every row a like (~81%) or a hate."""
    rng = np.random.default_rng(11)
    rows = []
    for user in range(8):
        for day in range(N_DAYS):
            videos = rng.choice(30, size=int(rng.integers(4, 7)), replace=False)
            for k, video in enumerate(videos.tolist()):
                t = DAY0_BJ + day * DAY_MS + 10 * H + k * 60_000 + user * 1_000
                rows.append(row(user, video, t, **({"like": 1} if rng.random() < 0.81 else {"hate": 1})))
    return rows


def flat_dataset(world, path: Path):
    """The dataset `homefeed dataset build` would write for `world`, built without Kafka and
    Feast: each request's sequence = the user's events that arrived before it (newest first),
    the daily profile and pin features from the world; splits as the build assigns them."""
    import pandas as pd

    from homefeed import features as F
    from homefeed.events import ActionType
    from homefeed.training.dataset import Dataset, assign_splits, save_dataset

    imp = world.requests.copy()
    imp["split"] = assign_splits(imp["day"].to_numpy(), world.params.days, 1, 1, 2)
    imp = imp[imp["split"] != "warmup"].reset_index(drop=True)
    imp[F.EVENT_TIMESTAMP] = pd.to_datetime(imp["request_time"], unit="ms", utc=True).astype("datetime64[us, UTC]")
    pins = world.pins.rename(columns={"embedding": F.PIN_EMBEDDING, "topic_id": F.PIN_TOPIC})
    imp = imp.merge(pins, on=F.PIN_ID, how="left")
    users = world.users.set_index(F.USER_ID)
    ev = world.events.sort_values("event_time", ascending=False)
    req_rows = []
    for (rid, uid, t, day, split), _ in imp.groupby([F.REQUEST_ID, F.USER_ID, "request_time", "day", "split"]):
        past = ev[(ev[F.USER_ID] == uid) & (ev["arrival_time"] < t)]
        req_rows.append({
            F.REQUEST_ID: rid, F.USER_ID: uid, F.EVENT_TIMESTAMP: pd.Timestamp(t, unit="ms", tz="UTC"),
            "request_time_ms": t, "day": day, "split": split, "segment": users.at[uid, "segment"],
            "is_core": bool(users.at[uid, "is_core"]), F.SEQ_PIN_IDS: past[F.PIN_ID].to_numpy(np.int64),
            F.SEQ_ACTION_TYPES: np.array([ActionType[a.upper()] for a in past["action_type"]], np.int32),
            F.SEQ_ACTION_TIMES: past["event_time"].to_numpy(np.int64), F.SEQ_LENGTH: np.int32(len(past)),
            F.PROFILE_EMBEDDING: np.zeros(8, np.float32), F.PROFILE_ACTIONS_28D: len(past),
            F.PROFILE_REPIN_RATE_28D: float((past["action_type"] == "repin").mean()) if len(past) else 0.0,
            F.PROFILE_HIDE_RATE_28D: float((past["action_type"] == "hide").mean()) if len(past) else 0.0,
            F.PROFILE_DAYS_ACTIVE_28D: int(day)})
    requests = pd.DataFrame(req_rows)
    requests[F.EVENT_TIMESTAMP] = requests[F.EVENT_TIMESTAMP].astype("datetime64[us, UTC]")
    impressions = imp[[F.REQUEST_ID, F.USER_ID, F.PIN_ID, F.EVENT_TIMESTAMP, "position", *F.LABEL_COLUMNS,
                       F.PIN_EMBEDDING, F.PIN_TOPIC, F.PIN_CREATED_MS]]
    meta = {"embedding_dim": 8, "sequence_length": 100, "days": world.params.days,
            "splits": {s: sorted(int(d) for d in requests.loc[requests["split"] == s, "day"].unique())
                       for s in ("train", "valid", "test")}}
    ds = Dataset(path, requests, impressions, pins, meta)
    save_dataset(ds)
    return ds


def test_an_explicit_feedback_log_passes_the_checkpoint_and_click_is_not_measurable(tmp_path, monkeypatch):
    """KuaiRand's layout with every row a like or a hate (81% repin, no clicks): the training_set
    checkpoint takes its bounds from the training period and passes, noting click; the
    comparison and the per-epoch validation metrics report click as not measurable."""
    import json

    import pandas as pd

    from homefeed import metrics
    from homefeed.settings import Settings
    from homefeed.training.dataset import training_frame
    from homefeed.validation import run_checkpoint

    src = write_log(tmp_path / "src", explicit_feedback_rows())
    write_features(src)
    assert main(["world", "import-kuairand", "--src", str(src), "--out", str(tmp_path / "w"),
                 "--embedding-dim", "8", "--eval-days", "2", "--max-vocab", "50"]) == 0
    world = load_world(tmp_path / "w")
    assert world.requests["label_click"].sum() == 0 and 0.7 < world.requests["label_repin"].mean() < 0.9
    ds = flat_dataset(world, tmp_path / "ds")

    # (a) the checkpoint as `homefeed dataset build` and `homefeed train` call it
    monkeypatch.setenv("HOMEFEED_HOME", str(tmp_path / "home"))
    settings = Settings(embedding_dim=8, sequence_length=100)
    for splits in (("train", "valid", "test"), ("train", "valid")):
        report = run_checkpoint("training_set", training_frame(ds, splits), settings=settings)
        assert report.success, report.to_text()
        assert any(n.startswith("label_click: no positives in the training period") for n in report.notes)

    # the training loop's per-epoch validation metrics: no crash, NaN for the head without positives
    _, valid = ds.split("valid")
    labels = valid[["label_repin", "label_click", "label_hide"]].to_numpy()
    got = metrics.evaluate_heads(np.random.default_rng(0).random(labels.shape), labels,
                                 valid["request_id"], ["repin", "click", "hide"])
    assert np.isnan(got["hit@3_click"]) and np.isnan(got["auc_click"]) and np.isfinite(got["auc_repin"])

    # (b) the comparison: two runs' test predictions (one random, one that saw the labels)
    _, test = ds.split("test")
    rng = np.random.default_rng(1)
    for name, signal in (("none", 0.0), ("transact_v11", 1.0)):
        run = tmp_path / "runs" / name
        run.mkdir(parents=True)
        (run / "run.json").write_text(json.dumps({"dataset": str(ds.path)}))
        preds = test[["request_id", "pin_id"]].copy()
        for head in ("repin", "click", "hide"):
            preds[f"score_{head}"] = rng.random(len(test)) + signal * test[f"label_{head}"]
        preds.to_parquet(run / "predictions.parquet", index=False)
    assert main(["evaluate", "--runs", str(tmp_path / "runs"), "--compare", "--n-boot", "50",
                 "--out", str(tmp_path / "report")]) == 0
    paths = {ext: tmp_path / "report" / f"comparison.{ext}" for ext in ("md", "csv", "png", "json")}
    result = json.loads(paths["json"].read_text())
    assert result["not_measurable"] == {"click": {"metrics": ["hit_at_3", "auc", "gauc"],
                                                  "reason": "no positive label_click in the test split"}}
    ours = result["models"]["transact_v11"]
    assert ours["click"]["hit_at_3"] is None and ours["click"]["auc"] is None and ours["click"]["gauc"] is None
    assert ours["click"]["lift_vs_no_sequence"] is None and "click" not in result["primary_vs"]["none"]
    assert ours["repin"]["hit_at_3"] > 0.9 and ours["repin"]["lift_vs_no_sequence"] is not None
    md = paths["md"].read_text()
    assert "click: not measurable (no positive label_click in the test split" in md
    assert "nan" not in md.lower()
    header = [line for line in md.splitlines() if line.startswith("| model | ")][0].split(" | ")
    table = [line for line in md.splitlines() if line.startswith("| `transact_v11` |")][0].split(" | ")
    at = header.index("click HIT@3")  # by name: the table's columns are not fixed (e.g. parameters)
    assert table[at:at + 2] == ["not measurable", "not measurable"]  # click HIT@3 and its lift
    csv = pd.read_csv(paths["csv"])
    click = csv[(csv.metric == "hit_at_3_click") & (csv.segment == "all")]
    assert click["value"].isna().all() and (click["note"] == "not measurable").all()
    assert paths["png"].is_file()


def test_every_log_row_is_an_impression_at_its_own_time(world):
    imp, req, ev = world.impressions(), world.requests, world.events
    assert world.has_impressions and len(imp) == len(req) and imp.event_id.is_unique
    # each row's own time: served 1 ms before it, so its request's features never hold it
    joined = imp.merge(req, on=["request_id", "pin_id"], validate="one_to_one")
    assert (joined.event_time == joined.served_time + 1).all()
    assert (imp.surface == "kuairand").all()
    # an acted-on row is an impression and an action at the same instant
    acted = ev.merge(imp, on=["user_id", "pin_id", "event_time"], how="left", indicator=True)
    assert (acted["_merge"] == "both").all()
