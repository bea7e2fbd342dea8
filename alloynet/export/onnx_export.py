"""ONNX export with a dynamic batch dimension (torch.export-based exporter), checked with onnx.checker."""

from __future__ import annotations

import contextlib
import io
import warnings
from pathlib import Path

import torch
from torch import nn

from alloynet.contract import INPUT_NAMES, OUTPUT_NAMES, description, input_dims
from alloynet.export.graph import ExportMeta, ServingGraph, example_inputs

DEFAULT_OPSET = 18
MAX_BATCH = 1024


def export_onnx(model: nn.Module, meta: ExportMeta, path: str | Path, opset: int = DEFAULT_OPSET) -> Path:
    """Write ``ServingGraph(model)`` as a single-file ONNX model: input ``image`` float32 [B, C, H, W]."""
    import onnx

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    graph = ServingGraph(model, meta.max_adu).eval()
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    with torch.no_grad(), warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.filterwarnings("ignore")
        program = torch.onnx.export(
            graph,
            example_inputs(meta, batch=2),
            input_names=list(INPUT_NAMES),
            output_names=list(OUTPUT_NAMES),
            opset_version=opset,
            dynamo=True,
            dynamic_shapes={n: {0: batch} for n in INPUT_NAMES},
            external_data=False,
        )
    if program is None:  # dynamo=True always returns a program; this says so to the type checker
        raise RuntimeError("torch.onnx.export returned no program")
    program.save(str(path), external_data=False)
    proto = onnx.load(str(path))
    # the model file describes itself: names, groups, status codes, contract version and coverage
    del proto.metadata_props[:]
    for key, value in describe(meta).items():
        proto.metadata_props.add(key=key, value=value)
    onnx.save(proto, str(path))
    onnx.checker.check_model(proto, full_check=True)
    _check_signature(proto, meta)
    return path


def describe(meta: ExportMeta) -> dict[str, str]:
    """The contract's description of this model (``alloynet.contract.description``)."""
    return description(
        meta.class_names, meta.class_groups, meta.coverage if meta.coverage is not None else 0.0, meta.max_adu
    )


def _dims(value_info) -> list:
    return [d.dim_param or d.dim_value for d in value_info.type.tensor_type.shape.dim]


def onnx_signature(path_or_proto) -> dict[str, dict[str, list]]:
    """{"inputs": {name: dims}, "outputs": {name: dims}}; a symbolic dim is its name (e.g. "batch")."""
    import onnx

    proto = onnx.load(str(path_or_proto)) if isinstance(path_or_proto, (str, Path)) else path_or_proto
    inits = {i.name for i in proto.graph.initializer}
    return {
        "inputs": {i.name: _dims(i) for i in proto.graph.input if i.name not in inits},
        "outputs": {o.name: _dims(o) for o in proto.graph.output},
    }


def _check_signature(proto, meta: ExportMeta) -> None:
    sig = onnx_signature(proto)
    want_in = {n: input_dims(n, meta.channels, meta.height, meta.width) for n in INPUT_NAMES}
    got_in = {k: v[1:] for k, v in sig["inputs"].items()}
    if got_in != want_in or any(isinstance(v[0], int) for v in sig["inputs"].values()):
        raise RuntimeError(f"ONNX input signature {sig['inputs']} does not match [batch, ...] {want_in}")
    if list(sig["outputs"]) != list(OUTPUT_NAMES):
        raise RuntimeError(f"ONNX outputs {list(sig['outputs'])} != {list(OUTPUT_NAMES)}")


def onnx_session(path: str | Path, threads: int = 0):
    """A CPU ONNX Runtime session (``threads`` 0 = ONNX Runtime's default)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
