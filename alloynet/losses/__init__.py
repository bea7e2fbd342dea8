"""Losses by name (long-tailed classification) and the multi-task total.

``create_loss(name, class_counts, **kw) -> nn.Module`` (logits [B, K], target [B] -> scalar), names:

====================  =====================================================  ===========================
name                  what                                                   options (kw)
====================  =====================================================  ===========================
ce                    cross-entropy                                          label_smoothing
focal                 focal loss                                             gamma, label_smoothing
cb_ce / cb_focal      class-balanced (effective number) CE / focal           beta, gamma, label_smoothing
balanced_softmax      CE on logits + log prior                               label_smoothing
logit_adjusted        CE on logits + tau * log prior                         tau, label_smoothing
ldam                  LDAM margins, deferred re-weighting from drw_epoch     max_margin, s, drw_epoch, beta
====================  =====================================================  ===========================

``MultiTaskLoss(classification, target_stats, task_weights=None, weighting="fixed"|"uncertainty")``
adds the regression heads; calling it returns ``(total, {task: float})``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from torch import nn

from alloynet.losses.classification import (
    CrossEntropy,
    FocalLoss,
    LDAMLoss,
    LogitAdjustedLoss,
    class_balanced_weights,
    log_prior,
)
from alloynet.losses.multitask import DEFAULT_TASK_WEIGHTS, TASKS, MultiTaskLoss

_LOSSES: dict[str, Callable[..., nn.Module]] = {}


def register_loss(name: str) -> Callable:
    def deco(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        _LOSSES[name] = fn
        return fn

    return deco


def list_losses() -> list[str]:
    return sorted(_LOSSES)


def create_loss(name: str, class_counts: Sequence[int], **kwargs) -> nn.Module:
    """The classification loss ``name``; ``class_counts`` are training samples per class (head or tail)."""
    if name not in _LOSSES:
        raise KeyError(f"unknown loss {name!r}; registered: {', '.join(list_losses())}")
    return _LOSSES[name](list(class_counts), **kwargs)


@register_loss("ce")
def _ce(counts, label_smoothing: float = 0.0) -> nn.Module:
    return CrossEntropy(label_smoothing=label_smoothing)


@register_loss("focal")
def _focal(counts, gamma: float = 2.0, label_smoothing: float = 0.0) -> nn.Module:
    return FocalLoss(gamma, label_smoothing=label_smoothing)


@register_loss("cb_ce")
def _cb_ce(counts, beta: float = 0.999, label_smoothing: float = 0.0) -> nn.Module:
    return CrossEntropy(class_balanced_weights(counts, beta), label_smoothing)


@register_loss("cb_focal")
def _cb_focal(counts, beta: float = 0.999, gamma: float = 2.0, label_smoothing: float = 0.0) -> nn.Module:
    return FocalLoss(gamma, class_balanced_weights(counts, beta), label_smoothing)


@register_loss("balanced_softmax")
def _balanced_softmax(counts, label_smoothing: float = 0.0) -> nn.Module:
    return LogitAdjustedLoss(counts, 1.0, label_smoothing)


@register_loss("logit_adjusted")
def _logit_adjusted(counts, tau: float = 1.0, label_smoothing: float = 0.0) -> nn.Module:
    return LogitAdjustedLoss(counts, tau, label_smoothing)


@register_loss("ldam")
def _ldam(counts, max_margin: float = 0.5, s: float = 30.0, drw_epoch=None, beta: float = 0.9999) -> nn.Module:
    return LDAMLoss(counts, max_margin, s, drw_epoch, beta)


__all__ = [
    "CrossEntropy",
    "DEFAULT_TASK_WEIGHTS",
    "FocalLoss",
    "LDAMLoss",
    "LogitAdjustedLoss",
    "MultiTaskLoss",
    "TASKS",
    "class_balanced_weights",
    "create_loss",
    "list_losses",
    "log_prior",
    "register_loss",
]
