"""What stands beside every row of the study: the physics bracket of each held-out set, and the two
non-deep baselines (``alloynet.evaluate.baselines``): the physics fit, which needs no training data, once
per set; the Gaussian profile classifier, fitted on each training pool and applied to every set.

Each set's figures are cached beside it (``reference.json``), each pool's beside the pool
(``baselines.json``), keyed by what made them, so a resumed study does not recompute them.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pandas as pd

from alloynet.captures.stores import LocalStore
from alloynet.data import CLASS_NAMES
from alloynet.data.dataset import CaptureDataset
from alloynet.data.manifest import manifest_path, read_manifest
from alloynet.evaluate.baselines import GaussianProfile, PhysicsFit, dataset_arrays
from alloynet.evaluate.metrics import classification_metrics
from alloynet.evaluate.report import ceiling, group_probabilities, heavy_light
from alloynet.evaluate.robustness import capture_rigs
from alloynet.physics.simulator import plate_rows
from alloynet.study.datasets import calibration_sent, set_spec

VERSION = 3  # bump when the figures below are computed differently (3: the physics bracket, lower and upper edge)


def _arrays(root: Path) -> dict[str, np.ndarray]:
    return dataset_arrays(
        CaptureDataset(LocalStore(root), read_manifest(manifest_path(root)), "test"), plate_rows(set_spec(root).rig)
    )


def scores(
    y: np.ndarray,
    probs: np.ndarray,
    thickness: np.ndarray | None = None,
    true_thickness: np.ndarray | None = None,
) -> dict:
    """The study's row metrics for class probabilities [N, K] over ``CLASS_NAMES``."""
    names = list(CLASS_NAMES)
    m = classification_metrics(y, probs, names)
    m["heavy_light_balanced_accuracy"] = heavy_light(y, group_probabilities(probs, names), names)
    m["thickness_mae_mm"] = float(np.abs(thickness - true_thickness).mean()) if thickness is not None else float("nan")
    m["a0_mae"] = float("nan")
    m.pop("confusion_matrix", None)
    return m


def _cached(path: Path, key: str) -> dict | None:
    if path.exists():
        saved = json.loads(path.read_text())
        if saved.get("key") == key:
            return saved["value"]
    return None


def _save(path: Path, key: str, value: dict) -> dict:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"key": key, "value": value}, default=float))
    tmp.replace(path)
    return value


def set_reference(root: Path, plates: int, with_physics_fit: bool = True) -> dict:
    """A held-out set's physics bracket (lower and upper edge with their errors: five-class, per alloy, heavy vs
    light) for its own rig and thickness prior,
    and the physics fit's metrics on its captures (None when the captures carry no calibration)."""
    spec = set_spec(root)
    key = json.dumps([VERSION, (root / "spec.json").read_text(), plates, with_physics_fit])
    cached = _cached(root / "reference.json", key)
    if cached is not None:
        return cached
    rows = read_manifest(manifest_path(root))
    rigs = capture_rigs(spec) or {w: spec.rig.model_copy(update={"wedge_mm": w}) for w in spec.wedges_mm}
    counts = rows.wedge_mm.value_counts()
    ceil = ceiling({w: (rigs[w], int(counts.get(w, 0)) or 1) for w in spec.wedges_mm}, spec.prior, plates=plates)
    # "ceiling" is the bracket's lower edge (the name the study's readers know); "ceiling_upper" its upper edge
    ref = {
        "ceiling": ceil["ceiling_accuracy"],
        "ceiling_recall": ceil["ceiling_recall"],
        "ceiling_se": ceil["ceiling_lower_se"],
        "ceiling_upper": ceil["ceiling_upper"],
        "ceiling_upper_se": ceil["ceiling_upper_se"],
        "ceiling_heavy_light_upper": ceil["ceiling_heavy_light_upper"],
        "ceiling_heavy_light": ceil["ceiling_heavy_light"],
        "pairs": ceil["ceiling_pairs"],
        "markdown": ceil["markdown"],
        "physics_fit": None,
    }
    if with_physics_fit and calibration_sent(root):
        t0 = time.perf_counter()
        test = _arrays(root)
        probs, thick = PhysicsFit(rigs, spec.prior, list(CLASS_NAMES)).predict(test["profiles"], test["wedge_mm"])
        ref["physics_fit"] = {
            **scores(test["y"], probs, thick, test["thickness_mm"]),
            "fit_s": time.perf_counter() - t0,
        }
    return _save(root / "reference.json", key, ref)


def pool_baseline(pool: Path, sets: dict[str, Path]) -> dict[str, dict | None]:
    """The Gaussian profile classifier fitted on every capture of a training pool, scored on each set
    ({name: metrics}, None for a set whose captures carry no calibration)."""
    key = json.dumps(
        [VERSION, (pool / "spec.json").read_text(), {n: (r / "spec.json").read_text() for n, r in sorted(sets.items())}]
    )
    cached = _cached(pool / "baselines.json", key)
    if cached is not None:
        return cached
    df = read_manifest(manifest_path(pool))
    df = df[df.labelled & (df.label >= 0)].assign(split="train")  # no epoch to pick: val is training data too
    t0 = time.perf_counter()
    train = dataset_arrays(CaptureDataset(LocalStore(pool), df, "train"), plate_rows(set_spec(pool).rig))
    model = GaussianProfile(len(CLASS_NAMES), set_spec(pool).prior).fit(
        train["profiles"], train["y"], train["thickness_mm"], train["wedge_mm"]
    )
    fit_s = time.perf_counter() - t0
    out: dict[str, dict | None] = {}
    for name, root in sets.items():
        if not calibration_sent(root):
            out[name] = None
            continue
        test = _arrays(root)
        out[name] = {**scores(test["y"], model.predict(test["profiles"], test["wedge_mm"])), "fit_s": fit_s}
    return _save(pool / "baselines.json", key, out)


def baseline_rows(
    pools: dict[tuple[float, int], Path], test_root: Path, ood_roots: dict[str, Path], plates: int, tail: str, row
) -> pd.DataFrame:
    """One row per (baseline, rho, seed) in the layout of the models' rows (``row`` builds one), so every
    table has the baselines beside the models: the Gaussian profile classifier of that pool, and the
    physics fit (the same on every pool: it trains on nothing)."""
    sets = {"test": test_root, **ood_roots}
    refs = {n: set_reference(r, plates) for n, r in sets.items()}
    rows = []
    for (rho, seed), pool in pools.items():
        gauss = pool_baseline(pool, sets)
        for name, per_set in (("physics_fit", {n: refs[n]["physics_fit"] for n in sets}), ("gaussian_profile", gauss)):
            m = per_set["test"]
            if m is None:
                continue
            r = row(name, "-", rho, seed, m, m.get("fit_s", float("nan")), 0, tail)
            for o in ood_roots:
                om = per_set[o] or {}
                r[f"ood_{o}_balanced_accuracy"] = om.get("balanced_accuracy", float("nan"))
                r[f"ood_{o}_heavy_light"] = om.get("heavy_light_balanced_accuracy", float("nan"))
                r[f"ood_{o}_thickness_mae_mm"] = om.get("thickness_mae_mm", float("nan"))
            rows.append(r)
    return pd.DataFrame(rows)
