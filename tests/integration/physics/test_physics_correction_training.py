"""Training on a rig's labelled captures with the forward model corrected (alloynet.physics.correction) end to
end: the term is corrected where the rig differs and the answers are recalibrated (the correction itself:
tests/unit/physics/test_physics_correction.py)."""

from __future__ import annotations

import pytest

from alloynet.physics.correction import MIN_VAL, Z_MIN
from alloynet.physics.simulator import RigConfig

pytestmark = pytest.mark.usefixtures("one_thread")  # see tests/conftest.py


@pytest.mark.slow
def test_training_on_a_rig_the_model_misses_corrects_the_term_and_says_so(tmp_path):
    """`alloynet train --store DIR` on the second rig's captures (its own scatter, heel, PSF and gain-map code): the
    trainer corrects the term's tables from the training captures, the checkpoint records why, the report says it."""
    from alloynet.captures.stores import LocalStore
    from alloynet.data.manifest import build_manifest, write_manifest
    from alloynet.data.simulate import DatasetSpec, simulate_dataset
    from alloynet.evaluate import evaluate
    from alloynet.models.checkpoint import load_checkpoint, load_model
    from alloynet.train import TrainConfig, train

    store = LocalStore(tmp_path / "data")
    simulate_dataset(
        DatasetSpec(
            n_max=100,
            imbalance_ratio=1,
            imbalance="balanced",
            captures_per_plate=1,
            seed=5,
            wedges_mm=[50.0],
            simulator="second_rig",
            rig=RigConfig(height=32, width=32),
        ),
        store,
    )
    write_manifest(build_manifest(store, seed=5), tmp_path / "data" / "manifest.csv")
    cfg = TrainConfig.model_validate(
        {"data": {"store": str(tmp_path / "data")}, "out_dir": str(tmp_path / "run"), "epochs": 1, "progress": False}
    )
    result = train(cfg)
    _, meta = load_model(result.checkpoint)
    c = meta["physics_correction"]
    assert c["corrected"] and c["gain_z"] >= Z_MIN and c["val_captures"] >= MIN_VAL
    assert c["val_logloss"]["nominal"] > 2 * min(v for k, v in c["val_logloss"].items() if k != "nominal")
    # the simulator does not describe this rig: its held-out captures are not even weighed for the calibration set
    used = load_checkpoint(result.checkpoint)["answer"]["calibration_set"]
    assert used["simulated"] == 0 and "agreement_p" not in used and used["real"] >= 10
    m = evaluate(
        result.checkpoint, tmp_path / "data", None, tmp_path / "report", with_ceiling=False, gradcam=0, baselines=False
    )
    assert m["physics_term"]["correction"]["corrected"]
    assert "corrected from the rig's labelled training captures" in (tmp_path / "report" / "report.md").read_text()


def test_a_rig_the_simulator_describes_calibrates_its_answers_with_held_out_simulated_captures(tmp_path):
    """No simulated captures in training, but the validation captures keep the forward model's own tables: held-out
    simulated captures of the rig are weighed for the calibration set (a threshold fitted on the few dozen
    captures of a recalibration half alone lands anywhere from 0.92 to 0.997 of 0.95)."""
    from alloynet.captures.stores import LocalStore
    from alloynet.data.manifest import build_manifest, write_manifest
    from alloynet.data.simulate import DatasetSpec, simulate_dataset
    from alloynet.models.checkpoint import load_checkpoint
    from alloynet.train import TrainConfig, train

    store = LocalStore(tmp_path / "data")
    simulate_dataset(
        DatasetSpec(
            n_max=100,
            imbalance_ratio=1,
            imbalance="balanced",
            captures_per_plate=1,
            seed=6,
            wedges_mm=[50.0],
            rig=RigConfig(height=32, width=32),
        ),
        store,
    )
    write_manifest(build_manifest(store, seed=6), tmp_path / "data" / "manifest.csv")
    cfg = TrainConfig.model_validate(
        {
            "data": {"store": str(tmp_path / "data")},
            "out_dir": str(tmp_path / "run"),
            "epochs": 1,
            "progress": False,
            "answer": {"simulated": 200},
        }
    )
    ckpt = load_checkpoint(train(cfg).checkpoint)
    c = ckpt["physics_correction"]
    assert c["decided"] and not c["corrected"]
    used = ckpt["answer"]["calibration_set"]
    assert used["real"] >= 10 and 0 <= used["agreement_p"] <= 1
    assert used["simulated"] in (0, 200) and (used["simulated"] == 200) == (used["agreement_p"] >= 0.05)
    # switched off, the same captures are calibrated on the real ones alone and nothing is simulated
    off = cfg.model_copy(
        update={"out_dir": str(tmp_path / "off"), "model": cfg.model.model_copy(update={"physics_correction": False})}
    )
    assert load_checkpoint(train(off).checkpoint)["answer"]["calibration_set"]["simulated"] == 0
