"""The committed study protocols parse, and every run's training config validates."""

import pytest

from alloynet.losses import list_losses
from alloynet.models import list_models
from alloynet.study import load_study
from alloynet.study.runner import _train_config
from tests.helpers import ROOT


@pytest.mark.parametrize("name", ["study.yaml", "study-gpu.yaml"])
def test_protocol_configs_are_valid(name, tmp_path):
    cfg = load_study(ROOT / "configs" / name)
    assert set(cfg.architectures) <= set(list_models())
    assert {loss.name for loss in cfg.losses} <= set(list_losses())
    assert sorted(cfg.data.class_order) == sorted(["Al1050", "Al2017", "Al5083", "Al6082", "Al7075"])
    for arch, loss, rho, seed in cfg.runs()[:: max(1, len(cfg.runs()) // 20)]:
        tc = _train_config(cfg, arch, loss, rho, seed, tmp_path, tmp_path)
        assert tc.model.name == arch and tc.loss.name == loss.name and tc.seed == seed


def test_gpu_protocol_covers_every_architecture():
    assert set(load_study(ROOT / "configs" / "study-gpu.yaml").architectures) == set(list_models())
