"""The serving contract, declared once: what an exported alloynet model takes and returns, and the
prediction a client gets back.

Every party reads it from here: the export (``alloynet.export.graph``), the Triton repository builder and
its Python-backend model, the TorchServe handler and the gRPC client. It is deliberately standard-library
only and imports nothing from alloynet, because the packagers copy this very file into the TorchServe
archive and the Triton model repository, whose Python environments do not have alloynet installed.

Shapes are per item (the batch dimension B comes first on the wire): ``"K"`` is the number of classes.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

VERSION = 1
META_FILE = "export.json"           # written beside every exported model: class names, shapes, hashes

INPUT_NAME = "image"                # float32 [B, C, H, W]: the raw detector image in ADU (uint16 values)
INPUT_DTYPE = "float32"

# (name, per-item shape): the order is the order of the graph's outputs.
OUTPUTS: tuple[tuple[str, tuple], ...] = (
    ("probabilities", ("K",)),      # class probabilities, in class_names order
    ("thickness_mm", ()),           # plate thickness, mm
    ("absorption", (2,)),           # ABSORPTION_FIELDS
)
OUTPUT_NAMES: tuple[str, ...] = tuple(name for name, _ in OUTPUTS)
ABSORPTION_FIELDS = ("a0", "mu_eff")  # -ln T at zero wedge; a0 / thickness in 1/cm


def output_dims(name: str, num_classes: int) -> list[int]:
    """Per-item dims of an output, with "K" resolved; a scalar output is ``[]``."""
    shape = dict(OUTPUTS)[name]
    return [num_classes if d == "K" else int(d) for d in shape]


def prediction(outputs: Mapping[str, Sequence[Any]], index: int, class_names: Sequence[str]) -> dict:
    """The prediction for item ``index`` of a batch of outputs ({output name: array [B, ...]}), as the
    JSON-able dict every server and the client return."""
    probs = [float(p) for p in outputs["probabilities"][index]]
    k = max(range(len(probs)), key=probs.__getitem__)
    absorption = outputs["absorption"][index]
    return {
        "alloy": class_names[k],
        "confidence": probs[k],
        "probabilities": dict(zip(class_names, probs)),
        "thickness_mm": float(outputs["thickness_mm"][index]),
        "absorption": {f: float(v) for f, v in zip(ABSORPTION_FIELDS, absorption)},
    }
