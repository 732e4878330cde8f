"""The ranking model: tensor contract, config, TransAct, DIN and baseline encoders, ranker, loss."""

from homefeed.model.batch import (
    IMPRESSION_ACTION_ID,
    RankingBatch,
    build_batch,
    embed_pins,
    lookup_pin_rows,
    make_pin_rows,
    merge_impressions,
    pad_rows,
)
from homefeed.model.config import DEFAULT_HEADS, ENCODER_KINDS, TRANSACT_KINDS, ModelConfig
from homefeed.model.din import DINEncoder
from homefeed.model.encoders import build_encoder
from homefeed.model.loss import (
    LossOutput,
    WeightedMultiHeadBCE,
    default_label_weight_matrix,
    label_head_weights,
    weighted_multihead_bce,
    within_group_pairwise,
)
from homefeed.model.ranker import Ranker, build_model, count_parameters
from homefeed.model.transact import (
    TransActEncoder,
    sample_time_windows,
    time_window_mask,
    transact_one_user,
)

__all__ = [
    "DEFAULT_HEADS", "DINEncoder", "IMPRESSION_ACTION_ID", "ENCODER_KINDS", "TRANSACT_KINDS", "LossOutput",
    "ModelConfig", "RankingBatch",
    "Ranker", "TransActEncoder", "WeightedMultiHeadBCE", "build_batch", "build_encoder",
    "build_model", "count_parameters", "default_label_weight_matrix",
    "embed_pins", "label_head_weights", "lookup_pin_rows", "make_pin_rows", "merge_impressions", "pad_rows",
    "sample_time_windows", "time_window_mask", "transact_one_user", "weighted_multihead_bce",
    "within_group_pairwise",
]
