"""Report plots (PNG via matplotlib's Agg backend: no display needed). Each function writes one file."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

DPI = 110


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def confusion(cm: np.ndarray, names: Sequence[str], path: Path, normalise: bool = False) -> Path:
    cm = np.asarray(cm, float)
    shown = cm / np.maximum(cm.sum(1, keepdims=True), 1) if normalise else cm
    fig, ax = plt.subplots(figsize=(5.2, 4.5))
    im = ax.imshow(shown, cmap="Blues", vmin=0, vmax=1 if normalise else max(shown.max(), 1))
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("confusion matrix (row-normalised)" if normalise else "confusion matrix")
    for i in range(len(names)):
        for j in range(len(names)):
            txt = f"{shown[i, j]:.2f}" if normalise else f"{int(shown[i, j])}"
            ax.text(
                j,
                i,
                txt,
                ha="center",
                va="center",
                fontsize=8,
                color="white" if shown[i, j] > 0.6 * (1 if normalise else shown.max()) else "black",
            )
    fig.colorbar(im, ax=ax, fraction=0.046)
    return _save(fig, path)


def roc_pr_curves(y: np.ndarray, probs: np.ndarray, names: Sequence[str], roc_path: Path, pr_path: Path) -> list[Path]:
    from sklearn.metrics import precision_recall_curve, roc_curve

    fig_roc, ax_roc = plt.subplots(figsize=(5, 4.5))
    fig_pr, ax_pr = plt.subplots(figsize=(5, 4.5))
    for c, name in enumerate(names):
        pos = y == c
        if pos.any() and (~pos).any():
            fpr, tpr, _ = roc_curve(pos, probs[:, c])
            ax_roc.plot(fpr, tpr, label=name)
            prec, rec, _ = precision_recall_curve(pos, probs[:, c])
            ax_pr.step(rec, prec, where="post", label=name)
    ax_roc.plot([0, 1], [0, 1], "k:", lw=0.8)
    ax_roc.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC, one-vs-rest")
    ax_pr.set(xlabel="recall", ylabel="precision", title="precision-recall, one-vs-rest", ylim=(0, 1.02))
    for ax in (ax_roc, ax_pr):
        ax.legend(fontsize=8, loc="lower right" if ax is ax_roc else "lower left")
    return [_save(fig_roc, roc_path), _save(fig_pr, pr_path)]


def learning_curves(
    history: list[dict], path: Path, best_epoch: int | None = None, stopped_early: bool = False
) -> Path:
    """Loss and accuracy over every trained epoch; ``best_epoch`` (the checkpoint kept) is marked with a solid
    line, and the last epoch with a dashed one labelled "early stop" when ``stopped_early``."""
    if not history:
        raise ValueError(f"{path}: learning curves need at least one epoch of history")
    epochs = [h["epoch"] for h in history]
    fig, (ax_l, ax_a) = plt.subplots(1, 2, figsize=(9, 3.6))
    ax_l.plot(epochs, [h["train_loss"] for h in history], "o-", ms=3, label="train")
    ax_l.plot(epochs, [h["val_loss"] for h in history], "o-", ms=3, label="val")
    ax_l.set(xlabel="epoch", ylabel="total loss", title="loss")
    ax_a.plot(epochs, [h["train_accuracy"] for h in history], "o-", ms=3, label="train accuracy")
    ax_a.plot(epochs, [h["val_accuracy"] for h in history], "o-", ms=3, label="val accuracy")
    ax_a.plot(epochs, [h["val_balanced_accuracy"] for h in history], "o--", ms=3, label="val balanced accuracy")
    ax_a.set(xlabel="epoch", ylabel="accuracy", title="accuracy", ylim=(0, 1.02))
    for ax in (ax_l, ax_a):
        if best_epoch is not None:
            ax.axvline(best_epoch, color="tab:purple", lw=1.2, label=f"best epoch {best_epoch}")
        if stopped_early:
            ax.axvline(epochs[-1], color="tab:brown", lw=1.2, ls="--", label=f"early stop (epoch {epochs[-1]})")
        ax.legend(fontsize=8)
    fig.suptitle(f"{len(epochs)} epochs trained", fontsize=9)
    return _save(fig, path)


def thickness_scatter(true: np.ndarray, pred: np.ndarray, y: np.ndarray, names: Sequence[str], path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(4.8, 4.5))
    for c, name in enumerate(names):
        m = y == c
        if m.any():
            ax.scatter(true[m], pred[m], s=12, label=name, alpha=0.8)
    lo, hi = float(min(true.min(), pred.min())), float(max(true.max(), pred.max()))
    ax.plot([lo, hi], [lo, hi], "k:", lw=0.8)
    ax.set(xlabel="true thickness (mm)", ylabel="predicted thickness (mm)", title="plate thickness")
    ax.legend(fontsize=8)
    return _save(fig, path)
