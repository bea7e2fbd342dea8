"""Nightly scoring with the champion's real exported graph: fetched from a model store, run in-process by ONNX
Runtime, its answers the ones the contract reads from the same outputs."""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.slow


def test_the_champions_graph_scores_stored_captures(trained_bundle_factory, tmp_path):
    from alloynet import contract
    from alloynet.captures.layout import read_capture
    from alloynet.export.onnx_export import onnx_session
    from alloynet.monitor.scoring import LineCapture, champion_graph, score
    from alloynet.registry import open_registry
    from tests.helpers.dummy import DummyCaptureStore

    bundle = trained_bundle_factory(0)
    reg = open_registry(tmp_path / "registry")
    v = reg.publish(bundle.directory, metrics={"balanced_accuracy": 0.5, "accuracy": 0.6, "loss": 1.0})
    reg.promote(v.version, "test")
    runner, meta, version, test = champion_graph(str(tmp_path / "registry"), tmp_path / "champion")
    assert version == v.version and test == {"balanced_accuracy": 0.5, "accuracy": 0.6}
    assert meta["class_names"] == bundle.meta.class_names

    with DummyCaptureStore(n_max=2, size=64, seed=5, imbalance_ratio=1) as (store, man):
        caps = [
            LineCapture(c.sidecar, c.image) for c in (read_capture(store, cid) for cid in sorted(man["capture_id"])[:5])
        ]
        recs = score(caps, runner, meta["class_names"], meta.get("class_groups"), batch=2, model_version=version)
    assert [r["capture_id"] for r in recs] == [c.capture_id for c in caps]
    assert all(r["status"] == "ok" and r["source"] == "nightly" and r["model_version"] == version for r in recs)
    assert all(r["image_sha256"] == c.sidecar.image.sha256 for r, c in zip(recs, caps))
    # the same graph, called directly, says the same
    sess = onnx_session(bundle.path("onnx"))
    c = caps[0]
    cal = np.asarray([list(zip(c.sidecar.calibration.dark_adu, c.sidecar.calibration.flat_adu))], np.float32)
    out = dict(
        zip(
            contract.OUTPUT_NAMES,
            sess.run(
                list(contract.OUTPUT_NAMES),
                {
                    contract.INPUT_NAME: c.image[None].astype(np.float32),
                    contract.CALIBRATION_NAME: cal,
                    contract.WEDGE_NAME: np.float32([[c.sidecar.rig.wedge_mm]]),
                },
            ),
        )
    )
    want = contract.prediction(out, 0, meta["class_names"], meta.get("class_groups"))
    assert recs[0]["alloy"] == want["alloy"] and recs[0]["prediction_set"] == want["prediction_set"]
    # batch 2 against batch 1: float32 sums in another order; 1e-4 is the export parity tolerance
    assert recs[0]["confidence"] == pytest.approx(want["confidence"], abs=1e-4)
