"""The serving contract, declared once: what an exported alloynet model takes and returns, and the
prediction a client gets back.

Every party reads it from here: the export (``alloynet.export.graph``), the Triton repository builder (which
hands the names to alloynet's C++ Triton backend in the model config), the TorchServe handler and the gRPC
client. It is deliberately standard-library only and imports nothing from alloynet, because the packagers
copy this very file into the TorchServe archive, whose Python environment does not have alloynet installed.

Inputs (per item; the batch dimension B comes first on the wire):
* ``image``: the raw detector image in ADU, float32 [C, H, W] (uint16 values cast to float32, exact);
* ``calibration``: that capture's own calibration levels, float32 [C, 2] = (dark ADU, flat ADU) per
  channel, from its session's dark and flat frames (the sidecar's ``calibration``). A capture whose
  calibration is unknown is sent with zeros: the model then uses the levels it was trained with and says so
  in ``flags`` (calibration_missing); at +-3 % tube drift between sessions that costs accuracy.
* ``wedge_mm``: the thickness of the wedge at its thick end, float32 [1] (the sidecar's ``rig.wedge_mm``).
  The model subtracts the wedge's own attenuation to see the plate's; 0 = not known: the wedge most common
  in training is assumed and calibration_missing is raised.

Outputs (``"K"`` = the number of classes, ``"G"`` = len(GROUP_NAMES), ``"F"`` = len(FLAG_NAMES)):
probabilities calibrated on held-out data (temperature scaling), the plate thickness and absorption, the
conformal prediction set at the model's coverage (the alloys physics cannot tell apart come back
together, e.g. {Al5083, Al6082}), the heavy/light group probabilities, and flags.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

VERSION = 3
META_FILE = "export.json"           # written beside every exported model: class names, shapes, hashes

INPUT_NAME = "image"                # float32 [B, C, H, W]: raw detector ADU
CALIBRATION_NAME = "calibration"    # float32 [B, C, 2]: (dark, flat) ADU per channel; zeros = not known
WEDGE_NAME = "wedge_mm"             # float32 [B, 1]: the wedge's thickness at its thick end, mm; 0 = not known
INPUT_DTYPE = "float32"
INPUTS: tuple[tuple[str, tuple], ...] = ((INPUT_NAME, ("C", "H", "W")), (CALIBRATION_NAME, ("C", 2)),
                                         (WEDGE_NAME, (1,)))
INPUT_NAMES: tuple[str, ...] = tuple(name for name, _ in INPUTS)

GROUP_NAMES = ("heavy", "light")    # Cu/Zn-bearing (e.g. Al2017, Al7075) vs the rest (Al1050, Al5083, Al6082)
FLAG_NAMES = (
    "calibration_missing",          # calibration levels or wedge size not sent: the training ones were used
    "calibration_out_of_tolerance",  # the sent levels lie outside what the model was trained on (+margin)
    "thickness_out_of_range",       # the plate's estimated thickness lies outside the training range
    "profile_unlike_training",      # the capture's features are far from every class seen in training
    "drift_in_session",             # the in-image open-beam reference moved since the session's flat
)

# (name, per-item shape): the order is the order of the graph's outputs.
OUTPUTS: tuple[tuple[str, tuple], ...] = (
    ("probabilities", ("K",)),      # class probabilities (temperature-calibrated), in class_names order
    ("thickness_mm", ()),           # plate thickness, mm
    ("absorption", (2,)),           # ABSORPTION_FIELDS
    ("prediction_set", ("K",)),     # 1.0 for each class in the conformal prediction set, else 0.0
    ("group_probabilities", ("G",)),  # in GROUP_NAMES order
    ("flags", ("F",)),              # 1.0 where the flag is raised, in FLAG_NAMES order
)
OUTPUT_NAMES: tuple[str, ...] = tuple(name for name, _ in OUTPUTS)
ABSORPTION_FIELDS = ("a0", "mu_eff")  # -ln T at zero wedge; a0 / thickness in 1/cm


def _dims(shape: Sequence, num_classes: int, channels: int = 1, height: int = 0, width: int = 0) -> list[int]:
    sizes = {"K": num_classes, "G": len(GROUP_NAMES), "F": len(FLAG_NAMES), "C": channels, "H": height, "W": width}
    return [sizes[d] if isinstance(d, str) else int(d) for d in shape]


def output_dims(name: str, num_classes: int) -> list[int]:
    """Per-item dims of an output, with K/G/F resolved; a scalar output is ``[]``."""
    return _dims(dict(OUTPUTS)[name], num_classes)


def input_dims(name: str, channels: int, height: int, width: int) -> list[int]:
    """Per-item dims of an input."""
    return _dims(dict(INPUTS)[name], 0, channels, height, width)


def prediction(outputs: Mapping[str, Sequence[Any]], index: int, class_names: Sequence[str]) -> dict:
    """The prediction for item ``index`` of a batch of outputs ({output name: array [B, ...]}), as the
    JSON-able dict every server and the client return."""
    probs = [float(p) for p in outputs["probabilities"][index]]
    k = max(range(len(probs)), key=probs.__getitem__)
    absorption = outputs["absorption"][index]
    groups = [float(g) for g in outputs["group_probabilities"][index]]
    g = max(range(len(groups)), key=groups.__getitem__)
    return {
        "alloy": class_names[k],
        "confidence": probs[k],
        "probabilities": dict(zip(class_names, probs)),
        "prediction_set": [c for c, m in zip(class_names, outputs["prediction_set"][index]) if float(m) > 0.5],
        "group": GROUP_NAMES[g],
        "group_probability": groups[g],
        "thickness_mm": float(outputs["thickness_mm"][index]),
        "absorption": {f: float(v) for f, v in zip(ABSORPTION_FIELDS, absorption)},
        "flags": [f for f, v in zip(FLAG_NAMES, outputs["flags"][index]) if float(v) > 0.5],
    }
