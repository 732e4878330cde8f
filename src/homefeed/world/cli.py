"""`homefeed world ...`: create interaction worlds.

Subcommands:
  generate          the synthetic world (homefeed.world.generate)
  import-movielens  (to come) a world built from MovieLens ratings; add its parser in
                    `register` below, next to `generate`, using the same file contract.
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

    # import-movielens: register its parser here (commands.add_parser("import-movielens", ...))
    # with its own func; it must write the same five files so load_world() reads both worlds.
