"""Nightly monitoring: drift test, verification list, lab verdicts as labels, live performance, alarms."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest

from alloynet import contract
from alloynet.captures.image import CaptureError
from alloynet.captures.labels import history
from alloynet.captures.layout import sidecar_key
from alloynet.monitor.alarms import decide
from alloynet.monitor.drift import (
    correct_by_strip,
    drift_test,
    feature_names,
    profile_features,
    rate_jump,
    strip_offset,
)
from alloynet.monitor.performance import Verified, live_performance, wilson
from alloynet.monitor.verify import import_verdicts, propose, read_verdicts

NIGHT = datetime(2026, 12, 1, 0, 0, tzinfo=timezone.utc)


def test_profile_features_are_binned_attenuation_along_the_wedge():
    img = np.full((1, 8, 16), 1100.0)
    img[..., 8:] = 600.0  # thicker half: less transmitted
    f = profile_features(img.astype(np.uint16), [100.0], [1100.0], bins=2)
    assert f == pytest.approx([0.0, -np.log(0.5)])  # level, then the slope to the next bin
    img[:, :2] = 550.0  # an open-beam strip of 2 rows whose beam has halved since the flat
    g = profile_features(img.astype(np.uint16), [100.0], [1100.0], bins=2, open_beam_rows=2)
    assert len(g) == len(feature_names(1, 2, 2)) == 4
    assert g[2:] == pytest.approx([-np.log(0.45)] * 2)
    with pytest.raises(ValueError, match="calibration"):
        profile_features(img, [100.0, 1.0], [1100.0], bins=2)


def test_drift_test_holds_its_false_alarm_rate_and_finds_a_level_shift():
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(400, 8))
    alarms = sum(drift_test(ref, rng.normal(size=(40, 8)), alpha=0.05).detected for _ in range(200))
    assert alarms <= 20  # at most alpha = 0.05 of 200 nights, with room for chance (binomial sd ~3)
    names = feature_names(1, 4, open_beam_rows=2)  # level, 3 slopes, 4 open-beam bins
    moved = drift_test(ref, rng.normal(size=(40, 8)) + np.r_[1.0, 0, 0, 0, [1.0] * 4], names=names)
    assert moved.detected and moved.pattern == "level" and len(moved.drifted) >= 4
    shaped = drift_test(ref, rng.normal(size=(40, 8)) + np.r_[0, 1.5, -1.5, 0, 1.5, -1.5, 1.5, -1.5], names=names)
    assert shaped.detected and shaped.pattern == "shape"
    no_strip = feature_names(2, 4)
    level_only = drift_test(ref, rng.normal(size=(40, 8)) + np.r_[1.5, 0, 0, 0, 0, 0, 0, 0], names=no_strip)
    assert level_only.pattern == "level"
    assert drift_test(ref, ref[:3]).pattern == "too-few"


def test_the_open_beam_strip_undoes_a_tube_or_gain_map_change():
    """A gain map (or a tube output change) multiplies the signal above dark in every row alike, so the strip's
    shift per bin is the plate rows' shift: the corrected features are those before the change."""
    rng = np.random.default_rng(5)
    dark, flat = [100.0], [50000.0]
    imgs = [100 + 40000 * np.exp(-rng.uniform(0.2, 2.0, size=(1, 24, 32)) * np.linspace(0.2, 1, 32)) for _ in range(30)]
    for im in imgs:
        im[:, :4] = 100 + 49000 * rng.uniform(0.98, 1.0, size=(1, 4, 32))  # the open-beam strip
    gain = 1 + 0.04 * np.sin(np.linspace(0, 3 * np.pi, 32))
    before = np.stack([profile_features(im, dark, flat, 8, 4) for im in imgs])
    for g in (gain, np.full(32, 0.95)):
        after = np.stack([profile_features(100 + (im - 100) * g, dark, flat, 8, 4) for im in imgs])
        assert np.abs(after - before).max() > 0.03  # the change moves the features
        off = strip_offset(before, after, 1, 8)
        assert correct_by_strip(after, off, 1, 8) == pytest.approx(before, abs=1e-9)
        assert correct_by_strip(after[0], off, 1, 8) == pytest.approx(before[0], abs=1e-9)
    with pytest.raises(ValueError, match="open-beam strip"):
        strip_offset(before[:, :8], before[:, :8], 1, 8)


def test_rate_jump_needs_a_real_increase():
    assert rate_jump(12, 40, 5, 300)[0]
    assert not rate_jump(2, 40, 10, 300)[0]


def _cand(i, conf=0.95, set_=("Al1050",), flags=(), drift=0.0):
    return {
        "capture_id": f"c{i:03d}",
        "alloy": set_[0],
        "confidence": conf,
        "prediction_set": list(set_),
        "flags": list(flags),
        "drift_score": drift,
        "image_sha256": "",
        "plate_id": f"p{i}",
    }


def test_verification_list_is_half_random_half_informative_and_seeded():
    cands = [_cand(i) for i in range(50)]
    cands[7] = _cand(7, conf=0.5, set_=("Al5083", "Al6082"))
    cands[9] = _cand(9, flags=("thickness_out_of_range",), drift=6.0)
    rows = propose(cands, budget=6, seed=1, day=NIGHT.date())
    assert len(rows) == 6 and [r["pick"] for r in rows].count("random") == 3
    informative = [r["capture_id"] for r in rows if r["pick"] == "informative"]
    assert {"c007", "c009"} <= set(informative) or {"c007", "c009"} <= {r["capture_id"] for r in rows}
    assert rows == propose(cands, budget=6, seed=1, day=NIGHT.date())
    assert rows != propose(cands, budget=6, seed=2, day=NIGHT.date())
    assert len({r["capture_id"] for r in rows}) == 6


def test_a_suspected_alloy_gets_random_plates_of_its_calls_within_the_budget():
    """The second stage: focus picks are the line's calls of the suspected alloy, drawn at random among them,
    out of the same budget (informative places first); without a focus the list is unchanged."""
    cands = [_cand(i, set_=(("Al6082",) if i % 5 == 0 else ("Al5083",))) for i in range(60)]
    cands[7] = _cand(7, conf=0.5, set_=("Al5083", "Al6082"))
    plain = propose(cands, budget=10, seed=1, day=NIGHT.date())
    rows = propose(cands, budget=10, seed=1, day=NIGHT.date(), focus={"Al6082": 4})
    assert len(rows) == 10 and len({r["capture_id"] for r in rows}) == 10
    kinds = [r["pick"] for r in rows]
    assert kinds.count("random") == 5 and kinds.count("focus") == 4 and kinds.count("informative") == 1
    assert [r for r in rows if r["pick"] == "random"] == [r for r in plain if r["pick"] == "random"]
    focus = [r for r in rows if r["pick"] == "focus"]
    assert all(r["predicted"] == "Al6082" and "Al6082 suspected" in r["why"] for r in focus)
    # drawn at random among the calls: over nights every call of the alloy is drawn, not the same few
    drawn = {
        r["capture_id"]
        for d in range(40)
        for r in propose(cands, 10, 0.5, 1, (NIGHT + timedelta(days=d)).date(), {"Al6082": 4})
        if r["pick"] == "focus"
    }
    assert drawn == {c["capture_id"] for c in cands if c["alloy"] == "Al6082"}
    # all random (random verification): the focus takes random places, the budget holds
    rows = propose(cands, budget=10, random_share=1.0, seed=1, day=NIGHT.date(), focus={"Al6082": 5})
    assert [r["pick"] for r in rows].count("focus") == 5 and len(rows) == 10
    assert len(propose(cands, budget=3, seed=1, day=NIGHT.date(), focus={"Al6082": 9})) == 3
    with pytest.raises(ValueError, match="focus"):
        propose(cands, budget=3, focus={"Al6082": -1})


def test_live_performance_intervals_and_coverage_alarm():
    lo, hi = wilson(8, 10)
    assert (round(lo, 3), round(hi, 3)) == (0.49, 0.943)  # the textbook Wilson interval
    v = [
        Verified(
            f"c{i}", "Al7075", "Al7075" if i < 6 else "Al2017", ["Al7075"] if i < 6 else ["Al2017"], "heavy", "heavy"
        )
        for i in range(10)
    ]
    v += [Verified(f"d{i}", "Al1050", "Al1050", ["Al1050"], "light", "light") for i in range(10)]
    live = live_performance(v, coverage_target=0.95, seed=0)
    assert live.accuracy == pytest.approx(0.8) and live.balanced_accuracy == pytest.approx(0.8)
    assert live.balanced_accuracy_interval[0] < 0.8 < live.balanced_accuracy_interval[1]
    assert live.coverage_below_target  # 16/20 covered: 99 % Wilson upper bound 0.94 < 0.95
    assert not live_performance(v[:19], coverage_target=0.95).coverage_below_target  # too few to alarm
    alarms = decide(None, live, {}, budget=10)
    assert [a.kind for a in alarms] == ["coverage"] and "verify 10 plates" in alarms[0].action


def test_only_alarms_new_labels_can_fix_ask_for_a_retrain():
    """The Prefect automation retrains on ``retrain`` alarms: not on levels taken at another beam."""
    rng = np.random.default_rng(0)
    ref, names = rng.normal(size=(400, 8)), feature_names(1, 4, open_beam_rows=2)
    level = drift_test(ref, rng.normal(size=(40, 8)) + np.r_[1.0, 0, 0, 0, [1.0] * 4], names=names)
    shape = drift_test(ref, rng.normal(size=(40, 8)) + np.r_[0, 1.5, -1.5, 0, 1.5, -1.5, 1.5, -1.5], names=names)
    assert [a.retrain for a in decide(level, None, {})] == [False]
    assert [a.retrain for a in decide(shape, None, {})] == [True]
    flags = decide(None, None, {"calibration_out_of_tolerance": 1e-6, "profile_unlike_training": 1e-6})
    assert {a.seen.split()[4]: a.retrain for a in flags} == {
        "calibration_out_of_tolerance": False,
        "profile_unlike_training": True,
    }
    assert decide(None, None, {}, thickness_outside=0.5)[0].retrain


def _unlabel(store, cid, when):
    raw = json.loads(store.get(sidecar_key(cid)))
    raw["truth"], raw["acquired_at"] = None, when.isoformat()
    store.put(sidecar_key(cid), json.dumps(raw).encode(), overwrite=True)


def _fake_runner(class_names):
    k, f = len(class_names), len(contract.FLAG_NAMES)

    def run(inputs):
        b = inputs[contract.INPUT_NAME].shape[0]
        probs = np.full((b, k), 0.1 / (k - 1), np.float32)
        probs[:, 0] = 0.9
        pset = np.zeros((b, k), np.float32)
        pset[:, 0] = 1
        return {
            "probabilities": probs,
            "thickness_mm": np.full(b, 4.0, np.float32),
            "absorption": np.ones((b, 2), np.float32),
            "prediction_set": pset,
            "group_probabilities": np.tile(np.float32([0.1, 0.9]), (b, 1)),
            "flags": np.zeros((b, f), np.float32),
            "status": np.zeros(b, np.float32),
            "status_value": np.zeros(b, np.float32),
        }

    return run


def test_a_night_scores_unanswered_captures_proposes_and_imports_verdicts(tmp_path):
    from alloynet.monitor.nightly import NightOptions, report_history, run_night
    from alloynet.monitor.record import read_records
    from tests.helpers.dummy import DummyCaptureStore

    with DummyCaptureStore(n_max=6, size=32, imbalance_ratio=1, seed=2, root=tmp_path / "data") as (store, man):
        ids = sorted(man["capture_id"])
        for cid in ids:
            raw = json.loads(store.get(sidecar_key(cid)))
            raw["acquired_at"] = (NIGHT - timedelta(days=30)).isoformat()
            store.put(sidecar_key(cid), json.dumps(raw).encode(), overwrite=True)
        line = ids[::3]
        for i, cid in enumerate(line):
            _unlabel(store, cid, NIGHT + timedelta(hours=1, minutes=i))
        names = ["Al1050", "Al2017", "Al5083", "Al6082", "Al7075"]
        meta = {"class_names": names, "class_groups": ["light", "heavy", "light", "light", "heavy"], "coverage": 0.9}
        night = run_night(
            store,
            store,
            NIGHT,
            NIGHT + timedelta(days=1),
            lambda: (_fake_runner(names), meta, "v0001", {}),
            NightOptions(budget=4, seed=0),
        )
        assert night.report["captures"] == len(line) and night.scored == len(line)
        assert night.report["per_alloy"] == {"Al1050": len(line)}
        assert night.drift is not None and not night.drift.detected
        recs = read_records(store, NIGHT, NIGHT + timedelta(days=2)).records
        assert {r["capture_id"] for r in recs} == set(line) and {r["source"] for r in recs} == {"nightly"}
        assert store.exists("line/reports/2026-12-01.md") and store.exists("line/verify/2026-12-01.csv")
        assert len(night.verify) == 4

        csv_path = tmp_path / "results.csv"
        lines = ["capture_id,alloy,nominal_thickness_mm,who,method,verified_at"]
        lines += [f"{r['capture_id']},Al1050,4.0,lab-anna,XRF,2026-12-02" for r in night.verify]
        csv_path.write_text("\n".join(lines) + "\n")
        verdicts, open_ = read_verdicts(csv_path)
        res = import_verdicts(store, verdicts)
        assert len(res.applied) == 4 and not open_
        rev = history(store, night.verify[0]["capture_id"])[-1]
        assert rev["who"] == "lab-anna" and "XRF" in rev["why"] and rev["changes"]["alloy"] == [None, "Al1050"]
        again = run_night(
            store,
            store,
            NIGHT,
            NIGHT + timedelta(days=1),
            lambda: (_fake_runner(names), meta, "v0001", {"balanced_accuracy": 0.9}),
            NightOptions(budget=4, seed=0),
        )
        assert again.scored == 0  # answered last night: kept, not scored twice
        assert again.live is not None and again.live.n == 2 and again.live.accuracy == 1.0
        assert again.live.test_figures == {"balanced_accuracy": 0.9}
        assert "| balanced accuracy | 1.000" in store.get("line/reports/2026-12-01.md").decode()
        hist = report_history(store)
        assert len(hist) == 1 and hist[0]["week"] == "2026-W49"
        assert hist[0]["live balanced accuracy"].startswith("1.000")


def test_a_verdict_without_who_or_method_names_row_and_column(tmp_path):
    p = tmp_path / "r.csv"
    p.write_text("capture_id,alloy,who,method\nc1,Al1050,,XRF\n")
    with pytest.raises(CaptureError) as e:
        read_verdicts(p)
    assert "r.csv:2" in str(e.value) and "who" in str(e.value)
    p.write_text("capture_id,alloy\nc1,Al1050\n")
    with pytest.raises(CaptureError, match="missing column"):
        read_verdicts(p)
