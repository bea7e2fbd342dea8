"""One call from a trained model to an export bundle: model.pt, model.onnx, optional model.plan, export.json.

The bundle directory is what the packagers in serving/ consume; ``export.json`` records the class names,
input shape, file hashes and the parity report, so a server never has to guess.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from torch import nn

from alloynet.export.graph import ExportMeta
from alloynet.export.onnx_export import DEFAULT_OPSET, export_onnx
from alloynet.export.parity import check_parity
from alloynet.export.tensorrt import TensorRTUnavailable, build_engine
from alloynet.export.torchscript import export_torchscript

TORCHSCRIPT_FILE, ONNX_FILE, PLAN_FILE = "model.pt", "model.onnx", "model.plan"


@dataclass
class ExportBundle:
    directory: Path
    meta: ExportMeta

    def path(self, fmt: str) -> Path:
        """Path of ``fmt`` (torchscript, onnx, tensorrt); KeyError if the bundle has no such file."""
        if fmt not in self.meta.files:
            raise KeyError(f"{self.directory} has no {fmt} model (has: {', '.join(self.meta.files)})")
        return self.directory / self.meta.files[fmt]

    @classmethod
    def load(cls, directory: str | Path) -> "ExportBundle":
        d = Path(directory)
        return cls(d, ExportMeta.load(d))


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def meta_from_checkpoint(meta: dict, arch: str = "unknown") -> ExportMeta:
    """Map a training checkpoint's meta (class names, image size, channels) onto ``ExportMeta``."""
    size = meta.get("image_size") or meta.get("size") or (meta.get("height"), meta.get("width"))
    if isinstance(size, int):
        size = (size, size)
    return ExportMeta(class_names=list(meta["class_names"]), channels=int(meta.get("channels", meta.get("in_channels", 1))),
                      height=int(size[0]), width=int(size[1]), arch=str(meta.get("arch", meta.get("model", arch))))


def export_model(model: nn.Module, meta: ExportMeta, out_dir: str | Path, parity_images: np.ndarray,
                 tensorrt: Optional[str] = None, opset: int = DEFAULT_OPSET, prob_atol: float = 1e-4,
                 source: Optional[str] = None, log=print) -> ExportBundle:
    """Export TorchScript and ONNX, run the parity check (raises ``ParityError``), optionally build a
    TensorRT engine (``tensorrt`` = "fp16" | "int8"; skipped with a clear message where unavailable)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    ts = export_torchscript(model, meta, out / TORCHSCRIPT_FILE)
    onnx_path = export_onnx(model, meta, out / ONNX_FILE, opset=opset)
    report = check_parity(model, parity_images, ts, onnx_path, prob_atol=prob_atol)
    files = {"torchscript": TORCHSCRIPT_FILE, "onnx": ONNX_FILE}
    extra: dict = {}
    if tensorrt:
        try:
            eng = build_engine(onnx_path, out / PLAN_FILE, meta, precision=tensorrt,
                               calibration=np.asarray(parity_images, dtype=np.float32))
            files["tensorrt"] = PLAN_FILE
            extra["tensorrt"] = eng.to_dict()
            log(f"TensorRT {tensorrt} engine built in {eng.build_s:.1f} s: {eng.path}")
        except TensorRTUnavailable as exc:
            extra["tensorrt"] = {"skipped": str(exc)}
            log(f"TensorRT: {exc}")
    meta = meta.model_copy(update=dict(opset=opset, files=files, parity=report.to_dict(), source=source,
                                       sha256={k: _sha256(out / v) for k, v in files.items()}, **extra))
    meta.save(out)
    return ExportBundle(out, meta)


def export_checkpoint(checkpoint: str | Path, out_dir: str | Path, parity_images: np.ndarray,
                      **kwargs) -> ExportBundle:
    """``alloynet.train.checkpoint.load_model`` + ``export_model``."""
    from alloynet.train.checkpoint import load_model

    model, ckpt_meta = load_model(checkpoint)
    return export_model(model, meta_from_checkpoint(ckpt_meta), out_dir, parity_images,
                        source=str(checkpoint), **kwargs)


def parity_captures(meta: ExportMeta, n: int = 8, seed: int = 0, alloys: Sequence[str] | None = None) -> np.ndarray:
    """Simulated raw captures float32 [n, C, H, W] matching ``meta`` (for parity checks and calibration)."""
    from alloynet.physics import RigConfig, RigSimulator, sample_plate

    names = list(alloys or meta.class_names)
    rng = np.random.default_rng(seed)
    sim = RigSimulator(RigConfig(height=meta.height, width=meta.width, kvp=_kvp_for(meta.channels)))
    out = []
    for i in range(n):
        plate = sample_plate(names[i % len(names)], float(rng.uniform(2.0, 20.0)), rng, plate_id=f"parity-{i}")
        out.append(sim.capture(plate, rng).image.astype(np.float32))
    return np.stack(out)


def _kvp_for(channels: int) -> list[float]:
    return [50.0 + 20.0 * i for i in range(channels)]
