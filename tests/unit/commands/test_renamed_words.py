"""Old CLI spellings kept for one release after the overloaded words were renamed (issue 24): they do what the
new ones do, and say that they are renamed."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from alloynet.cli import app
from alloynet.data.manifest import read_manifest

runner = CliRunner()
SMALL = ["--n-max", "4", "--imbalance-ratio", "4", "--size", "16", "--seed", "5"]


def _counts(store) -> dict[str, int]:
    return read_manifest(store / "manifest.csv").groupby("alloy").plate_id.nunique().to_dict()


def test_simulate_profile_is_a_hidden_alias_of_imbalance(tmp_path):
    new = runner.invoke(app, ["simulate", "--out", str(tmp_path / "new"), "--imbalance", "step", *SMALL])
    old = runner.invoke(app, ["simulate", "--out", str(tmp_path / "old"), "--profile", "step", *SMALL])
    assert new.exit_code == 0 and old.exit_code == 0, (new.output, old.output)
    assert "--profile is renamed --imbalance" in old.stderr and "renamed" not in new.stderr
    assert _counts(tmp_path / "old") == _counts(tmp_path / "new")
    assert sorted(set(_counts(tmp_path / "new").values())) == [2, 5]  # step, not the default exponential

    res = runner.invoke(app, ["simulate", "--help"])
    assert "--imbalance " in res.output and "--profile" not in res.output

    res = runner.invoke(
        app, ["simulate", "--out", str(tmp_path / "x"), "--imbalance", "step", "--profile", "balanced", *SMALL]
    )
    assert res.exit_code == 2 and "--profile is the old name of --imbalance" in res.output
    assert not (tmp_path / "x").exists()


def test_a_config_with_the_old_key_simulates_the_same_set_with_a_warning(tmp_path):
    (tmp_path / "old.yaml").write_text("imbalance_ratio: 4\nprofile: balanced\n")
    (tmp_path / "new.yaml").write_text("imbalance_ratio: 4\nimbalance: balanced\n")
    args = ["--n-max", "3", "--size", "16", "--seed", "1"]
    with pytest.warns(FutureWarning, match=r"old.yaml: the field 'profile' is renamed 'imbalance'"):
        old = runner.invoke(app, ["simulate", "--out", str(tmp_path / "o"), "-c", str(tmp_path / "old.yaml"), *args])
    new = runner.invoke(app, ["simulate", "--out", str(tmp_path / "n"), "-c", str(tmp_path / "new.yaml"), *args])
    assert old.exit_code == 0 and new.exit_code == 0, (old.output, new.output)
    assert _counts(tmp_path / "o") == _counts(tmp_path / "n") and set(_counts(tmp_path / "n").values()) == {4}
    # an option still overrides the config's old key
    with pytest.warns(FutureWarning):
        res = runner.invoke(
            app,
            ["simulate", "--out", str(tmp_path / "s"), "-c", str(tmp_path / "old.yaml"), "--imbalance", "step", *args],
        )
    assert res.exit_code == 0, res.output
    assert len(set(_counts(tmp_path / "s").values())) == 2

    (tmp_path / "both.yaml").write_text("profile: balanced\nimbalance: step\n")
    res = runner.invoke(app, ["simulate", "--out", str(tmp_path / "b"), "-c", str(tmp_path / "both.yaml"), *args])
    assert res.exit_code == 2
    assert "both.yaml: imbalance: 'step' and profile: 'balanced' disagree" in " ".join(res.output.split())
