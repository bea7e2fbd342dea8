"""Packaging an export bundle for the model servers, through the packagers in serving/.

alloynet/ cannot import serving/ (serving depends on alloynet), so the bridge lives here, on the flows side.
A requested format that cannot be built is an error, never a silent skip: a promotion that cannot package
leaves the old champion serving.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from alloynet.export.bundle import PLAN_FILE
from infra.processes import find_binary
from serving.torchserve.archive import build_mar
from serving.triton.repository import build_repository

# "triton": alloynet's own CPU backend (what `alloynet serve` runs on pytriton's tritonserver);
# "triton-gpu": the same model name on Triton's stock backends (NVIDIA's image, infra/k8s/triton.yaml): the
# bundle's TensorRT plan where it has one, else onnxruntime with the TensorRT accelerator.
FORMATS = ("torchserve", "triton", "triton-gpu")


def _torchserve(bundle_dir: Path, out: Path, version: str) -> Path:
    return build_mar(bundle_dir, out, model_name="alloynet", version=version)


def _triton(bundle_dir: Path, out: Path, version: str) -> Path:
    return Path(build_repository(bundle_dir, out, name="alloynet"))


def _triton_gpu(bundle_dir: Path, out: Path, version: str) -> Path:
    backend = "tensorrt" if (bundle_dir / PLAN_FILE).exists() else "onnxruntime"
    return Path(build_repository(bundle_dir, out, name="alloynet", gpu=True, backend=backend))


_PACKAGERS = {"torchserve": _torchserve, "triton": _triton, "triton-gpu": _triton_gpu}


def available_formats() -> list[str]:
    """Formats whose tools are installed (the ``serve`` extra): torch-model-archiver for TorchServe,
    tritonclient (config validation) for Triton. The demo packages what it can; production asks for both."""
    out = []
    try:
        find_binary("torch-model-archiver", "")
        out.append("torchserve")
    except RuntimeError:
        pass
    if importlib.util.find_spec("tritonclient") is not None:
        out += ["triton", "triton-gpu"]
    return out


def package_for_serving(
    bundle_dir: str | Path, out_dir: str | Path, formats: list[str] | tuple[str, ...], version: str = "1.0"
) -> dict[str, str]:
    """Build each requested package into ``out_dir/<format>``; returns {format: path}."""
    unknown = [f for f in formats if f not in _PACKAGERS]
    if unknown:
        raise ValueError(f"unknown serving format(s) {unknown}; known: {', '.join(FORMATS)}")
    out = Path(out_dir)
    return {fmt: str(_PACKAGERS[fmt](Path(bundle_dir), out / fmt, version)) for fmt in formats}
