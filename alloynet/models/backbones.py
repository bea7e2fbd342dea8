"""torchvision backbones as trunks: built with ``weights=None`` (nothing is ever downloaded), first layer
adapted to the capture's channel count, activation swapped for the configured one.

ImageNet weights are optional and only from a local file the user gives (``pretrained="path.pth"``, a
torchvision state dict). The RGB first-layer kernels are folded into C channels the way timm's
``adapt_input_conv`` does (summed for 1 channel, tiled and rescaled for more), so a pretrained stem still
sees the same total input energy.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch
import torchvision
from torch import nn

from alloynet.models.heads import _ACTIVATIONS, make_activation
from alloynet.models.registry import register_model


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
    new = nn.Conv2d(in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                    conv.dilation, conv.groups, conv.bias is not None)
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


def _resnet(arch: str, in_channels: int, activation: str, pretrained: Optional[str]) -> tuple[nn.Module, int]:
    m = getattr(torchvision.models, arch)(weights=None)
    if pretrained:
        load_local_weights(m, pretrained)
    m.conv1 = adapt_conv(m.conv1, in_channels)
    dim = m.fc.in_features
    m.fc = nn.Identity()
    swap_activations(m, activation)
    return m, dim


@register_model("resnet18")
def resnet18(in_channels: int, activation: str = "relu", pretrained: Optional[str] = None) -> tuple[nn.Module, int]:
    return _resnet("resnet18", in_channels, activation, pretrained)


@register_model("resnet34")
def resnet34(in_channels: int, activation: str = "leaky_relu", pretrained: Optional[str] = None) -> tuple[nn.Module, int]:
    return _resnet("resnet34", in_channels, activation, pretrained)


@register_model("resnet50")
def resnet50(in_channels: int, activation: str = "gelu", pretrained: Optional[str] = None) -> tuple[nn.Module, int]:
    return _resnet("resnet50", in_channels, activation, pretrained)


@register_model("vgg16")
def vgg16(in_channels: int, activation: str = "relu", pretrained: Optional[str] = None,
          batch_norm: bool = True) -> tuple[nn.Module, int]:
    """VGG-16 convolutional stack with global average pooling (the 25088x4096 FC block is dropped: it is
    120 M parameters sized for 224 px ImageNet crops). Batch norm by default, because plain VGG-16 from
    scratch rarely trains at the table's SGD lr of 0.01."""
    m = (torchvision.models.vgg16_bn if batch_norm else torchvision.models.vgg16)(weights=None)
    if pretrained:
        load_local_weights(m, pretrained)
    m.features[0] = adapt_conv(m.features[0], in_channels)
    swap_activations(m.features, activation)
    return nn.Sequential(m.features, nn.AdaptiveAvgPool2d(1), nn.Flatten()), 512


@register_model("efficientnet_b0")
def efficientnet_b0(in_channels: int, activation: str = "silu", pretrained: Optional[str] = None) -> tuple[nn.Module, int]:
    m = torchvision.models.efficientnet_b0(weights=None)
    if pretrained:
        load_local_weights(m, pretrained)
    m.features[0][0] = adapt_conv(m.features[0][0], in_channels)
    dim = m.classifier[1].in_features
    m.classifier = nn.Identity()  # dropout lives in the multi-task head
    swap_activations(m, activation)
    return m, dim
