"""report.md: the evaluation as tables and embedded plots, with the ideal-observer ceiling beside it."""
from __future__ import annotations

from pathlib import Path
from typing import Optional


def _f(v, digits: int = 3) -> str:
    return "n/a" if v is None else f"{v:.{digits}f}"


def _headline(m: dict) -> list[str]:
    lines = ["| metric | value |", "|---|---|"]
    rows = [("accuracy", "accuracy"), ("balanced accuracy", "balanced_accuracy"), ("macro-F1", "macro_f1"),
            ("log-loss", "log_loss"), ("ROC-AUC (macro, one-vs-rest)", "roc_auc_macro"),
            ("average precision (macro)", "average_precision_macro"), ("expected calibration error", "ece"),
            ("thickness MAE (mm)", "thickness_mae_mm"), ("thickness RMSE (mm)", "thickness_rmse_mm"),
            ("A0 MAE", "a0_mae"), ("A0 R^2", "a0_r2"), ("mu_eff MAE (1/cm)", "mu_eff_mae"), ("mu_eff R^2", "mu_eff_r2")]
    lines += [f"| {label} | {_f(m.get(key), 4)} |" for label, key in rows]
    return lines


def _ceiling(m: dict) -> list[str]:
    if m.get("ceiling_accuracy") is None:
        return ["Ideal-observer ceiling: not computed for this report."]
    lines = [f"**Balanced accuracy {_f(m['balanced_accuracy'])} vs ideal-observer ceiling "
             f"{_f(m['ceiling_accuracy'])}: gap {_f(m['ceiling_gap'])}** (accuracy {_f(m['accuracy'])}).", "",
             "| alloy | model recall | ideal recall |", "|---|---|---|"]
    lines += [f"| {a} | {_f(m['per_class'][a]['recall'])} | {_f(r)} |" for a, r in m["ceiling_recall"].items()
              if a in m["per_class"]]
    return lines


def _per_class(m: dict, names: list[str]) -> list[str]:
    lines = ["| alloy | support | precision | recall | F1 | specificity | ROC-AUC | AP |", "|---|---|---|---|---|---|---|---|"]
    for n in names:
        c = m["per_class"][n]
        lines.append(f"| {n} | {c['support']} | {_f(c['precision'])} | {_f(c['recall'])} | {_f(c['f1'])} | "
                     f"{_f(c['specificity'])} | {_f(c['roc_auc'])} | {_f(c['average_precision'])} |")
    return lines


def _breakdowns(m: dict) -> list[str]:
    lines = []
    if m.get("group_accuracy"):
        lines += ["Head / medium / tail (classes ranked by training count):", "", "| group | accuracy |", "|---|---|"]
        lines += [f"| {g} | {_f(v)} |" for g, v in m["group_accuracy"].items()] + [""]
    lines += ["Per nominal thickness:", "", "| thickness (mm) | n | accuracy | balanced accuracy | thickness MAE (mm) |",
              "|---|---|---|---|---|"]
    lines += [f"| {t} | {r['n']} | {_f(r['accuracy'])} | {_f(r['balanced_accuracy'])} | {_f(r['thickness_mae_mm'], 4)} |"
              for t, r in m["per_thickness"].items()]
    return lines


def render(m: dict, names: list[str], figures: list[Path], cams: list[Path], separability_md: Optional[str]) -> str:
    root = figures[0].parent.parent if figures else Path(".")
    lines = [f"# Evaluation: {m['model']} on the {m['split']} split", "",
             f"Checkpoint `{m['checkpoint']}` (best epoch {m['trained_epochs']}), data manifest `{m['manifest_hash'][:12]}`, "
             f"{m['n']} captures.", "", "## Against the ideal observer", ""] + _ceiling(m)
    lines += ["", "## Summary", ""] + _headline(m) + ["", "## Per class", ""] + _per_class(m, names)
    lines += ["", "## Breakdowns", ""] + _breakdowns(m) + ["", "## Plots", ""]
    lines += [f"![{p.stem}]({p.relative_to(root).as_posix()})" for p in figures]
    if cams:
        lines += ["", "## Grad-CAM", ""] + [f"![{p.stem}]({p.relative_to(root).as_posix()})" for p in cams]
    if separability_md:
        lines += ["", "## Ideal-observer report (physics)", "", separability_md]
    return "\n".join(lines) + "\n"
