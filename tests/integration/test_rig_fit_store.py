"""`alloynet rig fit STORE` keeps the rig profile in the store, where `train --store` finds it (issue 23)."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from alloynet.captures.rig_profiles import RIG_PROFILES, newest_rig_profile
from alloynet.captures.stores import LocalStore
from alloynet.data.rig_references import make_references
from alloynet.physics.rig_profile import load_rig_profile
from alloynet.physics.simulator import RigConfig


@pytest.fixture(scope="module")
def refs(tmp_path_factory):
    root = tmp_path_factory.mktemp("refs")
    make_references(
        LocalStore(root),
        RigConfig(height=32, width=32),
        simulator="second_rig",
        captures_per_plate=5,
        sessions=5,
        seed=1,
    )
    return root


def _cli(*args: str):
    from alloynet.cli import app

    return CliRunner().invoke(app, list(args))


def test_rig_fit_adds_the_profile_and_its_plot_to_the_store(refs, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # nothing is written to the working directory unless asked
    (refs / RIG_PROFILES).mkdir(exist_ok=True)
    (refs / RIG_PROFILES / "20200101T000000Z.yaml").write_text("an earlier rig fit: kept as it is\n")
    res = _cli("rig", "fit", str(refs), "--bins", "16", "--out", str(tmp_path / "copy.yaml"))
    assert res.exit_code == 0, res.output
    key = newest_rig_profile(LocalStore(refs))
    assert key is not None and key != f"{RIG_PROFILES}20200101T000000Z.yaml"
    assert f"{refs}/{key}" in " ".join(res.output.split())
    assert (refs / key.replace(".yaml", "-fit.png")).read_bytes()[:4] == b"\x89PNG"
    assert load_rig_profile(refs / key).calibrated
    assert (refs / RIG_PROFILES / "20200101T000000Z.yaml").read_text() == "an earlier rig fit: kept as it is\n"
    assert (tmp_path / "copy.yaml").read_text() == (refs / key).read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["copy-fit.png", "copy.yaml"]
