"""Evaluation: metrics, plots, Grad-CAM and the report folder.

Library API (what the CLI and the Prefect tasks call)::

    from alloynet.evaluate import evaluate
    metrics = evaluate(checkpoint, store, manifest, out_dir, split="test")

* ``evaluate(checkpoint: str | Path, store: ObjectStore | str | Path, manifest: DataFrame | str | Path | None,
  out_dir: str | Path, split: str = "test", *, device="cpu", batch_size=64, with_ceiling=True,
  ceiling_kw=None, gradcam=4) -> dict``. ``manifest=None`` reads ``<store>/manifest.csv`` (or scans the
  store). ``ceiling_kw`` goes to ``alloynet.physics.separability.separability`` (e.g. plates, mc_samples, pool).
* Writes ``out_dir/metrics.json`` (the returned dict, NaN as null), ``report.md``, ``plots/*.png``
  (confusion, confusion_normalised, roc, pr, learning_curves, thickness_scatter) and ``gradcam/*.png``.
* Keys include accuracy, balanced_accuracy, macro_f1, log_loss, roc_auc_macro, average_precision_macro,
  ece, confusion_matrix, per_class {alloy: {precision, recall, f1, specificity, support, roc_auc,
  average_precision}}, group_accuracy {head, medium, tail}, thickness_mae_mm, thickness_rmse_mm,
  thickness_r2, a0_mae, a0_r2, mu_eff_mae, mu_eff_r2, per_thickness, the physics bracket (ceiling_lower and
  ceiling_upper with ceiling_lower_se and ceiling_upper_se; ceiling_accuracy = ceiling_lower, kept for older
  readers; ceiling_recall, ceiling_heavy_light and ceiling_heavy_light_upper, ceiling_hard_pairs,
  ceiling_position: where the model stands, in words), ceiling_gap (= ceiling_accuracy - balanced_accuracy),
  model, split, checkpoint, manifest_hash.
"""

from alloynet.evaluate.report import evaluate

__all__ = ["evaluate"]
