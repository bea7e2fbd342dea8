"""Trunks over the wedge profile: the capture averaged across the non-wedge axis (rows).

For a plate that is uniform across rows the profile carries, to first order, all the alloy information
(see ``alloynet.physics.separability``): how -ln T bends as the wedge hardens the beam is the material's
signature. Both trunks resample the profile to a fixed number of bins, so any capture width is accepted.

``input_norm`` standardises each profile bin with statistics fitted once on the training captures
(``alloynet.models.norm``; two buffers in every exported graph). Globally standardised -ln T is dominated
by the wedge ramp, common to every capture; per bin, what is left is plate thickness and alloy, which is
what must be resolved. Batch statistics would not do: they wander by more than the alloys differ.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from alloynet.data.transforms import binned_wedge_profile
from alloynet.models.architectures import register_model
from alloynet.models.heads import make_activation
from alloynet.models.norm import FittedStandardise


class ProfileNorm(nn.Module):
    """The plate's attenuation image -> physics features [B, 2C, bins], each (feature, bin) standardised by
    fitted training statistics: per channel, the plate's attenuation along the wedge A(x) (binned
    interquartile row mean) and its hardening curve A(x) / A(0), the wedge's generalisation of the
    dual-energy ratio X-ray sorters use: how the plate's attenuation falls as the wedge hardens the beam
    depends on its effective atomic number and hardly on its thickness."""

    def __init__(self, in_channels: int, bins: int, enabled: bool = True):
        super().__init__()
        self.bins = bins
        self.out_channels = 2 * in_channels
        self.norm: nn.Module = FittedStandardise([self.out_channels * bins]) if enabled else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = binned_wedge_profile(x, self.bins)  # [B, C, bins]
        a0 = torch.clamp(p[..., :1], min=1e-3)  # the plate-only strip
        f = torch.cat([p, p / a0], dim=1)
        return self.norm(f.flatten(1)).view(f.shape)


class ProfileMLP(nn.Module):
    """The seed study's FNN: an MLP on the binned wedge profile of every channel."""

    def __init__(
        self,
        in_channels: int,
        bins: int,
        hidden: Sequence[int],
        activation: str,
        dropout: float,
        input_norm: bool = True,
    ):
        super().__init__()
        self.profile = ProfileNorm(in_channels, bins, input_norm)
        layers: list[nn.Module] = []
        width = self.profile.out_channels * bins
        for h in hidden:
            layers += [nn.Linear(width, h), nn.BatchNorm1d(h), make_activation(activation), nn.Dropout(dropout)]
            width = h
        self.mlp = nn.Sequential(*layers)
        self.out_features = width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.profile(x).flatten(1))


class ResBlock1d(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, activation: str, kernel: int = 5):
        super().__init__()
        self.conv1 = nn.Conv1d(cin, cout, kernel, stride, kernel // 2, bias=False)
        self.bn1 = nn.BatchNorm1d(cout)
        self.conv2 = nn.Conv1d(cout, cout, kernel, 1, kernel // 2, bias=False)
        self.bn2 = nn.BatchNorm1d(cout)
        self.act1, self.act2 = make_activation(activation), make_activation(activation)
        self.skip: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.skip = nn.Sequential(nn.Conv1d(cin, cout, 1, stride, bias=False), nn.BatchNorm1d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act1(self.bn1(self.conv1(x)))
        return self.act2(self.bn2(self.conv2(y)) + self.skip(x))


class ProfileCNN(nn.Module):
    """A 1-D residual CNN over the wedge profile (after the spectral-CNN seed).

    A position channel (0 at the wedge's thin end, 1 at the thick end) is appended, and the last stage is
    pooled to a few positions rather than one: where along the wedge a feature occurs is physics (the
    amount of beam hardening), which plain global pooling would throw away.
    """

    def __init__(
        self,
        in_channels: int,
        bins: int,
        widths: Sequence[int],
        activation: str,
        out_positions: int = 4,
        input_norm: bool = True,
    ):
        super().__init__()
        self.bins = bins
        self.profile = ProfileNorm(in_channels, bins, input_norm)
        self.stem = nn.Sequential(
            nn.Conv1d(self.profile.out_channels + 1, widths[0], 7, 1, 3, bias=False),
            nn.BatchNorm1d(widths[0]),
            make_activation(activation),
        )
        blocks, cin = [], widths[0]
        for i, w in enumerate(widths):
            blocks.append(ResBlock1d(cin, w, 1 if i == 0 else 2, activation))
            cin = w
        self.stages = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool1d(out_positions)
        self.out_features = cin * out_positions

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.profile(x)
        pos = torch.linspace(0.0, 1.0, self.bins, dtype=p.dtype, device=p.device).expand(p.shape[0], 1, self.bins)
        y = self.stages(self.stem(torch.cat([p, pos], dim=1)))
        return self.pool(y).flatten(1)


@register_model("fnn")
def fnn(
    in_channels: int,
    activation: str = "relu",
    bins: int = 64,
    hidden: Sequence[int] = (256, 128),
    dropout: float = 0.1,
    input_norm: bool = True,
) -> tuple[nn.Module, int]:
    m = ProfileMLP(in_channels, bins, hidden, activation, dropout, input_norm)
    return m, m.out_features


@register_model("profile_mlp")
def profile_mlp(
    in_channels: int,
    activation: str = "gelu",
    bins: int = 32,
    hidden: Sequence[int] = (256, 256, 128),
    dropout: float = 0.1,
    input_norm: bool = True,
) -> tuple[nn.Module, int]:
    """The recommended model: an MLP on the plate's attenuation along the wedge and its hardening curve, in
    32 bins (the seed study's FNN, sized and tuned for these physics features; see docs/benchmarks.md)."""
    m = ProfileMLP(in_channels, bins, hidden, activation, dropout, input_norm)
    return m, m.out_features


@register_model("profile_cnn")
def profile_cnn(
    in_channels: int,
    activation: str = "relu",
    bins: int = 64,
    widths: Sequence[int] = (32, 64, 128),
    out_positions: int = 4,
    input_norm: bool = True,
) -> tuple[nn.Module, int]:
    m = ProfileCNN(in_channels, bins, widths, activation, out_positions, input_norm)
    return m, m.out_features
