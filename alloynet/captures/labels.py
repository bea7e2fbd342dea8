"""Labels are data with a history: corrections to a stored capture's labels, each one a recorded revision.

A capture's labels are its sidecar's ``truth.alloy``, ``truth.nominal_thickness_mm``, ``truth.thickness_mm``
and ``plate_id``. A correction (from a lab, from `alloynet data relabel`, later from lab verdicts) rewrites
the stored sidecar and appends a revision to ``labels/<capture_id>.json`` in the same store: who, why, when,
and each field's old and new value. The manifest is rebuilt from the sidecars, so it and the training data
follow; the image and its hash never change.

The revision is written before the sidecar. A writer killed between the two leaves a revision that the
sidecar does not show yet: the next ``relabel`` of that capture (or ``reconcile``) finishes it instead of
recording it again. Call ``relabel`` while holding the destination's ``writer_lock`` (as ingest does).

Ingest never applies a changed label by itself: a sidecar arriving with other labels for a stored capture is
quarantined as a conflict showing both values (``label_conflict``), unless it only repeats the labels the
capture had before a recorded relabel (a stale copy at the source).
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from alloynet.captures.format import Sidecar, parse_sidecar
from alloynet.captures.image import CaptureError
from alloynet.captures.layout import CAPTURE_ID_PATTERN, QUARANTINE, Quarantine, sidecar_key
from alloynet.captures.stores import ObjectMissing, ObjectStore, object_path

LABELS = "labels/"
LABEL_FIELDS = ("alloy", "plate_id", "nominal_thickness_mm", "thickness_mm")
_SIDECAR_FIELD = {
    "alloy": "truth.alloy",
    "plate_id": "plate_id",
    "nominal_thickness_mm": "truth.nominal_thickness_mm",
    "thickness_mm": "truth.thickness_mm",
}
CSV_COLUMNS = ("capture_id", "field", "value", "who", "why")


class LabelConflict(CaptureError):
    """A sidecar for a stored capture (same image) with other labels: quarantined, both values shown."""


@dataclass(frozen=True)
class Correction:
    """One field of one capture set to a new value, by someone, for a reason."""

    capture_id: str
    field: str
    value: Any
    who: str
    why: str


@dataclass
class RelabelResult:
    applied: dict[str, int] = field(default_factory=dict)  # capture id -> the revision recorded
    unchanged: list[str] = field(default_factory=list)  # every value was already the one asked for
    finished: list[str] = field(default_factory=list)  # a revision a killed writer left half-done
    released: list[str] = field(default_factory=list)  # quarantined conflicts the relabel resolved

    def summary(self) -> str:
        return (
            f"{len(self.applied)} capture(s) relabelled, {len(self.unchanged)} already so"
            + (f", {len(self.finished)} interrupted revision(s) finished" if self.finished else "")
            + (f", {len(self.released)} conflict(s) released from quarantine" if self.released else "")
        )


def history_key(capture_id: str) -> str:
    return f"{LABELS}{capture_id}.json"


def label_values(sc: Sidecar) -> dict[str, Any]:
    """The capture's labels as the manifest sees them (None where unlabelled)."""
    t = sc.truth
    return {
        "alloy": t.alloy if t else None,
        "plate_id": sc.plate_id,
        "nominal_thickness_mm": t.nominal_thickness_mm if t else None,
        "thickness_mm": t.thickness_mm if t else None,
    }


def label_changes(old: Sidecar, new: Sidecar) -> dict[str, tuple[Any, Any]]:
    """field -> (old value, new value) for every label that differs."""
    a, b = label_values(old), label_values(new)
    return {f: (a[f], b[f]) for f in LABEL_FIELDS if not _same(a[f], b[f])}


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-12, abs_tol=0.0)
    return a == b


def describe_changes(changes: dict[str, tuple[Any, Any]], old_name: str = "stored", new_name: str = "new") -> str:
    return "; ".join(f"{_SIDECAR_FIELD[f]}: {old_name} {o!r}, {new_name} {n!r}" for f, (o, n) in changes.items())


def history(store: ObjectStore, capture_id: str) -> list[dict]:
    """The capture's recorded revisions, oldest first (empty: never relabelled)."""
    try:
        body = json.loads(store.get(history_key(capture_id)))
    except ObjectMissing:
        return []
    except ValueError as exc:
        where = object_path(store, history_key(capture_id))
        raise CaptureError(where, "revisions", f"not valid JSON ({exc})") from None
    return list(body.get("revisions", []))


def original_labels(store: ObjectStore, capture_id: str) -> dict[str, Any] | None:
    """The labels the capture had when ingested, before any recorded revision (None: never relabelled)."""
    revs = history(store, capture_id)
    if not revs:
        return None
    first: dict[str, Any] = {}
    for rev in revs:
        for f, (old, _new) in rev["changes"].items():
            first.setdefault(f, old)
    return first


def label_conflict(store: ObjectStore, stored: Sidecar, incoming: Sidecar, where: str) -> LabelConflict | None:
    """The error that quarantines ``incoming`` when it changes a stored capture's labels; None when the
    labels agree, or when ``incoming`` only repeats what a recorded relabel replaced."""
    changes = label_changes(stored, incoming)
    if not changes:
        return None
    original = original_labels(store, stored.capture_id)
    if original is not None:
        incoming_values = label_values(incoming)
        before = {**label_values(stored), **original}
        if all(_same(before[f], incoming_values[f]) for f in LABEL_FIELDS):
            return None  # a stale copy of the labels from before the relabel
    first = next(iter(changes))
    return LabelConflict(
        where,
        _SIDECAR_FIELD[first],
        f"label conflict with the stored capture {stored.capture_id!r} ({describe_changes(changes)}); "
        "the stored labels are kept: to change them, record a relabel (`alloynet data relabel`)",
    )


def _parse_value(fld: str, raw: Any, where: str) -> Any:
    if fld not in LABEL_FIELDS:
        raise CaptureError(where, "field", f"{fld!r} is not a label; expected one of {', '.join(LABEL_FIELDS)}")
    if fld in ("nominal_thickness_mm", "thickness_mm"):
        try:
            mm = float(raw)
        except (TypeError, ValueError):
            raise CaptureError(where, "value", f"{fld} must be a number of millimetres, got {raw!r}") from None
        if not math.isfinite(mm) or mm <= 0:
            raise CaptureError(where, "value", f"{fld} must be > 0 mm, got {raw!r}")
        return mm
    text = str(raw).strip()
    if not text:
        raise CaptureError(where, "value", f"{fld} must not be empty")
    return text


def _relabelled(sc: Sidecar, values: dict[str, Any], where: str) -> Sidecar:
    """``sc`` with its labels set to ``values`` (validated as any sidecar would be)."""
    raw = json.loads(sc.model_dump_json())
    if "plate_id" in values:
        raw["plate_id"] = values["plate_id"]
    truth_values = {f: v for f, v in values.items() if f != "plate_id"}
    if truth_values:
        if raw.get("truth") is None:
            if "alloy" not in truth_values or "nominal_thickness_mm" not in truth_values:
                raise CaptureError(
                    where,
                    "truth",
                    f"{sc.capture_id!r} is unlabelled: set alloy and nominal_thickness_mm together to label it",
                )
            raw["truth"] = {}
        raw["truth"].update(truth_values)
    try:
        return Sidecar.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        raise CaptureError(
            where, ".".join(str(p) for p in err["loc"]) or "truth", err["msg"].removeprefix("Value error, ")
        ) from None


def _write_history(store: ObjectStore, capture_id: str, revisions: list[dict]) -> None:
    body = {"capture_id": capture_id, "revisions": revisions}
    store.put(history_key(capture_id), json.dumps(body, indent=1).encode(), overwrite=True)


def reconcile(store: ObjectStore, capture_id: str) -> bool:
    """Finish the last revision if its writer died before rewriting the sidecar; True if it did."""
    revs = history(store, capture_id)
    if not revs:
        return False
    skey = sidecar_key(capture_id)
    sc = parse_sidecar(store.get(skey), object_path(store, skey))
    target = {f: new for f, (_old, new) in revs[-1]["changes"].items()}
    now = label_values(sc)
    if all(_same(now[f], v) for f, v in target.items()):
        return False
    store.put(
        skey, _relabelled(sc, target, object_path(store, skey)).model_dump_json(indent=1).encode(), overwrite=True
    )
    return True


def relabel(store: ObjectStore, corrections: Iterable[Correction], *, source: str = "relabel") -> RelabelResult:
    """Apply ``corrections`` to the stored captures: one revision per capture (all its corrections together).

    Everything is checked first (the capture exists, the field is a label, the value is valid, the result is a
    valid sidecar); a bad correction raises ``CaptureError`` naming it and nothing is written. Hold the
    store's ``writer_lock`` while calling this."""
    import re

    by_capture: dict[str, list[Correction]] = {}
    for c in corrections:
        by_capture.setdefault(c.capture_id, []).append(c)
    result = RelabelResult()
    plans = []
    for cid, cs in by_capture.items():
        skey = sidecar_key(cid)
        where = object_path(store, skey)
        if not re.fullmatch(CAPTURE_ID_PATTERN, cid):
            raise CaptureError(where, "capture_id", f"{cid!r} is not a capture id")
        if reconcile(store, cid):
            result.finished.append(cid)
        try:
            sc = parse_sidecar(store.get(skey), where)
        except ObjectMissing:
            raise CaptureError(where, "capture_id", f"no stored capture {cid!r}") from None
        values = {}
        for c in cs:
            if not c.who.strip() or not c.why.strip():
                raise CaptureError(where, c.field, "a correction needs who made it and why")
            values[c.field] = _parse_value(c.field, c.value, where)
        new = _relabelled(sc, values, where)
        changes = label_changes(sc, new)
        if not changes:
            result.unchanged.append(cid)
            continue
        plans.append((cid, sc, new, changes, cs))
    for cid, _sc, new, changes, cs in plans:
        revs = history(store, cid)
        rev: dict[str, Any] = {
            "revision": len(revs) + 1,
            "at": datetime.now(timezone.utc).isoformat(),
            "who": "; ".join(sorted({c.who for c in cs})),
            "why": "; ".join(dict.fromkeys(c.why for c in cs)),
            "source": source,
            "changes": {f: [o, n] for f, (o, n) in changes.items()},
        }
        _write_history(store, cid, revs + [rev])  # first: a sidecar never changes without its revision
        store.put(sidecar_key(cid), new.model_dump_json(indent=1).encode(), overwrite=True)
        result.applied[cid] = rev["revision"]
    result.released = _release_resolved(store, set(by_capture))
    return result


def _release_resolved(store: ObjectStore, capture_ids: set[str]) -> list[str]:
    """Quarantined label conflicts of these captures whose labels the store now has (the relabel took them)."""
    if not any(True for _ in store.list(QUARANTINE)):
        return []
    q = Quarantine(store)
    released = []
    for entry in q.entries():
        cid = entry.get("capture_id")
        if entry.get("kind") != "label-conflict" or cid not in capture_ids:
            continue
        try:
            theirs = parse_sidecar(store.get(f"{entry['folder']}{cid}.json"))
            ours = parse_sidecar(store.get(sidecar_key(cid)))
        except (ObjectMissing, CaptureError):
            continue
        if not label_changes(ours, theirs):
            released.append(q.release(entry["source"]))
    return [r for r in released if r]


def read_corrections(path: str | Path) -> list[Correction]:
    """A CSV of corrections with the header capture_id,field,value,who,why; errors name the row and column."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise CaptureError(str(path), "file", f"cannot be read ({exc})") from None
    reader = csv.DictReader(text.splitlines())
    missing = [c for c in CSV_COLUMNS if c not in (reader.fieldnames or [])]
    if missing:
        raise CaptureError(str(path), "header", f"missing column(s) {missing}; expected {', '.join(CSV_COLUMNS)}")
    out = []
    for i, row in enumerate(reader, start=2):
        where = f"{path}:{i}"
        if any(row.get(c) in (None, "") for c in CSV_COLUMNS):
            empty = [c for c in CSV_COLUMNS if row.get(c) in (None, "")]
            raise CaptureError(where, empty[0], "empty; every correction needs capture_id, field, value, who, why")
        fld = row["field"].strip()
        _parse_value(fld, row["value"], where)
        out.append(Correction(row["capture_id"].strip(), fld, row["value"], row["who"].strip(), row["why"].strip()))
    if not out:
        raise CaptureError(str(path), "rows", "no corrections in the file")
    return out
