"""Hyperparameter search: the search space follows the loss, and the sampler is seeded."""

import pytest

from alloynet.study.search import SearchConfig, loss_params, run_search


def test_searched_loss_parameters_follow_the_loss():
    assert loss_params("ce") == set()
    assert loss_params("focal") == {"gamma"}
    assert loss_params("cb_focal") == {"gamma", "beta"}
    with pytest.raises(ValueError, match="unknown loss 'nope'"):
        loss_params("nope")


def test_search_finds_the_optimum_of_a_known_score_and_is_seeded():
    def score(cfg, number, overrides):  # peaked at lr = 1e-3, gamma = 2
        import math

        return -abs(math.log10(overrides["optim.lr"]) + 3) - abs(overrides["loss.kwargs"]["gamma"] - 2) / 4

    cfg = SearchConfig(store="unused", loss="cb_focal", trials=30, parallel=3, seed=7)
    a, b = run_search(cfg, score), run_search(cfg, score)
    assert a == b
    assert abs(a["best_params"]["lr"] - 1e-3) / 1e-3 < 0.6 and abs(a["best_params"]["gamma"] - 2) < 1.0
    assert set(a["best_params"]) == {"lr", "weight_decay", "gamma", "beta"} and len(a["trials"]) == 30
