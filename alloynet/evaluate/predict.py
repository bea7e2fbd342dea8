"""Run a model over a loader and collect predictions and targets as numpy arrays."""

from __future__ import annotations

import contextlib

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from alloynet.models.heads import REGRESSION_TARGETS


def autocast(device: torch.device, enabled: bool):
    """bf16 autocast on CUDA (no loss scaling needed); a no-op elsewhere."""
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


@torch.no_grad()
def predict(
    model: nn.Module,
    loader: DataLoader,
    device: torch.device | str = "cpu",
    amp: bool = False,
    channels_last: bool = False,
    features: bool = False,
) -> dict[str, np.ndarray]:
    """Keys: logits, probs (temperature-calibrated), y (alloy labels), prediction_set, group_probs, flags;
    pred_<t> and true_<t> for every regression target t; ``features`` (the trunk's) when asked."""
    device = torch.device(device)
    was_training = model.training
    model.eval()
    cols: dict[str, list[np.ndarray]] = {}
    try:
        for x, cal, wedge, targets in loader:
            x = x.to(device, non_blocking=True)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with autocast(device, amp):
                out = model(x, cal.to(device), wedge.to(device))
            batch = {
                "logits": out["logits"].float(),
                "probs": out["probabilities"].float(),
                "y": targets["alloy"],
                "prediction_set": out["prediction_set"],
                "group_probs": out["group_probabilities"],
                "flags": out["flags"],
            }
            if features:
                batch["features"] = out["features"].float()
            for t in REGRESSION_TARGETS:
                batch[f"pred_{t}"], batch[f"true_{t}"] = out[t].float(), targets[t]
            for k, v in batch.items():  # float32 whatever autocast computed (numpy has no bf16)
                v = v.detach().cpu()
                cols.setdefault(k, []).append((v.float() if v.is_floating_point() else v).numpy())
    finally:
        model.train(was_training)
    return {k: np.concatenate(v) for k, v in cols.items()}
