"""Input standardisation with statistics fitted once on training captures, never batch statistics.

The alloy signal is a few tenths of a percent of the spread that plate thickness and the wedge put into the
profile; BatchNorm's batch statistics (at a batch of 32) wander by more than that from one batch to the next
and bury it. ``FittedStandardise`` holds a fixed mean and std per feature (buffers: saved in checkpoints and
traced into every exported graph), fitted by ``fit_input_statistics`` on the training captures before
training starts.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import torch
from torch import nn


class FittedStandardise(nn.Module):
    """(x - mean) / std with per-feature buffers of ``shape`` (broadcast against x); statistics are taken over
    the dimensions in ``reduce`` (the batch, and e.g. the rows of an image) while fitting."""

    def __init__(self, shape: Sequence[int], reduce: Sequence[int] = (0,)):
        super().__init__()
        self.reduce = tuple(reduce)
        self.register_buffer("mean", torch.zeros(*shape))
        self.register_buffer("std", torch.ones(*shape))
        self._acc: list[torch.Tensor] | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._acc is not None:
            self._acc.append(x.detach().float())
        return (x - self.mean) / self.std

    def begin_fit(self) -> None:
        self._acc = []

    def end_fit(self) -> None:
        x = torch.cat(self._acc)
        self._acc = None
        mean = x.mean(dim=self.reduce, keepdim=True)
        std = x.std(dim=self.reduce, keepdim=True).clamp(min=1e-6)
        self.mean.copy_(mean.view(self.mean.shape))
        self.std.copy_(std.view(self.std.shape))


@torch.no_grad()
def fit_input_statistics(model: nn.Module, batches: Callable[[], Iterable[tuple[torch.Tensor, ...]]]) -> int:
    """Fit every fitted module of ``model`` (``FittedStandardise``; anything with ``begin_fit``/``end_fit``) on
    batches of its inputs (raw image, calibration, wedge_mm) from training captures; returns how many captures
    were seen per pass (0: nothing to fit). Modules fit in the order of their ``fit_stage`` (default 1), one
    pass over ``batches()`` per stage: an earlier stage changes what a later one sees."""
    fittable = [m for m in model.modules() if callable(getattr(m, "begin_fit", None))]
    if not fittable:
        return 0
    was_training = model.training
    model.eval()
    seen = 0
    try:
        for stage in sorted({getattr(m, "fit_stage", 1) for m in fittable}):
            now = [m for m in fittable if getattr(m, "fit_stage", 1) == stage]
            for m in now:
                m.begin_fit()
            seen = 0
            try:
                for inputs in batches():
                    model(*inputs)
                    seen += len(inputs[0])
            finally:
                for m in now:
                    m.end_fit()
    finally:
        model.train(was_training)
    return seen
