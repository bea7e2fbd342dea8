"""Write a Triton model repository from an export bundle, and validate its config.

One model, named for clients (``alloynet`` by default), whatever runs it: the backend is a deployment choice.

    alloynet_ort   alloynet's own CPU backend (serving/triton/backend/alloynet_ort.cc), for servers without the
                   onnxruntime backend (pytriton's tritonserver); the default on CPU
    onnxruntime    Triton's stock onnxruntime backend; on GPU instances with the TensorRT execution accelerator
    tensorrt       a TensorRT plan (only when the bundle has an engine)

Every backend runs the same exported graph, so every one takes and returns what ``alloynet.contract`` declares,
status included, and the config's parameters describe the model (``alloynet.contract.description``).
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from alloynet import contract
from alloynet.export import ExportBundle, ExportMeta, onnx_signature
from alloynet.export.onnx_export import describe

NATIVE_BACKEND = "alloynet_ort"  # libtriton_alloynet_ort.so, built by infra/serving_env.sh
BACKENDS = (NATIVE_BACKEND, "onnxruntime", "tensorrt")


@dataclass
class BatchingOptions:
    max_batch_size: int = 32
    preferred_batch_sizes: Sequence[int] = (4, 8, 16)
    # 0: a request is run as soon as the instance is free; requests that arrive while it is busy are batched
    # anyway. A queue delay is paid by every lone request and bought no throughput (docs/benchmarks.md).
    max_queue_delay_us: int = 0
    instances: int = 1
    intra_op_threads: int = 1


def _tensor(name: str, dims: Sequence[int], reshape_scalar: bool = False) -> str:
    # A per-item scalar output ([B] overall) is declared as [1] and reshaped to [] (Triton's idiom).
    reshape = " reshape: { shape: [ ] }" if reshape_scalar else ""
    return f'  {{ name: "{name}" data_type: TYPE_FP32 dims: [ {", ".join(str(d) for d in dims)} ]{reshape} }}'


def config_text(
    name: str, meta: ExportMeta, backend: str, opts: BatchingOptions, gpu: bool = False, trt_precision: str = "FP16"
) -> str:
    """config.pbtxt for backend "alloynet_ort" (alloynet's own), "onnxruntime" or "tensorrt"."""
    header = {
        NATIVE_BACKEND: f'backend: "{NATIVE_BACKEND}"',
        "onnxruntime": 'platform: "onnxruntime_onnx"\nbackend: "onnxruntime"',
        "tensorrt": 'platform: "tensorrt_plan"\nbackend: "tensorrt"',
    }[backend]
    dims = {n: contract.output_dims(n, meta.num_classes) for n in contract.OUTPUT_NAMES}
    outputs = [_tensor(n, d or [1], reshape_scalar=not d) for n, d in dims.items()]
    kind = "KIND_GPU" if gpu or backend == "tensorrt" else "KIND_CPU"
    preferred = ", ".join(str(b) for b in opts.preferred_batch_sizes if b <= opts.max_batch_size)
    parts = [
        f'name: "{name}"',
        header,
        f"max_batch_size: {opts.max_batch_size}",
        "input [\n"
        + ",\n".join(_tensor(n, contract.input_dims(n, *meta.input_shape)) for n in contract.INPUT_NAMES)
        + "\n]",
        "output [\n" + ",\n".join(outputs) + "\n]",
        f"dynamic_batching {{\n  preferred_batch_size: [ {preferred} ]\n"
        f"  max_queue_delay_microseconds: {opts.max_queue_delay_us}\n}}",
        f"instance_group [ {{ kind: {kind} count: {opts.instances} }} ]",
    ]
    params: dict[str, object] = dict(describe(meta))
    if backend == NATIVE_BACKEND:  # what alloynet_ort.cc reads: the names in the graph's order
        params.update(
            intra_op_threads=opts.intra_op_threads,
            input_names=",".join(contract.INPUT_NAMES),
            output_names=",".join(contract.OUTPUT_NAMES),
        )
    parts += [f'parameters {{ key: "{k}" value: {{ string_value: "{v}" }} }}' for k, v in params.items()]
    if backend == "onnxruntime":
        parts.append(
            f'parameters {{ key: "intra_op_thread_count" value: {{ string_value: "{opts.intra_op_threads}" }} }}'
        )
        if gpu:  # the portable TensorRT path: ORT builds and caches engines itself on the GPU server
            parts.append(
                "optimization { execution_accelerators { gpu_execution_accelerator : [ {\n"
                '  name : "tensorrt"\n'
                f'  parameters {{ key: "precision_mode" value: "{trt_precision}" }}\n'
                '  parameters { key: "max_workspace_size_bytes" value: "1073741824" }\n'
                '  parameters { key: "trt_engine_cache_enable" value: "true" }\n'
                "} ] } }"
            )
    return "\n".join(parts) + "\n"


def build_repository(
    bundle_dir: str | Path,
    out_dir: str | Path,
    name: str = "alloynet",
    opts: BatchingOptions | None = None,
    gpu: bool = False,
    backend: str | None = None,
) -> Path:
    """Write the model ``name`` into the repository ``out_dir`` (replacing a model of that name) with
    ``backend`` (default: alloynet's own on CPU, onnxruntime with ``gpu``), validate its config, return the
    repository's path."""
    opts = opts or BatchingOptions()
    backend = backend or ("onnxruntime" if gpu else NATIVE_BACKEND)
    if backend not in BACKENDS:
        raise ValueError(f"backend {backend!r}: expected one of {list(BACKENDS)}")
    bundle = ExportBundle.load(bundle_dir)
    meta = bundle.meta
    if meta.contract_version != contract.VERSION:
        raise ValueError(
            f"{bundle.directory / contract.META_FILE}: exported for contract version "
            f"{meta.contract_version}, this repository builder writes version {contract.VERSION}: "
            "export the model again"
        )
    src, dst = (bundle.path("tensorrt"), "model.plan") if backend == "tensorrt" else (bundle.path("onnx"), "model.onnx")
    repo = Path(out_dir)
    d = repo / name
    shutil.rmtree(d, ignore_errors=True)
    (d / "1").mkdir(parents=True)
    shutil.copy2(src, d / "1" / dst)
    shutil.copy2(bundle.directory / contract.META_FILE, d / "1" / contract.META_FILE)  # what it was exported from
    (d / "config.pbtxt").write_text(config_text(name, meta, backend, opts, gpu=gpu))
    validate_config(d / "config.pbtxt", bundle.path("onnx"), meta)
    return repo


def parse_config(path: str | Path):
    """config.pbtxt -> inference.ModelConfig (protobuf text format; raises on any syntax error)."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    return text_format.Parse(Path(path).read_text(), model_config_pb2.ModelConfig())


def validate_config(path: str | Path, onnx_path: str | Path, meta: ExportMeta) -> None:
    """Parse a config and check its names, types and dims against the ONNX model; ValueError if wrong."""
    from tritonclient.grpc import model_config_pb2 as mc

    cfg = parse_config(path)
    sig = onnx_signature(onnx_path)
    problems = []
    if cfg.name != Path(path).parent.name:
        problems.append(f"name {cfg.name!r} differs from the directory {Path(path).parent.name!r}")
    if cfg.max_batch_size < 1:
        problems.append("max_batch_size must be >= 1 (the ONNX model has a dynamic batch dimension)")
    for kind, declared in (("inputs", cfg.input), ("outputs", cfg.output)):
        want = {k: list(v[1:]) for k, v in sig[kind].items()}  # drop the batch dimension
        got = {}
        for t in declared:
            if t.data_type != mc.TYPE_FP32:
                problems.append(f"{kind[:-1]} {t.name}: data_type {mc.DataType.Name(t.data_type)}, ONNX has FP32")
            got[t.name] = list(t.reshape.shape) if t.HasField("reshape") else list(t.dims)
        if got != want:
            problems.append(f"{kind}: config declares {got}, ONNX model has {want}")
    if problems:
        raise ValueError(f"{path}: " + "; ".join(problems))
