"""The in-image open-beam reference: the simulator images it, sidecars record it, the model reads each capture's
tube output from it, corrects -ln T by it and flags drift within a session; exported graphs do the same."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from alloynet.captures.format import parse_sidecar
from alloynet.captures.layout import sidecar_key
from alloynet.data.rigs import rig_settings
from alloynet.data.transforms import Preprocess
from alloynet.export import ExportMeta, export_model, onnx_session
from alloynet.models import create_model
from alloynet.models.heads import AlloyNet
from alloynet.models.norm import fit_input_statistics
from alloynet.models.open_beam import GUARD_ROWS, OpenBeamReference
from alloynet.physics import ALLOY_NAMES
from alloynet.physics.alloys import sample_plate
from alloynet.physics.simulator import RigConfig, RigSimulator
from tests.helpers.dummy import DummyCaptureStore

SIZE, ROWS = 32, 6
STATS = {"thickness_mm": (3.0, 1.0), "a0": (0.3, 0.1), "mu_eff": (0.8, 0.2)}


def _captures(sim: RigSimulator, gain: float, n: int = 6, seed: int = 0):
    rng = np.random.default_rng(seed)
    images = [
        sim.capture(sample_plate(ALLOY_NAMES[i % 5], 2.0, rng, f"p{i}"), rng, gain_scale=gain).image for i in range(n)
    ]
    level = sim.rig.flat_target_adu  # the session's flat, taken at gain 1: the drift came after it
    cal = torch.tensor([[[sim.rig.dark_offset_adu, level]]]).expand(n, 1, 2).contiguous()
    return torch.tensor(np.stack(images).astype(np.float32)), cal, torch.full((n, 1), 50.0)


def _model(rows: int) -> AlloyNet:
    torch.manual_seed(0)
    rig = RigConfig(height=SIZE, width=SIZE, open_beam_rows=rows)
    m = create_model(
        "profile_mlp", 5, 1, Preprocess([1000.0], [50000.0]), "relu", STATS, 0.0, rig=rig, bins=16, hidden=[32]
    )
    m.open_beam.tolerance.fill_(0.01)
    return m


@pytest.fixture(scope="module")
def sim() -> RigSimulator:
    return RigSimulator(RigConfig(height=SIZE, width=SIZE, open_beam_rows=ROWS))


@pytest.fixture(scope="module")
def fitted(sim) -> AlloyNet:
    model = _model(ROWS)
    batch = _captures(sim, 1.0, n=10, seed=1)
    assert fit_input_statistics(model, lambda: [batch]) == 10
    return model.eval()


def test_simulator_images_the_open_beam_beside_the_plate(sim):
    x, cal, _ = _captures(sim, 1.0, n=2)
    t = (x[:, 0] - 1000.0) / (50000.0 - 1000.0)
    strip, plate = t[:, : ROWS - GUARD_ROWS].mean(), t[:, ROWS + GUARD_ROWS :].mean()
    assert 0.9 < float(strip) < 1.0 and float(plate) < 0.5  # open beam (the heel darkens the top rows a little)
    drifted, _, _ = _captures(sim, 1.03, n=2)
    ratio = (drifted[:, 0, : ROWS - GUARD_ROWS] - 1000.0).mean() / (x[:, 0, : ROWS - GUARD_ROWS] - 1000.0).mean()
    assert float(ratio) == pytest.approx(1.03, abs=0.003)
    # without the strip nothing changes: the default rig's captures are what they were
    plain = RigSimulator(RigConfig(height=SIZE, width=SIZE))
    a = plain.capture(sample_plate("Al1050", 2.0, np.random.default_rng(3), "p"), np.random.default_rng(4)).image
    assert float(((a[0, :2].astype(float) - 1000) / 49000).mean()) < 0.5


def test_sidecar_records_the_strip_and_training_reads_it(tmp_path):
    with DummyCaptureStore(n_max=2, size=SIZE, root=tmp_path / "plain") as (store, manifest):
        pass
    sc = parse_sidecar(store.get(sidecar_key(manifest.capture_id.iloc[0])))
    assert sc.rig.open_beam_rows == 0
    from alloynet.captures.stores import LocalStore
    from alloynet.data.manifest import build_manifest
    from alloynet.data.simulate import DatasetSpec, simulate_dataset

    spec = DatasetSpec(
        n_max=2,
        imbalance_ratio=1,
        seed=0,
        rig=RigConfig(height=SIZE, width=SIZE, open_beam_rows=ROWS),
        capture_drift=0.03,
    )
    st = LocalStore(tmp_path / "strip")
    simulate_dataset(spec, st)
    rows = build_manifest(st, seed=0)
    assert parse_sidecar(st.get(sidecar_key(rows.capture_id.iloc[0]))).rig.open_beam_rows == ROWS
    assert {r.open_beam_rows for r, _ in rig_settings(st, rows).values()} == {ROWS}
    with pytest.raises(ValueError, match="only alloynet's simulator images an open-beam region"):
        DatasetSpec(simulator="second_rig", rig=RigConfig(open_beam_rows=ROWS))
    with pytest.raises(ValueError, match="give at least 3"):
        OpenBeamReference(2)


def test_drift_within_a_session_is_flagged_and_corrected(sim, fitted):
    assert float(fitted.open_beam.expected) == pytest.approx(0.95, abs=0.02)  # the heel's share at the top rows
    with torch.no_grad():
        base = fitted(*_captures(sim, 1.0, seed=7))
        for gain in (0.97, 1.03):
            out = fitted(*_captures(sim, gain, seed=7))
            assert out["flags"][:, 4].tolist() == [1.0] * 6  # drift_in_session
            # corrected: the answer hardly moves, where 3 % of output is 0.03 in -ln T uncorrected
            assert torch.allclose(out["thickness_mm"], base["thickness_mm"], atol=0.05)
            assert (out["probabilities"] - base["probabilities"]).abs().max() < 0.05
        small = fitted(*_captures(sim, 1.004, seed=7))
    assert base["flags"][:, 4].tolist() == [0.0] * 6 and small["flags"][:, 4].tolist() == [0.0] * 6
    # uncorrected, 3 % of output moves every -ln T by ln(1.03), ten times what the answers moved above
    with torch.no_grad():
        a = fitted.preprocess.neg_log(*_captures(sim, 1.0, seed=7)[:2])[0]
        b = fitted.preprocess.neg_log(*_captures(sim, 1.03, seed=7)[:2])[0]
    assert float((a - b)[:, :, ROWS + GUARD_ROWS :].mean()) == pytest.approx(np.log(1.03), abs=0.003)


def test_exported_graph_reads_the_strip_like_the_model(sim, fitted, tmp_path):
    x, cal, w = _captures(sim, 1.03, n=4, seed=9)
    x[-1] = _captures(sim, 1.0, n=1, seed=11)[0][0]
    inputs = {"image": x.numpy(), "calibration": cal.numpy(), "wedge_mm": w.numpy()}
    meta = ExportMeta(class_names=list(ALLOY_NAMES), channels=1, height=SIZE, width=SIZE, arch="profile_mlp")
    bundle = export_model(fitted, meta, tmp_path, inputs, log=lambda *_: None)
    assert bundle.meta.parity["ok"]
    flags = onnx_session(bundle.path("onnx")).run(["flags"], inputs)[0]
    assert flags[:, 4].tolist() == [1.0, 1.0, 1.0, 0.0]


def test_a_checkpoint_from_before_the_strip_still_loads():
    model = _model(0)
    old = {k: v for k, v in model.state_dict().items() if not k.startswith("open_beam.")}
    fresh = _model(0)
    fresh.load_state_dict(old)  # strict: every other key must still match
    assert float(fresh.open_beam.tolerance) == pytest.approx(0.01) and fresh.open_beam.rows == 0
    with pytest.raises(RuntimeError, match="open_beam.expected"):
        _model(ROWS).load_state_dict(old)  # a model with a strip needs its fitted reference
