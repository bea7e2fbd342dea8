"""Known-answer tests for the long-tail losses and the multi-task total."""

from __future__ import annotations

import math

import pytest
import torch
from torch.nn import functional as F

from alloynet.losses import (
    FocalLoss,
    LDAMLoss,
    MultiTaskLoss,
    class_balanced_weights,
    create_loss,
    list_losses,
    log_prior,
)

COUNTS = [120, 40, 13, 4, 1]


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(64, 5, generator=g) * 3
    target = torch.randint(0, 5, (64,), generator=g)
    return logits, target


def test_focal_gamma0_is_cross_entropy(batch):
    logits, target = batch
    assert torch.allclose(FocalLoss(0.0)(logits, target), F.cross_entropy(logits, target), atol=1e-6)
    w = torch.tensor([0.2, 0.5, 1.0, 1.5, 1.8])
    assert torch.allclose(
        FocalLoss(0.0, weight=w)(logits, target), F.cross_entropy(logits, target, weight=w), atol=1e-6
    )
    assert torch.allclose(
        FocalLoss(0.0, label_smoothing=0.1)(logits, target),
        F.cross_entropy(logits, target, label_smoothing=0.1),
        atol=1e-6,
    )


def test_focal_hand_computed():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    target = torch.tensor([0, 0])
    p = torch.softmax(logits, 1)[:, 0]
    expect = ((1 - p) ** 2 * -torch.log(p)).mean()
    assert torch.allclose(FocalLoss(2.0)(logits, target), expect, atol=1e-6)
    # Focusing: a confident correct example contributes less than under CE.
    assert FocalLoss(2.0)(logits[:1], target[:1]) < F.cross_entropy(logits[:1], target[:1])


def test_class_balanced_weights_effective_number():
    beta = 0.99
    w = class_balanced_weights(COUNTS, beta)
    raw = [(1 - beta) / (1 - beta**n) for n in COUNTS]
    expect = [r / sum(raw) * len(COUNTS) for r in raw]
    assert w.tolist() == pytest.approx(expect, rel=1e-6)
    assert float(w.sum()) == pytest.approx(len(COUNTS))
    assert all(a < b for a, b in zip(w.tolist(), w.tolist()[1:]))  # rarer class, larger weight
    assert class_balanced_weights(COUNTS, 0.0).tolist() == pytest.approx([1.0] * 5)  # beta=0: no re-weighting


def test_cb_ce_is_weighted_ce(batch):
    logits, target = batch
    loss = create_loss("cb_ce", COUNTS, beta=0.999)
    expect = F.cross_entropy(logits, target, weight=class_balanced_weights(COUNTS, 0.999))
    assert torch.allclose(loss(logits, target), expect, atol=1e-6)


def test_balanced_softmax_is_ce_on_logits_plus_log_prior(batch):
    logits, target = batch
    prior = torch.tensor(COUNTS, dtype=torch.float64) / sum(COUNTS)
    expect = F.cross_entropy(logits + torch.log(prior).float(), target)
    assert torch.allclose(create_loss("balanced_softmax", COUNTS)(logits, target), expect, atol=1e-6)
    la = create_loss("logit_adjusted", COUNTS, tau=0.5)(logits, target)
    assert torch.allclose(la, F.cross_entropy(logits + 0.5 * log_prior(COUNTS), target), atol=1e-6)


def test_ldam_margins_and_drw(batch):
    logits, target = batch
    loss = LDAMLoss(COUNTS, max_margin=0.5, s=30.0, drw_epoch=2)
    m = loss.margins.tolist()
    assert max(m) == pytest.approx(0.5) and m[-1] == pytest.approx(0.5)  # the rarest class gets the largest
    assert m[0] == pytest.approx(0.5 * (COUNTS[-1] / COUNTS[0]) ** 0.25, rel=1e-5)
    z = torch.tanh(logits) - F.one_hot(target, 5) * loss.margins
    assert torch.allclose(loss(logits, target), F.cross_entropy(30 * z, target), atol=1e-5)
    loss.set_epoch(2)  # deferred re-weighting switches on
    assert torch.allclose(loss(logits, target), F.cross_entropy(30 * z, target, weight=loss.drw_weight), atol=1e-5)


@pytest.mark.parametrize("name", ["ce", "focal", "cb_ce", "cb_focal", "balanced_softmax", "logit_adjusted", "ldam"])
def test_every_loss_has_finite_gradients(name, batch):
    logits, target = batch
    logits = (logits * 10).requires_grad_()  # large logits: where naive implementations overflow
    loss = create_loss(name, [50, 0, 3, 1, 1])  # an empty class too
    value = loss(logits, target)
    value.backward()
    assert math.isfinite(value.item()) and torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0


def test_registry_names():
    assert set(list_losses()) >= {"ce", "focal", "cb_ce", "cb_focal", "balanced_softmax", "logit_adjusted", "ldam"}
    with pytest.raises(KeyError, match="unknown loss"):
        create_loss("nope", COUNTS)


def _outputs(g):
    return {
        "logits": torch.randn(8, 5, generator=g, requires_grad=True),
        "thickness_mm": torch.randn(8, generator=g, requires_grad=True),
        "a0": torch.randn(8, generator=g, requires_grad=True),
        "mu_eff": torch.randn(8, generator=g, requires_grad=True),
    }


def test_multitask_fixed_weighted_sum_in_standardised_units():
    g = torch.Generator().manual_seed(1)
    out = _outputs(g)
    tgt = {
        "alloy": torch.randint(0, 5, (8,), generator=g),
        "thickness_mm": torch.rand(8, generator=g) * 5,
        "a0": torch.rand(8, generator=g),
        "mu_eff": torch.rand(8, generator=g) * 4,
    }
    stats = {"thickness_mm": (2.0, 1.5), "a0": (0.8, 0.4), "mu_eff": (3.5, 0.8)}
    weights = {"alloy": 1.0, "thickness_mm": 0.5, "a0": 0.0, "mu_eff": 2.0}
    mt = MultiTaskLoss(create_loss("ce", COUNTS), stats, weights, regression="mse")
    total, parts = mt(out, tgt)
    ce = F.cross_entropy(out["logits"], tgt["alloy"])
    t = F.mse_loss((out["thickness_mm"] - 2.0) / 1.5, (tgt["thickness_mm"] - 2.0) / 1.5)
    mu = F.mse_loss((out["mu_eff"] - 3.5) / 0.8, (tgt["mu_eff"] - 3.5) / 0.8)
    assert total.item() == pytest.approx((ce + 0.5 * t + 2.0 * mu).item(), rel=1e-5)
    assert parts["thickness_mm"] == pytest.approx(t.item(), rel=1e-5) and "a0" in parts
    total.backward()
    assert out["a0"].grad is None or float(out["a0"].grad.abs().sum()) == 0.0  # weight 0: no gradient


def test_multitask_uncertainty_weighting_learns_log_vars():
    g = torch.Generator().manual_seed(2)
    out = _outputs(g)
    tgt = {
        "alloy": torch.randint(0, 5, (8,), generator=g),
        "thickness_mm": torch.rand(8, generator=g),
        "a0": torch.rand(8, generator=g),
        "mu_eff": torch.rand(8, generator=g),
    }
    stats = {k: (0.0, 1.0) for k in ("thickness_mm", "a0", "mu_eff")}
    mt = MultiTaskLoss(create_loss("ce", COUNTS), stats, weighting="uncertainty")
    with torch.no_grad():
        mt.log_vars["alloy"].fill_(math.log(2.0))
    total, parts = mt(out, tgt)
    expect = sum(parts.values()) - parts["alloy"] + parts["alloy"] / 2 + math.log(2.0)
    assert total.item() == pytest.approx(expect, rel=1e-5)
    total.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad) for p in mt.log_vars.values())
