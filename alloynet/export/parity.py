"""Parity: the checkpoint, TorchScript and ONNX Runtime must agree on the same captures."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from alloynet.contract import INPUT_NAMES, MAX_ADU, OUTPUT_NAMES
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


PROBABILITY_OUTPUTS = ("probabilities", "group_probabilities")
INDICATOR_OUTPUTS = ("prediction_set", "flags", "status")  # 0/1 and codes: must agree exactly


def _as_inputs(inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    missing = [n for n in INPUT_NAMES if n not in inputs]
    if missing:
        raise ValueError(f"parity inputs lack {missing}; the graph takes {list(INPUT_NAMES)}")
    return {n: np.ascontiguousarray(inputs[n], dtype=np.float32) for n in INPUT_NAMES}


def reference_outputs(model: nn.Module, inputs: Mapping[str, np.ndarray], max_adu: float = MAX_ADU) -> list[np.ndarray]:
    graph = ServingGraph(model, max_adu).eval()
    with torch.no_grad():
        return [t.numpy() for t in graph(*(torch.from_numpy(inputs[n]) for n in INPUT_NAMES))]


def _tolerance(name: str, ref: np.ndarray, prob_atol: float, reg_rtol: float):
    if name in PROBABILITY_OUTPUTS:
        return prob_atol
    if name in INDICATOR_OUTPUTS:
        return 0.0
    return reg_rtol * np.maximum(np.abs(ref), 1.0)


def check_parity(
    model: nn.Module,
    inputs: Mapping[str, np.ndarray],
    torchscript_path: str | Path | None = None,
    onnx_path: str | Path | None = None,
    prob_atol: float = 1e-4,
    reg_rtol: float = 1e-4,
    raise_on_failure: bool = True,
    max_adu: float = MAX_ADU,
) -> ParityReport:
    """Compare each exported format to the eager model on real captures: ``inputs`` = {"image": float32
    [N, C, H, W] raw ADU, "calibration": float32 [N, C, 2]}.

    Probabilities must agree within ``prob_atol``; thickness and absorption (physical units, magnitudes
    from ~0.1 to ~100) within ``reg_rtol`` relative to the larger of |value| and 1; prediction sets and
    flags exactly.
    """
    inputs = _as_inputs(inputs)
    model = model.eval()
    ref = reference_outputs(model, inputs, max_adu)
    candidates: dict[str, list[np.ndarray]] = {}
    if torchscript_path is not None:
        from alloynet.export.torchscript import load_torchscript

        with torch.no_grad():
            ts = load_torchscript(torchscript_path)
            candidates["torchscript"] = [t.numpy() for t in ts(*(torch.from_numpy(inputs[n]) for n in INPUT_NAMES))]
    if onnx_path is not None:
        from alloynet.export.onnx_export import onnx_session

        candidates["onnxruntime"] = onnx_session(onnx_path).run(list(OUTPUT_NAMES), inputs)
    report = ParityReport(n_captures=len(inputs[INPUT_NAMES[0]]), prob_atol=prob_atol, reg_rtol=reg_rtol)
    for fmt, outs in candidates.items():
        report.max_abs_diff[fmt] = {}
        for name, r, o in zip(OUTPUT_NAMES, ref, outs, strict=True):
            if r.shape != o.shape:
                report.failures.append(f"{fmt}: {name} has shape {o.shape}, checkpoint {r.shape}")
                continue
            diff = np.abs(r.astype(np.float64) - o)
            report.max_abs_diff[fmt][name] = float(diff.max()) if diff.size else 0.0
            if not np.all(np.isfinite(o)) or np.any(diff > _tolerance(name, r, prob_atol, reg_rtol)):
                report.failures.append(
                    f"{fmt}: {name} differs from the checkpoint by up to {report.max_abs_diff[fmt][name]:.3g}"
                )
        report.top1_agreement[fmt] = float((outs[0].argmax(1) == ref[0].argmax(1)).mean())
    if raise_on_failure and report.failures:
        raise ParityError("parity failed: " + "; ".join(report.failures))
    return report
