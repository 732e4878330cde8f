"""`homefeed world ...`: create interaction worlds.

Subcommands:
  generate          the synthetic world (homefeed.world.generate)
  import-movielens  a world built from MovieLens ratings (homefeed.world.movielens,
                    docs/movielens.md), written with the same file contract.
  import-kuairand   a world built from a KuaiRand log (homefeed.world.kuairand,
                    docs/kuairand.md), the same contract.
  fetch             download, check and unpack a dataset's official archive
                    (homefeed.world.fetch), ready for the matching import command.
"""

from __future__ import annotations

import argparse
import time
from datetime import datetime, timezone
from pathlib import Path

from homefeed.errors import UserError



def _start_ms(text: str) -> int:
    """--start accepts epoch milliseconds or an ISO-8601 date/time (UTC when no zone is given)."""
    text = text.strip()
    if text.lstrip("-").isdigit():
        return int(text)
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is neither epoch milliseconds nor an ISO date like 2026-01-05"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return int(moment.timestamp() * 1000)


def _default_embedding_dim() -> int:
    # The world's embeddings must match the feature schema's size (settings.embedding_dim).
    from homefeed.settings import load_settings

    try:
        return load_settings().embedding_dim
    except (ValueError, FileNotFoundError) as exc:
        raise UserError(f"cannot read settings for the default --embedding-dim: {exc}") from None


def _generate(args: argparse.Namespace) -> int:
    from homefeed.world.generate import WorldParams, generate_world

    params = WorldParams(
        users=args.users,
        pins=args.pins,
        days=args.days,
        seed=args.seed,
        start_ms=args.start,
        embedding_dim=args.embedding_dim if args.embedding_dim is not None else _default_embedding_dim(),
        n_topics=args.topics,
        non_core_share=args.non_core_share,
        late_fraction=args.late_fraction,
        new_pin_share=args.new_pin_share,
        intent_outside_share=args.intent_outside_share,
        min_candidates=args.min_candidates,
        max_candidates=args.max_candidates,
    )
    began = time.perf_counter()
    summary = generate_world(params, Path(args.out), progress=not args.quiet)
    elapsed = time.perf_counter() - began
    rates = summary.rate_per_impression
    print(
        f"world written to {args.out} in {elapsed:.1f} s: {summary.users} users, {summary.pins} pins, "
        f"{summary.requests} requests, {summary.impressions} impressions, {summary.events} events "
        f"(per impression: repin {rates['repin']:.3%}, click {rates['click']:.3%}, "
        f"hide {rates['hide']:.3%}; late {summary.late_fraction:.2%}; "
        f"non-core users {summary.non_core_share:.0%})"
    )
    return 0


def register(parser: argparse.ArgumentParser) -> None:
    from homefeed.world.generate import WorldParams

    d = WorldParams()
    commands = parser.add_subparsers(dest="world_command", metavar="COMMAND")

    gen = commands.add_parser(
        "generate",
        help="generate a synthetic world (pins, users, requests, events)",
        description="Generate a deterministic synthetic homefeed world into DIR: pins.parquet, "
        "users.parquet, requests.parquet, events.parquet and world.json (see docs/world.md).",
    )
    gen.add_argument("--out", required=True, metavar="DIR", help="output directory")
    gen.add_argument("--users", type=int, default=d.users, metavar="N", help=f"users (default {d.users})")
    gen.add_argument("--pins", type=int, default=d.pins, metavar="M", help=f"pins (default {d.pins})")
    gen.add_argument("--days", type=int, default=d.days, metavar="D", help=f"days, >= 2 (default {d.days})")
    gen.add_argument("--seed", type=int, default=d.seed, metavar="S", help=f"random seed (default {d.seed})")
    gen.add_argument(
        "--start", type=_start_ms, default=d.start_ms, metavar="WHEN",
        help="world start: epoch ms or ISO date/time, UTC (default 2026-01-05T00:00Z, a Monday)",
    )
    gen.add_argument(
        "--embedding-dim", type=int, default=None, metavar="D",
        help="pin embedding size (default: settings.embedding_dim, 32)",
    )
    gen.add_argument("--topics", type=int, default=d.n_topics, metavar="K",
                     help=f"topics (default {d.n_topics})")
    gen.add_argument(
        "--non-core-share", type=float, default=d.non_core_share, metavar="F",
        help=f"share of new/casual/resurrected users (default {d.non_core_share})",
    )
    gen.add_argument(
        "--late-fraction", type=float, default=d.late_fraction, metavar="F",
        help=f"share of events arriving minutes to hours late (default {d.late_fraction})",
    )
    gen.add_argument(
        "--new-pin-share", type=float, default=d.new_pin_share, metavar="F",
        help=f"share of pins created during the world (default {d.new_pin_share})",
    )
    gen.add_argument(
        "--intent-outside-share", type=float, default=d.intent_outside_share, metavar="F",
        help="share of session intents drawn from trends, not the long-term mix "
        f"(default {d.intent_outside_share})",
    )
    gen.add_argument("--min-candidates", type=int, default=d.min_candidates, metavar="C",
                     help=f"candidates per request, at least (default {d.min_candidates})")
    gen.add_argument("--max-candidates", type=int, default=d.max_candidates, metavar="C",
                     help=f"candidates per request, at most (default {d.max_candidates})")
    gen.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    gen.set_defaults(func=_generate)

    _register_import_movielens(commands)
    _register_import_kuairand(commands)
    _register_fetch(commands)


def _add_import_args(p: argparse.ArgumentParser, d, dataset: str) -> None:
    """The options every importer has (defaults from its params dataclass `d`)."""
    p.add_argument("--src", required=True, metavar="DIR", help=f"directory with the {dataset} files")
    p.add_argument("--out", required=True, metavar="DIR", help="output directory")
    p.add_argument("--embedding-dim", type=int, default=None, metavar="D",
                   help="pin embedding size (default: settings.embedding_dim, 32)")
    p.add_argument("--eval-days", type=int, default=d.eval_days, metavar="N",
                   help=f"the last N days are the evaluation period (default {d.eval_days})")
    p.add_argument("--arrival-delay-ms", type=int, default=d.arrival_delay_ms, metavar="MS",
                   help=f"arrival_time = event_time + MS (default {d.arrival_delay_ms})")


def _import_movielens(args: argparse.Namespace) -> int:
    from homefeed.world.movielens import ImportParams, RatingMapping, import_movielens, parse_bucket

    start = None
    if args.start not in (None, "auto"):
        try:
            start = _start_ms(args.start)
        except argparse.ArgumentTypeError as exc:
            raise UserError(f"--start: {exc}") from None
    params = ImportParams(
        embedding_dim=args.embedding_dim if args.embedding_dim is not None else _default_embedding_dim(),
        bucket_ms=parse_bucket(args.bucket),
        eval_days=args.eval_days,
        mapping=RatingMapping.parse(args.mapping),
        negatives=args.negatives,
        seed=args.seed,
        core_min_events=args.core_min_events,
        max_items=args.max_items,
        start_ms=start,
        last_days=args.last_days,
        arrival_delay_ms=args.arrival_delay_ms,
        cf_dim=args.cf_dim,
        genre_weight=args.genre_weight,
        max_vocab=args.max_vocab,
    )
    began = time.perf_counter()
    meta = import_movielens(Path(args.src), Path(args.out), params)
    elapsed = time.perf_counter() - began
    s = meta["summary"]
    train, ev = s["train"], s["eval"]
    print(
        f"world written to {args.out} in {elapsed:.1f} s ({meta['source']}): {s['users']} users, "
        f"{s['pins']} pins, {meta['days']} days from {meta['start_iso'][:10]} "
        f"(evaluation from day {meta['split_day']}), {s['requests']} requests "
        f"({train['requests']} train / {ev['requests']} eval), {s['impressions']} impressions, "
        f"{s['events']} events (repin {s['events_by_action']['repin']}, "
        f"click {s['events_by_action']['click']}, hide {s['events_by_action']['hide']}); "
        f"core users {s['segment_users']['core']}; "
        f"genre-only embeddings {s['embedding']['items_genre_only']}"
    )
    return 0


def _register_import_movielens(commands) -> None:
    from homefeed.world.movielens import ImportParams

    d = ImportParams()
    ml = commands.add_parser(
        "import-movielens",
        help="turn MovieLens ratings into a world (same files as generate)",
        description="Turn GroupLens MovieLens ratings (ML-100K: u.data + u.item; later releases: "
        "ratings.csv + movies.csv) into pins.parquet, users.parquet, requests.parquet, "
        "events.parquet and world.json in DIR, the same contract as `world generate` "
        "(see docs/movielens.md).",
    )
    _add_import_args(ml, d, "MovieLens")
    ml.add_argument("--bucket", default="day", metavar="SPAN",
                    help="one request = a user's ratings within one bucket: day, hour or 6h, 30m, "
                    "... (must divide a day; default day)")
    ml.add_argument("--mapping", action="append", default=None, metavar="SPEC",
                    help="rating thresholds, e.g. repin=4,click=3,hide=2 (the default): rating >= "
                    "repin -> repin, >= click -> click, <= hide -> hide, in between -> no action")
    ml.add_argument("--negatives", type=int, default=d.negatives, metavar="K",
                    help="unrated items added to each request as ignored impressions, all labels 0 "
                    f"(default {d.negatives})")
    ml.add_argument("--seed", type=int, default=d.seed, metavar="S",
                    help=f"seed for negatives, positions, SVD start and projection (default {d.seed})")
    ml.add_argument("--core-min-events", type=int, default=d.core_min_events, metavar="N",
                    help="training-period events that make a user core "
                    f"(default {d.core_min_events})")
    ml.add_argument("--max-items", type=int, default=d.max_items, metavar="N",
                    help="split a bucket into requests of about N consecutive ratings, never "
                    "between two ratings of one second (0 = no split; default 0)")
    ml.add_argument("--start", default="auto", metavar="WHEN",
                    help="UTC midnight that day 0 maps to (epoch ms or ISO date); default auto: the "
                    "data's own dates, moved by whole weeks onto >= 2000-01-01 when older")
    ml.add_argument("--last-days", type=int, default=d.last_days, metavar="N",
                    help="keep only the ratings of the last N days (0 = all; default 0)")
    ml.add_argument("--cf-dim", type=int, default=None, metavar="K",
                    help="collaborative dimensions of the embedding (default embedding_dim - genres, "
                    "at least 4)")
    ml.add_argument("--genre-weight", type=float, default=d.genre_weight, metavar="W",
                    help=f"share of the embedding's squared norm on genres (default {d.genre_weight})")
    ml.add_argument("--max-vocab", type=int, default=d.max_vocab, metavar="N",
                    help=f"most-rated training items given a collaborative part (default {d.max_vocab})")
    ml.set_defaults(func=_import_movielens)


def _import_kuairand(args: argparse.Namespace) -> int:
    from homefeed.world.importer import parse_bucket, parse_duration
    from homefeed.world.kuairand import KuaiRandParams, LabelMapping, import_kuairand, parse_degrees

    params = KuaiRandParams(
        embedding_dim=args.embedding_dim if args.embedding_dim is not None else _default_embedding_dim(),
        bucket_ms=parse_bucket(args.bucket),
        max_gap_ms=0 if args.max_gap.strip() in ("0", "") else parse_duration(args.max_gap, "--max-gap"),
        eval_days=args.eval_days,
        mapping=LabelMapping.parse(args.mapping),
        seed=args.seed,
        include_random=not args.no_random,
        core_degrees=parse_degrees(args.core_degrees),
        core_min_events=args.core_min_events,
        arrival_delay_ms=args.arrival_delay_ms,
        cf_dim=args.cf_dim,
        genre_weight=args.tag_weight,
        max_vocab=args.max_vocab,
    )
    began = time.perf_counter()
    meta = import_kuairand(Path(args.src), Path(args.out), params)
    elapsed = time.perf_counter() - began
    s = meta["summary"]
    train, ev = s["train"], s["eval"]
    by = s["events_by_action"]
    print(
        f"world written to {args.out} in {elapsed:.1f} s ({meta['source']}): {s['users']} users, "
        f"{s['pins']} pins, {meta['days']} days from {meta['start_iso'][:10]} (evaluation from day "
        f"{meta['split_day']}), {s['requests']} requests ({train['requests']} train / "
        f"{ev['requests']} eval), {s['impressions']} impressions "
        f"({s['duplicate_rows_dropped']} duplicate rows dropped), {s['events']} events (repin "
        f"{by['repin']}, click {by['click']}, hide {by['hide']}); eval requests with > 3 "
        f"candidates and a click and a non-click: {ev['judgeable_requests']['click']}; "
        f"non-core users {s['non_core_share']:.1%}"
    )
    return 0


def _register_import_kuairand(commands) -> None:
    from homefeed.world.kuairand import DEFAULT_CORE_DEGREES, KuaiRandParams

    d = KuaiRandParams()
    kr = commands.add_parser(
        "import-kuairand",
        help="turn a KuaiRand log (Pure, 1K, 27K) into a world (same files as generate)",
        description="Turn the official KuaiRand layout (log_standard_*_{pure,1k,27k}.csv; optional "
        "log_random_*, user_features_*.csv, video_features_basic_*.csv) into pins.parquet, "
        "users.parquet, requests.parquet, events.parquet and world.json in DIR, the same contract "
        "as `world generate` (see docs/kuairand.md).",
    )
    _add_import_args(kr, d, "KuaiRand")
    kr.add_argument("--bucket", default="day", metavar="SPAN",
                    help="one request = a user's impressions within one bucket of the Beijing day: "
                    "day, hour or 6h, 30m, ... (must divide a day; default day)")
    kr.add_argument("--max-gap", default="0", metavar="SPAN",
                    help="also start a new request where two consecutive impressions are more than "
                    "SPAN apart, e.g. 3h (default 0: no cut)")
    kr.add_argument("--mapping", action="append", default=None, metavar="SPEC",
                    help="log columns per action, e.g. repin=like|follow|forward|comment,"
                    "click=click,hide=hate (the default); one action per impression, priority hide > "
                    "repin > click; an impression with none has all labels 0")
    kr.add_argument("--no-random", action="store_true",
                    help="leave out log_random_* (randomly exposed videos), read by default")
    kr.add_argument("--core-degrees", default=",".join(DEFAULT_CORE_DEGREES), metavar="LIST",
                    help="user_active_degree values that make a user core (default "
                    f"{','.join(DEFAULT_CORE_DEGREES)})")
    kr.add_argument("--core-min-events", type=int, default=d.core_min_events, metavar="N",
                    help="without user_features_*.csv: training-period events that make a user core "
                    f"(default {d.core_min_events})")
    kr.add_argument("--seed", type=int, default=d.seed, metavar="S",
                    help=f"seed for positions, SVD start and projection (default {d.seed})")
    kr.add_argument("--cf-dim", type=int, default=None, metavar="K",
                    help="collaborative dimensions of the embedding (default max(embedding_dim - "
                    "tags, embedding_dim / 2))")
    kr.add_argument("--tag-weight", type=float, default=d.genre_weight, metavar="W",
                    help=f"share of the embedding's squared norm on tags (default {d.genre_weight})")
    kr.add_argument("--max-vocab", type=int, default=d.max_vocab, metavar="N",
                    help=f"most-clicked training videos given a collaborative part (default {d.max_vocab})")
    kr.set_defaults(func=_import_kuairand)


def _fetch(args: argparse.Namespace) -> int:
    from homefeed.world.fetch import fetch

    r = fetch(args.name, args.out, cache_dir=args.cache_dir, url=args.url, mirror=args.mirror,
              sha256=args.sha256, archive_file=args.archive, progress=not args.quiet)
    how = "downloaded" if r.downloaded else ("copied from --archive" if args.archive else "from the cache")
    check = ("recorded on this first fetch (no SHA-256 is pinned for it)" if r.recorded
             else "checked")
    where = "unpacked" if r.unpacked else "already there"
    print(f"{r.archive.name}: {r.archive.filename} {how} ({r.size / 2**20:.1f} MiB, SHA-256 "
          f"{r.sha256} {check}; cache {r.cached}); {where}: {r.files} files in {r.out}; next: "
          f"homefeed world {r.archive.importer} --src {r.out} --out WORLD_DIR")
    return 0


def _register_fetch(commands) -> None:
    from homefeed.world.fetch import ARCHIVES

    listing = "\n".join(f"  {a.name:<24}{a.description}" for a in ARCHIVES.values())
    fe = commands.add_parser(
        "fetch",
        help="download a dataset's official archive (MovieLens, KuaiRand), checked and unpacked",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Download the official archive of NAME into the cache (or take it from there), "
        "check its SHA-256 (and the publisher's MD5 and size), and unpack the importer's files "
        "into DIR, ready for `homefeed world import-movielens/import-kuairand --src DIR`. "
        "Datasets:\n" + listing + "\n\nWhere no SHA-256 is pinned (KuaiRand), the first fetch "
        "records one beside the cached archive and later fetches must match it (see "
        "docs/world.md).",
    )
    fe.add_argument("name", choices=list(ARCHIVES), metavar="NAME", help=", ".join(ARCHIVES))
    fe.add_argument("--out", required=True, metavar="DIR",
                    help="directory for the unpacked files (new or empty)")
    fe.add_argument("--cache-dir", default=None, metavar="DIR",
                    help="where archives are kept (default: HOMEFEED_DATA_CACHE, else "
                    "HOMEFEED_HOME/cache when a home is set, else $XDG_CACHE_HOME/homefeed)")
    fe.add_argument("--url", default=None, metavar="URL", help="download from URL, not the official one")
    fe.add_argument("--mirror", default=None, metavar="URL",
                    help="a mirror holding the archives under their file names (default: "
                    "HOMEFEED_DATA_MIRROR; none)")
    fe.add_argument("--sha256", default=None, metavar="HEX",
                    help="expect this SHA-256 instead of the pinned checks (a mirror's own build)")
    fe.add_argument("--archive", default=None, metavar="FILE",
                    help="use a copy downloaded by hand instead of downloading (same checks)")
    fe.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    fe.set_defaults(func=_fetch)
