"""How sure is a promotion? A seeded, stratified, paired bootstrap over the test captures.

The promotion rule compares two balanced accuracies measured on the same frozen, balanced test set. With
a few captures per class that difference is noisy: with 4 captures per class one capture moves a class's
recall by 0.25 and the balanced accuracy by 0.05. This module puts an interval on it.

* Paired: both models are resampled on the *same* captures (joined by ``capture_id`` from each
  evaluation's ``predictions.csv``), so what the captures have in common (hard plates, easy plates)
  cancels out of the difference.
* Stratified: each replicate redraws, with replacement, ``n_c`` captures within every true class ``c``,
  so the per-class counts (and the meaning of *balanced* accuracy) are those of the test set.
* Seeded: the same predictions and seed give the same interval.

Balanced accuracy is the mean over classes present in the test set of the per-class recall, as in
``alloynet.evaluate.metrics`` (scikit-learn's convention), so the point estimate equals metrics.json's.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

PREDICTIONS = "predictions.csv"


@dataclass
class Interval:
    """The challenger's balanced accuracy and, with a champion, the margin (challenger - champion)."""

    challenger: float
    challenger_low: float
    challenger_high: float
    n_per_class: dict[str, int]
    n_boot: int
    seed: int
    level: float
    champion: float | None = None
    margin: float | None = None
    margin_low: float | None = None
    margin_high: float | None = None
    p_not_better: float | None = None  # share of replicates in which the challenger does not win
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        n = ", ".join(f"{c} {k}" for c, k in self.n_per_class.items())
        pct = f"{100 * self.level:g}%"
        if self.margin is None:
            return (
                f"balanced accuracy {self.challenger:.3f} ({pct} CI {self.challenger_low:.3f} to "
                f"{self.challenger_high:.3f}; n per class: {n})"
            )
        return (
            f"margin {self.margin:+.3f} ({pct} CI {self.margin_low:+.3f} to {self.margin_high:+.3f}; n per class: {n})"
        )


def read_predictions(report_dir: str | Path) -> pd.DataFrame:
    """``predictions.csv`` of an evaluation folder (capture_id, true, predicted, p_<class>...)."""
    path = Path(report_dir) / PREDICTIONS
    if not path.exists():
        raise FileNotFoundError(f"{path}: no per-capture predictions (written by alloynet.evaluate.evaluate)")
    df = pd.read_csv(path, dtype={"capture_id": str, "true": str, "predicted": str})
    missing = {"capture_id", "true", "predicted"} - set(df.columns)
    if missing:
        raise ValueError(f"{path}: columns {sorted(missing)} missing (expected capture_id, true, predicted)")
    if df.capture_id.duplicated().any():
        raise ValueError(f"{path}: capture_id {df.capture_id[df.capture_id.duplicated()].iloc[0]!r} appears twice")
    return df


def balanced_accuracy(true: np.ndarray, predicted: np.ndarray) -> float:
    """Mean over the classes present in ``true`` of the recall."""
    true, predicted = np.asarray(true), np.asarray(predicted)
    classes = np.unique(true)
    return float(np.mean([(predicted[true == c] == c).mean() for c in classes])) if len(classes) else float("nan")


def _pair(challenger: pd.DataFrame, champion: pd.DataFrame) -> pd.DataFrame:
    a, b = set(challenger.capture_id), set(champion.capture_id)
    if a != b:
        only_a, only_b = sorted(a - b), sorted(b - a)
        raise ValueError(
            f"the two models were evaluated on different test captures: {len(only_a)} only in the "
            f"challenger's predictions (e.g. {only_a[:3]}), {len(only_b)} only in the champion's "
            f"(e.g. {only_b[:3]}); compare them on the same frozen test set"
        )
    m = challenger[["capture_id", "true", "predicted"]].merge(
        champion[["capture_id", "true", "predicted"]], on="capture_id", suffixes=("", "_champion")
    )
    bad = m[m.true != m.true_champion]
    if len(bad):
        raise ValueError(
            f"capture {bad.capture_id.iloc[0]!r}: true label {bad.true.iloc[0]!r} in the challenger's "
            f"predictions but {bad.true_champion.iloc[0]!r} in the champion's"
        )
    return m


def _replicates(correct: np.ndarray, groups: list[np.ndarray], n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """(n_boot, n_models) balanced accuracies: per class, ``n_c`` draws with replacement, the same draws
    for every model (``correct`` is (n_captures, n_models) booleans)."""
    recalls = []
    for idx in groups:
        draw = idx[rng.integers(0, len(idx), size=(n_boot, len(idx)))]  # (n_boot, n_c) capture indices
        recalls.append(correct[draw].mean(axis=1))  # (n_boot, n_models)
    return np.mean(recalls, axis=0)


def bootstrap_margin(
    challenger: pd.DataFrame,
    champion: pd.DataFrame | None = None,
    *,
    n_boot: int = 2000,
    seed: int = 0,
    level: float = 0.95,
) -> Interval:
    """Percentile intervals for the challenger's balanced accuracy and, given the champion's predictions
    on the same captures, for the margin challenger - champion (paired, stratified by true class)."""
    if not 0 < level < 1:
        raise ValueError(f"level {level}: expected a fraction between 0 and 1, e.g. 0.95")
    if n_boot < 100:
        raise ValueError(f"n_boot {n_boot}: use at least 100 replicates")
    m = _pair(challenger, champion) if champion is not None else challenger
    if m.empty:
        raise ValueError("no test captures to bootstrap over")
    true = m.true.to_numpy()
    cols = [m.predicted.to_numpy() == true]
    if champion is not None:
        cols.append(m.predicted_champion.to_numpy() == true)
    correct = np.stack(cols, axis=1)
    classes = sorted(set(true))
    groups = [np.nonzero(true == c)[0] for c in classes]
    reps = _replicates(correct, groups, n_boot, np.random.default_rng(seed))
    lo_q, hi_q = (1 - level) / 2, 1 - (1 - level) / 2
    point = np.mean([correct[g].mean(axis=0) for g in groups], axis=0)
    out = Interval(
        challenger=float(point[0]),
        challenger_low=float(np.quantile(reps[:, 0], lo_q)),
        challenger_high=float(np.quantile(reps[:, 0], hi_q)),
        n_per_class={c: int(len(g)) for c, g in zip(classes, groups)},
        n_boot=n_boot,
        seed=seed,
        level=level,
    )
    smallest = min(out.n_per_class.values())
    if smallest < 10:  # a percentile bootstrap of a few captures understates the spread it reports
        out.notes.append(
            f"only {smallest} test capture(s) in the smallest class: the interval is approximate and "
            "narrower than the truth" + (" (one capture per class cannot vary at all)" if smallest == 1 else "")
        )
    if champion is not None:
        diff = reps[:, 0] - reps[:, 1]
        out.champion = float(point[1])
        out.margin = float(point[0] - point[1])
        out.margin_low, out.margin_high = float(np.quantile(diff, lo_q)), float(np.quantile(diff, hi_q))
        out.p_not_better = float((diff <= 0).mean())
    return out
