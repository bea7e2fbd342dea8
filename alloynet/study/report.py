"""Study tables, plots and prose: mean +- std over seeds, the physics bracket beside every row, and the
findings (results.md, README.md), every figure and every judgement in them computed from the results and
the ideal observer's figures."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from alloynet.data import CLASS_NAMES
from alloynet.physics.bracket import phrase_gap

if TYPE_CHECKING:
    from alloynet.study.config import StudyConfig

BASELINES = ("physics_fit", "gaussian_profile")  # the non-deep rows beside the models (study/reference.py)
# How a pair's two-class Bayes error (0.5: chance) is put in words.
NEARLY_INSEPARABLE_ERROR = 0.4
SEPARABLE_ERROR = 0.1
# Real-plate d' that grows less than this over the dose range is limited by the plates, not the detector.
PLATE_LIMITED_GAIN = 1.25

SUMMARY_METRICS = [
    ("accuracy", "acc"),
    ("balanced_accuracy", "bal. acc"),
    ("heavy_light", "heavy/light"),
    ("tail_recall", "tail recall"),
    ("macro_f1", "macro-F1"),
    ("log_loss", "log-loss"),
    ("ece", "ECE"),
    ("mean_auc", "mean AUC"),
    ("set_coverage", "set coverage"),
    ("set_size", "set size"),
    ("thickness_mae_mm", "thickness MAE (mm)"),
    ("a0_mae", "A0 MAE"),
    ("train_s", "train time (s)"),
]


def _fmt(mean: float, std: float, digits: int = 3) -> str:
    if np.isnan(mean):
        return "n/a"
    return f"{mean:.{digits}f} ± {std:.{digits}f}" if not np.isnan(std) else f"{mean:.{digits}f}"


def bracket_text(ref: dict | float) -> str:
    """A set's physics bracket as "lower-upper" (a bare lower edge where a reference has no upper one)."""
    if not isinstance(ref, dict):
        return f"{ref:.3f}"
    upper = ref.get("ceiling_upper")
    return f"{ref['ceiling']:.3f}" + ("" if upper is None else f"-{upper:.3f}")


def summary_table(
    results: pd.DataFrame,
    ceiling_acc: float,
    ceiling_heavy_light: float = float("nan"),
    ceiling_upper: float | None = None,
    ceiling_upper_se: float = 0.0,
) -> pd.DataFrame:
    """One row per (architecture, loss, rho): mean ± std over seeds; the physics bracket (``ceiling_acc`` its
    lower edge, ``ceiling_upper`` its upper one) and where the row stands against it."""
    rows = []
    for (arch, loss, rho), g in results.groupby(["arch", "loss", "rho"], sort=False):
        row = {"model": arch, "loss": loss, "rho": f"{rho:g}", "seeds": len(g)}
        for key, label in SUMMARY_METRICS:
            digits = 1 if key == "train_s" else 3
            row[label] = (
                _fmt(g[key].mean(), g[key].std(ddof=1) if len(g) > 1 else np.nan, digits) if key in g else "n/a"
            )
        row["params"] = f"{int(g.params.iloc[0]):,}"
        upper = ceiling_acc if ceiling_upper is None else ceiling_upper
        row["bracket (bal. acc)"] = f"{ceiling_acc:.3f}-{upper:.3f}"
        row["against the bracket"] = phrase_gap(g.balanced_accuracy.mean(), ceiling_acc, upper, ceiling_upper_se)
        row["bracket heavy/light (lower edge)"] = f"{ceiling_heavy_light:.3f}"
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


def ood_table(
    results: pd.DataFrame, ood_names: list[str], refs: dict[str, dict] | None, metric: str = "balanced_accuracy"
) -> pd.DataFrame:
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
                ref = refs[name]
                head += (
                    f" (bracket {bracket_text(ref)})"
                    if ceiling_key == "ceiling"
                    else f" (lower edge {ref[ceiling_key]:.3f})"
                )
            vals = g[col] if col in g else pd.Series(dtype=float)
            row[head] = _fmt(vals.mean(), vals.std(ddof=1)) if vals.notna().any() else "n/a"
        rows.append(row)
    return pd.DataFrame(rows)


def to_markdown(df: pd.DataFrame) -> str:
    cols = list(df.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)


def plot_accuracy_vs_rho(
    results: pd.DataFrame,
    ceiling_acc: float,
    path: Path,
    baselines: Sequence[str] = (),
    ceiling_upper: float | None = None,
) -> None:
    """One panel per model: balanced accuracy against the imbalance ratio per loss, the ceiling, chance and
    the baselines (their own rows in ``results``) as reference lines in every panel."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    archs = [a for a in dict.fromkeys(results.arch) if a not in baselines]
    refs = {
        b: results[results.arch == b].groupby("rho").balanced_accuracy.mean()
        for b in baselines
        if (results.arch == b).any()
    }
    fig, axes = plt.subplots(1, len(archs), figsize=(4.2 * len(archs), 3.6), sharey=True, squeeze=False)
    for ax, arch in zip(axes[0], archs):
        sub = results[results.arch == arch]
        for loss, g in sub.groupby("loss", sort=False):
            stats = g.groupby("rho").balanced_accuracy.agg(["mean", "std"]).fillna(0.0)
            ax.errorbar(stats.index, stats["mean"], yerr=stats["std"], marker="o", capsize=3, label=loss)
        for (b, line), style in zip(refs.items(), ("-.", (0, (1, 1)))):
            ax.plot(line.index, line.values, color="0.4", ls=style, lw=1, label=b)
        ax.axhline(ceiling_acc, color="k", ls="--", lw=1, label="physics bracket")
        if ceiling_upper is not None:
            ax.axhspan(ceiling_acc, max(ceiling_upper, ceiling_acc + 1e-3), color="k", alpha=0.12, lw=0)
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


# -- results.md ---------------------------------------------------------------------------------------------


def failure_lines(failures: list[dict], total: int) -> list[str]:
    lines = [
        f"## Cells that did not finish ({len(failures)} of {total})",
        "",
        "These cells are missing from every table below; re-running the study retries them (finished cells "
        "are reused).",
        "",
        "| cell | reason |",
        "|---|---|",
    ]
    lines += [f"| {f['cell']} | {' '.join(str(f['reason']).split())[:300]} |" for f in failures]
    return lines + [""]


def baseline_note() -> list[str]:
    return [
        "Beside the models, per imbalance ratio and seed: `physics_fit` (for each alloy, the plate thickness "
        "fitted to the wedge profile with the forward model, the most likely alloy; trains on nothing, so it is "
        "the same on every pool) and `gaussian_profile` (QDA-like: per alloy and wedge a Gaussian profile whose "
        "mean follows thickness, fitted on that pool). Both read the capture with its own calibration "
        "(alloynet.evaluate.baselines).",
        "",
    ]


def describe_change(base: dict, changed: dict) -> str:
    """What an OOD set changes against the test set (``datasets.describe`` of each)."""
    diff = {k: v for k, v in changed.items() if base.get(k) != v and v is not None}
    return ", ".join(f"{k} {v}" for k, v in diff.items()) or "calibration not sent"


def results_markdown(
    cfg: StudyConfig,
    table: pd.DataFrame,
    summary: pd.DataFrame,
    refs: dict[str, dict],
    test_set: dict,
    ood_sets: dict[str, dict],
    failures: list[dict],
) -> str:
    """results.md: the full tables. ``refs``: each set's reference (study/reference.py), ``"test"`` first;
    ``test_set``/``ood_sets``: each set described (``datasets.describe``)."""
    ceil = refs["test"]
    failed_ids = {f["cell"] for f in failures}
    md = [
        f"# Study `{cfg.name}`: architectures x losses x imbalance ratios",
        "",
        f"Balanced test set: {test_set}; every run is evaluated on the same captures. "
        f"Mean ± std over seeds {cfg.seeds}. Tail class (rarest in training): {cfg.data.class_order[-1]}. "
        f"Physics bracket (balanced accuracy; a classifier a line can run below, an observer told each plate's "
        f"candidate compositions above) for these rig settings and this thickness prior: "
        f"**{bracket_text(ceil)}** (heavy vs light, lower edge {ceil['ceiling_heavy_light']:.3f}).",
        "",
        *(baseline_note() if cfg.baselines else []),
        *(failure_lines(failures, len(cfg.cells())) if failures else []),
        to_markdown(summary),
        "",
        "## Average precision per class",
        "",
        to_markdown(ap_table(table)),
        "",
        "![balanced accuracy vs imbalance ratio](accuracy_vs_rho.png)",
        "",
    ]
    if cfg.ood:
        names = list(ood_sets)
        md += [
            "## Robustness and out of distribution (all imbalance ratios pooled)",
            "",
            "Each set: the shared test set with one thing changed ("
            + "; ".join(f"`{n}`: {describe_change(test_set, d)}" for n, d in ood_sets.items())
            + "), each against its own physics bracket.",
            "",
            "### Balanced accuracy",
            "",
            to_markdown(ood_table(table, names, refs, "balanced_accuracy")),
            "",
            "### Heavy vs light (balanced accuracy)",
            "",
            to_markdown(ood_table(table, names, refs, "heavy_light")),
            "",
            "### Thickness MAE (mm)",
            "",
            to_markdown(ood_table(table, names, None, "thickness_mae_mm")),
            "",
        ]
    md += ["## Physics bracket for these settings", "", ceil["markdown"], "", "## Per-run reports", ""]
    md += [
        f"- {c.id}: did not finish" if c.id in failed_ids else f"- [{c.id}](runs/{c.id}/report.md)" for c in cfg.cells()
    ]
    return "\n".join(md) + "\n"


# -- README.md: the findings ----------------------------------------------------------------------------------


def loss_findings(results: pd.DataFrame) -> list[str]:
    """Per architecture and imbalance ratio: plain cross-entropy against the best long-tail loss."""
    lines = [
        "Long-tail losses against plain cross-entropy (mean balanced accuracy over seeds):",
        "",
        "| model | rho | ce | best other loss |",
        "|---|---|---|---|",
    ]
    means = results.groupby(["arch", "rho", "loss"]).balanced_accuracy.mean()
    for (arch, rho), g in means.groupby(level=[0, 1], sort=False):
        g = g.droplevel([0, 1])
        others = g.drop("ce", errors="ignore")
        if "ce" in g and len(others):
            lines.append(
                f"| {arch} | {rho:g} | {g['ce']:.3f} | {others.idxmax()} {others.max():.3f} "
                f"({others.max() - g['ce']:+.3f}) |"
            )
    return lines + [""]


def ood_findings(results: pd.DataFrame, ood_ceil: dict[str, dict | float]) -> list[str]:
    if not ood_ceil:
        return []
    lines = [
        "Robustness and out of distribution (all runs of each model pooled; balanced accuracy / heavy vs light):",
        "",
        "| model | in distribution | "
        + " | ".join(f"{n} (bracket {bracket_text(c)})" for n, c in ood_ceil.items())
        + " |",
        "|---|---|" + "---|" * len(ood_ceil),
    ]
    for arch, g in results.groupby("arch", sort=False):
        cells = [
            f"{g[f'ood_{n}_balanced_accuracy'].mean():.3f} / {g[f'ood_{n}_heavy_light'].mean():.3f}" for n in ood_ceil
        ]
        lines.append(
            f"| {arch} | {g.balanced_accuracy.mean():.3f} / {g.heavy_light.mean():.3f} | " + " | ".join(cells) + " |"
        )
    return lines + [""]


def prior_text(d) -> str:
    """The thickness prior of a study's data settings, in words."""
    if d.thicknesses_mm is not None:
        return f"plates of {', '.join(f'{t:g}' for t in d.thicknesses_mm)} mm only"
    lo, hi = d.thickness_range_mm
    return f"plates of any thickness between {lo:g} and {hi:g} mm"


def baseline_findings(results: pd.DataFrame, ceil: dict) -> list[str]:
    """Per imbalance ratio: the best model against the two baselines on the same pools."""
    if not results.arch.isin(BASELINES).any():
        return []
    lines = [
        "The best model against the non-deep baselines on the same pools (mean balanced accuracy over seeds; "
        f"physics bracket {bracket_text(ceil)}):",
        "",
        "| rho | best model | gaussian_profile | physics_fit |",
        "|---|---|---|---|",
    ]
    means = results.groupby(["rho", "arch", "loss"], sort=False).balanced_accuracy.mean()
    for rho, g in means.groupby(level=0, sort=False):
        g = g.droplevel(0)
        models = g[~g.index.get_level_values(0).isin(BASELINES)]
        if not len(models):
            continue
        (arch, loss), top = models.idxmax(), models.max()
        base = {b: (f"{g[b].iloc[0]:.3f}" if b in g.index.get_level_values(0) else "n/a") for b in BASELINES}
        lines.append(f"| {rho:g} | {arch} ({loss}) {top:.3f} | {base['gaussian_profile']} | {base['physics_fit']} |")
    return lines + [""]


def separability_words(bayes_error: float) -> str:
    """A two-class Bayes error in words (0.5 is chance)."""
    if bayes_error >= NEARLY_INSEPARABLE_ERROR:
        return "nearly inseparable"
    return "separable" if bayes_error < SEPARABLE_ERROR else "only partly separable"


def _short(pair: str) -> str:
    return " vs ".join(a.removeprefix("Al") for a in pair.split(" vs "))


def pair_findings(pairs: dict[str, dict], kvp: Sequence[float]) -> str:
    """The alloy pairs with thickness unknown, hardest first, each put in words by its Bayes error.
    ``pairs``: ``"A vs B" -> {"d_unknown", "bayes_error_unknown", ...}`` (the test set's ceiling)."""
    if not pairs:
        return ""
    ranked = sorted(pairs.items(), key=lambda kv: -kv[1]["bayes_error_unknown"])
    (hardest, p), exposure = ranked[0], "/".join(f"{k:g}" for k in kvp) + " kV"
    text = (
        f"Hardest pair, {_short(hardest)}: d' = {p['d_unknown']:.2f} with thickness unknown (Bayes error "
        f"{p['bayes_error_unknown']:.2f}): {separability_words(p['bayes_error_unknown'])} in one {exposure} "
        "exposure."
    )
    groups: dict[str, list[str]] = {}
    for name, q in ranked[1:]:
        groups.setdefault(separability_words(q["bayes_error_unknown"]), []).append(
            f"{_short(name)} ({q['bayes_error_unknown']:.2f})"
        )
    if groups:
        text += (
            " The other pairs (Bayes error with thickness unknown): "
            + "; ".join(f"{words}: {', '.join(names)}" for words, names in groups.items())
            + "."
        )
    return text


def limit_findings(rows: list[dict]) -> str:
    """What the dose and kVp table says, from its rows (``physics_table.physics_limits``): for the hardest pair,
    whether more photons move the real-plate d' or only the noise-limited one; and what extra kVp channels
    do for each pair at the highest dose."""
    if not rows:
        return ""
    pairs = [k for k in rows[0] if "/" in k and k != "kvp"]
    first_kvp = rows[0]["kvp"]
    by_dose = sorted((r for r in rows if r["kvp"] == first_kvp), key=lambda r: r["dose"])
    lo, hi = by_dose[0], by_dose[-1]
    hardest = max(pairs, key=lambda k: hi[k][3])
    out = []
    if hi["dose"] > lo["dose"]:
        (n_lo, k_lo, _, _), (n_hi, k_hi, _, _) = lo[hardest], hi[hardest]
        gain = k_hi / k_lo if k_lo > 0 else float("inf")
        limit = (
            "the limit is the plates, not the detector" if gain < PLATE_LIMITED_GAIN else "the detector still limits it"
        )
        out.append(
            f"From {lo['dose']:.0e} to {hi['dose']:.0e} photons/px at {first_kvp} kV, "
            f"{hardest.replace('/', ' vs ')}'s d' with exact nominal plates grows {n_hi / n_lo:.1f}x (the "
            f"square root of the dose ratio is {(hi['dose'] / lo['dose']) ** 0.5:.1f}x), with real plates and "
            f"thickness known {k_lo:.2f} -> {k_hi:.2f}: {limit}."
        )
    top = max(r["dose"] for r in rows)
    at_top = {r["kvp"]: r for r in rows if r["dose"] == top}
    if len(at_top) > 1:
        single, *more = list(at_top)
        for kvps in more:
            moves = sorted(((at_top[kvps][k][2] - at_top[single][k][2], k) for k in pairs), reverse=True)
            out.append(
                f"Extra kVp channels ({kvps} against {single} kV) at {top:.0e} photons/px raise d' with "
                "thickness unknown by " + ", ".join(f"{d:+.2f} for {k.replace('/', ' vs ')}" for d, k in moves) + "."
            )
    return " ".join(out)


def readme(
    cfg: StudyConfig,
    results: pd.DataFrame,
    ceil: dict,
    limits: str,
    ood_ceil: dict[str, dict | float],
    failures: list[dict] | None = None,
    limit_rows: list[dict] | None = None,
) -> str:
    """The short, honest summary: what physics allows, what the models reach (``results`` holds the models'
    rows and the baselines' rows; the best model is chosen among the models). ``limits``/``limit_rows``: the
    dose and kVp table and its rows (``physics_table.physics_limits``)."""
    failures = failures or []
    models = results[~results.arch.isin(BASELINES)]
    best = models.groupby(["arch", "loss", "rho"]).balanced_accuracy.mean().sort_values(ascending=False)
    (arch, loss, rho), top = best.index[0], best.iloc[0]
    per_rho = models.groupby("rho").balanced_accuracy.max()
    recall_cols = [c for c in models.columns if c.startswith("recall_")]
    best_runs = models[(models.arch == arch) & (models.loss == loss) & (models.rho == rho)]
    recalls = ", ".join(
        f"{c[len('recall_') :]} {best_runs[c].mean():.2f} "
        f"(lower edge {ceil['ceiling_recall'].get(c[len('recall_') :], float('nan')):.2f})"
        for c in recall_cols
    )
    d = cfg.data
    position = phrase_gap(
        top, ceil["ceiling"], ceil.get("ceiling_upper", ceil["ceiling"]), ceil.get("ceiling_upper_se", 0.0)
    )
    return "\n".join(
        [
            f"# Study `{cfg.name}`: what physics allows and what the models reach",
            "",
            f"Rig: W tube, kVp {d.rig.kvp}, {d.rig.dose:.0e} detected photons/pixel (open beam), "
            f"{d.rig.height}x{d.rig.width} px, Al wedge {d.wedges_mm} mm; {prior_text(d)}, composition "
            "drawn inside each alloy's standard ranges and thickness within +-1.5 % of nominal.",
            "",
            "## What physics allows",
            "",
            f"For these settings and this thickness prior the Bayes accuracy of the wedge profile lies in the bracket "
            f"**{bracket_text(ceil)}** (alloynet.physics.bracket: below, a classifier a line can run, ± "
            f"{ceil.get('ceiling_se', float('nan')):.3f}; above, an observer also told each plate's candidate "
            f"compositions, ± {ceil.get('ceiling_upper_se', float('nan')):.3f}; heavy vs light from "
            f"{ceil['ceiling_heavy_light']:.3f}); a model above the upper edge beyond its errors would be reading "
            f"something the profile model leaves out. {pair_findings(ceil['pairs'], d.rig.kvp)} Across dose and "
            "kVp (d' with exact nominal plates / with real plates and thickness known / thickness unknown, and the "
            "two-class Bayes error at unknown thickness):",
            "",
            limits,
            "",
            limit_findings(limit_rows or []),
            "",
            "## What the models reach",
            "",
            *(
                [
                    f"**{len(failures)} of {len(cfg.cells())} cells did not finish** "
                    f"({', '.join(f['cell'] for f in failures)}; "
                    "reasons in [results.md](results.md)): every figure below is over the finished cells only.",
                    "",
                ]
                if failures
                else []
            ),
            f"Best mean balanced accuracy: **{top:.3f}** ({arch}, {loss} loss, rho {rho:g}): {position} (physics "
            f"bracket {bracket_text(ceil)}). Per-class recall of that configuration: {recalls}.",
            "",
            "Best single-run balanced accuracy per training imbalance ratio: "
            + ", ".join(f"rho {r:g}: {v:.3f}" for r, v in per_rho.items())
            + ".",
            "",
            *baseline_findings(results, ceil),
            *loss_findings(models),
            *ood_findings(results, ood_ceil),
            "Full tables (mean +- std over seeds, the physics bracket beside every row), AP per class, the OOD checks "
            "and every run's report: [results.md](results.md). Reproduce with "
            "`OMP_NUM_THREADS=1 alloynet study --config "
            "configs/study.yaml` (runs are cached in the work dir; the same seeds and the same thread count give the "
            "same tables: CPU float reductions depend on the number of threads), or spread over the workers of a "
            "Prefect work pool with `alloynet study-pool` (same cache, same tables). How the hyperparameters are "
            "tuned, population-based training against the Optuna search: [search.md](search.md).",
            "",
        ]
    )
