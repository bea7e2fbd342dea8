"""Alarms that say what to do: each names what was seen, the likely cause and the action."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from alloynet.monitor.composition import CompositionResult
from alloynet.monitor.drift import DriftResult
from alloynet.monitor.performance import LivePerformance

CAUSES = {
    "level": (
        "calibration levels moved: every wedge bin's attenuation shifted the same way (tube output ageing "
        "since the flat was taken, or a dark/flat from another session)",
        "re-take the flat and dark frames for this session, then verify {n} plates",
    ),
    "shape": (
        "profile drift along the wedge: the bins moved unevenly (a detector gain map changed, the "
        "wedge/plate geometry moved, or a supplier's composition moved the hardening curve)",
        "check the detector's gain map and re-take the flat; verify {n} plates, then retrain with the new labels",
    ),
}


@dataclass
class Alarm:
    kind: str  # coverage | drift | flags | thickness | composition
    seen: str
    cause: str
    action: str
    # whether new labels can fix it: a retrain helps when the line's plates moved; it cannot undo levels taken at
    # the wrong beam (re-take flat/dark first). The Prefect automation retrains on these alarms only.
    retrain: bool = True

    def line(self) -> str:
        return f"ALARM {self.kind}: {self.seen}. Likely cause: {self.cause}. Action: {self.action}."

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def decide(
    drift: DriftResult | None,
    live: LivePerformance | None,
    flag_jumps: dict[str, float],
    thickness_outside: float = 0.0,
    budget: int = 10,
    composition: CompositionResult | None = None,
) -> list[Alarm]:
    """The night's alarms. ``flag_jumps``: flag -> its p-value, for the flags whose rate jumped;
    ``thickness_outside``: the share of tonight's plates whose thickness lies outside the training range."""
    out = []
    if live is not None and live.coverage_below_target:
        lo, hi = live.coverage_interval
        out.append(
            Alarm(
                "coverage",
                f"live set coverage {live.coverage:.2f} [{lo:.2f}, {hi:.2f}] on {live.n} "
                f"verified random plates is below its target {live.coverage_target:.2f}",
                "the champion no longer matches the line (drift, or a class it rarely saw)",
                f"roll back if the previous champion covered better; verify {budget} plates a night and "
                "retrain with the new labels",
            )
        )
    if drift is not None and drift.detected:
        cause, action = CAUSES.get(drift.pattern, CAUSES["shape"])
        bins = ", ".join(
            f"{drift.names[j] if drift.names else j} ({drift.shift_sd[j]:+.1f} sd)" for j in drift.drifted[:6]
        )
        out.append(
            Alarm(
                "drift",
                f"input drift in {len(drift.drifted)} of {len(drift.p_values)} profile features "
                f"(KS, Bonferroni at {drift.alpha:g}): {bins}",
                cause,
                action.format(n=budget),
                retrain=drift.pattern != "level",
            )
        )
    for flag, p in sorted(flag_jumps.items()):
        cause = {
            "calibration_out_of_tolerance": "calibration levels outside what the model was trained on",
            "thickness_out_of_range": "plates thicker or thinner than any in training",
            "profile_unlike_training": "profiles unlike any class seen in training",
            "drift_in_session": "the open beam moved within a session (tube or detector instability)",
            "calibration_missing": "the line stopped sending calibration levels",
        }.get(flag, flag)
        levels = "calibration" in flag or flag == "drift_in_session"
        action = "re-take flat/dark" if levels else f"verify {budget} of the flagged plates and retrain with new labels"
        out.append(
            Alarm("flags", f"the rate of flag {flag} jumped (binomial p={p:.1g})", cause, action, retrain=not levels)
        )
    if thickness_outside > 0.2:
        out.append(
            Alarm(
                "thickness",
                f"{thickness_outside:.0%} of tonight's plates lie outside the training thickness range",
                "a new plate gauge on the line",
                f"verify {budget} plates of the new gauge and retrain",
            )
        )
    if composition is not None and composition.detected:
        moved = ", ".join(
            f"{a} (T²={composition.t2[a]:.1f} on {composition.tested[a]} plates, p={composition.p_values[a]:.1g})"
            for a in composition.shifted
        )
        out.append(
            Alarm(
                "composition",
                (
                    f"the plates the line called {moved} and the lab confirmed differ from the training plates "
                    "the champion calls the same "
                    if composition.stage == "second"
                    else f"the verified plates of {moved} differ from the training plates of the same alloy "
                )
                + f"(Hotelling T² per alloy after thickness, Bonferroni at {composition.alpha:g}"
                + (f"; the last {composition.window} night(s)" if composition.window else "")
                + ")",
                "a supplier's composition moved within the standard",
                f"verify {budget} more plates of {', '.join(composition.shifted)} and retrain with the new labels",
            )
        )
    return out
