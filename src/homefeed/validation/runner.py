"""Run the suites: `run_checkpoint` (stored results, Data Docs) and `validate_dataframe` (cheap,
for micro-batches), both returning a `ValidationReport`; `failing_rows` (which rows a suite
rejects, for the stream's dead-letter path); `load_data` reads parquet or JSONL.

Both paths share one cached file context per project directory (the suites, batch
definitions and checkpoints are looked up once, not per call), run `derive_columns()` on the
data first and fill in the suites' run-time expectation parameters:

* ``max_event_time_ms`` (action_events, impression_events): ``now_ms`` + skew, where ``now_ms`` is the argument,
  else the largest ``arrival_time`` in the batch, else the clock, and skew is the
  ``max_future_skew_ms`` argument, else ``settings.max_future_skew_ms``;
* ``max_sequence_length`` (sequence_features): ``settings.sequence_length``;
* ``embedding_dim`` (pin_features, training_set): ``settings.embedding_dim``;
* ``label_<head>_min_rate`` / ``label_<head>_max_rate`` (training_set): bounds on the label's
  positive rate after the training period (`derive_label_rate_bounds`):

  1. split the frame into its training period and the later rows (`suites.later_rows`: the
     ``split`` column or the ``periods`` argument, else the frame's last days by time);
  2. take each label's rate on the training rows, widen it by ``label_rate_tolerance``
     (default suites.LABEL_RATE_TOLERANCE, relative and absolute), then by chance
     (suites.LABEL_RATE_SAMPLING_Z standard errors of a rate at that bound over the later
     rows): that bounds the later rows' rate, so drift between the periods fails the
     checkpoint naming the label, and a small frame's noise does not;
  3. a label without both classes in the training period is reported as a note ("no positives
     in the training period"), not a failure by itself; a frame of one period is not compared
     ([0, 1]);
  4. explicit ``label_rate_bounds={"click": (0.01, 0.9)}`` (a recipe, the CLI) replace step 2
     for the labels they name.

Any of them can also be given directly as a keyword (``max_event_time_ms=...``).
"""

from __future__ import annotations

import datetime
import functools
import json
import math
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
import pandas as pd

from homefeed import features as F
from homefeed.errors import UserError
from homefeed.validation import suites as S

# ---------------------------------------------------------------------------- the report


@dataclass
class FailedExpectation:
    type: str
    column: str | None
    check: str  # stable short code from the suite (meta.check), e.g. "unknown_action"
    unexpected_count: int | None = None
    unexpected_percent: float | None = None
    examples: list[Any] = field(default_factory=list)  # at most MAX_EXAMPLES
    observed_value: Any = None  # aggregate expectations (e.g. a label's mean)
    error: str | None = None  # set when GX could not evaluate it (e.g. missing column)
    notes: str | None = None

    def describe(self) -> str:
        where = f"({self.column})" if self.column else ""
        head = f"{self.type}{where} [{self.check}]"
        if self.error:
            return f"{head}: could not be evaluated: {self.error}"
        parts = []
        if self.unexpected_count is not None:
            pct = f" ({self.unexpected_percent:.3g}%)" if self.unexpected_percent is not None else ""
            parts.append(f"{self.unexpected_count} unexpected{pct}")
        if self.observed_value is not None:
            parts.append(f"observed {_short(self.observed_value)}")
        if self.examples:
            parts.append("examples: " + ", ".join(_short(e) for e in self.examples))
        if self.notes:
            parts.append(f"expected: {self.notes}")
        return f"{head}: " + "; ".join(parts) if parts else head


@dataclass
class ValidationReport:
    name: str  # suite (= checkpoint) name
    success: bool
    rows: int
    evaluated: int
    failures: list[FailedExpectation] = field(default_factory=list)
    parameters: dict[str, Any] = field(default_factory=dict)
    elapsed_ms: float = 0.0
    notes: list[str] = field(default_factory=list)  # worth knowing, not failures

    def __bool__(self) -> bool:
        return self.success

    @property
    def failed_checks(self) -> list[str]:
        return [f.check for f in self.failures]

    def to_text(self) -> str:
        if self.success:
            lines = [f"{self.name}: OK, {self.evaluated} expectations passed on {self.rows:,} rows "
                     f"({self.elapsed_ms:.0f} ms)"]
        else:
            lines = [f"{self.name}: FAILED, {len(self.failures)} of {self.evaluated} expectations "
                     f"failed on {self.rows:,} rows"]
            lines += [f"  - {f.describe()}" for f in self.failures]
        lines += [f"  note: {note}" for note in self.notes]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return _jsonable(asdict(self))


def _short(value: Any, limit: int = 120) -> str:
    text = json.dumps(_jsonable(value), default=str) if not isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return [_jsonable(v) for v in value.tolist()]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else str(value)
    if isinstance(value, (pd.Timestamp,)):
        return value.isoformat()
    if value is pd.NaT or value is pd.NA:
        return None
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def _exception_message(result) -> str | None:
    info = getattr(result, "exception_info", None) or {}
    if not isinstance(info, dict):
        return None
    if info.get("raised_exception"):
        return str(info.get("exception_message") or "exception")
    for value in info.values():  # keyed by metric id when several metrics failed
        if isinstance(value, dict) and value.get("raised_exception"):
            return str(value.get("exception_message") or "exception")
    return None


def _report(name: str, df: pd.DataFrame, suite_result, params: dict, elapsed_ms: float,
            notes: list[str]) -> ValidationReport:
    keys = [k for k in S.SUITE_KEY_COLUMNS[name] if k in df.columns]
    order = _suite_order(name)
    failed = sorted((r for r in suite_result.results if not r.success),
                    key=lambda r: order.get(r.expectation_config.id, len(order)))
    failures = []
    for res in failed:
        config = res.expectation_config
        kwargs = dict(config.kwargs)
        column = kwargs.get("column")
        if column is None and "column_list" in kwargs:
            column = ",".join(kwargs["column_list"])
        result = res.result or {}
        examples = list(result.get("partial_unexpected_list") or [])[: S.MAX_EXAMPLES]
        if column and (column.startswith("_") or config.type == "expect_column_values_to_not_be_null"):
            # derived flags and nulls say little by themselves: show which rows failed
            index = list(result.get("partial_unexpected_index_list") or [])[: S.MAX_EXAMPLES]
            extra = [column] if column == S.D_EMBEDDING_DIM else []
            examples = [_row_example(df, i, keys + extra) for i in index] or examples
        failures.append(FailedExpectation(
            type=config.type,
            column=S.DERIVED_SOURCE.get(column or "", column),
            check=(config.meta or {}).get("check", config.type),
            unexpected_count=result.get("unexpected_count"),
            unexpected_percent=result.get("unexpected_percent"),
            examples=_jsonable(examples),
            observed_value=_jsonable(result.get("observed_value")),
            error=_exception_message(res),
            notes=_resolve_notes(config.notes, params),
        ))
    stats = suite_result.statistics or {}
    return ValidationReport(
        name=name,
        success=bool(suite_result.success),
        rows=len(df),
        evaluated=int(stats.get("evaluated_expectations", len(suite_result.results))),
        failures=failures,
        parameters=_jsonable(params),
        elapsed_ms=elapsed_ms,
        notes=list(notes),
    )


@functools.lru_cache(maxsize=None)
def _suite_order(name: str) -> dict[str, int]:
    """expectation id -> position in the suite, to list failures in suite order."""
    return {S.expectation_id(name, c): i for i, c in enumerate(S.suite_specs()[name].checks)}


def _resolve_notes(notes: Any, params: Mapping[str, Any]) -> str | None:
    """Show run-time parameter values in an expectation's notes."""
    if not isinstance(notes, str):
        return None
    for key in sorted(params, key=len, reverse=True):
        notes = notes.replace(key, f"{key}={params[key]}")
    return notes


def _row_example(df: pd.DataFrame, index: Any, keys: list[str]) -> dict[str, Any]:
    example: dict[str, Any] = {"row": index}
    try:
        row = df.loc[index]
    except (KeyError, TypeError):
        return example
    for key in keys:
        value = row[key]
        if isinstance(value, (float, np.floating)) and float(value).is_integer():
            value = int(value)
        example[key] = value
    return example


# ------------------------------------------------------------------------ cached context


class _Project:
    """One opened file context with its suites, batch definitions and checkpoints."""

    def __init__(self, project_dir: Path):
        self.project_dir = project_dir
        self.context = S.open_context(project_dir)
        self.lock = threading.Lock()
        self._stored: dict[str, Any] = {}
        self._suites: dict[tuple[str, bool], Any] = {}  # (name, structure): run-time copy
        self._batch_definitions: dict[str, Any] = {}
        self._checkpoints: dict[str, Any] = {}

    def _lookup(self, cache: dict, name: str, getter) -> Any:
        if name not in cache:
            try:
                cache[name] = getter(name)
            except Exception as exc:  # GX raises DataContextError and friends
                raise UserError(
                    f"{name!r} is not in the context at {self.project_dir} ({exc}); "
                    "run `homefeed validate init`"
                ) from None
        return cache[name]

    def suite(self, name: str, structure: bool = True):
        """The stored suite with its run-time parameters as $PARAMETER references (without its
        structure checks when `structure` is false: see suites.STRUCTURE_TYPES)."""
        stored = self._lookup(self._stored, name, self.context.suites.get)
        return self._lookup(self._suites, (name, structure),
                            lambda key: S.runtime_suite(stored, structure))

    def batch_definition(self, name: str):
        def get(asset_name: str):
            datasource = self.context.data_sources.get(S.DATASOURCE_NAME)
            return datasource.get_asset(asset_name).get_batch_definition(S.BATCH_DEFINITION_NAME)

        return self._lookup(self._batch_definitions, name, get)

    def checkpoint(self, name: str):
        return self._lookup(self._checkpoints, name, self.context.checkpoints.get)


_projects: dict[Path, _Project] = {}
_projects_lock = threading.Lock()


def get_project(project_dir: Path | str | None = None) -> _Project:
    path = Path(project_dir).resolve() if project_dir else S.default_project_dir()
    with _projects_lock:
        if path not in _projects:
            _projects[path] = _Project(path)
        return _projects[path]


def clear_cache() -> None:
    """Forget opened contexts (after `homefeed validate init` rewrote one, say)."""
    with _projects_lock:
        _projects.clear()


# ---------------------------------------------------------------------------- parameters


@functools.lru_cache(maxsize=1)
def _default_settings():
    from homefeed.settings import load_settings

    try:
        return load_settings()
    except (ValueError, OSError) as exc:
        raise UserError(f"cannot load settings: {exc}") from None


def _check_name(name: str) -> None:
    if name not in S.SUITE_NAMES:
        raise UserError(f"unknown checkpoint/suite {name!r}; known: {', '.join(S.SUITE_NAMES)}")


def _label_key(key: str) -> str:
    label = key if key.startswith("label_") else f"label_{key}"
    if label not in F.LABEL_COLUMNS:
        raise UserError(f"unknown label {key!r} in label_rate_bounds; known: {list(F.LABEL_COLUMNS)}")
    return label


def derive_label_rate_bounds(
    df: pd.DataFrame | None,
    explicit: Mapping[str, tuple[float, float]] | None = None,
    *,
    periods: Any = None,
    tolerance: tuple[float, float] | None = None,
) -> tuple[dict[str, tuple[float, float]], list[str]]:
    """({label: (min rate, max rate)}, notes) for the training_set suite: see the module
    docstring. `df` None (no data) gives the stored bounds for every label not in `explicit`."""
    rel, tol = S.LABEL_RATE_TOLERANCE if tolerance is None else tolerance
    if not (0.0 <= float(rel) and 0.0 <= float(tol) <= 1.0):
        raise UserError(f"label rate tolerance must be (relative >= 0, absolute in [0, 1]), got {tolerance}")
    wanted: dict[str, tuple[float, float]] = {}
    for key, value in (explicit or {}).items():
        try:
            lo, hi = (float(v) for v in value)
        except (TypeError, ValueError):
            raise UserError(f"rate bounds for {key} must be (min, max), got {value!r}") from None
        wanted[_label_key(key)] = (lo, hi)
    try:
        later = S.later_rows(df, periods) if df is not None else None
    except ValueError as exc:
        raise UserError(f"training_set periods: {exc}") from None
    notes: list[str] = []
    if df is not None:
        training = np.ones(len(df), bool) if later is None else ~later
        notes.append(
            "label rates: the frame holds one period (one split, or no split column and one day): "
            "not compared" if later is None
            else f"label rates: {int(later.sum()):,} later rows checked against the training period's "
                 f"{int(training.sum()):,} rows (tolerance x{1 - rel:g}..x{1 + rel:g} +-{tol:g}, "
                 f"then +-{S.LABEL_RATE_SAMPLING_Z:g} standard errors)")
    bounds: dict[str, tuple[float, float]] = {}
    for label in F.LABEL_COLUMNS:
        rate, n_later = None, 0
        if df is not None and label in df.columns:
            values = pd.to_numeric(df[label], errors="coerce").to_numpy(dtype=np.float64)
            known = ~np.isnan(values)
            rate = float(values[training & known].mean()) if (training & known).any() else None
            n_later = int((~training & known).sum())
        if rate == 0.0:
            notes.append(f"{label}: no positives in the training period (its head cannot be trained "
                         "or measured)")
        elif rate == 1.0:
            notes.append(f"{label}: no negatives in the training period (its head cannot be trained "
                         "or measured)")
        if label in wanted:
            bounds[label] = wanted[label]
        elif later is None or rate is None:
            bounds[label] = S.STORED_LABEL_RATE_BOUNDS
        else:
            lo = max(0.0, rate * (1 - rel) - tol)
            hi = min(1.0, rate * (1 + rel) + tol)
            # plus chance: S.LABEL_RATE_SAMPLING_Z standard errors of a rate at the bound
            lo -= S.LABEL_RATE_SAMPLING_Z * np.sqrt(lo * (1 - lo) / max(n_later, 1))
            hi += S.LABEL_RATE_SAMPLING_Z * np.sqrt(hi * (1 - hi) / max(n_later, 1))
            bounds[label] = (round(max(0.0, lo), 6), round(min(1.0, hi), 6))
    for label, (lo, hi) in bounds.items():
        if not 0.0 <= float(lo) <= float(hi) <= 1.0:
            raise UserError(f"rate bounds for {label} must satisfy 0 <= min <= max <= 1, got {lo}, {hi}")
    return bounds, notes


def expectation_parameters(
    name: str,
    df: pd.DataFrame | None = None,
    *,
    settings=None,
    now_ms: int | None = None,
    max_future_skew_ms: int | None = None,
    label_rate_bounds: Mapping[str, tuple[float, float]] | None = None,
    label_rate_tolerance: tuple[float, float] | None = None,
    periods: Any = None,
    notes: list[str] | None = None,
    **overrides: Any,
) -> dict[str, Any]:
    """The run-time parameters of suite `name` (see the module docstring); the label-rate
    notes are appended to `notes` when given."""
    _check_name(name)
    allowed = S.SUITE_PARAMETERS[name]
    unknown = sorted(set(overrides) - set(allowed))
    if unknown:
        raise UserError(f"unknown parameter(s) {unknown} for {name}; known: {list(allowed)}")
    settings = settings or _default_settings()
    params: dict[str, Any] = {}
    if S.P_MAX_EVENT_TIME_MS in allowed and S.P_MAX_EVENT_TIME_MS not in overrides:
        if now_ms is None and df is not None and S.ARRIVAL_TIME in df.columns:
            arrival = pd.to_numeric(df[S.ARRIVAL_TIME], errors="coerce").max()
            now_ms = int(arrival) if pd.notna(arrival) else None
        if now_ms is None:
            now_ms = int(time.time() * 1000)
        skew = settings.max_future_skew_ms if max_future_skew_ms is None else max_future_skew_ms
        params[S.P_MAX_EVENT_TIME_MS] = int(now_ms) + int(skew)
    if S.P_MAX_SEQUENCE_LENGTH in allowed:
        params[S.P_MAX_SEQUENCE_LENGTH] = int(settings.sequence_length)
    if S.P_EMBEDDING_DIM in allowed:
        params[S.P_EMBEDDING_DIM] = int(settings.embedding_dim)
    if name == S.TRAINING_SET:
        bounds, label_notes = derive_label_rate_bounds(df, label_rate_bounds, periods=periods,
                                                       tolerance=label_rate_tolerance)
        for label, (lo, hi) in bounds.items():
            p_lo, p_hi = S.label_rate_parameters(label)
            params[p_lo], params[p_hi] = float(lo), float(hi)
        if notes is not None:
            notes.extend(label_notes)
    params.update(overrides)
    return params


# ---------------------------------------------------------------------------------- runs


def validate_dataframe(
    suite_name: str,
    df: pd.DataFrame,
    *,
    settings=None,
    now_ms: int | None = None,
    max_future_skew_ms: int | None = None,
    project_dir: Path | str | None = None,
    label_rate_bounds: Mapping[str, tuple[float, float]] | None = None,
    label_rate_tolerance: tuple[float, float] | None = None,
    periods: Any = None,
    **params: Any,
) -> ValidationReport:
    """Validate `df` against one suite without storing results (the micro-batch path: a few
    tens of ms for thousands of rows; the context, suite and batch definition are cached).
    `label_rate_bounds`, `label_rate_tolerance`, `periods`: training_set (module docstring)."""
    report, _ = _validate_frame(
        suite_name, df, settings=settings, now_ms=now_ms, max_future_skew_ms=max_future_skew_ms,
        project_dir=project_dir, params=params, detail_format=S.RESULT_FORMAT,
        rates={"label_rate_bounds": label_rate_bounds, "label_rate_tolerance": label_rate_tolerance,
               "periods": periods})
    return report


def failing_rows(
    suite_name: str,
    df: pd.DataFrame,
    *,
    settings=None,
    now_ms: int | None = None,
    max_future_skew_ms: int | None = None,
    project_dir: Path | str | None = None,
    structure: bool = True,
    **params: Any,
) -> dict[int, str]:
    """Which rows of `df` the suite rejects: {row position: "check: expectation(column); ..."}.

    For the stream consumer's dead-letter path (empty dict when the batch passes). Row-level
    failures name their rows; a duplicate key rejects its later occurrences only (the first
    one stays valid); a batch-level failure (missing column, wrong dtype, an aggregate check,
    an expectation GX could not evaluate) rejects every row. `structure=False` skips the
    suite's structure checks (suites.STRUCTURE_TYPES), for a frame whose columns, dtypes and
    non-null values its builder guarantees.
    """
    report, results = _validate_frame(
        suite_name, df, settings=settings, now_ms=now_ms, max_future_skew_ms=max_future_skew_ms,
        project_dir=project_dir, params=params, detail_format={"result_format": "COMPLETE"},
        structure=structure)
    if report.success:
        return {}
    rejected: dict[int, list[str]] = {}
    everything = range(len(df))
    for res in results:
        if res.success:
            continue
        config = res.expectation_config
        column = config.kwargs.get("column")
        label = f"{(config.meta or {}).get('check', config.type)}: {config.type}({column or ''})"
        index = (res.result or {}).get("unexpected_index_list")
        if _exception_message(res) or index is None:
            positions: Iterable[int] = everything
        elif config.type == "expect_column_values_to_be_unique" and column in df.columns:
            positions = np.flatnonzero(df[column].duplicated(keep="first").to_numpy())
        elif (config.type == "expect_compound_columns_to_be_unique"
              and set(config.kwargs.get("column_list", [])) <= set(df.columns)):
            keys = list(config.kwargs["column_list"])  # the first occurrence stays valid
            positions = np.flatnonzero(df.duplicated(subset=keys, keep="first").to_numpy())
        else:
            positions = df.index.get_indexer(pd.Index(index))
        for pos in positions:
            if pos >= 0:
                rejected.setdefault(int(pos), []).append(label)
    return {pos: "; ".join(labels) for pos, labels in sorted(rejected.items())}


def _validate_frame(suite_name, df, *, settings, now_ms, max_future_skew_ms, project_dir,
                    params, detail_format, structure=True, rates=None):
    _check_name(suite_name)
    start = time.perf_counter()
    project = get_project(project_dir)
    rates = rates or {}
    notes: list[str] = []
    values = expectation_parameters(suite_name, df, settings=settings, now_ms=now_ms,
                                    max_future_skew_ms=max_future_skew_ms, notes=notes,
                                    **rates, **params)
    data = S.derive_columns(suite_name, df, periods=rates.get("periods"))
    with project.lock:
        suite = project.suite(suite_name, structure)
        batch = project.batch_definition(suite_name).get_batch(batch_parameters={"dataframe": data})
        # Pass 1 only decides pass/fail (GX skips the unexpected-value metrics: ~40% cheaper);
        # pass 2 re-runs just the failed expectations for counts and examples.
        result = batch.validate(suite, result_format="BOOLEAN_ONLY", expectation_parameters=values)
        if not result.success:
            result.results = [
                r if r.success else batch.validate(
                    _expectation_of(suite, r), result_format=detail_format,
                    expectation_parameters=values)
                for r in result.results
            ]
    report = _report(suite_name, data, result, values, (time.perf_counter() - start) * 1000, notes)
    return report, result.results


def _expectation_of(suite, result):
    wanted = result.expectation_config.id
    for expectation in suite.expectations:
        if expectation.id == wanted:
            return expectation
    raise RuntimeError(f"expectation {wanted} not in suite {suite.name}")


def run_checkpoint(
    name: str,
    df: pd.DataFrame,
    *,
    settings=None,
    now_ms: int | None = None,
    max_future_skew_ms: int | None = None,
    project_dir: Path | str | None = None,
    label_rate_bounds: Mapping[str, tuple[float, float]] | None = None,
    label_rate_tolerance: tuple[float, float] | None = None,
    periods: Any = None,
    **params: Any,
) -> ValidationReport:
    """Run the stored checkpoint `name` on `df` with this run's parameters; the result is
    stored under validation/gx/uncommitted/ (shown by `homefeed validate docs`).
    `label_rate_bounds`, `label_rate_tolerance`, `periods`: training_set (module docstring);
    by default the label-rate bounds come from the frame's own training period.

    This is what ``Checkpoint.run`` does (validate its one validation definition, store the
    result), except that the suite is `runtime_suite` (parameters as $PARAMETER references):
    GX refuses to run a validation definition whose suite differs from the stored one.
    """
    from great_expectations.core.run_identifier import RunIdentifier
    from great_expectations.data_context.types.resource_identifiers import (
        ExpectationSuiteIdentifier,
        ValidationResultIdentifier,
    )
    from great_expectations.validator.v1_validator import Validator

    _check_name(name)
    start = time.perf_counter()
    project = get_project(project_dir)
    notes: list[str] = []
    values = expectation_parameters(name, df, settings=settings, now_ms=now_ms,
                                    max_future_skew_ms=max_future_skew_ms,
                                    label_rate_bounds=label_rate_bounds,
                                    label_rate_tolerance=label_rate_tolerance, periods=periods,
                                    notes=notes, **params)
    data = S.derive_columns(name, df, periods=periods)
    with project.lock:
        checkpoint = project.checkpoint(name)
        if len(checkpoint.validation_definitions) != 1:
            raise RuntimeError(f"checkpoint {name} has {len(checkpoint.validation_definitions)} "
                               "validation definitions, expected 1")
        definition = checkpoint.validation_definitions[0]
        validator = Validator(batch_definition=definition.batch_definition,
                              batch_parameters={"dataframe": data},
                              result_format=checkpoint.result_format)
        result = validator.validate_expectation_suite(project.suite(name), values)
        run_id = RunIdentifier(run_time=datetime.datetime.now(datetime.timezone.utc))
        result.meta.update({"validation_id": definition.id, "checkpoint_id": checkpoint.id,
                            "run_id": run_id, "validation_time": run_id.run_time,
                            "batch_parameters": {"dataframe": "<DATAFRAME>"}})
        suite_key = ExpectationSuiteIdentifier(name=name)
        project.context.validation_results_store.store_validation_results(
            suite_validation_result=result,
            suite_validation_result_identifier=ValidationResultIdentifier(
                expectation_suite_identifier=suite_key, run_id=run_id,
                batch_identifier=validator.active_batch_id),
            expectation_suite_identifier=suite_key)
    return _report(name, data, result, values, (time.perf_counter() - start) * 1000, notes)


def build_data_docs(project_dir: Path | str | None = None) -> Path:
    """Build GX Data Docs (HTML) under validation/gx/uncommitted/data_docs; returns index.html."""
    project = get_project(project_dir)
    with project.lock:
        sites = project.context.build_data_docs()
    for url in sites.values():
        path = Path(str(url).removeprefix("file://"))
        if path.is_file():
            return path
    raise UserError(f"GX built no local Data Docs site (sites: {sites})")


# ------------------------------------------------------------------------------- loading

PARQUET_SUFFIXES = (".parquet", ".pq")
JSONL_SUFFIXES = (".jsonl", ".ndjson", ".json")


def load_data(path: Path | str) -> pd.DataFrame:
    """Read a parquet file, a directory of parquet files (a partitioned dataset) or a JSONL
    file (also .ndjson; a .json file may hold one JSON array of records).

    JSON has no datetime type: in JSONL data, string columns ``event_timestamp`` and
    ``created`` are parsed as ISO-8601 times in UTC; nothing else is converted (so an
    ``event_time`` stays epoch-ms integers). Raises UserError for a missing, unreadable or
    unsupported file.
    """
    path = Path(path)
    if not path.exists():
        raise UserError(f"data file {path} does not exist")
    if path.is_dir():
        if not any(path.rglob("*.parquet")):
            raise UserError(f"data directory {path} holds no .parquet files")
        return _read_parquet(path)
    suffix = path.suffix.lower()
    if suffix in PARQUET_SUFFIXES:
        return _read_parquet(path)
    if suffix in JSONL_SUFFIXES:
        return _read_jsonl(path)
    raise UserError(
        f"unsupported data file {path.name!r}: use parquet ({', '.join(PARQUET_SUFFIXES)}) "
        f"or JSON lines ({', '.join(JSONL_SUFFIXES)})"
    )


def _read_parquet(path: Path) -> pd.DataFrame:
    import pyarrow as pa

    try:
        return pd.read_parquet(path)
    except (OSError, pa.ArrowException, ValueError) as exc:
        raise UserError(f"cannot read parquet data {path}: {exc}") from None


def _read_jsonl(path: Path) -> pd.DataFrame:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read {path}: {exc}") from None
    records: list[dict] = []
    if text.lstrip().startswith("["):
        try:
            records = json.loads(text)
        except json.JSONDecodeError as exc:
            raise UserError(f"{path}: not valid JSON: {exc}") from None
        if not all(isinstance(r, dict) for r in records):
            raise UserError(f"{path}: expected an array of JSON objects")
    else:
        for lineno, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise UserError(f"{path}:{lineno}: not valid JSON: {exc.msg}") from None
            if not isinstance(record, dict):
                raise UserError(f"{path}:{lineno}: expected a JSON object, got {type(record).__name__}")
            records.append(record)
    df = pd.DataFrame.from_records(records)
    for column in _iso_time_columns(df):
        try:
            df[column] = pd.to_datetime(df[column], utc=True, format="ISO8601")
        except (ValueError, TypeError):
            pass  # left as strings: the suite's type check reports the column
    return df


def _iso_time_columns(df: pd.DataFrame) -> Iterable[str]:
    for column in (F.EVENT_TIMESTAMP, F.CREATED):
        if column in df.columns and df[column].dtype == object:
            present = df[column].dropna()
            if len(present) and all(isinstance(v, str) for v in present):
                yield column
