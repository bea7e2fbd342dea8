"""Learning curves cover every trained epoch, not only those up to the checkpoint kept."""

from __future__ import annotations

import json

import matplotlib.image as mpimg
import numpy as np
import pytest

from alloynet.evaluate import plots
from alloynet.evaluate.report import _stopped_early, training_history


def _epoch(n: int) -> dict:
    return {
        "epoch": n,
        "lr": 0.01,
        "train_loss": 1.0 / n,
        "val_loss": 1.2 / n,
        "train_accuracy": 0.5 + n / 40,
        "val_accuracy": 0.4 + n / 40,
        "val_balanced_accuracy": 0.4 + n / 50,
    }


def test_history_json_beside_the_checkpoint_gives_every_epoch(tmp_path):
    full = [_epoch(n) for n in range(1, 14)]
    (tmp_path / "history.json").write_text(json.dumps(full))
    meta = {"history": full[:1], "epoch": 1, "config": {"epochs": 60}}
    history = training_history(tmp_path / "best.pt", meta)
    assert [h["epoch"] for h in history] == list(range(1, 14))
    assert _stopped_early(history, meta)
    assert not _stopped_early(history, {"config": {"epochs": 13}})


def test_checkpoint_history_kept_when_history_json_is_another_runs(tmp_path):
    (tmp_path / "history.json").write_text(json.dumps([_epoch(n) for n in range(5, 9)]))
    kept = [_epoch(1), _epoch(2)]
    assert training_history(tmp_path / "best.pt", {"history": kept}) == kept
    assert training_history(tmp_path / "elsewhere" / "best.pt", {"history": kept}) == kept


def test_broken_history_json_is_named(tmp_path):
    (tmp_path / "history.json").write_text("[{")
    with pytest.raises(ValueError, match="history.json"):
        training_history(tmp_path / "best.pt", {"history": []})


def test_marks_change_the_picture(tmp_path):
    history = [_epoch(n) for n in range(1, 14)]
    plain = mpimg.imread(plots.learning_curves(history, tmp_path / "plain.png"))
    marked = mpimg.imread(plots.learning_curves(history, tmp_path / "marked.png", best_epoch=3, stopped_early=True))
    assert plain.shape == marked.shape

    # the best-epoch line is purple and the early-stop line brown, colours no curve uses:
    # only the marked figure has them
    def has(img, rgb):
        return bool(np.any(np.all(np.abs(img[..., :3] - np.array(rgb)) < 0.05, axis=-1)))

    purple, brown = (0.580, 0.404, 0.741), (0.549, 0.337, 0.294)
    assert has(marked, purple) and has(marked, brown)
    assert not has(plain, purple) and not has(plain, brown)


def test_empty_history_is_refused(tmp_path):
    with pytest.raises(ValueError, match="at least one epoch"):
        plots.learning_curves([], tmp_path / "x.png")
