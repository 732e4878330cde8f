"""Data validation with Great Expectations 1.x.

The GX file context in ``validation/`` (repo root) is generated from the schema code by
`homefeed.validation.suites` (``homefeed validate init``). Suites = checkpoints:
``action_events``, ``sequence_features``, ``pin_features``, ``training_set``.

Public API::

    from homefeed.validation import run_checkpoint, validate_dataframe, load_data

    report = validate_dataframe("action_events", batch_df, now_ms=now)  # micro-batches
    report = run_checkpoint("training_set", train_df)                    # stored result
    rejected = failing_rows("action_events", batch_df, now_ms=now)      # {row: reason}
    if not report.success:
        print(report.to_text())           # or report.to_dict()

Importing this package does not import great_expectations; the first validation does (~3 s).
See docs/validation.md.
"""

from homefeed.validation.runner import (
    FailedExpectation,
    ValidationReport,
    build_data_docs,
    derive_label_rate_bounds,
    expectation_parameters,
    failing_rows,
    load_data,
    run_checkpoint,
    validate_dataframe,
)
from homefeed.validation.suites import (
    CHECKPOINT_NAMES,
    LABEL_RATE_TOLERANCE,
    SUITE_NAMES,
    context_drift,
    default_project_dir,
    derive_columns,
    init_context,
)

__all__ = [
    "CHECKPOINT_NAMES",
    "LABEL_RATE_TOLERANCE",
    "SUITE_NAMES",
    "FailedExpectation",
    "ValidationReport",
    "build_data_docs",
    "context_drift",
    "default_project_dir",
    "derive_columns",
    "derive_label_rate_bounds",
    "expectation_parameters",
    "failing_rows",
    "init_context",
    "load_data",
    "run_checkpoint",
    "validate_dataframe",
]
