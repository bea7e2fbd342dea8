"""Live performance from verified captures, with honest intervals.

Only captures picked at random for verification estimate live accuracy without bias (the informative picks
are chosen for being hard). Accuracy and set coverage: Wilson score intervals; balanced accuracy (mean recall
over the classes present): a seeded percentile bootstrap over the verified captures. The coverage alarm is
stricter than the interval shown: at least ALARM_MIN_N plates, and the 99 % Wilson interval below target.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

Z95 = 1.959963984540054
Z99 = 2.5758293035489004
ALARM_MIN_N = 20  # fewer verified plates than this: their coverage is reported, never alarmed on


def wilson(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for k successes in n trials ((0, 1) when n is 0)."""
    if n <= 0:
        return 0.0, 1.0
    p = k / n
    d = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / d
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return max(0.0, centre - half), min(1.0, centre + half)


def balanced_accuracy(truth: Sequence[str], predicted: Sequence[str]) -> float:
    classes = sorted(set(truth))
    t, p = np.asarray(truth), np.asarray(predicted)
    return float(np.mean([np.mean(p[t == c] == c) for c in classes])) if classes else float("nan")


@dataclass
class Verified:
    """One verified capture: the lab's alloy and group beside what the line was told."""

    capture_id: str
    truth: str
    predicted: str
    prediction_set: list[str]
    truth_group: str
    predicted_group: str


@dataclass
class LivePerformance:
    n: int
    accuracy: float
    accuracy_interval: tuple[float, float]
    balanced_accuracy: float
    balanced_accuracy_interval: tuple[float, float]
    coverage: float
    coverage_interval: tuple[float, float]
    coverage_target: float | None
    coverage_below_target: bool  # n >= ALARM_MIN_N and the whole 99 % interval lies below the target
    heavy_as_light: int
    light_as_heavy: int
    test_figures: dict[str, Any] = field(default_factory=dict)  # the champion's held-out test figures

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def live_performance(
    verified: Sequence[Verified],
    coverage_target: float | None = None,
    test_figures: dict | None = None,
    n_boot: int = 2000,
    seed: int = 0,
) -> LivePerformance:
    n = len(verified)
    truth = [v.truth for v in verified]
    pred = [v.predicted for v in verified]
    hits = sum(t == p for t, p in zip(truth, pred))
    covered = sum(v.truth in v.prediction_set for v in verified)
    acc = hits / n if n else float("nan")
    bal = balanced_accuracy(truth, pred) if n else float("nan")
    bal_iv = (0.0, 1.0)
    if n:
        rng = np.random.default_rng(seed)
        t_a, p_a = np.asarray(truth), np.asarray(pred)
        boots = [balanced_accuracy(t_a[i], p_a[i]) for i in rng.integers(0, n, size=(n_boot, n))]
        bal_iv = (float(np.quantile(boots, 0.025)), float(np.quantile(boots, 0.975)))
    cov_iv = wilson(covered, n)
    return LivePerformance(
        n=n,
        accuracy=acc,
        accuracy_interval=wilson(hits, n),
        balanced_accuracy=bal,
        balanced_accuracy_interval=bal_iv,
        coverage=covered / n if n else float("nan"),
        coverage_interval=cov_iv,
        coverage_target=coverage_target,
        # the alarm asks more than the 95 % interval shown: the week's estimate is re-tested every night, and a
        # champion at its target must not alarm every few weeks
        coverage_below_target=bool(
            n >= ALARM_MIN_N and coverage_target is not None and wilson(covered, n, Z99)[1] < coverage_target
        ),
        heavy_as_light=sum(v.truth_group == "heavy" and v.predicted_group == "light" for v in verified),
        light_as_heavy=sum(v.truth_group == "light" and v.predicted_group == "heavy" for v in verified),
        test_figures=dict(test_figures or {}),
    )
