"""A candidate on a machine with several devices trains on all of them: the retrain flow runs torchrun with
two CPU processes (gloo), as a flow-run pod given two GPUs runs it with NCCL."""

import json

import pytest

from alloynet.steps import Candidate
from tests.helpers.dummy import DummyCaptureStore

pytestmark = pytest.mark.slow

TINY = Candidate(name="tiny", overrides={"model.name": "fnn", "epochs": 1, "data.batch_size": 8, "data.norm_images": 8})


def test_retrain_with_two_processes_trains_one_ddp_model(prefect_harness, tmp_path):
    from flows.retrain import retrain

    with DummyCaptureStore(n_max=4, size=32, imbalance_ratio=2, seed=5, root=tmp_path / "data") as (store, _):
        out = retrain(
            str(store.root), str(tmp_path / "runs"), [TINY], force=True, device="cpu", record=False, processes=2
        )
    assert [t["name"] for t in out["trained"]] == ["tiny"] and out["failed"] == {}
    cand = tmp_path / "runs" / "candidates" / "tiny"
    assert json.loads((cand / "launch-result.json").read_text())["world_size"] == 2
    assert out["trained"][0]["checkpoint"] == str(cand / "best.pt") and (cand / "best.pt").exists()


def test_the_process_count_follows_the_visible_gpus_or_the_environment(monkeypatch):
    from alloynet.train.launch import PROCESSES_ENV, local_processes

    monkeypatch.delenv(PROCESSES_ENV, raising=False)
    assert local_processes("cpu") == 1
    monkeypatch.setenv(PROCESSES_ENV, "3")
    assert local_processes("cuda") == 3
    monkeypatch.setenv(PROCESSES_ENV, "two")
    with pytest.raises(ValueError, match="ALLOYNET_TRAIN_PROCESSES='two'"):
        local_processes()
