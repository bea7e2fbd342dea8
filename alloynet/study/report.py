"""Study tables and plots: mean +- std over seeds, the ideal-observer ceiling beside every row."""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import pandas as pd

from alloynet.data import CLASS_NAMES

SUMMARY_METRICS = [
    ("accuracy", "acc"), ("balanced_accuracy", "bal. acc"), ("heavy_light", "heavy/light"),
    ("tail_recall", "tail recall"), ("macro_f1", "macro-F1"), ("log_loss", "log-loss"), ("ece", "ECE"),
    ("mean_auc", "mean AUC"), ("set_coverage", "set coverage"), ("set_size", "set size"),
    ("thickness_mae_mm", "thickness MAE (mm)"), ("a0_mae", "A0 MAE"), ("train_s", "train time (s)"),
]


def _fmt(mean: float, std: float, digits: int = 3) -> str:
    if np.isnan(mean):
        return "n/a"
    return f"{mean:.{digits}f} ± {std:.{digits}f}" if not np.isnan(std) else f"{mean:.{digits}f}"


def summary_table(results: pd.DataFrame, ceiling_acc: float, ceiling_heavy_light: float = float("nan")) -> pd.DataFrame:
    """One row per (architecture, loss, rho): mean ± std over seeds; ceiling and gap beside it."""
    rows = []
    for (arch, loss, rho), g in results.groupby(["arch", "loss", "rho"], sort=False):
        row = {"model": arch, "loss": loss, "rho": f"{rho:g}", "seeds": len(g)}
        for key, label in SUMMARY_METRICS:
            digits = 1 if key == "train_s" else 3
            row[label] = (_fmt(g[key].mean(), g[key].std(ddof=1) if len(g) > 1 else np.nan, digits)
                          if key in g else "n/a")
        row["params"] = f"{int(g.params.iloc[0]):,}"
        row["ceiling (bal. acc)"] = f"{ceiling_acc:.3f}"
        row["gap to ceiling"] = f"{ceiling_acc - g.balanced_accuracy.mean():+.3f}"
        row["ceiling heavy/light"] = f"{ceiling_heavy_light:.3f}"
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


def ood_table(results: pd.DataFrame, ood_names: list[str], refs: Optional[dict[str, dict]],
              metric: str = "balanced_accuracy") -> pd.DataFrame:
    """One row per (model, loss), all imbalance ratios pooled: ``metric`` in distribution and on every OOD
    set, each set's ceiling in its header (``refs[name]``: a set reference, ``study/reference.py``)."""
    ceiling_key = {"balanced_accuracy": "ceiling", "heavy_light": "ceiling_heavy_light"}.get(metric)
    rows = []
    for (arch, loss), g in results.groupby(["arch", "loss"], sort=False):
        row = {"model": arch, "loss": loss}
        for name in ["test", *ood_names]:
            col = metric if name == "test" else f"ood_{name}_{metric}"
            head = "in distribution" if name == "test" else name
            if refs and ceiling_key:
                head += f" (ceiling {refs[name][ceiling_key]:.3f})"
            vals = g[col] if col in g else pd.Series(dtype=float)
            row[head] = _fmt(vals.mean(), vals.std(ddof=1)) if vals.notna().any() else "n/a"
        rows.append(row)
    return pd.DataFrame(rows)


def to_markdown(df: pd.DataFrame) -> str:
    cols = list(df.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)


def plot_accuracy_vs_rho(results: pd.DataFrame, ceiling_acc: float, path: Path, baselines: Sequence[str] = ()) -> None:
    """One panel per model: balanced accuracy against the imbalance ratio per loss, the ceiling, chance and
    the baselines (their own rows in ``results``) as reference lines in every panel."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    archs = [a for a in dict.fromkeys(results.arch) if a not in baselines]
    refs = {b: results[results.arch == b].groupby("rho").balanced_accuracy.mean() for b in baselines
            if (results.arch == b).any()}
    fig, axes = plt.subplots(1, len(archs), figsize=(4.2 * len(archs), 3.6), sharey=True, squeeze=False)
    for ax, arch in zip(axes[0], archs):
        sub = results[results.arch == arch]
        for loss, g in sub.groupby("loss", sort=False):
            stats = g.groupby("rho").balanced_accuracy.agg(["mean", "std"]).fillna(0.0)
            ax.errorbar(stats.index, stats["mean"], yerr=stats["std"], marker="o", capsize=3, label=loss)
        for (b, line), style in zip(refs.items(), ("-.", (0, (1, 1)))):
            ax.plot(line.index, line.values, color="0.4", ls=style, lw=1, label=b)
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
