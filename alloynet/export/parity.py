"""Parity: the checkpoint, TorchScript and ONNX Runtime must agree on the same captures."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from alloynet.contract import INPUT_NAME, OUTPUT_NAMES
from alloynet.export.graph import ServingGraph


class ParityError(AssertionError):
    """An exported format disagrees with the checkpoint beyond tolerance."""


@dataclass
class ParityReport:
    n_captures: int
    prob_atol: float
    reg_rtol: float
    # format -> output name -> largest absolute difference from the checkpoint
    max_abs_diff: dict[str, dict[str, float]] = field(default_factory=dict)
    top1_agreement: dict[str, float] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures

    def to_dict(self) -> dict:
        return {**asdict(self), "ok": self.ok}


def reference_outputs(model: nn.Module, images: np.ndarray) -> list[np.ndarray]:
    with torch.no_grad():
        return [t.numpy() for t in ServingGraph(model).eval()(torch.from_numpy(images))]


def check_parity(model: nn.Module, images: np.ndarray, torchscript_path: str | Path | None = None,
                 onnx_path: str | Path | None = None, prob_atol: float = 1e-4, reg_rtol: float = 1e-4,
                 raise_on_failure: bool = True) -> ParityReport:
    """Compare each exported format to the eager model on raw captures float32 [N, C, H, W].

    Probabilities must agree within ``prob_atol``; thickness and absorption (physical units, magnitudes
    from ~0.1 to ~100) within ``reg_rtol`` relative to the larger of |value| and 1.
    """
    images = np.ascontiguousarray(images, dtype=np.float32)
    model = model.eval()
    ref = reference_outputs(model, images)
    candidates: dict[str, list[np.ndarray]] = {}
    if torchscript_path is not None:
        from alloynet.export.torchscript import load_torchscript

        with torch.no_grad():
            candidates["torchscript"] = [t.numpy() for t in load_torchscript(torchscript_path)(torch.from_numpy(images))]
    if onnx_path is not None:
        from alloynet.export.onnx_export import onnx_session

        candidates["onnxruntime"] = onnx_session(onnx_path).run(list(OUTPUT_NAMES), {INPUT_NAME: images})
    report = ParityReport(n_captures=len(images), prob_atol=prob_atol, reg_rtol=reg_rtol)
    for fmt, outs in candidates.items():
        report.max_abs_diff[fmt] = {}
        for name, r, o in zip(OUTPUT_NAMES, ref, outs):
            if r.shape != o.shape:
                report.failures.append(f"{fmt}: {name} has shape {o.shape}, checkpoint {r.shape}")
                continue
            diff = np.abs(r.astype(np.float64) - o)
            report.max_abs_diff[fmt][name] = float(diff.max()) if diff.size else 0.0
            tol = prob_atol if name == "probabilities" else reg_rtol * np.maximum(np.abs(r), 1.0)
            if not np.all(np.isfinite(o)) or np.any(diff > tol):
                report.failures.append(f"{fmt}: {name} differs from the checkpoint by up to "
                                       f"{report.max_abs_diff[fmt][name]:.3g} (tolerance "
                                       f"{prob_atol if name == 'probabilities' else f'{reg_rtol} relative'})")
        report.top1_agreement[fmt] = float((outs[0].argmax(1) == ref[0].argmax(1)).mean())
    if raise_on_failure and report.failures:
        raise ParityError("parity failed: " + "; ".join(report.failures))
    return report
