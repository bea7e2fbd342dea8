"""The rig fit: the simulator fitted to a rig (issue 9, `alloynet rig fit`; `rig calibrate` is its old name).

What must hold: on references the nominal simulator takes with known departures from the nominal settings,
the fit recovers those departures within its reported uncertainty; on references of the second rig (another
code base, its own scatter, heel, glare and gain), the fitted simulator predicts a held-out reference
plate to within its noise, and the nominal one does not; the CLI writes a profile that `simulate` reads,
and refuses missing references, a poor fit and a profile of another kVp, naming what is wrong.
"""

import json
import shutil

import numpy as np
import pytest
from typer.testing import CliRunner

from alloynet.captures.stores import LocalStore
from alloynet.data.rig_references import fit_rig_to_references, make_references
from alloynet.physics.detector import DetectorMeasurement
from alloynet.physics.rig_fit import FIT_PARAMETERS, _with_dose, predict_references, quanta_per_dose
from alloynet.physics.simulator import Channel, RigConfig

SIZE = 32
# the nominal simulator, departing from its data sheet in the ways the rig fit fits
TRUE = {"kvp_offset_rel": -0.02, "extra_filtration_mm_al": 0.4, "scatter_fraction": 0.04}
KVP3 = [40.0, 50.0, 60.0]


def _cli(*args: str):
    from alloynet.cli import app

    return CliRunner().invoke(app, list(args))


@pytest.fixture(scope="module")
def nominal_refs(tmp_path_factory):
    root = tmp_path_factory.mktemp("nominal-refs")
    make_references(
        LocalStore(root),
        RigConfig(height=SIZE, width=SIZE, **TRUE),
        simulator="alloynet",
        captures_per_plate=5,
        sessions=5,
        seed=3,
    )
    return root


@pytest.fixture(scope="module")
def second_refs(tmp_path_factory):
    root = tmp_path_factory.mktemp("second-refs")
    make_references(
        LocalStore(root),
        RigConfig(height=SIZE, width=SIZE),
        simulator="second_rig",
        captures_per_plate=5,
        sessions=5,
        seed=1,
    )
    return root


def test_fit_recovers_known_departures_within_their_uncertainty(nominal_refs):
    cal, _, _ = fit_rig_to_references(
        LocalStore(nominal_refs), rig=RigConfig(height=SIZE, width=SIZE), params=tuple(TRUE), bins=16, check=False
    )
    for name, true in TRUE.items():
        value, sd = cal.values[name], cal.uncertainty[name]
        start = FIT_PARAMETERS[name].start if FIT_PARAMETERS[name].start is not None else getattr(RigConfig(), name)
        assert 0 < sd < 0.2 * abs(true - start), (name, sd)  # a real constraint, far tighter than the departure
        assert abs(value - true) < 3 * sd, (name, value, true, sd)
    assert cal.misfit_rms < 1.5


@pytest.fixture(scope="module")
def three_kvp_refs(tmp_path_factory):
    """References of a rig that takes three exposures per capture (one page per kVp), with the same departures."""
    root = tmp_path_factory.mktemp("three-kvp-refs")
    make_references(
        LocalStore(root),
        RigConfig(height=SIZE, width=SIZE, kvp=KVP3, **TRUE),
        simulator="alloynet",
        captures_per_plate=5,
        sessions=5,
        seed=3,
    )
    return root


@pytest.mark.slow
def test_fit_of_three_exposures_uses_every_channel_and_recovers_the_departures(three_kvp_refs):
    bins = 16
    nominal = RigConfig(height=SIZE, width=SIZE, kvp=KVP3)
    cal, profile, refs = fit_rig_to_references(
        LocalStore(three_kvp_refs), rig=nominal, params=tuple(TRUE), bins=bins, check=False
    )
    assert cal.rig.kvp == KVP3 and all(r.profiles.shape[1] == 3 * bins for r in refs.fit + refs.holdout)
    for name, true in TRUE.items():  # one beam, filtration and scatter shared by the three exposures
        value, sd = cal.values[name], cal.uncertainty[name]
        start = FIT_PARAMETERS[name].start if FIT_PARAMETERS[name].start is not None else getattr(RigConfig(), name)
        assert 0 < sd < 0.2 * abs(true - start), (name, sd)
        assert abs(value - true) < 3 * sd, (name, value, true, sd)
    # every channel fits on its own, not only on average: a channel computed with another kVp's spectrum misses
    # by many single-capture sd
    for name, res in cal.residuals.items():
        per_channel = np.sqrt((np.reshape(res["z"], (3, bins)) ** 2).mean(1))
        assert per_channel.max() < 2.0, (name, per_channel)
    assert cal.misfit_rms < 1.5
    # the held-out plate, all three channels: within its noise once fitted, far outside it at the nominal rig
    held = refs.holdout[0].name
    fitted = cal.holdout["references"][held]
    unfitted = predict_references(nominal, refs.holdout, bins)["references"][held]
    assert np.sqrt(fitted["chi2_per_dof"]) < 1.5, fitted
    assert np.sqrt(unfitted["chi2_per_dof"]) > 3 * np.sqrt(fitted["chi2_per_dof"]), (unfitted, fitted)


def test_dose_from_the_flats_of_several_exposures_uses_every_channels_spectrum():
    """The flats' noise is pooled over channels: the mean over kVp of 1 / (dose * q_kVp). The dose that gives it
    must come back exactly, which the first channel's quanta alone would miss by the channels' spread."""
    rig = RigConfig(height=SIZE, width=SIZE, kvp=KVP3, **TRUE)
    dose = 7000.0
    q = np.array([Channel(rig.model_copy(update={"dose": 1.0}), k).quanta_open for k in KVP3])
    assert q.max() / q.min() > 1.02  # the channels differ enough for the first one alone to be wrong
    pooled = 1.0 / np.mean(1.0 / (dose * q))
    det = DetectorMeasurement({}, {}, pooled, 0.1 * pooled, np.zeros((3, SIZE)), sessions=5)
    assert _with_dose(rig, det).dose == pytest.approx(dose, rel=1e-9)
    assert det.uncertainty["dose"] == pytest.approx(0.1 * dose, rel=1e-9)
    single = rig.model_copy(update={"kvp": [50.0]})
    assert quanta_per_dose(single) == Channel(single.model_copy(update={"dose": 1.0}), 50.0).quanta_open


def test_fitted_simulator_predicts_held_out_second_rig_plate_within_noise(second_refs):
    cal, profile, refs = fit_rig_to_references(LocalStore(second_refs), bins=16, check=False)
    assert [r.nominal_thickness_mm for r in refs.holdout] == [2.0]
    fitted = cal.holdout["references"][refs.holdout[0].name]
    nominal = predict_references(RigConfig(height=SIZE, width=SIZE), refs.holdout, 16)["references"][
        refs.holdout[0].name
    ]
    # per held-out capture, rms over bins of (model - measured) / its noise: 1 is noise alone
    assert np.sqrt(fitted["chi2_per_dof"]) < 1.5, fitted
    assert np.sqrt(nominal["chi2_per_dof"]) > 3 * np.sqrt(fitted["chi2_per_dof"]), (nominal, fitted)
    assert profile.fit["held_out"] == [refs.holdout[0].name]


def test_cli_writes_profile_that_simulate_uses(second_refs, tmp_path):
    prof = tmp_path / "rig.yaml"
    res = _cli("rig", "fit", str(second_refs), "--out", str(prof), "--bins", "16")
    assert res.exit_code == 0, res.output
    assert "kvp_offset_rel: " in res.output and " +- " in res.output and "misfit: rms" in res.output
    assert prof.exists() and (tmp_path / "rig-fit.png").read_bytes()[:4] == b"\x89PNG"

    cfg = tmp_path / "spec.yaml"
    cfg.write_text("n_max: 1\nimbalance_ratio: 1\nwedges_mm: [50]\nclass_order: [Al1050, Al7075]\n")
    out = tmp_path / "sim"
    res = _cli(
        "simulate",
        "--out",
        str(out),
        "--config",
        str(cfg),
        "--size",
        str(SIZE),
        "--rig-profile",
        str(prof),
        "--no-manifest",
    )
    assert res.exit_code == 0, res.output
    sidecars = sorted((out / "captures").glob("*.json"))
    assert sidecars
    side = json.loads(sidecars[0].read_text())
    assert "rig-profile=rig.yaml" in side["source"]
    import yaml

    assert side["rig"]["dose"] == pytest.approx(yaml.safe_load(prof.read_text())["rig"]["dose"])


def test_cli_refuses_missing_references(second_refs, tmp_path):
    store = tmp_path / "refs"
    shutil.copytree(second_refs, store)
    for f in store.glob("calibration/*/wedge-*"):
        f.unlink()
    for f in [*store.glob("captures/*-2mm-*"), *store.glob("captures/*-5mm-*")]:
        f.unlink()
    for f in store.glob("calibration/*/*"):  # no frames at all: the captures' levels stand in for them
        f.unlink()
    res = _cli("rig", "fit", str(store), "--out", str(tmp_path / "p.yaml"))
    assert res.exit_code == 1
    text = " ".join(res.output.split())
    # everything missing in one message, each with the captures that supply it and why
    assert text.count("error: cannot fit the rig") == 1 and "missing references" in text
    assert "the wedge alone: frames of the wedge with no plate" in text and "reference/wedge-<mm>mm/" in text
    assert "two or more thicknesses" in text and "hardening curve" in text and "reference/Al1050-1mm/" in text
    assert "dark and flat levels" not in text  # the reference captures' sidecars give them
    assert "fits the rig to the store's labelled plates of three alloys or more" in text  # the way without them
    assert not (tmp_path / "p.yaml").exists()

    # the command's old name, a hidden alias for one release: the same run, output and exit code, and a note
    old = _cli("rig", "calibrate", str(store), "--out", str(tmp_path / "p.yaml"))
    assert old.exit_code == res.exit_code == 1 and old.stdout == res.stdout
    assert "`alloynet rig calibrate` is renamed `alloynet rig fit`" in old.stderr and not res.stderr
    assert not (tmp_path / "p.yaml").exists()
    listed = _cli("rig", "--help").output
    assert " fit " in listed and "calibrate" not in listed


def test_cli_refuses_poor_fit(second_refs, tmp_path):
    # the tube voltage alone cannot absorb the second rig's scatter, glare and filtration
    res = _cli(
        "rig",
        "fit",
        str(second_refs),
        "--out",
        str(tmp_path / "p.yaml"),
        "--fit",
        "kvp_offset_rel",
        "--bins",
        "16",
    )
    assert res.exit_code == 1
    assert "poor rig calibration" in res.output and "no profile written" in res.output
    assert not (tmp_path / "p.yaml").exists() and (tmp_path / "p-fit.png").exists()


def test_profile_of_another_kvp_is_refused(nominal_refs, tmp_path):
    prof = tmp_path / "rig.yaml"
    res = _cli(
        "rig",
        "fit",
        str(nominal_refs),
        "--out",
        str(prof),
        "--bins",
        "16",
        "--fit",
        "kvp_offset_rel",
        "--fit",
        "extra_filtration_mm_al",
        "--fit",
        "scatter_fraction",
    )
    assert res.exit_code == 0, res.output
    cfg = tmp_path / "spec.yaml"
    cfg.write_text("n_max: 1\nrig: {kvp: [60]}\n")
    res = _cli(
        "simulate",
        "--out",
        str(tmp_path / "sim"),
        "--config",
        str(cfg),
        "--size",
        str(SIZE),
        "--rig-profile",
        str(prof),
    )
    assert res.exit_code == 2
    assert "fitted at kvp=[50.0]" in res.output and "kvp=[60.0]" in res.output
    assert not (tmp_path / "sim" / "captures").exists()
