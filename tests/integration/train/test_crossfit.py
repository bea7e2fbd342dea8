"""With few validation captures the conformal threshold is fitted on cross-fitted scores of the training captures
too (alloynet.train.trainer.cross_fitted): every training capture scored once, by a model that never saw its
plate, so a lab's first few hundred captures get prediction sets narrower than all five alloys."""

from __future__ import annotations

import pytest

from alloynet.models.checkpoint import load_checkpoint
from alloynet.train import load_config, train
from tests.helpers.dummy import DummyCaptureStore

pytestmark = pytest.mark.usefixtures("one_thread")  # see tests/conftest.py


@pytest.fixture(scope="module")
def store_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("captures")
    with DummyCaptureStore(n_max=8, size=32, imbalance_ratio=2.0, root=root):
        yield root


def _cfg(store_dir, out, **over):
    return load_config(
        None,
        {
            "data.store": str(store_dir),
            "out_dir": str(out),
            "epochs": 2,
            "progress": False,
            "data.batch_size": 8,
            **over,
        },
    )


def test_training_captures_join_the_calibration_set_cross_fitted(store_dir, tmp_path):
    # no held-out simulated captures (which, where they join, make cross-fitting needless)
    result = train(_cfg(store_dir, tmp_path / "run", **{"answer.crossfit_folds": 3, "answer.simulated": 0}))
    answer = load_checkpoint(result.checkpoint)["answer"]
    used = answer["calibration_set"]
    from alloynet.data.manifest import read_manifest

    df = read_manifest(store_dir / "manifest.csv")
    n_train = int(((df.split == "train") & df.labelled & (df.label >= 0)).sum())
    assert used["cross_fitted"] == n_train and used["real"] > n_train
    # captures sent without levels are fitted on the same captures, scored with the levels withheld
    missing = answer["without_calibration"]
    assert missing["fitted"] and missing["captures"] == used["real"]
    assert missing["calibration_set"]["real"] == used["real"]
    folds = sorted(p.name for p in (tmp_path / "run" / "crossfit").iterdir())
    assert folds == ["fold-0", "fold-1", "fold-2"]
    for f in folds:  # each fold model trained for the run's best epoch count, its held-out plates out of training
        ckpt = load_checkpoint(tmp_path / "run" / "crossfit" / f / "best.pt")
        assert ckpt["epoch"] <= result.best_epoch
        fold_df = read_manifest(tmp_path / "run" / "crossfit" / f / "manifest.csv")
        held = set(fold_df[fold_df.split == "crossfit"].plate_id)
        assert held and not held & set(fold_df[fold_df.split == "train"].plate_id)


def test_held_out_simulated_captures_that_join_make_cross_fitting_needless(store_dir, tmp_path, monkeypatch):
    from alloynet.train import trainer

    real = trainer.recalibration_set

    def joined(*args, **kwargs):  # as if the held-out simulated captures agreed and joined
        logits, labels, info = real(*args, **kwargs)
        return logits, labels, {**info, "simulated": 1}

    def never(*args):
        raise AssertionError("cross-fitted although simulated captures joined")

    monkeypatch.setattr(trainer, "recalibration_set", joined)
    monkeypatch.setattr(trainer, "cross_fitted", never)
    result = train(_cfg(store_dir, tmp_path / "run"))
    assert "cross_fitted" not in load_checkpoint(result.checkpoint)["answer"]["calibration_set"]


def test_enough_validation_captures_need_no_cross_fitting(store_dir, tmp_path):
    result = train(_cfg(store_dir, tmp_path / "run", **{"answer.crossfit_below": 1}))
    used = load_checkpoint(result.checkpoint)["answer"]["calibration_set"]
    assert "cross_fitted" not in used and not (tmp_path / "run" / "crossfit").exists()
