"""`homefeed bench dataset`: seconds and peak memory of `homefeed dataset build` by world size.

Each case goes the real way in a private stack (own redis-server and broker on free ports, own
home, own copy of the feature repo), so the build reads what a replay wrote:

1. make the world: a synthetic one (`--users` sizes over `--days`), and a long-span one in the
   MovieLens `ratings.csv` shape (`--long-span-events` ratings by 610 users over ~20 years,
   written as ratings.csv + movies.csv and imported with `homefeed world import-movielens`);
2. load it into Redis + the offline log: `homefeed stream load`'s bulk path by default (the
   consumer's own apply, no broker), or `--load kafka`: producer -> broker -> consumer; then
   daily profiles; compaction;
3. time `homefeed dataset build` in its own process and read its peak RSS (wait4), once per
   offline store (`--stores`); the build's own dataset.json adds the seconds of each stage and
   the peak RSS at the end of each (`build_timings_s`), and its chunks of users (`--chunks`,
   default the build's own: one per 200,000 impressions).

    homefeed bench dataset --json                                  # the default cases
    homefeed bench dataset --users 300,600 --long-span-events 0     # synthetic only
    homefeed bench dataset --stores duckdb,spark                    # both offline stores
    homefeed bench dataset --users 9000 --long-span-events 0 --keep # 1M events, kept for reruns

The report lists each case's events, requests, impressions, build seconds and peak RSS, and the
time ratio between consecutive synthetic sizes against their event ratio.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from homefeed.settings import Settings, load_settings

log = logging.getLogger(__name__)

DAY_S = 86_400
LONG_SPAN_START_S = 828_316_800  # 1996-04-01, where ml-latest-small starts
# ml-latest-small's rating distribution (0.5 .. 5.0 stars), rounded
RATINGS = np.arange(1, 11) / 2
RATING_SHARE = np.array([1.4, 2.8, 1.9, 7.5, 5.6, 20.1, 13.1, 26.6, 7.7, 13.3]) / 100
GENRES = ("Action", "Adventure", "Animation", "Comedy", "Crime", "Documentary", "Drama", "Fantasy",
          "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western")


def write_long_span_ratings(out: Path, events: int, years: float = 20.0, users: int = 610,
                            movies: int = 9_000, seed: int = 0) -> Path:
    """A ratings.csv + movies.csv pair shaped like ml-latest-small: heavy-tailed activity per user,
    each user active over a stretch of a ~`years`-long history, one rating per (user, movie)."""
    rng = np.random.default_rng(seed)
    out.mkdir(parents=True, exist_ok=True)
    share = rng.pareto(1.2, users) + 0.05
    share /= share.sum()
    scale = float(events)
    for _ in range(30):  # at least 20 ratings a user (as GroupLens keeps), at most half the movies
        per_user = np.clip(np.round(share * scale), 20, movies // 2).astype(np.int64)
        scale *= events / max(int(per_user.sum()), 1)
    span_s = int(years * 365.25 * DAY_S)
    popularity = rng.pareto(1.0, movies) + 0.01
    popularity /= popularity.sum()
    rows = []
    for user, n in enumerate(per_user, start=1):
        start = int(rng.integers(0, span_s - DAY_S))
        length = int(min(span_s - start, rng.exponential(span_s / 6) + DAY_S))
        items = rng.choice(movies, size=int(n), replace=False, p=popularity) + 1
        # sessions: ratings come in bursts of seconds to minutes on a few days
        days = rng.integers(0, max(length // DAY_S, 1), size=max(int(n) // 15, 1))
        stamps = (LONG_SPAN_START_S + start + rng.choice(days, int(n)) * DAY_S
                  + rng.integers(0, 3_600, int(n)))
        ratings = rng.choice(RATINGS, int(n), p=RATING_SHARE)
        rows.append(pd.DataFrame({"userId": user, "movieId": items, "rating": ratings,
                                  "timestamp": stamps}))
    frame = pd.concat(rows, ignore_index=True).sort_values(["userId", "movieId"])
    frame.to_csv(out / "ratings.csv", index=False)
    genre = rng.integers(0, len(GENRES), movies)
    pd.DataFrame({"movieId": np.arange(1, movies + 1), "title": [f"Movie {i}" for i in range(1, movies + 1)],
                  "genres": [GENRES[g] for g in genre]}).to_csv(out / "movies.csv", index=False)
    return out


def _env(settings: Settings) -> dict:
    env = dict(os.environ, HOMEFEED_HOME=str(settings.home), HOMEFEED_REDIS_PORT=str(settings.redis_port),
               HOMEFEED_KAFKA_PORT=str(settings.kafka_port), HOMEFEED_FEATURE_REPO=str(settings.feature_repo),
               HOMEFEED_ACTIONS_TOPIC=settings.actions_topic, HOMEFEED_PINS_TOPIC=settings.pins_topic,
               HOMEFEED_IMPRESSIONS_TOPIC=settings.impressions_topic,
               HOMEFEED_DEAD_LETTER_TOPIC=settings.dead_letter_topic,
               HOMEFEED_CONSUMER_GROUP=settings.consumer_group)
    for name in ("REDIS_URL", "KAFKA_BOOTSTRAP_SERVERS"):
        env.pop(name, None)
    return env


def _run_measured(argv: list[str], env: dict, log_path: Path) -> tuple[float, float]:
    """(seconds, peak RSS in MiB) of a child process (its own rusage, from wait4)."""
    started = time.perf_counter()
    with open(log_path, "w") as out:
        proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise RuntimeError(f"{' '.join(argv)} failed ({proc.returncode}): "
                           f"{log_path.read_text()[-2000:]}")
    return seconds, usage.ru_maxrss / 1024  # Linux: KiB


def _replay(settings: Settings, world_dir: Path, via: str = "bulk") -> dict:
    """world -> Redis + log (bulk load, or Kafka -> consumer); then profiles and compaction.
    Returns counts."""
    from homefeed import features as F
    from homefeed.stack import ensure_topics
    from homefeed.stream.bulk import bulk_load
    from homefeed.stream.replay import replay_world
    from homefeed.training.dataset import compact_table
    from homefeed.training.profiles_job import run_profile_job

    if via == "bulk":
        done = bulk_load(settings, world_dir, validate=False, progress=False)
    else:
        ensure_topics(settings)
        done = replay_world(settings, world_dir, validate=False)
    run_profile_job(settings)
    files = {t: compact_table(settings.offline_dir, t)["files_before"]
             for t in (F.USER_ACTION_SEQUENCE, F.PIN_FEATURES, F.USER_PROFILE, "action_events")}
    return {"events": done["events"], "pins": done["pins"], "load": via, "load_seconds": done["seconds"],
            "log_files_before_compaction": files}


def run_case(base: Settings, root: Path, name: str, world_dir: Path, test_days: int,
             stores: tuple[str, ...] = ("duckdb",), chunks: int | None = None,
             load: str = "bulk") -> list[dict]:
    """Replay one world, then time `homefeed dataset build` on it once per offline store."""
    from homefeed.envscope import scoped_env
    from homefeed.feature_store import apply_repo
    from homefeed.validation import init_context

    home = root / name
    repo = home / "feature_repo"
    shutil.copytree(base.feature_repo, repo, ignore=shutil.ignore_patterns("data", "__pycache__"))
    settings = base.replace(home=home, feature_repo=repo, actions_topic=f"bench-ds-{name}",
                            pins_topic=f"bench-ds-pins-{name}", dead_letter_topic=f"bench-ds-dlq-{name}",
                            impressions_topic=f"bench-ds-impressions-{name}",
                            consumer_group=f"bench-ds-{name}")
    env = _env(settings)
    env["HOMEFEED_VALIDATION_DIR"] = str(home / "validation")
    # in-process Feast clients read settings from the environment: this process takes `env`
    changes: dict[str, str | None] = {k: v for k, v in env.items() if os.environ.get(k) != v}
    changes.update((k, None) for k in os.environ.keys() - env.keys())
    with scoped_env(changes):
        init_context(home / "validation")
        apply_repo(repo)
        report = {"case": name, **_replay(settings, world_dir, load)}
    replayed, reports = report, []
    for store in stores:
        out = home / f"dataset-{store}"
        seconds, peak_mib = _run_measured(
            [sys.executable, "-m", "homefeed.cli", "dataset", "build", "--world", str(world_dir),
             "--out", str(out), "--test-days", str(test_days), "-q",
             *(["--chunks", str(chunks)] if chunks else [])],
            dict(env, HOMEFEED_OFFLINE_STORE=store), home / f"build-{store}.log")
        meta = json.loads((out / "dataset.json").read_text())
        report = {**replayed, "store": store,
                  "days": int(meta["days"]),
                  "requests": sum(c["requests"] for c in meta["counts"].values()),
                  "impressions": sum(c["impressions"] for c in meta["counts"].values()),
                  "leaked_actions": meta["audit"]["leaked_actions"],
                  "chunks": meta.get("layout", {}).get("chunks", 1),
                  "build_seconds": round(seconds, 1),  # the whole `homefeed dataset build` process
                  "build_seconds_inside": meta["build_seconds"],
                  # setup, point_in_time_and_assembly, audit, validation, write; peak_rss_mib by stage
                  "build_timings_s": meta.get("build_timings_s"),
                  "peak_rss_mib": round(peak_mib, 1)}  # the build process; a Spark JVM is a process of its own
        log.info("dataset bench case %s", report)
        reports.append(report)
    return reports


def run_dataset_bench(users: list[int], days: int, pins: int, long_span_events: int,
                      seed: int = 0, keep: bool = False, stores: tuple[str, ...] = ("duckdb",),
                      chunks: int | None = None, load: str = "bulk") -> dict:
    from homefeed.stack import LocalStack, free_port
    from homefeed.world import WorldParams, generate_world
    from homefeed.world.movielens import import_movielens

    root = Path(tempfile.mkdtemp(prefix="homefeed-bench-dataset-"))
    base = load_settings().replace(home=root / "stack", redis_port=free_port(), kafka_port=free_port(),
                                   redis_url="", kafka_bootstrap_servers="", topic_partitions=1)
    stack = LocalStack(base)
    stack.up()
    cases = []
    try:
        for n in users:
            world = root / f"world-{n}"
            generate_world(WorldParams(users=n, pins=pins, days=days, seed=seed), world, progress=False)
            cases += run_case(base, root, f"synthetic-{n}u-{days}d", world, test_days=2, stores=stores,
                              chunks=chunks, load=load)
        if long_span_events:
            src = write_long_span_ratings(root / "long-span-src", long_span_events, seed=seed)
            world = root / "world-long-span"
            import_movielens(src, world)
            eval_days = json.loads((world / "world.json").read_text()).get("eval_days") or 2
            cases += run_case(base, root, "long-span", world, test_days=int(eval_days), stores=stores,
                              chunks=chunks, load=load)
    finally:
        stack.down()
    scaling = []
    for store in stores:
        synthetic = [c for c in cases if c["case"].startswith("synthetic") and c["store"] == store]
        scaling += [{"store": store, "from": a["case"], "to": b["case"],
                     "events_ratio": round(b["events"] / a["events"], 2),
                     "time_ratio": round(b["build_seconds"] / a["build_seconds"], 2)}
                    for a, b in zip(synthetic, synthetic[1:])]
    if not keep:
        shutil.rmtree(root, ignore_errors=True)
    return {"stores": list(stores), "kept": str(root) if keep else None, "cases": cases, "scaling": scaling,
            "machine": f"{os.cpu_count()} cores",
            "date": pd.Timestamp.now(tz="UTC").isoformat(timespec="seconds")}


def cmd_bench_dataset(args) -> int:
    users = [int(u) for u in args.users.split(",") if u.strip()]
    stores = tuple(s.strip() for s in args.stores.split(",") if s.strip())
    from homefeed.settings import OFFLINE_STORES

    unknown = [s for s in stores if s not in OFFLINE_STORES]
    if unknown or not stores:
        from homefeed.errors import UserError

        raise UserError(f"--stores {args.stores!r}: use one or more of {', '.join(OFFLINE_STORES)}")
    report = run_dataset_bench(users, args.days, args.pins, args.long_span_events, seed=args.seed,
                               keep=args.keep, stores=stores, chunks=args.chunks, load=args.load)
    print(json.dumps(report, indent=None if args.json else 2))
    return 0


def add_bench_dataset_parser(bench_sub) -> None:
    p = bench_sub.add_parser("dataset", help="seconds and peak memory of `dataset build` by world size")
    p.add_argument("--users", default="150,300,600",
                   help="synthetic world sizes, comma-separated (default 150,300,600; each doubles)")
    p.add_argument("--days", type=int, default=8, help="days of each synthetic world (default 8)")
    p.add_argument("--pins", type=int, default=2000, help="pins in each synthetic world (default 2000)")
    p.add_argument("--long-span-events", type=int, default=100_000,
                   help="ratings of the ~20-year MovieLens-shaped world (0 = skip it)")
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic worlds (default 0)")
    p.add_argument("--stores", default="duckdb",
                   help="offline stores to build each world with, comma-separated: duckdb, spark "
                        "(default duckdb; each world is replayed once)")
    p.add_argument("--chunks", type=int, default=None,
                   help="chunks of users of each build (default: the build's, one per 200,000 impressions)")
    p.add_argument("--load", choices=("bulk", "kafka"), default="bulk",
                   help="how each world reaches Redis and the log: `stream load`'s bulk path (default) "
                        "or producer -> broker -> consumer")
    p.add_argument("--keep", action="store_true",
                   help="keep the worlds, logs and datasets (the report names the directory)")
    p.add_argument("--json", action="store_true", help="one-line JSON")
    p.set_defaults(func=cmd_bench_dataset)
