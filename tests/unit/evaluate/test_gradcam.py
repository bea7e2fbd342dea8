"""Grad-CAM maps: right shape and range, and physically sensible where the model's input is a profile."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from alloynet.data.transforms import Preprocess
from alloynet.evaluate.gradcam import grad_cam, last_conv
from alloynet.models import create_model

pytestmark = pytest.mark.usefixtures("one_thread")  # see tests/conftest.py


def _raw() -> torch.Tensor:
    # A wedge-like ramp along x (columns) with a little noise, in detector ADU.
    x = torch.linspace(45_000, 3_000, 32).expand(1, 32, 32).clone()
    return x + torch.randn(1, 32, 32, generator=torch.Generator().manual_seed(0)) * 50


@pytest.mark.parametrize(
    "name,method", [("profile_cnn", "Grad-CAM"), ("resnet18", "Grad-CAM"), ("fnn", "gradient x input")]
)
def test_gradcam_maps(name, method):
    torch.manual_seed(0)
    model = create_model(
        name, 5, 1, Preprocess([1000.0], [50000.0], 1.5, 1.0), **({"width": 32} if name == "resnet18" else {})
    ).eval()
    cam, cls, used = grad_cam(model, _raw(), torch.tensor([[1000.0, 50000.0]]), torch.tensor([50.0]))
    assert used == method and cam.shape == (32, 32) and 0 <= cls < 5
    assert np.isfinite(cam).all() and cam.min() >= 0 and cam.max() <= 1
    if name == "profile_cnn":  # the model only sees the row-averaged profile: the map cannot vary along rows
        assert np.allclose(cam, cam[:1])
    assert model.trunk.training is False  # explaining must not switch batch norm to training mode


def test_last_conv_is_the_trunks_deepest():
    m = create_model("resnet18", 5, 1, Preprocess([1000.0], [50000.0]))
    assert last_conv(m.trunk) is m.trunk.body[-1][-1].conv2  # resnet layer4
    assert last_conv(create_model("fnn", 5, 1, Preprocess([1000.0], [50000.0])).trunk) is None
