"""report.md: the evaluation as tables and embedded plots, with the bracket of what physics allows beside it."""

from __future__ import annotations

from pathlib import Path


def _f(v, digits: int = 3) -> str:
    return "n/a" if v is None else f"{v:.{digits}f}"


def _headline(m: dict) -> list[str]:
    lines = ["| metric | value |", "|---|---|"]
    rows = [
        ("accuracy", "accuracy"),
        ("balanced accuracy", "balanced_accuracy"),
        ("macro-F1", "macro_f1"),
        ("log-loss", "log_loss"),
        ("ROC-AUC (macro, one-vs-rest)", "roc_auc_macro"),
        ("average precision (macro)", "average_precision_macro"),
        ("expected calibration error", "ece"),
        ("thickness MAE (mm)", "thickness_mae_mm"),
        ("thickness RMSE (mm)", "thickness_rmse_mm"),
        ("A0 MAE", "a0_mae"),
        ("A0 R^2", "a0_r2"),
        ("mu_eff MAE (1/cm)", "mu_eff_mae"),
        ("mu_eff R^2", "mu_eff_r2"),
    ]
    lines += [f"| {label} | {_f(m.get(key), 4)} |" for label, key in rows]
    return lines


def _pm(m: dict, key: str) -> str:
    se = m.get(f"{key}_se")
    return _f(m.get(key)) + ("" if se is None else f" ± {_f(se)}")


def _ceiling(m: dict) -> list[str]:
    if m.get("ceiling_accuracy") is None:
        return ["Physics bracket: not computed for this report."]
    base = m.get("baselines") or {}
    lower = m.get("ceiling_lower", m["ceiling_accuracy"])
    upper = m.get("ceiling_upper")
    position = m.get("ceiling_position") or f"gap {_f(m['ceiling_gap'])} to the lower edge"
    lines = [
        f"**Balanced accuracy {_f(m['balanced_accuracy'])} against the physics bracket {_f(lower)}-{_f(upper)}: "
        f"{position}** (lower edge {_pm(m, 'ceiling_lower')}, upper edge {_pm(m, 'ceiling_upper')}; accuracy "
        f"{_f(m['accuracy'])}; {m.get('ceiling_prior', '')}).",
        "",
        f"Heavy (Cu/Zn-bearing) vs light: {_f(m.get('heavy_light_balanced_accuracy'))} "
        f"(bracket {_f(m.get('ceiling_heavy_light'))}-{_f(m.get('ceiling_heavy_light_upper'))}).",
        "",
    ]
    recall = m["ceiling_recall"]
    header = "| | balanced accuracy | heavy vs light |" + "".join(f" {a} |" for a in recall)
    lines += [header, "|---" * (3 + len(recall)) + "|"]
    lines.append(
        f"| this model | {_f(m['balanced_accuracy'])} | {_f(m.get('heavy_light_balanced_accuracy'))} |"
        + "".join(f" {_f(m['per_class'][a]['recall'])} |" for a in recall if a in m["per_class"])
    )
    for name, b in base.items():
        if "skipped" in b:
            lines.append(
                f"| {name.replace('_', ' ')} (baseline) | not fitted: {b['skipped']} |" + " |" * (1 + len(recall))
            )
            continue
        lines.append(
            f"| {name.replace('_', ' ')} (baseline) | {_f(b['balanced_accuracy'])} | "
            f"{_f(b['heavy_light_balanced_accuracy'])} |" + "".join(f" {_f(b['recall'].get(a))} |" for a in recall)
        )
    lines.append(
        f"| physics bracket, lower edge (mixture observer) | {_pm(m, 'ceiling_lower')} | "
        f"{_f(m.get('ceiling_heavy_light'))} |" + "".join(f" {_f(r)} |" for r in recall.values())
    )
    if upper is not None:
        lines.append(
            f"| physics bracket, upper edge (oracle observer) | {_pm(m, 'ceiling_upper')} | "
            f"{_f(m.get('ceiling_heavy_light_upper'))} |" + " |" * len(recall)
        )
    hard = m.get("ceiling_hard_pairs") or []
    lines += [
        "",
        "Recall per alloy. Baselines: the physics fit (the rig's forward model, no training data) and a "
        "Gaussian classifier on the calibrated profile (fitted on the training split). The bracket: a "
        "classifier a line can run below, an observer told each plate's candidate compositions above "
        "(alloynet.physics.bracket), ± its Monte-Carlo standard error.",
    ]
    if hard:
        lines += [
            "",
            "Pairs that stay hard (share confused by the lower edge's observer): "
            + ", ".join(f"{p['pair']} {p['confused']:.2f}" for p in hard[:3])
            + ".",
        ]
    return lines


def _answers(m: dict) -> list[str]:
    if m.get("set_coverage") is None:
        return []
    flags = ", ".join(f"{k} {v:.1%}" for k, v in (m.get("flag_rates") or {}).items() if v > 0) or "none raised"
    return [
        "## Honest answers",
        "",
        f"- Calibration: expected calibration error {_f(m.get('ece'))} after temperature scaling "
        f"({_f(m.get('ece_uncalibrated'))} before).",
        f"- Conformal prediction sets at {m['coverage_target']:.0%} target coverage: coverage "
        f"{_f(m['set_coverage'])} (balanced over alloys), mean set size {_f(m['set_size_mean'], 2)}, "
        f"{m['set_singleton_rate']:.0%} single-alloy answers.",
        f"- Flags on this split: {flags}.",
        "",
    ] + _physics_term(m)


def _physics_term(m: dict) -> list[str]:
    t = m.get("physics_term")
    if not t:
        return []
    alone = "n/a (weight 0)" if t["term_alone"] is None else _f(t["term_alone"])
    return [
        "## The physics term",
        "",
        f"The forward model's fit in the graph, added to the trunk's logits with learnt weight {_f(t['weight'])}: "
        f"alone it scores {alone} balanced accuracy here, the trunk alone {_f(t['trunk_alone'])}, the model "
        f"{_f(m['balanced_accuracy'])}; adding it changes the answer on {t['changed']:.0%} of captures "
        f"(Grad-CAM below shows the trunk's side only).",
        "",
    ] + _correction(t.get("correction"))


def _correction(c: dict | None) -> list[str]:
    """Whether the forward model's mean profiles were corrected from the rig's labelled captures at training."""
    if not c:
        return []
    what = (
        f"corrected from the rig's labelled training captures (shrink {c['shrink']:g})"
        if c["corrected"]
        else "the forward model's own (no correction)"
    )
    return [f"Its tables: {what}. Decided on the validation captures: {c['reason']}.", ""]


def _per_class(m: dict, names: list[str]) -> list[str]:
    lines = [
        "| alloy | support | precision | recall | F1 | specificity | ROC-AUC | AP |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for n in names:
        c = m["per_class"][n]
        lines.append(
            f"| {n} | {c['support']} | {_f(c['precision'])} | {_f(c['recall'])} | {_f(c['f1'])} | "
            f"{_f(c['specificity'])} | {_f(c['roc_auc'])} | {_f(c['average_precision'])} |"
        )
    return lines


def _breakdowns(m: dict) -> list[str]:
    lines = []
    if m.get("group_accuracy"):
        lines += ["Head / medium / tail (classes ranked by training count):", "", "| group | accuracy |", "|---|---|"]
        lines += [f"| {g} | {_f(v)} |" for g, v in m["group_accuracy"].items()] + [""]
    lines += [
        "Per nominal thickness:",
        "",
        "| thickness (mm) | n | accuracy | balanced accuracy | thickness MAE (mm) |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {t} | {r['n']} | {_f(r['accuracy'])} | {_f(r['balanced_accuracy'])} | {_f(r['thickness_mae_mm'], 4)} |"
        for t, r in m["per_thickness"].items()
    ]
    return lines


def render(m: dict, names: list[str], figures: list[Path], cams: list[Path], separability_md: str | None) -> str:
    root = figures[0].parent.parent if figures else Path(".")
    lines = [
        f"# Evaluation: {m['model']} on the {m['split']} split",
        "",
        f"Checkpoint `{m['checkpoint']}` (best epoch {m['trained_epochs']}), "
        f"data manifest `{m['manifest_hash'][:12]}`, "
        f"{m['n']} captures.",
        "",
        "## Against what physics allows",
        "",
    ] + _ceiling(m)
    lines += [""] + _answers(m) + ["## Summary", ""] + _headline(m) + ["", "## Per class", ""] + _per_class(m, names)
    lines += ["", "## Breakdowns", ""] + _breakdowns(m) + ["", "## Plots", ""]
    lines += [f"![{p.stem}]({p.relative_to(root).as_posix()})" for p in figures]
    if cams:
        lines += ["", "## Grad-CAM", ""] + [f"![{p.stem}]({p.relative_to(root).as_posix()})" for p in cams]
    if separability_md:
        lines += ["", "## Ideal-observer report (physics)", "", separability_md]
    return "\n".join(lines) + "\n"
