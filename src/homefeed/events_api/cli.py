"""`homefeed events serve`: the events API and the feed page (its benchmark: `homefeed bench events`).

1. `serve` runs the ASGI app of `homefeed.events_api.app` on uvicorn, one worker, loopback by
   default (settings `host`); `--world DIR` gives the feed page its candidate source and
   `--ranking-url` the ranking service it forwards /rank to. It starts even while the broker is
   down (its calls answer 503 until the broker is back).
2. Throughput and the restart check are `homefeed bench events` (`homefeed.bench.events`).
"""

from __future__ import annotations

import logging

from homefeed.errors import UserError
from homefeed.settings import load_settings

DEFAULT_PORT = 3100
GRACEFUL_SHUTDOWN_S = 10


def cmd_serve(args) -> int:
    import uvicorn

    from homefeed.events_api.app import EventsAPI, create_app

    logging.getLogger("httpx").setLevel(logging.WARNING)  # one INFO line per forwarded /rank otherwise
    settings = load_settings()
    source = None
    if args.world:
        from homefeed.events_api.candidates import CandidateSource

        try:
            source = CandidateSource.from_world(args.world)
        except FileNotFoundError as exc:
            raise UserError(f"--world {args.world}: not a world directory ({exc.filename} is missing)") from None
    host = args.host or settings.host
    app = create_app(EventsAPI(settings, candidates=source, ranking_url=args.ranking_url))
    logging.getLogger("homefeed.events_api").info(
        "events API on http://%s:%d (feed page at /, topic %s)", host, args.port, settings.actions_topic)
    uvicorn.run(app, host=host, port=args.port, workers=1, access_log=False, log_level="warning",
                timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S, lifespan="on")
    return 0


def register(parser) -> None:
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    p = sub.add_parser("serve", help="HTTP events API into Kafka, with the live feed page at /")
    p.add_argument("--host", help="bind address (default: settings host, loopback)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT})")
    p.add_argument("--world", help="world directory: the feed page's candidate source (pins, event log)")
    p.add_argument("--ranking-url", help="the ranking service the feed page ranks with (http://HOST:PORT)")
    p.set_defaults(func=cmd_serve)
