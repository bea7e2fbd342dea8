"""The rig fitted to a lab's labelled captures alone (no reference capture): ``fit_rig_to_captures``.

What must hold: on plates of five alloys at any thickness taken by a rig that departs from its nominal
settings, the fit recovers the departures within its reported uncertainty and predicts the held-out plates
within their noise; plates of fewer than three alloys are refused, saying why.
"""

import numpy as np
import pytest

from alloynet.captures.stores import LocalStore
from alloynet.data.manifest import build_manifest
from alloynet.data.rig_references import fit_rig_to_captures
from alloynet.data.simulate import DatasetSpec, simulate_dataset
from alloynet.physics.alloys import get_alloy
from alloynet.physics.detector import RigFitError
from alloynet.physics.profile import ProfileModel
from alloynet.physics.rig_fit import FIT_PARAMETERS
from alloynet.physics.simulator import RigConfig

ALLOYS5 = ("Al1050", "Al2017", "Al5083", "Al6082", "Al7075")
TRUE = {"kvp_offset_rel": -0.03, "extra_filtration_mm_al": 0.5}


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    root = tmp_path_factory.mktemp("lab")
    spec = DatasetSpec(
        n_max=12,
        imbalance_ratio=1.0,
        imbalance="balanced",
        captures_per_plate=1,
        test_fraction=0.0,
        seed=5,
        rig=RigConfig(height=32, width=32, **TRUE),
    )
    simulate_dataset(spec, LocalStore(root))
    return LocalStore(root), build_manifest(LocalStore(root), seed=0)


def _profiles(rig: RigConfig) -> np.ndarray:
    pm = ProfileModel(rig.model_copy(update={"wedge_mm": 50.0}), 16)
    return np.stack(
        [pm.profiles(get_alloy(a).nominal_fractions(), get_alloy(a).density_g_cm3, [1.0, 3.0, 5.0]) for a in ALLOYS5]
    )


def test_the_rig_is_recovered_from_labelled_plates_alone(lab):
    store, manifest = lab
    rows = manifest[manifest.labelled]
    cal, profile = fit_rig_to_captures(store, rows, params=tuple(TRUE), bins=16, seed=0)
    for name, true in TRUE.items():
        value, sd = cal.values[name], cal.uncertainty[name]
        start = FIT_PARAMETERS[name].start if FIT_PARAMETERS[name].start is not None else getattr(RigConfig(), name)
        assert 0 < sd < 0.3 * abs(true - start), (name, sd)
        # both harden the beam: the fit may trade one for the other a little, not get either wrong
        assert abs(value - true) < 0.25 * abs(true - start), (name, value, true, sd)
    # what the physics term uses: the fitted rig's profiles of every alloy match the true rig's far better than
    # the nominal rig's do
    true_rig = RigConfig(height=32, width=32, **TRUE)
    fitted = _profiles(profile.apply(RigConfig(height=32, width=32)))
    miss_fitted = np.abs(fitted - _profiles(true_rig)).max()
    miss_nominal = np.abs(_profiles(RigConfig(height=32, width=32)) - _profiles(true_rig)).max()
    assert miss_fitted < 0.1 * miss_nominal, (miss_fitted, miss_nominal)
    assert cal.holdout and cal.holdout["captures"] >= 5 and cal.holdout["chi2_per_dof"] < 2.0
    assert "no reference captures" in profile.fit["fitted_to"]
    # what training weighs against the nominal start on these same captures: 2 parameters over the fitted ones
    assert profile.fit["in_sample"]["parameters"] == 2
    assert profile.fit["in_sample"]["captures"] == len(rows) - cal.holdout["captures"]


def test_training_weighs_the_fit_by_its_parameters_over_its_captures(lab, tmp_path):
    from alloynet.physics.rig_profile import save_rig_profile
    from alloynet.train.trainer import in_sample_optimism

    store, manifest = lab
    _, profile = fit_rig_to_captures(store, manifest[manifest.labelled], params=tuple(TRUE), bins=16, seed=0)
    path = save_rig_profile(profile, tmp_path / "fitted.yaml")
    assert in_sample_optimism(str(path)) == pytest.approx(2 / profile.fit["in_sample"]["captures"])
    references = profile.model_copy(update={"fit": {k: v for k, v in profile.fit.items() if k != "in_sample"}})
    assert in_sample_optimism(str(save_rig_profile(references, tmp_path / "references.yaml"))) == 0.0
    assert in_sample_optimism(None) == 0.0


def test_the_same_seed_gives_the_same_fit(lab):
    store, manifest = lab
    rows = manifest[manifest.labelled]
    a, _ = fit_rig_to_captures(store, rows, params=tuple(TRUE), bins=16, seed=1, max_captures=40)
    b, _ = fit_rig_to_captures(store, rows, params=tuple(TRUE), bins=16, seed=1, max_captures=40)
    assert a.values == b.values
    assert sum(len(v) for v in [a.residuals]) <= 40


def test_plates_of_two_alloys_are_refused_naming_what_is_needed(lab):
    store, manifest = lab
    rows = manifest[manifest.labelled & manifest.alloy.isin(["Al1050", "Al7075"])]
    with pytest.raises(RigFitError, match="2 alloys.*three or more"):
        fit_rig_to_captures(store, rows, params=tuple(TRUE), bins=16)
    no_thickness = manifest[manifest.labelled].assign(thickness_mm=np.nan)
    with pytest.raises(RigFitError, match="0 alloys"):
        fit_rig_to_captures(store, no_thickness, params=tuple(TRUE), bins=16)
