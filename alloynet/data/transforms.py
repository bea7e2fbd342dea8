"""Preprocessing (in one place, reused by models, export and serving) and physics-respecting augmentation.

``Preprocess`` is an ``nn.Module`` with buffers only, so it is traced into TorchScript/ONNX with the model:
the exported graph takes the raw detector image and PyTorch, ONNX Runtime, TorchServe and Triton all
compute the same numbers. Steps: dark/flat correction -> -ln T -> standardisation, and optional per-image
histogram equalisation.

Augmentations never flip or reverse the wedge axis (x, the last dimension): the wedge ramps one way
on the rig, and a reversed profile is a physically different measurement.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

T_MIN = 1e-4  # T below this (dead pixels, read noise at the wedge's thick end) is clamped: -ln T <= 9.2


class Preprocess(nn.Module):
    __jit_unused_properties__ = ["channels"]  # host-side helper; keeps the module scriptable

    def __init__(self, dark_adu: Sequence[float], flat_adu: Sequence[float], mean: float = 0.0, std: float = 1.0,
                 equalize: bool = False):
        super().__init__()
        dark = torch.as_tensor(list(dark_adu), dtype=torch.float32)
        flat = torch.as_tensor(list(flat_adu), dtype=torch.float32)
        if dark.shape != flat.shape or dark.ndim != 1:
            raise ValueError("Preprocess: dark_adu and flat_adu need one value per channel")
        if torch.any(flat <= dark):
            raise ValueError("Preprocess: flat level must exceed dark level in every channel")
        if not std > 0:
            raise ValueError(f"Preprocess: std must be > 0, got {std}")
        self.register_buffer("dark", dark.view(1, -1, 1, 1))
        self.register_buffer("span", (flat - dark).view(1, -1, 1, 1))
        self.register_buffer("mean", torch.tensor(float(mean)))
        self.register_buffer("std", torch.tensor(float(std)))
        self.equalize = equalize
        self.t_min = T_MIN

    @property
    def channels(self) -> int:
        return int(self.dark.shape[1])

    def neg_log(self, raw: torch.Tensor) -> torch.Tensor:
        t = (raw.float() - self.dark) / self.span
        return -torch.log(torch.clamp(t, min=self.t_min))

    def forward(self, raw: torch.Tensor) -> torch.Tensor:
        a = self.neg_log(raw)
        if self.equalize:
            a = _equalize(a)
        return (a - self.mean) / self.std

    def config(self) -> dict:
        """Everything needed to rebuild this module (stored in checkpoints)."""
        return {"dark_adu": self.dark.flatten().tolist(), "flat_adu": (self.dark + self.span).flatten().tolist(),
                "mean": float(self.mean), "std": float(self.std), "equalize": self.equalize}


def _equalize(a: torch.Tensor) -> torch.Tensor:
    """Per-image, per-channel histogram equalisation: each value becomes its rank in [0, 1]."""
    b, c, h, w = a.shape
    flat = a.reshape(b, c, h * w)
    ranks = torch.argsort(torch.argsort(flat, dim=-1), dim=-1).float() / float(max(h * w - 1, 1))
    return ranks.reshape(b, c, h, w)


def wedge_profile(x: torch.Tensor) -> torch.Tensor:
    """The capture averaged across the non-wedge axis (rows): [..., C, H, W] -> [..., C, W]."""
    return x.mean(dim=-2)


class TrainAugment:
    """Training augmentation on raw [C, H, W] ADU images; deterministic given a torch.Generator.

    Row flips (the non-wedge axis) only, small rotations (<= ``max_rotation_deg``), extra shot-like noise,
    and random erasing of a small patch (filled with the image median, not zeros: a zero patch would look
    like a lead blocker, not missing data).
    """

    def __init__(self, p_flip: float = 0.5, max_rotation_deg: float = 2.0, noise: float = 0.02,
                 p_erase: float = 0.25, erase_frac: float = 0.06, dark_adu: float = 1000.0):
        self.p_flip, self.max_rot, self.noise = p_flip, max_rotation_deg, noise
        self.p_erase, self.erase_frac, self.dark = p_erase, erase_frac, dark_adu

    def __call__(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        if torch.rand((), generator=g) < self.p_flip:
            x = x.flip(-2)
        if self.max_rot > 0:
            angle = float((torch.rand((), generator=g) * 2 - 1) * self.max_rot)
            x = _rotate(x, angle)
        if self.noise > 0:
            sig = torch.clamp(x - self.dark, min=0).sqrt()
            x = x + self.noise * sig * torch.randn(x.shape, generator=g)
        if torch.rand((), generator=g) < self.p_erase:
            _, h, w = x.shape
            eh, ew = max(1, int(h * math.sqrt(self.erase_frac))), max(1, int(w * math.sqrt(self.erase_frac)))
            y0 = int(torch.randint(0, h - eh + 1, (), generator=g))
            x0 = int(torch.randint(0, w - ew + 1, (), generator=g))
            x = x.clone()
            x[:, y0:y0 + eh, x0:x0 + ew] = x.flatten(1).median(dim=1).values[:, None, None]
        return x


def _rotate(x: torch.Tensor, angle_deg: float) -> torch.Tensor:
    """Rotate about the centre with bilinear sampling and border replication (no artificial black corners)."""
    theta = math.radians(angle_deg)
    rot = torch.tensor([[math.cos(theta), -math.sin(theta), 0.0], [math.sin(theta), math.cos(theta), 0.0]],
                       dtype=torch.float32)
    grid = nn.functional.affine_grid(rot[None], [1, *x.shape], align_corners=False)
    return nn.functional.grid_sample(x[None].float(), grid, mode="bilinear", padding_mode="border",
                                     align_corners=False)[0]
