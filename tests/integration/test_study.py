"""The study end to end on a tiny grid: outputs, reproducibility under a seed, resume of finished runs."""

import json

import pandas as pd
import pytest

from alloynet.study import StudyConfig, run_study

pytestmark = pytest.mark.slow


def _cfg(tmp_path, work="work", out="out"):
    return StudyConfig.model_validate(
        {
            "name": "tiny",
            "out_dir": str(tmp_path / out),
            "work_dir": str(tmp_path / work),
            "architectures": ["fnn"],
            "losses": [{"name": "ce"}, {"name": "focal", "kwargs": {"gamma": 2.0}}],
            "imbalance_ratios": [1, 10],
            "seeds": [0, 1],
            "data": {
                "n_max": 5,
                "test_plates_per_class": 2,
                "captures_per_plate": 1,
                "thickness_range_mm": [1.0, 2.0],
                "rig": {"height": 32, "width": 32},
            },
            "train": {"epochs": 1, "data.batch_size": 16},
            "ood": [{"name": "thick_6_7mm", "thickness_range_mm": [6.0, 7.0]}, {"case": "drift_3pct_no_calibration"}],
            "ceiling_plates": 15,
        }
    )


def test_study_tables_plots_reproducibility_and_resume(tmp_path, monkeypatch):
    cfg = _cfg(tmp_path)
    results = run_study(cfg, log=lambda *_: None)
    out = tmp_path / "out"
    assert len(results) == 8 and set(results.loss) == {"ce", "focal"}
    assert (out / "accuracy_vs_rho.png").stat().st_size > 1000
    md = (out / "results.md").read_text()
    assert "Physics bracket" in md and "bracket (bal. acc)" in md and "against the bracket" in md
    assert "thick_6_7mm" in md
    meta = json.loads((out / "study.json").read_text())
    # plates of any thickness by default: the ceiling for that prior (well below the 1/2/5 mm grid's ~0.8)
    assert 0.35 < meta["ceiling"]["accuracy"] < 0.8 and meta["test_set"]["thickness_range_mm"] == [1.0, 2.0]
    assert meta["ceiling"]["heavy_light"] > 0.9
    assert meta["ceiling"]["upper"] >= meta["ceiling"]["accuracy"] - 3 * meta["ceiling"]["upper_se"]
    assert meta["ood_sets"]["drift_3pct_no_calibration"]["calibration_sent"] is False
    assert (out / "runs" / "fnn-ce-rho10-s1" / "report.md").exists()
    assert results.ood_thick_6_7mm_balanced_accuracy.between(0, 1).all()
    # the baselines beside every row: one physics-fit and one Gaussian row per pool, in every table
    csv = pd.read_csv(out / "results.csv")
    for name in ("physics_fit", "gaussian_profile"):
        rows = csv[csv.arch == name]
        assert sorted(zip(rows.rho, rows.seed)) == [(1, 0), (1, 1), (10, 0), (10, 1)]
        assert rows.balanced_accuracy.between(0.2, 1).all() and rows.heavy_light.between(0.5, 1).all()
        assert rows.ood_thick_6_7mm_balanced_accuracy.notna().all()
        assert rows.ood_drift_3pct_no_calibration_balanced_accuracy.isna().all()  # needs the calibration
        assert f"| {name} | - | 1 |" in md and f"| {name} | - |" in md.split("### Heavy vs light")[1]
    assert csv[csv.arch == "physics_fit"].balanced_accuracy.nunique() == 1  # trains on nothing: same on every pool
    _check_failure_reporting(cfg, results, tmp_path)

    # resume: finished runs are reused, never trained again (a cell trains through alloynet.train.launch, in this
    # process when one process is asked for)
    from alloynet.train import launch as train_mod

    def must_not_train(*a, **k):
        raise AssertionError("finished runs must be reused")

    monkeypatch.setattr(train_mod, "train", must_not_train)
    again = run_study(cfg, log=lambda *_: None)
    assert again.equals(results)
    monkeypatch.undo()

    # ...but not when the data changed under the same path: a bigger pool means retraining
    calls = []
    real_train = train_mod.train
    monkeypatch.setattr(train_mod, "train", lambda *a, **k: calls.append(1) or real_train(*a, **k))
    bigger = cfg.model_copy(update={"data": cfg.data.model_copy(update={"n_max": 6}), "imbalance_ratios": [1]})
    run_study(bigger, log=lambda *_: None)
    assert len(calls) == 4  # every run of the grid retrained on the regenerated pools
    monkeypatch.undo()

    # same seeds, fresh work dir: the same data and the same metrics
    fresh = run_study(_cfg(tmp_path, work="work2", out="out2"), log=lambda *_: None)
    cols = ["balanced_accuracy", "log_loss", "thickness_mae_mm", "ood_thick_6_7mm_balanced_accuracy"]
    pd.testing.assert_frame_equal(fresh[cols], results[cols])


def _check_failure_reporting(cfg, results, tmp_path):
    """What the work-pool study writes when a cell failed on every attempt: tables over the others, and
    the missing cell named with its reason in results.md, README.md, study.json and results.csv."""
    from alloynet.study.runner import shared_sets, write_outputs

    failed = {
        "cell": "fnn-focal-rho10-s1",
        "reason": "crashed after 2 run(s): worker w1 stopped (no heartbeat for 9 s)",
    }
    assert results.iloc[-1][["arch", "loss", "rho", "seed"]].tolist() == ["fnn", "focal", 10, 1]
    test_root, ood_roots = shared_sets(cfg)
    part = cfg.model_copy(update={"out_dir": str(tmp_path / "partial")})
    write_outputs(part, results.iloc[:-1], test_root, ood_roots, lambda *_: None, [failed])
    out = tmp_path / "partial"
    md = (out / "results.md").read_text()
    assert "## Cells that did not finish (1 of 8)" in md and "| fnn-focal-rho10-s1 | crashed after 2 run(s)" in md
    assert "- fnn-focal-rho10-s1: did not finish" in md and "| fnn | focal | 10 | 1 |" in md  # one seed left
    assert "**1 of 8 cells did not finish** (fnn-focal-rho10-s1" in (out / "README.md").read_text()
    assert json.loads((out / "study.json").read_text())["failed_cells"] == [failed]
    csv = pd.read_csv(out / "results.csv")
    assert (
        list(csv.status) == ["ok"] * (7 + 8) + ["failed"] and csv.error.iloc[-1] == failed["reason"]
    )  # 8 baseline rows
    assert "fnn-focal-rho10-s1" not in {p.name for p in (out / "runs").iterdir()}

    none = cfg.model_copy(update={"out_dir": str(tmp_path / "none")})
    write_outputs(none, results.iloc[:0], test_root, ood_roots, lambda *_: None, [failed])
    assert "no cell finished" in (tmp_path / "none" / "results.md").read_text()
    assert json.loads((tmp_path / "none" / "study.json").read_text())["failed_cells"] == [failed]
