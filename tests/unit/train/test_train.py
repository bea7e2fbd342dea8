"""The trainer's pieces that need no training run: example configs, learning-rate schedules, the epoch sampler
and simulated captures drawn from a rig profile (training itself: tests/integration/train/test_train.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from alloynet.models import ARCH_DEFAULTS, list_models
from alloynet.train import load_config, resolve
from alloynet.train.config import EarlyStopConfig, ScheduleConfig
from alloynet.train.data import EpochSampler, sample_weights
from alloynet.train.optim import Schedule, lr_factor
from tests.helpers import ROOT


@pytest.mark.parametrize("name", ["demo", *sorted(ARCH_DEFAULTS)])
def test_example_configs_validate_and_resolve(name):
    cfg = resolve(load_config(ROOT / "configs" / f"{name}.yaml"))  # one per architecture, plus the demo's
    assert cfg.model.name in list_models() and cfg.optim.name and cfg.optim.lr and cfg.model.activation
    if name != "demo":
        assert cfg.model.name == name and cfg.optim.name == ARCH_DEFAULTS[name]["optimizer"]


def test_lr_schedules_known_values():
    cfg = ScheduleConfig(name="cosine", warmup_epochs=2, warmup_start_factor=0.1, min_lr_factor=0.0)
    assert lr_factor(cfg, 0, 12) == pytest.approx(0.1) and lr_factor(cfg, 1, 12) == pytest.approx(0.55)
    assert lr_factor(cfg, 2, 12) == pytest.approx(1.0) and lr_factor(cfg, 7, 12) == pytest.approx(0.5)
    assert lr_factor(cfg, 12, 12) == pytest.approx(0.0)
    assert lr_factor(ScheduleConfig(name="step", step_size=3, gamma=0.1), 6.5, 10) == pytest.approx(0.01)
    assert lr_factor(ScheduleConfig(name="exponential", gamma=0.5), 3, 10) == pytest.approx(0.125)
    cyc = ScheduleConfig(name="cyclic", step_size=2, min_lr_factor=0.2)
    assert [lr_factor(cyc, e, 10) for e in (0, 1, 2, 3, 4)] == pytest.approx([0.2, 0.6, 1.0, 0.6, 0.2])
    # plateau: after warm-up, the lr halves once the metric has not improved for `patience` epochs
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=1.0)
    sched = Schedule(
        ScheduleConfig(name="plateau", gamma=0.5, patience=1, warmup_epochs=1), opt, 2, 10, EarlyStopConfig(mode="max")
    )
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1)
    for _ in range(2):
        opt.step()
        sched.step_iteration()
    assert opt.param_groups[0]["lr"] == pytest.approx(1.0)
    for metric in (0.5, 0.5, 0.5):
        sched.step_epoch(metric)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.5)


def test_epoch_sampler_balanced_deterministic_and_sharded():
    labels = np.array([0] * 90 + [1] * 9 + [2] * 1)
    s = EpochSampler(len(labels), seed=3, weights=sample_weights(labels, "class_balanced", 3))
    s.set_epoch(0)
    first = list(s)
    assert first == list(s)  # same epoch, same draw
    s.set_epoch(1)
    assert list(s) != first
    drawn = []
    for epoch in range(30):
        s.set_epoch(epoch)
        drawn += list(s)
    counts = np.bincount(labels[drawn], minlength=3)
    assert np.all(np.abs(counts / counts.sum() - 1 / 3) < 0.03)  # re-sampled to balance; the data are 90/9/1
    shards = [EpochSampler(10, seed=0, rank=r, world_size=3) for r in range(3)]
    got = sorted(i for sh in shards for i in sh)
    assert len(got) == 12 and set(got) == set(range(10))  # padded to equal shards, every index covered


# -- sim-to-real: pretrain on the (fitted) simulator, fine-tune on the store's captures -------------------


def _profile(path: Path, size: int = 32) -> Path:
    """A rig profile as `alloynet rig fit` writes it: two fitted parameters with their covariance."""
    from alloynet.physics.rig_profile import Covariance, RigProfile, save_rig_profile
    from alloynet.physics.simulator import RigConfig

    rig = RigConfig(height=size, width=size, scatter_fraction=0.05, kvp_offset_rel=0.02)
    cov = Covariance(names=["scatter_fraction", "kvp_offset_rel"], matrix=[[1e-4, 0.0], [0.0, 4e-4]])
    return save_rig_profile(
        RigProfile(
            rig=rig,
            calibrated=["scatter_fraction", "kvp_offset_rel"],
            uncertainty={"scatter_fraction": 0.01, "kvp_offset_rel": 0.02},
            covariance=cov,
        ),
        path,
    )


def test_synthetic_captures_from_a_rig_profile_draw_a_rig_per_session(tmp_path):
    from alloynet.data import CLASS_NAMES
    from alloynet.data.synthetic import SyntheticCaptures, SyntheticConfig
    from alloynet.physics.observer import ThicknessPrior
    from alloynet.physics.simulator import RigConfig

    prof = _profile(tmp_path / "rig.yaml")
    cfg = SyntheticConfig(captures=12, rig_profile=str(prof), rig_variants=3, session_size=4)
    make = lambda: SyntheticCaptures(
        cfg, RigConfig(height=32, width=32), ThicknessPrior(range_mm=(1, 5)), [50.0], CLASS_NAMES, seed=3
    )
    a, b = make(), make()
    assert np.array_equal(a.images, b.images)  # seeded: the same captures
    rigs = [a._sim(50.0, s).rig for s in range(4)]
    assert rigs[0].scatter_fraction == 0.05 and rigs[0].kvp_offset_rel == 0.02  # the best fit first
    assert len({r.scatter_fraction for r in rigs[:3]}) == 3 and rigs[3] == rigs[0]  # then draws, in turn
    with pytest.raises(ValueError, match="rig_profile: fits the alloynet simulator to a rig"):
        SyntheticConfig(captures=1, rig_profile=str(prof), simulator="second_rig")
