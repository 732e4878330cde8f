"""Weighted multi-head binary cross-entropy (TransAct paper, section "Training").

For B examples and H heads (labels [B, H] in the same head order as the logits):

    bce[b, h]      = BCE(sigmoid(logit[b, h]), y[b, h])
    w_label[b, h]  = max_{l : y[b, l] = 1} W[l, h]    if example b has any positive label
                   = no_action_weight                  otherwise (an impression without action)
    w[b, h]        = w_label[b, h] * example_weight[b]   (example_weight defaults to 1)
    loss_h         = sum_b w[b, h] * bce[b, h] / B       (mean over the batch, not over weights)
    loss           = sum_h loss_h

W[l, h] (label l, head h) says how much an example carrying action l counts in head h's loss.
Default (`default_label_weight_matrix`, rows = labels, columns = heads)::

              repin  click  hide
    repin       1      1     1
    click       1      1     1
    hide        5      5     1

i.e. a hidden pin is a 5x-weighted *negative* for the repin and click heads (their label is 0 on
it), so the engagement heads learn what users reject; everything else counts 1. Several positive
labels on one example take the element-wise max of their rows.

**Within-user ranking term** (`within_group_pairwise`, on when a recipe sets `pair_weight` > 0).
GAUC ranks each user's own impressions, but a pointwise loss also learns why some users act more
than others, and a feature can point one way across users and the other way within one user
(KuaiRand: heavier clickers click more, yet a user clicks less right after clicking a lot;
docs/kuairand.md). Per head h, over the pairs (i, j) of one batch with the same group (user) and
y[i, h] = 1 > y[j, h] = 0:

    pair_h = mean_(i, j) softplus(logit[j, h] - logit[i, h])      (0 when the batch has no pair)
    loss   = sum_h loss_h + pair_weight * sum_h pair_h

i.e. a logistic loss on the score difference of a positive and a negative of the same user, the
pairwise surrogate of per-user AUC. Batches must then hold several rows of each user
(`RankingData.loader(group_rows=...)`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

HIDE = "hide"
DEFAULT_HIDE_WEIGHT = 5.0


def default_label_weight_matrix(heads: Sequence[str], hide_weight: float = DEFAULT_HIDE_WEIGHT) -> Tensor:
    """[H, H] matrix, rows = labels, columns = heads: ones, except the `hide` label row, which
    weighs `hide_weight` in every other head."""
    heads = tuple(heads)
    w = torch.ones(len(heads), len(heads))
    if HIDE in heads:
        i = heads.index(HIDE)
        w[i] = hide_weight
        w[i, i] = 1.0
    return w


def label_head_weights(labels: Tensor, label_weight_matrix: Tensor,
                       no_action_weight: float = 1.0) -> Tensor:
    """[B, H] per-example, per-head weights from 0/1 labels [B, H_label] and W [H_label, H]."""
    W = label_weight_matrix.to(device=labels.device, dtype=torch.float32)
    if labels.dim() != 2 or labels.shape[1] != W.shape[0]:
        raise ValueError(f"labels {tuple(labels.shape)} do not match weight matrix {tuple(W.shape)}")
    pos = labels > 0.5  # [B, L]
    lowest = torch.finfo(W.dtype).min
    per_label = torch.where(pos[:, :, None], W[None], lowest)  # [B, L, H]
    w = per_label.amax(dim=1)
    return torch.where(pos.any(dim=1)[:, None], w, torch.full_like(w, no_action_weight))


@dataclass
class LossOutput:
    total: Tensor  # scalar
    per_head: Tensor  # [H], sums to total
    weights: Tensor  # [B, H], the effective weights used

    def as_dict(self, heads: Sequence[str]) -> dict[str, float]:
        out = {f"loss_{h}": float(v) for h, v in zip(heads, self.per_head.detach().cpu())}
        out["loss"] = float(self.total.detach())
        return out


def weighted_multihead_bce(
    logits: Tensor,
    labels: Tensor,
    label_weight_matrix: Tensor | None = None,
    example_weight: Tensor | None = None,
    no_action_weight: float = 1.0,
) -> LossOutput:
    """See the module docstring. `label_weight_matrix=None` means all ones (plain BCE)."""
    if logits.shape != labels.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and labels {tuple(labels.shape)} differ")
    labels = labels.to(logits.dtype)
    b, h = logits.shape
    if label_weight_matrix is None:
        label_weight_matrix = torch.ones(h, h)
    w = label_head_weights(labels, label_weight_matrix, no_action_weight).to(logits.dtype)
    if example_weight is not None:
        w = w * example_weight.to(logits.dtype).reshape(b, 1)
    bce = F.binary_cross_entropy_with_logits(logits, labels, reduction="none")
    per_head = (w * bce).sum(dim=0) / max(b, 1)
    return LossOutput(total=per_head.sum(), per_head=per_head, weights=w)


def within_group_pairwise(logits: Tensor, labels: Tensor, groups: Tensor) -> Tensor:
    """[H] mean pairwise logistic loss per head over same-group (positive, negative) pairs.

    logits, labels [B, H]; groups [B] (e.g. user ids). O(B^2) per head: fine for batches of a few
    thousand rows. A head without a pair in the batch contributes 0 (and no gradient).
    """
    if logits.shape != labels.shape or groups.shape != logits.shape[:1]:
        raise ValueError(f"logits {tuple(logits.shape)}, labels {tuple(labels.shape)} and groups "
                         f"{tuple(groups.shape)} do not align")
    same = groups[:, None] == groups[None, :]  # [B, B]
    pos = labels > 0.5  # [B, H]
    # pairs[h, i, j]: i positive, j negative, same group
    pairs = same[None] & pos.T[:, :, None] & ~pos.T[:, None, :]
    diff = logits.T[:, None, :] - logits.T[:, :, None]  # [H, i, j] = logit[j] - logit[i]
    n = pairs.sum(dim=(1, 2))
    total = torch.where(pairs, F.softplus(diff), torch.zeros((), dtype=logits.dtype, device=logits.device))
    return total.sum(dim=(1, 2)) / n.clamp(min=1).to(logits.dtype)


class WeightedMultiHeadBCE(nn.Module):
    """Module form: holds the label-weight matrix as a buffer (default for `heads`)."""

    label_weight_matrix: Tensor

    def __init__(self, heads: Sequence[str], label_weight_matrix: Tensor | None = None,
                 no_action_weight: float = 1.0):
        super().__init__()
        self.heads = tuple(heads)
        W = (default_label_weight_matrix(self.heads) if label_weight_matrix is None
             else torch.as_tensor(label_weight_matrix, dtype=torch.float32))
        if W.shape != (len(self.heads), len(self.heads)):
            raise ValueError(f"label weight matrix must be {len(self.heads)}x{len(self.heads)}")
        self.register_buffer("label_weight_matrix", W)
        self.no_action_weight = float(no_action_weight)

    def forward(self, logits: Tensor, labels: Tensor, example_weight: Tensor | None = None) -> LossOutput:
        return weighted_multihead_bce(logits, labels, self.label_weight_matrix, example_weight,
                                      self.no_action_weight)
