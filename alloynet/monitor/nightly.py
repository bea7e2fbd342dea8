"""One night of monitoring, as a plain function: score the line's new captures, report, test drift, propose
what to verify, estimate live performance and decide alarms. ``flows/monitor.py`` runs it under Prefect."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import numpy as np

from alloynet.captures.stores import ObjectStore
from alloynet.contract import FLAG_NAMES
from alloynet.monitor.alarms import Alarm, decide
from alloynet.monitor.composition import CompositionResult, composition_over_windows, fit_reference, plate_profile
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
from alloynet.monitor.scoring import Runner, line_captures, open_beam_rows, reference_features, score
from alloynet.monitor.verify import picks, propose, save_list, saved_list

REPORTS = "line/reports/"


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

    ref, ref_thick, ref_alloys = reference_features(store, since, o.bins, seed=o.seed)
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
        rows = propose(candidates, o.budget, o.random_share, o.seed, day)
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
    alarms = decide(drift, live, jumps, outside, o.budget, composition)
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
        "verify": rows,
        "live": live.to_dict() if live else None,
        "alarms": [a.to_dict() for a in alarms],
        "model_version": model_version or None,
    }
    store.put(f"{REPORTS}{day.isoformat()}.json", json.dumps(report, indent=1, default=str).encode(), overwrite=True)
    store.put(f"{REPORTS}{day.isoformat()}.md", to_markdown(report).encode(), overwrite=True)
    return Night(day.isoformat(), report, rows, drift, live, alarms, len(scored))


def _composition(
    store: ObjectStore, day, o: NightOptions, ref: np.ndarray, ref_thick: list[float], ref_alloys: list[str]
) -> CompositionResult | None:
    """The composition test on the random picks of the last ``history_days`` nights' lists whose verdicts are in,
    against the training plates of the same alloy. None when there is no reference or no such plate."""
    from alloynet.captures.format import parse_sidecar
    from alloynet.captures.image import CaptureError
    from alloynet.captures.layout import read_capture, sidecar_key
    from alloynet.monitor.drift import profile_features

    if not len(ref):
        return None
    nights, feats, alloys, thick = [], [], [], []
    channels = 0
    for back in range(1, o.history_days + 1):
        for row in saved_list(store, day - timedelta(days=back)) or []:
            if row.get("pick") != "random":
                continue
            try:
                sc = parse_sidecar(store.get(sidecar_key(row["capture_id"])))
                cap = read_capture(store, sc.capture_id, {(sc.image.shape[1], sc.image.shape[2])})
            except (CaptureError, KeyError, ValueError):  # removed or damaged since it was listed
                continue
            t = cap.sidecar.truth
            if t is None:
                continue
            c = cap.sidecar.calibration
            f = profile_features(cap.image, c.dark_adu, c.flat_adu, o.bins, open_beam_rows(cap.sidecar))
            if len(f) != ref.shape[1]:
                continue  # another rig's captures: not comparable with this reference
            channels = cap.image.shape[0]
            nights.append(-back)
            feats.append(f)
            alloys.append(t.alloy)
            thick.append(float(t.thickness_mm or t.nominal_thickness_mm))
    if not feats:
        return None
    reference = fit_reference(plate_profile(ref, channels, o.bins), ref_alloys, ref_thick)
    return composition_over_windows(
        reference, nights, plate_profile(np.asarray(feats), channels, o.bins), alloys, thick, 0, o.alpha
    )


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
