"""Export: TorchScript, ONNX (dynamic batch, preprocessing and capture checks inside), TensorRT where
available; parity checks. Every format computes ``ServingGraph(model)``, whose inputs and outputs are
``alloynet.contract``'s.
"""

from alloynet.export.bundle import (
    ONNX_FILE,
    PLAN_FILE,
    TORCHSCRIPT_FILE,
    ExportBundle,
    export_checkpoint,
    export_model,
    meta_from_checkpoint,
    parity_captures,
)
from alloynet.export.graph import ExportMeta, ServingGraph
from alloynet.export.onnx_export import export_onnx, onnx_session, onnx_signature
from alloynet.export.parity import ParityError, ParityReport, check_parity
from alloynet.export.tensorrt import AccuracyGateFailed, TensorRTUnavailable, build_engine, tensorrt_status
from alloynet.export.torchscript import export_torchscript, load_torchscript

__all__ = [
    "AccuracyGateFailed",
    "ExportBundle",
    "ExportMeta",
    "ONNX_FILE",
    "PLAN_FILE",
    "ParityError",
    "ParityReport",
    "ServingGraph",
    "TORCHSCRIPT_FILE",
    "TensorRTUnavailable",
    "build_engine",
    "check_parity",
    "export_checkpoint",
    "export_model",
    "export_onnx",
    "export_torchscript",
    "load_torchscript",
    "meta_from_checkpoint",
    "onnx_session",
    "onnx_signature",
    "parity_captures",
    "tensorrt_status",
]
