"""Hyperparameter search as a Prefect flow: each batch of Optuna trials runs as concurrent tasks.

    prefect deploy flows/search.py:hyperparameter_search -n search -p local-process   # then run it from the UI
    python -m flows.search --store demo-data --trials 8                                # or in-process

Optuna's ask/tell interface keeps the sampler in the flow and the training in the tasks, so the trials
can run on whatever the work pool provides (a process worker per GPU host, or the Kubernetes GPU pool).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE

from alloynet.study.search import SearchConfig, new_study, suggest, summarise, trial_score


@task(name="search-trial", cache_policy=NO_CACHE)
def trial_task(cfg: SearchConfig, number: int, overrides: dict[str, Any]) -> float:
    return trial_score(cfg, number, overrides)


@flow(name="hyperparameter-search", log_prints=True)
def hyperparameter_search(store: str, out_dir: str = "runs/search", architecture: str = "profile_cnn",
                          loss: str = "cb_focal", trials: int = 12, parallel: int = 2, seed: int = 0,
                          train: dict[str, Any] | None = None) -> dict:
    cfg = SearchConfig(store=store, out_dir=out_dir, architecture=architecture, loss=loss, trials=trials,
                       parallel=parallel, seed=seed, train=train or {})
    log = get_run_logger()
    study = new_study(cfg)
    while len(study.trials) < cfg.trials:
        batch = [study.ask() for _ in range(min(cfg.parallel, cfg.trials - len(study.trials)))]
        futures = [trial_task.submit(cfg, t.number, suggest(t, cfg)) for t in batch]
        for t, fut in zip(batch, futures):
            value = fut.result()
            study.tell(t, value)
            log.info("trial %d: %s = %.4f with %s", t.number, cfg.metric, value, t.params)
    result = summarise(study)
    create_table_artifact(key="hyperparameter-search", table=result["trials"],
                          description=f"{architecture} / {loss}: validation {cfg.metric} per trial; "
                                      f"best trial {result['best_trial']} ({result['best_value']:.4f})")
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    (Path(out_dir) / "search.json").write_text(json.dumps(result, indent=1))
    log.info("best %s = %.4f with %s", cfg.metric, result["best_value"], result["best_params"])
    return result


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--store", required=True)
    p.add_argument("--out-dir", default="runs/search")
    p.add_argument("--architecture", default="profile_cnn")
    p.add_argument("--loss", default="cb_focal")
    p.add_argument("--trials", type=int, default=12)
    p.add_argument("--parallel", type=int, default=2)
    a = p.parse_args()
    print(hyperparameter_search(a.store, a.out_dir, a.architecture, a.loss, a.trials, a.parallel))
