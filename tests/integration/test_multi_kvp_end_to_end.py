"""Several exposures end to end: a lab's three-page TIFFs (one page per kVp) -> `alloynet import` -> `alloynet train
--store` with no config -> the exported graph in-process (ONNX Runtime), which must read all three channels and
agree with the checkpoint's own answer."""

from __future__ import annotations

import io
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


# ---- the same three-exposure model through every serving path that runs here --------------------------------


@pytest.fixture(scope="module")
def three_kvp_bundle(tmp_path_factory):
    """A tiny profile_cnn trained one epoch on 40/50/60 kV captures (32 px) and exported, with captures of its
    test split as graph inputs: good ones, and bad ones whose fault lies in a channel past the first."""
    import torch

    from alloynet.captures.layout import read_capture
    from alloynet.export import export_checkpoint
    from alloynet.train import TrainConfig, train

    root = tmp_path_factory.mktemp("three-kvp-serving")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with DummyCaptureStore(n_max=6, size=32, kvp=KVP, imbalance_ratio=2.0, root=root / "store") as (st, manifest):
            cfg = TrainConfig.model_validate(
                {
                    "seed": 0,
                    "epochs": 1,
                    "out_dir": str(root / "run"),
                    "device": "cpu",
                    "progress": False,
                    "data": {"store": str(root / "store"), "batch_size": 8, "augment": False, "norm_images": 8},
                    "model": {"name": "profile_cnn", "dropout": 0.0},
                }
            )
            bundle = export_checkpoint(train(cfg).checkpoint, root / "export", n_parity=4, log=lambda *_: None)
            ids = list(manifest[manifest.split == "test"].capture_id[:3])
            caps = [read_capture(st, cid, accepted_sizes=set()) for cid in ids]
    finally:
        torch.set_num_threads(before)
    cases = {}
    for i, cap in enumerate(caps):
        cal = np.stack([cap.sidecar.calibration.dark_adu, cap.sidecar.calibration.flat_adu], -1).astype(np.float32)
        cases[f"good-{i}"] = (cap.image.astype(np.float32), cal)
    image, cal = cases["good-0"]
    nan = image.copy()
    nan[2, 5, 7] = np.nan  # the 60 kV page only
    swapped = cal.copy()
    swapped[1] = cal[1, ::-1]  # the 50 kV channel's flat below its dark
    cases["nan_in_third_channel"] = (nan, cal)
    cases["flat_not_above_dark_in_second_channel"] = (image, swapped)
    wedge = np.array([caps[0].sidecar.rig.wedge_mm], np.float32)
    return bundle, {k: {"image": im, "calibration": c, "wedge_mm": wedge} for k, (im, c) in cases.items()}


THREE_KVP_STATUS = {
    "nan_in_third_channel": "image_not_finite",
    "flat_not_above_dark_in_second_channel": "flat_not_above_dark",
}


@pytest.mark.serving
def test_three_kvp_model_answers_alike_in_process_on_triton_and_on_torchserve(three_kvp_bundle, tmp_path):
    """In-process ONNX Runtime, Triton (alloynet's own backend) and TorchServe give the same status and the same
    probabilities for three-channel captures, and a fault in the second or third channel is seen as such."""
    import grpc
    import tritonclient.grpc as grpcclient

    from alloynet.export import onnx_session
    from infra import torchserve as ts_server
    from infra import triton as triton_server
    from serving.torchserve.archive import build_mar
    from serving.torchserve.grpc_api import modules
    from serving.triton.repository import build_repository

    bundle, cases = three_kvp_bundle
    assert bundle.meta.input_shape[0] == 3
    batch = {n: np.stack([c[n] for c in cases.values()]) for n in contract.INPUT_NAMES}
    ref = dict(
        zip(
            contract.OUTPUT_NAMES,
            onnx_session(bundle.path("onnx")).run(list(contract.OUTPUT_NAMES), batch),
            strict=True,
        )
    )
    statuses = [contract.STATUS_NAMES[contract.status_code(s)] for s in ref["status"]]
    assert statuses == [THREE_KVP_STATUS.get(k, "ok") for k in cases], statuses

    ok, reason = triton_server.available()
    if not ok:  # a missing server is a broken set-up, never a skip
        pytest.fail(f"{reason} (infra/serving_env.sh creates it; `make test` runs it first)")
    repo = build_repository(bundle.directory, tmp_path / "triton-repo", backend="alloynet_ort")
    try:
        triton = triton_server.start(repo, tmp_path / "triton", models=["alloynet"], timeout=120)
        client = grpcclient.InferenceServerClient(triton.grpc_target)
        inputs = []
        for name in contract.INPUT_NAMES:
            tensor = grpcclient.InferInput(name, list(batch[name].shape), "FP32")
            tensor.set_data_from_numpy(batch[name])
            inputs.append(tensor)
        result = client.infer("alloynet", inputs)
        for name in contract.OUTPUT_NAMES:
            got = result.as_numpy(name).reshape(ref[name].shape)
            np.testing.assert_allclose(got, ref[name], rtol=1e-4, atol=1e-4, equal_nan=True, err_msg=name)
    finally:
        triton_server.stop(tmp_path / "triton")

    build_mar(bundle.directory, tmp_path / "model-store", batch_size=4, max_batch_delay_ms=5)
    pb, services = modules()
    try:
        ts = ts_server.start(tmp_path / "model-store", ["alloynet.mar"], tmp_path / "torchserve", timeout=180)
        metadata = [("authorization", f"Bearer {ts.inference_key}")]
        with grpc.insecure_channel(ts.grpc_target) as channel:
            stub = services.InferenceAPIsServiceStub(channel)
            for i, (name, case) in enumerate(cases.items()):
                buf = io.BytesIO()
                np.save(buf, case["image"])
                req = pb.PredictionsRequest(
                    model_name="alloynet",
                    input={
                        "data": buf.getvalue(),
                        "calibration": json.dumps(case["calibration"].tolist()).encode(),
                        "wedge_mm": json.dumps(float(case["wedge_mm"][0])).encode(),
                    },
                )
                body = json.loads(stub.Predictions(req, metadata=metadata, timeout=30).prediction)
                if name in THREE_KVP_STATUS:
                    assert body["error"]["status"] == THREE_KVP_STATUS[name], (name, body)
                    continue
                assert body["status"] == "ok", (name, body)
                got = [body["probabilities"][c] for c in bundle.meta.class_names]
                np.testing.assert_allclose(got, ref["probabilities"][i], atol=1e-4, err_msg=name)
    finally:
        ts_server.stop(tmp_path / "torchserve")
