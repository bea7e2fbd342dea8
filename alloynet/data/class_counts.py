"""Class counts of long-tailed data sets: how many samples each class gets, head to tail, for an imbalance
shape (the protocol of Cui et al. 2019 / Cao et al. 2019)."""

from __future__ import annotations

from typing import Literal

Imbalance = Literal["exponential", "step", "balanced"]


def class_counts(
    n_max: int,
    num_classes: int,
    imbalance_ratio: float = 100.0,
    imbalance: Imbalance = "exponential",
    step_fraction: float = 0.5,
) -> list[int]:
    """Samples per class from head (index 0) to tail.

    exponential: n_i = n_max * (1/rho)^(i/(C-1)); step: the first ``step_fraction`` of the classes get n_max,
    the rest n_max/rho; balanced: n_max each. Every class keeps at least one sample.
    """
    if n_max < 1 or num_classes < 1:
        raise ValueError(f"n_max and num_classes must be >= 1, got {n_max}, {num_classes}")
    if imbalance_ratio < 1:
        raise ValueError(f"imbalance_ratio must be >= 1, got {imbalance_ratio}")
    if imbalance == "balanced" or num_classes == 1:
        return [n_max] * num_classes
    if imbalance == "exponential":
        return [
            max(1, int(round(n_max * (1 / imbalance_ratio) ** (i / (num_classes - 1))))) for i in range(num_classes)
        ]
    if imbalance == "step":
        n_head = int(round(num_classes * step_fraction))
        return [n_max if i < n_head else max(1, int(round(n_max / imbalance_ratio))) for i in range(num_classes)]
    raise ValueError(f"unknown imbalance {imbalance!r}; expected exponential, step or balanced")
