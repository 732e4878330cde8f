"""The world directory format: what `homefeed world generate` and the importers write, and every
later stage (replay, bulk load, training, evaluation) reads.

A world directory holds five files, written with fixed parquet options (`PARQUET_OPTIONS`) and
each under its final name only once complete (`write_parquet`):

1. `PINS_FILE` (pins.parquet): one row per pin: pin_id, topic_id, embedding (list<float32>),
   pin_created_ms, pin_duration_ms (nullable: unknown).
2. `USERS_FILE` (users.parquet): one row per user: user_id, segment, is_core, first_active_ms.
3. `REQUESTS_FILE` (requests.parquet): one row per candidate of a ranked request: request_id,
   user_id, request_time, day, position, pin_id, served_time and the labels `LABEL_REPIN`,
   `LABEL_CLICK`, `LABEL_HIDE`. With world.json's `HAS_IMPRESSIONS` every row is a pin that was
   shown (its impression event: `World.impressions()` in homefeed.world.generate), else the rows
   are sampled negatives.
4. `EVENTS_FILE` (events.parquet): one row per action: event_id, user_id, pin_id, action_type,
   event_time, arrival_time (late events arrive after their time), surface, request_id.
5. `META_FILE` (world.json): `FORMAT_VERSION`, the source, the parameters (start_ms, days,
   embedding_dim, ...), start/end as ISO-8601 UTC (`utc_iso`), `HAS_IMPRESSIONS`, a summary.

Times are epoch milliseconds (UTC); a day is `DAY_MS`. `prepare_out` checks that a directory can
take a world before any work is done; `write_world` writes one (`make_out`, `write_parquet`,
`write_meta`). docs/world.md describes the columns' meaning.
"""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from homefeed.errors import UserError
from homefeed.events import ActionType
from homefeed.features import label_column

SECOND_MS = 1_000
MINUTE_MS = 60 * SECOND_MS
HOUR_MS = 60 * MINUTE_MS
DAY_MS = 24 * HOUR_MS
FORMAT_VERSION = 1
SURFACE = "homefeed"  # the events' surface in a synthetic world
MAX_EMBEDDING_DIM = 1_024  # the widest pin embedding a world holds

PINS_FILE = "pins.parquet"
USERS_FILE = "users.parquet"
REQUESTS_FILE = "requests.parquet"
EVENTS_FILE = "events.parquet"
META_FILE = "world.json"
# world.json flag: requests.parquet's rows are pins that were shown (impressions go through the
# stream), not sampled negatives; absent in older worlds = false.
HAS_IMPRESSIONS = "has_impressions"
WORLD_FILES = (PINS_FILE, USERS_FILE, REQUESTS_FILE, EVENTS_FILE, META_FILE)

LABEL_REPIN = label_column(ActionType.REPIN)
LABEL_CLICK = label_column(ActionType.CLICK)
LABEL_HIDE = label_column(ActionType.HIDE)

# Fixed parquet options: part of the byte-for-byte determinism contract.
PARQUET_OPTIONS = dict(
    compression="zstd",
    compression_level=3,
    use_dictionary=True,
    write_statistics=True,
    row_group_size=1_048_576,
    data_page_version="1.0",
)


def utc_iso(ms: int) -> str:
    """Epoch ms -> ISO-8601 UTC with a Z (world.json's start_iso, end_iso, split_iso)."""
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).isoformat().replace("+00:00", "Z")


def list_array(matrix: np.ndarray) -> pa.Array:
    """float [n, d] -> an arrow list<float32> column (pins.parquet's embedding)."""
    n, d = matrix.shape
    offsets = pa.array(np.arange(0, n * d + 1, d, dtype=np.int32))
    return pa.ListArray.from_arrays(offsets, pa.array(matrix.reshape(-1).astype(np.float32)))


def write_parquet(table: pa.Table, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    pq.write_table(table, tmp, **PARQUET_OPTIONS)
    os.replace(tmp, path)  # never leave a half-written file under the final name


def prepare_out(out: Path) -> Path:
    """`out` as a Path once it can take a world's files; UserError now, not after minutes of work,
    when it cannot."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a directory")
    for name in WORLD_FILES:
        if (out / name).is_dir():
            raise UserError(f"{out / name} is a directory; remove it or choose another --out")
    existing = next(d for d in (out.absolute(), *out.absolute().parents) if d.exists())
    if not existing.is_dir():
        raise UserError(f"cannot create --out {out}: {existing} is not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"cannot write --out {out}: {existing} is not writable")
    return out


def make_out(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create --out {out}: {exc}") from None


def write_meta(meta: dict, out: Path) -> None:
    """world.json, written as world.json.tmp then renamed (last: a world is complete once it is)."""
    tmp = out / (META_FILE + ".tmp")
    tmp.write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, out / META_FILE)


def write_world(tables: dict[str, pa.Table], meta: dict, out: Path) -> None:
    """Create `out` and write the tables (file name -> table) and world.json (`meta`), each as
    NAME.tmp then renamed. The generator writes table by table instead (`make_out`,
    `write_parquet`, `write_meta`), never holding all four."""
    make_out(out)
    for name, table in tables.items():
        write_parquet(table, out / name)
    write_meta(meta, out)
