"""The paired, stratified bootstrap of the promotion margin: known answers, determinism, bad input."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from alloynet.evaluate.bootstrap import balanced_accuracy, bootstrap_margin, read_predictions
from alloynet.evaluate.metrics import classification_metrics

CLASSES = ["Al1050", "Al2017", "Al5083", "Al6082", "Al7075"]


def predictions(true: list[str], predicted: list[str], prefix: str = "c") -> pd.DataFrame:
    return pd.DataFrame(
        {"capture_id": [f"{prefix}{i:03d}" for i in range(len(true))], "true": true, "predicted": predicted}
    )


def balanced_test_set(n_per_class: int) -> list[str]:
    return [c for c in CLASSES for _ in range(n_per_class)]


def test_point_estimate_is_the_balanced_accuracy_of_the_metrics_module():
    rng = np.random.default_rng(4)
    y = rng.integers(0, 5, 60)
    y[y == 3] = 2  # a class absent from the test set does not count
    probs = rng.dirichlet(np.ones(5), 60)
    pred = probs.argmax(1)
    df = predictions([CLASSES[i] for i in y], [CLASSES[i] for i in pred])
    expected = classification_metrics(y, probs, CLASSES)["balanced_accuracy"]
    assert balanced_accuracy(df.true, df.predicted) == pytest.approx(expected, abs=1e-12)
    assert bootstrap_margin(df, n_boot=200).challenger == pytest.approx(expected, abs=1e-12)


def test_one_capture_better_known_answer():
    """4 captures per class; the champion misses one capture that the challenger gets right, otherwise both
    are perfect. Margin = 1/4 recall in one class / 5 classes = 0.05; a replicate shows no gain exactly
    when that capture is not among the class's 4 draws: (3/4)^4 = 0.316."""
    true = balanced_test_set(4)
    champ_pred = list(true)
    champ_pred[0] = "Al2017"
    est = bootstrap_margin(predictions(true, true), predictions(true, champ_pred), n_boot=4000, seed=1)
    assert est.margin == pytest.approx(0.05) and est.challenger == 1.0 and est.champion == pytest.approx(0.95)
    assert est.n_per_class == {c: 4 for c in CLASSES}
    assert est.p_not_better == pytest.approx(0.75**4, abs=0.03)  # 4000 draws: SE 0.007
    assert est.margin_low == 0.0  # 32 % of replicates show no gain
    # drawn 3+ times in 5.1 % of replicates, 4 times in 0.4 %: the 97.5th percentile is 3/4 recall / 5 classes
    assert est.margin_high == pytest.approx(0.15)
    assert any("smallest class" in n for n in est.notes)


def test_interval_width_matches_the_binomial_standard_error():
    """Large balanced set, recall 0.8 in every class: sd of balanced accuracy = sqrt(.8*.2/n)/sqrt(5)."""
    n = 200
    true = balanced_test_set(n)
    rng = np.random.default_rng(0)
    pred = []
    for i, c in enumerate(true):
        k = i % n
        pred.append(c if k < 0.8 * n else CLASSES[(CLASSES.index(c) + 1) % 5])
    est = bootstrap_margin(predictions(true, pred), n_boot=3000, seed=rng.integers(1000))
    sd = np.sqrt(0.8 * 0.2 / n) / np.sqrt(5)
    assert est.challenger == pytest.approx(0.8)
    assert (est.challenger_high - est.challenger_low) == pytest.approx(2 * 1.96 * sd, rel=0.12)
    assert est.margin is None and est.notes == []


def test_identical_models_have_a_zero_margin_and_never_win():
    true = balanced_test_set(6)
    pred = true[1:] + true[:1]
    est = bootstrap_margin(predictions(true, pred), predictions(true, pred), n_boot=500)
    assert (est.margin, est.margin_low, est.margin_high, est.p_not_better) == (0.0, 0.0, 0.0, 1.0)


def test_same_seed_same_interval_and_row_order_does_not_matter():
    rng = np.random.default_rng(2)
    true = balanced_test_set(8)
    a = [c if rng.random() < 0.7 else CLASSES[0] for c in true]
    b = [c if rng.random() < 0.6 else CLASSES[1] for c in true]
    ch, cp = predictions(true, a), predictions(true, b)
    first = bootstrap_margin(ch, cp, n_boot=1000, seed=7)
    assert bootstrap_margin(ch, cp, n_boot=1000, seed=7) == first
    shuffled = bootstrap_margin(ch, cp.sample(frac=1, random_state=3), n_boot=1000, seed=7)
    assert shuffled.margin == first.margin and shuffled.margin_low == first.margin_low
    assert bootstrap_margin(ch, cp, n_boot=1000, seed=8).p_not_better != first.p_not_better  # the seed is used


def test_different_test_captures_are_refused():
    true = balanced_test_set(2)
    with pytest.raises(ValueError, match="different test captures: 10 only in the challenger"):
        bootstrap_margin(predictions(true, true, "a"), predictions(true, true, "b"), n_boot=100)
    other = list(true)
    other[0] = "Al7075"
    with pytest.raises(ValueError, match="capture 'c000': true label 'Al1050'"):
        bootstrap_margin(predictions(true, true), predictions(other, other), n_boot=100)
    with pytest.raises(ValueError, match="level"):
        bootstrap_margin(predictions(true, true), level=95)


def test_read_predictions_names_the_file_and_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="predictions.csv"):
        read_predictions(tmp_path)
    (tmp_path / "predictions.csv").write_text("capture_id,true\nx,Al1050\n")
    with pytest.raises(ValueError, match=r"predictions.csv: columns \['predicted'\] missing"):
        read_predictions(tmp_path)
    (tmp_path / "predictions.csv").write_text("capture_id,true,predicted\n007,Al1050,Al1050\n007,Al1050,Al2017\n")
    with pytest.raises(ValueError, match="'007' appears twice"):
        read_predictions(tmp_path)
