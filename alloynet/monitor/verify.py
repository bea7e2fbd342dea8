"""What the lab should verify next, and bringing its verdicts back as labels.

Each night's list, within a daily budget: a random sample of the night's line captures (half the budget by
default: the unbiased estimate of live accuracy rests on these alone) and the captures that would teach the
model most (an ambiguous prediction set, low confidence, flags, a profile far from the training data). The
list is a CSV for the lab, with empty columns for its verdict, and is kept in the store
(``line/verify/<day>.json``) so a verdict that comes back later is known to have been a random pick or not.

``import_verdicts`` reads the lab's filled-in CSV and applies each verdict as a recorded relabel
(``alloynet.captures.labels.relabel``: who, when, method, old and new value in the capture's history); the
captures are training data from the next manifest refresh on.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np

from alloynet.captures.image import CaptureError
from alloynet.captures.labels import Correction
from alloynet.captures.stores import ObjectMissing, ObjectStore

VERIFY = "line/verify/"
LIST_COLUMNS = ("capture_id", "image_sha256", "plate_id", "pick", "why", "predicted", "prediction_set", "flags")
VERDICT_COLUMNS = ("alloy", "nominal_thickness_mm", "thickness_mm", "who", "method", "verified_at")
REQUIRED_VERDICT = ("capture_id", "alloy", "who", "method")


def informativeness(c: dict[str, Any]) -> float:
    """Higher = more to learn: an ambiguous set, low confidence, flags, a profile unlike training."""
    return (
        max(0, len(c.get("prediction_set") or []) - 1)
        + (1.0 - float(c.get("confidence") or 0.0))
        + 0.5 * len(c.get("flags") or [])
        + min(float(c.get("drift_score") or 0.0) / 3.0, 2.0)
    )


def _why(c: dict[str, Any]) -> str:
    parts = []
    if len(c.get("prediction_set") or []) > 1:
        parts.append(f"set of {len(c['prediction_set'])}")
    if float(c.get("confidence") or 0) < 0.7:
        parts.append(f"confidence {float(c.get('confidence') or 0):.2f}")
    if c.get("flags"):
        parts.append("flags " + "+".join(c["flags"]))
    if float(c.get("drift_score") or 0) >= 3:
        parts.append(f"profile {float(c['drift_score']):.1f} sd from training")
    return ", ".join(parts) or "most informative left"


def propose(
    candidates: Sequence[dict[str, Any]],
    budget: int = 10,
    random_share: float = 0.5,
    seed: int = 0,
    day: date | None = None,
    focus: dict[str, int] | None = None,
) -> list[dict[str, Any]]:
    """The night's list: ceil(budget * random_share) picked uniformly at random (seeded by ``seed`` and the
    day), the rest the most informative of the others. Each row: LIST_COLUMNS.

    ``focus`` (alloy -> plates): the second stage of the composition test. That many of the captures the line
    called that alloy are drawn at random among them (pick ``focus``), out of the same budget: they take the
    informative places first, then random ones. They are drawn at random among the alloy's calls, never by
    their profile, so that together with the random picks the line called that alloy they are a random sample
    of the alloy's calls, which the test compares with training plates selected by the same rule
    (``composition.fit_reference_called``)."""
    if budget < 0 or not 0.0 <= random_share <= 1.0:
        raise ValueError(f"budget must be >= 0 and random_share in [0, 1], got {budget}, {random_share}")
    if any(k < 0 for k in (focus or {}).values()):
        raise ValueError(f"focus: plates per alloy must be >= 0, got {focus}")
    rng = np.random.default_rng([seed, (day or date.today()).toordinal()])
    n = len(candidates)
    n_focus = min(budget, sum((focus or {}).values()))
    n_random = min(n, math.ceil(budget * random_share), budget - n_focus)
    random_idx = [int(i) for i in rng.choice(n, size=n_random, replace=False)] if n_random else []
    taken = set(random_idx)
    focus_idx: list[tuple[int, str]] = []
    for alloy, k in sorted((focus or {}).items()):
        k = min(k, n_focus - len(focus_idx))
        pool = [i for i in range(n) if i not in taken and candidates[i].get("alloy") == alloy]
        drawn = [pool[int(j)] for j in rng.choice(len(pool), size=min(k, len(pool)), replace=False)] if k else []
        focus_idx += [(i, alloy) for i in drawn]
        taken |= set(drawn)
    rest = sorted(
        (i for i in range(n) if i not in taken),
        key=lambda i: (-informativeness(candidates[i]), str(candidates[i].get("capture_id"))),
    )
    chosen = [(i, "random", "random sample (live accuracy)") for i in random_idx]
    chosen += [(i, "focus", f"second stage: {a} suspected of a composition shift") for i, a in focus_idx]
    chosen += [(i, "informative", _why(candidates[i])) for i in rest[: max(0, budget - len(chosen))]]
    rows = []
    for i, pick, why in chosen:
        c = candidates[i]
        rows.append(
            {
                "capture_id": c.get("capture_id", ""),
                "image_sha256": c.get("image_sha256", ""),
                "plate_id": c.get("plate_id") or "",
                "pick": pick,
                "why": why,
                "predicted": c.get("alloy", ""),
                "prediction_set": " ".join(c.get("prediction_set") or []),
                "flags": " ".join(c.get("flags") or []),
            }
        )
    return rows


def to_csv(rows: Sequence[dict[str, Any]]) -> str:
    """The list as the lab gets it: the proposal's columns, then empty columns for the verdict."""
    out = io.StringIO()
    w = csv.DictWriter(out, fieldnames=list(LIST_COLUMNS + VERDICT_COLUMNS), lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({**{k: "" for k in VERDICT_COLUMNS}, **{k: r.get(k, "") for k in LIST_COLUMNS}})
    return out.getvalue()


def save_list(store: ObjectStore, day: date, rows: Sequence[dict[str, Any]]) -> str:
    key = f"{VERIFY}{day.isoformat()}.json"
    store.put(key, json.dumps({"day": day.isoformat(), "rows": list(rows)}, indent=1).encode(), overwrite=True)
    store.put(f"{VERIFY}{day.isoformat()}.csv", to_csv(rows).encode(), overwrite=True)
    return key


def saved_list(store: ObjectStore, day: date) -> list[dict[str, Any]] | None:
    """The list already proposed for ``day``, if any."""
    try:
        return list(json.loads(store.get(f"{VERIFY}{day.isoformat()}.json"))["rows"])
    except ObjectMissing:
        return None


def picks(store: ObjectStore) -> dict[str, str]:
    """capture id -> how it was picked ("random" wins over "focus" and "informative" if both), over every night's
    list."""
    out: dict[str, str] = {}
    for info in store.list(VERIFY):
        if not info.key.endswith(".json"):
            continue
        try:
            rows = json.loads(store.get(info.key))["rows"]
        except (ObjectMissing, ValueError, KeyError):
            continue
        for r in rows:
            if out.get(r["capture_id"]) != "random":
                out[r["capture_id"]] = r["pick"]
    return out


@dataclass
class Verdict:
    capture_id: str
    alloy: str
    who: str
    method: str
    verified_at: str = ""
    nominal_thickness_mm: str = ""
    thickness_mm: str = ""

    def corrections(self) -> list[Correction]:
        why = f"lab verdict ({self.method}{', ' + self.verified_at if self.verified_at else ''})"
        out = [Correction(self.capture_id, "alloy", self.alloy, self.who, why)]
        for fld in ("nominal_thickness_mm", "thickness_mm"):
            if getattr(self, fld):
                out.append(Correction(self.capture_id, fld, getattr(self, fld), self.who, why))
        return out


def read_verdicts(path: str | Path) -> tuple[list[Verdict], list[str]]:
    """The lab's CSV: (verdicts, capture ids left without a verdict). Needs the columns capture_id, alloy, who,
    method (nominal_thickness_mm, thickness_mm, verified_at optional); a row with an empty alloy was not
    verified and is listed, not applied; errors name the file, row and column."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise CaptureError(str(path), "file", f"cannot be read ({exc})") from None
    reader = csv.DictReader(text.splitlines())
    missing = [c for c in REQUIRED_VERDICT if c not in (reader.fieldnames or [])]
    if missing:
        raise CaptureError(
            str(path), "header", f"missing column(s) {missing}; expected at least {', '.join(REQUIRED_VERDICT)}"
        )
    verdicts, open_ = [], []
    for i, row in enumerate(reader, start=2):
        where = f"{path}:{i}"
        cid = (row.get("capture_id") or "").strip()
        if not cid:
            raise CaptureError(where, "capture_id", "empty")
        if not (row.get("alloy") or "").strip():
            open_.append(cid)
            continue
        for col in ("who", "method"):
            if not (row.get(col) or "").strip():
                raise CaptureError(
                    where, col, "empty; a verdict needs who verified it and by which method (e.g. XRF, OES)"
                )
        verdicts.append(
            Verdict(
                cid,
                row["alloy"].strip(),
                row["who"].strip(),
                row["method"].strip(),
                (row.get("verified_at") or "").strip(),
                (row.get("nominal_thickness_mm") or "").strip(),
                (row.get("thickness_mm") or "").strip(),
            )
        )
    return verdicts, open_


def import_verdicts(store: ObjectStore, verdicts: Sequence[Verdict], source: str = "alloynet label import"):
    """Apply the verdicts as recorded relabels (``relabel``'s result). Hold the store's writer_lock."""
    from alloynet.captures.labels import relabel

    return relabel(store, [c for v in verdicts for c in v.corrections()], source=source)
