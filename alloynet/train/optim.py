"""Optimisers and learning-rate schedules from config.

Schedules are stepped once per *iteration* as closed-form factors of the fractional epoch (a
``LambdaLR``), so warm-up and cyclic schedules work even for runs of one or two epochs, and a resumed run
lands on exactly the same learning rate. ``plateau`` is the exception: ``ReduceLROnPlateau`` stepped once
per epoch on the validation metric, after warm-up.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR, ReduceLROnPlateau

from alloynet.train.config import EarlyStopConfig, OptimConfig, ScheduleConfig


def param_groups(modules: Iterable[nn.Module], weight_decay: float) -> list[dict]:
    """No weight decay on biases, norm parameters and the loss's log-variances (decaying those only
    biases them towards zero, it does not regularise)."""
    decay, no_decay = [], []
    for m in modules:
        for p in m.parameters():
            if p.requires_grad:
                (decay if p.ndim > 1 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(cfg: OptimConfig, modules: Iterable[nn.Module]) -> torch.optim.Optimizer:
    groups = param_groups(modules, cfg.weight_decay or 0.0)
    if cfg.name == "adam":
        return torch.optim.Adam(groups, lr=cfg.lr)
    if cfg.name == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr)
    if cfg.name == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0)
    if cfg.name == "rmsprop":
        # eps 1e-3 rather than 1e-8: the value tf/timm use; torch's default makes RMSprop unstable early on.
        return torch.optim.RMSprop(groups, lr=cfg.lr, momentum=cfg.momentum, alpha=0.9, eps=1e-3)
    raise ValueError(f"unknown optimiser {cfg.name!r}")


def lr_factor(cfg: ScheduleConfig, epoch: float, total_epochs: int) -> float:
    """The learning-rate multiplier at a fractional epoch (warm-up included; plateau handled elsewhere)."""
    if epoch < cfg.warmup_epochs:
        return cfg.warmup_start_factor + (1 - cfg.warmup_start_factor) * epoch / cfg.warmup_epochs
    t = epoch - cfg.warmup_epochs
    span = max(total_epochs - cfg.warmup_epochs, 1e-9)
    lo = cfg.min_lr_factor
    if cfg.name == "step":
        return cfg.gamma ** math.floor(t / cfg.step_size)
    if cfg.name == "exponential":
        return cfg.gamma**t
    if cfg.name == "cosine":
        return lo + (1 - lo) * 0.5 * (1 + math.cos(math.pi * min(t / span, 1.0)))
    if cfg.name == "cyclic":  # triangular: lo -> 1 -> lo every 2 * step_size epochs
        phase = (t / cfg.step_size) % 2
        return lo + (1 - lo) * (phase if phase <= 1 else 2 - phase)
    return 1.0


class Schedule:
    """Per-iteration ``LambdaLR`` plus, for ``plateau``, a per-epoch ``ReduceLROnPlateau``."""

    def __init__(
        self,
        cfg: ScheduleConfig,
        optimizer: torch.optim.Optimizer,
        iters_per_epoch: int,
        total_epochs: int,
        early: EarlyStopConfig,
    ):
        self.cfg, self.iters = cfg, max(iters_per_epoch, 1)
        self.lambda_lr = LambdaLR(optimizer, lambda it: lr_factor(cfg, it / self.iters, total_epochs))
        self.plateau: ReduceLROnPlateau | None = None
        if cfg.name == "plateau":
            self.plateau = ReduceLROnPlateau(optimizer, mode=early.mode, factor=cfg.gamma, patience=cfg.patience)

    def _in_warmup(self) -> bool:
        return self.lambda_lr.last_epoch / self.iters < self.cfg.warmup_epochs

    def step_iteration(self) -> None:
        # Under plateau, LambdaLR only drives warm-up; afterwards ReduceLROnPlateau owns the lr.
        if self.plateau is None or self._in_warmup():
            self.lambda_lr.step()

    def step_epoch(self, metric: float | None) -> None:
        if self.plateau is not None and not self._in_warmup() and metric is not None:
            self.plateau.step(metric)

    def state_dict(self) -> dict:
        return {"lambda": self.lambda_lr.state_dict(), "plateau": self.plateau.state_dict() if self.plateau else None}

    def load_state_dict(self, state: dict) -> None:
        self.lambda_lr.load_state_dict(state["lambda"])
        if self.plateau is not None and state.get("plateau"):
            self.plateau.load_state_dict(state["plateau"])


class EarlyStopping:
    def __init__(self, cfg: EarlyStopConfig):
        self.cfg = cfg
        self.best: float | None = None
        self.bad_epochs = 0

    def improved(self, value: float) -> bool:
        """Record ``value``; True if it is the best so far (by more than min_delta)."""
        sign = 1.0 if self.cfg.mode == "max" else -1.0
        if self.best is None or sign * (value - self.best) > self.cfg.min_delta:
            self.best, self.bad_epochs = value, 0
            return True
        self.bad_epochs += 1
        return False

    @property
    def should_stop(self) -> bool:
        return self.cfg.patience is not None and self.bad_epochs >= self.cfg.patience

    def state_dict(self) -> dict:
        return {"best": self.best, "bad_epochs": self.bad_epochs}

    def load_state_dict(self, state: dict) -> None:
        self.best, self.bad_epochs = state["best"], state["bad_epochs"]
