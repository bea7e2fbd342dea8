"""Honest answers for captures sent without calibration or wedge size: uniform until fitted, then their own
temperature and conformal set; the groups always the sums of their alloys."""

from __future__ import annotations

import numpy as np
import torch

from alloynet.models.answer import Answer


def _answer() -> Answer:
    return Answer(num_classes=5, feature_dim=4, groups=[0, 0, 1, 1, 1])


def _forward(answer: Answer, logits: torch.Tensor, missing: torch.Tensor):
    b = len(logits)
    zeros = torch.zeros(b)
    return answer(logits, torch.full((b,), 3.0), torch.zeros(b, 4), missing, zeros, zeros)


def test_unfitted_missing_calibration_gets_every_class_and_no_confidence():
    answer = _answer()
    logits = torch.tensor([[20.0, 0, 0, 0, 0], [20.0, 0, 0, 0, 0]])
    probs, pset, groups, flags = _forward(answer, logits, torch.tensor([0.0, 1.0]))
    assert probs[0, 0] > 0.999  # the calibrated capture: the model's own answer
    torch.testing.assert_close(probs[1], torch.full((5,), 0.2))
    assert pset[1].tolist() == [1.0] * 5 and flags[1, 0] == 1.0
    torch.testing.assert_close(groups, (probs[:, :, None] * answer.group_matrix[None]).sum(1))


def test_fitted_missing_calibration_is_calibrated_and_covers():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 5, 4000)
    z = rng.normal(0.0, 1.0, (4000, 5))
    z[np.arange(4000), y] += 1.0
    z *= 8.0  # overconfident logits: the fitted temperature must bring them down
    answer = _answer()
    summary = answer.fit_missing(z[:2000], y[:2000])
    assert summary["temperature"] > 4.0 and 0.93 <= summary["coverage"] <= 0.97
    probs, pset, _, _ = _forward(answer, torch.as_tensor(z[2000:], dtype=torch.float32), torch.ones(2000))
    covered = pset.numpy()[np.arange(2000), y[2000:]].mean()
    assert 0.92 <= covered <= 0.98
    assert probs.max() < 0.999
    # mean confidence close to accuracy (calibrated), not near 1
    conf, acc = probs.max(1).values.mean().item(), (probs.argmax(1).numpy() == y[2000:]).mean()
    assert abs(conf - acc) < 0.05


def test_checkpoints_without_the_new_buffers_load_as_not_fitted():
    answer = _answer()
    state = {k: v for k, v in answer.state_dict().items() if k not in ("temperature_missing", "qhat_missing")}
    fresh = _answer()
    fresh.temperature_missing.fill_(3.0)
    fresh.load_state_dict(state)
    assert float(fresh.temperature_missing) == 3.0  # kept: nothing in the checkpoint overwrote it
    other = _answer()
    other.load_state_dict(state)
    assert float(other.temperature_missing) == 0.0 and float(other.qhat_missing) == 1.0


def test_too_few_held_out_captures_leave_them_uniform_and_fitting_never_sharpens():
    rng = np.random.default_rng(1)
    answer = _answer()
    y = rng.integers(0, 5, 6)
    z = np.eye(5)[y] * 30.0  # six perfectly confident, correct captures: a temperature from them would be a guess
    assert answer.fit_missing(z, y)["fitted"] is False
    probs, pset, _, _ = _forward(answer, torch.as_tensor(z, dtype=torch.float32), torch.ones(6))
    torch.testing.assert_close(probs, torch.full((6, 5), 0.2))
    answer.temperature.fill_(3.0)
    y = rng.integers(0, 5, 200)
    z = np.eye(5)[y] * 30.0
    assert answer.fit_missing(z, y)["temperature"] >= 3.0  # never sharper than a calibrated capture's


class _Echo(torch.nn.Module):
    """Returns what it was sent, to see what ``OtherSession`` feeds the model it wraps."""

    def forward(self, raw, calibration, wedge_mm):
        return {"calibration": calibration, "wedge_mm": wedge_mm}


def test_other_session_scales_each_span_by_the_spread_and_withholds_the_wedge():
    from alloynet.models.answer import OtherSession

    n = 4000
    cal = torch.tensor([[[1000.0, 51000.0]]]).repeat(n, 1, 1)
    out = OtherSession(_Echo(), 0.02, seed=3)(torch.zeros(n, 1, 2, 2), cal, torch.full((n,), 50.0))
    dark, span = out["calibration"][..., 0], out["calibration"][..., 1] - out["calibration"][..., 0]
    assert torch.equal(dark, cal[..., 0]) and torch.all(out["wedge_mm"] == 0)
    log_ratio = torch.log(span / 50000.0).squeeze(1)
    assert abs(log_ratio.mean().item()) < 0.002 and abs(log_ratio.std().item() - 0.02) < 0.002
    again = OtherSession(_Echo(), 0.02, seed=3)(torch.zeros(n, 1, 2, 2), cal, torch.full((n,), 50.0))
    assert torch.equal(again["calibration"], out["calibration"])  # seeded


def test_session_spread_starts_from_the_prior_and_the_stores_sessions_take_over():
    from alloynet.models.answer import SESSION_PRIOR_WEIGHT, SESSION_SPREAD_PRIOR, session_spread

    assert SESSION_PRIOR_WEIGHT == 1.0
    dark = np.full((6, 1), 1000.0)
    # one session, whatever its number of captures: the prior alone, widened for a new session's own centre
    one = np.full((6, 1), 51000.0)
    assert abs(session_spread(dark, one) - SESSION_SPREAD_PRIOR * np.sqrt(2.0)) < 1e-9
    # sessions are the distinct levels, not the captures: three sessions 0.1 % apart, two captures each
    few = 1000.0 + 50000.0 * np.exp(np.repeat([-0.001, 0.0, 0.001], 2))[:, None]
    var = (SESSION_SPREAD_PRIOR**2 + 2 * 0.001**2) / (1 + 2)
    assert abs(session_spread(dark, few) - np.sqrt(var * (1 + 1 / 3))) < 1e-7
    # many sessions: their own spread, the prior's weight of one session fading
    rng = np.random.default_rng(0)
    log_span = rng.normal(0.0, 0.004, 400)
    many = session_spread(np.full((400, 1), 1000.0), 1000.0 + 50000.0 * np.exp(log_span)[:, None])
    assert abs(many - 0.004) < 0.0004
    assert session_spread(np.zeros((2, 1)), np.zeros((2, 1))) == SESSION_SPREAD_PRIOR  # no usable span


def test_captures_tied_with_the_threshold_stay_in_their_sets():
    # 40 % of the true classes sit at the logits' floor: their probabilities are all equal, and the 95 % set must
    # hold them however 1 - (1 - p) rounds in float32
    logits = np.zeros((100, 5), np.float32)
    y = np.arange(100) % 5
    floor = np.arange(100) < 40
    logits[floor, y[floor]] = -30.06
    logits[~floor, y[~floor]] = 2.0
    answer = _answer()
    answer.fit_missing(logits, y)
    _, pset, _, _ = _forward(answer, torch.as_tensor(logits), torch.ones(100))
    assert pset.numpy()[np.arange(100), y].mean() >= 0.95
