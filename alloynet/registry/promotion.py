"""The promotion rule: when does a challenger replace the champion?

A challenger must beat the champion on the primary metric (balanced accuracy on the frozen, balanced test
set) by a margin, and must not buy that with the classes that matter most in a long-tailed problem (recall
of the tail classes) or with the regression head (thickness error). Every check produces a sentence, so
the flow's log and the registry event say exactly why a model was or was not promoted.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class PromotionRule(BaseModel):
    model_config = ConfigDict(extra="forbid")

    primary_metric: str = "balanced_accuracy"
    min_margin: float = Field(0.01, ge=0, description="the challenger must win by at least this much")
    max_tail_recall_drop: float = Field(0.05, ge=0, description="per tail class, recall may drop at most this much")
    max_thickness_mae_increase_mm: float = Field(0.05, ge=0, description="thickness MAE may rise at most this much")
    tail_fraction: float = Field(1 / 3, gt=0, le=1, description="the rarest fraction of classes (by train count)")
    min_primary: float = Field(0.0, ge=0, le=1, description="floor for the first champion, when there is none")


@dataclass
class Decision:
    promote: bool
    challenger: str
    champion: str | None
    reasons: list[str] = field(default_factory=list)
    deltas: dict[str, float] = field(default_factory=dict)

    def summary(self) -> str:
        verdict = "PROMOTE" if self.promote else "KEEP champion"
        vs = f" over {self.champion}" if self.champion else ""
        return f"{verdict}: {self.challenger}{vs}. " + " ".join(self.reasons)


def tail_classes(manifest, fraction: float = 1 / 3) -> list[str]:
    """The rarest ``fraction`` of classes by number of training captures (at least one class)."""
    train = manifest[(manifest.split == "train") & manifest.labelled.astype(bool)]
    counts = train.groupby("alloy").size().sort_values(kind="stable")
    n = max(1, int(round(fraction * len(counts))))
    return list(counts.index[:n])


def _num(x: Any) -> float:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return math.nan
    return v


def decide(
    challenger: Mapping[str, Any],
    champion: Mapping[str, Any] | None,
    rule: PromotionRule,
    tail: Sequence[str],
    challenger_name: str = "challenger",
    champion_name: str | None = None,
) -> Decision:
    """Apply ``rule`` to two metric dicts (as returned by ``alloynet.evaluate.evaluate``)."""
    d = Decision(False, challenger_name, champion_name if champion is not None else None)
    m = rule.primary_metric
    new = _num(challenger.get(m))
    if math.isnan(new):
        d.reasons.append(f"challenger has no {m}; not promoted.")
        return d
    if champion is None:
        d.promote = new >= rule.min_primary
        d.reasons.append(
            f"no champion yet; {m} {new:.4f} " + (">=" if d.promote else "<") + f" floor {rule.min_primary:.4f}."
        )
        return d
    old = _num(champion.get(m))
    d.deltas[m] = new - old
    ok = True
    if not math.isnan(old) and new < old + rule.min_margin:
        ok = False
        d.reasons.append(f"{m} {new:.4f} vs champion {old:.4f}: does not win by the margin {rule.min_margin:g}.")
    else:
        d.reasons.append(f"{m} {new:.4f} vs champion {old:.4f}: wins by {new - (0 if math.isnan(old) else old):+.4f}.")
    per_new, per_old = challenger.get("per_class") or {}, champion.get("per_class") or {}
    for cls in tail:
        r_new, r_old = _num(per_new.get(cls, {}).get("recall")), _num(per_old.get(cls, {}).get("recall"))
        if math.isnan(r_old):
            continue
        d.deltas[f"recall/{cls}"] = r_new - r_old if not math.isnan(r_new) else math.nan
        if math.isnan(r_new) or r_new < r_old - rule.max_tail_recall_drop:
            ok = False
            d.reasons.append(
                f"tail class {cls}: recall {r_new:.3f} vs {r_old:.3f} drops more than {rule.max_tail_recall_drop:g}."
            )
    t_new, t_old = _num(challenger.get("thickness_mae_mm")), _num(champion.get("thickness_mae_mm"))
    if not math.isnan(t_old):
        d.deltas["thickness_mae_mm"] = t_new - t_old if not math.isnan(t_new) else math.nan
        if math.isnan(t_new) or t_new > t_old + rule.max_thickness_mae_increase_mm:
            ok = False
            d.reasons.append(
                f"thickness MAE {t_new:.3f} mm vs {t_old:.3f} mm rises more than "
                f"{rule.max_thickness_mae_increase_mm:g} mm."
            )
    if ok:
        d.reasons.append(f"tail recall ({', '.join(tail) or 'none'}) and thickness error within limits.")
    d.promote = ok
    return d


def best_candidate(candidates: Mapping[str, Mapping[str, Any]], metric: str = "balanced_accuracy") -> str:
    """The candidate with the highest primary metric (ties: the first in order)."""
    if not candidates:
        raise ValueError("no candidates")
    return max(
        candidates,
        key=lambda k: _num(candidates[k].get(metric)) if not math.isnan(_num(candidates[k].get(metric))) else -math.inf,
    )
