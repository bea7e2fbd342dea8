"""End to end against real servers on 127.0.0.1: TorchServe (REST + gRPC) and Triton (gRPC), serving a
model trained by alloynet (profile_cnn, one epoch, 64x64). Servers are started by fixtures on free ports
and stopped by PID even when a test fails. Speed is measured in bench/serve.py, never asserted here.
"""

from __future__ import annotations

import io
import json
import urllib.error
import urllib.request

import numpy as np
import pytest

from alloynet.physics import ALLOY_NAMES
from tests.helpers.serving import capture_inputs

pytestmark = pytest.mark.serving  # in `make test`: one real Triton (gRPC) and one TorchServe


@pytest.fixture(scope="module")
def trained_bundle(trained_bundle_factory):
    return trained_bundle_factory(0)  # parity-checked on its test split


@pytest.fixture(scope="module")
def inputs() -> dict[str, np.ndarray]:
    return capture_inputs(5, seed=3)


@pytest.fixture(scope="module")
def captures(inputs) -> np.ndarray:
    return inputs["image"]


@pytest.fixture(scope="module")
def calibrations(inputs) -> np.ndarray:
    return inputs["calibration"]


@pytest.fixture(scope="module")
def onnx_reference(trained_bundle, inputs):
    """What in-process ONNX Runtime says for each capture sent with its own calibration."""
    from alloynet.export import onnx_session

    return onnx_session(trained_bundle.path("onnx")).run(
        None,
        {
            "image": inputs["image"].astype(np.float32),
            "calibration": inputs["calibration"],
            "wedge_mm": inputs["wedge_mm"],
        },
    )


def _with_sidecar(path, calibration, wedge_mm: float = 50.0) -> None:
    """A capture file with its sidecar beside it, as alloynet stores captures (only the calibration and the
    wedge size matter here)."""
    path.with_suffix(".json").write_text(
        json.dumps(
            {
                "calibration": {"dark_adu": calibration[:, 0].tolist(), "flat_adu": calibration[:, 1].tolist()},
                "rig": {"wedge_mm": wedge_mm},
            }
        )
    )


@pytest.fixture(scope="module")
def torchserve(trained_bundle, tmp_path_factory):
    from infra import torchserve as server
    from serving.torchserve.archive import build_mar

    store = tmp_path_factory.mktemp("model-store")
    build_mar(trained_bundle.directory, store, batch_size=4, max_batch_delay_ms=5)
    work = tmp_path_factory.mktemp("torchserve")
    try:
        yield server.start(store, ["alloynet.mar"], work, timeout=180)
    finally:
        server.stop(work)


@pytest.fixture(scope="module")
def triton(trained_bundle, tmp_path_factory):
    from infra import triton as server
    from serving.triton.repository import build_repository

    ok, reason = server.available()
    if not ok:  # a missing server is a broken set-up, never a skip
        pytest.fail(f"{reason} (infra/serving_env.sh creates it; `make test` runs it first)")
    repo = build_repository(trained_bundle.directory, tmp_path_factory.mktemp("triton-repo"))
    work = tmp_path_factory.mktemp("triton")
    try:
        yield server.start(repo, work, models=["alloynet"], timeout=120)
    finally:
        server.stop(work)


def _npy(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a)
    return buf.getvalue()


def _bad_inputs(captures: np.ndarray) -> dict[str, tuple[object, str]]:
    """name -> (capture as the client sends it, pattern the error must contain)."""
    from alloynet.captures.image import encode_image

    nan = captures[0].astype(np.float32)
    nan[0, 5, 5] = np.nan
    png, _ = encode_image(captures[0])
    return {
        "wrong dtype": (captures[0].astype(np.float64), "(?i)float64|FP64"),
        "wrong size": (captures[0][:, :32, :32], "32"),
        "corrupt bytes": (png[: len(png) // 2], "corrupt or truncated"),
        "NaN": (nan, "NaN"),
        "empty": (b"", "empty"),
    }


# -- TorchServe ---------------------------------------------------------------------------------------


def test_torchserve_rest_and_grpc_serve_the_trained_model(torchserve, captures, calibrations, onnx_reference, tmp_path):
    from alloynet.captures.image import encode_image
    from serving.client import connect

    png, _ = encode_image(captures[0])
    req = urllib.request.Request(
        f"{torchserve.inference_url}/predictions/alloynet",
        data=png,
        headers={"Authorization": f"Bearer {torchserve.inference_key}", "Content-Type": "application/octet-stream"},
    )
    with urllib.request.urlopen(req, timeout=30) as r:
        body = json.loads(r.read())
    assert body["flags"] == ["calibration_missing"]  # REST with the image alone: said, and answered anyway
    # token authorisation is on: no key, no prediction
    with pytest.raises(urllib.error.HTTPError) as exc:
        urllib.request.urlopen(
            urllib.request.Request(
                f"{torchserve.inference_url}/predictions/alloynet",
                data=png,
                headers={"Content-Type": "application/octet-stream"},
            ),
            timeout=30,
        )
    assert exc.value.code in (400, 401, 403)

    path = tmp_path / "capture.png"
    path.write_bytes(png)
    _with_sidecar(path, calibrations[0])  # the client reads the capture's own calibration from its sidecar
    with connect(f"torchserve://{torchserve.grpc_target}/alloynet", token=torchserve.inference_key) as client:
        assert client.ready()
        preds = client.predict_batch(
            [path, *captures[1:]], [None, *calibrations[1:]], [None] + [50.0] * (len(captures) - 1)
        )
    for i, p in enumerate(preds):
        assert "calibration_missing" not in p.flags and set(p.prediction_set) <= set(ALLOY_NAMES)
        np.testing.assert_allclose([p.probabilities[c] for c in ALLOY_NAMES], onnx_reference[0][i], atol=1e-4)
        assert p.thickness_mm == pytest.approx(float(onnx_reference[1][i]), rel=1e-4, abs=1e-4)
        assert [p.absorption["a0"], p.absorption["mu_eff"]] == pytest.approx(
            onnx_reference[2][i].tolist(), rel=1e-4, abs=1e-4
        )
        assert p.alloy == ALLOY_NAMES[int(np.argmax(onnx_reference[0][i]))]


def test_torchserve_rejects_bad_inputs_and_keeps_serving(torchserve, captures):
    from serving.client import InvalidCaptureError, ServingError, connect

    with connect(f"torchserve://{torchserve.grpc_target}", token=torchserve.inference_key) as client:
        for _name, (capture, pattern) in _bad_inputs(captures).items():
            with pytest.raises(InvalidCaptureError, match=pattern):
                client.predict(capture)
        with pytest.raises(InvalidCaptureError, match="bad magic bytes"):
            client.predict(b"not an image at all")
        assert client.predict(captures[0]).alloy in ALLOY_NAMES  # the worker is alive and answering
    with connect(f"torchserve://{torchserve.grpc_target}", token="wrong-key", retries=0) as client:
        with pytest.raises(ServingError, match="PERMISSION_DENIED"):
            client.predict(captures[0])
    req = urllib.request.Request(
        f"{torchserve.inference_url}/predictions/alloynet",
        data=b"\x89PNG\r\n\x1a\nxx",
        headers={"Authorization": f"Bearer {torchserve.inference_key}", "Content-Type": "application/octet-stream"},
    )
    with pytest.raises(urllib.error.HTTPError) as exc:
        urllib.request.urlopen(req, timeout=30)
    assert exc.value.code == 400 and "corrupt" in json.loads(exc.value.read())["error"]["message"]


# -- Triton ---------------------------------------------------------------------------------------


def test_triton_serves_the_trained_model(triton, captures, calibrations, onnx_reference, tmp_path):
    from alloynet.captures.image import encode_image
    from serving.client import connect

    path = tmp_path / "capture.png"
    path.write_bytes(encode_image(captures[0])[0])
    _with_sidecar(path, calibrations[0])
    with connect(f"triton://{triton.grpc_target}/alloynet") as client:
        assert client.ready()
        one = client.predict(path)
        batch = client.predict_batch(list(captures), list(calibrations), [50.0] * len(captures))
        alone = client.predict(captures[0])  # no calibration: answered, and said
    assert "calibration_missing" in alone.flags and "calibration_missing" not in one.flags
    np.testing.assert_allclose([one.probabilities[c] for c in ALLOY_NAMES], onnx_reference[0][0], atol=1e-4)
    for i, p in enumerate(batch):
        np.testing.assert_allclose([p.probabilities[c] for c in ALLOY_NAMES], onnx_reference[0][i], atol=1e-4)
        assert p.thickness_mm == pytest.approx(float(onnx_reference[1][i]), rel=1e-4, abs=1e-4)
        assert p.absorption["mu_eff"] == pytest.approx(float(onnx_reference[2][i][1]), rel=1e-4, abs=1e-4)


def test_triton_rejects_bad_inputs_and_keeps_serving(triton, captures):
    import tritonclient.grpc as g
    from tritonclient.utils import InferenceServerException

    from serving.client import InvalidCaptureError, connect

    with connect(f"triton://{triton.grpc_target}/alloynet") as client:
        for _name, (capture, pattern) in _bad_inputs(captures).items():
            if isinstance(capture, bytes):
                continue  # encoded bytes are decoded by the client (alloynet's decoder); tensors below
            with pytest.raises(InvalidCaptureError, match=pattern):
                client.predict(capture)
        with pytest.raises(InvalidCaptureError, match="detector range"):
            client.predict(-captures[0].astype(np.float32))
        with pytest.raises(InvalidCaptureError, match="corrupt or truncated"):  # client-side, before sending
            client.predict(_bad_inputs(captures)["corrupt bytes"][0])
        # On the server: a tensor whose bytes do not match its declared shape, and an empty tensor (beside
        # well-formed calibration and wedge inputs of the same batch size).
        raw = g.InferenceServerClient(triton.grpc_target)
        for shape, data in (([1, 1, 64, 64], b"\x00" * 1000), ([0, 1, 64, 64], b"")):
            inp = g.InferInput("image", shape, "FP32")
            inp._raw_content = data  # the wire-level bytes, as a damaged client would send them
            inp._input.ClearField("contents")
            context = []
            for name, per_item in (("calibration", [1, 2]), ("wedge_mm", [1])):
                context.append(g.InferInput(name, [shape[0], *per_item], "FP32"))
                context[-1].set_data_from_numpy(np.full([shape[0], *per_item], 50.0, np.float32))
            with pytest.raises(InferenceServerException) as exc:
                raw.infer("alloynet", [inp, *context], client_timeout=10)
            assert "INVALID_ARGUMENT" in str(exc.value.status()) and "size" in exc.value.message()
        raw.close()
        assert client.predict(captures[0]).alloy in ALLOY_NAMES  # the instance is alive and answering


def test_triton_client_keeps_one_stream_and_answers_as_unary_calls_do(triton, captures, calibrations):
    import threading

    from serving.client import InvalidCaptureError, ModelNotFoundError, connect

    url = f"triton://{triton.grpc_target}/alloynet"
    wedges = [50.0] * len(captures)
    with connect(url) as streamed, connect(url, stream=False) as unary:
        a = streamed.predict_batch(list(captures), list(calibrations), wedges)
        b = unary.predict_batch(list(captures), list(calibrations), wedges)
        singles = [streamed.predict(c, k, 50.0) for c, k in zip(captures, calibrations)]
        assert streamed.backend.stream_answers == 1 + len(captures) and unary.backend.stream_answers == 0
        for p, q, r in zip(a, b, singles):
            assert p.alloy == q.alloy == r.alloy and p.flags == q.flags
            np.testing.assert_allclose(
                [p.probabilities[c] for c in ALLOY_NAMES], [q.probabilities[c] for c in ALLOY_NAMES], atol=1e-6
            )
            np.testing.assert_allclose(
                [r.probabilities[c] for c in ALLOY_NAMES],  # batch 1 vs 6: ORT's sums
                [q.probabilities[c] for c in ALLOY_NAMES],
                atol=1e-4,
            )
        # a refused capture: the stream's answer carries no gRPC code, so the client asks again without it
        nan = captures[0].astype(np.float32)
        nan[0, 3, 4] = np.nan
        errors = []
        for client in (streamed, unary):
            with pytest.raises(InvalidCaptureError) as exc:
                client.predict(nan)
            errors.append(exc.value)
        assert errors[0].code == errors[1].code == "INVALID_ARGUMENT"
        assert errors[0].message == errors[1].message and "NaN" in errors[0].message
        before = streamed.backend.stream_answers
        assert streamed.predict(captures[1], calibrations[1], 50.0).alloy == a[1].alloy
        assert streamed.backend.stream_answers == before + 1  # the stream outlived the refusal
        # threads sharing one client: one at a time uses the stream, the others unary calls; all answered right
        wrong: list = []

        def worker(i):
            for j in range(15):
                k = (i + j) % len(captures)
                if streamed.predict(captures[k], calibrations[k], 50.0).alloy != a[k].alloy:
                    wrong.append((i, j))

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        assert wrong == [] and not any(t.is_alive() for t in threads)
    with connect(url.rsplit("/", 1)[0] + "/no_such_model") as missing:
        with pytest.raises(ModelNotFoundError) as exc:
            missing.predict(captures[0])
        assert exc.value.code == "NOT_FOUND" and "no_such_model" in str(exc.value)


def test_client_retries_then_reports_unavailable():
    from infra.processes import free_port
    from serving.client import ServerUnavailableError, connect

    port = free_port()  # nothing listens here
    for url in (f"triton://127.0.0.1:{port}/alloynet", f"torchserve://127.0.0.1:{port}/alloynet"):
        with connect(url, timeout_s=2, retries=2, backoff_s=0.05) as client:
            with pytest.raises(ServerUnavailableError, match="after 3 attempts"):
                client.predict(np.zeros((1, 64, 64), np.uint16))


def test_cli_infer_over_triton(triton, captures, calibrations, onnx_reference, tmp_path):
    from typer.testing import CliRunner

    from alloynet.captures.image import encode_image
    from alloynet.cli import app

    good, bad = tmp_path / "good.png", tmp_path / "bad.png"
    good.write_bytes(encode_image(captures[1])[0])
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)
    r = CliRunner().invoke(app, ["infer", str(good), "--url", f"triton://{triton.grpc_target}/alloynet", "--json"])
    assert r.exit_code == 0, r.output
    line = json.loads(r.output.strip().splitlines()[-1])
    assert line["alloy"] in ALLOY_NAMES and line["server"] == "triton"
    assert "calibration_missing" in line["flags"]  # no sidecar beside it: said
    # a .npy capture with its sidecar: its calibration and wedge size are sent, as for a PNG
    arr = tmp_path / "plate2.npy"
    np.save(arr, captures[2])
    _with_sidecar(arr, calibrations[2])
    r = CliRunner().invoke(app, ["infer", str(arr), "--url", f"triton://{triton.grpc_target}/alloynet", "--json"])
    assert r.exit_code == 0, r.output
    line = json.loads(r.output.strip().splitlines()[-1])
    assert "calibration_missing" not in line["flags"]
    np.testing.assert_allclose([line["probabilities"][c] for c in ALLOY_NAMES], onnx_reference[0][2], atol=1e-4)
    r = CliRunner().invoke(app, ["infer", str(bad), "--url", f"triton://{triton.grpc_target}/alloynet", "--json"])
    assert r.exit_code == 1 and "corrupt" in r.output
