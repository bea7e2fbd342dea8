"""The same captures, good and bad, through every serving path that runs here: in-process ONNX Runtime,
Triton over gRPC (alloynet's own backend) and TorchServe over gRPC. Each must give the same status and the
same answer, a bad capture must not fail the others of its batch, and a capture sent without calibration or
wedge size must get an answer that says so (never a confident guess). The README's tritonclient example runs
against the same Triton."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import numpy as np
import pytest

from alloynet import contract
from tests.helpers.serving import capture_inputs

pytestmark = [pytest.mark.serving, pytest.mark.slow]

README = Path(__file__).resolve().parents[2] / "serving" / "README.md"

# case -> the status the graph must give it
EXPECTED = {
    "good": "ok",
    "nan_pixel": "image_not_finite",
    "over_max_adu": "image_out_of_range",
    "missing_calibration": "calibration_missing",
    "flat_not_above_dark": "flat_not_above_dark",
    "unknown_wedge": "wedge_missing",
    "wedge_in_cm": "wedge_out_of_range",
}


@pytest.fixture(scope="module")
def cases() -> dict[str, dict[str, np.ndarray]]:
    base = capture_inputs(2, seed=5)
    image = base["image"][0].astype(np.float32)
    cal, wedge = base["calibration"][0], base["wedge_mm"][0]
    nan, over = image.copy(), image.copy()
    nan[0, 3, 4] = np.nan
    over[0, 10, 10] = 70000.0
    swapped = cal[:, ::-1].copy()
    made = {
        "good": (image, cal, wedge),
        "nan_pixel": (nan, cal, wedge),
        "over_max_adu": (over, cal, wedge),
        "missing_calibration": (image, np.zeros_like(cal), wedge),
        "flat_not_above_dark": (image, swapped, wedge),
        "unknown_wedge": (image, cal, np.zeros_like(wedge)),
        "wedge_in_cm": (image, cal, wedge * 1000.0),
    }
    return {
        k: {"image": i, "calibration": c.astype(np.float32), "wedge_mm": w.astype(np.float32)}
        for k, (i, c, w) in made.items()
    }


def _batch(cases) -> dict[str, np.ndarray]:
    return {n: np.stack([c[n] for c in cases.values()]) for n in contract.INPUT_NAMES}


@pytest.fixture(scope="module")
def bundle(trained_bundle_factory):
    return trained_bundle_factory(0)


@pytest.fixture(scope="module")
def reference(bundle, cases) -> dict[str, np.ndarray]:
    """In-process ONNX Runtime on all the cases in one batch."""
    from alloynet.export import onnx_session

    outs = onnx_session(bundle.path("onnx")).run(list(contract.OUTPUT_NAMES), _batch(cases))
    return dict(zip(contract.OUTPUT_NAMES, outs, strict=True))


@pytest.fixture(scope="module")
def triton(bundle, tmp_path_factory):
    from infra import triton as server
    from serving.triton.repository import build_repository

    ok, reason = server.available()
    if not ok:  # a missing server is a broken set-up, never a skip
        pytest.fail(f"{reason} (infra/serving_env.sh creates it; `make test` runs it first)")
    repo = build_repository(bundle.directory, tmp_path_factory.mktemp("triton-repo"), backend="alloynet_ort")
    work = tmp_path_factory.mktemp("triton")
    try:
        yield server.start(repo, work, models=["alloynet"], timeout=120)
    finally:
        server.stop(work)


@pytest.fixture(scope="module")
def torchserve(bundle, tmp_path_factory):
    from infra import torchserve as server
    from serving.torchserve.archive import build_mar

    store = tmp_path_factory.mktemp("model-store")
    build_mar(bundle.directory, store, batch_size=4, max_batch_delay_ms=5)
    work = tmp_path_factory.mktemp("torchserve")
    try:
        yield server.start(store, ["alloynet.mar"], work, management=True, timeout=180)
    finally:
        server.stop(work)


def _statuses(outputs) -> list[str]:
    return [contract.STATUS_NAMES[contract.status_code(s)] for s in outputs["status"]]


def test_in_process_status_is_the_contracts_and_each_item_answers_alone(bundle, cases, reference):
    from alloynet.export import onnx_session

    assert _statuses(reference) == list(EXPECTED.values())
    sess = onnx_session(bundle.path("onnx"))
    for i, case in enumerate(cases.values()):  # alone or in a batch with bad captures: the same answer
        got = sess.run(list(contract.OUTPUT_NAMES), {n: case[n][None] for n in contract.INPUT_NAMES})
        alone = dict(zip(contract.OUTPUT_NAMES, got, strict=True))
        np.testing.assert_allclose(alone["probabilities"][0], reference["probabilities"][i], atol=1e-4)
        assert alone["status"][0] == reference["status"][i]
    names = list(EXPECTED)
    for i in range(len(names)):
        probs = reference["probabilities"][i]
        assert np.all(np.isfinite(probs)) and probs.sum() == pytest.approx(1.0, abs=1e-5)
        groups = [probs[[g == grp for g in bundle.meta.class_groups]].sum() for grp in contract.GROUP_NAMES]
        np.testing.assert_allclose(reference["group_probabilities"][i], groups, atol=1e-5)  # groups = sums
        if contract.is_refused(contract.status_code(reference["status"][i])):
            np.testing.assert_allclose(probs, 1.0 / len(probs), atol=1e-6)
            assert reference["prediction_set"][i].all()
    for name in ("missing_calibration", "unknown_wedge"):  # answered, and honestly: never a confident guess
        i = names.index(name)
        assert reference["flags"][i][contract.FLAG_NAMES.index("calibration_missing")] == 1.0
        assert reference["probabilities"][i].max() < 0.999


def test_triton_gives_the_same_status_and_answer_in_one_batch(triton, cases, reference):
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(triton.grpc_target)
    batch = _batch(cases)
    inputs = []
    for name in contract.INPUT_NAMES:
        tensor = grpcclient.InferInput(name, list(batch[name].shape), "FP32")
        tensor.set_data_from_numpy(batch[name])
        inputs.append(tensor)
    result = client.infer("alloynet", inputs)
    for name in contract.OUTPUT_NAMES:
        want = reference[name]
        got = result.as_numpy(name).reshape(want.shape)  # per-item scalars come back as [B, 1]
        if name == "status":
            np.testing.assert_array_equal(got, want)
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4, equal_nan=True, err_msg=name)
    # the model describes itself
    params = {k: v.string_value for k, v in client.get_model_config("alloynet").config.parameters.items()}
    assert params["flag_names"].split(",") == list(contract.FLAG_NAMES)
    assert params["contract_version"] == str(contract.VERSION)


def _npy(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a)
    return buf.getvalue()


def test_torchserve_gives_the_same_status_and_answer(torchserve, bundle, cases, reference):
    import grpc

    from serving.torchserve.grpc_api import modules

    pb, services = modules()
    metadata = [("authorization", f"Bearer {torchserve.inference_key}")]
    with grpc.insecure_channel(torchserve.grpc_target) as channel:
        stub = services.InferenceAPIsServiceStub(channel)
        for i, (name, case) in enumerate(cases.items()):
            req = pb.PredictionsRequest(
                model_name="alloynet",
                input={
                    "data": _npy(case["image"]),
                    "calibration": json.dumps(case["calibration"].tolist()).encode(),
                    "wedge_mm": json.dumps(float(case["wedge_mm"][0])).encode(),
                },
            )
            body = json.loads(stub.Predictions(req, metadata=metadata, timeout=30).prediction)
            status = EXPECTED[name]
            code = contract.STATUS_CODES[status]
            if contract.is_refused(code):
                field, message = contract.status_message(code, float(reference["status_value"][i]), bundle.meta.max_adu)
                assert body["error"]["status"] == status and body["error"]["field"] == field, name
                assert body["error"]["message"] == message, name
                continue
            assert body["status"] == status, name
            got = [body["probabilities"][c] for c in bundle.meta.class_names]
            np.testing.assert_allclose(got, reference["probabilities"][i], atol=1e-4, err_msg=name)
            want_set = [
                c for c, m in zip(bundle.meta.class_names, reference["prediction_set"][i], strict=True) if m > 0.5
            ]
            assert body["prediction_set"] == want_set, name


def test_the_readmes_tritonclient_example_reads_named_answers(triton, bundle, cases, reference):
    text = README.read_text()
    code = re.search(r"<!-- tritonclient-example -->\s*```python\n(.*?)```", text, re.S).group(1)
    assert len([line for line in code.splitlines() if line.strip()]) <= 20
    scope: dict = {}
    exec(compile(code, str(README), "exec"), scope)
    for i, (name, case) in enumerate(cases.items()):
        answer = scope["read_answer"](
            triton.grpc_target, case["image"], case["calibration"], float(case["wedge_mm"][0])
        )
        assert answer["status"] == EXPECTED[name]
        if "probabilities" in answer:
            got = [answer["probabilities"][c] for c in bundle.meta.class_names]
            np.testing.assert_allclose(got, reference["probabilities"][i], atol=1e-4)
            assert list(answer["group_probabilities"]) == list(contract.GROUP_NAMES)
            assert list(answer["flags"]) == list(contract.FLAG_NAMES)
            want_set = reference["prediction_set"][i].tolist()
            assert [answer["prediction_set"][c] for c in bundle.meta.class_names] == want_set


def test_torchserve_describes_the_model_with_the_contracts_names(torchserve, bundle):
    import urllib.request

    req = urllib.request.Request(
        f"http://127.0.0.1:{torchserve.management_port}/models/alloynet?customized=true",
        headers={"Authorization": f"Bearer {torchserve.keys()['management']}"},
    )
    with urllib.request.urlopen(req, timeout=30) as r:
        described = json.loads(r.read())[0]["customizedMetadata"]
    described = json.loads(described) if isinstance(described, str) else described
    assert described == contract.description(
        bundle.meta.class_names, bundle.meta.class_groups, bundle.meta.coverage, bundle.meta.max_adu
    )
