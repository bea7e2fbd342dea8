"""Several exposures end to end: a lab's three-page TIFFs (one page per kVp) -> `alloynet import` -> `alloynet train
--store` with no config -> the exported graph in-process (ONNX Runtime), which must read all three channels and
agree with the checkpoint's own answer."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from alloynet import contract
from alloynet.captures.layout import read_capture
from alloynet.captures.stores import LocalStore
from alloynet.cli import app
from tests.helpers.dummy import DummyCaptureStore

runner = CliRunner()
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]
KVP = (40.0, 50.0, 60.0)


def _ok(args: list) -> str:
    res = runner.invoke(app, [str(a) for a in args])
    assert res.exit_code == 0, res.output
    return res.output


def write_multipage_lab_folder(store, root: Path) -> Path:
    """Every capture as a TIFF with one page per kVp, and a labels CSV with each channel's dark and flat levels."""
    import tifffile

    rows = ["file,alloy,thickness_mm,plate_id,wedge_mm,dark,flat"]
    for key in sorted(i.key for i in store.list("captures/") if i.key.endswith(".json")):
        sc = json.loads(store.get(key))
        cap = read_capture(store, sc["capture_id"], accepted_sizes=set())
        assert cap.image.shape[0] == len(KVP)
        rel = f"{sc['truth']['alloy']}/{sc['capture_id']}.tif"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        with tifffile.TiffWriter(root / rel) as tif:
            for page in cap.image:
                tif.write(np.ascontiguousarray(page), photometric="minisblack")
        levels = [";".join(f"{v:.2f}" for v in sc["calibration"][k]) for k in ("dark_adu", "flat_adu")]
        rows.append(
            ",".join(
                [
                    rel,
                    sc["truth"]["alloy"],
                    f"{sc['truth']['nominal_thickness_mm']:g}",
                    sc["plate_id"],
                    f"{sc['rig']['wedge_mm']:g}",
                    *levels,
                ]
            )
        )
    csv = root / "labels.csv"
    csv.write_text("\n".join(rows) + "\n")
    return csv


def test_three_kvp_tiffs_import_train_and_export(tmp_path):
    with DummyCaptureStore(n_max=8, size=32, imbalance_ratio=2.0, kvp=KVP, root=tmp_path / "sim") as (st, _):
        csv = write_multipage_lab_folder(st, tmp_path / "lab")
    store, run = tmp_path / "store", tmp_path / "run"
    _ok(["import", csv, store, "--kvp", "40", "--kvp", "50", "--kvp", "60", "--accept-size", "32x32"])
    sidecar = json.loads(next((store / "captures").glob("*.json")).read_text())
    assert sidecar["rig"]["kvp"] == list(KVP) and len(sidecar["calibration"]["dark_adu"]) == 3
    _ok(["train", "--store", store, "--epochs", "1", "--out", run, "--set", "progress=false"])

    from alloynet.export import export_checkpoint, onnx_session

    bundle = export_checkpoint(run / "best.pt", tmp_path / "export", n_parity=4, log=lambda *_: None)
    cap = read_capture(LocalStore(store), sidecar["capture_id"], accepted_sizes=set())
    feed = {
        "image": cap.image.astype(np.float32)[None],
        "calibration": np.stack([sidecar["calibration"]["dark_adu"], sidecar["calibration"]["flat_adu"]], -1).astype(
            np.float32
        )[None],
        "wedge_mm": np.array([[sidecar["rig"]["wedge_mm"]]], np.float32),
    }
    assert set(feed) == set(contract.INPUT_NAMES)
    out = dict(
        zip(
            contract.OUTPUT_NAMES, onnx_session(bundle.path("onnx")).run(list(contract.OUTPUT_NAMES), feed), strict=True
        )
    )
    assert contract.STATUS_NAMES[contract.status_code(out["status"][0])] == "ok"
    assert out["probabilities"][0].sum() == pytest.approx(1.0, abs=1e-5)
    # two channels of the three: the graph refuses or flags it, never answers as if nothing were missing
    short = {**feed, "image": feed["image"][:, :2], "calibration": feed["calibration"][:, :2]}
    with pytest.raises(Exception):  # noqa: B017 - ONNX Runtime's own shape error, whatever its class
        onnx_session(bundle.path("onnx")).run(list(contract.OUTPUT_NAMES), short)
