"""The honest answers' recalibration set: held-out simulated captures join the real ones only when they agree."""

from __future__ import annotations

import numpy as np
import pytest

from alloynet.models.answer import conformal_threshold, fit_temperature, recalibration_set


def _logits(n: int, sharpness: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Captures whose true class gets a logit ``sharpness`` above four others drawn around 0 (unit noise)."""
    y = rng.integers(0, 5, n)
    z = rng.normal(0.0, 1.0, (n, 5))
    z[np.arange(n), y] += sharpness
    return z, y


def test_simulated_captures_that_look_like_the_real_ones_join_the_recalibration_set():
    rng = np.random.default_rng(0)
    real, sim = _logits(70, 1.5, rng), _logits(2000, 1.5, rng)
    logits, labels, info = recalibration_set(*real, *sim, coverage=0.95)
    assert info["real"] == 70 and info["simulated"] == 2000 and len(labels) == 2070
    assert info["agreement_p"] >= 0.05 and 0.85 <= info["real_coverage"] <= 1.0
    # the joint threshold covers fresh captures of the same kind at the target (sd ~0.005 on 2,070 captures)
    t = fit_temperature(logits, labels)
    q = conformal_threshold(np.exp(logits / t) / np.exp(logits / t).sum(1, keepdims=True), labels, 0.95)
    z, y = _logits(20000, 1.5, np.random.default_rng(1))
    p = np.exp(z / t) / np.exp(z / t).sum(1, keepdims=True)
    assert (p[np.arange(len(y)), y] >= 1 - q).mean() == pytest.approx(0.95, abs=0.015)


def test_a_simulator_that_does_not_describe_the_rig_cannot_move_the_answers():
    rng = np.random.default_rng(0)
    real, sim = _logits(150, 1.0, rng), _logits(2000, 6.0, rng)  # simulated captures far easier than the rig's
    logits, labels, info = recalibration_set(*real, *sim, coverage=0.95)
    assert info["simulated"] == 0 and info["agreement_p"] < 0.05 and info["real_coverage"] < 0.8
    assert np.array_equal(labels, real[1]) and np.allclose(logits, real[0])


def test_too_few_real_captures_or_none_simulated_keeps_the_real_ones():
    rng = np.random.default_rng(0)
    few, sim = _logits(5, 1.5, rng), _logits(100, 1.5, rng)
    assert recalibration_set(*few, *sim, coverage=0.95)[2] == {"real": 5, "simulated": 0}
    real = _logits(40, 1.5, rng)
    assert recalibration_set(*real, None, None, coverage=0.95)[2] == {"real": 40, "simulated": 0}


def test_held_out_simulated_captures_are_seeded_and_none_of_the_training_ones():
    from alloynet.data import CLASS_NAMES
    from alloynet.data.synthetic import SyntheticCaptures, SyntheticConfig
    from alloynet.physics.observer import ThicknessPrior
    from alloynet.physics.simulator import RigConfig

    make = lambda held_out: SyntheticCaptures(
        SyntheticConfig(captures=10),
        RigConfig(height=16, width=16),
        ThicknessPrior(range_mm=(1, 5)),
        [50.0],
        CLASS_NAMES,
        seed=3,
        held_out=held_out,
    )
    train, a, b = make(False), make(True), make(True)
    assert np.array_equal(a.images, b.images) and np.array_equal(a.labels, train.labels)
    assert not any(np.array_equal(x, y) for x in a.images for y in train.images)
    # calibrated as a rig's captures are: levels measured from each session's frames, not the noise-free ones
    assert not np.allclose(a.calibration, train.calibration) and np.allclose(
        a.calibration, train.calibration, rtol=0.05
    )
    train.set_epoch(5)  # one pool for every epoch: never the held-out round
    assert not any(np.array_equal(x, y) for x in a.images for y in train.images)
