"""The Triton client reads each item's status from the graph's answer: a refused item becomes that capture's
InvalidCaptureError, worded by alloynet.contract's table, and the rest of the batch is answered."""

from __future__ import annotations

import numpy as np
import pytest

from alloynet import contract

NAMES = ["Al1050", "Al2017", "Al5083", "Al6082", "Al7075"]


def _outputs(statuses: list[tuple[str, float]]) -> dict[str, np.ndarray]:
    n = len(statuses)
    out = {
        name: np.full([n, *contract.output_dims(name, len(NAMES))], 0.2, np.float32) for name in contract.OUTPUT_NAMES
    }
    out["status"] = np.array([contract.STATUS_CODES[s] for s, _ in statuses], np.float32)
    out["status_value"] = np.array([v for _, v in statuses], np.float32)
    return out


@pytest.fixture
def client(monkeypatch):
    from serving.client.triton import TritonClient, _TritonModel

    c = TritonClient("127.0.0.1:9", retry_budget_s=0)
    c._info = _TritonModel(version="3", class_names=NAMES, dims=[1, 8, 8], max_batch_size=8, max_adu=4095.0)
    yield c
    c.close()


def test_a_refused_item_is_its_captures_error_and_the_others_are_answered(client, monkeypatch):
    from serving.client import InvalidCaptureError, Prediction

    sent = []
    statuses = [("ok", 0.0), ("image_out_of_range", 5000.0), ("calibration_missing", 0.0)]
    monkeypatch.setattr(
        client, "infer_array", lambda images, cal, wedge: sent.append(len(images)) or _outputs(statuses)
    )
    images = [np.full((1, 8, 8), 1000, np.uint16)] * 3
    out = client.predict_batch(images, errors="return")
    assert sent == [3]  # one request: the refusal did not cost the others a resend
    assert [type(o) for o in out] == [Prediction, InvalidCaptureError, Prediction]
    assert out[1].code == "INVALID_ARGUMENT" and out[1].capture == "capture 1 (array [1, 8, 8] uint16)"
    assert out[1].message == "image: pixel value 5000 ADU lies outside the detector range [0, 4095] ADU"
    assert out[0].status == "ok" and out[2].status == "calibration_missing" and out[2].status_message
    with pytest.raises(InvalidCaptureError) as exc:
        client.predict_batch(images)
    assert exc.value.results[0].alloy in NAMES and exc.value.results[1] is exc.value


def test_flat_not_above_dark_is_refused_naming_the_capture_and_the_values(client, monkeypatch):
    from serving.client import InvalidCaptureError

    monkeypatch.setattr(client, "infer_array", lambda images, cal, wedge: _outputs([("flat_not_above_dark", -150.0)]))
    with pytest.raises(InvalidCaptureError) as exc:
        client.predict_batch([np.full((1, 8, 8), 1000, np.uint16)], calibrations=[np.array([[900.0, 750.0]])])
    assert exc.value.code == "INVALID_ARGUMENT" and exc.value.capture == "capture 0 (array [1, 8, 8] uint16)"
    assert exc.value.message.startswith("calibration: the flat level must lie above the dark level")
    assert "flat - dark = -150 ADU" in exc.value.message


def test_an_empty_batch_is_refused_as_such_unsent(client, monkeypatch):
    from serving.client import InvalidCaptureError

    monkeypatch.setattr(client, "_infer", lambda request: pytest.fail("an empty batch was sent"))
    with pytest.raises(InvalidCaptureError) as exc:
        client.infer_array(np.zeros((0, 1, 8, 8), np.float32))
    assert exc.value.code == "INVALID_ARGUMENT" and exc.value.message.startswith("empty batch")
    assert client.predict_batch([]) == []
    with pytest.raises(InvalidCaptureError) as exc:  # a batch of none where one capture goes
        client.predict_batch([np.zeros((0, 1, 8, 8), np.uint16)])
    assert exc.value.message == "image.shape: empty batch: expected one capture [C, H, W] = [1, 8, 8], got [0, 1, 8, 8]"
