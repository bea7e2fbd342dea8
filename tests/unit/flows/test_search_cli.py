"""`python -m flows.search` takes the trials' epochs and the seed; a bad epoch count or loss is refused up front."""

import subprocess
import sys

import pytest

from tests.helpers import ROOT


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "flows.search", *args], cwd=ROOT, capture_output=True, text=True, timeout=120
    )


def test_search_command_has_epochs_and_seed_and_checks_them():
    bad = _run("--store", "unused", "--seed", "3", "--epochs", "0")  # both options known; the count checked
    assert bad.returncode == 2 and "--epochs must be >= 1, got 0" in bad.stderr
    unknown = _run("--store", "unused", "--loss", "focall", "--trials", "1")
    assert unknown.returncode == 2 and "--loss: unknown loss 'focall'" in unknown.stderr


def test_the_flow_refuses_an_unknown_loss_before_any_trial_is_asked_for_or_submitted(tmp_path):
    from flows.search import hyperparameter_search

    with pytest.raises(ValueError, match="unknown loss 'focall'"):
        hyperparameter_search.fn(
            "unused", str(tmp_path / "search"), loss="focall", deployment="search-trial/one-trial-cpu"
        )
    assert not (tmp_path / "search").exists()  # no storage created, so no study and no flow run either
