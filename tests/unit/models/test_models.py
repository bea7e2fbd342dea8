"""The model contract: raw capture in, multi-task dict in physical units out, for every registered name."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from alloynet.data.transforms import Preprocess
from alloynet.models import ARCH_DEFAULTS, create_model, list_models
from alloynet.models.architectures import takes_width

STATS = {"thickness_mm": (2.5, 1.6), "a0": (0.9, 0.5), "mu_eff": (3.6, 0.9)}


pytestmark = pytest.mark.usefixtures("one_thread")  # see tests/conftest.py


def _raw(b: int = 2, c: int = 1, size: int = 32, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, c, size, size, generator=g) * 45_000 + 2_000  # detector ADU between dark and flat


def _cal(raw: torch.Tensor) -> torch.Tensor:
    """Each capture's own calibration levels [B, C, 2]."""
    return torch.tensor([1000.0, 50000.0]).repeat(raw.shape[0], raw.shape[1], 1)


def _wedge(raw: torch.Tensor) -> torch.Tensor:
    return torch.full((raw.shape[0], 1), 50.0)


def _width(name: str, size: int = 32) -> dict:
    """2-D trunks standardise each column: they are built for the capture width."""
    return {"width": size} if takes_width(name) else {}


def _pre(c: int = 1) -> Preprocess:
    return Preprocess([1000.0] * c, [50000.0] * c, mean=1.2, std=0.8)


def test_registry_names_and_design_table():
    assert set(list_models()) == {
        "resnet18",
        "resnet34",
        "resnet50",
        "vgg16",
        "efficientnet_b0",
        "fnn",
        "profile_cnn",
        "profile_mlp",
    }
    table = {
        "resnet18": ("adam", "relu", 1e-3, 1e-4),
        "resnet34": ("sgd", "leaky_relu", 1e-2, 1e-4),
        "resnet50": ("rmsprop", "gelu", 5e-4, 5e-4),
        "vgg16": ("sgd", "relu", 1e-2, 1e-4),
        "efficientnet_b0": ("rmsprop", "silu", 2e-3, 1e-4),
        "fnn": ("sgd", "relu", 1e-2, 1e-3),
    }
    for name, (opt, act, lr, wd) in table.items():
        d = ARCH_DEFAULTS[name]
        assert (d["optimizer"], d["activation"], d["lr"], d["weight_decay"]) == (opt, act, lr, wd)
    with pytest.raises(KeyError, match="unknown model"):
        create_model("alexnet", 5, 1, _pre())


@pytest.mark.parametrize(
    "name", ["resnet18", "resnet34", "resnet50", "vgg16", "efficientnet_b0", "fnn", "profile_cnn", "profile_mlp"]
)
def test_contract_for_every_model(name):
    torch.manual_seed(0)
    channels = 2 if name in ("resnet18", "profile_cnn", "fnn") else 1  # one channel per kVp also works
    model = create_model(name, 5, channels, _pre(channels), target_stats=STATS, **_width(name)).eval()
    raw = _raw(c=channels)
    out = model(raw, _cal(raw), _wedge(raw))
    assert set(out) == {
        "logits",
        "probabilities",
        "thickness_mm",
        "a0",
        "mu_eff",
        "prediction_set",
        "group_probabilities",
        "flags",
        "features",
    }
    assert out["logits"].shape == (2, 5) and all(out[k].shape == (2,) for k in ("thickness_mm", "a0", "mu_eff"))
    assert out["group_probabilities"].shape == (2, 2) and out["flags"].shape == (2, 5)
    assert all(torch.isfinite(v).all() for v in out.values())
    # Preprocessing happens inside: the same numbers as preprocess -> trunk -> head by hand.
    logits, z = model.head(model.trunk(model.plate_attenuation(raw, _cal(raw), _wedge(raw))[0]))
    assert torch.allclose(out["logits"], logits, atol=1e-5)
    # Regression outputs are de-standardised with the buffers: zero head output -> the training means.
    with torch.no_grad():
        model.head.regressor[-1].weight.zero_()
        model.head.regressor[-1].bias.zero_()
    out = model(raw, _cal(raw), _wedge(raw))
    assert out["thickness_mm"].tolist() == pytest.approx([2.5, 2.5]) and out["mu_eff"].tolist() == pytest.approx(
        [3.6, 3.6]
    )
    assert {"target_mean", "target_std", "preprocess.dark", "preprocess.span"} <= set(model.state_dict())


def test_activation_is_configurable():
    m = create_model("resnet34", 5, 1, _pre())  # table default: LeakyReLU
    assert any(isinstance(x, nn.LeakyReLU) for x in m.modules()) and not any(type(x) is nn.ReLU for x in m.modules())
    m = create_model("efficientnet_b0", 5, 1, _pre(), activation="gelu")
    assert not any(isinstance(x, nn.SiLU) for x in m.modules()) and any(isinstance(x, nn.GELU) for x in m.modules())
    assert any(isinstance(x, nn.Sigmoid) for x in m.modules())  # squeeze-excitation gates are not activations
    with pytest.raises(ValueError, match="unknown activation"):
        create_model("fnn", 5, 1, _pre(), activation="tanhh")


def test_pretrained_weights_only_from_a_local_file(tmp_path):
    ref = torchvision.models.resnet18(weights=None)
    path = tmp_path / "resnet18.pth"
    torch.save(ref.state_dict(), path)
    m = create_model("resnet18", 5, 1, _pre(), pretrained=str(path))
    stem = m.trunk.body[0]  # the capture's channel + the wedge-depth coordinate: RGB tiled, rescaled by 3/2
    assert stem.weight.shape[1] == 2 and torch.allclose(stem.weight, ref.conv1.weight[:, :2] * 1.5)
    assert torch.equal(m.trunk.body[6][0].conv1.weight, ref.layer3[0].conv1.weight)  # layer3 untouched
    m3 = create_model("resnet18", 5, 6, _pre(6), pretrained=str(path))  # 6 + 1 channels: tiled, rescaled by 3/7
    want = ref.conv1.weight.repeat(1, 3, 1, 1)[:, :7] * (3 / 7)
    assert torch.allclose(m3.trunk.body[0].weight, want, atol=1e-6)
    with pytest.raises(FileNotFoundError, match="only local files"):
        create_model("resnet18", 5, 1, _pre(), pretrained=str(tmp_path / "missing.pth"))


def test_channel_mismatch_is_refused():
    with pytest.raises(ValueError, match="channel"):
        create_model("fnn", 5, 2, _pre(1))


@pytest.mark.filterwarnings("ignore:`torch.jit.trace")
@pytest.mark.parametrize("name", ["profile_cnn", "resnet18"])
def test_traced_graph_matches_eager(name):
    """What export relies on: a traced model over raw ADU gives the eager numbers, at another batch size too."""
    model = create_model(name, 5, 1, _pre(), target_stats=STATS, **_width(name)).eval()
    traced = torch.jit.trace(model, (_raw(), _cal(_raw()), _wedge(_raw())), strict=False)
    x = _raw(b=3, seed=1)
    for k, v in model(x, _cal(x), _wedge(x)).items():
        assert torch.allclose(traced(x, _cal(x), _wedge(x))[k], v, atol=1e-4), k


def test_profile_models_accept_any_width():
    model = create_model("profile_cnn", 5, 1, _pre()).eval()
    assert model(_raw(size=48), _cal(_raw(size=48)), _wedge(_raw(size=48)))["logits"].shape == (2, 5)
    assert create_model("fnn", 5, 1, _pre()).eval()(_raw(size=100), _cal(_raw(size=100)), _wedge(_raw(size=100)))[
        "logits"
    ].shape == (2, 5)
