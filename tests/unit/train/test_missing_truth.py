"""A task a capture has no truth for (imported captures have no a0, no mu_eff, sometimes no thickness) is masked
per sample in the loss and the metrics, and a non-finite loss is diagnosed in one line naming the task and the
likely cause (training on imported captures: tests/integration/train/test_imported_captures.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from alloynet.evaluate.metrics import regression_metrics
from alloynet.losses import MultiTaskLoss, create_loss
from alloynet.train.engine import diagnose_non_finite

STATS = {"thickness_mm": (3.0, 1.0), "a0": (1.0, 0.5), "mu_eff": (2.0, 0.5)}
pytestmark = pytest.mark.usefixtures("one_thread")  # see tests/conftest.py


def _loss(weighting: str = "fixed") -> MultiTaskLoss:
    return MultiTaskLoss(create_loss("ce", [1] * 5), STATS, weighting=weighting)


def _batch(n: int = 6, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    out = {
        "logits": torch.randn(n, 5, generator=g, requires_grad=True),
        **{k: torch.randn(n, generator=g, requires_grad=True) for k in STATS},
    }
    targets = {"alloy": torch.randint(0, 5, (n,), generator=g), **{k: torch.randn(n, generator=g) for k in STATS}}
    return out, targets


def test_a_task_without_truth_is_masked_per_sample_and_its_gradient_stays_finite():
    out, t = _batch()
    t["a0"][[1, 3]] = float("nan")
    t["mu_eff"][:] = float("nan")
    loss = _loss()
    total, parts = loss(out, t)
    assert math.isfinite(float(total.detach())) and "mu_eff" not in parts and "a0" in parts
    known = [0, 2, 4, 5]
    keep = {k: v[known] if k != "logits" else v[known] for k, v in out.items()}
    _, ref = loss(keep, {k: v[known] for k, v in t.items()})
    assert parts["a0"] == pytest.approx(ref["a0"])  # the mean over the captures with truth only
    total.backward()
    for k, v in out.items():
        assert torch.isfinite(v.grad).all(), k
    assert float(out["mu_eff"].grad.abs().sum()) == 0.0  # no truth, no pull


def test_uncertainty_weighting_does_not_feed_a_task_with_no_truth_in_the_batch():
    out, t = _batch()
    t["a0"][:] = float("nan")
    loss = _loss("uncertainty")
    total, _ = loss(out, t)
    total.backward()
    assert loss.log_vars["a0"].grad is None or float(loss.log_vars["a0"].grad) == 0.0
    assert float(loss.log_vars["thickness_mm"].grad) != 0.0


def test_regression_metrics_leave_out_samples_without_truth():
    r = regression_metrics(np.array([1.0, 2.0, 5.0]), np.array([1.5, np.nan, 4.0]))
    assert r["mae"] == pytest.approx(0.75) and r["n"] == 2
    assert math.isnan(regression_metrics(np.ones(3), np.full(3, np.nan))["mae"])


def test_a_non_finite_loss_is_diagnosed_in_one_line():
    out, t = _batch()
    cal = torch.tensor([[[1000.0, 50000.0]]]).expand(6, 1, 2).clone()
    x = torch.ones(6, 1, 4, 4)
    out["logits"] = out["logits"].detach().clone()
    out["logits"][0, 0] = float("nan")
    parts = _loss().task_losses(out, t)
    msg = diagnose_non_finite(parts, out, x, cal, 0.5, "epoch 1/2, batch 3")
    assert "\n" not in msg and "non-finite alloy loss at epoch 1/2, batch 3" in msg and "optim.lr" in msg
    cal[2, 0, 1] = 900.0  # flat below dark
    msg = diagnose_non_finite(parts, out, x, cal, 0.5, "epoch 1/2, batch 3")
    assert "flat <= dark" in msg and "--dark-level" in msg
