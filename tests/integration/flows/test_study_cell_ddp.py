"""A study cell on a machine with several devices trains on all of them: the ``study-cell`` flow (what a
worker runs for one cell) runs torchrun with two CPU processes (gloo), as a flow-run pod given two GPUs
(``gpu_count: 2``) runs it with NCCL."""

import json
import math
from pathlib import Path

import pytest

from alloynet.train.launch import PROCESSES_ENV

pytestmark = pytest.mark.slow


def _one_cell(tmp_path: Path) -> dict:
    return {
        "name": "ddp",
        "out_dir": str(tmp_path / "out"),
        "work_dir": str(tmp_path / "work"),
        "architectures": ["fnn"],
        "losses": [{"name": "ce"}],
        "imbalance_ratios": [1],
        "seeds": [0],
        "data": {"n_max": 4, "test_plates_per_class": 1, "captures_per_plate": 1, "rig": {"height": 32, "width": 32}},
        "train": {"epochs": 1, "data.batch_size": 8, "data.norm_images": 8},
        "ceiling_plates": 10,
    }


def test_a_study_cell_with_two_processes_trains_one_ddp_model(prefect_harness, tmp_path, monkeypatch):
    from alloynet.study import StudyConfig
    from alloynet.study.runner import cell_dir, finished_row
    from flows.study import study_cell

    config = _one_cell(tmp_path)
    cfg = StudyConfig.model_validate(config)
    (cell,) = cfg.cells()
    monkeypatch.setenv(PROCESSES_ENV, "2")  # what two visible GPUs would give
    row = study_cell(config, cell.model_dump(mode="json"))

    out = cell_dir(cfg, cell)
    launched = json.loads((out / "train" / "launch-result.json").read_text())
    assert launched["world_size"] == 2 and Path(launched["checkpoint"]).exists()
    assert json.loads((out / "result.json").read_text())["processes"] == 2
    assert 0.0 <= row["balanced_accuracy"] <= 1.0 and math.isfinite(row["thickness_mae_mm"])
    assert finished_row(cfg, cell) == row  # the cell is cached like any other: a re-run does not train it again
