"""Reference captures beside a lab's plates, from which `alloynet rig fit` fits the rig:

    ROOT/reference/dark/*.tif          dark frames (no beam), one per session
    ROOT/reference/flat/*.tif          open-beam frames (no wedge, no plate), one per session; open/ is the same
    ROOT/reference/wedge-50mm/*.tif    the wedge alone (no plate), at that wedge size
    ROOT/reference/Al1050-2mm/*.tif    captures of one plate of a known alloy at a known (micrometer) thickness,
                                       on the wedge (Al1050-2mm-B for a second plate of that thickness)

or, in a labels CSV, rows whose ``role`` column says ``dark``, ``flat`` (``open``), ``wedge`` (with its
``wedge_mm``) or ``reference`` (with ``alloy`` and ``thickness_mm``).

Sessions: the i-th dark and the i-th flat (by file name, or by CSV row order) make session i; a folder with
one frame lends it to every session. The i-th wedge-alone frame of each size, and the i-th capture of each
reference plate, belong to session i (modulo the number of sessions). Without dark/flat frames, each file's
dark and flat are found as a plate's are (a CSV value, a dark.tif/flat.tif above it, the levels given).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from alloynet.captures.importing.plan import (
    FOREIGN_IMAGES,
    IMAGE_SUFFIXES,
    Reject,
    SourceFile,
    foreign_rejects,
    number,
    resolve_alloy,
    unknown_alloy,
)
from alloynet.physics.alloys import STANDARD_ALLOYS, AlloyTable

FRAME_FOLDERS = {"dark": "dark", "flat": "flat", "open": "flat", "open-beam": "flat", "open_beam": "flat"}
_WEDGE = re.compile(r"^wedge[-_ ]?(?P<mm>[0-9]+(?:\.[0-9]+)?)\s*mm$", re.I)
_PLATE = re.compile(
    r"^(?P<alloy>[A-Za-z]*[0-9]+[A-Za-z0-9]*)[-_ ](?P<mm>[0-9]+(?:\.[0-9]+)?)\s*mm(?:[-_ ](?P<tag>.+))?$", re.I
)
FOLDER_FIX = (
    "name reference folders dark, flat (or open), wedge-<mm>mm (the wedge alone) or <alloy>-<mm>mm "
    "(a plate of a known alloy and thickness, e.g. Al1050-2mm)"
)


@dataclass
class ReferenceFrames:
    """Calibration frames of the reference captures: per kind, in session order."""

    darks: list[Path] = field(default_factory=list)
    flats: list[Path] = field(default_factory=list)
    wedges: dict[float, list[Path]] = field(default_factory=dict)
    where: dict[Path, str] = field(default_factory=dict)  # "labels.csv line 4: " for CSV rows
    given: dict[Path, dict] = field(default_factory=dict)  # a CSV row's dark/flat for its frame

    def __bool__(self) -> bool:
        return bool(self.darks or self.flats or self.wedges)

    @property
    def paths(self) -> list[Path]:
        return [*self.darks, *self.flats, *(p for ps in self.wedges.values() for p in ps)]


def _images(folder: Path, listed: set[Path]) -> tuple[list[Path], list[Path], list[Path]]:
    """(images, foreign images, other files) directly in ``folder``, by name."""
    images: list[Path] = []
    foreign: list[Path] = []
    others: list[Path] = []
    for p in sorted(folder.rglob("*")):
        if not p.is_file() or p in listed:
            continue
        suffix = p.suffix.lower()
        (images if suffix in IMAGE_SUFFIXES else foreign if suffix in FOREIGN_IMAGES else others).append(p)
    return images, foreign, others


def plan_reference_folder(
    root: Path, folder: Path, listed: set[Path], alloys: AlloyTable = STANDARD_ALLOYS
) -> tuple[ReferenceFrames, list[SourceFile], list[Reject], list[Path]]:
    """(frames, reference plates, rejects, skipped non-image files) of ROOT/reference/; files the labels CSV
    lists (``listed``) are the CSV's."""
    frames, plates, rejects, skipped = ReferenceFrames(), [], [], []
    for p in sorted(folder.iterdir()):
        if p.is_file():
            if p in listed:
                continue
            if p.suffix.lower() in IMAGE_SUFFIXES or p.suffix.lower() in FOREIGN_IMAGES:
                rejects.append(Reject(str(p), "reference image outside a reference folder", fix=FOLDER_FIX))
            else:
                skipped.append(p)
            continue
        images, foreign, others = _images(p, listed)
        rejects += foreign_rejects(foreign)
        skipped += others
        kind, wedge, plate = FRAME_FOLDERS.get(p.name.lower()), _WEDGE.match(p.name), _PLATE.match(p.name)
        if kind:
            getattr(frames, kind + "s").extend(images)
        elif wedge:
            frames.wedges.setdefault(float(wedge["mm"]), []).extend(images)
        elif plate and resolve_alloy(plate["alloy"], alloys):
            t, alloy = float(plate["mm"]), str(resolve_alloy(plate["alloy"], alloys))
            pid = f"reference-{alloy}-{t:g}mm" + (f"-{plate['tag']}" if plate["tag"] else "")
            plates += [
                SourceFile(x, x.relative_to(root).as_posix(), alloy, thickness_mm=t, plate_id=pid, role="reference")
                for x in images
            ]
        elif plate:
            r = unknown_alloy(plate["alloy"], "reference alloy", alloys)
            rejects += [Reject(str(x), r.problem, r.detail, r.fix) for x in images]
        else:
            rejects += [Reject(str(x), "unknown reference folder", repr(p.name), FOLDER_FIX) for x in images]
    return frames, plates, rejects, skipped


def csv_reference_frames(
    items: list[SourceFile], settings_wedge: float | None
) -> tuple[ReferenceFrames, list[SourceFile], list[Reject]]:
    """Rows of a labels CSV whose role is dark, flat/open or wedge become reference frames; the rest stay."""
    frames, keep, rejects = ReferenceFrames(), [], []
    for item in items:
        if item.role in ("plate", "reference"):
            keep.append(item)
            continue
        frames.where[item.path] = item.where
        frames.given[item.path] = {"dark": item.dark, "flat": item.flat}
        if item.role == "wedge":
            w = item.rig.get("wedge_mm", settings_wedge)
            if w is None:
                rejects.append(
                    Reject(
                        str(item.path),
                        "wedge-alone frame without its wedge size",
                        item.where.rstrip(": "),
                        "a wedge_mm column in the CSV, or --wedge-mm",
                    )
                )
            else:
                frames.wedges.setdefault(number(str(w), "wedge_mm"), []).append(item.path)
        else:
            getattr(frames, FRAME_FOLDERS[item.role] + "s").append(item.path)
    return frames, keep, rejects


def merge(a: ReferenceFrames, b: ReferenceFrames) -> ReferenceFrames:
    wedges = {w: a.wedges.get(w, []) + b.wedges.get(w, []) for w in sorted({*a.wedges, *b.wedges})}
    return ReferenceFrames(a.darks + b.darks, a.flats + b.flats, wedges, {**a.where, **b.where}, {**a.given, **b.given})


def session_count(frames: ReferenceFrames) -> tuple[int, str | None]:
    """(sessions given by the dark/flat frames, or 0 when there are none; a problem with their counts)."""
    nd, nf = len(frames.darks), len(frames.flats)
    n = max(nd, nf)
    if nd > 1 and nf > 1 and nd != nf:
        return 0, (
            f"{nd} dark and {nf} flat frames: each session needs one of each (the i-th dark goes with the "
            "i-th flat), or one frame of a kind for every session"
        )
    return n, None
