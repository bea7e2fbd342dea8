"""The study's data: one training pool per (imbalance ratio, seed), one shared balanced test set, OOD sets.

Every run is evaluated on the same test captures, simulated once from their own seed; training pools
contain no test plates at all (they are separate simulations), so no split can leak. Sets are cached on
disk and reused only when the spec that made them is identical.
"""

from __future__ import annotations

import fcntl
import json
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alloynet.captures.stores import LocalStore
from alloynet.data.manifest import build_manifest, manifest_path, read_manifest, write_manifest
from alloynet.data.simulate import OLD_IMBALANCE_KEY, DatasetSpec, simulate_dataset
from alloynet.evaluate.robustness import RobustnessCase, case_named, case_spec, held_out_manifest
from alloynet.study.config import OODSet, StudyConfig

TEST_SEED = 10_000  # the shared test set's seed: disjoint from every training seed


def _is_current(spec: DatasetSpec, root: Path) -> bool:
    stamp = root / "spec.json"
    if not (stamp.exists() and manifest_path(root).exists()):
        return False
    text = stamp.read_text()
    if text == spec.model_dump_json():
        return True
    # A set stamped while the class-count shape was still called ``profile`` is the same set: not simulated again.
    try:
        stamped = json.loads(text)
    except json.JSONDecodeError:
        return False
    if not isinstance(stamped, dict) or OLD_IMBALANCE_KEY not in stamped or "imbalance" in stamped:
        return False
    stamped["imbalance"] = stamped.pop(OLD_IMBALANCE_KEY)
    return stamped == json.loads(spec.model_dump_json())


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


def _materialise(spec: DatasetSpec, root: Path, all_test: bool, calibration_sent: bool = True) -> Path:
    if _is_current(spec, root):
        return root
    with _locked(root):
        if _is_current(spec, root):  # another worker made it while we waited
            return root
        if root.exists():
            shutil.rmtree(root)
        store = LocalStore(root)
        simulate_dataset(spec, store)
        if all_test:
            df = held_out_manifest(store, spec.seed, calibration_sent)
        else:
            df = build_manifest(store, seed=spec.seed, test_fraction=0.0)
        write_manifest(df, manifest_path(root))
        (root / "spec.json").write_text(spec.model_dump_json())  # last: the set counts only once complete
    return root


def _pool_spec(cfg: StudyConfig, rho: float, seed: int) -> DatasetSpec:
    d = cfg.data
    return DatasetSpec(
        n_max=d.n_max,
        imbalance_ratio=rho,
        class_order=d.class_order,
        imbalance="exponential" if rho > 1 else "balanced",
        wedges_mm=d.wedges_mm,
        captures_per_plate=d.captures_per_plate,
        test_fraction=0.0,
        seed=seed,
        id_prefix=f"rho{rho:g}s{seed}",
        rig=d.rig,
        **d.thickness_fields(),
    )


def pool_dir(cfg: StudyConfig, rho: float, seed: int) -> Path:
    return Path(cfg.work_dir) / "data" / f"rho{rho:g}-seed{seed}"


def pool_is_current(cfg: StudyConfig, rho: float, seed: int) -> bool:
    """Whether the training pool on disk was made from the current config (without simulating anything)."""
    return _is_current(_pool_spec(cfg, rho, seed), pool_dir(cfg, rho, seed))


def training_pool(cfg: StudyConfig, rho: float, seed: int) -> Path:
    return _materialise(_pool_spec(cfg, rho, seed), pool_dir(cfg, rho, seed), all_test=False)


def held_out_spec(cfg: StudyConfig, ood: OODSet | None = None) -> tuple[DatasetSpec, bool]:
    """The balanced test set's spec (or an OOD set's: the study's test set with the set's changes), and
    whether its captures' calibration is sent."""
    d = cfg.data
    base: dict[str, Any] = {
        "n_max": d.test_plates_per_class,
        "imbalance": "balanced",
        "test_fraction": 0.0,
        "wedges_mm": d.wedges_mm,
        "captures_per_plate": d.captures_per_plate,
        "seed": TEST_SEED,
        "id_prefix": f"test-{ood.name if ood else 'iid'}",
        **d.thickness_fields(),
    }
    if ood is None:
        return DatasetSpec(rig=d.rig, **base), True
    case = case_named(ood.case) if ood.case else RobustnessCase(name=ood.name, description=ood.name)
    spec = case_spec(case, d.rig, base)
    changes: dict[str, Any] = {}
    if ood.thicknesses_mm or ood.thickness_range_mm:
        changes.update(thicknesses_mm=ood.thicknesses_mm, thickness_range_mm=ood.thickness_range_mm)
    if ood.wedges_mm:
        changes["wedges_mm"] = ood.wedges_mm
    if ood.rig:
        changes["rig"] = spec.rig.model_copy(update=ood.rig)
    if changes:
        kept = spec.model_dump(
            exclude_unset=True,
            exclude={"thicknesses_mm", "thickness_range_mm"} if "thicknesses_mm" in changes else set(),
        )
        spec = DatasetSpec.model_validate({**kept, **{k: v for k, v in changes.items() if v is not None}})
    return spec, case.calibration_sent


def held_out_set(cfg: StudyConfig, ood: OODSet | None = None) -> Path:
    spec, calibration_sent = held_out_spec(cfg, ood)
    name = f"test-{ood.name}" if ood else "test"
    return _materialise(spec, Path(cfg.work_dir) / "data" / name, all_test=True, calibration_sent=calibration_sent)


def set_spec(root: Path) -> DatasetSpec:
    """The spec a cached set was simulated from."""
    return DatasetSpec.model_validate_json((root / "spec.json").read_text())


def calibration_sent(root: Path) -> bool:
    """Whether a set's manifest carries its captures' calibration (a set made to test a client that does
    not send it has zeros)."""
    df = read_manifest(manifest_path(root))
    return bool(df.dark_adu.astype(str).ne(df.flat_adu.astype(str)).all())


def describe(root: Path) -> dict:
    spec = set_spec(root)
    out = {
        "thicknesses_mm": spec.thicknesses_mm,
        "thickness_range_mm": spec.thickness_range_mm,
        "wedges_mm": spec.wedges_mm,
        "dose": spec.rig.dose,
        "size": [spec.rig.height, spec.rig.width],
        "kvp": spec.rig.kvp,
    }
    if spec.session_drift:
        out["session_drift"] = spec.session_drift
    if spec.simulator != "alloynet":
        out["simulator"] = spec.simulator
    if not calibration_sent(root):
        out["calibration_sent"] = False
    return out
