"""TorchScript export (traced: the contract models are static graphs over a fixed-size capture)."""
from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn

from alloynet.export.graph import ExportMeta, ServingGraph, example_input


def export_torchscript(model: nn.Module, meta: ExportMeta, path: str | Path) -> Path:
    """Trace ``ServingGraph(model)`` and save it; the batch dimension stays free."""
    path = Path(path)
    graph = ServingGraph(model).eval()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning)  # torch.jit is deprecated but TorchServe loads it
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        traced = torch.jit.trace(graph, example_input(meta, batch=2), check_trace=False)
        traced = torch.jit.freeze(traced)
        # A trace at batch 2 must not have baked the batch size in: check another size here, once.
        for b in (1, 3):
            p, t, a = traced(example_input(meta, batch=b, seed=b))
            if p.shape != (b, meta.num_classes) or t.shape != (b,) or a.shape != (b, 2):
                raise RuntimeError(f"TorchScript trace is not batch-size independent: got {p.shape}, {t.shape}, "
                                   f"{a.shape} for batch {b}")
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.jit.save(traced, str(path))
    return path


def load_torchscript(path: str | Path) -> torch.jit.ScriptModule:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning)
        return torch.jit.load(str(path), map_location="cpu").eval()
