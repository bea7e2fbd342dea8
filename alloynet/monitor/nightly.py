"""One night of monitoring, as a plain function: score the line's new captures, report, test drift, propose
what to verify, estimate live performance and decide alarms. ``flows/monitor.py`` runs it under Prefect."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any

import numpy as np

from alloynet.captures.layout import Capture
from alloynet.captures.stores import ObjectMissing, ObjectStore
from alloynet.contract import FLAG_NAMES
from alloynet.monitor.alarms import Alarm, decide
from alloynet.monitor.composition import (
    SUSPECT_P,
    CompositionResult,
    composition_over_windows,
    composition_test,
    confirm,
    fit_reference,
    fit_reference_called,
    focus_plan,
    plate_profile,
    suspects,
)
from alloynet.monitor.drift import (
    DEFAULT_ALPHA,
    DEFAULT_BINS,
    DriftResult,
    capture_drift_scores,
    drift_test,
    feature_names,
    rate_jump,
)
from alloynet.monitor.performance import LivePerformance, Verified, live_performance
from alloynet.monitor.record import Journal, answer_for, read_records
from alloynet.monitor.scoring import LineCapture, Runner, line_captures, open_beam_rows, reference_captures, score
from alloynet.monitor.verify import picks, propose, save_list, saved_list

REPORTS = "line/reports/"
# the champion's calls of the training plates, one file per model version: the second stage compares the line's
# calls with the training plates the champion calls the same, and a version's calls never change
REFERENCE_CALLS = "line/reference-calls/"
SCORE_CHUNK = 256  # training plates scored at a time when the champion calls them


@dataclass
class NightOptions:
    budget: int = 10
    random_share: float = 0.5
    alpha: float = DEFAULT_ALPHA
    bins: int = DEFAULT_BINS
    history_days: int = 7
    seed: int = 0


@dataclass
class Night:
    day: str
    report: dict[str, Any]
    verify: list[dict[str, Any]]
    drift: DriftResult | None
    live: LivePerformance | None
    alarms: list[Alarm] = field(default_factory=list)
    scored: int = 0


def _answer_stats(answers: Sequence[dict]) -> dict[str, Any]:
    ok = [a for a in answers if a.get("status") != "refused"]
    n = len(ok)
    flags = Counter(f for a in ok for f in (a.get("flags") or []))
    thick = np.asarray([float(a["thickness_mm"]) for a in ok if a.get("thickness_mm") is not None])
    return {
        "answers": len(answers),
        "refused": len(answers) - n,
        "per_alloy": dict(sorted(Counter(a.get("alloy") for a in ok).items())),
        "per_group": dict(sorted(Counter(a.get("group") for a in ok).items())),
        "set_sizes": {str(k): v for k, v in sorted(Counter(len(a.get("prediction_set") or []) for a in ok).items())},
        "flag_counts": {f: flags.get(f, 0) for f in FLAG_NAMES},
        "flag_rates": {f: (flags.get(f, 0) / n if n else 0.0) for f in FLAG_NAMES},
        "thickness_mm": (
            {
                "mean": float(thick.mean()),
                "p05": float(np.quantile(thick, 0.05)),
                "median": float(np.median(thick)),
                "p95": float(np.quantile(thick, 0.95)),
                "histogram": [int(x) for x in np.histogram(thick, bins=10)[0]],
                "edges": [round(float(e), 3) for e in np.histogram(thick, bins=10)[1]],
            }
            if len(thick)
            else {}
        ),
    }


Champion = Callable[[], tuple[Runner, dict[str, Any], str, dict[str, Any]] | None]


def run_night(
    store: ObjectStore,
    records_store: ObjectStore,
    since: datetime,
    until: datetime,
    champion: Champion,
    options: NightOptions = NightOptions(),
) -> Night:
    """``store``: the capture store (ingested captures, labels); ``records_store``: where the line's record is.
    ``champion``: loads the champion's exported graph: (runner, export meta, version, held-out test figures),
    or None when there is none (nothing is scored). Called only when a capture needs scoring or a verdict
    needs the champion's classes, so a night with nothing from the line fetches nothing."""
    o = options
    day = (until - timedelta(seconds=1)).date()
    caps = line_captures(store, since, until)
    loaded: list = []

    def graph() -> tuple[Runner | None, dict[str, Any], str, dict[str, Any]]:
        if not loaded:
            loaded.append(champion() or (None, {"class_names": []}, "", {}))
        return loaded[0]

    window = read_records(records_store, since - timedelta(days=1), until + timedelta(days=1)).records
    answers, unanswered = {}, []
    for c in caps:
        a = answer_for(window, c.capture_id, c.sidecar.image.sha256)
        if a is None:
            unanswered.append(c)
        else:
            answers[c.capture_id] = a
    scored: list[dict[str, Any]] = []
    runner, meta, model_version, test_figures = graph() if unanswered else (None, {}, "", {})
    if unanswered and runner is not None:
        scored = score(
            unanswered, runner, meta["class_names"], meta.get("class_groups") or None, model_version=model_version
        )
        Journal(records_store).write(scored)
        answers.update({r["capture_id"]: r for r in scored})
    tonight = [answers[c.capture_id] for c in caps if c.capture_id in answers]
    stats = _answer_stats(tonight)

    ref, ref_thick, ref_alloys, ref_ids = _reference(store, since, o)
    cur = np.asarray([c.features(o.bins) for c in caps]) if caps else np.zeros((0, ref.shape[1] if ref.size else 0))
    drift = None
    if ref.size and len(cur) and ref.shape[1] == cur.shape[1]:
        names = feature_names(caps[0].image.shape[0], o.bins, open_beam_rows(caps[0].sidecar))
        drift = drift_test(ref, cur, o.alpha, names if len(names) == cur.shape[1] else None)
    dscores = capture_drift_scores(ref, cur) if drift is not None else np.zeros(len(caps))

    candidates = [
        {
            **answers.get(c.capture_id, {}),
            "capture_id": c.capture_id,
            "plate_id": c.sidecar.plate_id,
            "image_sha256": c.sidecar.image.sha256,
            "drift_score": float(s),
        }
        for c, s in zip(caps, dscores)
        if c.sidecar.truth is None
    ]
    rows = saved_list(store, day)
    if rows is None:  # a night's list is decided once: a re-run keeps the picks the lab may already be working on
        rows = propose(candidates, o.budget, o.random_share, o.seed, day, focus=_focus_planned(store, day))
        save_list(store, day, rows)

    live = _live(store, records_store, until, o, graph)
    before = read_records(records_store, since - timedelta(days=o.history_days), since).records
    before_stats = _answer_stats(before)
    n_now, n_before = stats["answers"] - stats["refused"], before_stats["answers"] - before_stats["refused"]
    jumps = {}
    for f in FLAG_NAMES:
        jumped, p = rate_jump(stats["flag_counts"][f], n_now, before_stats["flag_counts"][f], n_before)
        if jumped:
            jumps[f] = p
    outside = 0.0
    if ref_thick and tonight:
        lo, hi = min(ref_thick), max(ref_thick)
        t = [float(a["thickness_mm"]) for a in tonight if a.get("thickness_mm") is not None]
        outside = float(np.mean([(x < lo * 0.9 or x > hi * 1.1) for x in t])) if t else 0.0
    composition = _composition(store, day, o, ref, ref_thick, ref_alloys)
    second = _second_stage(
        store,
        day,
        o,
        rows,
        (caps, cur, answers),
        (ref, ref_thick, ref_alloys, ref_ids),
        composition,
        drift,
        graph,
    )
    # the first stage alarms on its own; the second stage's confirmation alarms when the first stage does not
    first_alarms = composition is not None and composition.detected
    second.alarm = not first_alarms and second.confirmation is not None and second.confirmation.detected
    alarms = decide(drift, live, jumps, outside, o.budget, second.confirmation if second.alarm else composition)
    report = {
        "day": day.isoformat(),
        "window": [since.isoformat(), until.isoformat()],
        "captures": len(caps),
        "answered_by_line": len(tonight) - len(scored),
        "scored_tonight": len(scored),
        **stats,
        "thickness_outside_training": outside,
        "drift": drift.to_dict() if drift else None,
        "reference_captures": int(len(ref)),
        "composition": composition.to_dict() if composition else None,
        "second_stage": second.to_dict(),
        "verify": rows,
        "live": live.to_dict() if live else None,
        "alarms": [a.to_dict() for a in alarms],
        "model_version": model_version or None,
    }
    store.put(f"{REPORTS}{day.isoformat()}.json", json.dumps(report, indent=1, default=str).encode(), overwrite=True)
    store.put(f"{REPORTS}{day.isoformat()}.md", to_markdown(report).encode(), overwrite=True)
    return Night(day.isoformat(), report, rows, drift, live, alarms, len(scored))


def _reference(store: ObjectStore, before: datetime, o: NightOptions) -> tuple[np.ndarray, list, list, list]:
    """The training plates' drift features, thicknesses, alloys and (capture id, image hash)."""
    feats, thick, alloys, ids = [], [], [], []
    for cap in reference_captures(store, before, seed=o.seed):
        t = cap.sidecar.truth
        if t is None:  # labelled when listed, relabelled since
            continue
        feats.append(cap.features(o.bins))
        thick.append(float(t.thickness_mm or t.nominal_thickness_mm))
        alloys.append(t.alloy)
        ids.append((cap.capture_id, cap.sidecar.image.sha256))
    return (np.asarray(feats) if feats else np.zeros((0, 0))), thick, alloys, ids


def _read_own(store: ObjectStore, capture_id: str) -> Capture | None:
    """The capture at its sidecar's own size (ingest checked the size when it came in); None when it has been
    removed or damaged since."""
    from alloynet.captures.format import parse_sidecar
    from alloynet.captures.image import CaptureError
    from alloynet.captures.layout import read_capture, sidecar_key

    try:
        sc = parse_sidecar(store.get(sidecar_key(capture_id)))
        return read_capture(store, sc.capture_id, {(sc.image.shape[1], sc.image.shape[2])})
    except (CaptureError, ObjectMissing, KeyError, ValueError):
        return None


@dataclass
class _Plate:
    night: int  # the list's day, as an ordinal
    features: np.ndarray
    alloy: str  # the lab's verdict
    thickness_mm: float
    channels: int


def _verified_plates(
    store: ObjectStore, days: Sequence[date], how: set[str], called: bool, bins: int, dim: int
) -> list[_Plate]:
    """The plates of the lists of ``days`` picked ``how`` whose verdicts are in; ``called``: only those whose verdict
    is the alloy the line was told (the list's ``predicted``). Plates of another rig (features not of length
    ``dim``) are left out."""
    from alloynet.monitor.drift import profile_features

    out = []
    for d in days:
        for row in saved_list(store, d) or []:
            if row.get("pick") not in how:
                continue
            cap = _read_own(store, str(row.get("capture_id")))
            if cap is None:
                continue
            t = cap.sidecar.truth
            if t is None or (called and t.alloy != row.get("predicted")):
                continue
            c = cap.sidecar.calibration
            f = profile_features(cap.image, c.dark_adu, c.flat_adu, bins, open_beam_rows(cap.sidecar))
            if len(f) != dim:
                continue  # another rig's captures: not comparable with this reference
            thick = float(t.thickness_mm or t.nominal_thickness_mm)
            out.append(_Plate(d.toordinal(), f, t.alloy, thick, cap.image.shape[0]))
    return out


def _composition(
    store: ObjectStore, day, o: NightOptions, ref: np.ndarray, ref_thick: list[float], ref_alloys: list[str]
) -> CompositionResult | None:
    """The composition test on the random picks of the last ``history_days`` nights' lists whose verdicts are in,
    against the training plates of the same alloy. None when there is no reference or no such plate."""
    if not len(ref):
        return None
    days = [day - timedelta(days=back) for back in range(1, o.history_days + 1)]
    plates = _verified_plates(store, days, {"random"}, False, o.bins, ref.shape[1])
    if not plates:
        return None
    channels = plates[0].channels
    reference = fit_reference(plate_profile(ref, channels, o.bins), ref_alloys, ref_thick)
    # tonight's list has no verdicts yet: the windows of 1, 3, 7 nights end with last night's list
    return composition_over_windows(
        reference,
        [p.night for p in plates],
        plate_profile(np.asarray([p.features for p in plates]), channels, o.bins),
        [p.alloy for p in plates],
        [p.thickness_mm for p in plates],
        (day - timedelta(days=1)).toordinal(),
        o.alpha,
    )


# -- the second stage (alloynet.monitor.composition) --------------------------------------------------------
# Carried from night to night only through the store: tomorrow's focus in tonight's report (``second_stage``),
# the focus picks in the saved lists, the verdicts in the captures' sidecars.


@dataclass
class SecondStage:
    focus_tonight: dict[str, int] = field(default_factory=dict)  # alloy -> focus picks on tonight's list
    since: dict[str, str] = field(default_factory=dict)  # alloy -> the first night of its run of focus picks
    unlabelled: CompositionResult | None = None  # tonight's calls against the training plates called the same
    confirmation: CompositionResult | None = None
    suspects: list[str] = field(default_factory=list)
    focus_next: dict[str, int] = field(default_factory=dict)
    dropped_for_drift: bool = False  # input drift tonight: no focus tomorrow
    alarm: bool = False  # tonight's composition alarm is the confirmation's

    def to_dict(self) -> dict[str, Any]:
        return {
            "focus_tonight": self.focus_tonight,
            "since": self.since,
            "unlabelled_p_values": self.unlabelled.p_values if self.unlabelled else {},
            "confirmation": self.confirmation.to_dict() if self.confirmation else None,
            "suspects": self.suspects,
            "focus_next": self.focus_next,
            "dropped_for_drift": self.dropped_for_drift,
            "alarm": self.alarm,
        }


def _focus_planned(store: ObjectStore, day: date) -> dict[str, int]:
    """Tonight's focus: what last night's report planned (``second_stage.focus_next``); none without that report."""
    key = f"{REPORTS}{(day - timedelta(days=1)).isoformat()}.json"
    try:
        plan = (json.loads(store.get(key)).get("second_stage") or {}).get("focus_next") or {}
    except ObjectMissing:
        return {}
    if not isinstance(plan, dict) or not all(isinstance(k, int) and k >= 0 for k in plan.values()):
        raise ValueError(f"{key}: second_stage.focus_next must map alloys to plates (integers >= 0), got {plan!r}")
    return {str(a): int(k) for a, k in plan.items()}


def _focus_since(store: ObjectStore, day: date, nights: int) -> dict[str, date]:
    """alloy -> the first night of its latest unbroken run of lists with focus picks for it, for the alloys with
    focus picks on one of the last ``nights`` lists (tonight's included): the lab's verdicts on a list come in
    over the following nights, so a run that ended a few nights ago still has plates to confirm."""
    seen: dict[date, set[str]] = {}

    def focused(d: date) -> set[str]:
        if d not in seen:
            seen[d] = {str(r.get("predicted")) for r in saved_list(store, d) or [] if r.get("pick") == "focus"}
        return seen[d]

    out: dict[str, date] = {}
    for back in range(nights):
        for a in sorted(focused(day - timedelta(days=back)) - out.keys()):
            start = day - timedelta(days=back)
            while a in focused(start - timedelta(days=1)):
                start -= timedelta(days=1)
            out[a] = start
    return out


def _reference_calls(
    store: ObjectStore, ids: Sequence[tuple[str, str]], graph: Callable[[], tuple]
) -> dict[str, dict[str, Any]] | None:
    """capture id -> the champion's answer (alloy, thickness_mm; None where refused) for each training plate;
    None without a champion. Read from ``REFERENCE_CALLS`` where this version has called the plate before;
    the others are scored with the champion's graph and added there."""
    runner, meta, version, _figures = graph()
    if runner is None:
        return None
    key = f"{REFERENCE_CALLS}{version}.json"
    known: dict[str, dict[str, Any]] = {}
    if version:
        try:
            known = json.loads(store.get(key))["calls"]
        except (ObjectMissing, ValueError, KeyError):  # none yet, or unreadable: scored again
            known = {}
    want = dict(ids)
    calls = {cid: known[cid] for cid, sha in want.items() if known.get(cid, {}).get("image_sha256") == sha}
    missing = set(want) - set(calls)
    if not missing:
        return calls
    names, groups = meta["class_names"], meta.get("class_groups") or None
    todo = sorted(missing)
    for start in range(0, len(todo), SCORE_CHUNK):  # a chunk of images in memory at a time
        chunk = [c for c in (_read_own(store, cid) for cid in todo[start : start + SCORE_CHUNK]) if c is not None]
        for r in score([LineCapture(c.sidecar, c.image) for c in chunk], runner, names, groups, model_version=version):
            ok = r.get("status") != "refused"
            calls[r["capture_id"]] = {
                "image_sha256": r["image_sha256"],
                "alloy": r.get("alloy") if ok else None,
                "thickness_mm": r.get("thickness_mm") if ok else None,
            }
    if version:
        body = {"model_version": version, "calls": {**known, **calls}}
        store.put(key, json.dumps(body).encode(), overwrite=True)
    return calls


def _second_stage(
    store: ObjectStore,
    day: date,
    o: NightOptions,
    rows: Sequence[dict[str, Any]],
    line: tuple[list[LineCapture], np.ndarray, dict[str, dict[str, Any]]],
    reference: tuple[np.ndarray, list[float], list[str], list[tuple[str, str]]],
    first: CompositionResult | None,
    drift: DriftResult | None,
    graph: Callable[[], tuple],
) -> SecondStage:
    """Confirm the focused alloys on their called-and-verified plates since their focus began, and plan
    tomorrow's focus (``composition.suspects``, ``focus_plan``). ``line``: tonight's captures, their drift
    features, the answers by capture id; ``reference``: ``_reference``'s. The champion's calls of the training
    plates are needed only when there is something to test: captures tonight or a focus to confirm."""
    caps, cur, answers = line
    ref, ref_thick, ref_alloys, ref_ids = reference
    out = SecondStage(
        focus_tonight=dict(sorted(Counter(r["predicted"] for r in rows if r.get("pick") == "focus").items()))
    )
    since = _focus_since(store, day, o.history_days)
    out.since = {a: d.isoformat() for a, d in sorted(since.items())}
    if not len(ref) or not (caps or since):
        return out
    calls = _reference_calls(store, ref_ids, graph)
    if calls is None:
        return out
    channels = caps[0].image.shape[0] if caps else 0
    called = [(calls.get(cid) or {}).get("alloy") or "" for cid, _sha in ref_ids]
    tonight = [
        (i, answers[c.capture_id])
        for i, c in enumerate(caps)
        if c.capture_id in answers
        and answers[c.capture_id].get("status") != "refused"
        and answers[c.capture_id].get("thickness_mm") is not None
    ]
    if tonight and cur.shape[1] == ref.shape[1]:
        # the line's calls need no verdict: tonight's plates called an alloy against the training plates the
        # champion calls that alloy, both at the champion's thickness
        known = [j for j, (cid, _sha) in enumerate(ref_ids) if called[j] and (calls.get(cid) or {}).get("thickness_mm")]
        out.unlabelled = composition_test(
            fit_reference(
                plate_profile(ref[known], channels, o.bins),
                [called[j] for j in known],
                [float(calls[ref_ids[j][0]]["thickness_mm"]) for j in known],
            ),
            plate_profile(cur[[i for i, _a in tonight]], channels, o.bins),
            [a["alloy"] for _i, a in tonight],
            [float(a["thickness_mm"]) for _i, a in tonight],
            o.alpha,
        )
    if since:
        days = [day - timedelta(days=k) for k in range((day - min(since.values())).days + 1)]
        plates = _verified_plates(store, days, {"random", "focus"}, True, o.bins, ref.shape[1])
        if plates:
            ch = plates[0].channels
            out.confirmation = confirm(
                fit_reference_called(plate_profile(ref, ch, o.bins), ref_alloys, ref_thick, called),
                [p.night for p in plates],
                plate_profile(np.asarray([p.features for p in plates]), ch, o.bins),
                [p.alloy for p in plates],
                [p.thickness_mm for p in plates],
                {a: d.toordinal() for a, d in since.items()},
            )
    out.suspects = suspects(*(r for r in (out.unlabelled, first, out.confirmation) if r is not None), level=SUSPECT_P)
    # input drift: the rig moved, every alloy's profiles with it, and training plates through the old rig no
    # longer tell a supplier's shift; the budget stays with the random and informative picks
    out.dropped_for_drift = bool(drift is not None and drift.detected and out.suspects)
    out.focus_next = {} if drift is not None and drift.detected else focus_plan(out.suspects, o.budget)
    return out


def _live(
    store: ObjectStore, records_store: ObjectStore, until: datetime, o: NightOptions, graph: Callable[[], tuple]
) -> LivePerformance | None:
    """From the random picks of the last ``history_days`` whose verdicts are in."""
    from alloynet.captures.format import parse_sidecar
    from alloynet.captures.layout import sidecar_key

    how = {cid: p for cid, p in picks(store).items() if p == "random"}
    if not how:
        return None
    recs = read_records(records_store, until - timedelta(days=o.history_days + 1), until).records
    _runner, meta, _version, test_figures = graph()
    groups = dict(zip(meta.get("class_names") or [], meta.get("class_groups") or []))
    verified = []
    for cid in sorted(how):
        try:
            sc = parse_sidecar(store.get(sidecar_key(cid)))
        except Exception:
            continue
        a = answer_for(recs, cid, sc.image.sha256)
        if sc.truth is None or a is None or a.get("status") == "refused":
            continue
        verified.append(
            Verified(
                cid,
                sc.truth.alloy,
                a["alloy"],
                list(a.get("prediction_set") or []),
                groups.get(sc.truth.alloy, ""),
                a.get("group") or "",
            )
        )
    if not verified:
        return None
    return live_performance(verified, meta.get("coverage"), test_figures, seed=o.seed)


def report_history(store: ObjectStore, days: int = 28) -> list[dict[str, Any]]:
    """One row per night of the last ``days`` reports, newest first: what the line saw, how often it was right
    (with its interval), what drifted, what alarmed; the UI's history table."""
    keys = sorted((i.key for i in store.list(REPORTS) if i.key.endswith(".json")), reverse=True)[:days]
    rows = []
    for key in keys:
        try:
            r = json.loads(store.get(key))
        except (ValueError, KeyError):
            continue
        live = r.get("live") or {}
        b, c = live.get("balanced_accuracy_interval"), live.get("coverage_interval")
        rows.append(
            {
                "night": r["day"],
                "week": datetime.fromisoformat(r["day"]).strftime("%G-W%V"),
                "captures": r["captures"],
                "refused": r["refused"],
                "live balanced accuracy": (
                    f"{live['balanced_accuracy']:.3f} [{b[0]:.3f}, {b[1]:.3f}]" if live else "-"
                ),
                "live coverage": f"{live['coverage']:.3f} [{c[0]:.3f}, {c[1]:.3f}]" if live else "-",
                "verified (random)": live.get("n", 0),
                "drift": (r.get("drift") or {}).get("pattern", "not tested"),
                "alarms": ", ".join(a["kind"] for a in r.get("alarms") or []) or "-",
            }
        )
    return rows


def to_markdown(r: dict[str, Any]) -> str:
    """The night's report for people: the Prefect artifact and line/reports/<day>.md."""
    out = [f"# The line on {r['day']}", ""]
    if r["alarms"]:
        out += (
            ["## Alarms", ""]
            + [
                f"- **{a['kind']}**: {a['seen']}. *Likely cause*: {a['cause']}. *Action*: {a['action']}."
                for a in r["alarms"]
            ]
            + [""]
        )
    else:
        out += ["No alarm.", ""]
    out += [
        f"{r['captures']} capture(s): {r['answered_by_line']} answered on the line, {r['scored_tonight']} "
        f"scored tonight, {r['refused']} refused.",
        "",
        "| alloy | answers |",
        "|---|---|",
    ]
    out += [f"| {k} | {v} |" for k, v in r["per_alloy"].items()]
    out += [
        "",
        "Groups: " + ", ".join(f"{k} {v}" for k, v in r["per_group"].items()),
        "Set sizes: " + ", ".join(f"{k}: {v}" for k, v in r["set_sizes"].items()),
        "Flag rates: " + ", ".join(f"{k} {v:.1%}" for k, v in r["flag_rates"].items()),
    ]
    t = r.get("thickness_mm") or {}
    if t:
        out.append(
            f"Thickness: median {t['median']:.2f} mm (5-95 %: {t['p05']:.2f}-{t['p95']:.2f}); "
            f"{r['thickness_outside_training']:.0%} outside the training range"
        )
    d = r.get("drift")
    if d:
        out += [
            "",
            f"## Input drift: {'DETECTED (' + d['pattern'] + ')' if d['detected'] else 'none'}",
            f"KS per wedge-profile feature against {d['n_reference']} training captures, Bonferroni: "
            f"threshold {d['threshold']:.2g} (false-alarm rate at most {d['alpha']:g} a night).",
            "",
            "| feature | p | shift (sd) |",
            "|---|---|---|",
        ]
        out += [f"| {n} | {p:.2g} | {s:+.2f} |" for n, p, s in zip(d["names"], d["p_values"], d["shift_sd"])]
    comp = r.get("composition")
    if comp:
        tested = ", ".join(f"{k} {n} (p={comp['p_values'][k]:.2g})" for k, n in comp["tested"].items())
        verdict = "SHIFTED: " + ", ".join(comp["shifted"]) if comp["shifted"] else "no shift"
        out += [
            "",
            f"## Composition within the standard: {verdict}",
            f"Verified random plates per alloy against the training plates of the same alloy (Hotelling T² after "
            f"thickness, Bonferroni at {comp['alpha']:g}; the window of the last 1, 3 or 7 nights that stands out "
            f"most: {comp['window']}): {tested or 'too few plates of any alloy'}.",
        ]
    out += _second_stage_lines(r.get("second_stage"))
    live = r.get("live")
    if live:
        a, b, c = live["accuracy_interval"], live["balanced_accuracy_interval"], live["coverage_interval"]
        out += [
            "",
            f"## Live performance ({live['n']} verified random plates)",
            "",
            "| | live (95 % interval) | held-out test |",
            "|---|---|---|",
            f"| accuracy | {live['accuracy']:.3f} [{a[0]:.3f}, {a[1]:.3f}] | "
            f"{live['test_figures'].get('accuracy', '-')} |",
            f"| balanced accuracy | {live['balanced_accuracy']:.3f} [{b[0]:.3f}, {b[1]:.3f}] | "
            f"{live['test_figures'].get('balanced_accuracy', '-')} |",
            f"| set coverage (target {live['coverage_target']}) | {live['coverage']:.3f} "
            f"[{c[0]:.3f}, {c[1]:.3f}] | "
            f"{live['test_figures'].get('coverage', '-')} |",
            f"| heavy as light / light as heavy | {live['heavy_as_light']} / {live['light_as_heavy']} | |",
        ]
    out += [
        "",
        f"## Verify tomorrow ({len(r['verify'])} plates)",
        "",
        "| capture | plate | pick | why | told |",
        "|---|---|---|---|---|",
    ]
    out += [
        f"| {v['capture_id']} | {v['plate_id']} | {v['pick']} | {v['why']} | {v['predicted']} |" for v in r["verify"]
    ]
    return "\n".join(out) + "\n"


def _second_stage_lines(s: dict[str, Any] | None) -> list[str]:
    """The second stage in two plain lines: what is focused since when and its confirmation; what is next."""
    if not s or not (s["focus_tonight"] or s["since"] or s["suspects"] or s["confirmation"]):
        return []
    plates = lambda d: ", ".join(f"{a} {k}" for a, k in d.items()) or "none"  # noqa: E731
    since = ", ".join(f"{a} since {d}" for a, d in s["since"].items()) or "none"
    c = s["confirmation"] or {}
    tested = ", ".join(f"{a} {n} (p={c['p_values'][a]:.2g})" for a, n in c.get("tested", {}).items())
    verdict = "CONFIRMED: " + ", ".join(c["shifted"]) if c.get("shifted") else "not confirmed"
    alarm = " (tonight's composition alarm)" if s["alarm"] else ""
    nxt = "dropped: input drift" if s["dropped_for_drift"] else plates(s["focus_next"])
    return [
        "",
        f"Second stage: focus picks tonight {plates(s['focus_tonight'])}; focus runs {since}; confirmation on the "
        f"called-and-verified plates: {tested or 'too few plates yet'}, {verdict}{alarm}.",
        f"Suspected: {', '.join(s['suspects']) or 'none'}; focus picks tomorrow: {nxt}.",
    ]
