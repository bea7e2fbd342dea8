"""No model or baseline in the study's committed results lies above the physics bracket's upper edge beyond the
errors: the upper edge is an observer told more than any line knows, so a row above it would mean the row's
captures hold information the profile model leaves out (or a bug)."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from alloynet.physics.bracket import mixed_bracket
from alloynet.physics.observer import ThicknessPrior
from alloynet.physics.simulator import RigConfig

STUDY = Path(__file__).resolve().parents[3] / "docs" / "study"


@pytest.fixture(scope="module")
def study():
    meta = json.loads((STUDY / "study.json").read_text())
    return meta, pd.read_csv(STUDY / "results.csv")


@pytest.fixture(scope="module")
def upper(study):
    meta, _ = study
    t, rig = meta["test_set"], meta["config"]["data"]["rig"]
    rigs = [
        (
            RigConfig(
                **{
                    **rig,
                    "wedge_mm": w,
                    "height": t["size"][0],
                    "width": t["size"][1],
                    "kvp": t["kvp"],
                    "dose": t["dose"],
                }
            ),
            1.0,
        )
        for w in t["wedges_mm"]
    ]
    prior = ThicknessPrior.of(t["thicknesses_mm"], t["thickness_range_mm"])
    m = mixed_bracket(rigs, prior, draws=1000, pool=16, seed=26)
    return m["upper"], m["upper_se"]


def test_no_study_row_lies_above_the_upper_edge_beyond_its_error(study, upper):
    meta, results = study
    d = meta["config"]["data"]
    per_class = d["test_plates_per_class"] * d["captures_per_plate"]
    recalls = results[[c for c in results.columns if c.startswith("recall_")]].to_numpy(float)
    # the row's own sampling error: balanced accuracy is the mean of per-class recalls over per_class captures
    row_se = np.sqrt((recalls * (1 - recalls) / per_class).sum(1)) / recalls.shape[1]
    edge, edge_se = upper
    allowed = edge + 2 * np.sqrt(edge_se**2 + row_se**2)
    above = results[results.balanced_accuracy.to_numpy(float) > allowed]
    assert above.empty, (
        f"rows above the upper edge {edge:.3f} ± {edge_se:.3f} beyond their errors:\n"
        + above[["arch", "loss", "rho", "balanced_accuracy"]].to_string()
    )
    # and the check has teeth: a row one standard error above the allowance would fail it
    assert (allowed < 1).all() and edge < 0.8


def test_no_study_row_lies_above_an_ood_sets_upper_edge_beyond_its_error(study):
    """Every held-out set beside the test set (thickness grid, unseen thicknesses, drift, the second rig) against
    its own bracket's upper edge, as the study computed it for that set's rig and prior (study.json)."""
    meta, results = study
    d = meta["config"]["data"]
    per_class = d["test_plates_per_class"] * d["captures_per_plate"]
    classes = len(d["class_order"])
    checked = 0
    for name, ref in meta["ood_ceilings"].items():
        column = f"ood_{name}_balanced_accuracy"
        assert ref.get("upper") is not None, f"study.json: {name} has no upper edge (regenerate the study)"
        acc = results[column].to_numpy(float)
        ok = np.isfinite(acc)  # a baseline that needs calibration has no figure on a set sent without it
        # binomial error of a balanced accuracy from its value: an upper bound on the per-class formula's
        row_se = np.sqrt(acc[ok] * (1 - acc[ok]) / (per_class * classes))
        allowed = ref["upper"] + 2 * np.sqrt(ref["upper_se"] ** 2 + row_se**2)
        above = results[ok][acc[ok] > allowed]
        assert above.empty, (
            f"{name}: rows above the upper edge {ref['upper']:.3f} ± {ref['upper_se']:.3f} beyond their errors:\n"
            + above[["arch", "loss", "rho", column]].to_string()
        )
        checked += int(ok.sum())
    assert checked >= len(meta["ood_ceilings"]) * 2  # models and baselines on every set, not an empty check
