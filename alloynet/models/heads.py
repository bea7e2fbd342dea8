"""Multi-task heads on a shared trunk, and the model wrapper that owns preprocessing.

Regression targets are learnt standardised (so thickness in mm, A0 and mu_eff per cm weigh alike in the
loss) and de-standardised inside ``forward`` with buffers: the model, and every graph exported from it,
returns physical units.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from alloynet.data.transforms import Preprocess
from alloynet.models.answer import Answer
from alloynet.models.open_beam import OpenBeamReference
from alloynet.models.physics_prior import PhysicsLikelihood
from alloynet.models.wedge import WedgeReference

REGRESSION_TARGETS = ("thickness_mm", "a0", "mu_eff")

_ACTIVATIONS = {"relu": nn.ReLU, "leaky_relu": nn.LeakyReLU, "gelu": nn.GELU, "silu": nn.SiLU}


def make_activation(name: str) -> nn.Module:
    try:
        return _ACTIVATIONS[name.lower()]()
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; expected one of {sorted(_ACTIVATIONS)}") from None


def activation_names() -> list[str]:
    return sorted(_ACTIVATIONS)


class MultiTaskHead(nn.Module):
    """Alloy logits and the standardised regression outputs from one shared feature vector."""

    def __init__(
        self, in_features: int, num_classes: int, activation: str = "relu", dropout: float = 0.0, hidden: int = 128
    ):
        super().__init__()
        self.drop = nn.Dropout(dropout)
        self.classifier = nn.Linear(in_features, num_classes)
        # A small private MLP per regression block: the physics (thickness, absorption) is smooth in the
        # features, and sharing the last layer with the classifier would tie their scales together.
        self.regressor = nn.Sequential(
            nn.Linear(in_features, hidden), make_activation(activation), nn.Linear(hidden, len(REGRESSION_TARGETS))
        )

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.drop(features)
        return self.classifier(f), self.regressor(f)


class AlloyNet(nn.Module):
    """Raw capture [B, C, H, W] + its calibration [B, C, 2] + its wedge size [B, 1] -> everything the contract
    returns.

    The trunk reads the plate's own attenuation: -ln T (the capture corrected with its own calibration)
    minus the wedge's attenuation for the capture's wedge size (``alloynet.models.wedge``).
    Output dict: ``logits`` (what the loss trains), ``probabilities`` (temperature-calibrated),
    ``thickness_mm``, ``a0``, ``mu_eff`` (physical units), ``prediction_set``, ``group_probabilities``,
    ``flags`` (see ``alloynet.models.answer``) and ``features`` (the trunk's output). With ``physics`` (the
    forward model's likelihoods, ``alloynet.models.physics_prior``) the logits are the head's plus the physics
    fit's log posterior, learnt weight."""

    def __init__(
        self,
        trunk: nn.Module,
        feature_dim: int,
        num_classes: int,
        preprocess: Preprocess,
        target_stats: Mapping[str, tuple[float, float]] | None = None,
        activation: str = "relu",
        dropout: float = 0.0,
        groups: Sequence[int] | None = None,
        coverage: float = 0.95,
        wedge: WedgeReference | None = None,
        open_beam: OpenBeamReference | None = None,
        physics: PhysicsLikelihood | None = None,
    ):
        super().__init__()
        self.preprocess = preprocess
        self.wedge = wedge or WedgeReference()
        self.open_beam = open_beam or OpenBeamReference(0, preprocess.channels)
        self.trunk = trunk
        self.physics = physics
        self.head = MultiTaskHead(feature_dim, num_classes, activation, dropout)
        self.answer = Answer(
            num_classes, feature_dim, groups if groups is not None else [0] * num_classes, coverage=coverage
        )
        stats = dict(target_stats or {})
        mean = [float(stats.get(k, (0.0, 1.0))[0]) for k in REGRESSION_TARGETS]
        std = [float(stats.get(k, (0.0, 1.0))[1]) for k in REGRESSION_TARGETS]
        if any(not s > 0 for s in std):
            raise ValueError(f"target_stats: every std must be > 0, got {std}")
        self.register_buffer("target_mean", torch.tensor(mean, dtype=torch.float32))
        self.register_buffer("target_std", torch.tensor(std, dtype=torch.float32))

    def attenuation(
        self, raw: torch.Tensor, calibration: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(-ln T of the plate's rows [B, C, H', W], corrected by the open-beam strip if the rig images one;
        calibration not known [B], out of tolerance [B], drift in session [B])."""
        a, missing, out_of_tolerance = self.preprocess.neg_log(raw, calibration)
        a, drift = self.open_beam(a)
        return a, missing, out_of_tolerance, drift

    def plate_input(self, a: torch.Tensor, wedge_mm: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(What the trunk reads: -ln T minus the wedge alone, standardised; wedge size not known [B])."""
        w, wedge_missing = self.wedge(wedge_mm, int(a.shape[-1]))
        return self.preprocess.standardise(a - w[:, :, None, :]), wedge_missing

    def plate_attenuation(
        self, raw: torch.Tensor, calibration: torch.Tensor, wedge_mm: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(-ln T minus the wedge alone [B, C, H', W] (the plate's rows, corrected by the open-beam strip if the
        rig images one), calibration or wedge not known [B], out of tolerance [B], drift in session [B])."""
        a, missing, out_of_tolerance, drift = self.attenuation(raw, calibration)
        plate, wedge_missing = self.plate_input(a, wedge_mm)
        return plate, torch.maximum(missing, wedge_missing), out_of_tolerance, drift

    def forward(self, raw: torch.Tensor, calibration: torch.Tensor, wedge_mm: torch.Tensor) -> dict[str, torch.Tensor]:
        a, calibration_missing, out_of_tolerance, drift = self.attenuation(raw, calibration)
        x, wedge_missing = self.plate_input(a, wedge_mm)
        missing = torch.maximum(calibration_missing, wedge_missing)
        features = self.trunk(x)
        logits, z = self.head(features)
        outside = torch.zeros_like(drift)
        if self.physics is not None:
            term, outside = self.physics(a, wedge_mm, calibration_missing)
            logits = logits + term.to(logits.dtype)
        reg = z.float() * self.target_std + self.target_mean
        thickness = reg[:, 0]
        probs, pset, groups, flags = self.answer(logits, thickness, features, missing, out_of_tolerance, drift, outside)
        return {
            "logits": logits,
            "probabilities": probs,
            "thickness_mm": thickness,
            "a0": reg[:, 1],
            "mu_eff": reg[:, 2],
            "prediction_set": pset,
            "group_probabilities": groups,
            "flags": flags,
            "features": features,
        }

    def target_stats(self) -> dict[str, tuple[float, float]]:
        return {k: (float(self.target_mean[i]), float(self.target_std[i])) for i, k in enumerate(REGRESSION_TARGETS)}
