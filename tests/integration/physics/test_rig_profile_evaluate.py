"""The rig profile end to end (issue 9): a model trained on the second rig, evaluated with and without the
simulator calibrated to that rig (the fit itself: tests/unit/physics/test_rig_fit.py)."""

import pytest
from typer.testing import CliRunner

from alloynet.captures.stores import LocalStore
from alloynet.data.rig_references import fit_rig_to_references, make_references
from alloynet.physics.simulator import RigConfig


def _cli(*args: str):
    from alloynet.cli import app

    return CliRunner().invoke(app, list(args))


@pytest.mark.slow  # simulates, trains and evaluates twice at 64 px: the slow tier
def test_physics_fit_and_ceiling_read_the_rig_profile(tmp_path):
    """`alloynet evaluate --rig-profile`: the physics-fit classifier (and the ceiling) use the simulator calibrated
    to the rig. On the second rig the nominal simulator's physics fit is near chance; the calibrated one's is not."""
    from alloynet.data.manifest import build_manifest, write_manifest
    from alloynet.data.simulate import DatasetSpec, simulate_dataset
    from alloynet.evaluate import evaluate
    from alloynet.physics.rig_profile import save_rig_profile
    from alloynet.train import load_config, train

    size = 64  # at 32 px the profile has too few bins for the fit to separate much either way
    make_references(
        LocalStore(tmp_path / "refs"),
        RigConfig(height=size, width=size),
        simulator="second_rig",
        captures_per_plate=5,
        sessions=5,
        seed=1,
    )
    _, profile, _ = fit_rig_to_references(LocalStore(tmp_path / "refs"), bins=16, check=False)
    prof = save_rig_profile(profile, tmp_path / "rig.yaml")
    spec = DatasetSpec(
        simulator="second_rig",
        n_max=40,
        imbalance_ratio=1,
        wedges_mm=[50],
        captures_per_plate=1,
        test_fraction=0.5,
        rig=RigConfig(height=size, width=size),
        seed=5,
    )
    store = LocalStore(tmp_path / "data")
    simulate_dataset(spec, store)
    write_manifest(build_manifest(store, seed=5), tmp_path / "data" / "manifest.csv")
    run = train(
        load_config(
            None,
            {
                "data.store": str(tmp_path / "data"),
                "out_dir": str(tmp_path / "run"),
                "epochs": 1,
                "progress": False,
                "data.batch_size": 8,
            },
        )
    )
    nominal = evaluate(run.checkpoint, tmp_path / "data", None, tmp_path / "nominal", gradcam=0)
    calibrated = evaluate(run.checkpoint, tmp_path / "data", None, tmp_path / "calibrated", gradcam=0, rig_profile=prof)

    def fit(m: dict) -> float:
        return m["baselines"]["physics_fit"]["balanced_accuracy"]

    assert nominal["n"] == calibrated["n"] >= 50
    assert fit(calibrated) >= fit(nominal) + 0.12, (fit(nominal), fit(calibrated))
    assert calibrated["rig_profile"] == str(prof) and "rig_profile" not in nominal
    assert calibrated["ceiling_accuracy"] != nominal["ceiling_accuracy"]
    res = _cli(
        "evaluate",
        str(run.checkpoint),
        "--store",
        str(tmp_path / "data"),
        "--rig-profile",
        str(tmp_path / "missing.yaml"),
        "--no-ceiling",
    )
    assert res.exit_code == 2 and "missing.yaml: rig profile not found" in res.output
