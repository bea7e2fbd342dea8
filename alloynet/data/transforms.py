"""Preprocessing (in one place, reused by models, export and serving) and physics-respecting augmentation.

``Preprocess`` is an ``nn.Module`` with buffers only, so it is traced into TorchScript/ONNX with the model:
the exported graph takes the raw detector image with the capture's own calibration levels, and PyTorch,
ONNX Runtime, TorchServe and Triton all compute the same numbers. Steps: dark/flat correction with the
capture's levels -> -ln T -> standardisation, and optional per-image histogram equalisation.

Augmentations never flip or reverse the wedge axis (x, the last dimension): the wedge ramps one way
on the rig, and a reversed profile is a physically different measurement.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from alloynet.physics.measure import T_MIN, TRIM


class Preprocess(nn.Module):
    """Raw capture + that capture's own calibration -> standardised -ln T, and what the calibration says.

    ``calibration`` is float32 [B, C, 2]: (dark, flat) ADU per channel from the capture's session (tube output
    drifts from one session to the next, and each session's flat records it: without it a +-3 % drift moves
    -ln T by more than the alloys differ). A row whose flat does not exceed its dark (zeros: "not sent")
    falls back to the reference levels (the training median) and is reported ``missing``; levels whose span
    (flat - dark) lies outside [span_lo, span_hi] (the training range widened by ``tolerance``) are reported
    ``out_of_tolerance``. Buffers only: traced into every exported graph.
    """

    __jit_unused_properties__ = ["channels"]  # host-side helper; keeps the module scriptable

    def __init__(
        self,
        dark_adu: Sequence[float],
        flat_adu: Sequence[float],
        mean: float = 0.0,
        std: float = 1.0,
        equalize: bool = False,
        span_range: Sequence[Sequence[float]] | None = None,
        tolerance: float = 0.05,
    ):
        super().__init__()
        dark = torch.as_tensor(list(dark_adu), dtype=torch.float32)
        flat = torch.as_tensor(list(flat_adu), dtype=torch.float32)
        if dark.shape != flat.shape or dark.ndim != 1:
            raise ValueError("Preprocess: dark_adu and flat_adu need one value per channel")
        if torch.any(flat <= dark):
            raise ValueError("Preprocess: flat level must exceed dark level in every channel")
        if not std > 0:
            raise ValueError(f"Preprocess: std must be > 0, got {std}")
        if not 0 <= tolerance < 1:
            raise ValueError(f"Preprocess: tolerance must lie in [0, 1), got {tolerance}")
        span = flat - dark
        lo, hi = (
            (span, span)
            if span_range is None
            else (
                torch.as_tensor(list(span_range[0]), dtype=torch.float32),
                torch.as_tensor(list(span_range[1]), dtype=torch.float32),
            )
        )
        self.register_buffer("dark", dark.view(1, -1, 1, 1))
        self.register_buffer("span", span.view(1, -1, 1, 1))
        self.register_buffer("span_lo", (lo * (1 - tolerance)).view(1, -1))
        self.register_buffer("span_hi", (hi * (1 + tolerance)).view(1, -1))
        self.register_buffer("mean", torch.tensor(float(mean)))
        self.register_buffer("std", torch.tensor(float(std)))
        self.equalize = equalize
        self.tolerance = float(tolerance)
        self.t_min = T_MIN

    @property
    def channels(self) -> int:
        return int(self.dark.shape[1])

    def reference_levels(self, batch: int = 1) -> torch.Tensor:
        """The reference levels as the graph's ``calibration`` input [batch, C, 2] (what training data looked like)."""
        d, f = self.dark.view(-1), (self.dark + self.span).view(-1)
        return torch.stack([d, f], dim=-1).expand(batch, -1, -1).clone()

    def neg_log(self, raw: torch.Tensor, calibration: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(-ln T [B, C, H, W], calibration missing [B], calibration out of tolerance [B]) as 0/1 floats."""
        cal = calibration.float()
        dark, span = cal[..., 0], cal[..., 1] - cal[..., 0]  # [B, C]
        missing = (span <= 0).any(dim=1)  # [B]
        ref_dark, ref_span = self.dark.view(1, -1), self.span.view(1, -1)
        dark = torch.where(missing[:, None], ref_dark.expand_as(dark), dark)
        span = torch.where(missing[:, None], ref_span.expand_as(span), span)
        out = ((span < self.span_lo) | (span > self.span_hi)).any(dim=1) & ~missing
        t = (raw.float() - dark[:, :, None, None]) / span[:, :, None, None]
        return -torch.log(torch.clamp(t, min=self.t_min)), missing.float(), out.float()

    def standardise(self, a: torch.Tensor) -> torch.Tensor:
        if self.equalize:
            a = _equalize(a)
        return (a - self.mean) / self.std

    def forward(self, raw: torch.Tensor, calibration: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        a, missing, out = self.neg_log(raw, calibration)
        return self.standardise(a), missing, out

    def config(self) -> dict:
        """Everything needed to rebuild this module (stored in checkpoints)."""
        tol = self.tolerance
        return {
            "dark_adu": self.dark.flatten().tolist(),
            "flat_adu": (self.dark + self.span).flatten().tolist(),
            "mean": float(self.mean),
            "std": float(self.std),
            "equalize": self.equalize,
            "span_range": [
                (self.span_lo.flatten() / (1 - tol)).tolist(),
                (self.span_hi.flatten() / (1 + tol)).tolist(),
            ],
            "tolerance": tol,
        }


def _equalize(a: torch.Tensor) -> torch.Tensor:
    """Per-image, per-channel histogram equalisation: each value becomes its rank in [0, 1]."""
    b, c, h, w = a.shape
    flat = a.reshape(b, c, h * w)
    ranks = torch.argsort(torch.argsort(flat, dim=-1), dim=-1).float() / float(max(h * w - 1, 1))
    return ranks.reshape(b, c, h, w)


def wedge_profile(x: torch.Tensor, trim: float = TRIM) -> torch.Tensor:
    """The capture summarised along the wedge axis: [..., C, H, W] -> [..., C, W], per column the mean of the
    rows after dropping the lowest and highest ``trim`` fraction: the torch twin of
    ``alloynet.physics.measure.interquartile_rows`` (see there why it is robust)."""
    h = x.shape[-2]
    k = int(h * trim)
    if k == 0 or h - 2 * k < 1:
        return x.mean(dim=-2)
    # the sum less the k largest and the k smallest values (two top-k's cost half a full sort)
    dropped = x.topk(k, dim=-2).values.sum(dim=-2) - (-x).topk(k, dim=-2).values.sum(dim=-2)
    return (x.sum(dim=-2) - dropped) / (h - 2 * k)


def bin_columns(p: torch.Tensor, bins: int) -> torch.Tensor:
    """[B, C, W] -> [B, C, bins], each bin the mean of its columns, with the bins of
    ``alloynet.physics.measure.bin_edges`` (column j in bin b when floor(b W / bins) <= j < floor((b + 1) W /
    bins)). Where ``bins`` divides the width that is plain average pooling (one op in every exported graph);
    otherwise a fixed averaging matrix, since adaptive pooling would let neighbouring bins overlap. A model
    with more bins than the capture has columns repeats columns (adaptive pooling), so its input keeps its
    size; the numpy measurement has one bin per column there."""
    width = p.shape[-1]
    if width % bins == 0 or bins >= width:
        return F.adaptive_avg_pool1d(p, bins)
    col = torch.arange(width, device=p.device)
    bin_of = torch.div((col + 1) * bins - 1, width, rounding_mode="floor")
    m = (bin_of[:, None] == torch.arange(bins, device=p.device)[None]).to(p.dtype)  # [W, bins]
    return p @ (m / m.sum(0, keepdim=True))


def binned_wedge_profile(neg_log_t: torch.Tensor, bins: int) -> torch.Tensor:
    """-ln T [B, C, H, W] -> the binned wedge profile [B, C, bins]: the torch twin of
    ``alloynet.physics.measure.wedge_profile`` (its interquartile statistic), which the trained models see."""
    return bin_columns(wedge_profile(neg_log_t), bins)


class TrainAugment:
    """Training augmentation on raw [C, H, W] ADU images; deterministic given a torch.Generator.

    Row flips (the non-wedge axis) only, small rotations (<= ``max_rotation_deg``), extra shot-like noise,
    and random erasing of a small patch (filled with the image median, not zeros: a zero patch would look
    like a lead blocker, not missing data).
    """

    def __init__(
        self,
        p_flip: float = 0.5,
        max_rotation_deg: float = 2.0,
        noise: float = 0.02,
        p_erase: float = 0.25,
        erase_frac: float = 0.06,
        dark_adu: float = 1000.0,
    ):
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
            x[:, y0 : y0 + eh, x0 : x0 + ew] = x.flatten(1).median(dim=1).values[:, None, None]
        return x


def _rotate(x: torch.Tensor, angle_deg: float) -> torch.Tensor:
    """Rotate about the centre with bilinear sampling and border replication (no artificial black corners)."""
    theta = math.radians(angle_deg)
    rot = torch.tensor(
        [[math.cos(theta), -math.sin(theta), 0.0], [math.sin(theta), math.cos(theta), 0.0]], dtype=torch.float32
    )
    grid = nn.functional.affine_grid(rot[None], [1, *x.shape], align_corners=False)
    return nn.functional.grid_sample(
        x[None].float(), grid, mode="bilinear", padding_mode="border", align_corners=False
    )[0]
