"""The composition test: verified plates of one alloy against the training plates of the same alloy."""

from __future__ import annotations

import numpy as np
import pytest

from alloynet.monitor.alarms import decide
from alloynet.monitor.composition import (
    composition_over_windows,
    composition_test,
    confirm,
    fit_reference,
    fit_reference_called,
    focus_plan,
    plate_profile,
    suspects,
)
from alloynet.monitor.drift import profile_features

ALLOYS = ("Al1050", "Al5083", "Al6082")
THICK = (2.0, 3.0, 4.0, 6.0)


def _plates(rng, n, shift=None):
    """Features that depend on the alloy and log thickness, with correlated noise; ``shift``: alloy -> a mean
    change of its features (in noise sd)."""
    a = rng.choice(ALLOYS, size=n)
    t = rng.choice(THICK, size=n)
    base = {k: np.array([1.0, 0.2, -0.1, 0.05]) * (i + 1) for i, k in enumerate(ALLOYS)}
    mix = np.array([[1.0, 0.3, 0.0, 0.0], [0.0, 1.0, 0.3, 0.0], [0.0, 0.0, 1.0, 0.3], [0.0, 0.0, 0.0, 1.0]])
    x = np.stack([base[k] * np.log(tt) + base[k] for k, tt in zip(a, t)]) + rng.normal(size=(n, 4)) @ mix * 0.05
    for k, s in (shift or {}).items():
        x[a == k] += np.asarray(s) * 0.05
    return x, list(a), t


def test_no_shift_holds_the_false_alarm_rate_and_a_shift_is_found():
    rng = np.random.default_rng(0)
    ref = fit_reference(*_plates(rng, 300))
    assert sorted(ref) == list(ALLOYS) and all(r.n > 60 for r in ref.values())
    alarms = sum(composition_test(ref, *_plates(rng, 30), alpha=0.05).detected for _ in range(300))
    assert alarms <= 30  # alpha = 0.05 of 300 nights is 15; binomial sd ~4
    moved = composition_test(ref, *_plates(rng, 30, {"Al6082": [2.0, 0, 0, 0]}), alpha=0.01)
    assert moved.shifted == ["Al6082"] and moved.p_values["Al6082"] < 1e-4
    assert moved.p_values["Al1050"] > 1e-3 and moved.tested["Al6082"] >= 3
    few = composition_test(ref, *_plates(rng, 4))
    assert all(n >= 3 for n in few.tested.values())  # an alloy with fewer plates is not tested


def test_windows_find_a_recent_shift_the_week_would_dilute():
    rng = np.random.default_rng(1)
    ref = fit_reference(*_plates(rng, 300))
    x0, a0, t0 = _plates(rng, 60)  # six quiet nights
    x1, a1, t1 = _plates(rng, 10, {"Al5083": [3.0, 0, 0, 0]})  # tonight
    x, a, t = np.r_[x0, x1], a0 + a1, np.r_[t0, t1]
    nights = np.r_[np.repeat(np.arange(1, 7), 10), [7] * 10]
    res = composition_over_windows(ref, nights, x, a, t, tonight=7, alpha=0.01)
    assert res.shifted == ["Al5083"] and res.tested["Al5083"] == a1.count("Al5083")
    assert res.window == 1 and res.alpha == 0.01  # tonight alone stands out; the night's level is reported
    quiet = composition_over_windows(ref, nights[:60], x0, a0, t0, tonight=6, alpha=0.01)
    assert not quiet.detected


def test_plate_profile_is_the_profile_at_fewer_bins():
    rng = np.random.default_rng(2)
    img = (1000 + 3000 * rng.random((1, 12, 32))).astype(np.uint16)
    eight = profile_features(img, [100.0], [5000.0], bins=8, open_beam_rows=2)
    four = profile_features(img, [100.0], [5000.0], bins=4, open_beam_rows=2)
    assert plate_profile(eight, 1, 8, 4)[0] == pytest.approx(four[:4])
    with pytest.raises(ValueError, match="must divide"):
        plate_profile(eight, 1, 8, 3)


def test_a_composition_shift_alarms_with_its_cause_and_action():
    rng = np.random.default_rng(3)
    ref = fit_reference(*_plates(rng, 300))
    res = composition_test(ref, *_plates(rng, 40, {"Al6082": [3.0, 0, 0, 0]}))
    (alarm,) = decide(None, None, {}, composition=res, budget=10)
    assert alarm.kind == "composition" and alarm.retrain
    assert "the verified plates of Al6082" in alarm.seen and "of the same alloy" in alarm.seen
    assert alarm.cause == "a supplier's composition moved within the standard"
    assert "verify 10 more plates of Al6082" in alarm.action and "retrain" in alarm.action
    assert decide(None, None, {}, composition=composition_test(ref, *_plates(rng, 40))) == []


def test_a_suspicion_plans_the_second_stage_and_the_called_reference_keeps_its_level():
    rng = np.random.default_rng(4)
    x, a, t = _plates(rng, 300)
    ref = fit_reference(x, a, t)
    # suspicion: a p-value below the loose level (Bonferroni over the alloys tested), most suspicious first
    few = composition_test(ref, *_plates(rng, 20, {"Al6082": [1.5, 0, 0, 0]}))
    assert "Al6082" in suspects(few) and few.p_values["Al6082"] * len(few.p_values) < 0.05
    assert focus_plan(["Al6082"], 10) == {"Al6082": 5}
    assert focus_plan(["Al6082", "Al5083", "Al1050"], 10) == {"Al6082": 3, "Al5083": 2}
    assert focus_plan([], 10) == {}
    # the called reference: a "champion" that calls by the first feature's nearest alloy mean keeps only the
    # plates it calls right; plates selected by the same rule hold the test's level, a shift is still found
    centres = {k: np.mean(x[np.asarray(a) == k, 0] - np.log(t[np.asarray(a) == k])) for k in ALLOYS}

    def call(xx, tt):
        d = xx[:, :1] - np.log(tt)[:, None] - np.array([[centres[k] for k in ALLOYS]])
        return [ALLOYS[i] for i in np.argmin(np.abs(d), axis=1)]

    ref_c = fit_reference_called(x, a, t, call(x, t))
    assert sorted(ref_c) == list(ALLOYS)
    alarms = 0
    for _ in range(200):
        xn, an, tn = _plates(rng, 30)
        keep = np.asarray(call(xn, tn)) == np.asarray(an)
        alarms += composition_test(ref_c, xn[keep], list(np.asarray(an)[keep]), tn[keep], alpha=0.05).detected
    assert alarms <= 22  # alpha = 0.05 of 200 nights is 10; binomial sd ~3
    xs, as_, ts = _plates(rng, 30, {"Al6082": [0, 3.0, 0, 0]})
    keep = np.asarray(call(xs, ts)) == np.asarray(as_)
    moved = composition_test(ref_c, xs[keep], list(np.asarray(as_)[keep]), ts[keep])
    assert moved.shifted == ["Al6082"]


def test_the_confirmation_tests_only_the_plates_since_the_suspicion():
    rng = np.random.default_rng(6)
    ref = fit_reference(*_plates(rng, 300))
    x0, a0, t0 = _plates(rng, 40)  # before the suspicion: they decided it, and are left out
    x1, a1, t1 = _plates(rng, 20, {"Al6082": [0, 3.0, 0, 0]})
    nights = np.r_[np.full(40, 3), np.full(20, 4)]
    x, a, t = np.r_[x0, x1], a0 + a1, np.r_[t0, t1]
    res = confirm(ref, nights, x, a, t, since={"Al6082": 4})
    assert res.shifted == ["Al6082"] and res.tested == {"Al6082": a1.count("Al6082")} and res.alpha == 0.05
    both = confirm(ref, nights, x, a, t, since={"Al6082": 4, "Al5083": 4})
    assert set(both.tested) == {"Al6082", "Al5083"} and both.shifted == ["Al6082"]
    assert not confirm(ref, nights, x, a, t, since={"Al6082": 5}).tested  # no plates yet: nothing tested
    quiet = sum(confirm(ref, np.zeros(20), *_plates(rng, 20), since={"Al6082": 0}).detected for _ in range(200))
    assert quiet <= 22  # at 0.05: 10 of 200 expected
