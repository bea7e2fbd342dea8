"""The second stage of the composition test in the real night (``run_night``), over several nights of a small
store: a suspicion puts plates the line called that alloy on the next night's list, they are confirmed on the
plates verified since, and a quiet line is left alone."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest

from alloynet import contract
from alloynet.captures.format import make_sidecar
from alloynet.captures.image import encode_image
from alloynet.captures.layout import write_capture
from alloynet.captures.stores import LocalStore
from alloynet.monitor.drift import profile_features
from alloynet.monitor.nightly import REFERENCE_CALLS, NightOptions, run_night
from alloynet.monitor.verify import Verdict, import_verdicts, saved_list
from alloynet.physics.alloys import STANDARD_ALLOYS, density_for, get_alloy, sample_plate
from alloynet.physics.measure import frame_level
from alloynet.physics.simulator import RigConfig, RigSimulator

# three alloys two energies tell apart well, so most calls are right and each alloy has its called plates
ALLOYS = ("Al2017", "Al6082", "Al7075")
KVP = [40.0, 80.0]
# two gauges: the composition test's thickness regression is linear in log thickness, which holds over a narrow
# range; over 2-6 mm its misfit alone makes the first stage alarm on a quiet line of this tiny rig
THICKNESSES = (4.0, 5.0)
SHIFTED = "Al6082"
STRIP = 4  # open-beam rows
START = datetime(2026, 11, 1, tzinfo=timezone.utc)  # the first night


class Line:
    """One session of a 32x32 rig writing captures into a store; from ``shift_night`` on, the supplier's
    ``SHIFTED`` plates sit at the top of every composition range of the standard (the bench's composition
    change, ``bench/line_month.py``)."""

    def __init__(self, root, seed: int, shift_night: int | None):
        self.sim = RigSimulator(RigConfig(height=32, width=32, kvp=KVP, open_beam_rows=STRIP))
        self.store, self.rng, self.shift_night = LocalStore(root), np.random.default_rng(seed), shift_night
        self.gain = self.sim.session_gain(self.rng)
        dark, flat = self.sim.dark_flat_frames(self.rng, self.gain)
        self.dark, self.flat = frame_level(dark), frame_level(flat)
        self.truth: dict[str, tuple[str, float, float]] = {}  # capture id -> alloy, nominal and true thickness
        self.n = 0

    def write(
        self, alloy: str, t: float, at: datetime, labelled: bool, shifted: bool = False, flat_gain: float = 1.0
    ) -> str:
        plate = sample_plate(alloy, t, self.rng, f"p{self.n:05d}")
        if shifted:
            a = get_alloy(alloy, STANDARD_ALLOYS)
            wt = {**plate.wt_pct, **{el: hi for el, (_lo, hi) in a.ranges_wt_pct.items()}}
            plate = type(plate)(plate.plate_id, alloy, t, plate.thickness_mm, wt, density_for(a, wt))
        img = self.sim.capture(plate, self.rng, self.dark, self.flat, self.gain).image
        data, fmt = encode_image(img)
        cid = f"c{self.n:05d}"
        truth = {"alloy": alloy, "nominal_thickness_mm": t, "thickness_mm": round(plate.thickness_mm, 6)}
        sc = make_sidecar(
            cid,
            img,
            data,
            fmt,
            rig={**self.sim.rig.nominal_settings(), "wedge_mm": 10.0, "dose": self.sim.rig.dose},
            calibration={"session": "s0", "dark_adu": self.dark, "flat_adu": [f * flat_gain for f in self.flat]},
            acquired_at=at,
            truth=truth if labelled else None,
            plate_id=plate.plate_id,
            source="test",
        )
        write_capture(self.store, sc, data)
        self.truth[cid] = (alloy, t, plate.thickness_mm)
        self.n += 1
        return cid

    def training(self, per_alloy: int) -> None:
        for alloy in ALLOYS:
            for k in range(per_alloy):
                self.write(alloy, THICKNESSES[k % len(THICKNESSES)], START - timedelta(days=30), True)

    def night(self, night: int, n: int, flat_gain: float = 1.0) -> None:
        """``flat_gain`` != 1: the flats were taken at another beam (input drift)."""
        shifted = self.shift_night is not None and night >= self.shift_night
        for k in range(n):
            alloy, t = str(self.rng.choice(ALLOYS)), float(self.rng.choice(THICKNESSES))
            at = START + timedelta(days=night, hours=1, minutes=k)
            self.write(alloy, t, at, False, shifted and alloy == SHIFTED, flat_gain)

    def verify(self, night: int) -> None:
        """The lab verifies the night's list: the verdicts come back through ``alloynet label import``'s path."""
        rows = saved_list(self.store, (START + timedelta(days=night)).date()) or []
        verdicts = []
        for r in rows:
            alloy, nominal, t = self.truth[r["capture_id"]]
            verdicts.append(Verdict(r["capture_id"], alloy, "lab", "XRF", "", str(nominal), f"{t:.4f}"))
        import_verdicts(self.store, verdicts)


class Champion:
    """The line's model over real captures: a logistic regression on the 8-bin wedge profile for the alloy and
    a linear fit of log thickness, behind the exported graph's inputs and outputs. Counts what it scores."""

    def __init__(self, line: Line, per_alloy: int):
        from sklearn.linear_model import LinearRegression, LogisticRegression

        rng = np.random.default_rng(1)
        x, y, t = [], [], []
        for alloy in ALLOYS:  # its own training plates, not the store's: a champion trained elsewhere
            for k in range(per_alloy):
                plate = sample_plate(alloy, THICKNESSES[k % len(THICKNESSES)], rng, "fit")
                img = line.sim.capture(plate, rng, line.dark, line.flat, line.gain).image
                x.append(profile_features(img, line.dark, line.flat, 8, STRIP)[: 8 * len(KVP)])
                y.append(alloy), t.append(plate.thickness_mm)
        self.alloy = LogisticRegression(max_iter=5000, C=10.0).fit(x, y)
        self.thick = LinearRegression().fit(x, np.log(t))
        self.names = [str(a) for a in self.alloy.classes_]
        self.scored = 0

    def __call__(self, inputs):
        imgs, cal = inputs[contract.INPUT_NAME], inputs[contract.CALIBRATION_NAME]
        x = np.stack(
            [profile_features(im, list(c[:, 0]), list(c[:, 1]), 8, STRIP)[: 8 * len(KVP)] for im, c in zip(imgs, cal)]
        )
        b = len(x)
        self.scored += b
        probs = self.alloy.predict_proba(x).astype(np.float32)
        return {
            "probabilities": probs,
            "thickness_mm": np.exp(self.thick.predict(x)).astype(np.float32),
            "absorption": np.ones((b, 2), np.float32),
            "prediction_set": (probs >= probs.max(axis=1, keepdims=True)).astype(np.float32),
            "group_probabilities": np.tile(np.float32([0.5, 0.5]), (b, 1)),
            "flags": np.zeros((b, len(contract.FLAG_NAMES)), np.float32),
            "status": np.zeros(b, np.float32),
            "status_value": np.zeros(b, np.float32),
        }

    def graph(self):
        return self, {"class_names": self.names}, "v0001", {}


def _nights(tmp_path, shift_night: int | None, nights: int, seed: int, drift_night: int | None = None):
    """Night after night: the line's captures come in, the night runs, the lab verifies its list."""
    line = Line(tmp_path / "store", seed, shift_night)
    line.training(50)
    champion = Champion(line, 120)
    out = []
    for d in range(nights):
        line.night(d, 30, 1.6 if d == drift_night else 1.0)
        since = START + timedelta(days=d)
        out.append(run_night(line.store, line.store, since, since + timedelta(days=1), champion.graph, OPTIONS))
        line.verify(d)
    return line, champion, out


OPTIONS = NightOptions(budget=10)


def _day(d: int):
    return (START + timedelta(days=d)).date()


def _focused(line: Line, d: int) -> list[str]:
    return [r["predicted"] for r in saved_list(line.store, _day(d)) or [] if r["pick"] == "focus"]


def _called_and_verified(line: Line, days, alloy: str) -> int:
    """Random and focus picks of ``days``' lists that the line called ``alloy`` and the lab found ``alloy``."""
    return sum(
        r["pick"] in ("random", "focus") and r["predicted"] == alloy == line.truth[r["capture_id"]][0]
        for d in days
        for r in saved_list(line.store, _day(d)) or []
    )


def test_a_suspicion_focuses_the_next_list_and_the_plates_since_confirm_it(tmp_path):
    """Seeded so that the second stage alarms before the first stage does (the path this test is about): the
    shifted alloy is suspected on the night of the shift, the next list holds its focus picks, and the
    confirmation tests only the called-and-verified plates from that list on."""
    shift = 2
    line, champion, nights = _nights(tmp_path, shift, 6, seed=2, drift_night=5)
    reports = [n.report for n in nights]
    stage = [r["second_stage"] for r in reports]
    # before the shift: no suspicion of the alloy, no focus picks for it
    assert all(SHIFTED not in s["suspects"] and SHIFTED not in _focused(line, d) for d, s in enumerate(stage[:shift]))
    # (a) the shift's night: suspected from tonight's calls; the next list has random draws of its calls
    assert stage[shift]["suspects"] == [SHIFTED] and stage[shift]["unlabelled_p_values"][SHIFTED] < 1e-3
    assert stage[shift]["focus_next"] == {SHIFTED: 5}
    rows = saved_list(line.store, _day(shift + 1)) or []
    focus = [r for r in rows if r["pick"] == "focus"]
    assert 1 <= len(focus) <= 5 and all(r["predicted"] == SHIFTED and f"{SHIFTED} suspected" in r["why"] for r in focus)
    assert len(rows) == OPTIONS.budget and stage[shift + 1]["focus_tonight"][SHIFTED] == len(focus)
    # (b) since: the first night of the run of lists with its focus picks; the confirmation's plates are the
    # called-and-verified ones of the lists from then on whose verdicts were in (the lists before tonight's)
    first = shift + 1
    for d in range(first, 5):
        assert stage[d]["since"][SHIFTED] == _day(first).isoformat()
    assert stage[first]["confirmation"] is None  # its list's verdicts are not in yet: nothing to test
    for d in (first + 1, first + 2):
        tested = stage[d]["confirmation"]["tested"][SHIFTED]
        assert tested == _called_and_verified(line, range(first, d), SHIFTED)
        assert tested < _called_and_verified(line, range(0, d), SHIFTED)  # the plates before it are left out
    # the confirmation alarms while the first stage does not: tonight's composition alarm is the second stage's
    d = first + 1
    assert stage[d]["alarm"] and not (reports[d]["composition"] or {}).get("detected")
    assert stage[d]["confirmation"]["shifted"] == [SHIFTED] and stage[d]["confirmation"]["p_values"][SHIFTED] < 1e-4
    (alarm,) = [a for a in nights[d].alarms if a.kind == "composition"]
    assert SHIFTED in alarm.seen and f"on {stage[d]['confirmation']['tested'][SHIFTED]} plates" in alarm.seen
    assert "the lab confirmed differ from the training plates the champion calls the same" in alarm.seen
    md = line.store.get(f"line/reports/{_day(d)}.md").decode()
    assert f"{SHIFTED} since {_day(first)}" in md and f"CONFIRMED: {SHIFTED} (tonight's composition" in md
    # input drift: the rig moved, the references no longer tell a supplier's shift; no focus tomorrow
    assert nights[5].drift.detected and stage[5]["suspects"] and stage[5]["focus_next"] == {}
    assert stage[5]["dropped_for_drift"] and "focus picks tomorrow: dropped: input drift" in (
        line.store.get(f"line/reports/{_day(5)}.md").decode()
    )
    # a re-run keeps the night's list, focus picks included
    before = saved_list(line.store, _day(first))
    since = START + timedelta(days=first)
    run_night(line.store, line.store, since, since + timedelta(days=1), champion.graph, OPTIONS)
    assert saved_list(line.store, _day(first)) == before


def test_a_quiet_line_gets_few_focus_picks_no_alarm_and_scores_its_training_plates_once(tmp_path):
    line, champion, nights = _nights(tmp_path, None, 7, seed=0)
    assert not [a.kind for n in nights for a in n.alarms]
    with_focus = [d for d in range(7) if _focused(line, d)]
    assert len(with_focus) <= 2
    assert all(n.report["second_stage"]["alarm"] is False for n in nights)
    # the champion's calls of the training plates: scored on the first night, read back after that
    assert champion.scored == 3 * 50 + 7 * 30
    calls = json.loads(line.store.get(f"{REFERENCE_CALLS}v0001.json"))["calls"]
    assert len(calls) == 3 * 50 and all(c["alloy"] in ALLOYS for c in calls.values())


def test_a_focus_plan_that_is_not_alloy_to_plates_names_the_report(tmp_path):
    from alloynet.captures.stores import LocalStore

    store = LocalStore(tmp_path)
    store.put("line/reports/2026-11-01.json", json.dumps({"second_stage": {"focus_next": {"Al6082": -1}}}).encode())
    with pytest.raises(ValueError, match=r"2026-11-01.json: second_stage.focus_next"):
        run_night(store, store, START + timedelta(days=1), START + timedelta(days=2), lambda: None, OPTIONS)
