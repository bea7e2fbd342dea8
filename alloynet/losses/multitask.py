"""The multi-task total: alloy classification plus the standardised regression targets.

Regression residuals are taken in standardised units (target_stats of the model), so a 0.1 mm thickness
error and a 0.1 error in mu_eff (1/cm) are not weighed by their arbitrary units. Two weightings:

* ``fixed`` (default): sum_t w_t L_t with configured weights;
* ``uncertainty`` (Kendall et al. 2018): sum_t exp(-s_t) L_t + s_t with learnt s_t = log sigma_t^2
  (the classification term uses the same form, as is common practice). The s_t are parameters of the
  loss module: the trainer optimises and checkpoints them with the model.

A regression target a capture has no truth for is NaN (a lab's import knows no ``a0`` or ``mu_eff``, and
sometimes no thickness): it is left out of that task's mean per sample, and a batch with no truth for a task
adds nothing for it (a zero that keeps the head in the graph), so imported and simulated captures train
together with no setting.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn
from torch.nn import functional as F

from alloynet.models.heads import REGRESSION_TARGETS

TASKS = ("alloy",) + REGRESSION_TARGETS
DEFAULT_TASK_WEIGHTS = {"alloy": 1.0, "thickness_mm": 0.5, "a0": 0.25, "mu_eff": 0.25}


class MultiTaskLoss(nn.Module):
    def __init__(
        self,
        classification: nn.Module,
        target_stats: Mapping[str, tuple[float, float]],
        task_weights: Mapping[str, float] | None = None,
        weighting: str = "fixed",
        regression: str = "smooth_l1",
    ):
        super().__init__()
        if weighting not in ("fixed", "uncertainty"):
            raise ValueError(f"weighting must be 'fixed' or 'uncertainty', got {weighting!r}")
        if regression not in ("smooth_l1", "mse"):
            raise ValueError(f"regression must be 'smooth_l1' or 'mse', got {regression!r}")
        weights = {**DEFAULT_TASK_WEIGHTS, **(task_weights or {})}
        unknown = set(weights) - set(TASKS)
        if unknown:
            raise ValueError(f"unknown task(s) {sorted(unknown)}; tasks are {TASKS}")
        self.classification, self.weighting, self.regression = classification, weighting, regression
        self.task_weights = {t: float(weights[t]) for t in TASKS}
        self.register_buffer(
            "mean", torch.tensor([target_stats[k][0] for k in REGRESSION_TARGETS], dtype=torch.float32)
        )
        self.register_buffer("std", torch.tensor([target_stats[k][1] for k in REGRESSION_TARGETS], dtype=torch.float32))
        active = [t for t in TASKS if self.task_weights[t] > 0]
        self.log_vars = (
            nn.ParameterDict({t: nn.Parameter(torch.zeros(())) for t in active}) if weighting == "uncertainty" else None
        )

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.classification, "set_epoch"):
            self.classification.set_epoch(epoch)

    def task_losses(
        self, outputs: Mapping[str, torch.Tensor], targets: Mapping[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        losses = {"alloy": self.classification(outputs["logits"], targets["alloy"])}
        reg = F.smooth_l1_loss if self.regression == "smooth_l1" else F.mse_loss
        for i, k in enumerate(REGRESSION_TARGETS):
            pred = (outputs[k].float() - self.mean[i]) / self.std[i]
            true = (targets[k].float() - self.mean[i]) / self.std[i]
            known = torch.isfinite(true)
            # indexing by the mask (not NaN * 0) keeps NaN out of the gradient as well as the value
            losses[k] = reg(pred[known], true[known]) if bool(known.any()) else pred.sum() * 0.0
        return losses

    def forward(
        self, outputs: Mapping[str, torch.Tensor], targets: Mapping[str, torch.Tensor]
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """The total loss and the per-task values (floats, for logging) of the tasks this batch has truth for."""
        losses = self.task_losses(outputs, targets)
        total = outputs["logits"].new_zeros((), dtype=torch.float32)
        parts = {}
        for t, value in losses.items():
            w = self.task_weights[t]
            if t != "alloy" and not bool(torch.isfinite(targets[t].float()).any()):
                if w > 0:  # no truth here: the zero keeps the head in the graph; its uncertainty term is not fed
                    total = total + value  # (s would only fall, and blow the task up at the next batch with truth)
                continue
            parts[t] = float(value.detach())
            if w <= 0:
                continue
            if self.log_vars is not None:
                s = self.log_vars[t]
                total = total + torch.exp(-s) * value + s
            else:
                total = total + w * value
        return total, parts
