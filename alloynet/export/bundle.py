"""One call from a trained model to an export bundle: model.pt, model.onnx, optional model.plan, export.json.

The bundle directory is what the packagers in serving/ consume; ``export.json`` records the class names,
input shape, file hashes and the parity report, so a server never has to guess.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from torch import nn

from alloynet.captures.stores import ObjectStore
from alloynet.contract import CALIBRATION_NAME, GROUP_NAMES, INPUT_NAME, WEDGE_NAME
from alloynet.data.dataset import load_image
from alloynet.data.manifest import dark_flat_levels, open_dataset
from alloynet.export.graph import ExportMeta
from alloynet.export.onnx_export import DEFAULT_OPSET, export_onnx
from alloynet.export.parity import check_parity
from alloynet.export.tensorrt import TensorRTUnavailable, build_engine
from alloynet.export.torchscript import export_torchscript
from alloynet.models.checkpoint import load_model

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
    def load(cls, directory: str | Path) -> ExportBundle:
        d = Path(directory)
        return cls(d, ExportMeta.load(d))


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def meta_from_checkpoint(meta: dict, arch: str = "unknown") -> ExportMeta:
    """Map a training checkpoint's meta (class names, image size, channels) onto ``ExportMeta``."""
    size: Any = meta.get("image_size") or meta.get("size") or (meta.get("height"), meta.get("width"))
    if isinstance(size, int):
        size = (size, size)
    channels = int(meta.get("channels", meta.get("in_channels", 1)))
    return ExportMeta(
        class_names=list(meta["class_names"]),
        channels=channels,
        height=int(size[0]),
        width=int(size[1]),
        arch=str(meta.get("arch", meta.get("model", arch))),
    )


def export_model(
    model: nn.Module,
    meta: ExportMeta,
    out_dir: str | Path,
    parity_inputs: Mapping[str, np.ndarray],
    tensorrt: str | None = None,
    opset: int = DEFAULT_OPSET,
    prob_atol: float = 1e-4,
    source: str | None = None,
    log=print,
) -> ExportBundle:
    """Export TorchScript and ONNX, run the parity check (raises ``ParityError``), optionally build a
    TensorRT engine (``tensorrt`` = "fp16" | "int8"; skipped with a clear message where unavailable)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    meta = meta.model_copy(update=answer_meta(model, meta))
    ts = export_torchscript(model, meta, out / TORCHSCRIPT_FILE)
    onnx_path = export_onnx(model, meta, out / ONNX_FILE, opset=opset)
    report = check_parity(model, parity_inputs, ts, onnx_path, prob_atol=prob_atol, max_adu=meta.max_adu)
    files = {"torchscript": TORCHSCRIPT_FILE, "onnx": ONNX_FILE}
    extra: dict = {}
    if tensorrt and tensorrt != "fp32" and getattr(model, "physics", None) is not None:
        # chi2 of profiles whitened by a noise of ~1e-3 needs float32 (fp16 keeps 3 digits): the whole engine
        # in fp32 rather than a physics term that would pass the gate on some captures and not on others
        log(f"TensorRT: this model's physics term needs float32; building the engine in fp32, not {tensorrt}")
        tensorrt = "fp32"
    if tensorrt:
        try:
            eng = build_engine(onnx_path, out / PLAN_FILE, meta, precision=tensorrt, captures=parity_inputs)
            files["tensorrt"] = PLAN_FILE
            extra["tensorrt"] = eng.to_dict()
            log(f"TensorRT {tensorrt} engine built in {eng.build_s:.1f} s: {eng.path}")
        except TensorRTUnavailable as exc:
            extra["tensorrt"] = {"skipped": str(exc)}
            log(f"TensorRT: {exc}")
    meta = meta.model_copy(
        update=dict(
            opset=opset,
            files=files,
            parity=report.to_dict(),
            source=source,
            sha256={k: _sha256(out / v) for k, v in files.items()},
            **extra,
        )
    )
    meta.save(out)
    return ExportBundle(out, meta)


def answer_meta(model: nn.Module, meta: ExportMeta) -> dict:
    """Each class's group and the sets' coverage, from the model's answer (empty for a model without one)."""
    answer = getattr(model, "answer", None)
    if answer is None:
        return {}
    groups = answer.group_matrix.argmax(dim=1).tolist()
    return {"class_groups": [GROUP_NAMES[g] for g in groups], "coverage": float(answer.coverage)}


def export_checkpoint(
    checkpoint: str | Path,
    out_dir: str | Path,
    store: ObjectStore | str | Path | None = None,
    manifest: pd.DataFrame | str | Path | None = None,
    n_parity: int = 8,
    **kwargs,
) -> ExportBundle:
    """Export a trained checkpoint, parity-checked on real captures from its data set's test split.

    ``store``/``manifest`` default to the data the checkpoint was trained on (its config's data.store and
    data.manifest); pass them when exporting elsewhere. ``kwargs`` go to ``export_model``."""
    model, meta = load_model(checkpoint)
    data = meta["config"]["data"]
    if store is None:
        store, manifest = data["store"], data.get("manifest") if manifest is None else manifest
    store, df = open_dataset(store, manifest)
    export_meta = meta_from_checkpoint(meta)
    inputs = parity_captures(store, df, export_meta, n_parity)
    return export_model(model, export_meta, out_dir, inputs, source=str(checkpoint), **kwargs)


def parity_captures(
    store: ObjectStore, manifest: pd.DataFrame, meta: ExportMeta, n: int = 8, split: str = "test"
) -> dict[str, np.ndarray]:
    """Real captures of ``split`` with the model's input shape, as graph inputs {"image": float32 [n, C, H, W],
    "calibration": float32 [n, C, 2], "wedge_mm": float32 [n, 1]}: the classes in turn (capture-id order inside
    each), so parity covers every alloy the test set has; the last one is sent without its calibration and
    wedge size (zeros), so the fallback branch is checked too."""
    rows = manifest[
        (manifest.split == split)
        & (manifest.channels == meta.channels)
        & (manifest.height == meta.height)
        & (manifest.width == meta.width)
    ]
    if rows.empty:
        raise ValueError(
            f"parity needs captures of the {split!r} split shaped {list(meta.input_shape)}; "
            f"the manifest has none (give the data set the model was trained on)"
        )
    per_class = [g.sort_values("capture_id") for _, g in rows.groupby("alloy", sort=True)]
    picked = pd.concat([g.iloc[[i]] for i in range(max(map(len, per_class))) for g in per_class if i < len(g)]).head(n)
    dark, flat = dark_flat_levels(picked)
    calibration = np.stack([dark, flat], axis=-1).astype(np.float32)
    wedge = picked.wedge_mm.to_numpy(np.float32)[:, None].copy()
    if len(calibration) > 1:
        calibration[-1], wedge[-1] = 0.0, 0.0
    image = np.stack([load_image(store, f).astype(np.float32) for f in picked.image_file])
    return {INPUT_NAME: image, CALIBRATION_NAME: calibration, WEDGE_NAME: wedge}
