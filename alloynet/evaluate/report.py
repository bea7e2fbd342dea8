"""``evaluate``: a trained checkpoint on a held-out split -> a report folder.

Folder layout: ``metrics.json``, ``report.md`` (tables, embedded plots, the ideal-observer ceiling and
the gap to it), ``plots/*.png`` and ``gradcam/*.png``.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pandas as pd
from torch.utils.data import DataLoader

from alloynet.captures.format import parse_sidecar
from alloynet.captures.layout import sidecar_key
from alloynet.captures.stores import ObjectStore
from alloynet.data.dataset import CaptureDataset
from alloynet.data.manifest import open_dataset
from alloynet.evaluate import plots
from alloynet.evaluate.gradcam import save_gradcam
from alloynet.evaluate.markdown import render
from alloynet.evaluate.metrics import classification_metrics, regression_metrics
from alloynet.evaluate.predict import predict
from alloynet.models.checkpoint import load_model
from alloynet.serialize import jsonable


def regression_summary(p: dict[str, np.ndarray]) -> dict[str, float]:
    t, a0, mu = (regression_metrics(p[f"pred_{k}"], p[f"true_{k}"]) for k in ("thickness_mm", "a0", "mu_eff"))
    return {"thickness_mae_mm": t["mae"], "thickness_rmse_mm": t["rmse"], "thickness_r2": t["r2"],
            "a0_mae": a0["mae"], "a0_r2": a0["r2"], "mu_eff_mae": mu["mae"], "mu_eff_r2": mu["r2"]}


def per_thickness(rows: pd.DataFrame, p: dict[str, np.ndarray], names: list[str]) -> dict[str, dict]:
    out = {}
    nominal = rows.nominal_thickness_mm.to_numpy(float)
    for t in np.unique(nominal):
        m = nominal == t
        cls = classification_metrics(p["y"][m], p["probs"][m], names)
        out[f"{t:g}"] = {"n": int(m.sum()), "accuracy": cls["accuracy"], "balanced_accuracy": cls["balanced_accuracy"],
                         "thickness_mae_mm": float(np.abs(p["pred_thickness_mm"][m] - p["true_thickness_mm"][m]).mean())}
    return out


def ceiling(store: ObjectStore, rows: pd.DataFrame, **separability_kw) -> dict[str, Any]:
    """The ideal observer for the rig that took these captures, per wedge, weighted by captures."""
    from alloynet.physics.separability import mixed_ceiling
    from alloynet.physics.simulator import RigConfig

    thick = sorted(rows.nominal_thickness_mm.unique().tolist())
    if len(thick) > 6:  # a continuous thickness range: the ideal observer over six quantiles of it
        thick = np.quantile(thick, np.linspace(0, 1, 6)).round(3).tolist()
    rigs = []
    for _, group in rows.groupby("wedge_mm", sort=True):
        sc = parse_sidecar(store.get(sidecar_key(group.capture_id.iloc[0])))
        rig = RigConfig(kvp=sc.rig.kvp, tube_current_ua=sc.rig.tube_current_ua, anode_angle_deg=sc.rig.anode_angle_deg,
                        filtration_mm_al=sc.rig.filtration_mm_al, wedge_mm=sc.rig.wedge_mm,
                        wedge_min_mm=sc.rig.wedge_min_mm, wedge_material=sc.rig.wedge_material,
                        height=int(group.height.iloc[0]), width=int(group.width.iloc[0]),
                        **({"dose": sc.rig.dose} if sc.rig.dose else {}))
        rigs.append((rig, len(group)))
    mixed = mixed_ceiling(rigs, thick, **separability_kw)
    return {"ceiling_accuracy": mixed["accuracy"], "ceiling_recall": mixed["recall"], "markdown": mixed["markdown"]}


def evaluate(checkpoint: str | Path, store: ObjectStore | str | Path, manifest: pd.DataFrame | str | Path | None,
             out_dir: str | Path, split: str = "test", *, device: str = "cpu", batch_size: int = 64,
             with_ceiling: bool = True, ceiling_kw: Optional[dict] = None, gradcam: int = 4) -> dict[str, Any]:
    """Evaluate ``checkpoint`` on ``split`` of the manifest; writes the report folder; returns metrics."""
    out = Path(out_dir)
    model, meta = load_model(checkpoint, device)
    st, df = open_dataset(store, manifest)
    labelled = df[df.labelled & (df.label >= 0)]
    if not (labelled.split == split).any():
        raise ValueError(f"no labelled captures in split {split!r} (splits: {sorted(labelled.split.unique())})")
    ds = CaptureDataset(st, labelled, split)
    p = predict(model, DataLoader(ds, batch_size=batch_size), device)
    names = list(meta["class_names"])
    metrics: dict[str, Any] = {"checkpoint": str(checkpoint), "split": split, "model": meta["model_spec"]["name"],
                               "manifest_hash": meta["manifest_hash"], "trained_epochs": meta["epoch"]}
    metrics.update(classification_metrics(p["y"], p["probs"], names, meta.get("class_counts")))
    metrics.update(regression_summary(p))
    metrics["per_thickness"] = per_thickness(ds.rows, p, names)
    metrics["ceiling_accuracy"] = None
    if with_ceiling:
        ceil = ceiling(st, ds.rows, **(ceiling_kw or {}))
        metrics.update({k: ceil[k] for k in ("ceiling_accuracy", "ceiling_recall")})
        metrics["ceiling_gap"] = ceil["ceiling_accuracy"] - metrics["balanced_accuracy"]
    figures = _plots(metrics, p, names, meta.get("history") or [], out)
    cams = _gradcams(model, ds, p, names, out, gradcam)
    metrics = jsonable(metrics)
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1))
    # per capture, so two models on the same test set can be compared with uncertainty (evaluate/bootstrap.py)
    pd.DataFrame({"capture_id": ds.rows.capture_id.to_numpy(), "true": [names[int(i)] for i in p["y"]],
                  "predicted": [names[int(i)] for i in p["probs"].argmax(1)],
                  **{f"p_{n}": p["probs"][:, i] for i, n in enumerate(names)}}).to_csv(out / "predictions.csv", index=False)
    (out / "report.md").write_text(render(metrics, names, figures, cams, ceil["markdown"] if with_ceiling else None))
    return metrics


def _plots(metrics: dict, p: dict, names: list[str], history: list[dict], out: Path) -> list[Path]:
    d = out / "plots"
    figs = [plots.confusion(np.array(metrics["confusion_matrix"]), names, d / "confusion.png"),
            plots.confusion(np.array(metrics["confusion_matrix"]), names, d / "confusion_normalised.png", normalise=True)]
    figs += plots.roc_pr_curves(p["y"], p["probs"], names, d / "roc.png", d / "pr.png")
    if history:
        figs.append(plots.learning_curves(history, d / "learning_curves.png"))
    figs.append(plots.thickness_scatter(p["true_thickness_mm"], p["pred_thickness_mm"], p["y"], names,
                                        d / "thickness_scatter.png"))
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
        raw, _ = ds[i]
        cid = ds.rows.capture_id[i]
        pred = int(p["probs"][i].argmax())
        title = f"{cid}: true {names[int(p['y'][i])]}, predicted {names[pred]} ({p['probs'][i, pred]:.2f})"
        paths.append(save_gradcam(model, raw.to(next(model.parameters()).device), out / "gradcam" / f"{cid}.png",
                                  title, names))
    return paths
