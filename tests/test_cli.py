"""The CLI as a user runs it (Typer's runner, in-process)."""
import json

from typer.testing import CliRunner

from alloynet.cli import app
from alloynet.data.manifest import read_manifest

runner = CliRunner()


def test_simulate_writes_store_manifest_and_summary(tmp_path):
    out = tmp_path / "ds"
    res = runner.invoke(app, ["simulate", "--out", str(out), "--n-max", "5", "--size", "32", "--seed", "2"])
    assert res.exit_code == 0, res.output
    df = read_manifest(out / "manifest.csv")
    assert "Al1050" in res.output and f"{len(df)} captures" in res.output
    assert (out / "captures" / f"{df.capture_id[0]}.json").exists() and any((out / "calibration").iterdir())


def test_simulate_rejects_bad_config(tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("n_max: 3\nthicknesses_mm: [-1]\n")
    res = runner.invoke(app, ["simulate", "--out", str(tmp_path / "x"), "--config", str(cfg)])
    assert res.exit_code != 0 and "thicknesses_mm" in str(res.exception)


def test_physics_commands(tmp_path):
    res = runner.invoke(app, ["physics", "transmission", "Al7075", "2.0"])
    assert res.exit_code == 0 and 0.9 < float(res.output) < 1.2
    out = tmp_path / "sep.json"
    res = runner.invoke(app, ["physics", "separability", "--size", "64", "--plates", "30", "--json", str(out)])
    assert res.exit_code == 0, res.output
    assert "Ceiling" in res.output and "Al5083 vs Al6082" in res.output
    assert 0.5 < json.loads(out.read_text())["ceiling_accuracy"] < 1.0


def test_ingest_and_quarantine_commands(tmp_path):
    src = tmp_path / "rig"
    assert runner.invoke(app, ["simulate", "--out", str(src), "--n-max", "3", "--size", "64", "--no-manifest"]).exit_code == 0
    victim = sorted((src / "captures").glob("*.json"))[0]
    victim.write_text("{broken")
    res = runner.invoke(app, ["ingest", str(src), str(tmp_path / "data")])
    assert res.exit_code == 0, res.output
    assert "1 quarantined" in res.output and "not valid JSON" in res.output
    res = runner.invoke(app, ["data", "quarantine", str(tmp_path / "data")])
    assert victim.stem in res.output and "1 quarantined" in res.output
    assert len(read_manifest(tmp_path / "data" / "manifest.csv")) > 0
