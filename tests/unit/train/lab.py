"""A lab's folder as a lab has it, made from a simulated store: one 16-bit TIFF per capture and a labels CSV with
the alloy, the nominal thickness, the plate and the calibration LEVELS; nothing only a simulator knows (a0,
mu_eff), so `alloynet import` writes captures without them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from alloynet.captures.layout import read_capture


def write_lab_folder(store, root: Path, thickness: bool = True, only: set[str] | None = None) -> Path:
    """Every capture of ``store`` (or those in ``only``) as ``root/<alloy>/<capture id>.tif``; returns the labels
    CSV. ``thickness=False`` leaves the thickness column empty (a lab without a caliper)."""
    root.mkdir(parents=True, exist_ok=True)
    rows = ["file,alloy,thickness_mm,plate_id,wedge_mm,dark,flat"]
    for key in sorted(i.key for i in store.list("captures/") if i.key.endswith(".json")):
        sc = json.loads(store.get(key))
        if only is not None and sc["capture_id"] not in only:
            continue
        cap = read_capture(store, sc["capture_id"], accepted_sizes=set())  # any size: a test's tiny ones
        rel = f"{sc['truth']['alloy']}/{sc['capture_id']}.tif"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.ascontiguousarray(cap.image[0])).save(root / rel)
        t = f"{sc['truth']['nominal_thickness_mm']:g}" if thickness else ""
        levels = [";".join(f"{v:.2f}" for v in sc["calibration"][k]) for k in ("dark_adu", "flat_adu")]
        rows.append(",".join([rel, sc["truth"]["alloy"], t, sc["plate_id"], f"{sc['rig']['wedge_mm']:g}", *levels]))
    csv = root / "labels.csv"
    csv.write_text("\n".join(rows) + "\n")
    return csv
