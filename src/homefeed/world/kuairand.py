"""KuaiRand logs as a homefeed world: the same five files `homefeed world generate` writes.

`homefeed world import-kuairand --src DIR --out DIR` reads the official KuaiRand layout (Pure,
1K or 27K; Gao et al., CIKM 2022) and writes pins.parquet, users.parquet, requests.parquet,
events.parquet and world.json through the shared importer (homefeed.world.importer).
docs/kuairand.md documents every choice; in short:

1. Files: `log_standard_*_{pure,1k,27k}.csv` (required, all of one release, concatenated);
   `log_random_*` (optional, its rows are impressions like the others, `--no-random` skips
   them), `user_features_*.csv` and `video_features_basic_*.csv` (optional). Every row is
   validated before anything is written; a bad one is a one-line error naming file and line.
2. Exact duplicate rows are dropped and counted; `--max-users N` keeps a slice (the N users with
   the most impressions, for demos and smoke tests); ids move up by one (KuaiRand counts from 0,
   homefeed ids from 1; pin 0 is the padding row).
3. One row = one impression. Its label is one action by the mapping (default: like, follow,
   forward or comment -> repin; click -> click; hate -> hide; priority hide > repin > click),
   an unmapped row is an impression with all labels 0.
4. Time: the log's epoch ms moved by +8 h, so the world's UTC days are the log's Beijing days
   (its `date` column); ties on (user, ms) ordered by video id then source row and moved forward
   1 ms each.
5. One request = a user's impressions of one day (`--bucket`), optionally cut where two
   consecutive impressions are more than `--max-gap` apart, and cut where a video is shown
   again (a request holds a video once); shown 1 ms before the first.
6. Pins: topic = the video's first tag (no tags -> one topic), embedding = PPMI/SVD of the
   training period's co-clicks blended with the tag multi-hot, duration = `video_duration` (ms;
   empty -> unknown). Users: segment = the official
   `user_active_degree`, core = full/high active (no user file -> segments from history length).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd

from homefeed.errors import UserError
from homefeed.events import MAX_DURATION_MS, MAX_ID, ActionType
from homefeed.world.format import DAY_MS, HOUR_MS, prepare_out, utc_iso, write_world
from homefeed.world.importer import (
    HISTORY_SEGMENTS,
    REQUEST_LEAD_MS,
    Requests,
    WorldArrays,
    base_summary,
    bucket_requests,
    check_int,
    common_option_problems,
    drop_exact_duplicates,
    embedding_behaviour,
    item_embeddings,
    order_events,
    quantiles,
    segments_from_history,
    shuffled_positions,
    time_shift,
    users_and_train_events,
    world_meta,
    world_tables,
)

SURFACE = "kuairand"
RELEASES = ("pure", "1k", "27k")
ID_OFFSET = 1  # homefeed id = KuaiRand id + 1
TZ_OFFSET_MS = 8 * HOUR_MS  # Beijing time: the log's `date` column is the UTC+8 day
MAX_TIME_MS = 4_102_444_800_000  # 2100-01-01
HIT_K = 3

# The log's 0/1 columns a mapping may use (written with or without the is_ prefix).
FLAG_COLUMNS = ("is_click", "is_like", "is_follow", "is_comment", "is_forward", "is_hate",
                "long_view", "is_profile_enter")
REQUIRED_LOG_COLUMNS = ("user_id", "video_id", "time_ms")
PRIORITY = (ActionType.HIDE, ActionType.REPIN, ActionType.CLICK)  # one action per impression

ACTIVE_DEGREE = "user_active_degree"
UNKNOWN_DEGREE = "UNKNOWN"
DEFAULT_CORE_DEGREES = ("full_active", "high_active")
DEGREE_RE = re.compile(r"^[A-Za-z0-9_]+$")
NO_TAG_TOPIC = "untagged"
ALL_TOPIC = "all"


# -- options ---------------------------------------------------------------------------------------


def _flag_column(name: str) -> str | None:
    name = name.strip().lower()
    for candidate in (name, f"is_{name}"):
        if candidate in FLAG_COLUMNS:
            return candidate
    return None


@dataclass(frozen=True)
class LabelMapping:
    """Which 0/1 log columns make which action. An impression gets the first action of
    PRIORITY (hide, repin, click) any of whose columns is 1; none -> all labels 0."""

    repin: tuple[str, ...] = ("is_like", "is_follow", "is_forward", "is_comment")
    click: tuple[str, ...] = ("is_click",)
    hide: tuple[str, ...] = ("is_hate",)

    @classmethod
    def parse(cls, specs: list[str] | str | None) -> "LabelMapping":
        """`repin=like|follow|forward|comment,click=click,hide=hate` (any subset; several specs
        are merged left to right; `ACTION=` with nothing maps no column to ACTION)."""
        if specs is None:
            return cls()
        if isinstance(specs, str):
            specs = [specs]
        values = {a: getattr(cls(), a) for a in ("repin", "click", "hide")}
        for spec in specs:
            for part in (p.strip() for p in str(spec).split(",")):
                if not part:
                    continue
                name, sep, raw = part.partition("=")
                name = name.strip().lower()
                if not sep or name not in values:
                    raise UserError(f"--mapping {part!r}: expected ACTION=COLUMN|COLUMN... with ACTION "
                                    "one of repin, click, hide (e.g. repin=like|follow,click=click)")
                cols = []
                for col in (c for c in raw.split("|") if c.strip()):
                    flag = _flag_column(col)
                    if flag is None:
                        raise UserError(f"--mapping {part!r}: {col.strip()!r} is not a 0/1 log column "
                                        f"(one of {', '.join(c.removeprefix('is_') for c in FLAG_COLUMNS)})")
                    if flag not in cols:
                        cols.append(flag)
                values[name] = tuple(cols)
        mapping = cls(**values)
        mapping.validate()
        return mapping

    def validate(self) -> None:
        used = [c for a in ("repin", "click", "hide") for c in getattr(self, a)]
        if len(used) != len(set(used)):
            dup = sorted({c for c in used if used.count(c) > 1})
            raise UserError(f"label mapping: {', '.join(dup)} mapped to more than one action")
        if not used:
            raise UserError("label mapping maps no column to any action")

    @property
    def columns(self) -> tuple[str, ...]:
        return tuple(c for a in ("repin", "click", "hide") for c in getattr(self, a))

    def actions(self, flags: dict[str, np.ndarray], n: int) -> np.ndarray:
        """int8 ActionType id per row, 0 for 'no action'."""
        out = np.zeros(n, dtype=np.int8)
        for action in reversed(PRIORITY):  # the highest priority is written last
            cols = getattr(self, action.wire_name)
            if cols:
                hit = np.logical_or.reduce([flags[c] == 1 for c in cols])
                out[hit] = int(action)
        return out

    def spec(self) -> str:
        return ",".join(f"{a}={'|'.join(c.removeprefix('is_') for c in getattr(self, a))}"
                        for a in ("repin", "click", "hide"))

    def to_dict(self) -> dict:
        return {
            "repin": {"any_of": list(self.repin)},
            "click": {"any_of": list(self.click)},
            "hide": {"any_of": list(self.hide)},
            "priority": [a.wire_name for a in PRIORITY],
            "none": "an impression with all labels 0",
            "spec": self.spec(),
        }


@dataclass(frozen=True)
class KuaiRandParams:
    """What `homefeed world import-kuairand` takes (docs/kuairand.md)."""

    embedding_dim: int = 32
    bucket_ms: int = DAY_MS  # one request = a user's impressions in one bucket (aligned to day 0)
    max_gap_ms: int = 0  # also cut a request where consecutive impressions are > this apart
    eval_days: int = 4  # the last N days are the evaluation period
    mapping: LabelMapping = field(default_factory=LabelMapping)
    seed: int = 0  # position shuffle, the SVD's random start, the projection
    include_random: bool = True  # log_random_* rows become impressions too
    core_degrees: tuple[str, ...] = DEFAULT_CORE_DEGREES
    core_min_events: int = 10  # without user features: training events that make a user core
    arrival_delay_ms: int = 200  # arrival_time = event_time + this
    cf_dim: int | None = None  # collaborative dims; None = max(embedding_dim - tags, embedding_dim // 2)
    genre_weight: float = 0.5  # share of the squared norm given to the tag part
    max_vocab: int = 5000  # most-clicked training videos that get a collaborative part
    max_users: int = 0  # a slice: keep the N users with the most impressions (0 = all)

    def validate(self) -> None:
        problems = common_option_problems(self)
        check_int(problems, "max_gap_ms", self.max_gap_ms, 0, 100 * DAY_MS)
        check_int(problems, "max_users", self.max_users, 0, MAX_ID)
        if not self.core_degrees or any(not DEGREE_RE.match(d) for d in self.core_degrees):
            problems.append(f"core_degrees must be activity degree names, got {list(self.core_degrees)}")
        if problems:
            raise UserError("invalid import-kuairand options: " + "; ".join(problems))
        self.mapping.validate()


def parse_degrees(text: str) -> tuple[str, ...]:
    """`full_active,high_active` -> the tuple (order kept, repeats dropped)."""
    out: list[str] = []
    for part in (p.strip() for p in str(text).split(",")):
        if part and part not in out:
            out.append(part)
    return tuple(out)


# -- reading the official files ------------------------------------------------------------------------


@dataclass
class KuaiRandData:
    release: str
    files: list[str]  # log files read, in order
    log: pd.DataFrame  # user_id, video_id, time_ms int64, flags int8, is_random bool, row int64
    duplicates: int  # exact duplicate rows dropped
    sliced_out: int  # rows of users left out by max_users
    date_mismatches: int  # rows whose `date` is not the UTC+8 day of time_ms
    users: pd.DataFrame | None  # user_id int64, degree str (None: no user file)
    videos: pd.DataFrame | None  # video_id int64, tags list[int], upload_day_ms int64 or -1
    feature_files: list[str] = field(default_factory=list)


_LOG_RE = re.compile(r"^log_(standard|random)_.+_(pure|1k|27k)\.csv$")


def find_files(src: Path) -> tuple[str, list[Path], list[Path]]:
    """(release, standard logs, random logs) in name order."""
    src = Path(src)
    if not src.exists():
        raise UserError(f"--src {src} does not exist")
    if not src.is_dir():
        raise UserError(f"--src {src} is not a directory")
    logs: dict[tuple[str, str], list[Path]] = {}
    for path in sorted(src.iterdir()):
        match = _LOG_RE.match(path.name)
        if match and path.is_file():
            logs.setdefault((match.group(2), match.group(1)), []).append(path)
    releases = sorted({release for release, _ in logs})
    standard = [r for r in releases if (r, "standard") in logs]
    if not standard:
        raise UserError(f"{src} holds no KuaiRand standard log: expected "
                        "log_standard_*_{pure,1k,27k}.csv (the official layout)")
    if len(releases) > 1:
        raise UserError(f"{src} mixes KuaiRand releases ({', '.join(releases)}); one release per "
                        "directory")
    release = standard[0]
    return release, logs[(release, "standard")], logs.get((release, "random"), [])


def _read_csv(path: Path, *, text: bool = True) -> pd.DataFrame:
    """The file as text columns (text=True) or with pandas' own dtypes (fast path)."""
    kw = dict(dtype=str, keep_default_na=False) if text else dict(low_memory=False)
    try:
        frame = pd.read_csv(path, engine="c", **kw)
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as exc:
        raise UserError(f"{path}: cannot parse: {' '.join(str(exc).split())}") from None
    except pd.errors.EmptyDataError:
        raise UserError(f"{path}: the file is empty") from None
    frame.columns = [str(c).strip() for c in frame.columns]
    return frame


def _integers(frame: pd.DataFrame, path: Path, col: str, low: int, high: int, what: str) -> np.ndarray:
    """int64 values of a column (integer dtype or text); a bad one is a UserError naming the
    line (the header is line 1)."""
    if frame[col].dtype.kind in "iu":
        values = frame[col].to_numpy(np.int64)
        bad = (values < low) | (values > high)
    else:
        text = frame[col].str.strip()
        floats = pd.to_numeric(text, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
        with np.errstate(invalid="ignore"):
            bad = ~np.isfinite(floats) | (np.floor(floats) != floats) | (floats < low) | (floats > high)
        bad |= ~text.str.fullmatch(r"-?\d+(\.0*)?").to_numpy(dtype=bool)
        values = np.zeros(len(text), dtype=np.int64)
        if not bad.any():
            values = np.array([int(float(v)) if "." in v else int(v) for v in text], dtype=np.int64) \
                if floats.max(initial=0) >= 2**53 else floats.astype(np.int64)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise UserError(f"{path} line {int(frame.index[i]) + 2}: bad {col} {str(frame[col].iloc[i])!r} "
                        f"(expected {what}; {int(bad.sum())} bad row(s) in all)")
    return values


def _optional_ms(frame: pd.DataFrame, path: Path, col: str, high: int, what: str) -> np.ndarray:
    """int64 values of a text column of whole numbers in 0..high, written as integers or as
    integral floats (KuaiRand writes "87433.0"); empty = unknown (-1). A bad value is a
    UserError naming the line."""
    text = frame[col].str.strip()
    empty = (text == "").to_numpy(dtype=bool)
    floats = pd.to_numeric(text.where(~empty, "0"), errors="coerce").to_numpy(dtype=np.float64,
                                                                             na_value=np.nan)
    with np.errstate(invalid="ignore"):
        bad = ~np.isfinite(floats) | (np.floor(floats) != floats) | (floats < 0) | (floats > high)
    bad |= ~text.str.fullmatch(r"\d+(\.0*)?|").to_numpy(dtype=bool)
    bad &= ~empty
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise UserError(f"{path} line {int(frame.index[i]) + 2}: bad {col} {str(frame[col].iloc[i])!r} "
                        f"(expected {what}; {int(bad.sum())} bad row(s) in all)")
    return np.where(empty, -1, floats).astype(np.int64)


def _read_log(path: Path, mapping: LabelMapping, is_random: bool) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(validated numeric frame, the source frame for duplicate detection)."""
    raw = _read_csv(path, text=False)
    need = list(REQUIRED_LOG_COLUMNS) + list(mapping.columns)
    missing = [c for c in need if c not in raw.columns]
    if missing:
        raise UserError(f"{path}: missing column(s) {', '.join(missing)} (header: "
                        f"{','.join(raw.columns)})")
    checked = need + (["date"] if "date" in raw.columns else [])
    if any(raw[c].dtype.kind not in "iu" for c in checked):
        raw = _read_csv(path)  # something is not an integer: read as text to name the line
    out = {
        "user_id": _integers(raw, path, "user_id", 0, MAX_ID - ID_OFFSET, "a user id >= 0"),
        "video_id": _integers(raw, path, "video_id", 0, MAX_ID - ID_OFFSET, "a video id >= 0"),
        "time_ms": _integers(raw, path, "time_ms", 0, MAX_TIME_MS, "epoch milliseconds"),
    }
    for col in mapping.columns:
        out[col] = _integers(raw, path, col, 0, 1, "0 or 1").astype(np.int8)
    if "date" in raw.columns:
        out["date"] = _integers(raw, path, "date", 19_000_101, 21_001_231, "a yyyymmdd date")
    frame = pd.DataFrame(out, index=raw.index)
    frame["is_random"] = is_random
    return frame, raw


def _read_users(path: Path) -> pd.DataFrame:
    raw = _read_csv(path)
    for col in ("user_id", ACTIVE_DEGREE):
        if col not in raw.columns:
            raise UserError(f"{path}: missing column {col} (header: {','.join(raw.columns)})")
    ids = _integers(raw, path, "user_id", 0, MAX_ID - ID_OFFSET, "a user id >= 0")
    degree = raw[ACTIVE_DEGREE].str.strip()
    bad = ~degree.str.fullmatch(DEGREE_RE.pattern[1:-1] + "|").to_numpy(dtype=bool)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise UserError(f"{path} line {i + 2}: bad {ACTIVE_DEGREE} {raw[ACTIVE_DEGREE].iloc[i]!r} "
                        "(expected a name like full_active)")
    degree = degree.where(degree != "", UNKNOWN_DEGREE)
    frame = pd.DataFrame({"user_id": ids, "degree": degree.to_numpy(dtype=object)})
    dup = frame["user_id"].duplicated()
    if dup.any():
        i = int(np.flatnonzero(dup.to_numpy())[0])
        raise UserError(f"{path} line {i + 2}: user {int(ids[i])} appears more than once")
    return frame


def _read_videos(path: Path) -> pd.DataFrame:
    raw = _read_csv(path)
    if "video_id" not in raw.columns:
        raise UserError(f"{path}: missing column video_id (header: {','.join(raw.columns)})")
    ids = _integers(raw, path, "video_id", 0, MAX_ID - ID_OFFSET, "a video id >= 0")
    tags: list[list[int]] = [[] for _ in range(len(raw))]
    if "tag" in raw.columns:
        text = raw["tag"].str.strip().str.replace(" ", "", regex=False)
        bad = ~text.str.fullmatch(r"(\d{1,9}(,\d{1,9})*)?").to_numpy(dtype=bool)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise UserError(f"{path} line {i + 2}: bad tag {raw['tag'].iloc[i]!r} (expected "
                            "comma-separated tag ids)")
        tags = [[int(t) for t in s.split(",")] if s else [] for s in text.tolist()]
    upload = np.full(len(raw), -1, dtype=np.int64)
    if "upload_dt" in raw.columns:
        text = raw["upload_dt"].str.strip()
        parsed = pd.to_datetime(text.where(text != "", None), format="%Y-%m-%d", errors="coerce", utc=True)
        bad = parsed.isna().to_numpy() & (text != "").to_numpy()
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise UserError(f"{path} line {i + 2}: bad upload_dt {raw['upload_dt'].iloc[i]!r} "
                            "(expected yyyy-mm-dd)")
        known = ~parsed.isna().to_numpy()
        if known.any():
            upload[known] = parsed[known].astype("int64").to_numpy() // 10**6
    duration = np.full(len(raw), -1, dtype=np.int64)  # -1: unknown (empty, or no such column)
    if "video_duration" in raw.columns:
        duration = _optional_ms(raw, path, "video_duration", MAX_DURATION_MS,
                                "a duration in ms, 0..24 h, or empty")
    frame = pd.DataFrame({"video_id": ids, "tags": tags, "upload_day_ms": upload,
                          "duration_ms": duration})
    dup = frame["video_id"].duplicated()
    if dup.any():
        i = int(np.flatnonzero(dup.to_numpy())[0])
        raise UserError(f"{path} line {i + 2}: video {int(ids[i])} appears more than once")
    return frame


def read_kuairand(src: Path | str, params: KuaiRandParams | None = None) -> KuaiRandData:
    """Read and validate every file (nothing is written)."""
    params = params or KuaiRandParams()
    src = Path(src)
    release, standard, random = find_files(src)
    paths = standard + (random if params.include_random else [])
    frames, raws = [], []
    for path in paths:
        frame, raw = _read_log(path, params.mapping, is_random=path in random)
        frames.append(frame)
        raws.append(raw)
    log = pd.concat(frames, ignore_index=True)
    log["row"] = np.arange(len(log), dtype=np.int64)  # source order, for stable tie breaking
    if log.empty:
        raise UserError(f"{src}: the standard log has no rows")
    # Exact duplicates: rows repeated verbatim (every column of the source file).
    raw_all = pd.concat(raws, ignore_index=True) if len({tuple(r.columns) for r in raws}) == 1 \
        else pd.concat([r.astype(str) for r in raws], ignore_index=True)
    kept, duplicates = drop_exact_duplicates(raw_all)
    log = log.loc[kept.index].reset_index(drop=True)
    sliced_out = 0
    if params.max_users:  # the N users with the most impressions, ties: the lower id
        counts = log["user_id"].value_counts()
        ranked = sorted(zip((-counts).tolist(), counts.index.tolist()))[: params.max_users]
        keep = log["user_id"].isin([u for _, u in ranked]).to_numpy()
        sliced_out = int((~keep).sum())
        log = log.loc[keep].reset_index(drop=True)
    date_mismatches = 0
    if "date" in log.columns:
        local = pd.to_datetime(log["time_ms"] + TZ_OFFSET_MS, unit="ms", utc=True)
        local_date = (local.dt.year * 10_000 + local.dt.month * 100 + local.dt.day).to_numpy()
        date_mismatches = int((local_date != log["date"].to_numpy()).sum())
    users = videos = None
    feature_files = []
    user_path = src / f"user_features_{release}.csv"
    if user_path.is_file():
        users = _read_users(user_path)
        feature_files.append(user_path.name)
    video_path = src / f"video_features_basic_{release}.csv"
    if video_path.is_file():
        videos = _read_videos(video_path)
        feature_files.append(video_path.name)
    return KuaiRandData(release=release, files=[p.name for p in paths], log=log,
                        duplicates=duplicates, sliced_out=sliced_out,
                        date_mismatches=date_mismatches, users=users,
                        videos=videos, feature_files=feature_files)


# -- the import -------------------------------------------------------------------------------------


def import_kuairand(src: Path | str, out: Path | str, params: KuaiRandParams | None = None) -> dict:
    """Write a world built from the KuaiRand files in `src` into `out`; returns world.json."""
    params = params or KuaiRandParams()
    params.validate()
    out = prepare_out(out)
    data = read_kuairand(src, params)
    world = build_world(data, params)
    write_world(world["tables"], world["meta"], out)
    return world["meta"]


def _topics(data: KuaiRandData, video_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[str], str]:
    """(topic per video, [videos, topics] bool multi-hot, topic names, rule)."""
    if data.videos is None:
        return (np.zeros(len(video_ids), dtype=np.int64), np.ones((len(video_ids), 1), dtype=bool),
                [ALL_TOPIC], "no video feature file: one topic for every video")
    by_id = data.videos.set_index("video_id")["tags"]
    tags = [by_id.get(v, []) for v in video_ids.tolist()]
    names = sorted({t for ts in tags for t in ts})
    index = {t: i for i, t in enumerate(names)}
    untagged = [i for i, ts in enumerate(tags) if not ts]
    labels = [str(t) for t in names] + ([NO_TAG_TOPIC] if untagged or not names else [])
    multi = np.zeros((len(video_ids), len(labels)), dtype=bool)
    topic = np.empty(len(video_ids), dtype=np.int64)
    for i, ts in enumerate(tags):
        if ts:
            multi[i, [index[t] for t in ts]] = True
            topic[i] = index[ts[0]]
        else:
            multi[i, len(labels) - 1] = True
            topic[i] = len(labels) - 1
    return topic, multi, labels, ("the video's first tag (topic names are the tag ids); videos "
                                  f"without a tag or missing from the file: {NO_TAG_TOPIC!r}")


def build_world(data: KuaiRandData, params: KuaiRandParams) -> dict:
    """The five tables (as pyarrow tables) and world.json's dict; pure, writes nothing."""
    log = data.log
    n = len(log)
    local_ms = log["time_ms"].to_numpy(np.int64) + TZ_OFFSET_MS
    first_day_ms = int(local_ms.min() // DAY_MS) * DAY_MS
    shift = TZ_OFFSET_MS + time_shift(first_day_ms)
    start_ms = first_day_ms + shift - TZ_OFFSET_MS

    # Total event order: (user, ms, video, source row); ties moved forward 1 ms each.
    eo = order_events(log["user_id"].to_numpy(), log["time_ms"].to_numpy(),
                      (log["video_id"].to_numpy(), log["row"].to_numpy()), grain_ms=1)
    order = eo.order
    user = log["user_id"].to_numpy(np.int64)[order] + ID_OFFSET
    item = log["video_id"].to_numpy(np.int64)[order] + ID_OFFSET
    is_random = log["is_random"].to_numpy(bool)[order]
    event_ms = eo.event_ms + shift
    flags = {c: log[c].to_numpy()[order] for c in params.mapping.columns}
    action = params.mapping.actions(flags, n)
    clicked = flags["is_click"] == 1 if "is_click" in flags else action > 0

    days = int((event_ms.max() - start_ms) // DAY_MS) + 1
    if not 1 <= params.eval_days < days:
        raise UserError(f"--eval-days {params.eval_days}: the data spans {days} day(s); the "
                        f"evaluation period must leave at least one training day (1..{days - 1})")
    split_day = days - params.eval_days
    split_ms = start_ms + split_day * DAY_MS
    in_train = event_ms < split_ms

    # Requests: a user's impressions of one bucket, cut at gaps > max_gap_ms.
    new_req = bucket_requests(user, event_ms, start_ms, params.bucket_ms)
    if params.max_gap_ms:
        new_req[1:] |= np.diff(event_ms) > params.max_gap_ms
    # A request shows a video at most once: a video shown again starts a new request there.
    split_repeats = 0
    while True:
        req = np.cumsum(new_req) - 1
        dup = pd.DataFrame({"r": req, "i": item}).duplicated().to_numpy()
        if not dup.any():
            break
        rows = np.flatnonzero(dup)
        _, first = np.unique(req[rows], return_index=True)
        new_req[rows[first]] = True
        split_repeats += len(first)
    rq = Requests.from_starts(new_req, user, event_ms)
    pos = shuffled_positions(rq.of, params.seed)

    # Pins: every shown video; created at the day of its upload (when known) or of its first
    # impression, whichever is earlier.
    first = pd.Series(event_ms).groupby(item).min()
    item_ids, first_ms = first.index.to_numpy(np.int64), first.to_numpy(np.int64)
    created_ms = start_ms + (first_ms - start_ms) // DAY_MS * DAY_MS
    if data.videos is not None:
        upload = data.videos.set_index("video_id")["upload_day_ms"]
        up = upload.reindex(item_ids - ID_OFFSET).fillna(-1).to_numpy(np.int64)
        known = up >= 0
        created_ms[known] = np.minimum(created_ms[known], up[known] + shift - TZ_OFFSET_MS)
    duration_ms = np.full(len(item_ids), -1, dtype=np.int64)  # no video feature file: all unknown
    if data.videos is not None:  # videos missing from the file, or with an empty duration: unknown
        duration_ms = (data.videos.set_index("video_id")["duration_ms"]
                       .reindex(item_ids - ID_OFFSET).fillna(-1).to_numpy(np.int64))
    topic, multi_hot, topic_names, topic_rule = _topics(data, item_ids - ID_OFFSET)
    engaged = in_train & ((action > 0) & (action != int(ActionType.HIDE)) | clicked)
    D = params.embedding_dim
    emb_params = params if params.cf_dim is not None else replace(
        params, cf_dim=max(D - multi_hot.shape[1], D // 2))
    emb, emb_info, _ = item_embeddings(
        item_ids, multi_hot, user[engaged], item[engaged], emb_params,
        method="ppmi-svd of training-period item co-click (click or repin) + tag multi-hot")

    # Events: one per mapped impression, at the impression's time.
    has_action = action > 0
    ev_user, ev_item, ev_action = user[has_action], item[has_action], action[has_action]
    ev_time = event_ms[has_action]
    ev_ids = np.array([f"kr{u}-{t}" for u, t in zip(ev_user.tolist(), ev_time.tolist())], dtype=object)

    # Users: every user with an impression; segment = activity degree (or history length).
    user_ids, n_train = users_and_train_events(user, in_train & has_action)
    if data.users is not None:
        degree = data.users.set_index("user_id")["degree"].reindex(user_ids - ID_OFFSET)
        segment = degree.fillna(UNKNOWN_DEGREE).to_numpy(dtype=object)
        is_core = np.isin(segment, list(params.core_degrees))
        segments = tuple(sorted(set(segment.tolist()) | set(params.core_degrees) | {UNKNOWN_DEGREE}))
        segment_rule = (f"official {ACTIVE_DEGREE}; core = {'|'.join(params.core_degrees)}; users "
                        f"missing from the file: {UNKNOWN_DEGREE}")
    else:
        segment = segments_from_history(n_train, params.core_min_events)
        is_core = segment == "core"
        segments = HISTORY_SEGMENTS
        segment_rule = (f"no user feature file: core = >= {params.core_min_events} training-period "
                        "events, casual = fewer, new = none")
    user_first_req = pd.Series(rq.time).groupby(rq.user).min().reindex(user_ids).to_numpy(np.int64)

    w = WorldArrays(
        item_ids=item_ids, topic=topic, embedding=emb, created_ms=created_ms,
        user_ids=user_ids, segment=segment, is_core=is_core, first_active_ms=user_first_req,
        imp_rid=rq.id[rq.of], imp_user=user, imp_time=rq.time[rq.of], imp_pos=pos,
        imp_pin=item, imp_action=action,
        ev_ids=ev_ids, ev_user=ev_user, ev_pin=ev_item, ev_action=ev_action, ev_time=ev_time,
        ev_arrival=ev_time + params.arrival_delay_ms, ev_rid=rq.id[rq.of[has_action]],
        # every impression is served at its own time (1 ms before it was shown and acted on):
        # its history holds the same day's earlier actions that had arrived by then
        imp_served=event_ms - REQUEST_LEAD_MS,
        duration_ms=duration_ms,
    )
    tables = world_tables(w, start_ms, SURFACE)

    # -- world.json ----------------------------------------------------------------------------
    req_eval = rq.time >= split_ms
    hist_events = np.cumsum(np.concatenate([[0], has_action.astype(np.int64)]))
    hist_before = hist_events[rq.first] - hist_events[np.searchsorted(user, rq.user, side="left")]

    def judgeable(mask_req: np.ndarray) -> dict:
        """Requests HIT@3 can tell models apart on: > 3 candidates, >= 1 positive and >= 1
        negative for the head."""
        big = rq.size > HIT_K
        out = {f"requests_over_{HIT_K}_candidates": int((big & mask_req).sum())}
        for a in ActionType:
            pos_n = np.bincount(rq.of, weights=(action == int(a)), minlength=len(rq.first))
            ok = big & mask_req & (pos_n > 0) & (pos_n < rq.size)
            out[a.wire_name] = int(ok.sum())
        click_n = np.bincount(rq.of, weights=clicked, minlength=len(rq.first))
        out["any_click"] = int((big & mask_req & (click_n > 0) & (click_n < rq.size)).sum())
        return out

    def period(mask_req: np.ndarray) -> dict:
        mask_row = mask_req[rq.of]
        return {
            "requests": int(mask_req.sum()),
            "impressions": int(mask_row.sum()),
            "events": int((mask_row & has_action).sum()),
            "events_by_action": {a.wire_name: int((mask_row & (action == int(a))).sum()) for a in ActionType},
            "users": int(len(np.unique(rq.user[mask_req]))),
            "requests_with_history": int((hist_before[mask_req] > 0).sum()),
            "judgeable_requests": judgeable(mask_req),
        }

    ties = eo.stats()
    summary = base_summary(w, start_ms, segments)
    summary.update({
        "rows": int(n + data.duplicates + data.sliced_out),
        "duplicate_rows_dropped": int(data.duplicates),
        "rows_outside_the_user_slice": int(data.sliced_out),
        "random_rows": int(is_random.sum()),
        "rows_without_action": int((action == 0).sum()),
        "rows_sharing_a_ms": round(ties["tie_share"], 6),
        "max_rows_in_one_ms": ties["max_group"],
        "max_tie_shift_ms": int((eo.event_ms - log["time_ms"].to_numpy(np.int64)[order]).max()),
        "date_column_mismatches": int(data.date_mismatches),
        "impressions_per_request": quantiles(rq.size),
        "requests_cut_at_a_repeated_video": int(split_repeats),
        "train": period(~req_eval),
        "eval": period(req_eval),
        "eval_items_without_train_impression": int(
            len(np.setdiff1d(np.unique(item[~in_train]), np.unique(item[in_train])))),
        "embedding": emb_info,
        "pins_with_duration": int((duration_ms >= 0).sum()),
    })
    meta = world_meta(w, source=f"kuairand-{data.release}", days=days, seed=params.seed,
                      start_ms=start_ms, embedding_dim=params.embedding_dim,
                      n_topics=len(topic_names), summary=summary,
                      has_impressions=True)  # every log row was shown to the user
    meta.update({
        "mapping": params.mapping.to_dict(),
        "split_day": split_day,
        "split_ms": int(split_ms),
        "split_iso": utc_iso(split_ms),
        "eval_days": params.eval_days,
        "train_days": split_day,
        "bucket_ms": params.bucket_ms,
        "max_gap_ms": params.max_gap_ms,
        "core_min_events": params.core_min_events,
        "topics": topic_names,
        "kuairand": {
            "release": data.release,
            "files": data.files + data.feature_files,
            "include_random": params.include_random,
            "max_users": params.max_users,
            "user_slice_rule": ("all users" if not params.max_users else
                                f"the {params.max_users} users with the most impressions (after "
                                "dropping exact duplicates; ties: the lower id)"),
            "id_offset": ID_OFFSET,
            "time_shift_ms": int(shift),
            "time_rule": "epoch ms + 8 h: the world's UTC days are the log's Beijing (UTC+8) days",
            "original_first_ms": int(log["time_ms"].min()),
            "original_last_ms": int(log["time_ms"].max()),
            "request_rule": (f"a user's impressions of one {params.bucket_ms // HOUR_MS} h bucket"
                             + (f", cut at gaps > {params.max_gap_ms} ms" if params.max_gap_ms else "")
                             + "; a video shown again starts a new request; shown 1 ms before "
                             "the first impression"),
            "serve_rule": ("each impression is served 1 ms before its own time: its features "
                           "are what serving read then, so a request's candidates may carry "
                           "different histories"),
            "topic_rule": topic_rule,
            "segment_rule": segment_rule,
            "core_degrees": list(params.core_degrees),
            "pin_created_rule": "UTC day start of the upload date or of the first impression, the earlier",
            "pin_duration_rule": ("video_duration (ms) of the video feature file; empty or not in "
                                  "the file (or no file): null, unknown"),
        },
        "behaviour": embedding_behaviour(params, emb_info),
    })
    return {"tables": tables, "meta": meta}
