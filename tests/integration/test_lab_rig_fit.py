"""A lab's first rig fit, end to end: TIFFs of a rig alloynet's physics does not share (the second rig), its
plates with a labels CSV of levels and a reference/ folder beside them, `alloynet import`, `alloynet rig
fit`; the rig profile written must describe that rig better than the nominal settings do, measured by the
physics fit (no training data) on the lab's own plates. Run with frames (dark/flat images) and with levels only."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from alloynet.captures.image import decode_image
from alloynet.captures.stores import LocalStore
from alloynet.data.rig_references import write_reference_folder
from alloynet.data.simulate import DatasetSpec, simulate_dataset
from alloynet.evaluate.baselines import PhysicsFit, measured_profiles
from alloynet.physics.alloys import ALLOY_NAMES
from alloynet.physics.rig_profile import load_rig_profile
from alloynet.physics.simulator import RigConfig

SIZE = 64
COLUMNS = ("file", "alloy", "thickness_mm", "plate_id", "wedge_mm", "dark", "flat", "role")


def _cli(*args) -> object:
    from alloynet.cli import app

    return CliRunner().invoke(app, [str(a) for a in args])


def _lab_plates(sim: LocalStore, root: Path) -> list[dict]:
    """The simulated plates as a lab has them: a TIFF each and a labels-CSV row with the levels."""
    rows = []
    for key in sorted(i.key for i in sim.list("captures/") if i.key.endswith(".json")):
        sc = json.loads(sim.get(key))
        img = decode_image(sim.get("captures/" + sc["image"]["file"]), key)
        rel = f"plates/{sc['capture_id']}.tif"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.ascontiguousarray(img[0])).save(root / rel)
        rows.append(
            {
                "file": rel,
                "alloy": sc["truth"]["alloy"],
                "thickness_mm": f"{sc['truth']['nominal_thickness_mm']:g}",
                "plate_id": sc["plate_id"],
                "wedge_mm": f"{sc['rig']['wedge_mm']:g}",
                "dark": ";".join(f"{v:.2f}" for v in sc["calibration"]["dark_adu"]),
                "flat": ";".join(f"{v:.2f}" for v in sc["calibration"]["flat_adu"]),
            }
        )
    return rows


def _balanced_accuracy(store: Path, rig: RigConfig, prior) -> float:
    """The physics fit with ``rig`` as its forward model, on the lab's plates (not the references)."""
    images, cal, y, wedges = [], [], [], []
    for p in sorted((store / "captures").glob("*.json")):
        sc = json.loads(p.read_text())
        if not sc["source"].startswith("import plates/"):
            continue
        images.append(decode_image((store / "captures" / sc["image"]["file"]).read_bytes()))
        cal.append(np.stack([sc["calibration"]["dark_adu"], sc["calibration"]["flat_adu"]], -1))
        y.append(ALLOY_NAMES.index(sc["truth"]["alloy"]))
        wedges.append(sc["rig"]["wedge_mm"])
    probs, _ = PhysicsFit({50.0: rig}, prior, ALLOY_NAMES, seed=0).predict(
        measured_profiles(np.stack(images), np.stack(cal)), np.array(wedges)
    )
    pred, y = probs.argmax(1), np.array(y)
    return float(np.mean([(pred[y == k] == k).mean() for k in np.unique(y)]))


def write_lab_with_references(tmp_path: Path, rig: RigConfig, frames: bool) -> tuple[Path, DatasetSpec]:
    """A lab folder as a lab has it: 12 second-rig plates per alloy (TIFFs, a labels CSV with the levels) and a
    reference/ folder beside them (with dark/flat frames or levels only); returns (the folder, the plates' spec)."""
    root = tmp_path / "lab"
    refs = write_reference_folder(
        root, rig, simulator="second_rig", captures_per_plate=5, sessions=5, seed=1, frames=frames
    )
    spec = DatasetSpec(
        simulator="second_rig",
        n_max=12,
        imbalance_ratio=1,
        wedges_mm=[50],
        captures_per_plate=1,
        test_fraction=0.5,
        rig=rig,
        seed=5,
    )
    simulate_dataset(spec, LocalStore(tmp_path / "sim"))
    rows = _lab_plates(LocalStore(tmp_path / "sim"), root) + refs
    (root / "labels.csv").write_text(
        "\n".join([",".join(COLUMNS)] + [",".join(str(r.get(c, "")) for c in COLUMNS) for r in rows]) + "\n"
    )
    return root, spec


@pytest.mark.slow
@pytest.mark.parametrize("frames", [True, False], ids=["frames", "levels-only"])
def test_lab_folder_with_references_imports_fits_and_its_profile_wins(tmp_path, frames):
    rig = RigConfig(height=SIZE, width=SIZE)
    store, prof = tmp_path / "store", tmp_path / "rig.yaml"
    root, spec = write_lab_with_references(tmp_path, rig, frames)

    res = _cli("import", root / "labels.csv", store, "--kvp", "50", "--wedge-mm", "50")
    assert res.exit_code == 0, res.output
    assert "references for `alloynet rig fit`: 5 session(s), 5 of the 50 mm wedge alone" in res.output
    assert ("levels only" in res.output) == (not frames)
    res = _cli("rig", "fit", store, "--out", prof, "--bins", "16")
    assert res.exit_code == 0, res.output
    assert "15 plate captures (3 plate x wedge), 1 held out" in res.output  # the references only, not the lab's plates

    profile = load_rig_profile(prof)
    nominal = _balanced_accuracy(store, rig, spec.prior)
    fitted = _balanced_accuracy(store, profile.apply(rig), spec.prior)
    # the second rig's physics is not alloynet's: the nominal forward model is near chance (0.2) on it
    assert fitted >= nominal + 0.12, (nominal, fitted)


@pytest.mark.slow
def test_three_page_reference_tiffs_import_and_fit_every_channel(tmp_path):
    """A rig that takes three exposures per capture (40/50/60 kV): its reference folder holds one three-page TIFF
    per frame; `alloynet import` keeps each channel's levels and `alloynet rig fit` fits the beam to all
    three channels, recovering the departures the references were taken with."""
    true = {"kvp_offset_rel": -0.02, "extra_filtration_mm_al": 0.4, "scatter_fraction": 0.04}
    kvp, size = [40.0, 50.0, 60.0], 32
    root, store, prof = tmp_path / "lab", tmp_path / "store", tmp_path / "rig.yaml"
    write_reference_folder(
        root,
        RigConfig(height=size, width=size, kvp=kvp, **true),
        simulator="alloynet",
        captures_per_plate=5,
        sessions=5,
        seed=3,
    )
    res = _cli(
        "import", root, store, "--kvp", "40", "--kvp", "50", "--kvp", "60", "--wedge-mm", "50", "--accept-size", "32x32"
    )
    assert res.exit_code == 0, res.output
    sidecar = json.loads(next((store / "captures").glob("*.json")).read_text())
    assert sidecar["rig"]["kvp"] == kvp and sidecar["image"]["shape"] == [3, size, size]
    assert len(sidecar["calibration"]["dark_adu"]) == len(sidecar["calibration"]["flat_adu"]) == 3
    fit = [a for k in true for a in ("--fit", k)]
    res = _cli("rig", "fit", store, "--out", prof, "--bins", "16", *fit)
    assert res.exit_code == 0, res.output
    profile = load_rig_profile(prof)
    assert profile.rig.kvp == kvp
    for name, value in true.items():
        got, sd = getattr(profile.rig, name), profile.uncertainty[name]
        assert 0 < sd and abs(got - value) < 3 * sd, (name, got, value, sd)
    assert profile.fit["misfit_rms"] < 1.5 and profile.fit["holdout"]["chi2_per_dof"] < 2.0, profile.fit
