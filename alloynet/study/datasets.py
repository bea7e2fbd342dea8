"""The study's data: one training pool per (imbalance ratio, seed), one shared balanced test set, OOD sets.

Every run is evaluated on the same test captures, simulated once from their own seed; training pools
contain no test plates at all (they are separate simulations), so no split can leak. Sets are cached on
disk and reused only when the spec that made them is identical.
"""
from __future__ import annotations

import json
from pathlib import Path

from alloynet.captures.stores import LocalStore
from alloynet.data.manifest import build_manifest, write_manifest
from alloynet.data.simulate import DatasetSpec, simulate_dataset
from alloynet.study.config import OODSet, StudyConfig

TEST_SEED = 10_000  # the shared test set's seed: disjoint from every training seed


def _materialise(spec: DatasetSpec, root: Path, all_test: bool) -> Path:
    stamp = root / "spec.json"
    want = spec.model_dump_json()
    if stamp.exists() and stamp.read_text() == want and (root / "manifest.csv").exists():
        return root
    if root.exists():
        import shutil

        shutil.rmtree(root)
    store = LocalStore(root)
    simulate_dataset(spec, store)
    df = build_manifest(store, seed=spec.seed, test_fraction=0.0)
    if all_test:
        df["split"] = "test"
    write_manifest(df, root / "manifest.csv")
    stamp.write_text(want)
    return root


def training_pool(cfg: StudyConfig, rho: float, seed: int) -> Path:
    d = cfg.data
    spec = DatasetSpec(n_max=d.n_max, imbalance_ratio=rho, class_order=d.class_order, profile="exponential" if rho > 1 else "balanced",
                       thicknesses_mm=d.thicknesses_mm, wedges_mm=d.wedges_mm, captures_per_plate=d.captures_per_plate,
                       test_fraction=0.0, seed=seed, id_prefix=f"rho{rho:g}s{seed}", rig=d.rig)
    return _materialise(spec, Path(cfg.work_dir) / "data" / f"rho{rho:g}-seed{seed}", all_test=False)


def held_out_set(cfg: StudyConfig, ood: OODSet | None = None) -> Path:
    d = cfg.data
    rig = d.rig.model_copy(update=ood.rig) if ood else d.rig
    spec = DatasetSpec(n_max=d.test_plates_per_class, profile="balanced", test_fraction=0.0,
                       thicknesses_mm=(ood.thicknesses_mm if ood and ood.thicknesses_mm else d.thicknesses_mm),
                       wedges_mm=(ood.wedges_mm if ood and ood.wedges_mm else d.wedges_mm),
                       captures_per_plate=d.captures_per_plate, seed=TEST_SEED, id_prefix=f"test-{ood.name if ood else 'iid'}",
                       rig=rig)
    name = f"test-{ood.name}" if ood else "test"
    return _materialise(spec, Path(cfg.work_dir) / "data" / name, all_test=True)


def describe(root: Path) -> dict:
    spec = json.loads((root / "spec.json").read_text())
    return {"thicknesses_mm": spec["thicknesses_mm"], "wedges_mm": spec["wedges_mm"], "dose": spec["rig"]["dose"],
            "size": [spec["rig"]["height"], spec["rig"]["width"]], "kvp": spec["rig"]["kvp"]}
