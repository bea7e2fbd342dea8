"""A seeded dummy-capture generator: a context manager that writes a throwaway capture store.

    with DummyCaptureStore(n_max=4, size=32) as (store, manifest):
        ...

Uses the real simulator (tiny images) so captures are physically consistent, and deletes everything on
exit. ``corrupt_capture`` damages a stored capture in one named way, for validation/quarantine tests.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from alloynet.captures.stores import LocalStore
from alloynet.data.manifest import build_manifest, write_manifest
from alloynet.data.simulate import DatasetSpec, simulate_dataset
from alloynet.physics.simulator import RigConfig


class DummyCaptureStore:
    def __init__(
        self,
        n_max: int = 4,
        size: int = 32,
        seed: int = 0,
        imbalance_ratio: float = 4.0,
        captures_per_plate: int = 1,
        kvp: tuple[float, ...] = (50.0,),
        root: str | Path | None = None,
        **spec,
    ):
        self.spec = DatasetSpec(
            n_max=n_max,
            imbalance_ratio=imbalance_ratio,
            seed=seed,
            captures_per_plate=captures_per_plate,
            rig=RigConfig(height=size, width=size, kvp=list(kvp)),
            **spec,
        )
        self._root = Path(root) if root else None
        self._tmp: str | None = None

    def __enter__(self):
        if self._root is None:
            self._tmp = tempfile.mkdtemp(prefix="alloynet-dummy-")
            self._root = Path(self._tmp)
        self.store = LocalStore(self._root)
        simulate_dataset(self.spec, self.store)
        self.manifest = build_manifest(self.store, seed=self.spec.seed)
        write_manifest(self.manifest, self.store.root / "manifest.csv")
        return self.store, self.manifest

    def __exit__(self, *exc):
        if self._tmp:
            shutil.rmtree(self._tmp, ignore_errors=True)
        return False


def corrupt_capture(store: LocalStore, capture_id: str, how: str) -> None:
    """Damage one capture in place: truncate | garbage | hash | alloy | thickness | sidecar_json | no_image."""
    sc_path = store.root / "captures" / f"{capture_id}.json"
    sc = json.loads(sc_path.read_text())
    img_path = store.root / "captures" / sc["image"]["file"]
    if how == "truncate":
        img_path.write_bytes(img_path.read_bytes()[:200])
    elif how == "garbage":
        img_path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00garbage" * 50)
    elif how == "hash":
        sc["image"]["sha256"] = "0" * 64
    elif how == "alloy":
        sc["truth"]["alloy"] = "../Al9999"  # not an alloy name (any well-formed name is valid)
    elif how == "thickness":
        sc["truth"]["nominal_thickness_mm"] = -1.0
    elif how == "sidecar_json":
        sc_path.write_text("{not json")
        return
    elif how == "no_image":
        img_path.unlink()
    else:
        raise ValueError(how)
    sc_path.write_text(json.dumps(sc))
