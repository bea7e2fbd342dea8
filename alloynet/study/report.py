"""Study tables and plots: mean +- std over seeds, the ideal-observer ceiling beside every row."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from alloynet.data import CLASS_NAMES
from alloynet.physics.separability import mixed_ceiling
from alloynet.physics.simulator import RigConfig

SUMMARY_METRICS = [
    ("accuracy", "acc"), ("balanced_accuracy", "bal. acc"), ("tail_recall", "tail recall"), ("macro_f1", "macro-F1"),
    ("log_loss", "log-loss"), ("mean_auc", "mean AUC"), ("thickness_mae_mm", "thickness MAE (mm)"),
    ("a0_mae", "A0 MAE"), ("train_s", "train time (s)"),
]


def ceiling(rig: RigConfig, thicknesses_mm: list[float], wedges_mm: list[float], plates: int = 200,
            seed: int = 0) -> dict:
    """Ideal-observer ceiling for the study's test set, which mixes the wedge sizes equally."""
    return mixed_ceiling([(rig.model_copy(update={"wedge_mm": w}), 1.0) for w in wedges_mm], thicknesses_mm,
                         plates=plates, seed=seed)


def _fmt(mean: float, std: float, digits: int = 3) -> str:
    if np.isnan(mean):
        return "n/a"
    return f"{mean:.{digits}f} ± {std:.{digits}f}" if not np.isnan(std) else f"{mean:.{digits}f}"


def summary_table(results: pd.DataFrame, ceiling_acc: float) -> pd.DataFrame:
    """One row per (architecture, loss, rho): mean ± std over seeds; ceiling and gap beside it."""
    rows = []
    for (arch, loss, rho), g in results.groupby(["arch", "loss", "rho"], sort=False):
        row = {"model": arch, "loss": loss, "rho": f"{rho:g}", "seeds": len(g)}
        for key, label in SUMMARY_METRICS:
            digits = 1 if key == "train_s" else 3
            row[label] = _fmt(g[key].mean(), g[key].std(ddof=1) if len(g) > 1 else np.nan, digits)
        row["params"] = f"{int(g.params.iloc[0]):,}"
        row["ceiling (bal. acc)"] = f"{ceiling_acc:.3f}"
        row["gap to ceiling"] = f"{ceiling_acc - g.balanced_accuracy.mean():+.3f}"
        rows.append(row)
    return pd.DataFrame(rows)


def ap_table(results: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for (arch, loss, rho), g in results.groupby(["arch", "loss", "rho"], sort=False):
        row = {"model": arch, "loss": loss, "rho": f"{rho:g}"}
        for c in CLASS_NAMES:
            col = f"ap_{c}"
            row[f"AP {c}"] = _fmt(g[col].mean(), g[col].std(ddof=1) if len(g) > 1 else np.nan) if col in g else "n/a"
        rows.append(row)
    return pd.DataFrame(rows)


def ood_table(results: pd.DataFrame, ood_names: list[str], ceilings: dict[str, float]) -> pd.DataFrame:
    rows = []
    for (arch, loss), g in results.groupby(["arch", "loss"], sort=False):
        row = {"model": arch, "loss": loss,
               "in-distribution bal. acc": _fmt(g.balanced_accuracy.mean(), g.balanced_accuracy.std(ddof=1)),
               "in-distribution thickness MAE": _fmt(g.thickness_mae_mm.mean(), g.thickness_mae_mm.std(ddof=1))}
        for name in ood_names:
            acc, mae = g[f"ood_{name}_balanced_accuracy"], g[f"ood_{name}_thickness_mae_mm"]
            row[f"{name} bal. acc (ceiling {ceilings[name]:.3f})"] = _fmt(acc.mean(), acc.std(ddof=1))
            row[f"{name} thickness MAE"] = _fmt(mae.mean(), mae.std(ddof=1))
        rows.append(row)
    return pd.DataFrame(rows)


def to_markdown(df: pd.DataFrame) -> str:
    cols = list(df.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)


def plot_accuracy_vs_rho(results: pd.DataFrame, ceiling_acc: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    archs = list(dict.fromkeys(results.arch))
    fig, axes = plt.subplots(1, len(archs), figsize=(4.2 * len(archs), 3.6), sharey=True, squeeze=False)
    for ax, arch in zip(axes[0], archs):
        sub = results[results.arch == arch]
        for loss, g in sub.groupby("loss", sort=False):
            stats = g.groupby("rho").balanced_accuracy.agg(["mean", "std"]).fillna(0.0)
            ax.errorbar(stats.index, stats["mean"], yerr=stats["std"], marker="o", capsize=3, label=loss)
        ax.axhline(ceiling_acc, color="k", ls="--", lw=1, label="ideal observer")
        ax.axhline(1 / len(CLASS_NAMES), color="grey", ls=":", lw=1, label="chance")
        ax.set_xscale("log")
        ax.set_title(arch)
        ax.set_xlabel("imbalance ratio ρ (training)")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("balanced accuracy (balanced test set)")
    axes[0][-1].legend(fontsize=8, loc="upper right")  # accuracy falls with rho: the upper right stays empty
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
