"""A lab's first day end to end: TIFFs + a labels CSV -> `alloynet import` -> `alloynet train --store` with no
config -> `alloynet evaluate` -> `alloynet package triton` and `package torchserve` (export and parity checks)."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from alloynet.cli import app
from tests.helpers.dummy import DummyCaptureStore
from tests.unit.train.lab import write_lab_folder

runner = CliRunner()
# training with cross-fitted calibration (five fold models), export with parity checks and two packages
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]


def _ok(args: list[str]) -> str:
    res = runner.invoke(app, [str(a) for a in args])
    assert res.exit_code == 0, res.output
    return res.output


def test_imported_tiffs_train_evaluate_and_package_with_no_config(tmp_path):
    with DummyCaptureStore(n_max=10, size=64, imbalance_ratio=2.0, root=tmp_path / "sim") as (st, _):
        csv = write_lab_folder(st, tmp_path / "lab")
    store, run = tmp_path / "store", tmp_path / "run"
    _ok(["import", csv, store, "--kvp", "50"])
    _ok(["train", "--store", store, "--epochs", "3", "--out", run])
    _ok(["evaluate", run / "best.pt", "--gradcam", "0"])
    m = json.loads((run / "report-test" / "metrics.json").read_text())
    assert m["balanced_accuracy"] is not None and m["a0_mae"] is None and m["mu_eff_mae"] is None
    _ok(["package", "triton", "--out", tmp_path / "triton", "--checkpoint", run / "best.pt"])
    _ok(["package", "torchserve", "--out", tmp_path / "ts", "--checkpoint", run / "best.pt"])
    assert list((tmp_path / "ts").glob("*.mar"))
