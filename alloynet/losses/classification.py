"""Classification losses for long-tailed data.

* ``CrossEntropy``: with label smoothing and optional per-class weights.
* ``FocalLoss`` (Lin et al. 2017): down-weights easy examples; gamma = 0 is cross-entropy.
* class-balanced weights (Cui et al. 2019): w_c = (1 - beta) / (1 - beta^n_c), normalised to sum to K;
  applied to CE or focal ("cb_ce", "cb_focal").
* ``LogitAdjustedLoss`` (Menon et al. 2021): CE on logits + tau * log prior; tau = 1 is the balanced
  softmax (Ren et al. 2020). Inference uses the raw logits, which then estimate balanced posteriors.
* ``LDAMLoss`` (Cao et al. 2019): label-distribution-aware margins, with deferred re-weighting (DRW): plain
  until ``drw_epoch``, class-balanced weights after.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F


def class_balanced_weights(class_counts: Sequence[int], beta: float = 0.999) -> torch.Tensor:
    """Effective-number weights (1 - beta) / (1 - beta^n), normalised so they sum to the class count."""
    n = torch.as_tensor(list(class_counts), dtype=torch.float64)
    if torch.any(n < 1):
        # A class absent from training has no effective number; give it the rarest class's weight.
        n = torch.clamp(n, min=1)
    if not 0 <= beta < 1:
        raise ValueError(f"beta must be in [0, 1), got {beta}")
    w = (1 - beta) / (1 - torch.pow(beta, n)) if beta > 0 else torch.ones_like(n)
    return (w / w.sum() * len(n)).float()


def log_prior(class_counts: Sequence[int]) -> torch.Tensor:
    n = torch.clamp(torch.as_tensor(list(class_counts), dtype=torch.float64), min=1)
    return torch.log(n / n.sum()).float()


class CrossEntropy(nn.Module):
    def __init__(self, weight: torch.Tensor | None = None, label_smoothing: float = 0.0):
        super().__init__()
        self.register_buffer("weight", weight if weight is None else weight.float())
        self.label_smoothing = label_smoothing

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits.float(), target, weight=self.weight, label_smoothing=self.label_smoothing)


class FocalLoss(nn.Module):
    """mean_i w_{y_i} (1 - p_{y_i})^gamma (-log p_{y_i}), normalised like weighted CE (by the weights' sum)."""

    def __init__(self, gamma: float = 2.0, weight: torch.Tensor | None = None, label_smoothing: float = 0.0):
        super().__init__()
        if gamma < 0:
            raise ValueError(f"gamma must be >= 0, got {gamma}")
        self.gamma, self.label_smoothing = gamma, label_smoothing
        self.register_buffer("weight", weight if weight is None else weight.float())

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logp = F.log_softmax(logits.float(), dim=-1)
        ce = F.nll_loss(logp, target, reduction="none")
        if self.label_smoothing > 0:
            ce = (1 - self.label_smoothing) * ce - self.label_smoothing * logp.mean(dim=-1)
        pt = logp.gather(1, target[:, None]).squeeze(1).exp()
        loss = (1 - pt).clamp(min=0).pow(self.gamma) * ce
        if self.weight is None:
            return loss.mean()
        w = self.weight[target]
        return (w * loss).sum() / w.sum()


class LogitAdjustedLoss(nn.Module):
    """Cross-entropy on logits + tau * log(class prior); tau = 1 is the balanced softmax."""

    def __init__(self, class_counts: Sequence[int], tau: float = 1.0, label_smoothing: float = 0.0):
        super().__init__()
        self.register_buffer("adjustment", tau * log_prior(class_counts))
        self.label_smoothing = label_smoothing

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits.float() + self.adjustment, target, label_smoothing=self.label_smoothing)


class LDAMLoss(nn.Module):
    """Margins m_c = C / n_c^(1/4) (largest = ``max_margin``) subtracted from the true-class logit, scaled
    by ``s``; class-balanced weights switch on at ``drw_epoch`` (call ``set_epoch`` every epoch)."""

    def __init__(
        self,
        class_counts: Sequence[int],
        max_margin: float = 0.5,
        s: float = 30.0,
        drw_epoch: int | None = None,
        beta: float = 0.9999,
    ):
        super().__init__()
        n = torch.clamp(torch.as_tensor(list(class_counts), dtype=torch.float64), min=1)
        m = 1.0 / n.pow(0.25)
        self.register_buffer("margins", (m * (max_margin / m.max())).float())
        self.register_buffer("drw_weight", class_balanced_weights(class_counts, beta))
        self.s, self.drw_epoch, self.epoch = s, drw_epoch, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        # LDAM assumes normalised (cosine) logits; a plain linear head's are bounded by batch-norm'ed features,
        # so squash them into [-1, 1] before adding the margin and the scale.
        z = torch.tanh(logits.float())
        z = z - F.one_hot(target, z.shape[1]).to(z.dtype) * self.margins[None, :]
        weight = self.drw_weight if self.drw_epoch is not None and self.epoch >= self.drw_epoch else None
        return F.cross_entropy(self.s * z, target, weight=weight)
