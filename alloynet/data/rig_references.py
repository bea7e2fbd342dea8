"""Reference captures of a rig, read from a capture store, and the rig fit they give (``alloynet rig fit``).

What a lab makes (``alloynet import`` stores it in this layout)::

    calibration/<session>/dark.png|tiff      a dark frame per session (no beam)
    calibration/<session>/flat.png|tiff      an open-beam frame per session (no wedge, no plate)
    calibration/<session>/wedge-<mm>mm.*     the wedge alone, no plate, in that session's beam
    captures/<id>.json + image               plates of a known alloy at known (measured) thicknesses

Frames of every session go into the detector measurement; the wedge-alone frames (with their session's dark
and flat levels) and the plates' captures (with their own) are the references the beam is fitted to. Plates
of the middle thickness (when there are three or more) are held out of the fit and predicted afterwards.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Literal

import numpy as np

from alloynet.captures.format import make_sidecar, parse_sidecar
from alloynet.captures.image import CaptureError, decode_image, encode_image
from alloynet.captures.layout import CAPTURES, sidecar_key, write_capture
from alloynet.captures.stores import ObjectStore
from alloynet.data.manifest import scan_store
from alloynet.physics.alloys import sample_plate
from alloynet.physics.detector import (
    DetectorMeasurement,
    RigFitError,
    capture_profile,
    detector_from_levels,
    measure_detector,
)
from alloynet.physics.measure import frame_level
from alloynet.physics.rig_fit import (
    DEFAULT_FIT,
    MAX_HOLDOUT_CHI2,
    MAX_MISFIT_RMS,
    Reference,
    RigFit,
    check_fit,
    check_references,
    fit_rig,
)
from alloynet.physics.rig_profile import RigProfile
from alloynet.physics.second_rig import NOMINAL_FIELDS, SecondRig, SecondRigConfig
from alloynet.physics.simulator import RigConfig, RigSimulator

CALIBRATION = "calibration/"
REFERENCE_SOURCE = "reference"  # a reference plate's sidecar source starts with it (``alloynet import`` writes it)
_OBJECT = re.compile(
    r"^calibration/(?P<session>[^/]+)/(?:(?P<frame>dark|flat)\.(?:png|tiff?)|(?P<levels>levels)\.json|"
    r"wedge-(?P<wedge>[0-9.]+)mm(?:-[0-9a-z]+)?\.(?:png|tiff?))$"
)
WHY_WEDGE = "the wedge alone separates the beam (tube voltage, filtration, scatter) from the plates' composition"
WHY_PLATES = (
    "plates of one known alloy at two or more thicknesses give the hardening curve; a third thickness is "
    "held out to check the fit"
)
WHY_LEVELS = (
    "dark and flat levels turn every frame into transmission; frames (not only levels) in two sessions or "
    "more also give the panel's noise, column pattern and dose"
)


@dataclass
class ReferenceSet:
    nominal: RigConfig
    detector: DetectorMeasurement
    fit: list[Reference]
    holdout: list[Reference]
    sessions: int
    captures: int
    skipped: list[str] = field(default_factory=list)  # "key: reason" for frames/captures that could not be used


@dataclass
class _Session:
    frames: dict[str, str] = field(default_factory=dict)  # "dark"/"flat" -> key
    levels: str | None = None  # key of levels.json
    wedges: dict[float, list[str]] = field(default_factory=dict)


def _sessions(store: ObjectStore) -> dict[str, _Session]:
    out: dict[str, _Session] = {}
    for info in store.list(CALIBRATION):
        m = _OBJECT.match(info.key)
        if not m:
            continue
        s = out.setdefault(m["session"], _Session())
        if m["frame"]:
            s.frames[m["frame"]] = info.key
        elif m["levels"]:
            s.levels = info.key
        else:
            s.wedges.setdefault(float(m["wedge"]), []).append(info.key)
    return out


def nominal_rig(store: ObjectStore, capture_id: str) -> RigConfig:
    """The nominal rig a capture's sidecar records (the lab's settings), at its image size."""
    sc = parse_sidecar(store.get(sidecar_key(capture_id)))
    r = sc.rig
    extra = {k: v for k, v in (r.model_extra or {}).items() if k in RigConfig.model_fields}
    return RigConfig(
        kvp=r.kvp,
        tube_current_ua=r.tube_current_ua,
        anode_angle_deg=r.anode_angle_deg,
        filtration_mm_al=r.filtration_mm_al,
        wedge_mm=r.wedge_mm,
        wedge_min_mm=r.wedge_min_mm,
        wedge_material=r.wedge_material,
        height=sc.image.shape[1],
        width=sc.image.shape[2],
        **({"dose": r.dose} if r.dose else {}),
        **extra,
    )


def _levels_of(store: ObjectStore, key: str) -> tuple[list[float], list[float]]:
    raw = json.loads(store.get(key))
    try:
        dark, flat = [float(v) for v in raw["dark_adu"]], [float(v) for v in raw["flat_adu"]]
    except (KeyError, TypeError, ValueError):
        raise CaptureError(key, "levels", 'expected {"dark_adu": [...], "flat_adu": [...]}') from None
    return dark, flat


def _read_sessions(
    store: ObjectStore, skipped: list[str]
) -> tuple[
    dict[str, dict[str, np.ndarray]],
    dict[str, tuple[list[float], list[float]]],
    dict[float, list[tuple[str, np.ndarray]]],
]:
    """(dark/flat frames per session that has both, levels per session, wedge-alone frames per wedge size with
    their session). A session's levels are its frames', else its levels.json."""
    frames: dict[str, dict[str, np.ndarray]] = {}
    levels: dict[str, tuple[list[float], list[float]]] = {}
    wedges: dict[float, list[tuple[str, np.ndarray]]] = {}
    for sid, s in sorted(_sessions(store).items()):
        try:
            if "dark" in s.frames and "flat" in s.frames:
                frames[sid] = {k: decode_image(store.get(key), key) for k, key in s.frames.items()}
                levels[sid] = (frame_level(frames[sid]["dark"]), frame_level(frames[sid]["flat"]))
            elif s.levels:
                levels[sid] = _levels_of(store, s.levels)
            elif s.frames or s.wedges:
                skipped.append(
                    f"calibration/{sid}/: {'no dark frame' if 'dark' not in s.frames else 'no flat frame'}"
                    f" and no levels.json; session not used"
                )
                continue
            for w, keys in s.wedges.items():
                wedges.setdefault(w, []).extend((sid, decode_image(store.get(k), k)) for k in sorted(keys))
        except (CaptureError, ValueError) as exc:
            frames.pop(sid, None)
            levels.pop(sid, None)
            skipped.append(f"calibration/{sid}/: {exc}; session not used")
    return frames, levels, wedges


def _reference_rows(store: ObjectStore, alloy: str | None):
    """Labelled captures that are references: those ``alloynet import`` took from reference/ (sidecar source
    ``reference ...``) where there are any, else every labelled capture (a store of references only)."""
    rows = scan_store(store)
    labelled = rows[rows.labelled & (rows.alloy != "")]
    marked = [
        cid
        for cid in labelled.capture_id
        if parse_sidecar(store.get(sidecar_key(cid))).source.startswith(REFERENCE_SOURCE + " ")
    ]
    if marked:
        labelled = labelled[labelled.capture_id.isin(marked)]
    if alloy:
        labelled = labelled[labelled.alloy == alloy]
    return labelled


def _plate_references(
    store: ObjectStore, labelled, shape: tuple | None, bins: int, skipped: list[str]
) -> tuple[list[Reference], int]:
    refs, n_caps = [], 0
    for (pid, w), group in labelled.groupby(["plate_id", "wedge_mm"], sort=True):
        profiles, ids = [], []
        for r in group.itertuples():
            try:
                img = decode_image(store.get(CAPTURES + r.image_file), r.image_file)
            except (CaptureError, KeyError) as exc:
                skipped.append(f"{r.capture_id}: {exc}")
                continue
            if shape is not None and img.shape != shape:
                skipped.append(f"{r.capture_id}: shape {img.shape}, the frames are {shape}; not used")
                continue
            dark, flat = _levels(r)
            profiles.append(capture_profile(img, dark, flat, bins))
            ids.append(r.capture_id)
        if profiles:
            t, t_nom = float(group.thickness_mm.mean()), float(group.nominal_thickness_mm.iloc[0])
            a = group.alloy.iloc[0]
            refs.append(
                Reference(
                    f"{a} {t_nom:g} mm {pid} ({w:g} mm wedge)",
                    "plate",
                    float(w),
                    np.stack(profiles),
                    alloy=a,
                    thickness_mm=t,
                    nominal_thickness_mm=t_nom,
                    plate_id=str(pid),
                    capture_ids=ids,
                )
            )
            n_caps += len(profiles)
    return refs, n_caps


def _levels(row) -> tuple[list[float], list[float]]:
    """(dark, flat) levels per channel of one manifest row (``;``-joined in the manifest)."""
    return [float(v) for v in str(row.dark_adu).split(";")], [float(v) for v in str(row.flat_adu).split(";")]


def _row_levels(rows) -> list[tuple[list[float], list[float]]]:
    return [_levels(r) for r in rows.itertuples()]


def _detector(
    frames: dict[str, dict[str, np.ndarray]], levels: dict, labelled, width: int, skipped: list[str]
) -> DetectorMeasurement | None:
    """Measured from the sessions' dark/flat frames where there are any, else from levels (the sessions' and the
    reference captures' sidecars'); None when there is neither."""
    if frames:
        shapes = Counter(d["dark"].shape for d in frames.values())
        shape = shapes.most_common(1)[0][0]
        for sid in [s for s, d in frames.items() if any(v.shape != shape for v in d.values())]:
            skipped.append(
                f"calibration/{sid}/: frames of shape {frames[sid]['dark'].shape}, most are {shape}; not used"
            )
            del frames[sid]
        return measure_detector(
            np.stack([d["dark"] for d in frames.values()]), np.stack([d["flat"] for d in frames.values()])
        )
    pairs = list(levels.values()) + _row_levels(labelled)
    if not pairs or len({len(d) for d, _ in pairs}) > 1:
        return None
    source = (
        ("the levels stored with the wedge-alone frames" if levels else "")
        + (" and " if levels and len(labelled) else "")
        + ("the reference captures' sidecars" if len(labelled) else "")
    )
    return detector_from_levels(np.array([d for d, _ in pairs]), np.array([f for _, f in pairs]), width, source)


def load_references(
    store: ObjectStore,
    alloy: str | None = None,
    rig: RigConfig | None = None,
    holdout_thickness: float | None = None,
    bins: int = 32,
    log: Callable[[str], None] | None = None,
) -> ReferenceSet:
    """Read every session's frames or levels and the reference captures of ``store`` (see the module doc).
    Raises ``RigFitError`` naming, in one message, every reference that is missing and why it is needed."""
    skipped: list[str] = []
    frames, levels, wedge_frames = _read_sessions(store, skipped)
    labelled = _reference_rows(store, alloy)
    missing = []
    ambiguous = labelled.alloy.nunique() > 1
    if ambiguous:
        missing.append(
            f"one reference alloy: the reference captures are of {', '.join(sorted(labelled.alloy.unique()))}"
            f"; say which is the reference (--alloy)"
        )
        labelled = labelled.iloc[:0]
    if rig is None and labelled.empty and not ambiguous:
        missing.append("the nominal settings: no labelled reference captures to read them from; give them (--rig YAML)")
    shapes = [d["dark"].shape for d in frames.values()] or [img.shape for ws in wedge_frames.values() for _, img in ws]
    shape = Counter(shapes).most_common(1)[0][0] if shapes else None
    if rig is None and not labelled.empty:
        rig = nominal_rig(store, labelled.capture_id.iloc[0])
    if shape is not None and rig is not None and (rig.height, rig.width) != shape[1:]:
        rig = rig.model_copy(update={"height": shape[1], "width": shape[2]})
    width = shape[2] if shape is not None else (rig.width if rig is not None else 0)
    detector = _detector(frames, levels, labelled, width, skipped) if width else None
    if detector is None:
        missing.append(
            f"dark and flat levels: no dark/flat frames under calibration/ (reference/dark/ and "
            f"reference/flat/ at import) and no levels with the references (--dark-level/--flat-level at "
            f"import); {WHY_LEVELS}"
        )
    wedge = {
        w: [
            capture_profile(img, *levels[sid], bins)
            for sid, img in ws
            if sid in levels and (shape is None or img.shape == shape)
        ]
        for w, ws in sorted(wedge_frames.items())
    }
    refs = [Reference(f"wedge alone {w:g} mm", "wedge", w, np.stack(p)) for w, p in wedge.items() if p]
    plates, n_caps = _plate_references(store, labelled, shape, bins, skipped)
    refs += plates
    try:
        fit, held = split_holdout(refs, holdout_thickness)
    except RigFitError as exc:
        missing.append(str(exc))
        fit, held = refs, []
    missing += [m for m in missing_references(fit) if not (ambiguous and m.startswith("plates"))]
    if missing:
        raise RigFitError(f"{store.uri}: missing references: " + "; ".join(missing))
    if log:
        log(
            f"{len(frames) or len(levels)} sessions of {'dark/flat frames' if frames else 'levels'}, "
            f"{sum(len(r.profiles) for r in refs if r.kind == 'wedge')} wedge-alone frames "
            f"({', '.join(f'{w:g}' for w in sorted(wedge)) or 'no'} mm wedge), {n_caps} plate captures "
            f"({sum(r.kind == 'plate' for r in refs)} plate x wedge), {len(held)} held out"
        )
    return ReferenceSet(rig, detector, fit, held, len(frames) or len(levels), n_caps, skipped)


def split_holdout(refs: Sequence[Reference], thickness: float | None = None) -> tuple[list[Reference], list[Reference]]:
    """(fit, held out): the plates of ``thickness`` (default: the middle one of three or more nominal
    thicknesses; with fewer, every fourth plate when there are four or more) are held out."""
    plates = [r for r in refs if r.kind == "plate"]
    values = sorted({r.nominal_thickness_mm for r in plates})
    if thickness is None and len(values) >= 3:
        thickness = values[len(values) // 2]
    if thickness is not None:
        if not any(abs(r.nominal_thickness_mm - thickness) < 1e-6 for r in plates):
            raise RigFitError(
                f"no reference plates of {thickness:g} mm to hold out (plates: "
                f"{', '.join(f'{v:g}' for v in values)} mm)"
            )
        held = [r for r in plates if abs(r.nominal_thickness_mm - thickness) < 1e-6]
    else:
        ids = sorted({r.plate_id for r in plates})
        held_ids = set(ids[3::4]) if len(ids) >= 4 else set()
        held = [r for r in plates if r.plate_id in held_ids]
    return [r for r in refs if r not in held], held


def missing_references(fit: Sequence[Reference]) -> list[str]:
    """What the fit needs and ``fit`` lacks, each named with the captures that supply it and why: the wedge alone
    and plates of a known alloy at two or more thicknesses."""
    out = []
    if not any(r.kind == "wedge" for r in fit):
        out.append(
            f"the wedge alone: frames of the wedge with no plate, one per session or more (reference/wedge-<mm>mm/ "
            f"at import; calibration/<session>/wedge-<mm>mm.png|tiff in the store); {WHY_WEDGE}"
        )
    thick = sorted({r.nominal_thickness_mm for r in fit if r.kind == "plate"})
    if len(thick) < 2:
        have = f"have {', '.join(f'{t:g}' for t in thick)} mm" if thick else "have none"
        out.append(
            f"plates of one known alloy at two or more thicknesses besides any held out ({have}; e.g. Al1050 at "
            f"1, 2 and 5 mm: reference/Al1050-1mm/ ... at import); {WHY_PLATES}"
        )
    return out


def fit_rig_to_references(
    store: ObjectStore,
    *,
    alloy: str | None = None,
    rig: RigConfig | None = None,
    params: Sequence[str] = DEFAULT_FIT,
    holdout_thickness: float | None = None,
    bins: int = 32,
    max_misfit: float = MAX_MISFIT_RMS,
    max_holdout_chi2: float = MAX_HOLDOUT_CHI2,
    check: bool = True,
    log: Callable[[str], None] | None = None,
) -> tuple[RigFit, RigProfile, ReferenceSet]:
    """Calibrate the simulator to the rig that took ``store``'s references; raises ``RigFitError`` with the
    reason when they cannot, or (``check``) when the fit is poor."""
    refs = load_references(store, alloy, rig, holdout_thickness, bins, log)
    missing = missing_references(refs.fit)
    if missing:
        raise RigFitError(f"{store.uri}: missing references: {'; '.join(missing)}")
    cal = fit_rig(refs.nominal, refs.fit, refs.detector, params, bins, log=log)
    cal.holdout = check_references(cal, refs.holdout) or None
    if check:
        check_fit(cal, max_misfit, max_holdout_chi2)
    profile = cal.profile(
        {
            "store": store.uri,
            "sessions": refs.sessions,
            "plate_captures": refs.captures,
            "fitted_to": [r.name for r in refs.fit],
            "held_out": [r.name for r in refs.holdout],
        }
    )
    return cal, profile, refs


LABELLED_FIT_CAPTURES = 400  # at most this many labelled captures (whole plates, seeded) in a fit from them


def fit_rig_to_captures(
    store: ObjectStore,
    rows,
    *,
    params: Sequence[str] = DEFAULT_FIT,
    bins: int = 32,
    max_captures: int = LABELLED_FIT_CAPTURES,
    seed: int = 0,
    log: Callable[[str], None] | None = None,
) -> tuple[RigFit, RigProfile]:
    """The rig fitted to a lab's labelled captures themselves: plates of known alloys at their measured
    thicknesses, each with its own dark/flat levels, and no reference capture. With three alloys or more their
    known compositions harden the beam differently, which separates the beam from the plates (each plate's areal
    density stays a nuisance parameter with its tolerance and composition range as prior). ``rows`` are manifest
    rows (e.g. the training split); at most ``max_captures`` of them (whole plates, each alloy alike, seeded)
    enter, every fifth of those plates held out to check the fit. Raises ``RigFitError`` when the captures
    cannot give a fit (fewer than three alloys, no thickness) or it is poor."""
    rows = rows[(rows.alloy.astype(str) != "") & np.isfinite(rows.thickness_mm.astype(float))]
    rows = rows[rows.thickness_mm.astype(float) > 0]
    alloys = sorted(rows.alloy.unique())
    if len(alloys) < 3:
        raise RigFitError(
            f"labelled captures with a thickness of {len(alloys)} alloys ({', '.join(alloys) or 'none'}); "
            "a fit without reference captures needs three or more"
        )
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x51F]))
    per_alloy = max(max_captures // len(alloys), 1)
    keep = []
    for _, group in rows.groupby("alloy", sort=True):
        n = 0
        for pid in rng.permutation(sorted(group.plate_id.unique())):
            if n >= per_alloy:
                break
            keep.append(pid)
            n += int((group.plate_id == pid).sum())
    chosen = rows[rows.plate_id.isin(keep)]
    skipped: list[str] = []
    refs, n_caps = _plate_references(store, chosen, None, bins, skipped)
    held_ids = set(sorted({r.plate_id for r in refs})[4::5])
    fit = [r for r in refs if r.plate_id not in held_ids]
    held = [r for r in refs if r.plate_id in held_ids]
    rig = nominal_rig(store, chosen.capture_id.iloc[0])
    levels = _row_levels(chosen)
    detector = detector_from_levels(
        np.array([d for d, _ in levels]), np.array([f for _, f in levels]), rig.width, "the labelled captures"
    )
    n_held = sum(len(r.profiles) for r in held)
    if log:
        log(
            f"rig fit to {n_caps - n_held} labelled captures of {len(alloys)} alloys "
            f"({len(fit)} plate x wedge; {len(held)} held out)" + (f"; {len(skipped)} not read" if skipped else "")
        )
    cal = fit_rig(rig, fit, detector, params, bins, log=log)
    cal.holdout = check_references(cal, held) or None
    check_fit(cal)
    profile = cal.profile(
        {
            "store": store.uri,
            "fitted_to": f"{n_caps - n_held} labelled captures (no reference captures)",
            # what training weighs against the nominal start on these same captures (trainer.in_sample_optimism)
            "in_sample": {"parameters": len(cal.names), "captures": n_caps - n_held},
            "held_out": f"{n_held} labelled captures",
            # per plate figures of hundreds of plates say nothing a reader of the profile needs
            "references": {"plates": len(fit)},
            "plate_scales": {},
            "holdout": {k: v for k, v in (cal.holdout or {}).items() if k != "references"} or None,
        }
    )
    return cal, profile


def make_references(
    store: ObjectStore,
    rig: RigConfig,
    *,
    simulator: Literal["alloynet", "second_rig"] = "alloynet",
    second_rig: SecondRigConfig | None = None,
    alloy: str = "Al1050",
    thicknesses_mm: Sequence[float] = (1.0, 2.0, 5.0),
    captures_per_plate: int = 4,
    sessions: int = 6,
    wedges_mm: Sequence[float] | None = None,
    seed: int = 0,
    prefix: str = "ref",
) -> list[str]:
    """Write the reference set a lab would take into ``store`` (module doc layout), from a rig model: per
    session a dark, a flat and the wedge alone (each wedge); one plate of ``alloy`` per thickness, its captures
    spread over the sessions. ``simulator="second_rig"`` takes them with the independently written rig model
    (``second_rig``: its own physics; the nominal settings come from ``rig``), for tests and demos of
    ``alloynet rig fit``. Seeded: the same arguments write the same bytes. Returns the capture ids."""
    wedges = list(wedges_mm or [rig.wedge_mm])
    sims: dict[float, RigSimulator | SecondRig] = {}
    for w in wedges:
        r = rig.model_copy(update={"wedge_mm": float(w)})
        if simulator == "second_rig":
            own = (second_rig or SecondRigConfig()).model_dump(exclude=set(NOMINAL_FIELDS))
            sims[w] = SecondRig(SecondRigConfig.from_nominal(r, **own))
        else:
            sims[w] = RigSimulator(r)
    first = sims[wedges[0]]
    start = datetime(2026, 1, 5, 8, 0, tzinfo=timezone.utc)
    levels = []
    for s in range(sessions):  # frames: the panel is the same for every wedge, so the first rig model takes them
        rng = np.random.default_rng(np.random.SeedSequence([seed, 0x5E5, s]))
        gain = first.session_gain(rng)
        dark, flat = first.dark_flat_frames(rng, gain)
        sid = f"{prefix}-s{s:02d}"
        for name, frame in (("dark", dark), ("flat", flat)):
            data, fmt = encode_image(frame)
            store.put(f"{CALIBRATION}{sid}/{name}.{fmt}", data, overwrite=True)
        for j, w in enumerate(wedges):
            data, fmt = encode_image(
                sims[w].wedge_reference(np.random.default_rng(np.random.SeedSequence([seed, 0x3ED, s, j])), gain)
            )
            store.put(f"{CALIBRATION}{sid}/wedge-{float(w):g}mm.{fmt}", data, overwrite=True)
        levels.append({"session": sid, "gain": gain, "dark_adu": frame_level(dark), "flat_adu": frame_level(flat)})
    ids, n = [], 0
    for p_idx, t_nom in enumerate(thicknesses_mm):
        plate = sample_plate(
            alloy,
            float(t_nom),
            np.random.default_rng(np.random.SeedSequence([seed, 0x91A, p_idx])),
            f"{prefix}-{alloy}-{float(t_nom):g}mm",
        )
        for k in range(captures_per_plate):
            w = wedges[k % len(wedges)]
            sim, sess = sims[w], levels[n % sessions]
            cap = sim.capture(
                plate,
                np.random.default_rng(np.random.SeedSequence([seed, 0xCA9, p_idx, k])),
                sess["dark_adu"],
                sess["flat_adu"],
                sess["gain"],
            )
            cid = f"{prefix}-{alloy}-{float(t_nom):g}mm-{k:03d}"
            data, fmt = encode_image(cap.image)
            r = sim.rig
            # what a lab knows of its reference plates: the alloy and the micrometer thickness, not the composition
            sc = make_sidecar(
                cid,
                cap.image,
                data,
                fmt,
                rig={
                    "kvp": r.kvp,
                    "tube_current_ua": r.tube_current_ua,
                    "anode_angle_deg": r.anode_angle_deg,
                    "filtration_mm_al": r.filtration_mm_al,
                    "wedge_mm": float(w),
                    "wedge_min_mm": r.wedge_min_mm,
                    "wedge_material": r.wedge_material,
                    "dose": r.dose,
                },
                calibration={"session": sess["session"], "dark_adu": sess["dark_adu"], "flat_adu": sess["flat_adu"]},
                acquired_at=start + timedelta(seconds=30 * n),
                truth={
                    "alloy": alloy,
                    "nominal_thickness_mm": float(t_nom),
                    "thickness_mm": round(plate.thickness_mm, 4),
                },
                plate_id=plate.plate_id,
                source=f"{simulator} reference seed={seed}",
            )
            write_capture(store, sc, data, overwrite=True)
            ids.append(cid)
            n += 1
    return ids


def _write_tiff(path: Path, image: np.ndarray) -> str:
    import tifffile

    path.parent.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(path, image[0] if image.shape[0] == 1 else image, photometric="minisblack")
    return path.as_posix()


def write_reference_folder(
    root: Path,
    rig: RigConfig,
    *,
    simulator: Literal["alloynet", "second_rig"] = "second_rig",
    second_rig: SecondRigConfig | None = None,
    alloy: str = "Al1050",
    thicknesses_mm: Sequence[float] = (1.0, 2.0, 5.0),
    captures_per_plate: int = 4,
    sessions: int = 5,
    wedges_mm: Sequence[float] | None = None,
    frames: bool = True,
    seed: int = 0,
) -> list[dict]:
    """The reference captures a lab images, as TIFFs under ``root/reference/`` in the layout `alloynet import`
    reads (``alloynet.captures.importing.references``), taken with a rig model (as ``make_references``).

    ``frames=True``: dark/ and flat/ hold one frame per session; the k-th capture of each reference plate and the
    k-th wedge-alone frame are taken in session k (modulo ``sessions``), as the import pairs them. ``frames=False``
    (a lab whose acquisition software gives levels): no dark/flat frames; returns labels-CSV rows (role wedge or
    reference, with each file's dark and flat levels) for the caller's labels CSV. Seeded."""
    wedges = list(wedges_mm or [rig.wedge_mm])
    sims: dict[float, RigSimulator | SecondRig] = {}
    for w in wedges:
        r = rig.model_copy(update={"wedge_mm": float(w)})
        if simulator == "second_rig":
            own = (second_rig or SecondRigConfig()).model_dump(exclude=set(NOMINAL_FIELDS))
            sims[w] = SecondRig(SecondRigConfig.from_nominal(r, **own))
        else:
            sims[w] = RigSimulator(r)
    first, ref = sims[wedges[0]], root / "reference"
    rows: list[dict] = []
    levels = []

    def row(path: str, **kw) -> None:
        rows.append(
            {"file": Path(path).relative_to(root).as_posix(), "alloy": "", "thickness_mm": "", "wedge_mm": "", **kw}
        )

    for s in range(sessions):
        rng = np.random.default_rng(np.random.SeedSequence([seed, 0x5E5, s]))
        gain = first.session_gain(rng)
        dark, flat = first.dark_flat_frames(rng, gain)
        lv = {"gain": gain, "dark": frame_level(dark), "flat": frame_level(flat)}
        levels.append(lv)
        cal = {"dark": ";".join(f"{v:.3f}" for v in lv["dark"]), "flat": ";".join(f"{v:.3f}" for v in lv["flat"])}
        if frames:
            _write_tiff(ref / "dark" / f"s{s:02d}.tif", dark)
            _write_tiff(ref / "flat" / f"s{s:02d}.tif", flat)
        for j, w in enumerate(wedges):
            img = sims[w].wedge_reference(np.random.default_rng(np.random.SeedSequence([seed, 0x3ED, s, j])), gain)
            path = _write_tiff(ref / f"wedge-{float(w):g}mm" / f"s{s:02d}.tif", img)
            if not frames:
                row(path, role="wedge", wedge_mm=f"{float(w):g}", **cal)
    for p_idx, t_nom in enumerate(thicknesses_mm):
        plate = sample_plate(
            alloy,
            float(t_nom),
            np.random.default_rng(np.random.SeedSequence([seed, 0x91A, p_idx])),
            f"reference-{alloy}-{float(t_nom):g}mm",
        )
        for k in range(captures_per_plate):
            w, lv = wedges[k % len(wedges)], levels[k % sessions]
            cap = sims[w].capture(
                plate,
                np.random.default_rng(np.random.SeedSequence([seed, 0xCA9, p_idx, k])),
                lv["dark"],
                lv["flat"],
                lv["gain"],
            )
            path = _write_tiff(ref / f"{alloy}-{float(t_nom):g}mm" / f"c{k:03d}.tif", cap.image)
            if not frames:
                row(
                    path,
                    role="reference",
                    alloy=alloy,
                    thickness_mm=f"{float(t_nom):g}",
                    wedge_mm=f"{float(w):g}",
                    dark=";".join(f"{v:.3f}" for v in lv["dark"]),
                    flat=";".join(f"{v:.3f}" for v in lv["flat"]),
                )
    return rows
