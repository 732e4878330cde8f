"""Export a trained run to the BentoML model store (the write side).

    tag = export_run("runs/transact_v11")              # -> "homefeed-ranker:<version>"

The model's files and the safe loader the service uses (`load_exported`, which refuses a model
whose feature schema differs from the running feature repo's) live in `homefeed.model.store`,
below both training and serving; they are re-exported here for training code.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import torch

from homefeed.errors import UserError
from homefeed.model import ModelConfig, Ranker, build_model
from homefeed.model.dense import dense_feature_spec
from homefeed.model.store import (  # noqa: F401  (load_exported and its error are re-exported)
    CONFIG_FILE,
    METADATA_FILE,
    RUN_FILE,
    WEIGHTS_FILE,
    ModelSchemaMismatch,
    _model_store,
    current_fingerprint,
    load_exported,
)

log = logging.getLogger(__name__)

DEFAULT_NAME = "homefeed-ranker"


def export_run(run_dir: Path | str, name: str = DEFAULT_NAME, metrics: dict | None = None,
               bentoml_home: Path | str | None = None) -> str:
    """Copy a run directory's model into the BentoML model store; returns the tag."""
    run_dir = Path(run_dir)
    for needed in (WEIGHTS_FILE, CONFIG_FILE, RUN_FILE):
        if not (run_dir / needed).is_file():
            raise UserError(f"{run_dir} is not a trained run (no {needed}); run `homefeed train` first")
    import bentoml
    config = json.loads((run_dir / CONFIG_FILE).read_text())
    run = json.loads((run_dir / RUN_FILE).read_text())
    metadata = {
        "schema_fingerprint": run["schema_fingerprint"],
        "dense_features": run["dense_features"],
        "encoder": config["encoder"],
        "heads": config["heads"],
        # whether the sequence input holds impressions too (serving reads them only then)
        "sequence_impressions": bool(config.get("sequence_impressions", False)),
        "valid_metrics": run.get("valid_metrics", {}),
        "test_metrics": metrics or {},
        "validation": run.get("validation", {}),
        "train_config": run.get("train_config", {}),
        "examples_per_s": run.get("examples_per_s"),
        "parameters": run.get("parameters"),
        "dataset": run.get("dataset"),
    }
    labels = {"encoder": config["encoder"], "schema_fingerprint": run["schema_fingerprint"],
              "validation": "passed" if run.get("validation", {}).get("success") else "failed"}
    # BentoML metadata values must be simple; the full record lives in metadata.json.
    summary = {"schema_fingerprint": run["schema_fingerprint"], "encoder": config["encoder"],
               "sequence_impressions": bool(config.get("sequence_impressions", False)),
               "dense_digest": run["dense_features"]["digest"], "torch": str(torch.__version__)}
    with bentoml.models.create(name, labels=labels, metadata=summary, module=__name__,
                               _model_store=_model_store(bentoml_home)) as bento_model:
        target = Path(bento_model.path)
        shutil.copyfile(run_dir / WEIGHTS_FILE, target / WEIGHTS_FILE)
        (target / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
        (target / METADATA_FILE).write_text(json.dumps(metadata, indent=2) + "\n")
    tag = str(bento_model.tag)
    log.info("exported %s as %s", run_dir, tag)
    return tag


def export_untrained(out_dir: Path | str, *, emb_dim: int | None = None, seed: int = 0,
                     bentoml_home: Path | str | None = None,
                     sequence_impressions: bool = False) -> tuple[str, Ranker]:
    """Export a small randomly initialised TransAct v1.1 (for service and fault tests, which
    need a real model in a real store, not a good one), with impressions in its sequence when
    `sequence_impressions`. Returns (tag, model)."""
    from safetensors.torch import save_file

    from homefeed.settings import load_settings

    settings = load_settings()
    dim = emb_dim or settings.embedding_dim
    torch.manual_seed(seed)
    spec = dense_feature_spec(dim)
    config = ModelConfig(encoder="transact_v11", seq_len=settings.sequence_length, emb_dim=dim,
                         dense_dim=spec["dim"], n_layers=1, mlp_dims=(32,), dcn_layers=1,
                         sequence_impressions=sequence_impressions)
    model = build_model(config).eval()
    run = Path(out_dir)
    run.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(run / WEIGHTS_FILE))
    (run / CONFIG_FILE).write_text(json.dumps(config.to_dict()))
    (run / RUN_FILE).write_text(json.dumps({"schema_fingerprint": current_fingerprint(settings),
                                            "dense_features": spec, "validation": {"success": True},
                                            "untrained": True}))
    return export_run(run, bentoml_home=bentoml_home), model
