"""Interaction worlds: the data every later stage replays, trains on and evaluates on.

`generate_world` writes a synthetic world (see docs/world.md); `load_world` reads any world
directory back. The file contract (pins, users, requests, events parquet + world.json) is
`homefeed.world.format`, which the generator and the importers share; docs/world.md.
"""

from homefeed.world.format import DAY_MS, WORLD_FILES
from homefeed.world.generate import (
    DEFAULT_START_MS,
    World,
    WorldParams,
    WorldSummary,
    generate_world,
    load_world,
)

__all__ = [
    "DAY_MS",
    "DEFAULT_START_MS",
    "WORLD_FILES",
    "World",
    "WorldParams",
    "WorldSummary",
    "generate_world",
    "load_world",
]
