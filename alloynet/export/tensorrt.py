"""TensorRT engine build (FP16, optional INT8 with an accuracy gate) from the exported ONNX model.

TensorRT needs an NVIDIA GPU and its own wheels; neither exists on the CPU machines here. Where it is
absent, ``tensorrt_status`` says why and ``build_engine`` raises ``TensorRTUnavailable`` so callers skip
the step with that message; nothing is ever faked. The portable alternative needs no build step: the
Triton ``onnxruntime`` config can ask for the TensorRT execution accelerator (see serving/triton).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from alloynet.contract import INPUT_NAMES, OUTPUT_NAMES, input_dims
from alloynet.export.graph import ExportMeta


class TensorRTUnavailable(RuntimeError):
    """TensorRT or a CUDA device is missing; the engine build is skipped, never faked."""


class AccuracyGateFailed(RuntimeError):
    """The engine disagrees with ONNX Runtime beyond the gate; no engine file is kept."""


@dataclass
class EngineReport:
    path: str
    precision: str
    build_s: float
    tensorrt_version: str
    device: str
    top1_agreement: float
    max_abs_prob_diff: float
    latency_ms_b1: float | None = None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def tensorrt_status() -> tuple[bool, str]:
    """(available, reason). Checks the Python package and a CUDA device, without building anything."""
    try:
        import tensorrt as trt  # noqa: F401
    except ImportError:
        return False, (
            "TensorRT is not installed (no `tensorrt` Python package); engines are built on a GPU "
            "worker with TensorRT. Skipping the engine build."
        )
    try:
        import torch

        if not torch.cuda.is_available():
            return False, "TensorRT is installed but no CUDA device is visible. Skipping the engine build."
        device = torch.cuda.get_device_name(0)
    except Exception as exc:  # a broken CUDA install must read as "unavailable", not crash the export
        return False, f"TensorRT is installed but CUDA is unusable ({exc}). Skipping the engine build."
    return True, f"TensorRT {trt.__version__} on {device}"


def build_engine(
    onnx_path: str | Path,
    plan_path: str | Path,
    meta: ExportMeta,
    precision: str = "fp16",
    captures: Mapping[str, np.ndarray] | None = None,
    max_batch: int = 32,
    opt_batch: int = 8,
    min_top1_agreement: float = 0.99,
    max_prob_diff: float = 0.02,
    workspace_gib: float = 2.0,
) -> EngineReport:
    """Build and gate a serialized engine (``model.plan``).

    ``captures``: real graph inputs {"image": float32 [N, C, H, W], "calibration": float32 [N, C, 2]}, used
    for INT8 calibration and, for every precision, for the accuracy gate: top-1 agreement with ONNX Runtime
    and the largest probability difference.
    """
    ok, reason = tensorrt_status()
    if not ok:
        raise TensorRTUnavailable(reason)
    if precision not in ("fp16", "int8", "fp32"):
        raise ValueError(f"precision must be fp16, int8 or fp32, got {precision!r}")
    if not captures or len(captures[INPUT_NAMES[0]]) == 0:
        raise ValueError("build_engine needs captures (INT8 calibration and the accuracy gate)")
    captures = {n: np.ascontiguousarray(captures[n], dtype=np.float32) for n in INPUT_NAMES}
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(Path(onnx_path).read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT could not parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    profile = builder.create_optimization_profile()
    for name in INPUT_NAMES:
        shape = tuple(input_dims(name, meta.channels, meta.height, meta.width))
        profile.set_shape(name, (1, *shape), (min(opt_batch, max_batch), *shape), (max_batch, *shape))
    config.add_optimization_profile(profile)
    notes: list[str] = []
    if precision in ("fp16", "int8"):
        config.set_flag(trt.BuilderFlag.FP16)
    if precision == "int8":
        if not hasattr(trt, "IInt8EntropyCalibrator2"):
            raise RuntimeError(
                f"TensorRT {trt.__version__} has no implicit INT8 calibration; quantise the ONNX "
                "model explicitly (Q/DQ nodes) and build with precision='fp16'"
            )
        config.set_flag(trt.BuilderFlag.INT8)
        config.int8_calibrator = _calibrator(trt, captures, batch=min(8, len(captures[INPUT_NAMES[0]])))
        config.set_calibration_profile(profile)
        notes.append(f"INT8 calibrated on {len(captures[INPUT_NAMES[0]])} captures (entropy calibrator)")
    t0 = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    build_s = time.perf_counter() - t0
    if serialized is None:
        raise RuntimeError("TensorRT engine build failed (see the TensorRT log above)")
    engine_bytes = bytes(serialized)
    report = _gate(trt, engine_bytes, onnx_path, captures, precision, build_s, notes)
    if report.top1_agreement < min_top1_agreement or report.max_abs_prob_diff > max_prob_diff:
        raise AccuracyGateFailed(
            f"{precision} engine: top-1 agreement {report.top1_agreement:.4f} "
            f"(need >= {min_top1_agreement}), max |dp| {report.max_abs_prob_diff:.4f} "
            f"(need <= {max_prob_diff}); engine discarded"
        )
    plan_path = Path(plan_path)
    plan_path.parent.mkdir(parents=True, exist_ok=True)
    plan_path.write_bytes(engine_bytes)
    report.path = str(plan_path)
    return report


def run_engine(trt, engine, inputs: Mapping[str, np.ndarray]) -> list[np.ndarray]:
    """Run a deserialized engine on graph inputs {name: float32 [B, ...]} (torch CUDA tensors as buffers)."""
    import torch

    ctx = engine.create_execution_context()
    held = {}
    for name in INPUT_NAMES:
        held[name] = torch.from_numpy(np.ascontiguousarray(inputs[name], dtype=np.float32)).cuda()
        ctx.set_input_shape(name, tuple(held[name].shape))
        ctx.set_tensor_address(name, held[name].data_ptr())
    outs = {}
    for name in OUTPUT_NAMES:
        outs[name] = torch.empty(tuple(ctx.get_tensor_shape(name)), dtype=torch.float32, device="cuda")
        ctx.set_tensor_address(name, outs[name].data_ptr())
    stream = torch.cuda.current_stream()
    if not ctx.execute_async_v3(stream.cuda_stream):
        raise RuntimeError("TensorRT execution failed")
    stream.synchronize()
    return [outs[n].cpu().numpy() for n in OUTPUT_NAMES]


def _gate(
    trt,
    engine_bytes: bytes,
    onnx_path,
    captures: Mapping[str, np.ndarray],
    precision: str,
    build_s: float,
    notes: list[str],
) -> EngineReport:
    import torch

    from alloynet.export.onnx_export import onnx_session

    engine = trt.Runtime(trt.Logger(trt.Logger.WARNING)).deserialize_cuda_engine(engine_bytes)
    ref = onnx_session(onnx_path).run(None, dict(captures))[0]
    n = len(captures[INPUT_NAMES[0]])
    got = np.concatenate(
        [run_engine(trt, engine, {k: v[i : i + 32] for k, v in captures.items()})[0] for i in range(0, n, 32)]
    )
    one = {k: v[:1] for k, v in captures.items()}
    run_engine(trt, engine, one)
    t0 = time.perf_counter()
    for _ in range(50):
        run_engine(trt, engine, one)
    latency = (time.perf_counter() - t0) / 50 * 1e3
    return EngineReport(
        path="",
        precision=precision,
        build_s=build_s,
        tensorrt_version=trt.__version__,
        device=torch.cuda.get_device_name(0),
        top1_agreement=float((ref.argmax(1) == got.argmax(1)).mean()),
        max_abs_prob_diff=float(np.abs(ref - got).max()),
        latency_ms_b1=latency,
        notes=notes,
    )


def _calibrator(trt, data: Mapping[str, np.ndarray], batch: int):
    import torch

    n = len(data[INPUT_NAMES[0]])

    class _Entropy(trt.IInt8EntropyCalibrator2):
        def __init__(self):
            super().__init__()
            self.i = 0
            self.buf = {
                k: torch.empty((batch, *v.shape[1:]), dtype=torch.float32, device="cuda") for k, v in data.items()
            }

        def get_batch_size(self) -> int:
            return batch

        def get_batch(self, names):
            if self.i + batch > n:
                return None
            for k, b in self.buf.items():
                b.copy_(torch.from_numpy(data[k][self.i : self.i + batch]))
            self.i += batch
            return [int(self.buf[name].data_ptr()) for name in names]

        def read_calibration_cache(self):
            return None

        def write_calibration_cache(self, cache) -> None:
            return None

    return _Entropy()
