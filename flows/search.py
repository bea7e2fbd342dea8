"""Hyperparameter search as a Prefect flow: Optuna asks for trials in the flow; each trial runs as a task
(in this process) or, with ``deployment``, as a flow run on that deployment's work pool.

    python -m flows.search --store demo-data --trials 8                                  # tasks, SQLite
    python -m infra.stack up --postgres --workers 2 && python -m infra.stack deploy
    source .alloynet/stack/env.sh                                                        # ALLOYNET_OPTUNA_STORAGE
    python -m flows.search --store demo-data --trials 8 --deployment search-trial/one-trial-cpu \\
        --storage env:ALLOYNET_OPTUNA_STORAGE                                            # two workers, PostgreSQL

The study lives in an Optuna RDB storage: SQLite in ``out_dir`` by default (one machine), PostgreSQL
when several machines share it. The worker reads a trial's parameters from the storage and tells its
score back there; the budget is ``trials`` *complete* trials. A trial whose run crashed (its worker
died) is run again under the same number; one whose run failed is marked FAIL in the study and
another trial is asked for in its place. Re-running the same search resumes it: complete trials count,
and trials left running by a dead flow are adopted or run again.

Started twice on the same storage (two machines, or by mistake), the two launchers share the one budget
(``alloynet.study.search.SharedBudget``): together they run ``trials`` complete trials, each trial once,
and their samplers are seeded apart. A launcher's trials are re-run by another only once it stopped
(no heartbeat for ``lease_s``).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE

from alloynet.study.search import SearchConfig, SharedBudget, complete_trials, loss_params, run_trial, summarise
from alloynet.study.search import study_name as default_study_name
from flows.fanout import Dispatcher

TRIAL_DEPLOYMENT = "search-trial/one-trial-cpu"


@task(name="search-trial", cache_policy=NO_CACHE)
def trial_task(cfg: SearchConfig, number: int) -> float:
    return run_trial(cfg, number)


@flow(name="search-trial", retries=1, retry_delay_seconds=5, log_prints=True)
def search_trial(config: dict[str, Any], number: int) -> float:
    """One trial on whichever worker picked it up; its score goes to the study's storage."""
    value = run_trial(SearchConfig.model_validate(config), number)
    print(f"trial {number}: {value:.4f}")
    return value


def _fail(study, number: int) -> None:
    from optuna.trial import TrialState

    study.tell(number, state=TrialState.FAIL, skip_if_finished=True)


def _as_tasks(cfg: SearchConfig, budget: SharedBudget, poll_s: float, log) -> list[int]:
    """Batches of concurrent tasks in this flow run; returns the numbers of trials that failed."""
    failed: list[int] = []
    study = budget.study
    while len(complete_trials(study)) < cfg.trials and len(failed) < cfg.trials:
        slots = [s for s in (budget.reserve() for _ in range(cfg.parallel)) if s is not None]
        if not slots:
            time.sleep(poll_s)  # the rest of the budget is running under another launcher
            continue
        futures = [trial_task.submit(cfg, s.number) for s in slots]
        for s, fut in zip(slots, futures, strict=True):
            fut.wait()
            if fut.state.is_completed():
                log.info("trial %d%s: %s = %.4f", s.number, " (adopted)" * s.adopted, cfg.metric, fut.result())
            else:
                _fail(study, s.number)
                failed.append(s.number)
                log.warning("trial %d failed: %s", s.number, fut.state.message)
    return failed


def _on_pool(
    cfg: SearchConfig,
    budget: SharedBudget,
    deployment: str,
    attempts: int,
    job_variables: dict | None,
    poll_s: float,
    timeout_s: float | None,
    log,
) -> list[int]:
    """One flow run per trial on the deployment's work pool, ``parallel`` at a time."""
    failed: list[int] = []
    study = budget.study
    tag = f"alloynet-search:{cfg.study_name}"

    def key(number: int) -> str:
        return f"trial-{number:03d}"

    def params(number: int) -> dict:
        return {"config": cfg.model_dump(mode="json"), "number": number}

    with Dispatcher(
        deployment,
        job_variables=job_variables,
        tags=[tag],
        attempts=attempts,
        poll_s=poll_s,
        timeout_s=timeout_s,
        log=log.info,
    ) as d:
        while len(complete_trials(study)) < cfg.trials and len(failed) < cfg.trials and not d.timed_out:
            while len(d.in_flight()) < cfg.parallel and (slot := budget.reserve()) is not None:
                active = d.active_runs(tag) if slot.adopted else {}
                if key(slot.number) in active:  # its launcher stopped, its flow run did not: follow it
                    d.adopt(key(slot.number), params(slot.number), active[key(slot.number)])
                else:
                    job = d.submit(key(slot.number), params(slot.number))
                    budget.set_user_attr(slot.number, "flow_run_id", str(job.run_id))
            if not d.in_flight():
                time.sleep(poll_s)  # the rest of the budget is running under another launcher
                continue
            for job in d.wait():
                number = job.parameters["number"]
                trial = next(t for t in study.get_trials(deepcopy=False) if t.number == number)
                if trial.state.name == "COMPLETE":
                    log.info(
                        "trial %d: %s = %.4f with %s (worker %s)",
                        number,
                        cfg.metric,
                        trial.value,
                        trial.params,
                        job.workers[-1],
                    )
                else:
                    _fail(study, number)
                    failed.append(number)
                    log.warning(
                        "trial %d did not complete (%s: %s); asking for another", number, job.states[-1], job.message
                    )
    return failed


@flow(name="hyperparameter-search", log_prints=True)
def hyperparameter_search(
    store: str,
    out_dir: str = "runs/search",
    architecture: str = "profile_cnn",
    loss: str = "cb_focal",
    trials: int = 12,
    parallel: int = 2,
    seed: int = 0,
    train: dict[str, Any] | None = None,
    storage: str | None = None,
    study_name: str | None = None,
    deployment: str | None = None,
    attempts: int = 2,
    job_variables: dict[str, Any] | None = None,
    optimizers: list[str] | None = None,
    poll_s: float = 2.0,
    timeout_s: float | None = None,
    lease_s: float = 120.0,
) -> dict:
    """``trials`` complete trials of the search; ``deployment`` runs each on its work pool. ``lease_s``: how
    long another launcher of the same study waits for this one's heartbeat before re-running its trials."""
    loss_params(loss)  # an unknown loss fails here, before any trial is asked for or submitted
    log = get_run_logger()
    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    cfg = SearchConfig(
        store=str(Path(store).resolve()) if "://" not in store else store,
        out_dir=str(out),
        architecture=architecture,
        loss=loss,
        trials=trials,
        parallel=parallel,
        seed=seed,
        train=train or {},
        optimizers=optimizers or [],
        storage=storage or f"sqlite:///{out / 'optuna.db'}",
        study_name=study_name,
    )
    cfg = cfg.model_copy(update={"study_name": default_study_name(cfg)})
    if deployment and "@" in cfg.storage and not cfg.storage.startswith("env:"):
        log.warning("the storage URL carries credentials and travels as a flow parameter; prefer env:NAME")
    with SharedBudget(cfg, lease_s) as budget:
        study = budget.study
        log.info(
            "study %s (launcher %d): %d of %d trials already complete",
            cfg.study_name,
            budget.launcher,
            len(complete_trials(study)),
            trials,
        )
        failed = (
            _on_pool(cfg, budget, deployment, attempts, job_variables, poll_s, timeout_s, log)
            if deployment
            else _as_tasks(cfg, budget, poll_s, log)
        )
        if len(complete_trials(study)) < cfg.trials:
            raise RuntimeError(
                f"search stopped after {len(failed)} failed trials ({failed}) with "
                f"{len(complete_trials(study))} of {cfg.trials} complete"
            )
        result = summarise(study)
    result["study_name"] = cfg.study_name
    create_table_artifact(
        key="hyperparameter-search",
        table=result["trials"],
        description=f"{architecture} / {loss}: validation {cfg.metric} per trial; "
        f"best trial {result['best_trial']} ({result['best_value']:.4f})",
    )
    (out / "search.json").write_text(json.dumps(result, indent=1))
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
    p.add_argument("--epochs", type=int, default=None, help="epochs per trial (default: the training config's)")
    p.add_argument("--seed", type=int, default=0, help="seed of the sampler and of every trial's training")
    p.add_argument("--storage", default=None, help="Optuna storage URL or env:NAME (default: SQLite in --out-dir)")
    p.add_argument(
        "--deployment", default=None, help="run trials as flow runs of this deployment, e.g. " + TRIAL_DEPLOYMENT
    )
    a = p.parse_args()
    if a.epochs is not None and a.epochs < 1:
        p.error(f"--epochs must be >= 1, got {a.epochs}")
    try:
        loss_params(a.loss)  # here, before the flow (and Prefect's server) starts
    except ValueError as e:
        p.error(f"--loss: {e}")
    print(
        hyperparameter_search(
            a.store,
            a.out_dir,
            a.architecture,
            a.loss,
            a.trials,
            a.parallel,
            seed=a.seed,
            train={"epochs": a.epochs} if a.epochs is not None else None,
            storage=a.storage,
            deployment=a.deployment,
        )
    )
