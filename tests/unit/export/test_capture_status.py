"""The capture checks inside the exported graph: each bad value gets the contract's status and value, the
first check in the table's order wins, and a refused item leaves the rest of its batch untouched."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from alloynet import contract
from alloynet.data.transforms import Preprocess
from alloynet.export.graph import ServingGraph, capture_status
from alloynet.models.heads import AlloyNet

SIZE = 16
MAX_ADU = torch.tensor(65535.0)


def _good(batch: int = 1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    image = torch.rand((batch, 1, SIZE, SIZE), generator=g) * 40000.0 + 2000.0
    return image, torch.tensor([1000.0, 50000.0]).repeat(batch, 1, 1), torch.full((batch, 1), 50.0)


def _status(image, cal, wedge) -> tuple[str, float]:
    code, value = capture_status(image, cal, wedge, MAX_ADU)
    return contract.STATUS_NAMES[int(code[0])], float(value[0])


def test_a_good_capture_is_ok():
    assert _status(*_good()) == ("ok", 0.0)


@pytest.mark.parametrize(
    "change, status, value",
    [
        (lambda i, c, w: i.__setitem__((0, 0, 1, 1), float("nan")), "image_not_finite", 1.0),
        (lambda i, c, w: i.__setitem__((0, 0, 2, 2), float("inf")), "image_not_finite", 1.0),
        (lambda i, c, w: i.__setitem__((0, 0, 1, 1), 70000.0), "image_out_of_range", 70000.0),
        (lambda i, c, w: i.__setitem__((0, 0, 1, 1), -5.0), "image_out_of_range", -5.0),
        (lambda i, c, w: c.__setitem__((0, 0, 1), float("nan")), "calibration_not_finite", 1.0),
        (lambda i, c, w: c.__setitem__((0, 0, 1), 90000.0), "calibration_out_of_range", 90000.0),
        (lambda i, c, w: c.__setitem__((0, 0, 1), 900.0), "flat_not_above_dark", -100.0),
        (lambda i, c, w: c.zero_(), "calibration_missing", 0.0),
        (lambda i, c, w: w.zero_(), "wedge_missing", 0.0),
        (lambda i, c, w: w.fill_(5000.0), "wedge_out_of_range", 5000.0),
        (lambda i, c, w: w.fill_(-1.0), "wedge_out_of_range", -1.0),
    ],
)
def test_each_bad_value_gets_its_status_and_value(change, status, value):
    image, cal, wedge = _good()
    change(image, cal, wedge)
    assert _status(image, cal, wedge) == (status, pytest.approx(value))


def test_the_first_check_of_the_table_decides():
    image, cal, wedge = _good()
    image[0, 0, 0, 0] = float("nan")
    cal.zero_()
    wedge.fill_(5000.0)
    assert _status(image, cal, wedge)[0] == "image_not_finite"
    image, cal, wedge = _good()
    cal.zero_()
    wedge.zero_()
    assert _status(image, cal, wedge)[0] == "calibration_missing"  # both missing: the calibration is named


def test_the_table_is_ordered_as_the_graph_checks():
    codes = [code for code, *_ in contract.STATUSES]
    assert codes == sorted(codes) and len(set(codes)) == len(codes)
    assert all(refused == (code >= contract.REFUSED_FROM) for code, _n, _f, refused, _t in contract.STATUSES)
    for code, *_ in contract.STATUSES:  # every template formats
        assert contract.status_message(code, 1.5)[1]
    with pytest.raises(ValueError, match="not a code"):
        contract.status_message(99)


def _model() -> AlloyNet:
    torch.manual_seed(0)
    trunk = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten())
    return AlloyNet(trunk, 16, 5, Preprocess([1000.0], [50000.0], mean=2.0, std=1.5), groups=[0, 0, 1, 1, 1]).eval()


def test_a_refused_item_is_answered_uniformly_and_leaves_its_batch_alone():
    graph = ServingGraph(_model())
    image, cal, wedge = _good(3)
    with torch.no_grad():
        clean = graph(image, cal, wedge)
        bad = image.clone()
        bad[1, 0, 4, 4] = float("nan")
        mixed = graph(bad, cal, wedge)
    out = dict(zip(contract.OUTPUT_NAMES, mixed, strict=True))
    assert out["status"].tolist() == [0.0, 16.0, 0.0]
    for name, a, b in zip(contract.OUTPUT_NAMES, clean, mixed, strict=True):
        assert torch.isfinite(b).all(), name
        torch.testing.assert_close(a[[0, 2]], b[[0, 2]], msg=name)
    torch.testing.assert_close(out["probabilities"][1], torch.full((5,), 0.2))
    assert out["prediction_set"][1].tolist() == [1.0] * 5
    torch.testing.assert_close(out["group_probabilities"][1], torch.tensor([0.4, 0.6]))


def test_the_graph_status_survives_onnx_export(tmp_path):
    from alloynet.export import ExportMeta, export_onnx, onnx_session

    meta = ExportMeta(class_names=["a", "b", "c", "d", "e"], channels=1, height=SIZE, width=SIZE, max_adu=4095.0)
    path = export_onnx(_model(), meta, tmp_path / "m.onnx")
    image, cal, wedge = _good(2)
    image = image / 16.0
    image[1, 0, 0, 0] = 5000.0  # within 16 bits, above this detector's 12
    outs = onnx_session(path).run(
        ["status", "status_value"], {"image": image.numpy(), "calibration": cal.numpy(), "wedge_mm": wedge.numpy()}
    )
    assert outs[0].tolist() == [
        contract.STATUS_CODES["calibration_out_of_range"],
        contract.STATUS_CODES["image_out_of_range"],
    ]  # flat 50000 > 4095 too
    assert outs[1][1] == 5000.0
    assert np.isfinite(outs[1]).all()
