"""The serving contract, declared once: what an exported alloynet model takes and returns, the status of each
capture and the words for it, and the prediction a client gets back.

Every party reads it from here: the export (``alloynet.export.graph``), the Triton repository builder (which
writes the names into the model config), the TorchServe handler and the gRPC client. It is standard-library
only and imports nothing from alloynet, because the packagers copy this very file into the TorchServe archive,
whose Python environment does not have alloynet installed.

Inputs (per item; the batch dimension B comes first on the wire):
* ``image``: the raw detector image in ADU, float32 [C, H, W] (uint16 values cast to float32, exact);
* ``calibration``: that capture's own calibration levels, float32 [C, 2] = (dark ADU, flat ADU) per
  channel, from its session's dark and flat frames (the sidecar's ``calibration``). All zeros = not known:
  the answer is then the one the model gives such captures (its own temperature and prediction set, fitted on
  held-out captures sent without calibration), status ``calibration_missing``.
* ``wedge_mm``: the thickness of the wedge at its thick end, float32 [1] (the sidecar's ``rig.wedge_mm``);
  0 = not known: as for calibration, status ``wedge_missing``.

The graph checks the values of every item (``STATUSES``): an item it refuses is named by its ``status`` and
answered with every class equally likely and every class in its set, and never fails the rest of its batch.
Servers check only what the graph cannot: shapes and dtypes.

Words: on the wire and in stored sidecars ``calibration`` (the input, the sidecar key, the ``calibration_*``
statuses and flags) carries a capture's dark/flat *levels*; it is not the rig fit (``alloynet rig fit``) nor
the recalibration of the answer (temperature and conformal sets). These names stay: clients, stored sidecars
and model archives carry them.

Outputs (``"K"`` = the number of classes, ``"G"`` = len(GROUP_NAMES), ``"F"`` = len(FLAG_NAMES)):
probabilities calibrated on held-out data (temperature scaling), the plate thickness and absorption, the
conformal prediction set at the model's coverage (the alloys physics cannot tell apart come back
together, e.g. {Al5083, Al6082}), the heavy/light group probabilities (the sum of their alloys'), flags, and
the status code with the value that decided it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

VERSION = 4
META_FILE = "export.json"  # written beside every exported model: class names, shapes, hashes

INPUT_NAME = "image"  # float32 [B, C, H, W]: raw detector ADU
CALIBRATION_NAME = "calibration"  # float32 [B, C, 2]: (dark, flat) ADU per channel; zeros = not known
WEDGE_NAME = "wedge_mm"  # float32 [B, 1]: the wedge's thickness at its thick end, mm; 0 = not known
INPUT_DTYPE = "float32"
INPUTS: tuple[tuple[str, tuple], ...] = (
    (INPUT_NAME, ("C", "H", "W")),
    (CALIBRATION_NAME, ("C", 2)),
    (WEDGE_NAME, (1,)),
)
INPUT_NAMES: tuple[str, ...] = tuple(name for name, _ in INPUTS)

GROUP_NAMES = ("heavy", "light")  # Cu/Zn-bearing (e.g. Al2017, Al7075) vs the rest (Al1050, Al5083, Al6082)
FLAG_NAMES = (
    "calibration_missing",  # calibration levels or wedge size not sent: the training ones were used
    "calibration_out_of_tolerance",  # the sent levels lie outside what the model was trained on (+margin)
    "thickness_out_of_range",  # the plate's estimated thickness lies outside the training range
    "profile_unlike_training",  # the capture's features are far from every class seen in training
    "drift_in_session",  # the in-image open-beam reference moved since the session's flat
)

# (name, per-item shape): the order is the order of the graph's outputs.
OUTPUTS: tuple[tuple[str, tuple], ...] = (
    ("probabilities", ("K",)),  # class probabilities (temperature-calibrated), in class_names order
    ("thickness_mm", ()),  # plate thickness, mm
    ("absorption", (2,)),  # ABSORPTION_FIELDS
    ("prediction_set", ("K",)),  # 1.0 for each class in the conformal prediction set, else 0.0
    ("group_probabilities", ("G",)),  # in GROUP_NAMES order
    ("flags", ("F",)),  # 1.0 where the flag is raised, in FLAG_NAMES order
    ("status", ()),  # the item's status code (STATUSES), as a float: 0 = answered, all checks passed
    ("status_value", ()),  # the value that decided the status (a count, a pixel, a level, mm); 0 if none
)
OUTPUT_NAMES: tuple[str, ...] = tuple(name for name, _ in OUTPUTS)
ABSORPTION_FIELDS = ("a0", "mu_eff")  # -ln T at zero wedge; a0 / thickness in 1/cm

MAX_ADU = 65535.0  # a 16-bit detector's top; an export may declare another (its max_adu)
MAX_WEDGE_MM = 1000.0  # a wedge_mm above this is a unit error (cm, um), not a wedge

# The value checks the exported graph makes on every item, in the order it makes them (the first that applies
# is the item's status): (code, name, input it concerns, refused, message template). A refused item's answer
# is not to be used; an answered one with a non-zero code was answered without what the code names. Templates
# take ``value`` (the output status_value), ``max_adu`` and ``max_wedge_mm``.
STATUSES: tuple[tuple[int, str, str, bool, str], ...] = (
    (0, "ok", "", False, "ok"),
    (
        1,
        "calibration_missing",
        CALIBRATION_NAME,
        False,
        "calibration levels not sent: answered as the model answers captures without calibration",
    ),
    (
        2,
        "wedge_missing",
        WEDGE_NAME,
        False,
        "wedge size not sent: answered as the model answers captures without their wedge size",
    ),
    (16, "image_not_finite", INPUT_NAME, True, "{value:.0f} pixel(s) are NaN or infinite"),
    (
        17,
        "image_out_of_range",
        INPUT_NAME,
        True,
        "pixel value {value:g} ADU lies outside the detector range [0, {max_adu:g}] ADU",
    ),
    (18, "calibration_not_finite", CALIBRATION_NAME, True, "{value:.0f} level(s) are NaN or infinite"),
    (
        19,
        "calibration_out_of_range",
        CALIBRATION_NAME,
        True,
        "level {value:g} ADU lies outside the detector range [0, {max_adu:g}] ADU",
    ),
    (
        20,
        "flat_not_above_dark",
        CALIBRATION_NAME,
        True,
        "the flat level must lie above the dark level in every channel; flat - dark = {value:g} ADU",
    ),
    (
        21,
        "wedge_out_of_range",
        WEDGE_NAME,
        True,
        "expected one wedge thickness in mm (0-{max_wedge_mm:g}, 0 = unknown), got {value:g}",
    ),
)
STATUS_NAMES: dict[int, str] = {code: name for code, name, *_ in STATUSES}
STATUS_CODES: dict[str, int] = {name: code for code, name, *_ in STATUSES}
REFUSED_FROM = 16  # codes from here on are refusals; below, the item was answered


def status_code(value: Any) -> int:
    """The status output of one item (a float on the wire) as its code; ValueError for a code not declared."""
    code = int(round(float(value)))
    if code not in STATUS_NAMES:
        raise ValueError(f"status {value!r} is not a code of contract version {VERSION} ({sorted(STATUS_NAMES)})")
    return code


def is_refused(code: int) -> bool:
    return code >= REFUSED_FROM


def status_message(
    code: int, value: float = 0.0, max_adu: float = MAX_ADU, max_wedge_mm: float = MAX_WEDGE_MM
) -> tuple[str, str]:
    """(the input concerned, the message) for status ``code`` with its ``value``; ValueError for an unknown code."""
    for c, _name, field, _refused, template in STATUSES:
        if c == code:
            return field, template.format(value=float(value), max_adu=float(max_adu), max_wedge_mm=float(max_wedge_mm))
    raise ValueError(f"status {code} is not a code of contract version {VERSION} ({sorted(STATUS_NAMES)})")


def _dims(shape: Sequence, num_classes: int, channels: int = 1, height: int = 0, width: int = 0) -> list[int]:
    sizes = {"K": num_classes, "G": len(GROUP_NAMES), "F": len(FLAG_NAMES), "C": channels, "H": height, "W": width}
    return [sizes[d] if isinstance(d, str) else int(d) for d in shape]


def output_dims(name: str, num_classes: int) -> list[int]:
    """Per-item dims of an output, with K/G/F resolved; a scalar output is ``[]``."""
    return _dims(dict(OUTPUTS)[name], num_classes)


def input_dims(name: str, channels: int, height: int, width: int) -> list[int]:
    """Per-item dims of an input."""
    return _dims(dict(INPUTS)[name], 0, channels, height, width)


def refusal(
    outputs: Mapping[str, Sequence[Any]], index: int, max_adu: float = MAX_ADU, max_wedge_mm: float = MAX_WEDGE_MM
) -> dict | None:
    """None when the graph answered item ``index``; else what a server or client says instead of an answer:
    {"status": name, "status_code": code, "field": the input concerned, "message": the table's words}."""
    code = status_code(outputs["status"][index])
    if not is_refused(code):
        return None
    field, message = status_message(code, float(outputs["status_value"][index]), max_adu, max_wedge_mm)
    return {"status": STATUS_NAMES[code], "status_code": code, "field": field, "message": message}


# What one answer says of a capture, as `prediction` gives it; what the line's record keeps of each answer.
ANSWER_FIELDS = (
    "status",
    "alloy",
    "confidence",
    "probabilities",
    "prediction_set",
    "group",
    "group_probability",
    "thickness_mm",
    "flags",
)


def prediction(
    outputs: Mapping[str, Sequence[Any]],
    index: int,
    class_names: Sequence[str],
    class_groups: Sequence[str] | None = None,
) -> dict:
    """The prediction for item ``index`` of a batch of outputs ({output name: array [B, ...]}), as the
    JSON-able dict every server and the client return (for an answered item: see ``refusal``).

    The group is the one with the larger probability (the sum over its alloys); with ``class_groups`` (each
    class's group name, the export's ``class_groups``) the alloy is the most probable one of that group, so the
    two never contradict each other: where the single most probable alloy lies in the other group, the summed
    evidence of the group is the better-founded answer."""
    probs = [float(p) for p in outputs["probabilities"][index]]
    groups = [float(g) for g in outputs["group_probabilities"][index]]
    g = max(range(len(groups)), key=groups.__getitem__)
    members = [i for i in range(len(probs)) if class_groups is None or class_groups[i] == GROUP_NAMES[g]]
    k = max(members or range(len(probs)), key=probs.__getitem__)
    absorption = outputs["absorption"][index]
    code = status_code(outputs["status"][index]) if "status" in outputs else 0
    out = {
        "alloy": class_names[k],
        "confidence": probs[k],
        "probabilities": dict(zip(class_names, probs, strict=True)),
        "prediction_set": [
            c for c, m in zip(class_names, outputs["prediction_set"][index], strict=True) if float(m) > 0.5
        ],
        "group": GROUP_NAMES[g],
        "group_probability": groups[g],
        "thickness_mm": float(outputs["thickness_mm"][index]),
        "absorption": {f: float(v) for f, v in zip(ABSORPTION_FIELDS, absorption, strict=True)},
        "flags": [f for f, v in zip(FLAG_NAMES, outputs["flags"][index], strict=True) if float(v) > 0.5],
        "status": STATUS_NAMES[code],
    }
    if code:
        out["status_message"] = status_message(code)[1]
    return out


def description(
    class_names: Sequence[str], class_groups: Sequence[str], coverage: float, max_adu: float = MAX_ADU
) -> dict[str, str]:
    """What a server publishes about a model so that a client with only a generic client library can read its
    answers (Triton model config parameters, TorchServe's model description): every value a string."""
    return {
        "contract_version": str(VERSION),
        "class_names": ",".join(class_names),
        "class_groups": ",".join(class_groups),
        "group_names": ",".join(GROUP_NAMES),
        "flag_names": ",".join(FLAG_NAMES),
        "absorption_fields": ",".join(ABSORPTION_FIELDS),
        "status_codes": ",".join(f"{code}:{name}" for code, name, *_ in STATUSES),
        "status_refused_from": str(REFUSED_FROM),
        "coverage": f"{float(coverage):g}",
        "max_adu": f"{float(max_adu):g}",
        "max_wedge_mm": f"{MAX_WEDGE_MM:g}",
    }
