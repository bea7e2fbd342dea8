"""Hyperparameter search (Optuna, TPE) over lr, weight decay and the loss parameters (gamma, beta).

The library part is pure: ``suggest`` turns an Optuna trial into TrainConfig overrides and ``trial_score``
trains one trial and returns its validation score. The Prefect flow ``flows/search.py`` uses Optuna's
ask/tell interface so that each batch of trials runs as concurrent Prefect tasks on a work pool;
``run_search`` runs the same loop in-process. The test split is never looked at during the search.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Optional

from pydantic import BaseModel, ConfigDict, Field


class SearchConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    store: str = Field(..., description="capture store with manifest.csv (train/val splits are used)")
    out_dir: str = "runs/search"
    architecture: str = "profile_cnn"
    loss: str = Field("cb_focal", description="loss name; gamma/beta are searched when the loss takes them")
    trials: int = Field(12, ge=1)
    parallel: int = Field(2, ge=1, description="trials per batch (concurrent tasks in the flow)")
    seed: int = 0
    metric: str = "balanced_accuracy"
    lr: tuple[float, float] = (1e-4, 1e-2)
    weight_decay: tuple[float, float] = (1e-6, 1e-2)
    gamma: tuple[float, float] = (0.0, 4.0)
    beta: list[float] = Field(default_factory=lambda: [0.9, 0.99, 0.999, 0.9999])
    train: dict[str, Any] = Field(default_factory=dict, description="TrainConfig overrides for every trial")


def loss_params(loss: str) -> set[str]:
    """Which of gamma/beta the registered loss accepts (read from its factory's signature)."""
    import inspect

    from alloynet import losses

    if loss not in losses.list_losses():
        raise ValueError(f"unknown loss {loss!r}; expected one of {losses.list_losses()}")
    factory = losses._LOSSES[loss]  # the registry maps names to factories; their keywords are the knobs
    return {"gamma", "beta"} & set(inspect.signature(factory).parameters)


def suggest(trial, cfg: SearchConfig) -> dict[str, Any]:
    """TrainConfig overrides for one Optuna trial."""
    kw: dict[str, Any] = {}
    params = loss_params(cfg.loss)
    if "gamma" in params:
        kw["gamma"] = trial.suggest_float("gamma", *cfg.gamma)
    if "beta" in params:
        kw["beta"] = trial.suggest_categorical("beta", cfg.beta)
    return {"optim.lr": trial.suggest_float("lr", *cfg.lr, log=True),
            "optim.weight_decay": trial.suggest_float("weight_decay", *cfg.weight_decay, log=True),
            "loss.name": cfg.loss, "loss.kwargs": kw}


def trial_score(cfg: SearchConfig, number: int, overrides: dict[str, Any]) -> float:
    """Train one trial; its score is the best validation ``metric`` (never the test split)."""
    from alloynet.train import load_config, train

    base = {**cfg.train, "model.name": cfg.architecture, "data.store": cfg.store, "seed": cfg.seed,
            "out_dir": str(Path(cfg.out_dir) / f"trial-{number:03d}"), "progress": False}
    result = train(load_config(None, {**base, **overrides}))
    return float(result.metrics[cfg.metric])


def new_study(cfg: SearchConfig):
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=cfg.seed))


def run_search(cfg: SearchConfig, score: Optional[Callable[[SearchConfig, int, dict], float]] = None) -> dict:
    """In-process search (the flow does the same with tasks); returns the best trial."""
    score = score or trial_score
    study = new_study(cfg)
    while len(study.trials) < cfg.trials:
        batch = [study.ask() for _ in range(min(cfg.parallel, cfg.trials - len(study.trials)))]
        for t in batch:
            study.tell(t, score(cfg, t.number, suggest(t, cfg)))
    return summarise(study)


def summarise(study) -> dict:
    best = study.best_trial
    return {"best_value": best.value, "best_params": best.params, "best_trial": best.number,
            "trials": [{"number": t.number, "value": t.value, **t.params} for t in study.trials]}
