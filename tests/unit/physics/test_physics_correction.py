"""The forward model corrected from a rig's own labelled captures (alloynet.physics.correction): chosen where the
rig differs from the model, left alone where it does not, and what the in-graph physics term tabulates."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from alloynet.models.physics_prior import PhysicsLikelihood
from alloynet.physics import ALLOY_NAMES
from alloynet.physics.correction import MIN_VAL, Z_MIN, MeanCorrection, _nll, apply_correction, choose_correction
from alloynet.physics.observer import PhysicsObserver, ThicknessPrior
from alloynet.physics.profile import profile_model_for
from alloynet.physics.simulator import RigConfig

pytestmark = pytest.mark.usefixtures("one_thread")

PRIOR = ThicknessPrior(range_mm=(1.0, 5.0))
NOMINAL = RigConfig(height=32, width=32, wedge_mm=50.0)
# a rig the nominal model does not describe: twice the scatter and half a millimetre of aluminium more in the beam
OTHER = NOMINAL.model_copy(
    update={"scatter_fraction": 2 * NOMINAL.scatter_fraction + 0.02, "extra_filtration_mm_al": 0.5}
)


def _observer(rig: RigConfig, seed: int) -> PhysicsObserver:
    return PhysicsObserver(profile_model_for(rig, 16), ALLOY_NAMES, PRIOR, plates=30, seed=seed, grid=200, nodes=5)


def _captures(obs: PhysicsObserver, n_per: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    draws = [obs.draw(k, n_per, rng) for k in range(len(ALLOY_NAMES))]
    x = np.concatenate([d[0] for d in draws])
    return {
        "profiles": x,
        "y": np.repeat(np.arange(len(ALLOY_NAMES)), n_per),
        "thickness_mm": np.concatenate([d[1] for d in draws]),
        "wedge_mm": np.full(len(x), 50.0),
    }


@pytest.fixture(scope="module")
def nominal():
    return {50.0: _observer(NOMINAL, 0)}


def _accuracy(observers, data) -> float:
    ll, _ = observers[50.0].log_likelihoods(data["profiles"])
    return float((ll.argmax(1) == data["y"]).mean())


def test_a_rig_the_model_misses_gets_corrected_tables(nominal):
    rig = _observer(OTHER, 1)
    train, val, test = _captures(rig, 40, 1), _captures(rig, 20, 2), _captures(rig, 40, 3)
    choice = choose_correction(nominal, train, val, PRIOR.bounds())
    assert choice.correction is not None and choice.gain_z >= Z_MIN
    assert choice.val_logloss["nominal"] > 10 * min(v for k, v in choice.val_logloss.items() if k != "nominal")
    fixed = apply_correction(nominal, choice.correction)
    before = _nll(nominal, test["profiles"], test["y"], test["wedge_mm"]).mean()
    after = _nll(fixed, test["profiles"], test["y"], test["wedge_mm"]).mean()
    assert after < 2.0 < 20 < before  # chance is log 5 = 1.6; the nominal tables are confidently wrong
    assert _accuracy(fixed, test) > _accuracy(nominal, test) + 0.1
    # the originals are untouched (the correction works on copies)
    assert not np.allclose(fixed[50.0].likelihoods[0].mean, nominal[50.0].likelihoods[0].mean)
    assert nominal[50.0].likelihoods[0].mean is not fixed[50.0].likelihoods[0].mean
    summary = choice.summary()
    assert summary["corrected"] and summary["train_captures"] == 200 and summary["val_captures"] == 100


def test_captures_the_model_describes_keep_the_nominal_tables(nominal):
    rig = _observer(NOMINAL, 1)  # the same rig, other plates: a correction could only fit noise
    choice = choose_correction(nominal, _captures(rig, 40, 4), _captures(rig, 20, 5), PRIOR.bounds())
    assert choice.correction is None and choice.gain_z < Z_MIN
    assert "nominal tables" in choice.reason
    assert apply_correction(nominal, None)[50.0] is nominal[50.0]


def test_too_few_validation_captures_decide_nothing(nominal):
    rig = _observer(OTHER, 1)
    n = MIN_VAL // len(ALLOY_NAMES) - 1
    choice = choose_correction(nominal, _captures(rig, 40, 1), _captures(rig, n, 2), PRIOR.bounds())
    assert choice.correction is None and "validation captures" in choice.reason


def test_offsets_interpolate_between_wedges_and_stop_at_the_training_range():
    k, d = 2, 3
    low = np.zeros((k, 3, d))
    low[:, 2] = 1.0  # constant 1 at 50 mm
    high = np.zeros((k, 3, d))
    high[:, 1] = 1.0  # t at 70 mm
    corr = MeanCorrection({50.0: low, 70.0: high}, (1.0, 5.0))
    grid = np.array([0.5, 1.0, 3.0, 5.0, 7.0])
    assert np.allclose(corr.offsets(50.0, grid), 1.0)
    assert np.allclose(corr.offsets(40.0, grid), 1.0)  # below: the nearest fitted wedge
    assert np.allclose(corr.offsets(70.0, grid)[0, :, 0], [1.0, 1.0, 3.0, 5.0, 5.0])  # clipped to 1-5 mm
    assert np.allclose(corr.offsets(65.0, grid)[1, :, 2], 0.25 * 1.0 + 0.75 * np.array([1.0, 1.0, 3.0, 5.0, 5.0]))


def test_the_physics_term_tabulates_the_corrected_forward_model(nominal):
    """The in-graph term fitted through the ``correct`` hook gives the corrected observer's likelihoods."""
    rig = _observer(OTHER, 1)
    choice = choose_correction(nominal, _captures(rig, 40, 1), _captures(rig, 20, 2), PRIOR.bounds())
    seen = {}

    def correct(observers):
        seen["wedges"] = sorted(observers)
        return apply_correction(observers, choice.correction)

    module = PhysicsLikelihood(len(ALLOY_NAMES), [50.0], 1, bins=16, grid=200, nodes=5)
    module.fit({50.0: NOMINAL}, PRIOR, ALLOY_NAMES, plates=30, correct=correct)
    plain = PhysicsLikelihood(len(ALLOY_NAMES), [50.0], 1, bins=16, grid=200, nodes=5)
    plain.fit({50.0: NOMINAL}, PRIOR, ALLOY_NAMES, plates=30)
    assert seen["wedges"] == [50.0]
    test = _captures(rig, 20, 6)
    x = test["profiles"]
    a = torch.tensor(np.repeat(x, 2, axis=1), dtype=torch.float32)[:, None, None, :].expand(-1, 1, 8, -1)
    wedge = torch.full((len(x), 1), 50.0)
    with torch.no_grad():
        fixed, nominal_ll = module.log_likelihoods(a, wedge).numpy(), plain.log_likelihoods(a, wedge).numpy()
    assert (fixed.argmax(1) == test["y"]).mean() > (nominal_ll.argmax(1) == test["y"]).mean() + 0.1
    ref, _ = apply_correction({50.0: _observer(NOMINAL, 0)}, choice.correction)[50.0].log_likelihoods(x)
    centre = lambda v: v - v.max(1, keepdims=True)  # noqa: E731
    assert np.abs(centre(fixed) - centre(ref)).max() < 0.05
