"""``evaluate``: a trained checkpoint on a held-out split -> a report folder.

Folder layout: ``metrics.json``, ``report.md`` (tables, embedded plots, the ideal-observer ceiling and
the gap to it), ``plots/*.png`` and ``gradcam/*.png``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader

from alloynet.captures.stores import ObjectStore
from alloynet.data.dataset import CaptureDataset
from alloynet.data.manifest import open_dataset, thickness_strata
from alloynet.data.rigs import data_prior, rig_settings
from alloynet.evaluate import plots
from alloynet.evaluate.baselines import dataset_arrays, run_baselines
from alloynet.evaluate.bootstrap import balanced_accuracy
from alloynet.evaluate.gradcam import save_gradcam
from alloynet.evaluate.markdown import render
from alloynet.evaluate.metrics import classification_metrics, regression_metrics
from alloynet.evaluate.predict import predict
from alloynet.models.checkpoint import load_model
from alloynet.physics.alloys import GROUPS, alloy_group
from alloynet.physics.bracket import phrase_gap
from alloynet.physics.observer import ThicknessPrior
from alloynet.physics.rig_profile import load_rig_profile
from alloynet.physics.separability import mixed_ceiling
from alloynet.physics.simulator import plate_rows
from alloynet.serialize import jsonable


def regression_summary(p: dict[str, np.ndarray]) -> dict[str, float]:
    t, a0, mu = (regression_metrics(p[f"pred_{k}"], p[f"true_{k}"]) for k in ("thickness_mm", "a0", "mu_eff"))
    return {
        "thickness_mae_mm": t["mae"],
        "thickness_rmse_mm": t["rmse"],
        "thickness_r2": t["r2"],
        "a0_mae": a0["mae"],
        "a0_r2": a0["r2"],
        "mu_eff_mae": mu["mae"],
        "mu_eff_r2": mu["r2"],
    }


def per_thickness(rows: pd.DataFrame, p: dict[str, np.ndarray], names: list[str]) -> dict[str, dict]:
    """Accuracy and thickness error per nominal thickness, or per thickness stratum (quantile bin, labelled
    with its range) when thicknesses are continuous; captures with no thickness (a lab gave none) in their own
    row, ``unknown``."""
    out = {}
    nominal = rows.nominal_thickness_mm.to_numpy(float)
    known = np.isfinite(nominal)
    strata = np.full(len(rows), np.nan)
    if known.any():
        strata[known] = thickness_strata(rows.nominal_thickness_mm[known].reset_index(drop=True)).to_numpy()
    for s in [*np.unique(strata[known]), None]:
        m = ~known if s is None else strata == s
        if not m.any():
            continue
        lo, hi = (nominal[m].min(), nominal[m].max()) if s is not None else (0.0, 0.0)
        label = "unknown" if s is None else f"{lo:g}" if lo == hi else f"{lo:.2f}-{hi:.2f}"
        cls = classification_metrics(p["y"][m], p["probs"][m], names)
        mae = regression_metrics(p["pred_thickness_mm"][m], p["true_thickness_mm"][m])["mae"]
        out[label] = {
            "n": int(m.sum()),
            "accuracy": cls["accuracy"],
            "balanced_accuracy": cls["balanced_accuracy"],
            "thickness_mae_mm": mae,
        }
    return out


def ceiling(rigs: dict[float, tuple[object, int]], prior: ThicknessPrior, **separability_kw) -> dict[str, Any]:
    """What physics allows for the rig that took these captures (the bracket of ``alloynet.physics.bracket``,
    lower and upper edge with their errors), per wedge, weighted by captures."""
    mixed = mixed_ceiling(
        list(rigs.values()), thicknesses_mm=prior.values_mm, thickness_range_mm=prior.range_mm, **separability_kw
    )
    # ceiling_accuracy is the bracket's lower edge (the key earlier readers know); ceiling_upper its upper edge
    return {
        "ceiling_accuracy": mixed["accuracy"],
        "ceiling_recall": mixed["recall"],
        "ceiling_heavy_light": mixed["group_accuracy"],
        "ceiling_prior": mixed["prior"],
        "ceiling_lower": mixed["accuracy"],
        "ceiling_lower_se": mixed["accuracy_se"],
        "ceiling_upper": mixed["upper"],
        "ceiling_upper_se": mixed["upper_se"],
        "ceiling_heavy_light_upper": mixed["group_accuracy_upper"],
        "ceiling_hard_pairs": mixed["hard_pairs"],
        "ceiling_pairs": mixed["pairs"],
        "markdown": mixed["markdown"],
    }


def heavy_light(y: np.ndarray, group_probs: np.ndarray, names: list[str]) -> float:
    """Balanced accuracy of the heavy (Cu/Zn-bearing) vs light decision."""
    truth = np.array([GROUPS.index(alloy_group(names[c])) for c in y])
    pred = np.asarray(group_probs).argmax(1)
    return float(np.mean([(pred[truth == g] == g).mean() for g in np.unique(truth)]))


def group_probabilities(probs: np.ndarray, names: list[str]) -> np.ndarray:
    """Alloy probabilities [N, K] summed into group probabilities [N, len(GROUPS)] (heavy, light)."""
    return np.stack(
        [np.asarray(probs)[:, [GROUPS.index(alloy_group(c)) == g for c in names]].sum(1) for g in range(len(GROUPS))], 1
    )


def answer_metrics(p: dict[str, np.ndarray], names: list[str], coverage: float) -> dict[str, Any]:
    """What the line gets beside the argmax: calibration, conformal sets, the group, the flags."""
    from alloynet.contract import FLAG_NAMES
    from alloynet.evaluate.metrics import expected_calibration_error

    logits = p["logits"] - p["logits"].max(1, keepdims=True)
    raw = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    in_set = p["prediction_set"][np.arange(len(p["y"])), p["y"]] > 0.5
    per_class = [float(in_set[p["y"] == c].mean()) for c in range(len(names)) if (p["y"] == c).any()]
    return {
        "ece_uncalibrated": expected_calibration_error(raw, p["y"]),
        "coverage_target": coverage,
        "set_coverage": float(np.mean(per_class)),
        "set_size_mean": float(p["prediction_set"].sum(1).mean()),
        "set_singleton_rate": float((p["prediction_set"].sum(1) == 1).mean()),
        "heavy_light_balanced_accuracy": heavy_light(p["y"], p["group_probs"], names),
        "flag_rates": {f: float(p["flags"][:, i].mean()) for i, f in enumerate(FLAG_NAMES)},
    }


def baseline_metrics(
    st: ObjectStore, labelled: pd.DataFrame, ds: CaptureDataset, rigs: dict, prior: ThicknessPrior, names: list[str]
) -> dict[str, dict]:
    """The physics fit and the Gaussian profile classifier on the same captures (see baselines.py)."""
    rows = plate_rows(next(iter(rigs.values()))[0])  # one strip for every wedge of a rig
    test = dataset_arrays(ds, rows)
    train = dataset_arrays(CaptureDataset(st, labelled, "train"), rows) if (labelled.split == "train").any() else None
    out = {}
    for name, res in run_baselines(train, test, {w: r for w, (r, _) in rigs.items()}, prior, names).items():
        if "skipped" in res:
            out[name] = {"skipped": res["skipped"]}
            continue
        m = classification_metrics(test["y"], res["probs"], names)
        out[name] = {
            "balanced_accuracy": m["balanced_accuracy"],
            "accuracy": m["accuracy"],
            "heavy_light_balanced_accuracy": heavy_light(test["y"], group_probabilities(res["probs"], names), names),
            "recall": {c: m["per_class"][c]["recall"] for c in names},
        }
        if "thickness_mm" in res:
            out[name]["thickness_mae_mm"] = regression_metrics(res["thickness_mm"], test["thickness_mm"])["mae"]
    return out


def trained_rig_profile(meta: dict) -> str | None:
    """The rig profile the model's physics term was tabulated from (``data.synthetic.rig_profile``: a run's
    copy of the store's rig profile, or the rig fitted to its labelled captures), so the ceiling and the physics
    fit describe the same rig by default; None where training's captures chose the nominal rig over it."""
    syn = (meta.get("config") or {}).get("data", {}).get("synthetic", {})
    if (meta.get("physics_correction") or {}).get("start") == "nominal rig":
        return None
    path = syn.get("rig_profile")
    return path if path and syn.get("simulator", "alloynet") == "alloynet" and Path(path).is_file() else None


def evaluate(
    checkpoint: str | Path,
    store: ObjectStore | str | Path,
    manifest: pd.DataFrame | str | Path | None,
    out_dir: str | Path,
    split: str = "test",
    *,
    device: str = "cpu",
    batch_size: int = 64,
    with_ceiling: bool = True,
    ceiling_kw: dict | None = None,
    gradcam: int = 4,
    baselines: bool = True,
    ceiling_rigs: dict | None = None,
    rig_profile: str | Path | None = None,
) -> dict[str, Any]:
    """Evaluate ``checkpoint`` on ``split`` of the manifest; writes the report folder; returns metrics.

    ``ceiling_rigs`` ({wedge_mm: rig config}) replaces the nominal rigs read from the sidecars for the
    ceiling and the physics fit (e.g. the second rig's own model, when that is known); ``rig_profile`` (from
    ``alloynet rig fit``; default: the one the model was trained from, if any) applies the simulator
    fitted to the lab's rig to them instead."""
    out = Path(out_dir)
    model, meta = load_model(checkpoint, device)
    if rig_profile is None and ceiling_rigs is None:
        rig_profile = trained_rig_profile(meta)
    st, df = open_dataset(store, manifest)
    labelled = df[df.labelled & (df.label >= 0)]
    if not (labelled.split == split).any():
        raise ValueError(f"no labelled captures in split {split!r} (splits: {sorted(labelled.split.unique())})")
    ds = CaptureDataset(st, labelled, split)
    terms: list[torch.Tensor] = []  # the physics term's share of each answer (the model's own fit, in its graph)
    hook = (
        model.physics.register_forward_hook(lambda _m, _i, o: terms.append(o[0].detach().float().cpu()))
        if getattr(model, "physics", None) is not None
        else None
    )
    try:
        p = predict(model, DataLoader(ds, batch_size=batch_size), device)
    finally:
        if hook is not None:
            hook.remove()
    names = list(meta["class_names"])
    metrics: dict[str, Any] = {
        "checkpoint": str(checkpoint),
        "split": split,
        "model": meta["model_spec"]["name"],
        "manifest_hash": meta["manifest_hash"],
        "trained_epochs": meta["epoch"],
    }
    metrics.update(classification_metrics(p["y"], p["probs"], names, meta.get("class_counts")))
    metrics.update(regression_summary(p))
    metrics.update(answer_metrics(p, names, float(model.answer.coverage)))
    metrics["per_thickness"] = per_thickness(ds.rows, p, names)
    if terms:
        metrics["physics_term"] = physics_share(p, torch.cat(terms).numpy(), float(model.physics.weight.detach()))
        metrics["physics_term"]["correction"] = meta.get("physics_correction")  # alloynet.physics.correction
    prior = data_prior(labelled)  # the data source's thickness prior, not only what the test split happened to get
    rigs = rig_settings(st, ds.rows)
    if ceiling_rigs:
        rigs = {w: (ceiling_rigs.get(w, r), n) for w, (r, n) in rigs.items()}
    elif rig_profile:
        profile = load_rig_profile(rig_profile)
        rigs = {w: (profile.apply(r), n) for w, (r, n) in rigs.items()}
        metrics["rig_profile"] = str(rig_profile)
    metrics["ceiling_accuracy"] = None
    if with_ceiling:
        ceil = ceiling(rigs, prior, **(ceiling_kw or {}))
        metrics.update(
            {
                k: ceil[k]
                for k in (
                    "ceiling_accuracy",
                    "ceiling_recall",
                    "ceiling_heavy_light",
                    "ceiling_prior",
                    "ceiling_lower",
                    "ceiling_lower_se",
                    "ceiling_upper",
                    "ceiling_upper_se",
                    "ceiling_heavy_light_upper",
                    "ceiling_hard_pairs",
                )
            }
        )
        metrics["ceiling_gap"] = ceil["ceiling_accuracy"] - metrics["balanced_accuracy"]
        metrics["ceiling_position"] = phrase_gap(
            metrics["balanced_accuracy"], ceil["ceiling_lower"], ceil["ceiling_upper"], ceil["ceiling_upper_se"]
        )
    if baselines:
        metrics["baselines"] = baseline_metrics(st, labelled, ds, rigs, prior, names)
    history = training_history(checkpoint, meta)
    metrics["epochs_run"] = len(history) or None
    figures = _plots(metrics, p, names, history, out, meta)
    cams = _gradcams(model, ds, p, names, out, gradcam)
    metrics = jsonable(metrics)
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1))
    # per capture, so two models on the same test set can be compared with uncertainty (evaluate/bootstrap.py)
    pd.DataFrame(
        {
            "capture_id": ds.rows.capture_id.to_numpy(),
            "true": [names[int(i)] for i in p["y"]],
            "predicted": [names[int(i)] for i in p["probs"].argmax(1)],
            **{f"p_{n}": p["probs"][:, i] for i, n in enumerate(names)},
        }
    ).to_csv(out / "predictions.csv", index=False)
    (out / "report.md").write_text(render(metrics, names, figures, cams, ceil["markdown"] if with_ceiling else None))
    return metrics


def physics_share(p: dict, term: np.ndarray, weight: float) -> dict[str, Any]:
    """What the physics term (``alloynet.models.physics_prior``) does to a model's answers: its learnt weight,
    the balanced accuracy of the term alone (the in-graph physics fit) and of the trunk alone (the logits
    without the term), and how often adding the term changes the answer. Grad-CAM shows the trunk's side."""
    y, logits = np.asarray(p["y"], int), np.asarray(p["logits"], np.float64)
    trunk = logits - term
    out = {
        "weight": weight,
        "trunk_alone": balanced_accuracy(y, trunk.argmax(1)),
        "changed": float(np.mean(trunk.argmax(1) != logits.argmax(1))),
        "term_alone": None,
    }
    if abs(weight) > 1e-6:
        out["term_alone"] = balanced_accuracy(y, (term / weight).argmax(1))
    return out


def training_history(checkpoint: str | Path, meta: dict) -> list[dict]:
    """Every trained epoch: best.pt carries the history up to its own epoch only, so the run's history.json beside
    it (written after the loop) is preferred when it continues that same history."""
    kept = list(meta.get("history") or [])
    beside = Path(checkpoint).parent / "history.json"
    if not beside.is_file():
        return kept
    try:
        full = json.loads(beside.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{beside}: not valid JSON ({exc}); expected the trainer's list of epochs") from None
    same_run = (
        isinstance(full, list)
        and all(isinstance(h, dict) and "epoch" in h for h in full)
        and (
            [h["epoch"] for h in full[: len(kept)]] == [h["epoch"] for h in kept]
            and all(h.keys() == k.keys() for h, k in zip(full, kept))
        )
    )
    if not same_run or len(full) < len(kept):
        return kept  # another run's history (the checkpoint was copied here): keep the checkpoint's own
    return full


def _stopped_early(history: list[dict], meta: dict) -> bool:
    planned = (meta.get("config") or {}).get("epochs")
    return bool(history) and isinstance(planned, int) and history[-1]["epoch"] < planned


def _plots(
    metrics: dict, p: dict, names: list[str], history: list[dict], out: Path, meta: dict | None = None
) -> list[Path]:
    d = out / "plots"
    figs = [
        plots.confusion(np.array(metrics["confusion_matrix"]), names, d / "confusion.png"),
        plots.confusion(np.array(metrics["confusion_matrix"]), names, d / "confusion_normalised.png", normalise=True),
    ]
    figs += plots.roc_pr_curves(p["y"], p["probs"], names, d / "roc.png", d / "pr.png")
    if history:
        best = (meta or {}).get("epoch")
        figs.append(
            plots.learning_curves(
                history, d / "learning_curves.png", best_epoch=best, stopped_early=_stopped_early(history, meta or {})
            )
        )
    figs.append(
        plots.thickness_scatter(
            p["true_thickness_mm"], p["pred_thickness_mm"], p["y"], names, d / "thickness_scatter.png"
        )
    )
    return figs


def _gradcams(model, ds: CaptureDataset, p: dict, names: list[str], out: Path, n: int) -> list[Path]:
    """One capture per class where possible (the first of each class in capture-id order)."""
    picks: list[int] = []
    for c in range(len(names)):
        idx = np.nonzero(p["y"] == c)[0]
        if len(idx) and len(picks) < n:
            picks.append(int(idx[0]))
    paths = []
    for i in picks:
        raw, cal, wedge, _ = ds[i]
        cid = ds.rows.capture_id[i]
        pred = int(p["probs"][i].argmax())
        title = f"{cid}: true {names[int(p['y'][i])]}, predicted {names[pred]} ({p['probs'][i, pred]:.2f})"
        device = next(model.parameters()).device
        paths.append(
            save_gradcam(
                model, raw.to(device), cal.to(device), wedge.to(device), out / "gradcam" / f"{cid}.png", title, names
            )
        )
    return paths
