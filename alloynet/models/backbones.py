"""torchvision backbones as trunks: built with ``weights=None`` (nothing is ever downloaded), first layer
adapted to the capture's channel count, activation swapped for the configured one.

ImageNet weights are optional and only from a local file the user gives (``pretrained="path.pth"``, a
torchvision state dict). The RGB first-layer kernels are folded into C channels the way timm's
``adapt_input_conv`` does (summed for 1 channel, tiled and rescaled for more), so a pretrained stem still
sees the same total input energy.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torchvision
from torch import nn

from alloynet.models.architectures import register_model
from alloynet.models.heads import _ACTIVATIONS, make_activation
from alloynet.models.norm import FittedStandardise


def load_local_weights(model: nn.Module, path: str | Path) -> None:
    """Load a torchvision state dict from a local file (weights_only; no network)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"pretrained weights {path} not found (only local files are accepted)")
    sd = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(sd, dict) and "state_dict" in sd:
        sd = sd["state_dict"]
    model.load_state_dict(sd, strict=True)


def adapt_conv(conv: nn.Conv2d, in_channels: int) -> nn.Conv2d:
    """The same convolution for ``in_channels`` inputs; existing RGB kernels are folded, not discarded."""
    new = nn.Conv2d(
        in_channels,
        conv.out_channels,
        conv.kernel_size,
        conv.stride,
        conv.padding,
        conv.dilation,
        conv.groups,
        conv.bias is not None,
    )
    with torch.no_grad():
        w = conv.weight
        if in_channels == 1:
            new.weight.copy_(w.sum(dim=1, keepdim=True))
        else:
            reps = -(-in_channels // w.shape[1])
            new.weight.copy_(w.repeat(1, reps, 1, 1)[:, :in_channels] * (w.shape[1] / in_channels))
        if conv.bias is not None:
            new.bias.copy_(conv.bias)
    return new


def swap_activations(module: nn.Module, activation: str) -> None:
    """Replace every ReLU/LeakyReLU/GELU/SiLU (not gates such as Sigmoid) with ``activation``."""
    kinds = tuple(_ACTIVATIONS.values())
    for name, child in module.named_children():
        if isinstance(child, kinds):
            setattr(module, name, make_activation(activation))
        else:
            swap_activations(child, activation)


POSITIONS = 4  # places along the wedge the last feature map is pooled to


class WedgeAware2D(nn.Module):
    """A torchvision convolutional body made to keep where along the wedge a feature sits.

    Global average pooling, how these trunks end on ImageNet, discards position, and position along the wedge
    is physics (how hard the beam is there). So: the input (the plate's attenuation image) is standardised
    per column with fitted statistics (the wedge makes columns differ by orders of magnitude in noise and
    level), a wedge-depth coordinate channel (0 at the thin end, 1 at the thick end) is appended, and the
    last feature map is pooled over rows only, to ``positions`` places along the wedge."""

    def __init__(self, body: nn.Module, body_features: int, in_channels: int, width: int, positions: int = POSITIONS):
        super().__init__()
        self.norm = FittedStandardise([1, in_channels, 1, width], reduce=(0, 2))
        self.body = body
        self.pool = nn.AdaptiveAvgPool2d((1, positions))
        self.out_features = body_features * positions

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        coord = torch.linspace(0.0, 1.0, w, dtype=x.dtype, device=x.device).expand(b, 1, h, w)
        return self.pool(self.body(torch.cat([self.norm(x), coord], dim=1))).flatten(1)


def _resnet(arch: str, in_channels: int, activation: str, pretrained: str | None, width: int) -> tuple[nn.Module, int]:
    m = getattr(torchvision.models, arch)(weights=None)
    if pretrained:
        load_local_weights(m, pretrained)
    m.conv1 = adapt_conv(m.conv1, in_channels + 1)  # + the wedge-depth coordinate
    swap_activations(m, activation)
    body = nn.Sequential(m.conv1, m.bn1, m.relu, m.maxpool, m.layer1, m.layer2, m.layer3, m.layer4)
    trunk = WedgeAware2D(body, m.fc.in_features, in_channels, width)
    return trunk, trunk.out_features


@register_model("resnet18")
def resnet18(
    in_channels: int, activation: str = "relu", pretrained: str | None = None, width: int = 64
) -> tuple[nn.Module, int]:
    return _resnet("resnet18", in_channels, activation, pretrained, width)


@register_model("resnet34")
def resnet34(
    in_channels: int, activation: str = "leaky_relu", pretrained: str | None = None, width: int = 64
) -> tuple[nn.Module, int]:
    return _resnet("resnet34", in_channels, activation, pretrained, width)


@register_model("resnet50")
def resnet50(
    in_channels: int, activation: str = "gelu", pretrained: str | None = None, width: int = 64
) -> tuple[nn.Module, int]:
    return _resnet("resnet50", in_channels, activation, pretrained, width)


@register_model("vgg16")
def vgg16(
    in_channels: int,
    activation: str = "relu",
    pretrained: str | None = None,
    batch_norm: bool = True,
    width: int = 64,
) -> tuple[nn.Module, int]:
    """VGG-16 convolutional stack, wedge-aware (see ``WedgeAware2D``; the 25088x4096 FC block is dropped: it
    is 120 M parameters sized for 224 px ImageNet crops). Batch norm by default, because plain VGG-16 from
    scratch rarely trains at the table's SGD lr of 0.01."""
    m = (torchvision.models.vgg16_bn if batch_norm else torchvision.models.vgg16)(weights=None)
    if pretrained:
        load_local_weights(m, pretrained)
    m.features[0] = adapt_conv(m.features[0], in_channels + 1)
    swap_activations(m.features, activation)
    trunk = WedgeAware2D(m.features, 512, in_channels, width)
    return trunk, trunk.out_features


@register_model("efficientnet_b0")
def efficientnet_b0(
    in_channels: int, activation: str = "silu", pretrained: str | None = None, width: int = 64
) -> tuple[nn.Module, int]:
    m = torchvision.models.efficientnet_b0(weights=None)
    if pretrained:
        load_local_weights(m, pretrained)
    m.features[0][0] = adapt_conv(m.features[0][0], in_channels + 1)
    swap_activations(m, activation)
    trunk = WedgeAware2D(m.features, m.classifier[1].in_features, in_channels, width)
    return trunk, trunk.out_features
