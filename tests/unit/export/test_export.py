"""Export (TorchScript, ONNX, TensorRT skip), parity, packaging and the TorchServe handler: no servers.

A small stand-in honouring the model contract (``AlloyNet`` over a tiny trunk) keeps these fast; the
serving tests (test_serving.py) use a model trained by alloynet.
"""

from __future__ import annotations

import io
import json
import re
import zipfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from alloynet import contract
from alloynet.data.transforms import Preprocess
from alloynet.export import (
    ExportBundle,
    ExportMeta,
    ParityError,
    TensorRTUnavailable,
    build_engine,
    check_parity,
    export_model,
    load_torchscript,
    onnx_session,
    onnx_signature,
    tensorrt_status,
)
from alloynet.models.heads import AlloyNet
from alloynet.physics import ALLOY_NAMES
from tests.helpers.serving import capture_inputs

SIZE = 32


def standin(seed: int = 0) -> AlloyNet:
    torch.manual_seed(seed)
    trunk = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten())
    return AlloyNet(
        trunk,
        16,
        5,
        Preprocess([1000.0], [50000.0], mean=2.0, std=1.5),
        target_stats={"thickness_mm": (5.0, 2.0), "a0": (1.0, 0.5), "mu_eff": (0.8, 0.2)},
    ).eval()


@pytest.fixture(scope="module")
def inputs() -> dict[str, np.ndarray]:
    got = capture_inputs(4, size=SIZE)
    got["image"] = got["image"].astype(np.float32)
    got["calibration"][-1] = 0.0  # one sent without its calibration (and wedge size)
    got["wedge_mm"][-1] = 0.0
    return got


@pytest.fixture(scope="module")
def images(inputs) -> np.ndarray:
    return inputs["image"]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory, inputs) -> ExportBundle:
    meta = ExportMeta(class_names=list(ALLOY_NAMES), channels=1, height=SIZE, width=SIZE, arch="standin")
    return export_model(
        standin(), meta, tmp_path_factory.mktemp("bundle"), inputs, tensorrt="fp16", log=lambda *_: None
    )


def test_export_writes_formats_with_parity_and_dynamic_batch(bundle, inputs):
    assert set(bundle.meta.files) == {"torchscript", "onnx"}
    assert bundle.meta.parity["ok"] and bundle.meta.parity["max_abs_diff"]["onnxruntime"]["probabilities"] < 1e-4
    sig = onnx_signature(bundle.path("onnx"))
    assert sig["inputs"] == {
        "image": ["batch", 1, SIZE, SIZE],
        "calibration": ["batch", 1, 2],
        "wedge_mm": ["batch", 1],
    }
    assert sig["outputs"] == {
        "probabilities": ["batch", 5],
        "thickness_mm": ["batch"],
        "absorption": ["batch", 2],
        "prediction_set": ["batch", 5],
        "group_probabilities": ["batch", 2],
        "flags": ["batch", 5],
        "status": ["batch"],
        "status_value": ["batch"],
    }
    sess = onnx_session(bundle.path("onnx"))
    for b in (1, 3):
        p, t, a, s, g, f, *_ = sess.run(None, {k: v[:b] for k, v in inputs.items()})
        assert p.shape == (b, 5) and t.shape == (b,) and a.shape == (b, 2) and s.shape == (b, 5) and f.shape == (b, 5)
        np.testing.assert_allclose(p.sum(1), 1.0, atol=1e-5)
        np.testing.assert_allclose(g.sum(1), 1.0, atol=1e-5)
    # the capture sent without its calibration is answered with that said, the others are not
    flags, status = sess.run(["flags", "status"], inputs)
    assert flags[:, 0].tolist() == [0.0, 0.0, 0.0, 1.0]
    assert status.tolist() == [0.0, 0.0, 0.0, contract.STATUS_CODES["calibration_missing"]]
    # the model file describes itself
    import onnx

    props = {p.key: p.value for p in onnx.load(str(bundle.path("onnx"))).metadata_props}
    assert props["flag_names"].split(",") == list(contract.FLAG_NAMES)
    assert props["contract_version"] == str(contract.VERSION) and float(props["coverage"]) == 0.95
    # uint16 captures cast to float32 are exactly what the graph expects: preprocessing is inside it
    ts = load_torchscript(bundle.path("torchscript"))
    with torch.no_grad():
        p_ts = ts(*(torch.from_numpy(inputs[k]) for k in ("image", "calibration", "wedge_mm")))[0].numpy()
    np.testing.assert_allclose(p_ts, sess.run(None, inputs)[0], atol=1e-4)


def test_parity_fails_beyond_tolerance(bundle, inputs):
    with pytest.raises(ParityError, match="onnxruntime: probabilities differs"):
        check_parity(standin(seed=1), inputs, onnx_path=bundle.path("onnx"))
    report = check_parity(standin(), inputs, bundle.path("torchscript"), bundle.path("onnx"))
    assert report.ok and report.top1_agreement == {"torchscript": 1.0, "onnxruntime": 1.0}


def test_tensorrt_absent_is_said_and_skipped(bundle, inputs):
    ok, reason = tensorrt_status()
    if ok:
        pytest.skip(f"TensorRT present ({reason}): the engine build is exercised on GPU workers")
    assert "Skipping the engine build" in reason
    assert "skipped" in bundle.meta.tensorrt and "tensorrt" not in bundle.meta.files
    with pytest.raises(TensorRTUnavailable, match="TensorRT"):
        build_engine(bundle.path("onnx"), bundle.directory / "model.plan", bundle.meta, captures=inputs)
    assert not (bundle.directory / "model.plan").exists()


def test_triton_repository_one_model_name_whichever_backend(bundle, tmp_path):
    from serving.triton.repository import BatchingOptions, build_repository, parse_config, validate_config

    for backend in ("alloynet_ort", "onnxruntime"):
        repo = build_repository(
            bundle.directory, tmp_path / backend, opts=BatchingOptions(max_batch_size=16), backend=backend
        )
        assert [p.name for p in repo.iterdir()] == ["alloynet"]
        cfg = parse_config(repo / "alloynet" / "config.pbtxt")
        assert cfg.backend == backend and cfg.name == "alloynet"
        assert cfg.max_batch_size == 16 and list(cfg.dynamic_batching.preferred_batch_size) == [4, 8, 16]
        assert [i.name for i in cfg.input] == ["image", "calibration", "wedge_mm"]
        assert list(cfg.input[0].dims) == [1, SIZE, SIZE]
        assert list(cfg.input[1].dims) == [1, 2] and list(cfg.input[2].dims) == [1]
        assert not any(i.optional for i in cfg.input)  # every backend takes the same request
        assert [o.name for o in cfg.output] == list(contract.OUTPUT_NAMES)
        params = {k: v.string_value for k, v in cfg.parameters.items()}
        assert params["class_names"].split(",") == list(ALLOY_NAMES)
        assert params["flag_names"].split(",") == list(contract.FLAG_NAMES)
        assert params["group_names"].split(",") == list(contract.GROUP_NAMES)
        assert params["contract_version"] == str(contract.VERSION) and float(params["coverage"]) == 0.95
        assert "16:image_not_finite" in params["status_codes"].split(",")
        assert {p.name for p in (repo / "alloynet" / "1").iterdir()} == {"model.onnx", "export.json"}
    native = parse_config(tmp_path / "alloynet_ort" / "alloynet" / "config.pbtxt")  # what alloynet_ort.cc reads
    assert native.parameters["output_names"].string_value.split(",") == list(contract.OUTPUT_NAMES)
    assert native.parameters["input_names"].string_value.split(",") == ["image", "calibration", "wedge_mm"]
    stock = parse_config(tmp_path / "onnxruntime" / "alloynet" / "config.pbtxt")
    assert stock.platform == "onnxruntime_onnx" and "output_names" not in stock.parameters
    # a wrong dim is caught by validation against the ONNX model
    bad = tmp_path / "onnxruntime" / "alloynet" / "config.pbtxt"
    bad.write_text(bad.read_text().replace(f"dims: [ 1, {SIZE}, {SIZE} ]", "dims: [ 1, 64, 64 ]"))
    with pytest.raises(ValueError, match="ONNX model has"):
        validate_config(bad, bundle.path("onnx"), bundle.meta)
    with pytest.raises(ValueError, match="expected one of"):
        build_repository(bundle.directory, tmp_path / "x", backend="python")
    # the GPU variant asks ONNX Runtime for the TensorRT execution accelerator
    gpu = build_repository(bundle.directory, tmp_path / "gpu", gpu=True)
    cfg = parse_config(gpu / "alloynet" / "config.pbtxt")
    acc = cfg.optimization.execution_accelerators.gpu_execution_accelerator[0]
    assert cfg.backend == "onnxruntime" and acc.name == "tensorrt" and acc.parameters["precision_mode"] == "FP16"
    assert cfg.instance_group[0].kind == cfg.instance_group[0].KIND_GPU


def test_torchserve_proto_copy_matches_the_server():
    import ts

    from serving.torchserve.grpc_api import PROTO_DIR, PROTO_FILE, modules

    jar = Path(ts.__file__).parent / "frontend" / "model-server.jar"
    with zipfile.ZipFile(jar) as z:
        server = z.read("proto/inference.proto").decode()
    ours = "\n".join(line for line in (PROTO_DIR / PROTO_FILE).read_text().splitlines() if not line.startswith("// "))
    assert ours.strip() == server.strip()
    pb, services = modules()
    assert pb.PredictionsRequest.DESCRIPTOR.full_name == "org.pytorch.serve.grpc.inference.PredictionsRequest"
    assert hasattr(services, "InferenceAPIsServiceStub")


class _Metrics:
    def add_time(self, *a, **k):
        pass


def _context(model_dir: Path) -> SimpleNamespace:
    statuses: dict[int, tuple[int, str]] = {}
    return SimpleNamespace(
        system_properties={"model_dir": str(model_dir), "gpu_id": None},
        manifest={"model": {"serializedFile": "model.pt"}},
        model_yaml_config={},
        metrics=_Metrics(),
        statuses=statuses,
        get_request_header=lambda idx, key: None,
        set_response_status=lambda code, phrase, idx=0: statuses.__setitem__(idx, (code, phrase)),
    )


def _npy(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a)
    return buf.getvalue()


def test_handler_answers_each_request_and_rejects_bad_ones(bundle, images):
    from alloynet.captures.image import encode_image
    from serving.torchserve.handler import AlloyHandler

    ctx = _context(bundle.directory)
    handler = AlloyHandler()
    handler.initialize(ctx)
    good = images[0].astype(np.uint16)
    png, _ = encode_image(good)
    nan = images[1].copy()
    nan[0, 2, 2] = np.nan
    rows = [
        {"data": png},
        {"body": _npy(images[1])},
        {"data": _npy(images[1].astype(np.float64))},
        {"data": encode_image(np.zeros((1, 16, 16), np.uint16))[0]},
        {"data": png[:60]},
        {"data": _npy(nan)},
        {"data": b""},
        {"data": b"\x93NUMPY garbage"},
        {"data": _npy(np.zeros((0,), np.uint16))},
    ]
    out = handler.handle(rows, ctx)
    assert len(out) == len(rows)
    zeros = torch.zeros(2, 1, 2)  # rows sent without calibration: the handler fills zeros, the model flags it
    expected = (
        load_torchscript(bundle.path("torchscript"))(torch.from_numpy(images[:2]), zeros, torch.zeros(2, 1))[0]
        .detach()
        .numpy()
    )
    for i in (0, 1):
        assert out[i]["alloy"] in ALLOY_NAMES
        np.testing.assert_allclose([out[i]["probabilities"][c] for c in ALLOY_NAMES], expected[i], atol=1e-4)
    want = {
        2: "float64",
        3: r"\[1, 16, 16\]",
        4: "corrupt or truncated PNG",
        5: "NaN",
        6: "empty",
        7: "corrupt .npy",
        8: "empty",
    }
    for i, pattern in want.items():
        assert out[i]["error"]["code"] == 400 and re.search(pattern, out[i]["error"]["message"]), out[i]
        assert ctx.statuses[i][0] == 400
    assert set(ctx.statuses) == set(want)
    # the NaN pixel was named by the graph's status, in the contract's words
    assert out[5]["error"]["status"] == "image_not_finite" and out[5]["error"]["field"] == "image"
    assert out[5]["error"]["message"] == contract.status_message(16, 1.0)[1]
    assert out[0]["status"] == "calibration_missing"  # sent without calibration: answered, and said so
    described = handler.describe_handle()
    assert described["flag_names"].split(",") == list(contract.FLAG_NAMES) and described["coverage"] == "0.95"


def test_mar_holds_model_handler_and_meta(bundle, tmp_path):
    from serving.torchserve.archive import build_mar

    mar = build_mar(bundle.directory, tmp_path, batch_size=4)
    with zipfile.ZipFile(mar) as z:
        names = set(z.namelist())
        manifest = json.loads(z.read("MAR-INF/MANIFEST.json"))
    assert {
        "model.pt",
        "handler.py",
        "export.json",
        "capture_checks.py",
        "alloynet_contract.py",
        "model-config.yaml",
    } <= names
    assert manifest["model"]["modelName"] == "alloynet" and manifest["model"]["handler"] == "handler.py"


def test_cli_package_from_bundle(bundle, tmp_path):
    from typer.testing import CliRunner

    from alloynet.cli import app

    r = CliRunner().invoke(
        app, ["package", "triton", "--bundle", str(bundle.directory), "--out", str(tmp_path / "repo")]
    )
    assert r.exit_code == 0, r.output
    assert (tmp_path / "repo" / "alloynet" / "config.pbtxt").exists()
    r = CliRunner().invoke(
        app, ["package", "torchserve", "--bundle", str(bundle.directory), "--out", str(tmp_path / "store")]
    )
    assert r.exit_code == 0, r.output
    assert (tmp_path / "store" / "alloynet.mar").exists()
    r = CliRunner().invoke(app, ["package", "triton", "--out", str(tmp_path / "x")])
    assert r.exit_code != 0 and "--checkpoint" in r.output


def test_a_bundle_of_another_contract_version_is_refused_by_name(bundle, tmp_path):
    import shutil

    from serving.torchserve.handler import AlloyHandler
    from serving.triton.repository import build_repository

    old = tmp_path / "old"
    shutil.copytree(bundle.directory, old)
    meta = json.loads((old / contract.META_FILE).read_text())
    meta["contract_version"] = contract.VERSION - 1
    (old / contract.META_FILE).write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="export the model again"):
        build_repository(old, tmp_path / "repo")
    with pytest.raises(RuntimeError, match="export the model again"):
        AlloyHandler().initialize(_context(old))
