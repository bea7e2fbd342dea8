"""The study's data: one training pool per (imbalance ratio, seed), one shared balanced test set, OOD sets.

Every run is evaluated on the same test captures, simulated once from their own seed; training pools
contain no test plates at all (they are separate simulations), so no split can leak. Sets are cached on
disk and reused only when the spec that made them is identical.
"""
from __future__ import annotations

import fcntl
import json
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from alloynet.captures.stores import LocalStore
from alloynet.data.manifest import build_manifest, write_manifest
from alloynet.data.simulate import DatasetSpec, simulate_dataset
from alloynet.study.config import OODSet, StudyConfig

TEST_SEED = 10_000  # the shared test set's seed: disjoint from every training seed


def _is_current(spec: DatasetSpec, root: Path) -> bool:
    stamp = root / "spec.json"
    return stamp.exists() and stamp.read_text() == spec.model_dump_json() and (root / "manifest.csv").exists()


@contextmanager
def _locked(root: Path) -> Iterator[None]:
    """An exclusive lock beside ``root``: cells starting at once on several workers (sharing the work dir)
    simulate a missing set once, and never read one that another is rewriting."""
    root.parent.mkdir(parents=True, exist_ok=True)
    with open(root.parent / f".{root.name}.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _materialise(spec: DatasetSpec, root: Path, all_test: bool) -> Path:
    if _is_current(spec, root):
        return root
    with _locked(root):
        if _is_current(spec, root):  # another worker made it while we waited
            return root
        if root.exists():
            shutil.rmtree(root)
        store = LocalStore(root)
        simulate_dataset(spec, store)
        df = build_manifest(store, seed=spec.seed, test_fraction=0.0)
        if all_test:
            df["split"] = "test"
        write_manifest(df, root / "manifest.csv")
        (root / "spec.json").write_text(spec.model_dump_json())  # last: the set counts only once complete
    return root


def _pool_spec(cfg: StudyConfig, rho: float, seed: int) -> DatasetSpec:
    d = cfg.data
    return DatasetSpec(n_max=d.n_max, imbalance_ratio=rho, class_order=d.class_order, profile="exponential" if rho > 1 else "balanced",
                       thicknesses_mm=d.thicknesses_mm, wedges_mm=d.wedges_mm, captures_per_plate=d.captures_per_plate,
                       test_fraction=0.0, seed=seed, id_prefix=f"rho{rho:g}s{seed}", rig=d.rig)


def pool_dir(cfg: StudyConfig, rho: float, seed: int) -> Path:
    return Path(cfg.work_dir) / "data" / f"rho{rho:g}-seed{seed}"


def pool_is_current(cfg: StudyConfig, rho: float, seed: int) -> bool:
    """Whether the training pool on disk was made from the current config (without simulating anything)."""
    return _is_current(_pool_spec(cfg, rho, seed), pool_dir(cfg, rho, seed))


def training_pool(cfg: StudyConfig, rho: float, seed: int) -> Path:
    return _materialise(_pool_spec(cfg, rho, seed), pool_dir(cfg, rho, seed), all_test=False)


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
