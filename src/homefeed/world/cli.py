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
import functools
import importlib
import time
from collections.abc import Callable
from dataclasses import dataclass
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

    _register_importers(commands)
    _register_fetch(commands)


# -- importers: one table entry per dataset ------------------------------------------------------
#
# Every importer is `import_X(src, out, Params)` in a module of homefeed.world with a params
# dataclass; its command is an `ImportCommand`: the shared options (`_add_import_args`) plus the
# dataset's own `Opt`s, each setting one field of the params (default: the field's default), and
# the dataset's part of the one-line summary. A next dataset is one more entry in IMPORTERS.

FROM_PARAMS = object()  # an Opt's default: the params dataclass field's default


@dataclass(frozen=True)
class Opt:
    flag: str
    field: str  # the params field it sets
    help: str  # "{default}" is filled in
    type: Callable | None = int
    metavar: str | None = "N"
    default: object = FROM_PARAMS  # or a value, or a function of the params defaults
    convert: Callable | None = None  # (module, CLI value) -> field value
    action: str | None = None

    def add(self, p: argparse.ArgumentParser, defaults) -> None:
        default = (getattr(defaults, self.field) if self.default is FROM_PARAMS
                   else self.default(defaults) if callable(self.default) else self.default)
        kw = {"default": default, "help": self.help.format(default=default)}
        if self.action == "store_true":
            kw["action"] = "store_true"
        else:
            kw.update(metavar=self.metavar, **({"action": self.action} if self.action else {}),
                      **({"type": self.type} if self.type and not self.action else {}))
        p.add_argument(self.flag, dest=self.field, **kw)

    def value(self, module, args: argparse.Namespace):
        raw = getattr(args, self.field)
        return self.convert(module, raw) if self.convert else raw


@dataclass(frozen=True)
class ImportCommand:
    name: str  # the subcommand
    dataset: str  # for help texts
    module: str  # homefeed.world.X
    params: str  # its params dataclass
    run: str  # its import function
    help: str
    description: str
    options: tuple[Opt, ...]
    details: Callable[[dict], str]  # the dataset's part of the summary line


def _bucket(module, text: str) -> int:
    from homefeed.world.importer import parse_bucket

    return parse_bucket(text)


# The options every importer has (fields of every params dataclass).
COMMON_OPTS = (
    Opt("--embedding-dim", "embedding_dim", "pin embedding size (default: settings.embedding_dim, 32)",
        metavar="D", default=None),
    Opt("--eval-days", "eval_days", "the last N days are the evaluation period (default {default})"),
    Opt("--arrival-delay-ms", "arrival_delay_ms", "arrival_time = event_time + MS (default {default})",
        metavar="MS"),
    Opt("--seed", "seed", "seed of every random choice: positions, SVD start, projection, MovieLens's negatives "
        "(default {default})",
        metavar="S"),
    Opt("--cf-dim", "cf_dim", "collaborative dimensions of the embedding (default: embedding_dim - "
        "genres or tags, at least 4 or embedding_dim / 2)", metavar="K", default=None),
    Opt("--max-vocab", "max_vocab", "most-engaged training items given a collaborative part "
        "(default {default})"),
)


def _add_import_args(p: argparse.ArgumentParser, command: ImportCommand, defaults) -> None:
    """The options every importer has, then the dataset's own."""
    p.add_argument("--src", required=True, metavar="DIR",
                   help=f"directory with the {command.dataset} files (`homefeed world fetch` writes one)")
    p.add_argument("--out", required=True, metavar="DIR", help="output directory")
    for opt in (*COMMON_OPTS, *command.options):
        opt.add(p, defaults)


def _movielens_start(module, text):
    if text in (None, "auto"):
        return None
    try:
        return _start_ms(text)
    except argparse.ArgumentTypeError as exc:
        raise UserError(f"--start: {exc}") from None


def _movielens_details(meta: dict) -> str:
    s = meta["summary"]
    return (f"core users {s['segment_users']['core']}; genre-only embeddings "
            f"{s['embedding']['items_genre_only']}")


def _kuairand_details(meta: dict) -> str:
    s = meta["summary"]
    sliced = (f"; {s['rows_outside_the_user_slice']} rows outside the {meta['kuairand']['max_users']}"
              "-user slice" if meta["kuairand"]["max_users"] else "")
    return (f"{s['duplicate_rows_dropped']} duplicate rows dropped{sliced}; eval requests with > 3 "
            f"candidates and a click and a non-click: {s['eval']['judgeable_requests']['click']}; "
            f"non-core users {s['non_core_share']:.1%}")


def _max_gap(module, text: str) -> int:
    from homefeed.world.importer import parse_duration

    return 0 if text.strip() in ("0", "") else parse_duration(text, "--max-gap")


IMPORTERS = (
    ImportCommand(
        "import-movielens", "MovieLens", "homefeed.world.movielens", "ImportParams", "import_movielens",
        help="turn MovieLens ratings into a world (same files as generate)",
        description="Turn GroupLens MovieLens ratings (ML-100K: u.data + u.item; later releases: "
        "ratings.csv + movies.csv) into pins.parquet, users.parquet, requests.parquet, "
        "events.parquet and world.json in DIR, the same contract as `world generate` "
        "(see docs/movielens.md).",
        options=(
            Opt("--bucket", "bucket_ms", "one request = a user's ratings within one bucket: day, hour "
                "or 6h, 30m, ... (must divide a day; default day)", type=str, metavar="SPAN",
                default="day", convert=_bucket),
            Opt("--mapping", "mapping", "rating thresholds, e.g. repin=4,click=3,hide=2 (the "
                "default): rating >= repin -> repin, >= click -> click, <= hide -> hide, in between "
                "-> no action", metavar="SPEC", default=None, action="append",
                convert=lambda m, v: m.RatingMapping.parse(v)),
            Opt("--negatives", "negatives", "unrated items added to each request as ignored "
                "impressions, all labels 0 (default {default})", metavar="K"),
            Opt("--core-min-events", "core_min_events", "training-period events that make a user "
                "core (default {default})"),
            Opt("--max-items", "max_items", "split a bucket into requests of about N consecutive "
                "ratings, never between two ratings of one second (0 = no split; default {default})"),
            Opt("--start", "start_ms", "UTC midnight that day 0 maps to (epoch ms or ISO date); "
                "default auto: the data's own dates, moved by whole weeks onto >= 2000-01-01 when "
                "older", type=str, metavar="WHEN", default="auto", convert=_movielens_start),
            Opt("--last-days", "last_days", "keep only the ratings of the last N days (0 = all; "
                "default {default})"),
            Opt("--genre-weight", "genre_weight", "share of the embedding's squared norm on genres "
                "(default {default})", type=float, metavar="W"),
        ),
        details=_movielens_details,
    ),
    ImportCommand(
        "import-kuairand", "KuaiRand", "homefeed.world.kuairand", "KuaiRandParams", "import_kuairand",
        help="turn a KuaiRand log (Pure, 1K, 27K) into a world (same files as generate)",
        description="Turn the official KuaiRand layout (log_standard_*_{pure,1k,27k}.csv; optional "
        "log_random_*, user_features_*.csv, video_features_basic_*.csv) into pins.parquet, "
        "users.parquet, requests.parquet, events.parquet and world.json in DIR, the same contract "
        "as `world generate` (see docs/kuairand.md).",
        options=(
            Opt("--bucket", "bucket_ms", "one request = a user's impressions within one bucket of the "
                "Beijing day: day, hour or 6h, 30m, ... (must divide a day; default day)", type=str,
                metavar="SPAN", default="day", convert=_bucket),
            Opt("--max-gap", "max_gap_ms", "also start a new request where two consecutive "
                "impressions are more than SPAN apart, e.g. 3h (default 0: no cut)", type=str,
                metavar="SPAN", default="0", convert=_max_gap),
            Opt("--mapping", "mapping", "log columns per action, e.g. repin=like|follow|forward|"
                "comment,click=click,hide=hate (the default); one action per impression, priority "
                "hide > repin > click; an impression with none has all labels 0", metavar="SPEC",
                default=None, action="append", convert=lambda m, v: m.LabelMapping.parse(v)),
            Opt("--no-random", "include_random", "leave out log_random_* (randomly exposed videos), "
                "read by default", default=False, action="store_true", convert=lambda m, v: not v),
            Opt("--core-degrees", "core_degrees", "user_active_degree values that make a user core "
                "(default {default})", type=str, metavar="LIST", default=lambda d: ",".join(d.core_degrees),
                convert=lambda m, v: m.parse_degrees(v)),
            Opt("--core-min-events", "core_min_events", "without user_features_*.csv: "
                "training-period events that make a user core (default {default})"),
            Opt("--tag-weight", "genre_weight", "share of the embedding's squared norm on tags "
                "(default {default})", type=float, metavar="W"),
            Opt("--max-users", "max_users", "a slice for demos and smoke tests: keep the N users "
                "with the most impressions (0 = all; default {default})"),
        ),
        details=_kuairand_details,
    ),
)


def _import(command: ImportCommand, args: argparse.Namespace) -> int:
    module = importlib.import_module(command.module)
    values = {opt.field: opt.value(module, args) for opt in (*COMMON_OPTS, *command.options)}
    if values["embedding_dim"] is None:
        values["embedding_dim"] = _default_embedding_dim()
    params = getattr(module, command.params)(**values)
    began = time.perf_counter()
    meta = getattr(module, command.run)(Path(args.src), Path(args.out), params)
    elapsed = time.perf_counter() - began
    s = meta["summary"]
    train, ev, by = s["train"], s["eval"], s["events_by_action"]
    print(
        f"world written to {args.out} in {elapsed:.1f} s ({meta['source']}): {s['users']} users, "
        f"{s['pins']} pins, {meta['days']} days from {meta['start_iso'][:10]} (evaluation from day "
        f"{meta['split_day']}), {s['requests']} requests ({train['requests']} train / "
        f"{ev['requests']} eval), {s['impressions']} impressions, {s['events']} events (repin "
        f"{by['repin']}, click {by['click']}, hide {by['hide']}); {command.details(meta)}"
    )
    return 0


def _register_importers(commands) -> None:
    for command in IMPORTERS:
        defaults = getattr(importlib.import_module(command.module), command.params)()
        p = commands.add_parser(command.name, help=command.help, description=command.description)
        _add_import_args(p, command, defaults)
        p.set_defaults(func=functools.partial(_import, command))


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
                    "$HOMEFEED_HOME/cache when that is set, else $XDG_CACHE_HOME/homefeed)")
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
