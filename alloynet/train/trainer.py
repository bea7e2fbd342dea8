"""The training recipe on one screen (``train``), in the style of torchvision's reference train.py.

Determinism: the model is initialised from ``seed``; every epoch re-seeds torch from (seed, epoch) and
the sampler and augmentation draw from (seed, epoch, index). A run resumed from the checkpoint of
epoch k therefore repeats epochs k+1.. exactly as the uninterrupted run would (on CPU; on GPU with
``deterministic: true``), given the same number of intra-op threads: float reductions are summed in a
different order with a different thread count.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Subset

from alloynet.console import make_console
from alloynet.data import CLASS_NAMES
from alloynet.data.manifest import dark_flat_levels, manifest_hash, manifest_path
from alloynet.data.synthetic import forward_rigs, synthetic_for
from alloynet.evaluate.baselines import dataset_arrays
from alloynet.evaluate.predict import predict
from alloynet.losses import MultiTaskLoss, create_loss
from alloynet.models import create_model
from alloynet.models.answer import MIN_REAL, OtherSession, recalibration_set, session_spread
from alloynet.models.architectures import takes_width
from alloynet.models.checkpoint import load_checkpoint, load_model, load_weights, save_checkpoint
from alloynet.models.norm import fit_input_statistics
from alloynet.models.physics_prior import physics_spec, table_wedges
from alloynet.physics.correction import (
    CV_BELOW,
    CorrectionChoice,
    apply_correction,
    choose_correction,
    choose_correction_cv,
    too_few,
)
from alloynet.physics.simulator import plate_rows
from alloynet.train.config import TrainConfig, resolve, save_config
from alloynet.train.data import RunData, build_data
from alloynet.train.distributed import DistEnv, cleanup, init_distributed
from alloynet.train.engine import train_one_epoch, validate
from alloynet.train.optim import EarlyStopping, Schedule, build_optimizer

console = make_console(stderr=True)
log = logging.getLogger("alloynet.train")
EpochCallback = Callable[[int, dict], None]


@dataclass
class TrainResult:
    checkpoint: Path  # best.pt: the model to evaluate, export or promote
    last_checkpoint: Path  # last.pt: full training state, for resuming
    out_dir: Path
    config_path: Path  # the resolved config, next to the checkpoints
    metrics: dict[str, float]  # validation metrics of the best epoch
    best_epoch: int
    epochs_run: int
    stopped_early: bool
    manifest_hash: str
    history: list[dict] = field(default_factory=list)


def seed_everything(seed: int, epoch: int = -1) -> None:
    s = (seed * 1_000_003 + epoch + 1) & 0x7FFFFFFF
    torch.manual_seed(s)
    random.seed(s)


def pick_device(name: str, env: DistEnv) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and env.enabled:
        return torch.device("cuda", env.local_rank)
    return torch.device(name)


def set_determinism(cfg: TrainConfig, device: torch.device) -> None:
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = not cfg.deterministic
        if cfg.deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True, warn_only=True)


def _model_spec(cfg: TrainConfig, data: RunData) -> dict[str, Any]:
    kwargs = dict(cfg.model.kwargs)
    if takes_width(cfg.model.name):
        kwargs.setdefault("width", data.image_size[1])
    return {
        "name": cfg.model.name,
        "num_classes": len(CLASS_NAMES),
        "in_channels": data.channels,
        "activation": cfg.model.activation,
        "dropout": cfg.model.dropout,
        "kwargs": kwargs,
        "preprocess": data.preprocess.config(),
        "class_names": list(CLASS_NAMES),
        "rig": data.rig.model_dump(),
        "coverage": cfg.answer.coverage,
        "target_stats": {k: list(v) for k, v in data.target_stats.items()},
        "physics": physics_spec(table_wedges(data.rigs), data.channels, data.image_size[1])
        if cfg.model.physics
        else None,
    }


def fit_physics(model: torch.nn.Module, cfg: TrainConfig, data: RunData) -> dict | None:
    """Tabulate the forward model for the data's rigs and thickness prior: the rig its simulated captures
    describe (``data.synthetic``: ``rig`` overrides, ``simulator: second_rig``, a ``rig_profile`` from
    ``alloynet rig fit``), which without any of these is the nominal rig of the sidecars; for the wedge
    sizes between the training ones (``table_wedges``) the nearest training wedge's rig with that wedge. The
    store's labelled captures then correct its mean profiles where the validation captures say that fits the rig
    better (``model.physics_correction``); returns what was decided (None when nothing was)."""
    wedges = model.physics.wedges_mm.tolist()
    rigs = forward_rigs(cfg.data.synthetic, data.rigs, wedges)
    choice: dict[str, Any] = {}

    def correct(observers: dict) -> dict:
        picked = physics_correction(observers, data, cfg.seed)
        start = "rig profile" if cfg.data.synthetic.rig_profile else None
        if start and picked.val_logloss:
            # A rig profile is fitted to references of one alloy, or to these same captures; the labelled plates
            # may still say the nominal forward model, corrected from them or not, describes this rig's alloys
            # better (on a rig the nominal model describes, a fit only adds its own noise). The same captures
            # score both starts (cross-validated or on the validation split), so the better one wins; a few
            # captures cannot say whether a forward model describes the rig (``decided``), but they can say
            # which start fits them better, a rig fitted to them weighed by its optimism.
            nominal_syn = cfg.data.synthetic.model_copy(update={"rig_profile": None})
            nominal = model.physics.observers(
                forward_rigs(nominal_syn, data.rigs, wedges),
                model.physics.full_prior(data.prior),
                CLASS_NAMES,
                seed=cfg.seed,
            )
            alt = physics_correction(nominal, data, cfg.seed)
            if alt.correction is not None and picked.correction is None:
                # the captures carry a correction (the nominal one's cleared its margin): the fitted start's
                # best correction competes with it on the same folds, not the fitted tables alone
                ungated = physics_correction(observers, data, cfg.seed, gate=False)
                if ungated.correction is not None and ungated.chosen_logloss < picked.chosen_logloss:
                    ungated.reason = (
                        f"{ungated.reason}, kept below its own margin as the nominal start's correction "
                        f"cleared its own ({alt.gain_z:.1f} sd)"
                    )
                    picked = ungated
            optimism = in_sample_optimism(cfg.data.synthetic.rig_profile)
            if alt.chosen_logloss < picked.chosen_logloss + optimism:
                fitted_here = f" + {optimism:.3f} for its fit to these captures" if optimism else ""
                alt.reason = (
                    f"the nominal forward model{' corrected from the captures' if alt.correction is not None else ''}"
                    f" fits them better than the rig profile's ({alt.chosen_logloss:.3f} against "
                    f"{picked.chosen_logloss:.3f}{fitted_here} log-loss): {alt.reason}"
                )
                picked, observers, start = alt, nominal, "nominal rig"
        choice.update(picked.summary())
        if start:
            choice["start"] = start
        return apply_correction(observers, picked.correction)

    model.physics.fit(
        rigs,
        data.prior,
        CLASS_NAMES,
        seed=cfg.seed,
        correct=correct if cfg.model.physics_correction and data.train.use_real else None,
        shape_wedges=list(data.rigs),
    )
    if choice:
        start = f" (forward model: {choice['start']})" if choice.get("start") else ""
        console.print(f"physics term: {choice['reason']}{start}")
    return choice or None


def in_sample_optimism(rig_profile: str | None) -> float:
    """How much better a rig profile fitted to the store's own labelled captures (``fit_rig_to_captures``)
    looks on them than on new ones, per capture in log-loss: its fitted parameters over its captures (the
    optimism of an in-sample log-likelihood, as in AIC). The cross-validation that compares it with the nominal
    start holds out plates from the correction, not from the rig fit. 0 for a profile fitted to references."""
    if not rig_profile:
        return 0.0
    from alloynet.physics.rig_profile import load_rig_profile

    fitted = load_rig_profile(rig_profile).fit.get("in_sample") or {}
    return float(fitted.get("parameters", 0)) / max(float(fitted.get("captures", 1)), 1.0)


CORRECTION_CAPTURES = 4000  # training captures (seeded choice) that fit the forward model's correction


def physics_correction(observers: dict, data: RunData, seed: int, gate: bool = True) -> CorrectionChoice:
    """Fit the forward model's correction on the store's labelled training captures and decide on the
    validation ones, or, with fewer than ``CV_BELOW`` of those, cross-validated over both by plate, the
    polynomial's degree chosen with the shrinkage (``alloynet.physics.correction``); simulated captures take
    no part."""

    def some(ds) -> list[int]:  # a seeded choice of at most CORRECTION_CAPTURES, in order
        gen = torch.Generator().manual_seed(seed)
        return torch.randperm(len(ds), generator=gen)[:CORRECTION_CAPTURES].sort().values.tolist()

    n_train, n_val = len(data.train.real), len(data.val)
    if n_val >= CV_BELOW:
        few = too_few(n_train, n_val)  # before decoding anything
        if few is not None:
            return few
    elif not n_train:
        return CorrectionChoice(None, None, val_captures=n_val, reason="no training captures: nominal tables")
    rows = plate_rows(data.rig)
    ti, vi = some(data.train.real), some(data.val)
    train = dataset_arrays(data.train.real, rows, ti)
    val = dataset_arrays(data.val, rows, vi)
    if n_val >= CV_BELOW:
        return choose_correction(observers, train, val, data.prior.bounds(), gate=gate)
    plates = data.train.real.rows.plate_id.to_numpy(str)[ti], data.val.rows.plate_id.to_numpy(str)[vi]
    return choose_correction_cv(observers, train, val, data.prior.bounds(), *plates, seed=seed, gate=gate)


def _check_resumable(ckpt: dict, cfg: TrainConfig) -> None:
    """Resuming under a different recipe would silently mix two runs; only ``epochs`` (and cosmetics) may change."""
    cosmetic = {"epochs", "progress", "out_dir"}
    old = {k: v for k, v in ckpt["config"].items() if k not in cosmetic}
    new = {k: v for k, v in cfg.model_dump(mode="json").items() if k not in cosmetic}
    if old != new:
        diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
        raise ValueError(f"cannot resume: the config differs from the checkpoint's in {diff}")


def _mm(v: float) -> str:
    return f"{v:.3f} mm" if v == v else "n/a"  # NaN: no validation capture has a thickness


def _log_epoch(epoch: int, cfg: TrainConfig, tr: dict, val: dict, lr: float) -> None:
    tasks = " ".join(f"{k} {tr[k]:.3f}" for k in ("alloy", "thickness_mm", "a0", "mu_eff") if k in tr)
    line = (
        f"epoch {epoch + 1}/{cfg.epochs}  loss {tr['loss']:.4f} ({tasks})  "
        f"val loss {val['loss']:.4f} bal_acc {val['balanced_accuracy']:.3f} acc {val['accuracy']:.3f} "
        f"f1 {val['macro_f1']:.3f} t_mae {_mm(val['thickness_mm_mae'])}  lr {lr:.2e}  "
        f"{tr['images_per_s']:.0f} img/s  {tr['seconds']:.1f}s"
    )
    console.print(line)
    log.info(line)  # also to `logging`, so an orchestrator (Prefect) can show training progress


@dataclass
class Run:
    """Everything one training run touches, built by ``setup``."""

    cfg: TrainConfig
    env: DistEnv
    device: torch.device
    data: RunData
    model: torch.nn.Module  # the plain model: state dicts and validation
    net: torch.nn.Module  # what the training step calls: DDP- and/or compile-wrapped model
    criterion: MultiTaskLoss
    optimizer: torch.optim.Optimizer
    schedule: Schedule
    early: EarlyStopping
    amp: bool
    channels_last: bool
    meta: dict[str, Any]
    # the training sessions' spread of spans (``session_spread``): what the physics term integrates a capture
    # sent without levels over, and what ``other_session`` moves spans by; read from the manifest once
    session_spread: float


def setup(cfg: TrainConfig) -> Run:
    env = init_distributed("cuda" if cfg.device in ("auto", "cuda") and torch.cuda.is_available() else "cpu")
    device = pick_device(cfg.device, env)
    set_determinism(cfg, device)
    seed_everything(cfg.seed)
    data = build_data(
        cfg.data,
        cfg.seed,
        env.rank,
        env.world_size,
        pin_memory=device.type == "cuda",
        log=console.print if env.is_main else None,
    )
    spec = _model_spec(cfg, data)
    extra = {"pretrained": cfg.model.pretrained} if cfg.model.pretrained else {}  # not in spec: needed once only
    model = create_model(
        spec["name"],
        spec["num_classes"],
        spec["in_channels"],
        data.preprocess,
        spec["activation"],
        data.target_stats,
        spec["dropout"],
        class_names=spec["class_names"],
        coverage=spec["coverage"],
        rig=spec["rig"],
        physics=spec["physics"],
        **spec["kwargs"],
        **extra,
    ).to(device)
    correction = fit_physics(model, cfg, data) if model.physics is not None else None
    spread = training_session_spread(data.manifest)
    if model.physics is not None:  # what a capture sent without its levels is marginalised over
        model.physics.span_sd.fill_(spread)
    model.open_beam.tolerance.fill_(cfg.answer.drift_tolerance)
    fit_input_statistics(model, lambda: _input_batches(data, cfg, device))
    if cfg.model.init_from:  # after the fit: a fine-tuned model keeps the input statistics it learned with
        loaded = load_weights(model, cfg.model.init_from)
        if env.is_main:
            console.print(f"starting from {cfg.model.init_from} ({len(loaded)} tensors)")
    criterion = MultiTaskLoss(
        create_loss(cfg.loss.name, data.class_counts, **cfg.loss.kwargs),
        data.target_stats,
        cfg.loss.task_weights,
        cfg.loss.weighting,
        cfg.loss.regression,
    ).to(device)
    channels_last = cfg.channels_last and device.type == "cuda" and cfg.model.name not in ("fnn", "profile_cnn")
    if channels_last:
        model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(cfg.optim, [model, criterion])
    schedule = Schedule(cfg.schedule, optimizer, len(data.train_loader), cfg.epochs, cfg.early_stop)
    net: torch.nn.Module = model
    if env.enabled:
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    if cfg.compile:
        net = torch.compile(net)
    meta = {
        "model_spec": spec,
        "config": cfg.model_dump(mode="json"),
        "class_names": list(CLASS_NAMES),
        "manifest_hash": manifest_hash(data.manifest),
        "image_size": data.image_size,
        "channels": data.channels,
        "arch": cfg.model.name,
        "class_counts": data.class_counts,
        "physics_correction": correction,
    }
    return Run(
        cfg,
        env,
        device,
        data,
        model,
        net,
        criterion,
        optimizer,
        schedule,
        EarlyStopping(cfg.early_stop),
        cfg.amp and device.type == "cuda",
        channels_last,
        meta,
        spread,
    )


def _input_batches(data: RunData, cfg: TrainConfig, device: torch.device):
    """Up to ``data.norm_images`` training captures (seeded choice, unaugmented), for the input statistics."""
    n = min(len(data.train), cfg.data.norm_images)
    idx = torch.randperm(len(data.train), generator=torch.Generator().manual_seed(cfg.seed))[:n].tolist()
    for x, cal, wedge, _ in DataLoader(Subset(data.train.unaugmented(), idx), batch_size=256):
        yield x.to(device), cal.to(device), wedge.to(device)


def restore(run: Run, path: Path) -> tuple[int, list[dict], dict, bool]:
    """Load training state; returns (epochs done, history, best, whether nothing is left to do)."""
    ckpt = load_checkpoint(path, map_location=run.device)
    _check_resumable(ckpt, run.cfg)
    run.model.load_state_dict(ckpt["model"])
    run.criterion.load_state_dict(ckpt["loss"])
    run.optimizer.load_state_dict(ckpt["optimizer"])
    run.schedule.load_state_dict(ckpt["scheduler"])
    run.early.load_state_dict(ckpt["early_stop"])
    done = bool(ckpt["stopped_early"]) or ckpt["epoch"] >= run.cfg.epochs
    if run.env.is_main:
        console.print(f"resuming {path} after epoch {ckpt['epoch']}")
    return int(ckpt["epoch"]), list(ckpt["history"]), dict(ckpt["best"]), done


def run_epoch(run: Run, epoch: int) -> tuple[dict, dict]:
    """One epoch of training and validation; every random draw is keyed by (seed, epoch)."""
    cfg = run.cfg
    seed_everything(cfg.seed, epoch)
    run.data.sampler.set_epoch(epoch)
    run.data.train.set_epoch(epoch)
    run.criterion.set_epoch(epoch)
    tr = train_one_epoch(
        run.net,
        run.criterion,
        run.optimizer,
        run.schedule,
        run.data.train_loader,
        run.device,
        amp=run.amp,
        channels_last=run.channels_last,
        clip_grad_norm=cfg.optim.clip_grad_norm,
        env=run.env,
        progress=cfg.progress,
        description=f"epoch {epoch + 1}/{cfg.epochs}",
    )
    val = validate(
        run.model,
        run.criterion,
        run.data.val_loader,
        run.device,
        run.data.class_counts,
        amp=run.amp,
        channels_last=run.channels_last,
    )
    if cfg.early_stop.metric not in val:
        raise KeyError(f"early_stop.metric {cfg.early_stop.metric!r} is not a validation metric: {sorted(val)}")
    run.schedule.step_epoch(val[cfg.early_stop.metric])
    return tr, val


def _save(run: Run, state: dict, improved: bool, out: Path) -> None:
    if improved:  # best.pt: model and metadata only, what evaluation, export and the registry need
        save_checkpoint(
            {k: v for k, v in state.items() if k not in ("optimizer", "scheduler", "early_stop")}, out / "best.pt"
        )
    save_checkpoint(state, out / "last.pt")


def fit_answer(run: Run, best: Path) -> dict:
    """Fit the best model's honest answers (temperature, conformal threshold, feature statistics, thickness
    range) on the recalibration half of the validation split (never used to pick the epoch), with held-out
    simulated captures joining temperature and threshold when training mixed some in or the simulator describes
    the rig (``held_out_simulated``) and the real ones agree (``recalibration_set``), and write them into
    ``best``. Idempotent: fitting reads the checkpoint's model."""
    ckpt = load_checkpoint(best, map_location=run.device)
    model = run.model
    model.load_state_dict(ckpt["model"])
    data, cfg = run.data, run.cfg.answer
    calib = DataLoader(data.recalibration, batch_size=run.cfg.data.eval_batch_size or 64)
    val = predict(model, calib, run.device, features=True)
    n = min(len(data.train), cfg.fit_images)
    idx = torch.randperm(len(data.train), generator=torch.Generator().manual_seed(run.cfg.seed))[:n].tolist()
    loader = DataLoader(Subset(data.train.unaugmented(), idx), batch_size=run.cfg.data.eval_batch_size or 64)
    tr = predict(model, loader, run.device, features=True)
    sim = held_out_simulated(run)
    logits, labels, chosen = recalibration_set(
        val["logits"], val["y"], sim and sim["logits"], sim and sim["y"], cfg.coverage, MIN_REAL
    )
    # held-out simulated captures that joined already make the set large; else the training captures, cross-fitted
    crossfit = cross_fitted(run, best) if not chosen["simulated"] else None
    if crossfit is not None:
        logits, labels, chosen = recalibration_set(
            np.concatenate([val["logits"], crossfit["logits"]]),
            np.concatenate([val["y"], crossfit["y"]]),
            sim and sim["logits"],
            sim and sim["y"],
            cfg.coverage,
            MIN_REAL,
        )
        chosen["cross_fitted"] = int(len(crossfit["y"]))
    summary = model.answer.fit(logits, labels, tr["features"], tr["y"], val["features"], data.train.thickness_mm)
    summary["calibration_set"] = chosen
    # captures sent without calibration or wedge size get their own temperature and set, fitted on the same kind
    # of set as if from sessions unseen: on the ~15 captures of a small recalibration half alone a 95 % threshold
    # is not finite and every such answer was all five alloys
    unseen = other_session(run, model, 0)
    withheld = predict(unseen, calib, run.device)
    w_logits, w_labels = withheld["logits"], withheld["y"]
    if crossfit is not None:
        w_logits = np.concatenate([w_logits, crossfit["withheld"]])
        w_labels = np.concatenate([w_labels, crossfit["y"]])
    w_logits, w_labels, w_chosen = recalibration_set(
        w_logits, w_labels, sim and sim["withheld"], sim and sim["y"], cfg.coverage, MIN_REAL
    )
    summary["without_calibration"] = model.answer.fit_missing(w_logits, w_labels)
    summary["without_calibration"]["calibration_set"] = w_chosen
    summary["without_calibration"]["session_spread"] = unseen.log_sd
    ckpt["model"] = model.state_dict()
    ckpt["answer"] = summary
    save_checkpoint(ckpt, best)
    return summary


class _Silent:
    def print(self, *args: Any, **kwargs: Any) -> None:
        pass


@contextlib.contextmanager
def _quiet():
    """The fold runs of ``cross_fitted`` without their epoch lines (the run they serve has printed its own)."""
    global console
    saved, console = console, _Silent()
    try:
        yield
    finally:
        console = saved


# The trunk's alloy logits are kept only when the validation captures say they help: the model's log-loss (each at
# its own best temperature) below the physics term's alone by this many paired standard errors. Two, not one: the
# selecting half of the validation split also picked the epoch, so the trunk's gain on it is optimistic, and with
# a lab's few plates a trunk no better than chance on its own passed one standard error and cost accuracy on fresh
# captures (docs/benchmarks.md, learning curve).
TRUNK_Z = 2.0


def gate_trunk(run: Run, best: Path) -> dict | None:
    """Turn the trunk's alloy logits off (its classifier's weights zeroed: the graph then answers with the physics
    term alone) unless the selecting half of the validation split finds the model better than the term alone
    (``TRUNK_Z``); written into ``best``. The regression heads and the features are untouched. Returns what was
    decided, or None for a model without the physics term."""
    model = run.model
    if getattr(model, "physics", None) is None:
        return None
    from scipy.special import log_softmax

    from alloynet.models.answer import fit_temperature

    ckpt = load_checkpoint(best, map_location=run.device)
    model.load_state_dict(ckpt["model"])
    terms: list[torch.Tensor] = []
    hook = model.physics.register_forward_hook(lambda _m, _i, o: terms.append(o[0].detach().float().cpu()))
    try:
        p = predict(model, DataLoader(run.data.val, batch_size=run.cfg.data.eval_batch_size or 64), run.device)
    finally:
        hook.remove()
    y, rows = np.asarray(p["y"], int), np.arange(len(p["y"]))

    def nll(z: np.ndarray) -> np.ndarray:
        z = np.asarray(z, np.float64)
        return -log_softmax(z / fit_temperature(z, y), axis=1)[rows, y]

    gain = nll(torch.cat(terms).numpy()) - nll(p["logits"])  # > 0 where the trunk helps
    z = float(gain.mean() / max(gain.std(ddof=1) / np.sqrt(len(gain)), 1e-12)) if len(gain) > 1 else 0.0
    keep = z >= TRUNK_Z
    summary = {"kept": keep, "gain": float(gain.mean()), "z": round(z, 2), "val_captures": int(len(y))}
    if not keep:
        for name in ("head.classifier.weight", "head.classifier.bias"):
            ckpt["model"][name] = torch.zeros_like(ckpt["model"][name])
        model.load_state_dict(ckpt["model"])
    ckpt["trunk"] = summary
    save_checkpoint(ckpt, best)
    return summary


def cross_fitted(run: Run, best: Path) -> dict | None:
    """Cross-fitted scores of the training captures, when the recalibration half of the validation split has fewer
    than ``answer.crossfit_below`` captures: the training plates dealt into ``answer.crossfit_folds`` folds
    (seeded), and for each a model trained by the same recipe without that fold, for as many epochs as this
    run's best, scores the fold's captures. Conformal sets on ~15 captures were all five alloys wide (a 95 %
    set needs about 40 scores to have a finite threshold); these scores are exchangeable with a new capture's
    up to the fold models having 1/k fewer captures, which errs toward wider sets. Returns {logits, y} or
    None."""
    cfg, data = run.cfg, run.data
    n_cal, below = len(data.recalibration), cfg.answer.crossfit_below
    train_rows = data.manifest[(data.manifest.split == "train") & data.manifest.labelled & (data.manifest.label >= 0)]
    if not below or n_cal >= below or cfg.data.synthetic_only or not len(train_rows) or run.env.enabled:
        return None
    from alloynet.data.dataset import CaptureDataset
    from alloynet.data.manifest import write_manifest

    plates = np.array(sorted(train_rows.plate_id.unique()))
    k = min(cfg.answer.crossfit_folds, len(plates))
    rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, 0xC5F]))
    fold_of = dict(zip(plates[rng.permutation(len(plates))], np.arange(len(plates)) % k))
    epochs = int(load_checkpoint(best)["epoch"])
    console.print(
        f"recalibration: {n_cal} validation captures < {below}: scoring the {len(train_rows)} training "
        f"captures cross-fitted ({k} folds by plate, {epochs} epochs each)"
    )
    logits, withheld, ys = [], [], []
    for f in range(k):
        out = Path(cfg.out_dir) / "crossfit" / f"fold-{f}"
        out.mkdir(parents=True, exist_ok=True)
        df = data.manifest.copy()
        held = (df.split == "train") & df.plate_id.map(lambda p, f=f: fold_of.get(p) == f).astype(bool)
        df.loc[held, "split"] = "crossfit"
        write_manifest(df, manifest_path(out))
        fold_cfg = cfg.model_copy(deep=True)
        fold_cfg.data.manifest, fold_cfg.out_dir, fold_cfg.epochs = str(out / "manifest.csv"), str(out), epochs
        fold_cfg.answer.crossfit_below, fold_cfg.progress, fold_cfg.pretrain = 0, False, None
        fold_cfg.early_stop.patience = epochs + 1  # the same number of epochs as the run it stands in for
        with _quiet():
            result = train(fold_cfg)
        ds = CaptureDataset(data.store, df, "crossfit", cache=False)
        model, _ = load_model(result.checkpoint, run.device)
        loader = DataLoader(ds, batch_size=cfg.data.eval_batch_size or 64)
        p = predict(model, loader, run.device)
        logits.append(p["logits"])
        withheld.append(predict(other_session(run, model, 1 + f), loader, run.device)["logits"])
        ys.append(p["y"])
    return {"logits": np.concatenate(logits), "y": np.concatenate(ys), "withheld": np.concatenate(withheld)}


def training_session_spread(manifest: pd.DataFrame) -> float:
    """``session_spread`` of the training split's levels."""
    dark, flat = dark_flat_levels(manifest[manifest.split == "train"])
    return session_spread(dark, flat)


def other_session(run: Run, model: torch.nn.Module, stream: int) -> OtherSession:
    """``model`` answering captures without their levels as if from sessions unseen, at the training captures'
    spread of spans (``session_spread``); ``stream`` keeps each use's draws apart, all seeded by the run."""
    seed = int(np.random.SeedSequence([run.cfg.seed, 0x5E5, stream]).generate_state(1)[0])
    return OtherSession(model, run.session_spread, seed)


def held_out_simulated(run: Run) -> dict | None:
    """Predictions (and ``withheld``: the logits as if sent without levels, ``other_session``) on
    ``answer.simulated`` held-out simulated captures of the training data's simulated rig (a round no epoch
    drew), when training mixed simulated captures in or the store's validation captures found the forward model
    describing the rig (the physics term's correction was weighed and not needed:
    ``describes_rig``); else None. A threshold fitted on the recalibration half alone (about 40 captures in the
    study) lands anywhere from 0.92 to 0.997 of 0.95; the agreement test still decides whether they join."""
    cfg = run.cfg
    wanted = cfg.data.synthetic.captures or describes_rig(run.meta.get("physics_correction"))
    n = cfg.answer.simulated if wanted else 0
    if not n or len(run.data.recalibration) < MIN_REAL:
        return None
    source = synthetic_for(
        cfg.data.synthetic.model_copy(update={"captures": n}),
        run.data.rigs,
        run.data.prior,
        CLASS_NAMES,
        cfg.seed,
        log=console.print,
        held_out=True,
    )
    loader = DataLoader(source, batch_size=cfg.data.eval_batch_size or 64)
    out = predict(run.model, loader, run.device)
    out["withheld"] = predict(other_session(run, run.model, 99), loader, run.device)["logits"]
    return out


def describes_rig(correction: dict | None) -> bool:
    """Whether the store's validation captures weighed the physics term's correction and kept the forward
    model's own tables (``alloynet.physics.correction``): the simulator's profiles fit the rig's captures."""
    return bool(correction and correction.get("decided") and not correction.get("corrected"))


def pretrain(cfg: TrainConfig, resume: bool = False) -> TrainConfig:
    """Sim-to-real, first half: train the same model on simulated captures only (``cfg.pretrain.synthetic``),
    into ``<out_dir>/pretrain``; returns the fine-tuning config, which starts from that run's best checkpoint
    at ``lr_factor`` times the learning rate (and keeps ``pretrain`` as a record of how it was made)."""
    p = cfg.pretrain
    out = Path(cfg.out_dir) / "pretrain"
    raw = cfg.model_dump(mode="json")
    raw.pop("pretrain")
    raw["data"].update(synthetic=p.synthetic.model_dump(mode="json"), synthetic_only=True)
    raw.update(epochs=p.epochs, out_dir=str(out))
    console.print(
        f"pretraining on {p.synthetic.captures} simulated captures for up to {p.epochs} epochs "
        f"({'rig profile ' + p.synthetic.rig_profile if p.synthetic.rig_profile else 'nominal rig'})"
    )
    result = train(TrainConfig.model_validate(raw), resume=resume)
    fine = cfg.model_copy(deep=True)
    fine.model.init_from = str(result.checkpoint)
    fine.optim.lr = cfg.optim.lr * p.lr_factor
    fine.epochs = p.finetune_epochs or cfg.epochs
    console.print(
        f"pretrained: best epoch {result.best_epoch}, val balanced accuracy "
        f"{result.metrics.get('balanced_accuracy', float('nan')):.3f}; fine-tuning on the store's captures "
        f"at lr {fine.optim.lr:.2e}"
    )
    return fine


RUN_RIG_PROFILE = "rig-profile.yaml"


def fit_rig_to_store(cfg: TrainConfig, dest: Path) -> str | None:
    """Where the store has no rig profile: the rig fitted to its labelled training captures
    (``data.rig_fit``), written to ``dest``; returns what it was fitted to, or None (with a line saying why)
    when it is not wanted or the captures cannot give a fit."""
    if cfg.data.rig_fit == "never":
        return None
    from alloynet.data.manifest import open_dataset
    from alloynet.data.rig_references import fit_rig_to_captures
    from alloynet.physics.detector import RigFitError
    from alloynet.physics.rig_profile import save_rig_profile

    store, manifest = open_dataset(
        cfg.data.store, cfg.data.manifest if cfg.data.manifest and Path(cfg.data.manifest).exists() else None
    )
    rows = manifest[manifest.labelled & (manifest.label >= 0) & (manifest.split == "train")]
    if cfg.data.rig_fit == "auto":
        # a simulator's captures (they carry its truth, a0) need no fit: the nominal forward model is that
        # simulator's own; a lab's captures beside them are what the rig is
        rows = rows[rows.a0.isna()]
    if rows.empty:
        return None
    try:
        _, profile = fit_rig_to_captures(store, rows, seed=cfg.seed, log=lambda m: console.print(f"rig fit: {m}"))
    except RigFitError as exc:
        console.print(f"physics term: no rig fit from the labelled captures ({exc}); the nominal rig")
        return None
    if int(os.environ.get("RANK", "0")) == 0 or not dest.is_file():
        save_rig_profile(profile, dest)
    return f"the store's {len(rows)} labelled training captures ({dest})"


def with_rig_profile(cfg: TrainConfig, resume: bool = False) -> TrainConfig:
    """``cfg`` with the physics term's forward model set from ``data.rig_profile`` (see its description). The
    run keeps a copy of the profile it used (``<out_dir>/rig-profile.yaml``, which evaluation, the ceiling and
    a resumed run read), so a rig profile added to the store later changes the next run, not this one."""
    syn = cfg.data.synthetic
    choice = cfg.data.rig_profile
    if syn.rig_profile or choice == "none" or syn.simulator != "alloynet":
        return cfg
    dest = Path(cfg.out_dir) / RUN_RIG_PROFILE
    if choice == "auto":
        if resume and dest.is_file():
            source = f"{dest} (this run's copy)"
        else:
            from alloynet.captures.rig_profiles import copy_rig_profile, newest_rig_profile
            from alloynet.captures.stores import open_store

            store = open_store(cfg.data.store)
            key = newest_rig_profile(store)
            if key is None:
                fitted = fit_rig_to_store(cfg, dest)
                if fitted is None:
                    return cfg
                source = fitted
            else:
                if int(os.environ.get("RANK", "0")) == 0 or not dest.is_file():
                    copy_rig_profile(store, key, dest)
                source = f"{cfg.data.store.rstrip('/')}/{key}"
    else:
        if not Path(choice).is_file():
            raise ValueError(f"data.rig_profile: {choice}: rig profile not found (alloynet rig fit writes one)")
        source, dest = choice, Path(choice)
    console.print(f"physics term: forward model of the rig fitted to {source}")
    out = cfg.model_copy(deep=True)
    out.data.synthetic.rig_profile = str(dest)
    return out


def train(config: TrainConfig, resume: bool = False, on_epoch_end: EpochCallback | None = None) -> TrainResult:
    """Train ``config``; with ``resume`` continue from ``<out_dir>/last.pt`` if it exists.

    ``on_epoch_end(epoch, checkpoint_state)`` runs after each epoch's checkpoint is written (tests use it
    to kill a run at a known point).
    """
    cfg = with_rig_profile(resolve(config), resume)
    if cfg.pretrain is not None and not cfg.model.init_from:
        cfg = pretrain(cfg, resume)
    out = Path(cfg.out_dir)
    run = setup(cfg)
    start, history, best, done = 0, [], {"epoch": 0, "metrics": {}}, False
    if resume and (out / "last.pt").exists():
        start, history, best, done = restore(run, out / "last.pt")
    if run.env.is_main:
        out.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out / "config.yaml")
    for epoch in range(start, start if done else cfg.epochs):
        tr, val = run_epoch(run, epoch)
        lr = run.optimizer.param_groups[0]["lr"]
        history.append(
            {
                "epoch": epoch + 1,
                "lr": lr,
                **{f"train_{k}": v for k, v in tr.items()},
                **{f"val_{k}": v for k, v in val.items()},
            }
        )
        improved = run.early.improved(val[cfg.early_stop.metric])
        if improved:
            best = {
                "epoch": epoch + 1,
                "metric": cfg.early_stop.metric,
                "value": val[cfg.early_stop.metric],
                "metrics": val,
            }
        state = {
            **run.meta,
            "model": run.model.state_dict(),
            "optimizer": run.optimizer.state_dict(),
            "scheduler": run.schedule.state_dict(),
            "loss": run.criterion.state_dict(),
            "early_stop": run.early.state_dict(),
            "epoch": epoch + 1,
            "metrics": val,
            "history": history,
            "best": best,
            "stopped_early": run.early.should_stop,
        }
        if run.env.is_main:
            _log_epoch(epoch, cfg, tr, val, lr)
            _save(run, state, improved, out)
            if on_epoch_end is not None:
                on_epoch_end(epoch + 1, state)
        if run.early.should_stop:
            if run.env.is_main:
                console.print(f"early stopping: no {cfg.early_stop.metric} gain for {run.early.bad_epochs} epochs")
            break
    if run.env.is_main:
        (out / "history.json").write_text(json.dumps(history, indent=1))
        if (out / "best.pt").exists():
            gate = gate_trunk(run, out / "best.pt")
            if gate is not None:
                console.print(
                    f"trunk: {'kept' if gate['kept'] else 'off, the physics term answers alone'} "
                    f"(validation log-loss gain {gate['gain']:+.3f}, {gate['z']:.1f} sd, need {TRUNK_Z:g})"
                )
            answer = fit_answer(run, out / "best.pt")
            used = answer["calibration_set"]
            sim = (
                f" and {used['simulated']} held-out simulated"
                if used["simulated"]
                else (
                    f" (held-out simulated captures left out: the real ones disagree, p = {used['agreement_p']:.3f})"
                    if "agreement_p" in used
                    else ""
                )
            )
            cross = used.get("cross_fitted", 0)
            real = f"{used['real'] - cross} validation and {cross} cross-fitted training" if cross else used["real"]
            console.print(
                f"recalibrated on {real} captures{sim}: temperature "
                f"{answer['temperature']:.3f}, conformal threshold {answer['qhat']:.3f} for "
                f"{answer['coverage']:.0%} coverage"
            )
    cleanup(run.env)
    return TrainResult(
        out / "best.pt",
        out / "last.pt",
        out,
        out / "config.yaml",
        dict(best.get("metrics", {})),
        int(best["epoch"]),
        len(history),
        run.early.should_stop,
        run.meta["manifest_hash"],
        history,
    )
