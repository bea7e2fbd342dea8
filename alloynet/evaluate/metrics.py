"""Classification and regression metrics in plain numpy (tests check them against scikit-learn).

Conventions (scikit-learn's, where it has one): undefined precision/recall/F1 (no predictions / no
support) count as 0; balanced accuracy averages recall over classes present in ``y_true``; macro-F1
averages over all K classes; ROC-AUC / average precision are one-vs-rest per class, macro-averaged over
classes with both positives and negatives; ECE uses 15 equal-width confidence bins.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """Counts, rows = true class, columns = predicted class."""
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(cm, (np.asarray(y_true, int), np.asarray(y_pred, int)), 1)
    return cm


def _div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = np.asarray(a, float), np.asarray(b, float)
    return np.divide(a, b, out=np.zeros_like(a), where=b > 0)


def _rankdata(x: np.ndarray) -> np.ndarray:
    """Average ranks (1-based), ties sharing their mean rank."""
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    ranks = np.empty(len(x), float)
    i = 0
    while i < len(x):
        j = i
        while j + 1 < len(x) and xs[j + 1] == xs[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def roc_auc(pos: np.ndarray, score: np.ndarray) -> float:
    """Binary ROC-AUC via the Mann-Whitney U statistic (ties count one half)."""
    pos = np.asarray(pos, bool)
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    r = _rankdata(np.asarray(score, float))
    return float((r[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def average_precision(pos: np.ndarray, score: np.ndarray) -> float:
    """sum_n (R_n - R_{n-1}) P_n over distinct score thresholds, high to low."""
    pos = np.asarray(pos, bool)
    if not pos.any():
        return float("nan")
    order = np.argsort(-np.asarray(score, float), kind="mergesort")
    s, p = np.asarray(score, float)[order], pos[order]
    last = np.r_[np.nonzero(np.diff(s))[0], len(s) - 1]  # last index of each distinct threshold
    tp = np.cumsum(p)[last]
    precision = tp / (last + 1)
    recall = tp / pos.sum()
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def expected_calibration_error(probs: np.ndarray, y_true: np.ndarray, bins: int = 15) -> float:
    conf = probs.max(1)
    correct = probs.argmax(1) == y_true
    edges = np.linspace(0, 1, bins + 1)
    idx = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, bins - 1)
    ece = 0.0
    for b in range(bins):
        m = idx == b
        if m.any():
            ece += m.mean() * abs(correct[m].mean() - conf[m].mean())
    return float(ece)


def class_groups(train_counts: Sequence[int]) -> dict[str, list[int]]:
    """Head / medium / tail: classes ranked by training count, split into three near-equal groups
    (5 classes: 2 head, 2 medium, 1 tail)."""
    order = np.argsort(-np.asarray(train_counts), kind="stable")
    return {name: [int(c) for c in g] for name, g in zip(("head", "medium", "tail"), np.array_split(order, 3))}


def classification_metrics(
    y_true: np.ndarray, probs: np.ndarray, class_names: Sequence[str], train_counts: Sequence[int] | None = None
) -> dict:
    """Everything the report needs from true labels and predicted probabilities [N, K]."""
    y_true = np.asarray(y_true, int)
    probs = np.asarray(probs, float)
    k = len(class_names)
    y_pred = probs.argmax(1)
    cm = confusion_matrix(y_true, y_pred, k)
    tp = np.diag(cm).astype(float)
    support, predicted = cm.sum(1), cm.sum(0)
    precision, recall = _div(tp, predicted), _div(tp, support)
    f1 = _div(2 * precision * recall, precision + recall)
    tn = len(y_true) - support - predicted + tp
    specificity = _div(tn, tn + predicted - tp)
    onehot = np.eye(k, dtype=bool)[y_true]
    auc = np.array([roc_auc(onehot[:, c], probs[:, c]) for c in range(k)])
    ap = np.array([average_precision(onehot[:, c], probs[:, c]) for c in range(k)])
    p_true = np.clip(probs[np.arange(len(y_true)), y_true], 1e-15, 1.0)
    out = {
        "n": int(len(y_true)),
        "accuracy": float(tp.sum() / max(len(y_true), 1)),
        "balanced_accuracy": float(recall[support > 0].mean()) if (support > 0).any() else float("nan"),
        "macro_f1": float(f1.mean()),
        "log_loss": float(-np.log(p_true).mean()),
        "roc_auc_macro": float(np.nanmean(auc)) if np.isfinite(auc).any() else float("nan"),
        "average_precision_macro": float(np.nanmean(ap)) if np.isfinite(ap).any() else float("nan"),
        "ece": expected_calibration_error(probs, y_true),
        "confusion_matrix": cm.tolist(),
        "per_class": {
            name: {
                "precision": float(precision[c]),
                "recall": float(recall[c]),
                "f1": float(f1[c]),
                "specificity": float(specificity[c]),
                "support": int(support[c]),
                "roc_auc": float(auc[c]),
                "average_precision": float(ap[c]),
            }
            for c, name in enumerate(class_names)
        },
    }
    if train_counts is not None:
        out["group_accuracy"] = {
            g: float(np.mean([recall[c] for c in cs if support[c] > 0]))
            if any(support[c] > 0 for c in cs)
            else float("nan")
            for g, cs in class_groups(train_counts).items()
        }
    return out


def regression_metrics(pred: np.ndarray, true: np.ndarray) -> dict:
    """MAE, RMSE and R^2 over the samples with a known truth (NaN where a capture has none, e.g. a lab's
    imported capture has no ``a0``); every value is NaN when no sample has one."""
    pred, true = np.asarray(pred, float), np.asarray(true, float)
    known = np.isfinite(true)
    if not known.any():
        return {"mae": float("nan"), "rmse": float("nan"), "r2": float("nan"), "n": 0}
    pred, true = pred[known], true[known]
    err = pred - true
    ss_tot = float(((true - true.mean()) ** 2).sum())
    return {
        "mae": float(np.abs(err).mean()),
        "rmse": float(np.sqrt((err**2).mean())),
        "r2": float(1 - (err**2).sum() / ss_tot) if ss_tot > 0 else float("nan"),
        "n": int(known.sum()),
    }
