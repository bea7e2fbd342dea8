"""The trunk's alloy logits are kept only where the validation captures find the model better than the physics
term alone (alloynet.train.trainer.gate_trunk); turned off, the graph answers with the term alone."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from alloynet.captures.stores import LocalStore
from alloynet.data.dataset import CaptureDataset
from alloynet.models.checkpoint import load_checkpoint, load_model
from alloynet.train import load_config, train
from tests.helpers.dummy import DummyCaptureStore

pytestmark = pytest.mark.usefixtures("one_thread")  # see tests/conftest.py


@pytest.fixture(scope="module")
def store_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("captures")
    with DummyCaptureStore(n_max=8, size=32, imbalance_ratio=2.0, root=root):
        yield root


def _train(store_dir, out, monkeypatch, trunk_z: float):
    from alloynet.train import trainer

    monkeypatch.setattr(trainer, "TRUNK_Z", trunk_z)
    cfg = load_config(
        None,
        {
            "data.store": str(store_dir),
            "out_dir": str(out),
            "epochs": 2,
            "progress": False,
            "data.batch_size": 8,
            "answer.crossfit_below": 0,
        },
    )
    return train(cfg).checkpoint


def _logits_and_terms(ckpt, store_dir):
    model, _ = load_model(ckpt)
    from alloynet.data.manifest import read_manifest

    ds = CaptureDataset(LocalStore(store_dir), read_manifest(store_dir / "manifest.csv"), "test")
    terms = []
    model.physics.register_forward_hook(lambda _m, _i, o: terms.append(o[0].detach()))
    with torch.no_grad():
        logits = torch.cat([model(x, c, w)["logits"] for x, c, w, _ in DataLoader(ds, batch_size=16)])
    return logits, torch.cat(terms)


def test_a_trunk_the_validation_captures_do_not_need_is_turned_off(store_dir, tmp_path, monkeypatch):
    ckpt = _train(store_dir, tmp_path / "off", monkeypatch, float("inf"))
    state = load_checkpoint(ckpt)
    assert state["trunk"]["kept"] is False and np.isfinite(state["trunk"]["gain"])
    assert not state["model"]["head.classifier.weight"].any() and not state["model"]["head.classifier.bias"].any()
    logits, terms = _logits_and_terms(ckpt, store_dir)
    assert torch.allclose(logits, terms, atol=1e-5)  # the graph answers with the physics term alone


def test_a_trunk_that_helps_is_kept(store_dir, tmp_path, monkeypatch):
    ckpt = _train(store_dir, tmp_path / "on", monkeypatch, float("-inf"))
    state = load_checkpoint(ckpt)
    assert state["trunk"]["kept"] is True and state["model"]["head.classifier.weight"].abs().sum() > 0
    logits, terms = _logits_and_terms(ckpt, store_dir)
    assert not torch.allclose(logits, terms, atol=1e-5)
