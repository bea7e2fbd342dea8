"""Evaluation metrics against scikit-learn on random and adversarial (tied, missing-class) inputs."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn import metrics as skm

from alloynet.evaluate.metrics import (
    average_precision,
    class_groups,
    classification_metrics,
    confusion_matrix,
    expected_calibration_error,
    regression_metrics,
    roc_auc,
)

NAMES = ["Al1050", "Al2017", "Al5083", "Al6082", "Al7075"]


def _case(seed: int, n: int = 200, k: int = 5, round_to: int | None = None):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    logits = rng.normal(size=(n, k)) + 2.0 * np.eye(k)[y] * rng.random((n, 1))
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    if round_to is not None:  # coarse probabilities: many tied scores
        p = np.round(p, round_to)
        p = np.clip(p, 1e-3, None)
        p /= p.sum(1, keepdims=True)
    return y, p


@pytest.mark.parametrize("seed,round_to", [(0, None), (1, 1), (2, 2)])
def test_classification_metrics_match_sklearn(seed, round_to):
    y, p = _case(seed, round_to=round_to)
    pred = p.argmax(1)
    m = classification_metrics(y, p, NAMES)
    labels = list(range(5))
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
    assert m["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y, pred))
    assert m["macro_f1"] == pytest.approx(skm.f1_score(y, pred, average="macro", labels=labels, zero_division=0))
    assert m["log_loss"] == pytest.approx(skm.log_loss(y, p, labels=labels), rel=1e-6)
    assert m["confusion_matrix"] == skm.confusion_matrix(y, pred, labels=labels).tolist()
    prec, rec, f1, sup = skm.precision_recall_fscore_support(y, pred, labels=labels, zero_division=0)
    for c, name in enumerate(NAMES):
        pc = m["per_class"][name]
        assert (pc["precision"], pc["recall"], pc["f1"], pc["support"]) == pytest.approx(
            (prec[c], rec[c], f1[c], sup[c])
        )
        neg = y != c
        assert pc["specificity"] == pytest.approx(skm.recall_score(neg, pred != c))  # TN / (TN + FP)
        assert pc["roc_auc"] == pytest.approx(skm.roc_auc_score(y == c, p[:, c]))
        assert pc["average_precision"] == pytest.approx(skm.average_precision_score(y == c, p[:, c]))
    assert m["roc_auc_macro"] == pytest.approx(skm.roc_auc_score(y, p, multi_class="ovr", average="macro"))


@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")
def test_missing_class_and_zero_division_follow_sklearn():
    y = np.array([0, 0, 1, 1, 2, 2, 0, 1])  # classes 3 and 4 absent from y_true
    p = np.full((8, 5), 0.05)
    pred = np.array([0, 1, 1, 1, 0, 0, 3, 1])  # class 2 never predicted, class 3 predicted once (wrong)
    p[np.arange(8), pred] = 0.8
    m = classification_metrics(y, p, NAMES)
    assert m["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y, pred))
    assert m["macro_f1"] == pytest.approx(skm.f1_score(y, pred, average="macro", labels=range(5), zero_division=0))
    assert m["per_class"]["Al5083"]["precision"] == 0.0 and m["per_class"]["Al7075"]["support"] == 0
    assert np.isnan(m["per_class"]["Al7075"]["roc_auc"])  # no positives: undefined, left out of the macro mean
    present = [c for c in range(5) if (y == c).any()]
    assert m["roc_auc_macro"] == pytest.approx(np.mean([skm.roc_auc_score(y == c, p[:, c]) for c in present]))


def test_binary_curves_with_ties():
    pos = np.array([1, 0, 1, 1, 0, 0, 1, 0], bool)
    score = np.array([0.9, 0.9, 0.5, 0.5, 0.5, 0.1, 0.1, 0.0])
    assert roc_auc(pos, score) == pytest.approx(skm.roc_auc_score(pos, score))
    assert average_precision(pos, score) == pytest.approx(skm.average_precision_score(pos, score))


def test_confusion_ece_groups_regression():
    y, p = _case(3)
    assert (confusion_matrix(y, p.argmax(1), 5) == skm.confusion_matrix(y, p.argmax(1))).all()
    # Perfectly calibrated by construction: confidence 0.7 and 70 % correct in the only occupied bin.
    probs = np.tile([0.7, 0.3], (10, 1))
    assert expected_calibration_error(probs, np.array([0] * 7 + [1] * 3)) == pytest.approx(0.0)
    assert expected_calibration_error(probs, np.zeros(10, int)) == pytest.approx(0.3)
    assert class_groups([5, 50, 20, 2, 10]) == {"head": [1, 2], "medium": [4, 0], "tail": [3]}
    rng = np.random.default_rng(4)
    t, q = rng.random(50) * 5, rng.random(50) * 5
    r = regression_metrics(q, t)
    assert r["mae"] == pytest.approx(skm.mean_absolute_error(t, q))
    assert r["rmse"] == pytest.approx(np.sqrt(skm.mean_squared_error(t, q)))
    assert r["r2"] == pytest.approx(skm.r2_score(t, q))


def test_physics_share_separates_the_term_from_the_trunk():
    from alloynet.evaluate.report import physics_share

    y = np.array([0, 1, 2, 0, 1, 2])
    term = 2.0 * np.eye(3)[y]  # the term alone is always right (weight 2)
    trunk = np.eye(3)[[1, 1, 2, 1, 1, 2]] * 5.0  # the trunk alone misses both 0s
    share = physics_share({"y": y, "logits": trunk + term}, term, weight=2.0)
    assert share["term_alone"] == 1.0 and share["trunk_alone"] == pytest.approx(2 / 3)
    assert share["changed"] == 0.0  # the trunk's margin (5) outweighs the term's (2)
    share = physics_share({"y": y, "logits": trunk * 0.2 + term}, term, weight=2.0)
    assert share["changed"] == pytest.approx(2 / 6)  # now the term turns both 0s around
    assert physics_share({"y": y, "logits": trunk}, np.zeros((6, 3)), weight=0.0)["term_alone"] is None
