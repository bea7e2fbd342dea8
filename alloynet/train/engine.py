"""One training epoch and one validation pass (the inner loops of ``alloynet.train.trainer``)."""

from __future__ import annotations

import time

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from alloynet.data import CLASS_NAMES
from alloynet.evaluate.metrics import classification_metrics, regression_metrics
from alloynet.evaluate.predict import autocast, predict
from alloynet.losses import MultiTaskLoss
from alloynet.models.heads import REGRESSION_TARGETS
from alloynet.train.distributed import DistEnv, all_reduce_grads
from alloynet.train.optim import Schedule


def _progress(enabled: bool, total: int, description: str):
    if not enabled:
        return None
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    bar = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[info]}"),
        transient=True,
    )
    bar.start()
    bar.add_task(description, total=total, info="")
    return bar


class NonFiniteLoss(RuntimeError):
    """Training stopped at a non-finite loss; the message is one line: the task, the batch and the likely cause."""


def diagnose_non_finite(
    parts: dict[str, torch.Tensor],
    out: dict[str, torch.Tensor],
    x: torch.Tensor,
    cal: torch.Tensor,
    lr: float,
    where: str,
) -> str:
    """One line naming the first non-finite task and what most likely made it so, for ``NonFiniteLoss``."""
    bad = [t for t, v in parts.items() if not bool(torch.isfinite(v).all())] or ["total"]
    task = bad[0]
    span = cal[..., 1] - cal[..., 0]
    if not bool(torch.isfinite(x).all()):
        cause = "the batch holds non-finite pixels (a damaged image?): run `alloynet data validate`"
    elif not bool(torch.isfinite(cal).all()) or bool((span <= 0).any()):
        cause = (
            "a capture's levels have flat <= dark or a non-finite value: check its dark/flat levels "
            "(import --dark-level/--flat-level or the labels CSV's dark/flat columns)"
        )
    elif all(bool(torch.isfinite(v).all()) for v in out.values() if torch.is_tensor(v) and v.is_floating_point()):
        cause = (
            f"the {task} loss overflowed on finite outputs: its targets may be out of scale; set "
            f"loss.task_weights.{task}=0 to train without it"
        )
    else:
        cause = f"the model's outputs diverged at learning rate {lr:.2e}: lower optim.lr or set optim.clip_grad_norm"
    return f"training stopped: non-finite {task} loss at {where}; likely cause: {cause}"


def train_one_epoch(
    model: nn.Module,
    criterion: MultiTaskLoss,
    optimizer: torch.optim.Optimizer,
    schedule: Schedule,
    loader: DataLoader,
    device: torch.device,
    *,
    amp: bool = False,
    channels_last: bool = False,
    clip_grad_norm: float | None = None,
    env: DistEnv = DistEnv(),
    progress: bool = False,
    description: str = "train",
) -> dict[str, float]:
    """Returns mean loss (total and per task), training accuracy and images/s for the epoch."""
    model.train()
    sums: dict[str, float] = {}
    seen: dict[str, int] = {}  # per task: a mixed store's batches may lack some tasks' truth
    n_seen, n_correct, n_batches, start = 0, 0, 0, time.perf_counter()
    bar = _progress(progress and env.is_main, len(loader), description)
    try:
        for x, cal, wedge, targets in loader:
            x = x.to(device, non_blocking=True)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            targets = {k: v.to(device, non_blocking=True) for k, v in targets.items()}
            with autocast(device, amp):
                out = model(x, cal.to(device, non_blocking=True), wedge.to(device, non_blocking=True))
            loss, parts = criterion(out, targets)
            if not bool(torch.isfinite(loss)):  # before the step: one NaN update would poison every weight
                tasks = criterion.task_losses(out, targets)
                raise NonFiniteLoss(
                    diagnose_non_finite(
                        tasks, out, x, cal, optimizer.param_groups[0]["lr"], f"{description}, batch {n_batches + 1}"
                    )
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            all_reduce_grads(criterion, env)
            if clip_grad_norm:
                params = [p for g in optimizer.param_groups for p in g["params"]]
                torch.nn.utils.clip_grad_norm_(params, clip_grad_norm)
            optimizer.step()
            schedule.step_iteration()
            b = x.shape[0]
            n_seen += b
            n_batches += 1
            n_correct += int((out["logits"].argmax(1) == targets["alloy"]).sum())
            for k, v in {"loss": float(loss.detach()), **parts}.items():
                sums[k] = sums.get(k, 0.0) + v * b
                seen[k] = seen.get(k, 0) + b
            if bar is not None:
                bar.update(bar.task_ids[0], advance=1, info=f"loss {sums['loss'] / n_seen:.4f}")
    finally:
        if bar is not None:
            bar.stop()
    seconds = time.perf_counter() - start
    stats = {k: v / max(seen[k], 1) for k, v in sums.items()}
    stats.update(
        accuracy=n_correct / max(n_seen, 1), images_per_s=n_seen * env.world_size / max(seconds, 1e-9), seconds=seconds
    )
    return stats


def validate(
    model: nn.Module,
    criterion: MultiTaskLoss,
    loader: DataLoader,
    device: torch.device,
    train_counts: list[int],
    *,
    amp: bool = False,
    channels_last: bool = False,
) -> dict[str, float]:
    """Validation metrics (accuracy, balanced_accuracy, macro_f1, log_loss, ece, <target>_mae, loss)."""
    p = predict(model, loader, device, amp, channels_last)
    cls = classification_metrics(p["y"], p["probs"], CLASS_NAMES, train_counts)
    out = {k: cls[k] for k in ("accuracy", "balanced_accuracy", "macro_f1", "log_loss", "ece")}
    for t in REGRESSION_TARGETS:
        out[f"{t}_mae"] = regression_metrics(p[f"pred_{t}"], p[f"true_{t}"])["mae"]
    with torch.no_grad():

        def t_(a):
            return torch.from_numpy(a).to(device)

        outputs = {"logits": t_(p["logits"]), **{t: t_(p[f"pred_{t}"]) for t in REGRESSION_TARGETS}}
        targets = {"alloy": t_(p["y"]), **{t: t_(p[f"true_{t}"]) for t in REGRESSION_TARGETS}}
        total, _ = criterion(outputs, targets)
    out["loss"] = float(total)
    return {k: float(v) if np.isfinite(v) else float("nan") for k, v in out.items()}
