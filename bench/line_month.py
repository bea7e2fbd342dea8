"""The line's loop, measured.

    .venv/bin/python bench/line_month.py record-cost [--n 20000] [--rounds 5]
    .venv/bin/python bench/line_month.py kill [--n 3000] [--kills 5]
    .venv/bin/python bench/line_month.py month [--days 30] [--drift-day 12] [--seeds 3] [--per-day 40] ...

``record-cost``: what recording costs a request: the client facade (``AlloyClient.predict``) over a backend
that answers with a prepared answer at once (or after --service-ms, sleeping as a gRPC wait does), recording
off vs on (a real capture file: identity and hash are worked out by the recorder's thread), interleaved
rounds; p50/p99 per request and their difference, and how many records the last round wrote or dropped (a
client faster than the recorder's thread fills its queue: records are dropped, requests never wait).
``kill``: a child process predicts and records and prints each answered request's index; it is killed with
SIGKILL at a random moment; how many answered requests have no record (the records still queued when it
died), per kill.
``month``: see ``month`` below.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def machine() -> str:
    return f"{platform.node()} ({platform.machine()}, {os.cpu_count()} CPUs), {datetime.now(timezone.utc):%Y-%m-%d}"


class InstantBackend:
    """A server that answers at once: what is left of a request's time is the client's own work."""

    server, model, target, version = "triton", "alloynet", "127.0.0.1:0", "1"

    def __init__(self, service_s: float = 0.0):
        from serving.client.prediction import Prediction

        self.service_s = service_s
        self.answer = Prediction(
            alloy="Al6082",
            confidence=0.8,
            probabilities={"Al6082": 0.8, "Al5083": 0.2},
            prediction_set=["Al6082"],
            group="light",
            group_probability=0.99,
            thickness_mm=5.0,
            absorption={"a0": 1.0, "mu_eff": 2.0},
            flags=[],
            server="triton",
        )

    def predict_batch(self, captures, calibrations=None, wedges_mm=None, errors="raise"):
        if self.service_s:
            time.sleep(self.service_s)  # waiting for the server, as a gRPC call does: the GIL is free meanwhile
        return [self.answer for _ in captures]

    def close(self):
        pass


def _capture_file(d: Path) -> Path:
    """A 64x64 16-bit PNG and its sidecar's capture_id, as the line would send it."""
    from alloynet.captures.image import encode_image

    rng = np.random.default_rng(0)
    p = d / "cap-0001.png"
    p.write_bytes(encode_image(rng.integers(1000, 60000, size=(1, 64, 64), dtype=np.uint16))[0])
    (d / "cap-0001.json").write_text(json.dumps({"capture_id": "cap-0001"}))
    return p


def _timed(client, capture, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        client.predict(capture)
        out.append(time.perf_counter() - t0)
    return out


def record_cost(args) -> None:
    from serving.client.facade import AlloyClient
    from serving.client.record import Recorder

    with tempfile.TemporaryDirectory() as tmp:
        cap = _capture_file(Path(tmp))
        off, on = [], []
        for _ in range(args.rounds):
            off += _timed(AlloyClient(InstantBackend(args.service_ms / 1e3)), cap, args.n)
            rec = Recorder(Path(tmp) / "store")
            client = AlloyClient(InstantBackend(args.service_ms / 1e3), rec)
            on += _timed(client, cap, args.n)
            client.close()
        written, dropped = rec.written, rec.dropped
    p = lambda xs, q: 1e3 * float(np.quantile(xs, q))  # noqa: E731
    print(
        f"# {machine()}; {args.rounds} rounds x {args.n} requests each way, one capture per request, "
        f"server time {args.service_ms} ms"
    )
    print("| recording | p50 ms | p99 ms |\n|---|---|---|")
    print(f"| off | {p(off, 0.5):.4f} | {p(off, 0.99):.4f} |\n| on | {p(on, 0.5):.4f} | {p(on, 0.99):.4f} |")
    print(
        f"recording cost at p50: {p(on, 0.5) - p(off, 0.5):.4f} ms, at p99: {p(on, 0.99) - p(off, 0.99):.4f} ms; "
        f"last round: {written} written, {dropped} dropped"
    )


def _child(store: str, n: int) -> None:
    from serving.client.facade import AlloyClient
    from serving.client.record import Recorder

    cap = _capture_file(Path(tempfile.mkdtemp()))
    client = AlloyClient(InstantBackend(), Recorder(store))
    for i in range(n):
        client.predict(cap)
        sys.stdout.write(f"{i}\n")
        sys.stdout.flush()
        time.sleep(0.0005)
    client.close()


def kill(args) -> None:
    from alloynet.monitor.record import read_records

    rng = np.random.default_rng(args.seed)
    print(f"# {machine()}; {args.kills} kills of a recording client (SIGKILL at a random moment)")
    print("| kill | answered | recorded | answered without a record |\n|---|---|---|---|")
    for k in range(args.kills):
        with tempfile.TemporaryDirectory() as tmp:
            proc = subprocess.Popen(
                [sys.executable, __file__, "_child", tmp, str(args.n)], stdout=subprocess.PIPE, text=True, cwd=ROOT
            )
            answered, deadline = -1, time.monotonic() + 60
            stop_after = int(rng.integers(args.n // 4, args.n // 2))
            assert proc.stdout is not None
            for line in proc.stdout:
                answered = int(line)
                if answered >= stop_after or time.monotonic() > deadline:
                    os.kill(proc.pid, signal.SIGKILL)
                    break
            proc.wait()
            n_rec = len(read_records(tmp, datetime.now(timezone.utc) - timedelta(hours=1)).records)
            print(f"| {k + 1} | {answered + 1} | {n_rec} | {max(0, answered + 1 - n_rec)} |")


# -- month --------------------------------------------------------------------------------------------------
ALLOYS = ("Al1050", "Al2017", "Al5083", "Al6082", "Al7075")
THICKNESSES = (2.0, 3.0, 4.0, 5.0, 6.0)
KINDS = ("tube", "gain-map", "composition")
LOGT = 16  # the champion's features: the plate's 16-bin profile, then log thickness (then the 16-bin strip)
COMP_FEATURES = 8  # the plate's 8-bin profile: level and 7 slopes (the open-beam strip says nothing of the alloy)


def comp_features(dfeats: np.ndarray, bins: int) -> np.ndarray:
    """The composition test's inputs: the plate's profile at ``bins`` bins from the 8-bin drift features."""
    from alloynet.monitor.composition import plate_profile

    out = plate_profile(dfeats, 1, COMP_FEATURES, bins)
    return out[0] if np.ndim(dfeats) == 1 else out


class Line:
    """The simulated rig of one seed: sessions with their own flat/dark; from the drift day on, one change
    the calibration does not record (``kind``): the tube's output down by ``tube_drop`` after the flat was
    taken; a new detector gain map (a smooth +-``gain_amp`` pattern along the wedge); or a supplier whose
    Al6082 sits at the top of every range of its standard."""

    def __init__(
        self,
        seed: int,
        kind: str,
        size: int = 32,
        tube_drop: float = 0.05,
        gain_amp: float = 0.04,
        open_beam_rows: int = 4,
    ):
        from alloynet.data.simulate import frame_level
        from alloynet.physics.simulator import RigConfig, RigSimulator

        self.sim = RigSimulator(RigConfig(height=size, width=size, kvp=[50.0], open_beam_rows=open_beam_rows))
        self.open_beam_rows = open_beam_rows
        self.kind, self.seed, self.tube_drop = kind, seed, tube_drop
        rng = np.random.default_rng([seed, 99])
        gain = self.sim.session_gain(rng)
        dark, flat = self.sim.dark_flat_frames(rng, gain)
        self.gain, self.dark, self.flat = gain, frame_level(dark), frame_level(flat)
        x = np.linspace(0, 1, size)
        self.gain_map = 1.0 + gain_amp * np.sin(2 * np.pi * (x * 1.5 + float(rng.uniform())))

    def captures(self, n: int, drifted: bool, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, list[str]]:
        """``n`` captures: the champion's features (the plate's 16-bin profile and log thickness; then the
        16-bin open-beam strip, which the champion does not read), the monitor's drift features
        (``alloynet.monitor.drift.profile_features``, 8 bins and the open-beam strip), the true alloys."""
        from alloynet.monitor.drift import profile_features
        from alloynet.physics.alloys import STANDARD_ALLOYS, density_for, get_alloy, sample_plate

        feats, dfeats, alloys = [], [], []
        for _ in range(n):
            alloy, t = str(rng.choice(ALLOYS)), float(rng.choice(THICKNESSES))
            plate = sample_plate(alloy, t, rng, "p")
            gain = self.gain
            if drifted and self.kind == "composition" and alloy == "Al6082":
                a = get_alloy(alloy, STANDARD_ALLOYS)
                wt = {**plate.wt_pct, **{el: hi for el, (lo, hi) in a.ranges_wt_pct.items()}}
                plate = type(plate)(
                    plate.plate_id, alloy, plate.nominal_thickness_mm, plate.thickness_mm, wt, density_for(a, wt)
                )
            if drifted and self.kind == "tube":
                gain *= 1.0 - self.tube_drop
            img = self.sim.capture(plate, rng, self.dark, self.flat, gain).image.astype(np.float64)
            if drifted and self.kind == "gain-map":
                img = self.dark[0] + (img - self.dark[0]) * self.gain_map[None, None, :]
            # the plate's profile, and its gauge: in this bench the line knows the nominal thickness it cuts
            pf = profile_features(img, self.dark, self.flat, 16, self.open_beam_rows)
            feats.append(np.r_[pf[:16], np.log(t), pf[16:]])
            dfeats.append(profile_features(img, self.dark, self.flat, 8, self.open_beam_rows))
            alloys.append(alloy)
        return np.asarray(feats), np.asarray(dfeats), alloys


def _champion_inputs(x: np.ndarray) -> np.ndarray:
    return np.asarray(x)[:, : LOGT + 1]  # the strip is the monitor's, not the champion's


def _strip_form(x: np.ndarray) -> np.ndarray:
    """The champion's features back in ``profile_features``' layout (plate bins, then the strip)."""
    return np.c_[x[:, :LOGT], x[:, LOGT + 1 :]]


def _corrected(x: np.ndarray, offset: np.ndarray | None) -> np.ndarray:
    """The features as if the flat had been re-taken (``drift.correct_by_strip``); unchanged without offset."""
    from alloynet.monitor.drift import correct_by_strip

    if offset is None or not len(x):
        return x
    pf = correct_by_strip(_strip_form(x), offset, 1, LOGT)
    return np.c_[pf[:, :LOGT], x[:, LOGT], pf[:, LOGT:]]


class Champion:
    """The line's model in this bench: a logistic regression on the 16-bin wedge profile and the plate's
    nominal thickness (a stand-in for the exported CNN, so that a month retrains in seconds), with
    split-conformal sets at ``coverage``."""

    def __init__(
        self, x: np.ndarray, y: list[str], w: np.ndarray, x_cal: np.ndarray, y_cal: list[str], coverage: float = 0.9
    ):
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import FunctionTransformer, StandardScaler

        self.model = make_pipeline(
            FunctionTransformer(_champion_inputs), StandardScaler(), LogisticRegression(max_iter=3000, C=3.0)
        )
        self.model.fit(x, y, logisticregression__sample_weight=w)
        self.classes = list(self.model.classes_)
        p = self.model.predict_proba(x_cal)
        s = 1 - p[np.arange(len(y_cal)), [self.classes.index(a) for a in y_cal]]
        k = int(np.ceil((len(s) + 1) * coverage)) - 1
        self.q = float(np.sort(s)[min(k, len(s) - 1)])
        self.coverage = coverage

    def answer(self, x: np.ndarray) -> list[dict]:
        from alloynet.physics.alloys import alloy_group

        out = []
        for p in self.model.predict_proba(x):
            k = int(np.argmax(p))
            out.append(
                {
                    "alloy": self.classes[k],
                    "confidence": float(p[k]),
                    "flags": [],
                    "group": alloy_group(self.classes[k]),
                    "prediction_set": [c for c, pk in zip(self.classes, p) if 1 - pk <= self.q] or [self.classes[k]],
                }
            )
        return out

    def balanced_accuracy(self, x: np.ndarray, y: list[str]) -> float:
        from alloynet.monitor.performance import balanced_accuracy

        return balanced_accuracy(y, list(self.model.predict(x)))


def _month(
    line: Line,
    seed: int,
    days: int,
    drift_day: int,
    per_day: int,
    budget: int,
    random_share: float,
    alpha: float,
    test_n: int,
    pre: tuple,
    drifted_test: tuple,
    comp_bins: int = 4,
    second_stage: bool = True,
    post_alarm: str = "weight-all",
    post_nights: int = 5,
    suspect_p: float = 0.05,
) -> list[dict]:
    """One arm of one seed: the nights of a month; per night the figures the table reports.

    ``second_stage``: a suspected composition shift puts plates the line called that alloy on the next night's
    list (``composition.suspects``, ``focus_plan``, ``verify.propose(focus=...)``) and tests them against the
    training plates of the alloy that the champion calls that alloy. ``post_alarm``, the retrain after the first
    alarm: ``weight-all`` (the labels since weigh as much as all before), ``weight-random`` (only the labels
    picked at random since weigh so: the informative picks are chosen by the old champion's doubts and are no
    sample of the changed line), ``random`` (as weight-all, and the lists of the ``post_nights`` nights from
    the alarm on are all random picks), ``strip`` (after the first input-drift alarm, every capture from the
    alarm's night on is corrected by the open-beam strip's offset against training, ``drift.strip_offset``, as
    re-taking the flat would; the labels since weigh as much as the others: the model has not changed, its
    inputs have)."""
    from alloynet.monitor.alarms import decide
    from alloynet.monitor.composition import (
        composition_over_windows,
        composition_test,
        confirm,
        fit_reference,
        fit_reference_called,
        focus_plan,
        suspects,
    )
    from alloynet.monitor.drift import drift_test, strip_offset
    from alloynet.monitor.performance import Verified, live_performance
    from alloynet.monitor.verify import propose
    from alloynet.physics.alloys import alloy_group

    rng_day = np.random.default_rng([seed, 7])  # the same line captures in every arm of this seed
    from alloynet.monitor.drift import feature_names

    (x_tr, ref, y_tr), (x_cal, y_cal), (x_te, y_te) = pre
    names = feature_names(1, 8, line.open_beam_rows)
    x_lab, y_lab, when = list(x_tr), list(y_tr), [0] * len(y_tr)
    champ = Champion(x_tr, y_tr, np.ones(len(y_tr)), x_cal, y_cal)
    # the composition test's reference: the training plates' wedge profile (8 bins, no open-beam strip) per alloy
    comp_ref = fit_reference(comp_features(ref, comp_bins), y_tr, np.exp(x_tr[:, LOGT]))
    comp_plates: list[tuple[int, np.ndarray, str, float]] = []  # night, features, lab's alloy, thickness
    comp_tr, thick_tr = comp_features(ref, comp_bins), np.exp(x_tr[:, LOGT])
    # the second stage's plates: random and focus picks whose verdict is the line's call (as its reference)
    called_plates: list[tuple[int, np.ndarray, str, float]] = []
    focus: dict[str, int] = {}
    since: dict[str, int] = {}  # alloy -> the first night of its focus picks, while they go on night after night
    random_pick = [False] * len(y_tr)  # per label: picked at random (or in the second stage) since the alarm
    strip_since, strip_off, post_x = None, None, []  # post_alarm == "strip": from which night, the offset
    verified: list[tuple[int, Verified]] = []
    alarm_since = None
    rows = []
    for d in range(1, days + 1):
        drifted = drift_day > 0 and d >= drift_day
        x, xd, y = line.captures(per_day, drifted, rng_day)
        if strip_since is not None:
            post_x.append(x)
            strip_off = strip_offset(_strip_form(x_tr), _strip_form(np.concatenate(post_x)), 1, LOGT)
        answers = champ.answer(_corrected(x, strip_off))
        drift = drift_test(ref, xd, alpha, names)
        cands = [{**a, "capture_id": str(i), "drift_score": 0.0} for i, a in enumerate(answers)]
        share = 1.0 if post_alarm == "random" and alarm_since is not None and d < alarm_since + post_nights else None
        picked = propose(
            cands,
            budget,
            random_share if share is None else share,
            seed,
            datetime(2026, 1, 1).date() + timedelta(days=d),
            focus=focus if second_stage else None,
        )
        since = {a: since.get(a, d) for a in (focus if second_stage else {})}
        called_tr = champ.model.predict(x_tr)  # tonight's champion's calls of the training plates
        for r in picked:
            i = int(r["capture_id"])
            x_lab.append(x[i]), y_lab.append(y[i]), when.append(d), random_pick.append(r["pick"] != "informative")
            if r["pick"] != "informative" and answers[i]["alloy"] == y[i]:
                called_plates.append((d, comp_features(xd[i], comp_bins), y[i], float(np.exp(x[i, LOGT]))))
            if r["pick"] == "random":
                a = answers[i]
                comp_plates.append((d, comp_features(xd[i], comp_bins), y[i], float(np.exp(x[i, LOGT]))))
                verified.append(
                    (d, Verified(str(i), y[i], a["alloy"], a["prediction_set"], alloy_group(y[i]), a["group"]))
                )
        week = [v for dd, v in verified if dd > d - 7]
        live = live_performance(week, champ.coverage, n_boot=300, seed=seed) if week else None
        comp = composition_over_windows(
            comp_ref,
            [p[0] for p in comp_plates],
            np.asarray([p[1] for p in comp_plates]),
            [p[2] for p in comp_plates],
            [p[3] for p in comp_plates],
            d,
            alpha,
        )
        confirmed = None
        if second_stage:
            # the second stage: the suspected alloys' called-and-verified plates since their focus began
            if since and called_plates:
                confirmed = confirm(
                    fit_reference_called(comp_tr, y_tr, thick_tr, called_tr),
                    [p[0] for p in called_plates],
                    np.asarray([p[1] for p in called_plates]),
                    [p[2] for p in called_plates],
                    [p[3] for p in called_plates],
                    since,
                )
            # tomorrow's focus: tonight's calls against the training plates the champion calls the same (no
            # label needed), and the verified tests' own p-values
            called_now = [a["alloy"] for a in answers]
            unlabelled = composition_test(
                fit_reference(comp_tr, list(called_tr), thick_tr),
                comp_features(xd, comp_bins),
                called_now,
                np.exp(x[:, LOGT]),
                alpha,
            )
            focus = focus_plan(suspects(unlabelled, comp, *([confirmed] if confirmed else []), level=suspect_p), budget)
            if drift.detected:
                # the rig moved: every alloy's profiles moved with it, and the references (training plates through
                # the old rig) no longer tell a supplier's shift; the budget stays with the informative picks
                focus = {}
        comp_night = comp if comp.detected or confirmed is None or not confirmed.detected else confirmed
        alarms = decide(drift, live, {}, 0.0, budget, comp_night)
        if alarms and alarm_since is None:
            alarm_since = d
        if post_alarm == "strip" and drift.detected and strip_since is None:
            strip_since, post_x = d, [x]
            strip_off = strip_offset(_strip_form(x_tr), _strip_form(x), 1, LOGT)
        # tonight's retrain: every label so far; after an alarm, the labels since it weigh as much as all before
        w = np.ones(len(y_lab))
        if alarm_since is not None and post_alarm != "strip":
            recent = np.asarray(when) >= alarm_since
            if post_alarm == "weight-random":
                recent &= np.asarray(random_pick)
            if recent.any():
                w[recent] = max(1.0, (~recent).sum() / recent.sum())
        x_cal_now, y_cal_now = (x_cal, y_cal)
        x_fit = np.asarray(x_lab)
        if strip_since is not None:
            late = np.asarray(when) >= strip_since
            x_fit[late] = _corrected(x_fit[late], strip_off)
        champ = Champion(x_fit, y_lab, w, x_cal_now, y_cal_now)
        x_now, y_now = drifted_test if drifted else (x_te, y_te)
        x_now = _corrected(x_now, strip_off)
        rows.append(
            {
                "day": d,
                "drifted": drifted,
                "drift_alarm": drift.detected,
                "composition_alarm": comp_night.detected,
                "composition_shifted": comp_night.shifted,
                "composition_p": comp.p_values,
                "composition_n": comp.tested,
                "second_stage_alarm": bool(confirmed is not None and confirmed.detected),
                "second_stage_p": confirmed.p_values if confirmed is not None else {},
                "focus_next": dict(focus),
                "focus_picks": sum(r["pick"] == "focus" for r in picked),
                "pattern": drift.pattern,
                "alarms": [a.kind for a in alarms],
                "live_bal": live.balanced_accuracy if live else None,
                "live_bal_iv": live.balanced_accuracy_interval if live else None,
                "live_cov": live.coverage if live else None,
                "live_n": live.n if live else 0,
                "true_bal": champ.balanced_accuracy(x_now, y_now),
                "labels": len(picked),
            }
        )
    return rows


def month(args) -> None:
    """30 nights per drift kind and seed, active (half random, half informative) vs random verification of the
    same budget; plus undrifted months for the false-alarm rate."""
    print(
        f"# {machine()}; {args.days} nights, drift on day {args.drift_day}, {args.per_day} captures a night, "
        f"budget {args.budget}, alpha {args.alpha}, seeds {args.seeds}, composition test on {args.comp_bins} bins"
    )
    summary = []
    false_alarms, quiet_nights, false_comp, focus_quiet = 0, 0, 0, 0
    per_day_rows: dict = {}
    kinds = tuple(args.kinds.split(",")) if args.kinds else KINDS
    arms = tuple(args.arms.split(","))
    for kind in ("none",) + kinds:
        for seed in range(args.seeds):
            line = Line(seed, kind if kind != "none" else "tube")
            rng = np.random.default_rng([seed, 1])
            x_tr, d_tr, y_tr = line.captures(args.train_n, False, rng)
            x_cal, _, y_cal = line.captures(args.cal_n, False, rng)
            # the drifted test set: the same plates and the same noise as the test set, through the changed rig
            # (the generator's state is copied), so that "back within 0.02" compares the champion, not two
            # samples of 400 plates whose balanced accuracy differs by about as much
            rng_dt = copy.deepcopy(rng)
            x_te, _, y_te = line.captures(args.test_n, False, rng)
            x_dt, _, y_dt = line.captures(args.test_n, True, rng_dt) if kind != "none" else (x_te, None, y_te)
            pre = ((x_tr, d_tr, y_tr), (x_cal, y_cal), (x_te, y_te))
            base = Champion(x_tr, y_tr, np.ones(len(y_tr)), x_cal, y_cal).balanced_accuracy(x_te, y_te)
            for arm, share in (("active", 0.5), ("random", 1.0)):
                if arm not in arms or (kind == "none" and arm != arms[0]):
                    continue
                rows = _month(
                    line,
                    seed,
                    args.days,
                    args.drift_day if kind != "none" else 0,
                    args.per_day,
                    args.budget,
                    share,
                    args.alpha,
                    args.test_n,
                    pre,
                    (x_dt, y_dt),
                    args.comp_bins,
                    not args.no_second_stage,
                    args.post_alarm,
                    suspect_p=args.suspect_p,
                )
                per_day_rows[(kind, seed, arm)] = rows
                if arm == arms[0]:  # both arms see the same captures: their nights count once
                    false_alarms += sum(r["drift_alarm"] for r in rows if not r["drifted"])
                    quiet_nights += sum(not r["drifted"] for r in rows)
                    false_comp += sum(r["composition_alarm"] for r in rows if not r["drifted"])
                    focus_quiet += sum(r["focus_picks"] for r in rows if not r["drifted"])
                if kind == "none":
                    continue
                first = next((r["day"] for r in rows if r["drifted"] and r["alarms"]), None)
                first_comp = next((r["day"] for r in rows if r["drifted"] and r["composition_alarm"]), None)
                back = next((r["day"] for r in rows if r["drifted"] and r["true_bal"] >= base - 0.02), None)
                summary.append(
                    {
                        "kind": kind,
                        "seed": seed,
                        "arm": arm,
                        "pre_bal": base,
                        "bal_at_drift": next(r["true_bal"] for r in rows if r["drifted"]),
                        "min_bal": min(r["true_bal"] for r in rows if r["drifted"]),
                        "nights_to_alarm": None if first is None else first - args.drift_day + 1,
                        "nights_to_composition_alarm": (
                            None if first_comp is None else first_comp - args.drift_day + 1
                        ),
                        "nights_to_recover": None if back is None else back - args.drift_day + 1,
                        "labels": sum(r["labels"] for r in rows),
                        # the first-crossing night of a noisy series says little alone: the mean shortfall of
                        # the first 5 drifted nights against the pre-drift figure (negative: below it)
                        "gap_5": float(np.mean([r["true_bal"] - base for r in rows if r["drifted"]][:5])),
                        "focus_picks": sum(r["focus_picks"] for r in rows if r["drifted"]),
                    }
                )
    print(
        f"\nfalse drift alarms on undrifted nights of the months: {false_alarms} of {quiet_nights} "
        f"({30 * false_alarms / max(1, quiet_nights):.2f} per 30 nights); composition alarms on them: "
        f"{false_comp} ({30 * false_comp / max(1, quiet_nights):.2f} per 30 nights); second-stage plates spent "
        f"on them: {focus_quiet} ({focus_quiet / max(1, quiet_nights):.2f} a night)"
    )
    if args.quiet_nights:
        fa, fc, fs, sus = _quiet(args)
        print(
            f"false alarms on {args.quiet_nights} more undrifted nights: drift test {fa} "
            f"({30 * fa / args.quiet_nights:.2f} per 30 nights); composition test on 7 nights' random picks "
            f"({args.budget // 2} a night) {fc} ({30 * fc / args.quiet_nights:.2f} per 30 nights); "
            f"with the second stage {fs} ({30 * fs / args.quiet_nights:.2f} per 30 nights), "
            f"suspected on {sus} nights"
        )
    print()
    print(
        "| drift | seed | verification | pre-drift bal. acc. | after drift night 1 | lowest after drift | "
        "nights to alarm | nights to composition alarm | nights to within 0.02 | mean gap nights 1-5 | "
        "second-stage plates | labels |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|---|"
    )
    for r in summary:
        print(
            f"| {r['kind']} | {r['seed']} | {r['arm']} | {r['pre_bal']:.3f} | {r['bal_at_drift']:.3f} | "
            f"{r['min_bal']:.3f} | "
            f"{r['nights_to_alarm'] if r['nights_to_alarm'] is not None else 'none'} | "
            f"{r['nights_to_composition_alarm'] if r['nights_to_composition_alarm'] is not None else 'none'} | "
            f"{r['nights_to_recover'] if r['nights_to_recover'] is not None else 'not in the month'} | "
            f"{r['gap_5']:+.3f} | {r['focus_picks']} | {r['labels']} |"
        )
    widths = [
        r["live_bal_iv"][1] - r["live_bal_iv"][0]
        for rows in per_day_rows.values()
        for r in rows
        if r["live_n"] and r["day"] >= 7 and not r["drifted"]
    ]
    if widths:
        print(
            f"\nlive balanced accuracy, 95 % bootstrap interval over the last 7 nights' random picks (undrifted "
            f"nights from day 7): median half-width {np.median(widths) / 2:.3f}"
        )
    if args.out:
        Path(args.out).write_text(
            json.dumps(
                {"summary": summary, "days": {"|".join(map(str, k)): v for k, v in per_day_rows.items()}},
                indent=1,
                default=str,
            )
        )
        if args.plot:
            _plot(per_day_rows, args)


def _quiet(args) -> tuple[int, int, int, int]:
    """Drift and composition alarms on ``args.quiet_nights`` undrifted nights (fresh captures each night, the
    reference of one seed's training captures). The composition test of a night sees a fresh week of random
    picks (7 nights of ``budget // 2``, as the active arm verifies): each night's test is then independent.
    The second stage: the night's captures (those of the drift test) and the week's test give the suspects; if
    any, fresh next nights' lists hold the focus picks (``propose(focus=...)``) while the suspicion lasts (at
    most 3 nights), and the called-and-verified plates since are tested (``composition.confirm``).
    Returns (drift alarms, composition alarms
    without the second stage, composition alarms with it, nights with a suspect)."""
    from alloynet.monitor.composition import (
        composition_over_windows,
        composition_test,
        confirm,
        fit_reference,
        fit_reference_called,
        focus_plan,
        suspects,
    )
    from alloynet.monitor.drift import drift_test, feature_names
    from alloynet.monitor.verify import propose

    alarms, comp, comp2, suspected = 0, 0, 0, 0
    for seed in range(args.seeds):
        line = Line(1000 + seed, "tube")
        rng = np.random.default_rng([seed, 11])
        x_tr, ref, y_tr = line.captures(args.train_n, False, rng)
        x_cal, _, y_cal = line.captures(args.cal_n, False, rng)
        champ = Champion(x_tr, y_tr, np.ones(len(y_tr)), x_cal, y_cal)
        comp_tr, thick_tr = comp_features(ref, args.comp_bins), np.exp(x_tr[:, LOGT])
        called_tr = champ.model.predict(x_tr)
        comp_ref = fit_reference(comp_tr, y_tr, thick_tr)
        ref_u = fit_reference(comp_tr, list(called_tr), thick_tr)
        ref_c = fit_reference_called(comp_tr, y_tr, thick_tr, called_tr)
        names = feature_names(1, 8, line.open_beam_rows)
        for q in range(args.quiet_nights // args.seeds):
            x0, xd0, _ = line.captures(args.per_day, False, rng)
            alarms += drift_test(ref, xd0, args.alpha, names).detected
            x, xd, y = line.captures(7 * (args.budget // 2), False, rng)
            nights = np.repeat(np.arange(1, 8), args.budget // 2)
            week = composition_over_windows(
                comp_ref, nights, comp_features(xd, args.comp_bins), y, np.exp(x[:, LOGT]), 7, args.alpha
            )
            comp += week.detected
            unl = composition_test(
                ref_u, comp_features(xd0, args.comp_bins), list(champ.model.predict(x0)), np.exp(x0[:, LOGT])
            )
            focus = focus_plan(suspects(unl, week, level=args.suspect_p), args.budget)
            confirmed = False
            suspected += bool(focus)
            # the next nights, while the suspicion lasts (at most 3): their lists with the focus picks, and the
            # confirmation on the called-and-verified plates since the suspicion, as the month does night by night
            plates: list[tuple[np.ndarray, str, float]] = []
            since: dict[str, int] = {}
            for k in range(3):
                if not focus or confirmed:
                    break
                since = {a: since.get(a, 0) for a in focus}
                x1, xd1, y1 = line.captures(args.per_day, False, rng)
                answers = champ.answer(x1)
                cands = [{**a, "capture_id": str(i)} for i, a in enumerate(answers)]
                day = datetime(2026, 1, 1).date() + timedelta(days=3 * q + k)
                for r in propose(cands, args.budget, 0.5, seed, day, focus):
                    i = int(r["capture_id"])
                    if r["pick"] != "informative" and answers[i]["alloy"] == y1[i]:
                        plates.append((comp_features(xd1[i], args.comp_bins), y1[i], float(np.exp(x1[i, LOGT]))))
                res = confirm(
                    ref_c,
                    [0] * len(plates),
                    np.asarray([p[0] for p in plates]),
                    [p[1] for p in plates],
                    [p[2] for p in plates],
                    since,
                )
                confirmed = res.detected
                called1 = [a["alloy"] for a in answers]
                unl1 = composition_test(ref_u, comp_features(xd1, args.comp_bins), called1, np.exp(x1[:, LOGT]))
                focus = focus_plan(suspects(unl1, res, level=args.suspect_p), args.budget)
            comp2 += week.detected or confirmed
    return alarms, comp, comp2, suspected


def _plot(per_day_rows: dict, args) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(KINDS), figsize=(5 * len(KINDS), 3.5), sharey=True)
    for ax, kind in zip(axes, KINDS):
        for (k, seed, arm), rows in per_day_rows.items():
            if k != kind or seed != 0:
                continue
            ax.plot([r["day"] for r in rows], [r["true_bal"] for r in rows], label=f"{arm}: champion (test)")
            ax.plot([r["day"] for r in rows], [r["live_bal"] for r in rows], ":", label=f"{arm}: live estimate")
        ax.axvline(args.drift_day, color="grey", lw=0.8)
        ax.set_title(kind)
        ax.set_xlabel("night")
    axes[0].set_ylabel("balanced accuracy")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(Path(args.out).with_suffix(".png"), dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="what", required=True)
    rc = sub.add_parser("record-cost")
    rc.add_argument("--n", type=int, default=20000)
    rc.add_argument("--rounds", type=int, default=5)
    rc.add_argument("--service-ms", type=float, default=0.0, help="the backend's answer takes this long (sleeping)")
    kl = sub.add_parser("kill")
    kl.add_argument("--n", type=int, default=3000)
    kl.add_argument("--kills", type=int, default=5)
    kl.add_argument("--seed", type=int, default=0)
    mo = sub.add_parser("month")
    mo.add_argument("--days", type=int, default=30)
    mo.add_argument("--drift-day", type=int, default=12)
    mo.add_argument("--seeds", type=int, default=3)
    mo.add_argument("--per-day", type=int, default=40)
    mo.add_argument("--budget", type=int, default=10)
    mo.add_argument("--alpha", type=float, default=0.01)
    mo.add_argument("--train-n", type=int, default=300)
    mo.add_argument("--cal-n", type=int, default=150)
    mo.add_argument("--test-n", type=int, default=400)
    mo.add_argument("--quiet-nights", type=int, default=0, help="more undrifted nights, drift and composition tests")
    mo.add_argument("--kinds", default="", help=f"drift kinds, comma-separated (default: all of {','.join(KINDS)})")
    mo.add_argument("--comp-bins", type=int, default=4, choices=(1, 2, 4, 8), help="composition test: profile bins")
    mo.add_argument("--arms", default="active,random", help="verification arms: active, random or both")
    mo.add_argument("--out", default="", help="write the nights as JSON here (and a .png beside it with --plot)")
    mo.add_argument("--plot", action="store_true")
    mo.add_argument("--no-second-stage", action="store_true", help="composition: no focus picks on a suspicion")
    mo.add_argument("--suspect-p", type=float, default=0.05, help="second stage: the suspicion's level")
    mo.add_argument(
        "--post-alarm",
        default="weight-all",
        choices=("weight-all", "weight-random", "random", "strip"),
        help="the retrain after the first alarm (see _month)",
    )
    ch = sub.add_parser("_child")
    ch.add_argument("store")
    ch.add_argument("n", type=int)
    args = ap.parse_args()
    if args.what == "_child":
        _child(args.store, args.n)
    else:
        {"record-cost": record_cost, "kill": kill, "month": month}[args.what](args)


if __name__ == "__main__":
    main()
