"""`alloynet physics` end to end: a transmission and the physics bracket of a 64 px rig, written as JSON (the
bracket itself: tests/unit/physics/test_separability.py)."""

import json

from typer.testing import CliRunner

from alloynet.cli import app

runner = CliRunner()


def test_physics_commands(tmp_path):
    res = runner.invoke(app, ["physics", "transmission", "Al7075", "2.0"])
    assert res.exit_code == 0 and 0.9 < float(res.output) < 1.2
    out = tmp_path / "sep.json"
    res = runner.invoke(app, ["physics", "separability", "--size", "64", "--plates", "30", "--json", str(out)])
    assert res.exit_code == 0, res.output
    assert "Physics bracket" in res.output and "Al5083 vs Al6082" in res.output
    assert 0.5 < json.loads(out.read_text())["ceiling_accuracy"] < 1.0
