"""The physics term's correction from few captures (alloynet.physics.correction.choose_correction_cv): decided by
cross-validation over the training and validation captures by plate, its richness (degree, shrinkage) matched to
how many there are; kept only where it fits the rig better."""

from __future__ import annotations

import numpy as np
import pytest

from alloynet.physics import ALLOY_NAMES
from alloynet.physics.correction import Z_MIN_CV, _folds, _nll, apply_correction, choose_correction_cv
from alloynet.physics.observer import PhysicsObserver, ThicknessPrior
from alloynet.physics.profile import profile_model_for
from alloynet.physics.simulator import RigConfig

pytestmark = pytest.mark.usefixtures("one_thread")

PRIOR = ThicknessPrior(range_mm=(1.0, 5.0))
NOMINAL = RigConfig(height=32, width=32, wedge_mm=50.0)
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


def _plates(data: dict, tag: str) -> np.ndarray:
    return np.array([f"{tag}{i}" for i in range(len(data["y"]))])


@pytest.fixture(scope="module")
def nominal():
    return {50.0: _observer(NOMINAL, 0)}


def test_folds_keep_a_plate_together_and_are_seeded():
    groups = np.array(["a", "a", "b", "c", "c", "d", "e", "f"])
    f = _folds(groups, 3, seed=0)
    assert f[0] == f[1] and f[3] == f[4] and set(f) == {0, 1, 2}
    assert (f == _folds(groups, 3, seed=0)).all()


def test_a_handful_of_plates_per_alloy_corrects_a_rig_the_model_misses(nominal):
    """Six training and two validation plates per alloy: the validation split alone is too small to decide
    (choose_correction says 'nominal tables'); cross-validated over both, the correction is kept, and it is the
    lean kind (a low degree or a strong pull toward the shared correction), not each alloy's own quadratic."""
    rig = _observer(OTHER, 1)
    train, val, test = _captures(rig, 6, 1), _captures(rig, 2, 2), _captures(rig, 40, 3)
    choice = choose_correction_cv(nominal, train, val, PRIOR.bounds(), _plates(train, "t"), _plates(val, "v"))
    assert choice.correction is not None and choice.gain_z >= Z_MIN_CV, choice.reason
    assert "cross-validated" in choice.reason and choice.val_logloss["nominal"] > 5
    fixed = apply_correction(nominal, choice.correction)
    before = _nll(nominal, test["profiles"], test["y"], test["wedge_mm"]).mean()
    after = _nll(fixed, test["profiles"], test["y"], test["wedge_mm"]).mean()
    assert after < before / 5
    best = min((v, k) for k, v in choice.val_logloss.items() if k != "nominal")[1]
    assert best != "degree 2 shrink 1"


def test_captures_the_model_describes_keep_the_nominal_tables_with_few_captures(nominal):
    rig = _observer(NOMINAL, 5)
    train, val = _captures(rig, 8, 6), _captures(rig, 2, 7)
    choice = choose_correction_cv(nominal, train, val, PRIOR.bounds(), _plates(train, "t"), _plates(val, "v"))
    assert choice.correction is None and choice.decided and "nominal tables" in choice.reason


def test_three_plates_per_alloy_still_correct_tables_that_are_confidently_wrong(nominal):
    """So few captures that the gain's spread keeps z low; nearly every capture gaining decides (the sign test)."""
    rig = _observer(OTHER, 1)
    train, val = _captures(rig, 3, 11), _captures(rig, 1, 12)
    choice = choose_correction_cv(nominal, train, val, PRIOR.bounds(), _plates(train, "t"), _plates(val, "v"))
    assert choice.correction is not None, choice.reason
    assert choice.val_logloss["nominal"] > 5 > min(v for k, v in choice.val_logloss.items() if k != "nominal")
