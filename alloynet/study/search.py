"""Hyperparameter search (Optuna, TPE) over lr, weight decay, the loss parameters (gamma, beta) and,
optionally, the optimiser.

The library part is pure: ``suggest`` turns an Optuna trial into TrainConfig overrides and ``trial_score``
trains one trial and returns its validation score. The Prefect flow ``flows/search.py`` uses Optuna's
ask/tell interface: the sampler stays in the flow, which asks for trials; each trial runs as a task, or as
a flow run on a work pool (``run_trial`` on the worker reads its parameters from the study's storage and
tells the result back to it). ``run_search`` runs the same loop in-process. The test split is never
looked at during the search.

Storage: ``storage`` is an Optuna RDB URL. SQLite (``sqlite:///runs/search/optuna.db``) is the one-machine
default of the flow; several workers on several machines share one study in PostgreSQL
(``postgresql://user:password@host:port/optuna``, see infra/postgres.py). ``env:NAME`` reads the URL from
the environment variable NAME wherever it is used, so a password never travels as a flow parameter.
"""
from __future__ import annotations

import hashlib
import os
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
    optimizers: list[str] = Field(default_factory=list, description="optimisers to choose from (empty: the arch's)")
    train: dict[str, Any] = Field(default_factory=dict, description="TrainConfig overrides for every trial")
    storage: Optional[str] = Field(None, description="Optuna storage URL or env:NAME; None: in memory")
    study_name: Optional[str] = Field(None, description="default: derived from the search space")


def resolve_storage(storage: Optional[str]) -> Optional[str]:
    """The storage URL itself: ``env:NAME`` is read from the environment (on whichever process uses it)."""
    if storage and storage.startswith("env:"):
        name = storage[4:]
        if not os.environ.get(name):
            raise ValueError(f"storage {storage!r}: environment variable {name} is not set on this machine "
                             f"(expected an Optuna storage URL such as postgresql://user:password@host:port/optuna)")
        return os.environ[name]
    return storage


def study_name(cfg: SearchConfig) -> str:
    """The study's name in its storage: given, or one per search space, so re-running the same search
    resumes it (its budget counts the trials already complete) and a changed one starts afresh."""
    if cfg.study_name:
        return cfg.study_name
    space = cfg.model_dump_json(exclude={"trials", "parallel", "storage", "study_name", "out_dir"})
    return f"{cfg.architecture}-{cfg.loss}-{hashlib.sha256(space.encode()).hexdigest()[:10]}"


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
    out = {"optim.lr": trial.suggest_float("lr", *cfg.lr, log=True),
           "optim.weight_decay": trial.suggest_float("weight_decay", *cfg.weight_decay, log=True),
           "loss.name": cfg.loss, "loss.kwargs": kw}
    if cfg.optimizers:
        out["optim.name"] = trial.suggest_categorical("optimizer", cfg.optimizers)
    return out


def trial_score(cfg: SearchConfig, number: int, overrides: dict[str, Any]) -> float:
    """Train one trial; its score is the best validation ``metric`` (never the test split)."""
    from alloynet.train import load_config, train

    base = {**cfg.train, "model.name": cfg.architecture, "data.store": cfg.store, "seed": cfg.seed,
            "out_dir": str(Path(cfg.out_dir) / f"trial-{number:03d}"), "progress": False}
    result = train(load_config(None, {**base, **overrides}))
    return float(result.metrics[cfg.metric])


def new_study(cfg: SearchConfig):
    """Create the study, or load it from ``cfg.storage`` when it exists (a resumed or shared search)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=cfg.seed),
                               storage=resolve_storage(cfg.storage), study_name=study_name(cfg), load_if_exists=True)


def complete_trials(study) -> list:
    from optuna.trial import TrialState

    return study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))


def ask(study, cfg: SearchConfig):
    """A new trial with its parameters drawn (and so recorded in the storage, where workers read them)."""
    trial = study.ask()
    suggest(trial, cfg)
    return trial


def run_trial(cfg: SearchConfig, number: int) -> float:
    """Run trial ``number`` of the study in ``cfg.storage`` and tell its score to the storage (what a worker
    does). Its parameters come from the storage, so the flow run carries only the trial's number. A trial
    already complete (its run was submitted again after a crash) returns its value without training."""
    import optuna
    from optuna.trial import FixedTrial, TrialState

    if not cfg.storage:
        raise ValueError("run_trial needs the study's storage (SearchConfig.storage)")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name=study_name(cfg), storage=resolve_storage(cfg.storage))
    trial = next((t for t in study.get_trials(deepcopy=False) if t.number == number), None)
    if trial is None:
        raise ValueError(f"study {study.study_name!r} has no trial {number}")
    if trial.state == TrialState.COMPLETE:
        return float(trial.value)
    if trial.state != TrialState.RUNNING:
        raise RuntimeError(f"trial {number} of {study.study_name!r} is {trial.state.name}, not RUNNING")
    value = trial_score(cfg, number, suggest(FixedTrial(trial.params, number), cfg))
    study.tell(number, value, skip_if_finished=True)
    return value


def run_search(cfg: SearchConfig, score: Optional[Callable[[SearchConfig, int, dict], float]] = None) -> dict:
    """In-process search (the flow does the same with tasks or flow runs); returns the best trial.
    The budget is ``cfg.trials`` complete trials, those of a resumed study included."""
    score = score or trial_score
    study = new_study(cfg)
    while (done := len(complete_trials(study))) < cfg.trials:
        batch = [study.ask() for _ in range(min(cfg.parallel, cfg.trials - done))]
        for t in batch:
            study.tell(t, score(cfg, t.number, suggest(t, cfg)))
    return summarise(study)


def summarise(study) -> dict:
    """The best complete trial and every trial (failed ones with their state, so none goes missing)."""
    best = study.best_trial
    out = {"best_value": best.value, "best_params": best.params, "best_trial": best.number,
           "trials": [{"number": t.number, "value": t.value, **t.params} for t in complete_trials(study)]}
    failed = [{"number": t.number, "state": t.state.name, **t.params} for t in study.get_trials(deepcopy=False)
              if t.state.name != "COMPLETE"]
    if failed:
        out["not_complete"] = failed
    return out
