"""Reference captures of a rig, read from a capture store, and the calibration they give (``alloynet rig calibrate``).

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

import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Callable, Literal, Optional, Sequence, Union

import numpy as np

from alloynet.captures.format import make_sidecar, parse_sidecar
from alloynet.captures.image import CaptureError, decode_image, encode_image
from alloynet.captures.layout import CAPTURES, sidecar_key, write_capture
from alloynet.captures.stores import ObjectStore
from alloynet.data.manifest import scan_store
from alloynet.physics.calibration import (DEFAULT_FIT, MAX_HOLDOUT_CHI2, MAX_MISFIT_RMS, Calibration,
                                          CalibrationError, DetectorMeasurement, Reference, capture_profile,
                                          check_fit, check_references, fit_rig, measure_detector)
from alloynet.physics.alloys import sample_plate
from alloynet.physics.rig_profile import RigProfile
from alloynet.physics.second_rig import NOMINAL_FIELDS, SecondRig, SecondRigConfig
from alloynet.physics.simulator import RigConfig, RigSimulator

CALIBRATION = "calibration/"
_FRAME = re.compile(r"^calibration/(?P<session>[^/]+)/(?P<name>dark|flat|wedge-(?P<wedge>[0-9.]+)mm)\.(png|tiff?)$")


@dataclass
class ReferenceSet:
    nominal: RigConfig
    detector: DetectorMeasurement
    fit: list[Reference]
    holdout: list[Reference]
    sessions: int
    captures: int
    skipped: list[str] = field(default_factory=list)   # "key: reason" for frames/captures that could not be used


def _frames(store: ObjectStore) -> dict[str, dict[str, str]]:
    """session -> {"dark": key, "flat": key, "wedge-50": key, ...}"""
    out: dict[str, dict[str, str]] = {}
    for info in store.list(CALIBRATION):
        m = _FRAME.match(info.key)
        if m:
            name = m["name"] if not m["wedge"] else f"wedge-{float(m['wedge']):g}"
            out.setdefault(m["session"], {})[name] = info.key
    return out


def nominal_rig(store: ObjectStore, capture_id: str) -> RigConfig:
    """The nominal rig a capture's sidecar records (the lab's settings), at its image size."""
    sc = parse_sidecar(store.get(sidecar_key(capture_id)))
    r = sc.rig
    extra = {k: v for k, v in (r.model_extra or {}).items() if k in RigConfig.model_fields}
    return RigConfig(kvp=r.kvp, tube_current_ua=r.tube_current_ua, anode_angle_deg=r.anode_angle_deg,
                     filtration_mm_al=r.filtration_mm_al, wedge_mm=r.wedge_mm, wedge_min_mm=r.wedge_min_mm,
                     wedge_material=r.wedge_material, height=sc.image.shape[1], width=sc.image.shape[2],
                     **({"dose": r.dose} if r.dose else {}), **extra)


def load_references(store: ObjectStore, alloy: Optional[str] = None, rig: Optional[RigConfig] = None,
                    holdout_thickness: Optional[float] = None, bins: int = 32,
                    log: Optional[Callable[[str], None]] = None) -> ReferenceSet:
    """Read every session's frames and the reference captures of ``store`` (see the module doc)."""
    skipped: list[str] = []
    frames = _frames(store)
    sessions = {s: f for s, f in frames.items() if "dark" in f and "flat" in f}
    for s, f in frames.items():
        if s not in sessions:
            skipped.append(f"calibration/{s}/: {'no dark frame' if 'dark' not in f else 'no flat frame'}; session not used")
    if not sessions:
        raise CalibrationError(f"{store.uri}: no session with both a dark and a flat frame under calibration/")
    decoded: dict[str, dict[str, np.ndarray]] = {}
    for s, f in sorted(sessions.items()):
        try:
            decoded[s] = {k: decode_image(store.get(key), key) for k, key in f.items()}
        except CaptureError as exc:
            skipped.append(f"{exc.where}: {exc.message}; session not used")
    shapes = {d["dark"].shape for d in decoded.values()}
    shape = max(shapes, key=lambda sh: sum(d["dark"].shape == sh for d in decoded.values()))
    for s in list(decoded):
        if any(v.shape != shape for v in decoded[s].values()):
            skipped.append(f"calibration/{s}/: frames of shape {decoded[s]['dark'].shape}, most are {shape}; not used")
            del decoded[s]
    darks = np.stack([d["dark"] for d in decoded.values()])
    flats = np.stack([d["flat"] for d in decoded.values()])
    detector = measure_detector(darks, flats)
    levels = {s: (RigSimulator.frame_level(d["dark"]), RigSimulator.frame_level(d["flat"])) for s, d in decoded.items()}

    rows = scan_store(store)
    labelled = rows[rows.labelled & (rows.alloy != "")]
    if alloy:
        labelled = labelled[labelled.alloy == alloy]
    if labelled.alloy.nunique() > 1:
        raise CalibrationError(f"{store.uri}: captures of several alloys ({', '.join(sorted(labelled.alloy.unique()))}); "
                               f"say which is the reference (--alloy)")
    if rig is None:
        if labelled.empty:
            raise CalibrationError(f"{store.uri}: no labelled reference captures to read the nominal settings from; "
                                   f"give them (--rig YAML)")
        rig = nominal_rig(store, labelled.capture_id.iloc[0])
    if (rig.height, rig.width) != shape[1:]:
        rig = rig.model_copy(update={"height": shape[1], "width": shape[2]})

    wedge: dict[float, list[np.ndarray]] = {}
    for s, d in decoded.items():
        for k, img in d.items():
            if k.startswith("wedge-"):
                wedge.setdefault(float(k[6:]), []).append(capture_profile(img, *levels[s], bins))
    refs = [Reference(f"wedge alone {w:g} mm", "wedge", w, np.stack(p)) for w, p in sorted(wedge.items())]
    n_caps = 0
    for (pid, w), group in labelled.groupby(["plate_id", "wedge_mm"], sort=True):
        profiles, ids = [], []
        for r in group.itertuples():
            try:
                img = decode_image(store.get(CAPTURES + r.image_file), r.image_file)
            except (CaptureError, KeyError) as exc:
                skipped.append(f"{r.capture_id}: {exc}")
                continue
            if img.shape != shape:
                skipped.append(f"{r.capture_id}: shape {img.shape}, the frames are {shape}; not used")
                continue
            dark = [float(v) for v in str(r.dark_adu).split(";")]
            flat = [float(v) for v in str(r.flat_adu).split(";")]
            profiles.append(capture_profile(img, dark, flat, bins))
            ids.append(r.capture_id)
        if profiles:
            t, t_nom = float(group.thickness_mm.mean()), float(group.nominal_thickness_mm.iloc[0])
            a = group.alloy.iloc[0]
            refs.append(Reference(f"{a} {t_nom:g} mm {pid} ({w:g} mm wedge)", "plate", float(w), np.stack(profiles),
                                  alloy=a, thickness_mm=t, nominal_thickness_mm=t_nom, plate_id=str(pid), capture_ids=ids))
            n_caps += len(profiles)
    fit, held = split_holdout(refs, holdout_thickness)
    if log:
        log(f"{len(decoded)} sessions of dark/flat frames, {sum(len(r.profiles) for r in refs if r.kind == 'wedge')} "
            f"wedge-alone frames ({', '.join(f'{w:g}' for w in sorted(wedge)) or 'no'} mm wedge), {n_caps} plate captures "
            f"({sum(r.kind == 'plate' for r in refs)} plate x wedge), {len(held)} held out")
    return ReferenceSet(rig, detector, fit, held, len(decoded), n_caps, skipped)


def split_holdout(refs: Sequence[Reference], thickness: Optional[float] = None) -> tuple[list[Reference], list[Reference]]:
    """(fit, held out): the plates of ``thickness`` (default: the middle one of three or more nominal
    thicknesses; with fewer, every fourth plate when there are four or more) are held out."""
    plates = [r for r in refs if r.kind == "plate"]
    values = sorted({r.nominal_thickness_mm for r in plates})
    if thickness is None and len(values) >= 3:
        thickness = values[len(values) // 2]
    if thickness is not None:
        if not any(abs(r.nominal_thickness_mm - thickness) < 1e-6 for r in plates):
            raise CalibrationError(f"no reference plates of {thickness:g} mm to hold out (plates: "
                                   f"{', '.join(f'{v:g}' for v in values)} mm)")
        held = [r for r in plates if abs(r.nominal_thickness_mm - thickness) < 1e-6]
    else:
        ids = sorted({r.plate_id for r in plates})
        held_ids = set(ids[3::4]) if len(ids) >= 4 else set()
        held = [r for r in plates if r.plate_id in held_ids]
    return [r for r in refs if r not in held], held


def missing_references(fit: Sequence[Reference]) -> list[str]:
    """What the fit needs and ``fit`` lacks: the wedge alone (it separates the beam from the plates'
    composition) and plates of a known alloy at two or more thicknesses (the hardening curve), each named."""
    out = []
    if not any(r.kind == "wedge" for r in fit):
        out.append("the wedge alone (calibration/<session>/wedge-<mm>mm.png|tiff, one per session and wedge)")
    thick = sorted({r.nominal_thickness_mm for r in fit if r.kind == "plate"})
    if len(thick) < 2:
        have = f"have {', '.join(f'{t:g}' for t in thick)} mm" if thick else "have none"
        out.append(f"labelled captures of plates of one known alloy at two or more thicknesses besides any held out "
                   f"({have}; e.g. Al1050 at 1, 2 and 5 mm)")
    return out


def calibrate_store(store: ObjectStore, *, alloy: Optional[str] = None, rig: Optional[RigConfig] = None,
                    params: Sequence[str] = DEFAULT_FIT, holdout_thickness: Optional[float] = None, bins: int = 32,
                    max_misfit: float = MAX_MISFIT_RMS, max_holdout_chi2: float = MAX_HOLDOUT_CHI2,
                    check: bool = True, log: Optional[Callable[[str], None]] = None
                    ) -> tuple[Calibration, RigProfile, ReferenceSet]:
    """Calibrate the simulator to the rig that took ``store``'s references; raises ``CalibrationError`` with the
    reason when they cannot, or (``check``) when the fit is poor."""
    refs = load_references(store, alloy, rig, holdout_thickness, bins, log)
    missing = missing_references(refs.fit)
    if missing:
        raise CalibrationError(f"{store.uri}: missing references: {'; '.join(missing)}")
    cal = fit_rig(refs.nominal, refs.fit, refs.detector, params, bins, log=log)
    cal.holdout = check_references(cal, refs.holdout) or None
    if check:
        check_fit(cal, max_misfit, max_holdout_chi2)
    profile = cal.profile({"store": store.uri, "sessions": refs.sessions, "plate_captures": refs.captures,
                           "fitted_to": [r.name for r in refs.fit], "held_out": [r.name for r in refs.holdout]})
    return cal, profile, refs


def make_references(store: ObjectStore, rig: RigConfig, *, simulator: Literal["alloynet", "second_rig"] = "alloynet",
                    second_rig: Optional[SecondRigConfig] = None, alloy: str = "Al1050",
                    thicknesses_mm: Sequence[float] = (1.0, 2.0, 5.0), captures_per_plate: int = 4, sessions: int = 6,
                    wedges_mm: Optional[Sequence[float]] = None, seed: int = 0, prefix: str = "ref") -> list[str]:
    """Write the reference set a lab would take into ``store`` (module doc layout), from a rig model: per
    session a dark, a flat and the wedge alone (each wedge); one plate of ``alloy`` per thickness, its captures
    spread over the sessions. ``simulator="second_rig"`` takes them with the independently written rig model
    (``second_rig``: its own physics; the nominal settings come from ``rig``), for tests and demos of
    ``alloynet rig calibrate``. Seeded: the same arguments write the same bytes. Returns the capture ids."""
    wedges = list(wedges_mm or [rig.wedge_mm])
    sims: dict[float, Union[RigSimulator, SecondRig]] = {}
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
        dark, flat = first.calibration_frames(rng, gain)
        sid = f"{prefix}-s{s:02d}"
        for name, frame in (("dark", dark), ("flat", flat)):
            data, fmt = encode_image(frame)
            store.put(f"{CALIBRATION}{sid}/{name}.{fmt}", data, overwrite=True)
        for j, w in enumerate(wedges):
            data, fmt = encode_image(sims[w].wedge_reference(np.random.default_rng(
                np.random.SeedSequence([seed, 0x3ED, s, j])), gain))
            store.put(f"{CALIBRATION}{sid}/wedge-{float(w):g}mm.{fmt}", data, overwrite=True)
        levels.append({"session": sid, "gain": gain, "dark_adu": first.frame_level(dark),
                       "flat_adu": first.frame_level(flat)})
    ids, n = [], 0
    for p_idx, t_nom in enumerate(thicknesses_mm):
        plate = sample_plate(alloy, float(t_nom), np.random.default_rng(np.random.SeedSequence([seed, 0x91A, p_idx])),
                             f"{prefix}-{alloy}-{float(t_nom):g}mm")
        for k in range(captures_per_plate):
            w = wedges[k % len(wedges)]
            sim, sess = sims[w], levels[n % sessions]
            cap = sim.capture(plate, np.random.default_rng(np.random.SeedSequence([seed, 0xCA9, p_idx, k])),
                              sess["dark_adu"], sess["flat_adu"], sess["gain"])
            cid = f"{prefix}-{alloy}-{float(t_nom):g}mm-{k:03d}"
            data, fmt = encode_image(cap.image)
            r = sim.rig
            # what a lab knows of its reference plates: the alloy and the micrometer thickness, not the composition
            sc = make_sidecar(cid, cap.image, data, fmt,
                              rig={"kvp": r.kvp, "tube_current_ua": r.tube_current_ua,
                                   "anode_angle_deg": r.anode_angle_deg, "filtration_mm_al": r.filtration_mm_al,
                                   "wedge_mm": float(w), "wedge_min_mm": r.wedge_min_mm,
                                   "wedge_material": r.wedge_material, "dose": r.dose},
                              calibration={"session": sess["session"], "dark_adu": sess["dark_adu"],
                                           "flat_adu": sess["flat_adu"]},
                              acquired_at=start + timedelta(seconds=30 * n),
                              truth={"alloy": alloy, "nominal_thickness_mm": float(t_nom),
                                     "thickness_mm": round(plate.thickness_mm, 4)},
                              plate_id=plate.plate_id, source=f"{simulator} reference seed={seed}")
            write_capture(store, sc, data, overwrite=True)
            ids.append(cid)
            n += 1
    return ids
