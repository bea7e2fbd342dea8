"""The retrain flow's line on how each candidate's training ended."""

from __future__ import annotations

import json

import torch

from alloynet.models.checkpoint import FORMAT
from flows.retrain import training_story


def _run(tmp_path, best: int, ran: int, planned: int) -> dict:
    torch.save({"format": FORMAT, "epoch": best}, tmp_path / "best.pt")
    history = [{"epoch": n, "val_balanced_accuracy": 0.5 + (0.1 if n == best else 0.0)} for n in range(1, ran + 1)]
    (tmp_path / "history.json").write_text(json.dumps(history))
    return {
        "name": "profile-mlp",
        "checkpoint": str(tmp_path / "best.pt"),
        "out_dir": str(tmp_path),
        "config": {"epochs": planned, "early_stop": {"metric": "balanced_accuracy", "patience": ran - best}},
    }


def test_early_stop_says_when_why_and_which_epoch_won(tmp_path):
    line = training_story(_run(tmp_path, best=3, ran=15, planned=60))
    assert line == (
        "candidate profile-mlp: stopped early after epoch 15 of 60: no validation balanced_accuracy "
        "gain for 12 epochs (patience 12); best epoch 3 (validation balanced_accuracy 0.600) is the "
        "checkpoint kept"
    )


def test_a_full_run_says_so(tmp_path):
    line = training_story(_run(tmp_path, best=10, ran=10, planned=10))
    assert "trained all 10 epochs; best epoch 10" in line and "stopped early" not in line
