"""Captures a lab imports (TIFFs + a labels CSV: no a0, no mu_eff, sometimes no thickness) train with no config:
each task a capture has no truth for is masked per sample in the loss and the metrics, and a non-finite loss
stops training at once with one line naming the task and the likely cause."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from typer.testing import CliRunner

from alloynet.captures.stores import LocalStore
from alloynet.cli import app
from alloynet.data.manifest import read_manifest
from alloynet.train.engine import NonFiniteLoss
from tests.helpers.dummy import DummyCaptureStore
from tests.unit.train.lab import write_lab_folder

runner = CliRunner()
pytestmark = pytest.mark.usefixtures("one_thread")  # see tests/conftest.py


def _import(lab: Path, store: Path, size: int = 32):
    res = runner.invoke(
        app,
        [
            "import",
            str(lab / "labels.csv"),
            str(store),
            "--kvp",
            "50",
            "--wedge-mm",
            "50",
            "--accept-size",
            f"{size}x{size}",
        ],
    )
    assert res.exit_code == 0, res.output
    return read_manifest(store / "manifest.csv")


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    """A simulated store (50 and 70 mm wedges, the simulator's a0/mu_eff in its sidecars) and the same captures
    as a lab's TIFFs + labels CSV imported into another store (no a0/mu_eff)."""
    root = tmp_path_factory.mktemp("lab")
    with DummyCaptureStore(n_max=10, size=32, imbalance_ratio=2.0, wedges_mm=[50.0], root=root / "sim") as (st, _):
        write_lab_folder(st, root / "lab")
    _import(root / "lab", root / "store")
    return root


def test_imported_captures_have_no_simulator_truth(imported):
    df = read_manifest(imported / "store" / "manifest.csv")
    assert len(df) and df.a0.isna().all() and df.mu_eff_per_cm.isna().all() and df.thickness_mm.notna().all()


def test_train_with_no_config_on_imported_captures_trains_and_evaluates(imported, tmp_path):
    out = tmp_path / "run"
    res = runner.invoke(
        app, ["train", "--store", str(imported / "store"), "--epochs", "3", "--out", str(out), "--evaluate", "test"]
    )
    assert res.exit_code == 0, res.output
    assert "nan" not in res.output.split("best epoch")[0].lower().replace("t_mae n/a", ""), res.output
    m = json.loads((out / "report-test" / "metrics.json").read_text())
    assert m["balanced_accuracy"] is not None and m["a0_mae"] is None and m["thickness_mae_mm"] is not None
    assert m["set_size_mean"] is not None and m["set_coverage"] is not None


def test_a_mix_of_imported_and_simulated_captures_trains(imported, tmp_path):
    """One store holding both: the simulated captures' a0/mu_eff train those heads, the imported ones do not."""
    import shutil

    mixed = tmp_path / "mixed"
    shutil.copytree(imported / "store", mixed)
    for p in (imported / "sim" / "captures").iterdir():  # simulated captures under their own ids, images too
        if p.is_file():
            shutil.copy(p, mixed / "captures" / p.name)
    (mixed / "manifest.csv").unlink()
    from alloynet.data.manifest import refresh_manifest

    df, _ = refresh_manifest(LocalStore(mixed), 0)
    assert df.a0.isna().any() and df.a0.notna().any()
    out = tmp_path / "run"
    res = runner.invoke(app, ["train", "--store", str(mixed), "--epochs", "2", "--out", str(out), "--evaluate", "test"])
    assert res.exit_code == 0, res.output
    m = json.loads((out / "report-test" / "metrics.json").read_text())
    assert m["a0_mae"] is not None and math.isfinite(m["a0_mae"]) and m["balanced_accuracy"] is not None
    hist = json.loads((out / "history.json").read_text())
    assert all(math.isfinite(h["train_loss"]) and math.isfinite(h["train_a0"]) for h in hist)


def test_training_stops_at_a_non_finite_loss_with_one_line_and_no_traceback(imported, tmp_path):
    out = tmp_path / "run"
    res = runner.invoke(
        app,
        [
            "train",
            "--store",
            str(imported / "store"),
            "--epochs",
            "2",
            "--out",
            str(out),
            "--set",
            "optim.lr=1e30",
            "--set",
            "model.physics=false",
        ],
    )
    assert res.exit_code == 1, res.output
    lines = [ln for ln in res.output.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "non-finite" in lines[0] and "likely cause" in lines[0], res.output
    assert "Traceback" not in res.output and not isinstance(res.exception, NonFiniteLoss)
