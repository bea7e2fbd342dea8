"""TorchScript export (traced: the contract models are static graphs over a fixed-size capture)."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn

from alloynet.contract import OUTPUT_NAMES, output_dims
from alloynet.export.graph import ExportMeta, ServingGraph, example_inputs


def export_torchscript(model: nn.Module, meta: ExportMeta, path: str | Path) -> Path:
    """Trace ``ServingGraph(model)`` and save it; the batch dimension stays free."""
    path = Path(path)
    graph = ServingGraph(model, meta.max_adu).eval()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning)  # torch.jit is deprecated but TorchServe loads it
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        traced = torch.jit.trace(graph, example_inputs(meta, batch=2), check_trace=False)
        traced = torch.jit.freeze(traced)
        # A trace at batch 2 must not have baked the batch size in: check other sizes here, once.
        for b in (1, 3):
            got = [tuple(o.shape) for o in traced(*example_inputs(meta, batch=b, seed=b))]
            want = [(b, *output_dims(n, meta.num_classes)) for n in OUTPUT_NAMES]
            if got != want:
                raise RuntimeError(f"TorchScript trace is not batch-size independent: got {got}, want {want}")
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.jit.save(traced, str(path))
    return path


def load_torchscript(path: str | Path) -> torch.jit.ScriptModule:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning)
        return torch.jit.load(str(path), map_location="cpu").eval()
