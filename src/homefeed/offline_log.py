"""The partitioned parquet log that Feast's batch sources read.

Layout: ``<offline_dir>/<table>/date=YYYY-MM-DD/<created_ms>-<random>.parquet``, one file per
append (one per micro-batch), partitioned by the rows' event date. Appends are atomic (write to a
temporary name, then rename), so a reader or a crash never sees half a file. Feast's own offline
push rewrites the whole file on every call; this log only ever adds files.

Rows carry ``event_timestamp`` (what the row describes) and ``created`` (when it became
servable); timestamps are written as microsecond UTC, the precision Feast's file store handles.
The log is append-only and at-least-once: a replayed batch can add a duplicate row, which readers
resolve by keeping the latest ``created`` per entity and timestamp (Feast's point-in-time join does
exactly that).
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from homefeed import features as F

TIMESTAMP_COLUMNS = (F.EVENT_TIMESTAMP, F.CREATED)


def table_dir(offline_dir: Path, table: str) -> Path:
    return Path(offline_dir) / table


def ensure_tables(offline_dir: Path, tables: tuple[str, ...] = (
        F.USER_ACTION_SEQUENCE, F.PIN_FEATURES, F.USER_PROFILE, "action_events")) -> None:
    for table in tables:
        table_dir(offline_dir, table).mkdir(parents=True, exist_ok=True)


def to_utc_us(series: pd.Series) -> pd.Series:
    if pd.api.types.is_integer_dtype(series):  # epoch ms
        series = pd.to_datetime(series, unit="ms", utc=True)
    else:
        series = pd.to_datetime(series, utc=True)
    return series.astype("datetime64[us, UTC]")


def append(offline_dir: Path, table: str, rows: pd.DataFrame, schema: pa.Schema | None = None) -> list[Path]:
    """Append rows to one table; returns the files written (one per event date)."""
    if rows.empty:
        return []
    rows = rows.copy()
    for col in TIMESTAMP_COLUMNS:
        if col in rows:
            rows[col] = to_utc_us(rows[col])
    dates = rows[F.EVENT_TIMESTAMP].dt.strftime("%Y-%m-%d")
    written = []
    created_ms = int(rows[F.CREATED].max().value // 1_000_000) if F.CREATED in rows else 0
    for date, part in rows.groupby(dates, sort=True):
        directory = table_dir(offline_dir, table) / f"date={date}"
        directory.mkdir(parents=True, exist_ok=True)
        name = f"{created_ms:013d}-{uuid.uuid4().hex[:12]}.parquet"
        tmp = directory / f".{name}.tmp"
        arrow = pa.Table.from_pandas(part.reset_index(drop=True), schema=schema, preserve_index=False)
        pq.write_table(arrow, tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())  # durable before the caller commits Kafka offsets
        os.replace(tmp, directory / name)
        written.append(directory / name)
    return written


def read(offline_dir: Path, table: str, columns: list[str] | None = None) -> pd.DataFrame:
    """Read a whole table (every partition); empty frame when nothing was logged yet."""
    directory = table_dir(offline_dir, table)
    files = sorted(p for p in directory.rglob("*.parquet") if not p.name.startswith("."))
    if not files:
        return pd.DataFrame(columns=columns or [])
    frames = [pq.read_table(p, columns=columns).to_pandas() for p in files]
    return pd.concat(frames, ignore_index=True)
