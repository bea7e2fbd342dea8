"""A model with the physics term trained end to end: the term's tables and weight saved and reloaded with the
checkpoint (the term itself: tests/unit/models/test_physics_prior.py)."""

from __future__ import annotations

import pytest

from alloynet.models.checkpoint import load_model
from alloynet.train import load_config, train
from tests.helpers.dummy import DummyCaptureStore
from tests.unit.models.test_physics_prior import SIZE

pytestmark = pytest.mark.usefixtures("one_thread")  # see tests/conftest.py


def test_training_with_the_physics_term_saves_and_reloads_it(tmp_path):
    with DummyCaptureStore(n_max=8, size=SIZE, imbalance_ratio=2.0, root=tmp_path / "captures"):
        cfg = load_config(
            None,
            {
                "data.store": str(tmp_path / "captures"),
                "out_dir": str(tmp_path / "run"),
                "epochs": 1,
                "progress": False,
                "data.batch_size": 8,
                "model.physics": True,
                "model.kwargs": {"hidden": [16]},
            },
        )
        result = train(cfg)
    model, meta = load_model(result.checkpoint)
    spec = meta["model_spec"]["physics"]
    assert spec["wedges_mm"] and spec["bins"] == 32 and float(model.physics.fitted) == 1.0
    assert float(model.physics.whiten.abs().max()) > 0  # the tables came back from the checkpoint
    assert 0.0 < float(model.physics.weight.detach()) < 2.0
