"""Population-based training (PBT; Jaderberg et al., 2017) with Ray Tune's ``PopulationBasedTraining``.

The seed study tuned its hyperparameter table this way: a population of trainings of one architecture
runs side by side; every ``interval`` epochs the members in the bottom ``quantile`` copy the weights
(and optimiser state) of a member in the top quantile and perturb its hyperparameters: learning rate
and weight decay scaled by 0.8 or 1.2 or resampled, the optimiser resampled. So the hyperparameters
evolve *during* training (a schedule, not one setting), on the budget of ``population x epochs`` epochs.

Ray Tune does the scheduling (exploit/explore, checkpoints, the population's bookkeeping); a member is
alloynet's own training loop (``alloynet.train.trainer.setup`` / ``run_epoch``), reporting its validation
metric after every epoch with its training state as a Tune checkpoint. ``run_pbt`` starts a local Ray
cluster in this process when none is running (127.0.0.1, OS-chosen ports, no dashboard, usage stats
off) and stops it at the end; with ``ray_address`` it joins a running cluster instead (``auto``: the
cluster of this node, ``ray://head:10001``: a remote one; see docs/cluster.md for a multi-node cluster).

    alloynet.study.pbt.run_pbt(PBTConfig(store="data/sim", population=4, epochs=12))
    python -m alloynet.study.pbt --store /data/sim --population 8 --epochs 12 --gpus-per-member 1 \
        --storage-path /data/pbt-checkpoints --ray-address auto

Resources: each member takes ``cpus_per_member`` CPUs and ``gpus_per_member`` GPUs (fractions share a
GPU; Ray sets each member's CUDA_VISIBLE_DEVICES, and the member trains on ``cuda`` when it has one).
Checkpoints: members hand weights to each other through Tune's ``storage_path``: ``<out_dir>/ray`` on
one machine (removed at the end), and on several nodes a path every node mounts (the shared volume) or
an ``s3://`` URI, given as ``storage_path`` and kept.

The member that ends best is written to ``<out_dir>/best.pt``: an alloynet checkpoint that
``alloynet evaluate`` and export read like any other. The validation split chooses; the test split is
never looked at. Needs the ``pbt`` extra (``pip install -e '.[pbt]'``: ray[tune]).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

OPTIMIZERS = ("adam", "sgd", "rmsprop")


class PBTConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    store: str = Field(..., description="capture store with manifest.csv (train/val splits are used)")
    out_dir: str = "runs/pbt"
    architecture: str = "profile_cnn"
    loss: str = "ce"
    loss_kwargs: dict[str, Any] = Field(default_factory=dict)
    population: int = Field(4, ge=2)
    epochs: int = Field(12, ge=1, description="epochs every member trains (the budget is population x epochs)")
    interval: int = Field(2, ge=1, description="epochs between exploit/explore steps")
    quantile: float = Field(0.25, gt=0, le=0.5, description="bottom fraction that copies the top fraction")
    resample_probability: float = Field(0.25, ge=0, le=1)
    optimizers: list[str] = Field(default_factory=lambda: list(OPTIMIZERS))
    lr: tuple[float, float] = (1e-4, 1e-2)
    weight_decay: tuple[float, float] = (1e-6, 1e-2)
    seed: int = 0
    metric: str = "balanced_accuracy"
    cpus: int | None = Field(None, description="CPUs of the local Ray cluster (default: all)")
    cpus_per_member: float = Field(1.0, gt=0)
    gpus_per_member: float = Field(0.0, ge=0, description="GPUs per member (0.5: two members share one)")
    storage_path: str | None = Field(
        None,
        description="where Tune keeps the members' checkpoints: a path "
        "every Ray node mounts or an s3:// URI; default <out_dir>/ray, removed",
    )
    ray_address: str | None = Field(
        None, description="join this Ray cluster (auto, ray://host:10001) instead of starting one in this process"
    )
    train: dict[str, Any] = Field(default_factory=dict, description="TrainConfig overrides for every member")


def initial_population(cfg: PBTConfig) -> list[dict[str, Any]]:
    """Each member's starting hyperparameters, drawn log-uniformly from the seed (reproducible)."""
    import math

    rng = random.Random(cfg.seed)
    log_draw = lambda lo, hi: math.exp(rng.uniform(math.log(lo), math.log(hi)))  # noqa: E731
    return [
        {
            "optimizer": cfg.optimizers[i % len(cfg.optimizers)],
            "lr": log_draw(*cfg.lr),
            "weight_decay": log_draw(*cfg.weight_decay),
        }
        for i in range(cfg.population)
    ]


def _train_config(cfg: PBTConfig, member: int, hp: dict[str, Any], out: str):
    from alloynet.train import load_config

    overrides = {
        **cfg.train,
        "model.name": cfg.architecture,
        "loss.name": cfg.loss,
        "loss.kwargs": cfg.loss_kwargs,
        "data.store": cfg.store,
        "seed": cfg.seed * 1000 + member,
        "epochs": cfg.epochs,
        "progress": False,
        "out_dir": out,
        # PBT owns the hyperparameters: no schedule of our own, no early stop
        "schedule.name": "none",
        "schedule.warmup_epochs": 0,
        "early_stop.patience": None,
        "optim.name": hp["optimizer"],
        "optim.lr": hp["lr"],
        "optim.weight_decay": hp["weight_decay"],
    }
    return load_config(None, overrides)


def _apply(optimizer, hp: dict[str, Any]) -> None:
    """Set the (perturbed) lr and weight decay on an optimiser restored from another member's state."""
    for group in optimizer.param_groups:
        group["lr"] = group["initial_lr"] = hp["lr"]
        if group.get("weight_decay", 0.0) > 0.0:  # biases and norms stay undecayed (optim.param_groups)
            group["weight_decay"] = hp["weight_decay"]


def member(config: dict[str, Any]) -> None:
    """One PBT member (a Ray Tune function trainable): train epoch by epoch from its checkpoint, if any
    (its own, or the one it copied from a better member), and report after every epoch."""
    from ray import tune

    from alloynet.models.checkpoint import load_checkpoint, save_checkpoint
    from alloynet.train.trainer import run_epoch, setup

    cfg = PBTConfig.model_validate(config["pbt"])
    hp = {k: config[k] for k in ("optimizer", "lr", "weight_decay")}
    trial = tune.get_context().get_trial_name()
    run = setup(_train_config(cfg, config["member"], hp, str(Path(cfg.out_dir) / "members" / trial)))  # not written
    start, history = 0, []
    ckpt = tune.get_checkpoint()
    if ckpt is not None:
        with ckpt.as_directory() as d:
            state = load_checkpoint(Path(d) / "state.pt")
        run.model.load_state_dict(state["model"])
        run.criterion.load_state_dict(state["loss"])
        if state["hparams"]["optimizer"] == hp["optimizer"]:  # a new optimiser starts without moments
            run.optimizer.load_state_dict(state["optimizer"])
        start, history = int(state["epoch"]), list(state["history"])
    _apply(run.optimizer, hp)
    for epoch in range(start, cfg.epochs):
        _, val = run_epoch(run, epoch)
        history.append({"epoch": epoch + 1, "trial": trial, **hp, cfg.metric: val[cfg.metric]})
        state = {
            **run.meta,
            "model": run.model.state_dict(),
            "optimizer": run.optimizer.state_dict(),
            "loss": run.criterion.state_dict(),
            "epoch": epoch + 1,
            "metrics": val,
            "hparams": hp,
            "history": history,
        }
        with tempfile.TemporaryDirectory() as d:
            save_checkpoint(state, Path(d) / "state.pt")
            tune.report(
                {cfg.metric: val[cfg.metric], "val_loss": val["loss"], "epoch": epoch + 1, **hp},
                checkpoint=tune.Checkpoint.from_directory(d),
            )


def member_resources(cfg: PBTConfig) -> dict[str, float]:
    """What Ray reserves for each member (``tune.with_resources``)."""
    res = {"cpu": cfg.cpus_per_member}
    if cfg.gpus_per_member:
        res["gpu"] = cfg.gpus_per_member
    return res


def _storage(cfg: PBTConfig, out: Path) -> tuple[str, bool]:
    """Tune's storage path and whether it is ours to remove at the end (the local default)."""
    if cfg.storage_path:
        return (cfg.storage_path if "://" in cfg.storage_path else str(Path(cfg.storage_path).resolve())), False
    return str(out / "ray"), True


def _start_local_ray(cfg: PBTConfig) -> str | None:
    """A local Ray cluster in this process unless one is running; its session directory if we started it."""
    import ray

    if ray.is_initialized():
        return None
    if cfg.ray_address:
        ray.init(
            address=cfg.ray_address, log_to_driver=False, runtime_env={"env_vars": {"RAY_USAGE_STATS_ENABLED": "0"}}
        )
        return ""  # joined, not started: disconnect at the end, nothing to remove
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no telemetry from any process Ray starts
    # address="local": always a new cluster, never one another user left on this machine. Ray chooses free
    # ports itself (0 = OS-assigned); its session files go to a short private directory (socket paths).
    session = tempfile.mkdtemp(prefix="ray-")
    ray.init(
        address="local",
        num_cpus=cfg.cpus,
        include_dashboard=False,
        log_to_driver=False,
        _node_ip_address="127.0.0.1",
        _temp_dir=session,
        runtime_env={"env_vars": {"RAY_USAGE_STATS_ENABLED": "0"}},
    )
    return session


def run_pbt(cfg: PBTConfig) -> dict[str, Any]:
    """Run the population; returns the best member's final hyperparameters, its validation metric, the
    hyperparameter schedule it inherited, the exploit steps, and where its checkpoint is."""
    import ray
    from ray import tune
    from ray.tune.schedulers import PopulationBasedTraining

    out = Path(cfg.out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    cfg = cfg.model_copy(update={"store": str(Path(cfg.store).resolve()) if "://" not in cfg.store else cfg.store})
    inits = initial_population(cfg)
    random.seed(cfg.seed)  # PBT's exploit/explore draws from Python's random module in this process
    scheduler = PopulationBasedTraining(
        time_attr="training_iteration",
        metric=cfg.metric,
        mode="max",
        perturbation_interval=cfg.interval,
        quantile_fraction=cfg.quantile,
        resample_probability=cfg.resample_probability,
        synch=True,
        hyperparam_mutations={
            "lr": tune.loguniform(*cfg.lr),
            "weight_decay": tune.loguniform(*cfg.weight_decay),
            "optimizer": list(cfg.optimizers),
        },
    )
    space = {
        "pbt": cfg.model_dump(mode="json"),
        "member": tune.grid_search(list(range(cfg.population))),
        **{
            k: tune.sample_from(lambda config, k=k: inits[config["member"]][k])
            for k in ("optimizer", "lr", "weight_decay")
        },
    }
    storage, ours = _storage(cfg, out)
    started = _start_local_ray(cfg)
    try:
        tuner = tune.Tuner(
            tune.with_resources(member, member_resources(cfg)),
            param_space=space,
            tune_config=tune.TuneConfig(scheduler=scheduler, reuse_actors=True),
            run_config=tune.RunConfig(
                name="pbt",
                storage_path=storage,
                verbose=0,
                stop={"training_iteration": cfg.epochs},
                checkpoint_config=tune.CheckpointConfig(num_to_keep=4),
            ),
        )
        grid = tuner.fit()
    finally:
        if started is not None:
            ray.shutdown()
        if started:
            shutil.rmtree(started, ignore_errors=True)
    errors = [str(r.error) for r in grid if r.error]
    if errors:
        raise RuntimeError(f"{len(errors)} PBT member(s) failed: {errors[0][:2000]}")
    best = grid.get_best_result(metric=cfg.metric, mode="max", scope="last")
    with best.checkpoint.as_directory() as d:
        from alloynet.models.checkpoint import load_checkpoint, save_checkpoint

        state = load_checkpoint(Path(d) / "state.pt")
    save_checkpoint({k: v for k, v in state.items() if k not in ("optimizer",)}, out / "best.pt")
    # "member" in a config only picks the starting point: an exploit copies the whole config, that too
    summary = {
        "best_value": float(best.metrics[cfg.metric]),
        "best_hparams": state["hparams"],
        "schedule": state["history"],
        "exploits": _exploits(Path(grid.experiment_path)),
        "initial": inits,
        "final": [
            {
                "trial": r.path.rsplit("/", 1)[-1],
                cfg.metric: float(r.metrics[cfg.metric]),
                **{k: r.config[k] for k in ("optimizer", "lr", "weight_decay")},
            }
            for r in grid
        ],
        "epochs_trained": cfg.population * cfg.epochs,
        "checkpoint": str(out / "best.pt"),
    }
    summary["storage_path"] = None if ours else storage
    (out / "pbt.json").write_text(json.dumps(summary, indent=1, default=float))
    if ours:
        shutil.rmtree(out / "ray", ignore_errors=True)  # every member's checkpoints: best.pt and pbt.json are kept
    return summary


def _exploits(experiment: Path) -> list[dict[str, Any]]:
    """Tune's log of exploit steps (pbt_global.txt, one JSON list a line: the member that copies, the member
    copied, their iterations, the copied member's config and the perturbed config the copy continues with)."""
    f = experiment / "pbt_global.txt"
    if not f.exists():
        return []
    steps = []
    for line in f.read_text().splitlines():
        target, clone, target_iter, clone_iter, copied, perturbed = json.loads(line)
        steps.append(
            {
                "trial": target,
                "copied": clone,
                "iteration": target_iter,
                "copied_iteration": clone_iter,
                "from": {k: copied[k] for k in ("optimizer", "lr", "weight_decay")},
                "to": {k: perturbed[k] for k in ("optimizer", "lr", "weight_decay")},
            }
        )
    return steps


def parse_args(argv: list[str] | None = None) -> PBTConfig:
    """``python -m alloynet.study.pbt``'s options as a PBTConfig (``--config`` YAML first, options over it)."""
    import argparse

    import yaml

    from alloynet.train import parse_override

    p = argparse.ArgumentParser(prog="python -m alloynet.study.pbt", description=__doc__.splitlines()[0])
    p.add_argument("--config", help="PBTConfig as YAML (options below override its fields)")
    p.add_argument("--store", help="capture store with manifest.csv")
    for name, kind in (
        ("out_dir", str),
        ("architecture", str),
        ("loss", str),
        ("population", int),
        ("epochs", int),
        ("interval", int),
        ("seed", int),
        ("cpus", int),
        ("cpus_per_member", float),
        ("gpus_per_member", float),
        ("storage_path", str),
        ("ray_address", str),
    ):
        p.add_argument(
            "--" + name.replace("_", "-"),
            dest=name,
            type=kind,
            default=None,
            help=PBTConfig.model_fields[name].description,
        )
    p.add_argument(
        "--train",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a TrainConfig override for every member, e.g. data.batch_size=64 (repeatable)",
    )
    a = p.parse_args(argv)
    raw: dict[str, Any] = {}
    if a.config:
        path = Path(a.config)
        if not path.is_file():
            p.error(f"--config {path}: no such file")
        raw = yaml.safe_load(path.read_text()) or {}
        if not isinstance(raw, dict):
            p.error(f"--config {path}: expected a mapping of PBTConfig fields, got {type(raw).__name__}")
    raw.update({k: v for k, v in vars(a).items() if k not in ("config", "train") and v is not None})
    for item in a.train:
        if "=" not in item:
            p.error(f"--train {item!r}: expected KEY=VALUE, e.g. data.batch_size=64")
        key, value = parse_override(item)
        raw.setdefault("train", {})[key] = value
    if "store" not in raw:
        p.error("--store (or store in --config) is required")
    return PBTConfig.model_validate(raw)


def main(argv: list[str] | None = None) -> None:
    summary = run_pbt(parse_args(argv))
    print(
        json.dumps(
            {k: summary[k] for k in ("best_value", "best_hparams", "checkpoint", "epochs_trained")},
            indent=1,
            default=float,
        )
    )


if __name__ == "__main__":
    main()
