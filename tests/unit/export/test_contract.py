"""The contract's prediction: the group and the alloy never contradict each other; statuses are named."""

from __future__ import annotations

import numpy as np

from alloynet import contract

CLASSES = ["Al1050", "Al2017", "Al5083", "Al6082", "Al7075"]
GROUPS = ["light", "heavy", "light", "light", "heavy"]


def _outputs(probs, status=0.0, value=0.0) -> dict:
    probs = np.asarray([probs], np.float32)
    heavy = probs[0][[g == "heavy" for g in GROUPS]].sum()
    return {
        "probabilities": probs,
        "thickness_mm": np.array([2.0]),
        "absorption": np.array([[1.0, 0.5]]),
        "prediction_set": (probs > 0.2).astype(np.float32),
        "group_probabilities": np.array([[heavy, 1 - heavy]]),
        "flags": np.zeros((1, 5)),
        "status": np.array([status]),
        "status_value": np.array([value]),
    }


def test_the_alloy_is_the_most_probable_of_the_more_probable_group():
    out = _outputs([0.05, 0.41, 0.30, 0.24, 0.0])  # Al2017 alone tops, but light holds 0.59
    p = contract.prediction(out, 0, CLASSES, GROUPS)
    assert p["group"] == "light" and p["group_probability"] > 0.58
    assert p["alloy"] == "Al5083" and GROUPS[CLASSES.index(p["alloy"])] == p["group"]
    assert p["status"] == "ok" and "status_message" not in p
    assert contract.prediction(out, 0, CLASSES)["alloy"] == "Al2017"  # without groups: the plain argmax


def test_a_refused_item_is_worded_from_the_table():
    out = _outputs([0.2] * 5, status=17.0, value=70000.0)
    assert contract.refusal(out, 0) == {
        "status": "image_out_of_range",
        "status_code": 17,
        "field": "image",
        "message": "pixel value 70000 ADU lies outside the detector range [0, 65535] ADU",
    }
    assert contract.refusal(_outputs([0.2] * 5, status=1.0), 0) is None
    p = contract.prediction(_outputs([0.2] * 5, status=1.0), 0, CLASSES, GROUPS)
    assert p["status"] == "calibration_missing" and "without calibration" in p["status_message"]


def test_the_description_names_everything_a_client_reads():
    d = contract.description(CLASSES, GROUPS, 0.95)
    assert all(isinstance(v, str) for v in d.values())
    assert d["flag_names"].split(",") == list(contract.FLAG_NAMES)
    assert dict(s.split(":") for s in d["status_codes"].split(","))["20"] == "flat_not_above_dark"
    assert d["coverage"] == "0.95" and d["contract_version"] == str(contract.VERSION)
