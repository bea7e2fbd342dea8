"""What the study checks before anything is submitted, and what it writes when no cell finished."""

import json
from pathlib import Path

import pandas as pd
import pytest

from alloynet.study.config import LossSpec, StudyConfig


def test_a_bad_loss_fails_when_the_study_is_loaded_not_on_a_worker():
    with pytest.raises(ValueError, match=r"loss 'focal' with kwargs \{'gama': 2.0\}.*it takes \['gamma'"):
        StudyConfig(losses=[{"name": "focal", "kwargs": {"gama": 2.0}}])
    with pytest.raises(ValueError, match="loss 'focall' is not registered"):
        LossSpec(name="focall")
    assert LossSpec(name="cb_focal", kwargs={"beta": 0.999, "gamma": 1.0}).tag == "cb_focal"


def test_a_study_where_no_cell_finished_writes_every_output_saying_why(tmp_path):
    from alloynet.study.runner import write_outputs

    cfg = StudyConfig(out_dir=str(tmp_path / "out"), architectures=["fnn"], imbalance_ratios=[1.0], seeds=[0, 1])
    out = Path(cfg.out_dir)
    (out / "runs" / "old-cell").mkdir(parents=True)  # what an older, successful run left
    (out / "accuracy_vs_rho.png").write_bytes(b"old")
    failed = [{"cell": cfg.cells()[0].id, "reason": "crashed after 2 run(s): out of memory"}]
    write_outputs(cfg, pd.DataFrame(), Path("unused"), {}, lambda *_: None, failed)
    for name in ("results.md", "README.md"):
        text = (out / name).read_text()
        assert "no cell finished" in text and "crashed after 2 run(s): out of memory" in text
        assert "plots, per-run reports and ceilings are not written" in text
    csv = pd.read_csv(out / "results.csv")
    assert list(csv.status) == ["failed", "failed"]
    assert list(csv.error) == ["crashed after 2 run(s): out of memory", "no result"]
    assert json.loads((out / "study.json").read_text())["failed_cells"] == failed
    assert not (out / "runs").exists() and not (out / "accuracy_vs_rho.png").exists()
