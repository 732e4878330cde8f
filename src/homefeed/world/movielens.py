"""MovieLens ratings as a homefeed world: the same five files `homefeed world generate` writes.

`homefeed world import-movielens --src DIR --out DIR` reads the GroupLens files and writes
pins.parquet, users.parquet, requests.parquet, events.parquet and world.json with the columns,
dtypes and sort orders of docs/world.md, so the ratings flow through the normal path (producer ->
Kafka -> consumer -> offline log -> Feast point-in-time -> training -> evaluation) unchanged.
docs/movielens.md documents every choice; in short:

* ratings -> actions through a threshold mapping (default: >= 4 repin, 3 click, <= 2 hide);
* items -> pins: topic = the item's most specific genre, embedding = PPMI/SVD of item-item
  co-rating over the TRAINING period only blended with the genre multi-hot, created = the UTC
  day of the item's first rating;
* one request = the items a user rated in one time bucket (default one UTC day), shown at 1 ms
  before the first of those ratings, so a request's own ratings are never in its history;
* ties (same user, same second) are broken by item id and spread over distinct milliseconds, so
  the event order is total; the timeline is shifted by whole weeks onto >= 2000-01-01 when the
  data is older (the pipeline rejects earlier event times).

Two input layouts are recognised by the files present: the ML-100K one (`u.data`, `u.item`,
optional `u.genre`) and the CSV one of the later releases (`ratings.csv`, `movies.csv`, e.g.
ml-latest-small). Everything is deterministic: the same input and options give byte-identical
files.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np
import pandas as pd

from homefeed.errors import UserError
from homefeed.events import MAX_ID, MIN_EVENT_TIME_MS, ActionType
from homefeed.world.format import DAY_MS, SECOND_MS, prepare_out, utc_iso, write_world
from homefeed.world.importer import (  # noqa: F401  (cf_dim_for, genre_embedding, parse_bucket: API here too)
    HISTORY_SEGMENTS,
    TIE_BASE_MS,
    TIE_SPAN_MS,
    TIE_STEP_MS,
    Requests,
    WorldArrays,
    base_summary,
    bucket_requests,
    cf_dim_for,
    check_int,
    common_option_problems,
    drop_exact_duplicates,
    embedding_behaviour,
    genre_embedding,
    item_embeddings,
    order_events,
    parse_bucket,
    quantiles,
    segments_from_history,
    time_shift,
    users_and_train_events,
    world_meta,
    world_tables,
)

SURFACE = "movielens"

LAYOUT_100K = "ml-100k"  # u.data + u.item (+ u.genre)
LAYOUT_CSV = "csv"  # ratings.csv + movies.csv (ml-latest-small, ml-25m, ...)

# ML-100K's genre order (u.genre); used when u.genre is absent.
ML100K_GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
    "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi",
    "Thriller", "War", "Western",
)
CSV_NO_GENRE = "(no genres listed)"

SEGMENTS = HISTORY_SEGMENTS


# -- options ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RatingMapping:
    """rating >= repin -> repin; click <= rating < repin -> click; rating <= hide -> hide; a rating
    strictly between hide and click is an impression without any action (all labels 0)."""

    repin: float = 4.0
    click: float = 3.0
    hide: float = 2.0

    @classmethod
    def parse(cls, specs: list[str] | str | None) -> "RatingMapping":
        """`repin=4,click=3,hide=2` (any subset; several specs are merged left to right)."""
        if specs is None:
            return cls()
        if isinstance(specs, str):
            specs = [specs]
        values = {f.name: getattr(cls(), f.name) for f in fields(cls)}
        for spec in specs:
            for part in (p.strip() for p in str(spec).split(",")):
                if not part:
                    continue
                name, sep, raw = part.partition("=")
                name = name.strip().lower()
                if not sep or name not in values:
                    raise UserError(
                        f"--mapping {part!r}: expected ACTION=RATING with ACTION one of "
                        f"{', '.join(values)} (e.g. repin=4,click=3,hide=2)"
                    )
                try:
                    number = float(raw)
                except ValueError:
                    number = math.nan
                if not math.isfinite(number):
                    raise UserError(f"--mapping {part!r}: {raw.strip()!r} is not a rating")
                values[name] = number
        mapping = cls(**values)
        mapping.validate()
        return mapping

    def validate(self) -> None:
        if not self.hide < self.click <= self.repin:
            raise UserError(
                f"rating mapping needs hide < click <= repin, got repin={self.repin:g}, "
                f"click={self.click:g}, hide={self.hide:g}"
            )

    def actions(self, rating: np.ndarray) -> np.ndarray:
        """int8 ActionType id per rating, 0 for 'no action'."""
        out = np.zeros(len(rating), dtype=np.int8)
        out[rating <= self.hide] = int(ActionType.HIDE)
        out[(rating >= self.click) & (rating < self.repin)] = int(ActionType.CLICK)
        out[rating >= self.repin] = int(ActionType.REPIN)
        return out

    def to_dict(self) -> dict:
        def num(v: float):
            return int(v) if float(v).is_integer() else float(v)

        return {
            "repin": {"min_rating": num(self.repin)},
            "click": {"min_rating": num(self.click), "below": num(self.repin)},
            "hide": {"max_rating": num(self.hide)},
            "spec": f"repin={num(self.repin)},click={num(self.click)},hide={num(self.hide)}",
        }


@dataclass(frozen=True)
class ImportParams:
    """What `homefeed world import-movielens` takes (docs/movielens.md)."""

    embedding_dim: int = 32
    bucket_ms: int = DAY_MS  # one request = a user's ratings in one bucket (aligned to day 0)
    eval_days: int = 30  # the last N days are the evaluation period
    mapping: RatingMapping = field(default_factory=RatingMapping)
    negatives: int = 0  # unrated items added per request as ignored impressions
    seed: int = 0  # negatives, position shuffle, the SVD's random start, the projection
    core_min_events: int = 100  # training-period events that make a user core
    max_items: int = 0  # split a bucket every this many ratings, at a new second (0 = no)
    start_ms: int | None = None  # where day 0 lands; None = the data's own dates, shifted by
    #                              whole weeks onto >= 2000-01-01 when older
    last_days: int = 0  # keep only the last N days of ratings (0 = all)
    arrival_delay_ms: int = 200  # arrival_time = event_time + this
    cf_dim: int | None = None  # collaborative dimensions; None = max(embedding_dim - genres, 4)
    genre_weight: float = 0.5  # share of the squared norm given to the genre part
    max_vocab: int = 5000  # most-rated training items that get a collaborative part

    def validate(self) -> None:
        problems = common_option_problems(self)
        check_int(problems, "negatives", self.negatives, 0, 1_000)
        check_int(problems, "max_items", self.max_items, 0, 10**6)
        check_int(problems, "last_days", self.last_days, 0, 100_000)
        if self.start_ms is not None:
            check_int(problems, "start_ms", self.start_ms, MIN_EVENT_TIME_MS, MAX_ID // 2)
            if not problems and self.start_ms % DAY_MS:
                problems.append("start must be a UTC midnight (day 0 starts there)")
        if problems:
            raise UserError("invalid import-movielens options: " + "; ".join(problems))
        self.mapping.validate()


# -- reading the GroupLens files -------------------------------------------------------------------


@dataclass
class MovieLensData:
    layout: str
    ratings: pd.DataFrame  # user_id, item_id int64, rating float64, timestamp int64 (seconds)
    item_ids: np.ndarray  # [I] int64, ascending: the catalogue
    genres: np.ndarray  # [I, G] bool
    genre_names: list[str]
    files: list[str]
    duplicates: int = 0  # exact duplicate rating rows dropped


def detect_layout(src: Path) -> str:
    src = Path(src)
    if not src.exists():
        raise UserError(f"--src {src} does not exist")
    if not src.is_dir():
        raise UserError(f"--src {src} is not a directory")
    if (src / "u.data").is_file():
        if not (src / "u.item").is_file():
            raise UserError(f"{src} has u.data but no u.item (the ML-100K item file)")
        return LAYOUT_100K
    if (src / "ratings.csv").is_file():
        if not (src / "movies.csv").is_file():
            raise UserError(f"{src} has ratings.csv but no movies.csv")
        return LAYOUT_CSV
    if (src / "ratings.dat").is_file():
        raise UserError(f"{src} looks like ML-1M/10M (ratings.dat); only the ML-100K layout "
                        "(u.data, u.item) and the CSV layout (ratings.csv, movies.csv) are supported")
    raise UserError(f"{src} holds no MovieLens ratings: expected u.data + u.item (ML-100K) or "
                    "ratings.csv + movies.csv (ml-latest-small and later releases)")


def read_movielens(src: Path | str) -> MovieLensData:
    src = Path(src)
    layout = detect_layout(src)
    if layout == LAYOUT_100K:
        ratings = _read_ratings(src / "u.data", sep="\t", header=False)
        item_ids, genres, names = _read_u_item(src)
        files = ["u.data", "u.item"] + (["u.genre"] if (src / "u.genre").is_file() else [])
    else:
        ratings = _read_ratings(src / "ratings.csv", sep=",", header=True)
        item_ids, genres, names = _read_movies_csv(src / "movies.csv")
        files = ["ratings.csv", "movies.csv"]
    if ratings.empty:
        raise UserError(f"{src}: the ratings file has no rows")
    known = np.isin(ratings["item_id"].to_numpy(), item_ids)
    if not known.all():
        bad = np.unique(ratings["item_id"].to_numpy()[~known])
        raise UserError(f"{src}: {len(bad)} rated item id(s) are missing from the item file "
                        f"(first: {bad[:5].tolist()})")
    ratings, duplicates = drop_exact_duplicates(ratings)
    dup = ratings.duplicated(["user_id", "item_id"])
    if dup.any():
        row = ratings[dup].iloc[0]
        raise UserError(f"{src}: {int(dup.sum())} repeated (user, item) rating(s), e.g. user "
                        f"{int(row.user_id)} item {int(row.item_id)}; one rating per pair expected")
    return MovieLensData(layout, ratings, item_ids, genres, names, files, duplicates)


_RATING_COLS = ("user_id", "item_id", "rating", "timestamp")


def _read_ratings(path: Path, *, sep: str, header: bool) -> pd.DataFrame:
    kw = dict(sep=sep, engine="c", skipinitialspace=False)
    if header:
        try:
            head = pd.read_csv(path, nrows=0, **kw).columns.tolist()
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
            raise UserError(f"{path}: cannot parse: {exc}") from None
        want = ["userId", "movieId", "rating", "timestamp"]
        if [c.strip() for c in head[:4]] != want:
            raise UserError(f"{path}: expected the header {','.join(want)}, got {','.join(head)}")
        kw.update(header=0, usecols=[0, 1, 2, 3])
    else:
        kw.update(header=None)
    kw["names"] = list(_RATING_COLS)
    first_line = 2 if header else 1
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, **kw)
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as exc:
        raise UserError(f"{path}: cannot parse: {exc}") from None
    except pd.errors.EmptyDataError:
        raise UserError(f"{path}: the ratings file is empty") from None
    out = {}
    for col in _RATING_COLS:
        values = pd.to_numeric(frame[col].str.strip(), errors="coerce")
        bad = values.isna() | ~np.isfinite(values.to_numpy(dtype=np.float64, na_value=np.nan))
        if col != "rating":
            arr = values.to_numpy(dtype=np.float64, na_value=np.nan)
            bad |= ~(np.floor(arr) == arr)
            bad |= ~((arr >= (0 if col == "timestamp" else 1))
                     & (arr <= (9_999_999_999 if col == "timestamp" else MAX_ID)))
        if bad.any():
            i = int(np.flatnonzero(bad.to_numpy())[0])
            row = sep.join(str(frame[c].iloc[i]) for c in _RATING_COLS)
            what = {"user_id": "user id (a positive integer)", "item_id": "item id (a positive integer)",
                    "rating": "rating (a number)",
                    "timestamp": "timestamp (unix seconds)"}[col]
            raise UserError(f"{path} line {i + first_line}: bad {what} in {row!r} "
                            f"({int(bad.sum())} bad row(s) in all)")
        out[col] = values.to_numpy(dtype=np.float64 if col == "rating" else np.int64)
    return pd.DataFrame(out)


def _read_u_item(src: Path) -> tuple[np.ndarray, np.ndarray, list[str]]:
    names = list(ML100K_GENRES)
    genre_path = src / "u.genre"
    if genre_path.is_file():
        parsed = []
        for n, line in enumerate(genre_path.read_text(encoding="latin-1").splitlines(), 1):
            if not line.strip():
                continue
            name, sep, idx = line.rpartition("|")
            if not sep or not idx.strip().isdigit():
                raise UserError(f"{genre_path} line {n}: expected NAME|INDEX, got {line!r}")
            parsed.append((int(idx), name))
        if sorted(i for i, _ in parsed) != list(range(len(parsed))) or not parsed:
            raise UserError(f"{genre_path}: genre indices must be 0..{len(parsed) - 1}")
        names = [name for _, name in sorted(parsed)]
    path = src / "u.item"
    rows = []
    with open(path, encoding="latin-1", newline="") as fh:
        for n, line in enumerate(fh, 1):
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            parts = line.split("|")
            if len(parts) != 5 + len(names):
                raise UserError(f"{path} line {n}: expected {5 + len(names)} '|'-separated fields "
                                f"(id|title|release|video release|url|{len(names)} genre flags), "
                                f"got {len(parts)}")
            flags = parts[5:]
            if not parts[0].strip().isdigit() or not 1 <= int(parts[0]) <= MAX_ID \
                    or any(f.strip() not in ("0", "1") for f in flags):
                raise UserError(f"{path} line {n}: bad item id or genre flag in {line[:80]!r}")
            rows.append((int(parts[0]), [f.strip() == "1" for f in flags]))
    if not rows:
        raise UserError(f"{path}: no items")
    ids = np.array([r[0] for r in rows], dtype=np.int64)
    genres = np.array([r[1] for r in rows], dtype=bool)
    return _catalogue(path, ids, genres, names, fallback=0)


def _read_movies_csv(path: Path) -> tuple[np.ndarray, np.ndarray, list[str]]:
    try:
        with open(path, encoding="utf-8", newline="") as fh:
            reader = csv.reader(fh)
            header = next(reader, None)
            if header is None or [h.strip() for h in header[:3]] != ["movieId", "title", "genres"]:
                raise UserError(f"{path}: expected the header movieId,title,genres, got {header}")
            rows = []
            for row in reader:
                if not row or not "".join(row).strip():
                    continue
                n = reader.line_num
                if len(row) < 3 or not row[0].strip().isdigit() or not 1 <= int(row[0]) <= MAX_ID:
                    raise UserError(f"{path} line {n}: expected movieId,title,genres, got {row!r}")
                rows.append((int(row[0]), [g.strip() for g in row[2].split("|") if g.strip()]))
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: not UTF-8 text: {exc}") from None
    if not rows:
        raise UserError(f"{path}: no movies")
    names = sorted({g for _, gs in rows for g in gs} | {CSV_NO_GENRE})
    index = {name: i for i, name in enumerate(names)}
    ids = np.array([r[0] for r in rows], dtype=np.int64)
    genres = np.zeros((len(rows), len(names)), dtype=bool)
    for i, (_, gs) in enumerate(rows):
        genres[i, [index[g] for g in gs]] = True
    return _catalogue(path, ids, genres, names, fallback=index[CSV_NO_GENRE])


def _catalogue(path, ids, genres, names, fallback):
    if len(np.unique(ids)) != len(ids):
        dup = ids[np.flatnonzero(pd.Series(ids).duplicated().to_numpy())[0]]
        raise UserError(f"{path}: item id {int(dup)} appears more than once")
    genres = genres.copy()
    genres[~genres.any(axis=1), fallback] = True  # no flag -> the 'unknown' genre
    order = np.argsort(ids, kind="stable")
    return ids[order], genres[order], names


# -- embeddings --------------------------------------------------------------------------------------


def primary_genre(genres: np.ndarray) -> np.ndarray:
    """topic_id per item: its least frequent genre in the whole catalogue (the most specific one;
    ties: lowest genre index). Uses item metadata only, never ratings."""
    freq = genres.sum(axis=0).astype(np.float64)
    cost = np.where(genres, freq[None, :], np.inf)
    return np.argmin(cost, axis=1).astype(np.int64)


# -- the import -------------------------------------------------------------------------------------


def import_movielens(src: Path | str, out: Path | str, params: ImportParams | None = None) -> dict:
    """Write a world built from the MovieLens files in `src` into `out`; returns world.json."""
    params = params or ImportParams()
    params.validate()
    out = prepare_out(out)
    data = read_movielens(src)
    world = build_world(data, params)
    write_world(world["tables"], world["meta"], out)
    return world["meta"]


def build_world(data: MovieLensData, params: ImportParams) -> dict:
    """The five tables (as pyarrow tables) and world.json's dict; pure, writes nothing."""
    r = data.ratings
    ts = r["timestamp"].to_numpy(np.int64)
    if params.last_days:
        last_day = int(ts.max() // 86_400)
        keep = ts // 86_400 > last_day - params.last_days
        r = r[keep].reset_index(drop=True)
        ts = ts[keep]
    first_day_ms = int(ts.min() // 86_400) * DAY_MS
    shift = time_shift(first_day_ms, params.start_ms)
    start_ms = first_day_ms + shift

    # Total event order: (user, second, item); ties within one second spread over milliseconds.
    eo = order_events(r["user_id"].to_numpy(), ts, r["item_id"].to_numpy(), grain_ms=SECOND_MS)
    order = eo.order
    user = r["user_id"].to_numpy(np.int64)[order]
    item = r["item_id"].to_numpy(np.int64)[order]
    rating = r["rating"].to_numpy(np.float64)[order]
    n = len(user)
    event_ms = eo.event_ms + shift
    action = params.mapping.actions(rating)

    days = int((event_ms.max() - start_ms) // DAY_MS) + 1
    if not 1 <= params.eval_days < days:
        raise UserError(f"--eval-days {params.eval_days}: the data spans {days} day(s); the "
                        f"evaluation period must leave at least one training day (1..{days - 1})")
    split_day = days - params.eval_days
    split_ms = start_ms + split_day * DAY_MS
    in_train = event_ms < split_ms

    # Requests: one per (user, bucket[, chunk of max_items]); events are sorted by (user, time).
    bucket = (event_ms - start_ms) // params.bucket_ms
    new_req = bucket_requests(user, event_ms, start_ms, params.bucket_ms)
    if params.max_items:
        # Split a bucket every max_items ratings, but only where a new second starts: the
        # ratings of one second always share a request (so a request never starts between
        # two of them and never needs to fit into their millisecond offsets).
        req_start = np.flatnonzero(new_req)
        within = np.arange(n) - req_start[np.cumsum(new_req) - 1]
        chunk = within // params.max_items
        starts = np.flatnonzero(np.diff(np.append(-1, eo.group_id)) > 0)
        changed = np.zeros(len(starts), dtype=bool)
        changed[1:] = chunk[starts[1:]] != chunk[starts[:-1]]
        new_req[starts[changed]] = True
    rq = Requests.from_starts(new_req, user, event_ms)
    req_of, req_first, req_user, req_time, req_id, req_size = (
        rq.of, rq.first, rq.user, rq.time, rq.id, rq.size)
    req_bucket = bucket[req_first]
    req_chunk = np.zeros(len(req_first), dtype=np.int64)
    if params.max_items:
        same = np.zeros(len(req_first), dtype=bool)
        same[1:] = (req_user[1:] == req_user[:-1]) & (req_bucket[1:] == req_bucket[:-1])
        run_start = np.flatnonzero(~same)
        req_chunk = np.arange(len(req_first)) - run_start[np.cumsum(~same) - 1]

    # Pins: every rated item; created at the UTC day start of its first rating.
    first = pd.Series(event_ms).groupby(item).min()
    item_ids, first_ms = first.index.to_numpy(np.int64), first.to_numpy(np.int64)
    created_ms = start_ms + (first_ms - start_ms) // DAY_MS * DAY_MS
    cat_rows = np.searchsorted(data.item_ids, item_ids)
    pin_genres = data.genres[cat_rows]
    topic = primary_genre(data.genres)[cat_rows]
    emb, emb_info, _ = item_embeddings(item_ids, pin_genres, user[in_train], item[in_train],
                                       params)

    # Impressions: the rated items of each request plus optional sampled negatives, positions
    # shuffled by a per-request generator (seeded by seed, user, bucket, chunk).
    imp_req, imp_pin, imp_action, imp_pos = _impressions(
        params, user, item, action, event_ms, req_of, req_first, req_size, req_user, req_time,
        req_bucket, req_chunk, item_ids, created_ms)

    # Events: one per mapped rating.
    has_action = action > 0
    ev_user, ev_item, ev_action = user[has_action], item[has_action], action[has_action]
    ev_time = event_ms[has_action]
    ev_ids = np.array([f"ml{u}-{i}" for u, i in zip(ev_user.tolist(), ev_item.tolist())], dtype=object)

    # Users: segment by training-period events (all mapped ratings before the split).
    user_ids, n_train = users_and_train_events(user, in_train & has_action)
    segment = segments_from_history(n_train, params.core_min_events)
    user_first_req = pd.Series(req_time).groupby(req_user).min().reindex(user_ids).to_numpy(np.int64)

    w = WorldArrays(
        item_ids=item_ids, topic=topic, embedding=emb, created_ms=created_ms,
        user_ids=user_ids, segment=segment, is_core=segment == "core", first_active_ms=user_first_req,
        imp_rid=req_id[imp_req], imp_user=req_user[imp_req], imp_time=req_time[imp_req],
        imp_pos=imp_pos, imp_pin=imp_pin, imp_action=imp_action,
        ev_ids=ev_ids, ev_user=ev_user, ev_pin=ev_item, ev_action=ev_action, ev_time=ev_time,
        ev_arrival=ev_time + params.arrival_delay_ms, ev_rid=req_id[req_of[has_action]],
    )
    tables = world_tables(w, start_ms, SURFACE)

    # -- world.json ----------------------------------------------------------------------------
    imp_time = w.imp_time
    req_is_eval = req_time >= split_ms
    imp_is_eval = imp_time >= split_ms
    imp_per_req = np.bincount(imp_req, minlength=len(req_first))
    # History available to each request: the user's events strictly before request_time.
    hist_events = np.cumsum(np.concatenate([[0], has_action.astype(np.int64)]))
    hist_before = hist_events[req_first] - hist_events[np.searchsorted(user, req_user, side="left")]

    def period(mask_req, mask_imp, mask_ev) -> dict:
        return {
            "requests": int(mask_req.sum()),
            "impressions": int(mask_imp.sum()),
            "rated_impressions": int((mask_imp & (imp_action >= 0)).sum()),
            "events": int(mask_ev.sum()),
            "users": int(len(np.unique(req_user[mask_req]))),
            "items_rated": int(len(np.unique(item[np.isin(req_of, np.flatnonzero(mask_req))]))),
            "requests_with_history": int((hist_before[mask_req] > 0).sum()),
            "requests_with_100_history": int((hist_before[mask_req] >= 100).sum()),
        }

    ev_eval = ev_time >= split_ms
    ties = eo.stats()
    summary = base_summary(w, start_ms, SEGMENTS)
    summary.update({
        "ratings": int(n),
        "duplicate_rows_dropped": data.duplicates,
        "ratings_without_action": int((action == 0).sum()),
        "negatives": int((imp_action < 0).sum()),
        "ratings_sharing_a_second": round(ties["tie_share"], 6),
        "max_ratings_in_one_second": ties["max_group"],
        "rated_items_per_request": quantiles(req_size),
        "impressions_per_request": quantiles(imp_per_req),
        "train": period(~req_is_eval, ~imp_is_eval, ~ev_eval),
        "eval": period(req_is_eval, imp_is_eval, ev_eval),
        "users_with_100_train_events": int((n_train >= 100).sum()),
        "eval_items_without_train_rating": int(
            len(np.setdiff1d(np.unique(item[~in_train]), np.unique(item[in_train])))),
        "embedding": emb_info,
    })
    meta = world_meta(w, source="movielens-100k" if data.layout == LAYOUT_100K else "movielens-csv",
                      days=days, seed=params.seed, start_ms=start_ms,
                      embedding_dim=params.embedding_dim, n_topics=len(data.genre_names),
                      summary=summary,
                      has_impressions=False)  # negatives are sampled, not shown (docs/movielens.md)
    meta.update({
        # MovieLens specifics.
        "mapping": params.mapping.to_dict(),
        "split_day": split_day,
        "split_ms": int(split_ms),
        "split_iso": utc_iso(split_ms),
        "eval_days": params.eval_days,
        "train_days": split_day,
        "bucket_ms": params.bucket_ms,
        "max_items": params.max_items,
        "negatives": params.negatives,
        "core_min_events": params.core_min_events,
        "topics": list(data.genre_names),
        "movielens": {
            "layout": data.layout,
            "files": data.files,
            "time_shift_ms": int(shift),
            "original_start_iso": utc_iso(first_day_ms),
            "original_first_rating": int(r["timestamp"].min()),
            "original_last_rating": int(r["timestamp"].max()),
            "last_days": params.last_days,
            "catalogue_items": int(len(data.item_ids)),
            "topic_rule": "least frequent genre of the item in the catalogue (ties: lowest index)",
            "pin_created_rule": "UTC day start of the item's first rating",
        },
        "behaviour": {
            "tie_base_ms": TIE_BASE_MS,
            "tie_step_ms": TIE_STEP_MS,
            "tie_span_ms": TIE_SPAN_MS,
            **embedding_behaviour(params, emb_info),
        },
    })
    return {"tables": tables, "meta": meta}


def _impressions(params, user, item, action, event_ms, req_of, req_first, req_size, req_user,
                 req_time, req_bucket, req_chunk, item_ids, created_ms):
    """(request index, pin, action (-1 = sampled negative), position) per impression."""
    n_req = len(req_first)
    K = params.negatives
    by_created = np.argsort(created_ms, kind="stable")
    created_sorted = created_ms[by_created]
    eligible_items = item_ids[by_created]  # items in the catalogue at a time t: prefix < t
    parts_req, parts_pin, parts_act, parts_pos = [], [], [], []
    user_start = 0
    for q in range(n_req):
        a, size = int(req_first[q]), int(req_size[q])
        if q == 0 or req_user[q] != req_user[q - 1]:
            user_start = a
        rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence(
            [params.seed, int(req_user[q]), int(req_bucket[q]), int(req_chunk[q])])))
        pins = item[a:a + size]
        acts = action[a:a + size].astype(np.int8)
        if K:
            n_elig = int(np.searchsorted(created_sorted, req_time[q], side="left"))
            # The user's items so far (earlier requests and this one) are never negatives. Each
            # of them was created (day of its first rating) before this request, so it is among
            # the n_elig eligible ones.
            seen = np.unique(item[user_start:a + size])
            available = n_elig - len(seen)
            take = min(K, available)
            if take > 0:
                if available <= 4 * K:
                    pool = eligible_items[:n_elig]
                    pool = np.sort(pool[~np.isin(pool, seen)])
                    neg = pool[rng.permutation(len(pool))[:take]]
                else:
                    chosen: list[int] = []
                    taken = set(seen.tolist())
                    while len(chosen) < take:
                        for idx in rng.integers(0, n_elig, size=2 * take).tolist():
                            pin = int(eligible_items[idx])
                            if pin not in taken:
                                taken.add(pin)
                                chosen.append(pin)
                                if len(chosen) == take:
                                    break
                    neg = np.array(chosen, dtype=np.int64)
                pins = np.concatenate([pins, neg])
                acts = np.concatenate([acts, np.full(len(neg), -1, dtype=np.int8)])
        parts_req.append(np.full(len(pins), q, dtype=np.int64))
        parts_pin.append(pins)
        parts_act.append(acts)
        parts_pos.append(rng.permutation(len(pins)).astype(np.int32))
    return (np.concatenate(parts_req), np.concatenate(parts_pin), np.concatenate(parts_act),
            np.concatenate(parts_pos))
