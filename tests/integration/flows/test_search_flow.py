"""The hyperparameter-search flow, really run by Prefect: trials as tasks, a table artifact, the best trial."""

import json

from tests.helpers.dummy import DummyCaptureStore


def test_search_flow_runs_trials_as_tasks(prefect_harness, tmp_path):
    from prefect.client.orchestration import get_client

    from flows.search import hyperparameter_search

    with DummyCaptureStore(n_max=4, size=32, imbalance_ratio=2, seed=5) as (store, _):
        result = hyperparameter_search(
            store=str(store.root),
            out_dir=str(tmp_path / "search"),
            architecture="fnn",
            loss="focal",
            trials=3,
            parallel=2,
            seed=0,
            train={"epochs": 1, "data.batch_size": 16},
        )
    assert len(result["trials"]) == 3 and 0.0 <= result["best_value"] <= 1.0
    assert set(result["best_params"]) == {"lr", "weight_decay", "gamma"}
    assert json.loads((tmp_path / "search" / "search.json").read_text())["best_trial"] == result["best_trial"]
    assert len(list((tmp_path / "search").glob("trial-*/best.pt"))) == 3

    import anyio

    async def artifact():
        async with get_client() as c:
            return await c.read_latest_artifacts()

    keys = [a.key for a in anyio.run(artifact)]
    assert "hyperparameter-search" in keys
