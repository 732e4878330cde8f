"""`homefeed stream produce|load|consume|status|backfill`."""

from __future__ import annotations

import json
import logging
import signal
from pathlib import Path

from homefeed.errors import UserError
from homefeed.preflight import KAFKA, REDIS
from homefeed.settings import load_settings

log = logging.getLogger(__name__)


def cmd_produce(args) -> int:
    from homefeed.stream.producer import (
        ProduceFailed,
        Producer,
        event_records,
        impression_records,
        pin_records,
    )
    from homefeed.world import load_world

    settings = load_settings()
    if not (Path(args.world) / "events.parquet").is_file():
        raise UserError(f"{args.world} is not a world directory (no events.parquet); "
                        "create one with `homefeed world generate`")
    world = load_world(args.world)
    events, pins, start_ms = world.events, world.pins, world.start_ms
    # the world's impressions (none for a world without them, e.g. MovieLens), in time order
    shown = world.impressions()
    if args.skip_impressions:
        shown = shown.iloc[:0]
    if args.limit:
        events = events.head(args.limit)
        shown = shown.head(args.limit)
    arrival = args.timestamps == "arrival"
    producer = Producer(settings)
    n, n_shown, bad = 0, 0, {}
    try:
        if not args.skip_pins:
            producer.send_all(settings.pins_topic, pin_records(pins, start_ms), total=len(pins),
                              desc="pins")
        n = producer.send_all(settings.actions_topic, event_records(events, use_arrival_time=arrival),
                              rate=args.rate, total=len(events), desc="events")
        if len(shown):
            n_shown = producer.send_all(settings.impressions_topic,
                                        impression_records(shown, use_arrival_time=arrival),
                                        rate=args.rate, total=len(shown), desc="impressions")
        bad = producer.send_bad_events() if args.inject_bad else {}
    except ProduceFailed as exc:
        log.error("%s; the topic is incomplete: produce again (event ids make replays duplicates, "
                  "not double counts)", exc)
        print(json.dumps({"sent": producer.sent, "failed": producer.failed}))
        return 1
    finally:
        producer.close()
    print(json.dumps({"events": n, "impressions": n_shown, "pins": 0 if args.skip_pins else len(pins),
                      "bad_events": len(bad), "failed": 0}))
    return 0


def cmd_load(args) -> int:
    from homefeed.stream.bulk import bulk_load

    if not (Path(args.world) / "events.parquet").is_file():
        raise UserError(f"{args.world} is not a world directory (no events.parquet); "
                        "create one with `homefeed world generate`")
    if args.batch < 1:
        raise UserError(f"--batch must be at least 1 (got {args.batch})")
    summary = bulk_load(load_settings(), Path(args.world), batch=args.batch, validate=not args.no_validate,
                        inject_bad=args.inject_bad,
                        dead_letters=Path(args.dead_letters) if args.dead_letters else None)
    print(json.dumps(summary))
    return 0


def cmd_consume(args) -> int:
    from prometheus_client import start_http_server

    from homefeed.stream.consumer import build_consumer, write_stats

    settings = load_settings()
    if args.metrics_port:
        start_http_server(args.metrics_port, addr=settings.host)
        log.info("metrics on http://%s:%d/metrics", settings.host, args.metrics_port)
    consumer = build_consumer(settings, validate=not args.no_validate, impressions_only=args.impressions)
    consumer.watchdog_s = settings.consumer_watchdog_s  # a process of its own: a hang ends it (stream/watchdog.py)
    signal.signal(signal.SIGTERM, lambda *_: consumer.stop.set())
    try:
        stats = consumer.run(idle_exit_s=args.exit_when_idle, max_records=args.max_records,
                             ready_file=args.ready_file)
    except KeyboardInterrupt:
        stats = consumer.stats
    log.info("stopped: %s", stats.to_dict())
    if args.stats_out:
        write_stats(args.stats_out, stats)
    return 0


def cmd_status(args) -> int:
    from homefeed.stream.ops import stream_status

    status = stream_status(load_settings())
    if args.json:
        print(json.dumps(status, indent=2))
    else:
        for topic, parts in status["topics"].items():
            end = sum(p["end"] for p in parts)
            lag = sum(p["lag"] for p in parts if p["lag"] is not None)
            print(f"{topic:<20} partitions={len(parts):<3} records={end:<10} group lag={lag}")
        print(f"dead-lettered: {status['dead_lettered']}")
        c = status.get("consumer")
        if c:
            print(f"consumed: {c['records']} records = {c['applied']} applied + {c['duplicates']} "
                  f"duplicates + {c['dead_lettered']} dead-lettered + {c['pin_upserts']} pin upserts "
                  f"+ {c['impressions']} impressions"
                  + ("" if c["accounted"] else "  (DOES NOT ADD UP)"))
            ci = status.get("impressions_consumer")
            if ci:
                print(f"impressions group: {ci['records']} records = {ci['impressions']} impressions + "
                      f"{ci['duplicates']} duplicates + {ci['dead_lettered']} dead-lettered"
                      + ("" if ci["accounted"] else "  (DOES NOT ADD UP)"))
            if not status["dead_letters_agree"]:
                print(f"WARNING: the consumer counted {c['dead_lettered']} dead letters but the topic "
                      f"holds {status['dead_lettered']} (Redis lost its counters, or another group "
                      "writes to the dead-letter topic)")
    return 0


def cmd_backfill(args) -> int:
    from homefeed.stream.ops import backfill

    users = [int(u) for u in args.users.split(",")] if args.users else None
    summary = backfill(load_settings(), since=args.since, users=users)
    print(json.dumps(summary))
    return 0


def register(parser) -> None:
    from homefeed.stream.bulk import DEFAULT_BATCH

    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("produce", help="replay a world's events (and pins) onto Kafka")
    p.add_argument("--world", required=True, help="directory written by `homefeed world generate`")
    p.add_argument("--rate", type=float, default=0.0, help="events per second (0: as fast as possible)")
    p.add_argument("--limit", type=int, help="only the first N events (and N impressions), arrival order")
    p.add_argument("--timestamps", choices=["arrival", "now"], default="arrival",
                   help="record timestamp: the world's arrival time (history) or the wall clock (live)")
    p.add_argument("--skip-pins", action="store_true", help="do not send pin upserts")
    p.add_argument("--skip-impressions", action="store_true",
                   help="do not send the world's impressions (worlds without them send none)")
    p.add_argument("--inject-bad", action="store_true", help="also send one bad event of every kind")
    p.set_defaults(func=cmd_produce, needs=(KAFKA,))

    p = sub.add_parser("load", help="bulk-load a world's history into Feast/Redis and the log, "
                                    "without Kafka (what produce + consume give)")
    p.add_argument("--world", required=True, help="directory written by `homefeed world generate`")
    p.add_argument("--batch", type=int, default=DEFAULT_BATCH, help="records per micro-batch")
    p.add_argument("--no-validate", action="store_true",
                   help="skip the per-batch Great Expectations suites (cheap checks still run)")
    p.add_argument("--inject-bad", action="store_true", help="also load one bad event of every kind")
    p.add_argument("--dead-letters", metavar="FILE",
                   help="JSON-lines file for records that fail a check "
                        "(default: dead-letters/bulk-<UTC time>.jsonl under HOMEFEED_HOME)")
    p.set_defaults(func=cmd_load, needs=(REDIS,))

    p = sub.add_parser("consume", help="build sequences from Kafka into Feast/Redis and the log")
    p.add_argument("--metrics-port", type=int, help="serve Prometheus metrics on this port")
    p.add_argument("--exit-when-idle", type=float, metavar="SECONDS",
                   help="stop after this long without records (batch jobs, tests, benchmarks)")
    p.add_argument("--max-records", type=int, help="stop after this many records")
    p.add_argument("--no-validate", action="store_true",
                   help="skip the per-batch Great Expectations suite (cheap checks still run)")
    p.add_argument("--stats-out", help="write a JSON summary (with freshness samples) at exit")
    p.add_argument("--ready-file", help="create this file once partitions are assigned")
    p.add_argument("--impressions", action="store_true",
                   help="read only the impressions topic, in the group impressions_consumer_group "
                        "(the sequence builder then leaves them to this process)")
    p.set_defaults(func=cmd_consume, needs=(KAFKA, REDIS))

    p = sub.add_parser("status", help="topics, consumer-group lag, dead-letter count")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_status, needs=(KAFKA,))

    p = sub.add_parser("backfill", help="rebuild online sequences from the offline log (recovery)")
    p.add_argument("--since", required=True,
                   help="rebuild users with events that arrived at or after this time (ISO 8601 or epoch ms)")
    p.add_argument("--users", help="comma-separated user ids (default: every user seen since --since)")
    p.set_defaults(func=cmd_backfill, needs=(REDIS,))
