"""The events API: clients' actions over HTTP into Kafka, and the live feed page beside it.

1. `kinds`: the event kinds the API takes (today actions), each checked by the stream
   consumer's own parser from `homefeed.events`.
2. `producer`: produce and await the broker's acknowledgement, with bounded waits and a breaker.
3. `app`: the ASGI app (`POST /v1/<kind>`, /metrics, /livez, /readyz, the feed page and its
   helpers).
4. `candidates`: the feed page's stand-in candidate source.
5. `cli`: `homefeed events serve`. Its benchmark, `homefeed bench events` (events/s, restart
   check), is `homefeed.bench.events`.

See docs/events-api.md.
"""
