"""`alloynet rig fit` and `alloynet rig references`: the simulator fitted to a lab's rig.

Exit codes of `fit`: 0 when the rig profile is written (into the store, rig-profiles/); 1 when the references
cannot fit the rig (missing, unreadable, inconsistent) or the fit is poor (the fit plot is still written, to
--plot or ./rig-profile-fit.png, to see where it misses; no profile is); 2 for usage errors (bad options, an
unreadable --rig YAML). `alloynet rig calibrate`, the command's old name, is a hidden alias for one release:
same options, same output and exit codes, and a note on stderr.
"""

from __future__ import annotations

import functools
import shutil
import tempfile
from pathlib import Path

import typer

from alloynet.commands.data_cli import console

EXIT_REFUSED = 1
EXIT_USAGE = 2

rig_app = typer.Typer(no_args_is_help=True)


def _line(text: str, code: int | None = None) -> None:
    console.print(text, markup=False, highlight=False)
    if code is not None:
        raise typer.Exit(code)


def _nominal(path: Path | None, kvp: list[float] | None, wedge_mm: float | None, size: int | None = None):
    """The lab's nominal settings: a YAML of RigConfig fields (top level or under ``rig:``) and options."""
    import yaml
    from pydantic import ValidationError

    from alloynet.physics.simulator import RigConfig

    raw: dict = {}
    if path is not None:
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            _line(f"error: {path}: cannot read as YAML ({' '.join(str(exc).split())})", EXIT_USAGE)
        if not isinstance(raw, dict):
            _line(f"error: {path}: expected a mapping of rig settings", EXIT_USAGE)
        raw = dict(raw.get("rig", raw))
    if kvp:
        raw["kvp"] = kvp
    if wedge_mm is not None:
        raw["wedge_mm"] = wedge_mm
    if size is not None:
        raw.update(height=size, width=size)
    if path is None and not raw:
        return None
    try:
        return RigConfig.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "rig"
        _line(f"error: {path or 'options'}: {where}: {err['msg']}", EXIT_USAGE)


@rig_app.command("fit")
def fit_rig(
    store: str = typer.Argument(
        ...,
        help="capture store (directory or s3://bucket/prefix) with the references, as `alloynet import` writes "
        "them from a lab's reference/ folder: the wedge alone per session, dark/flat frames or levels, and "
        "captures of plates of one known alloy at known thicknesses (docs/rig_fit.md)",
    ),
    out: Path | None = typer.Option(
        None,
        help="also write the rig profile (YAML) here (default: only into the store); it always goes into the "
        "store as rig-profiles/<UTC stamp>.yaml, the newest of which `alloynet train --store STORE` starts from",
    ),
    plot: Path | None = typer.Option(
        None, help="also write the fit plot (PNG) here; default with --out: beside it, <name>-fit.png"
    ),
    alloy: str | None = typer.Option(
        None, help="the reference plates' alloy (when the store holds several); default: the only one it holds"
    ),
    rig: Path | None = typer.Option(
        None,
        "--rig",
        help="YAML of nominal rig settings (RigConfig fields); default: those the captures' sidecars record",
    ),
    kvp: list[float] | None = typer.Option(
        None, help="nominal kVp, one per channel (overrides --rig); default: --rig's, else the sidecars'"
    ),
    wedge_mm: float | None = typer.Option(
        None, help="nominal wedge thickness (overrides --rig); default: --rig's, else the sidecars'"
    ),
    fit: list[str] | None = typer.Option(
        None,
        "--fit",
        help="a parameter to fit (repeat); default: kvp_offset_rel, "
        "extra_filtration_mm_al, scatter_*, psf_sigma_px, glare_*",
    ),
    holdout_thickness: float | None = typer.Option(
        None, help="nominal thickness (mm) of the plates held out of the fit; default: the middle of three or more"
    ),
    bins: int = typer.Option(32, min=4, help="profile bins along the wedge"),
    max_misfit: float | None = typer.Option(
        None,
        help="refuse when the fit misses the references by more than this many single-capture sd (rms); default 1.5",
    ),
    max_holdout_chi2: float | None = typer.Option(
        None, help="refuse when a held-out capture's chi2/dof exceeds this on average; default 2.0"
    ),
) -> None:
    """Fit the simulator's nuisance parameters to a rig's reference captures; write a rig profile and a fit plot."""
    from alloynet.captures.rig_profiles import add_rig_profile
    from alloynet.captures.stores import StoreError, open_store
    from alloynet.data.rig_references import fit_rig_to_references
    from alloynet.evaluate.rig_plots import plot_fit
    from alloynet.physics.detector import RigFitError
    from alloynet.physics.rig_fit import DEFAULT_FIT, MAX_HOLDOUT_CHI2, MAX_MISFIT_RMS, check_fit
    from alloynet.physics.rig_profile import save_rig_profile

    nominal = _nominal(rig, kvp, wedge_mm)
    max_misfit = MAX_MISFIT_RMS if max_misfit is None else max_misfit
    max_holdout_chi2 = MAX_HOLDOUT_CHI2 if max_holdout_chi2 is None else max_holdout_chi2
    if plot is None and out is not None:
        plot = out.with_name(f"{out.stem}-fit.png")
    try:
        st = open_store(store)
    except ValueError as exc:
        _line(f"error: {exc}", EXIT_USAGE)
    try:
        cal, profile, refs = fit_rig_to_references(
            st,
            alloy=alloy,
            rig=nominal,
            params=tuple(fit or DEFAULT_FIT),
            holdout_thickness=holdout_thickness,
            bins=bins,
            check=False,
            log=_line,
        )
    except RigFitError as exc:
        hint = (
            " (without references, `alloynet train --store` fits the rig to the store's labelled plates of three "
            "alloys or more: docs/rig_fit.md)"
            if "missing references" in str(exc)
            else ""
        )
        _line(f"error: cannot fit the rig: {exc}{hint}", EXIT_REFUSED)
    except (StoreError, OSError) as exc:
        _line(f"error: {' '.join(str(exc).split())}", EXIT_REFUSED)
    for s in refs.skipped:
        _line(f"skipped {s}")
    for note in cal.detector.notes:
        _line(f"note: {note}")
    _line("parameter: value +- 1 sd")
    for line in profile.summary():
        _line(f"  {line}")
    _line(
        f"misfit: rms {cal.misfit_rms:.2f} single-capture sd over {len(refs.fit)} references (limit {max_misfit:g}), "
        f"worst bin {cal.max_misfit:.1f} sd, chi2/dof {cal.chi2 / cal.dof:.2f}"
    )
    if cal.at_bounds:
        _line(f"at their limits: {', '.join(cal.at_bounds)}")
    if cal.holdout:
        for name, h in cal.holdout["references"].items():
            _line(
                f"held out {name}: misfit rms {h['misfit_rms']:.2f} sd, chi2/dof per capture {h['chi2_per_dof']:.2f} "
                f"(limit {max_holdout_chi2:g})"
            )
    with tempfile.TemporaryDirectory() as tmp:
        png = Path(tmp) / "fit.png"
        plot_fit(cal, refs.fit, png, refs.holdout)
        try:
            check_fit(cal, max_misfit, max_holdout_chi2)
        except RigFitError as exc:
            plot = plot or Path("rig-profile-fit.png")  # to see where the fit misses
            plot.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(png, plot)
            _line(f"fit plot: {plot}")
            _line(f"error: {exc}; no profile written", EXIT_REFUSED)
        try:
            key = add_rig_profile(st, profile, png.read_bytes())
        except (StoreError, OSError) as exc:
            _line(f"error: cannot store the rig profile in {store}: {' '.join(str(exc).split())}", EXIT_REFUSED)
        if plot is not None:
            plot.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(png, plot)
            _line(f"fit plot: {plot}")
    _line(f"rig profile: {store.rstrip('/')}/{key} (the newest: `alloynet train --store` starts from it)")
    if out is not None:
        save_rig_profile(profile, out)
        _line(f"rig profile: {out}")


@rig_app.command("references")
def references(
    out: str = typer.Argument(..., help="capture store to write the reference set into (directory or s3://...)"),
    simulator: str = typer.Option(
        "second_rig",
        help="the rig model that takes them: second_rig (an independently "
        "written rig, for tests and demos) or alloynet",
    ),
    rig: Path | None = typer.Option(
        None,
        "--rig",
        help="YAML of rig settings (RigConfig fields): the nominal "
        "settings; with alloynet also its departures from them (default: alloynet's nominal rig)",
    ),
    second_rig: Path | None = typer.Option(
        None, help="YAML of the second rig's own physics (SecondRigConfig); default: its built-in deviations"
    ),
    size: int = typer.Option(64, min=8, help="image height = width"),
    kvp: list[float] | None = typer.Option(None, help="kVp, one per channel; default: --rig's, else 50"),
    wedge_mm: list[float] | None = typer.Option(
        None,
        help="wedge thickness (repeat: the wedge alone and the plates behind each, in turn); default: --rig's, else 50",
    ),
    alloy: str = typer.Option("Al1050", help="the reference plates' alloy"),
    thickness: list[float] | None = typer.Option(
        None, help="a reference plate's nominal thickness, mm (repeat); default 1, 2, 5"
    ),
    captures_per_plate: int = typer.Option(6, min=1, help="captures of each reference plate"),
    sessions: int = typer.Option(6, min=1, help="sessions, each with a dark, a flat and the wedge alone"),
    folder: bool = typer.Option(
        False,
        "--folder",
        help="write a lab's folder instead of a store: TIFFs under OUT/reference/ as `alloynet import` reads them",
    ),
    levels_only: bool = typer.Option(
        False,
        "--levels-only",
        help="with --folder: no dark/flat frames; each file's levels in OUT/reference-labels.csv (role column)",
    ),
    seed: int = typer.Option(0, help="seed of the simulated reference captures"),
) -> None:
    """Write the reference captures a lab would make (for testing and demonstrating `rig fit`)."""
    import yaml
    from pydantic import ValidationError

    from alloynet.captures.stores import StoreError, open_store
    from alloynet.data.rig_references import make_references
    from alloynet.physics.alloys import get_alloy
    from alloynet.physics.second_rig import SecondRigConfig

    if simulator not in ("second_rig", "alloynet"):
        _line(f"error: --simulator: expected second_rig or alloynet, got {simulator!r}", EXIT_USAGE)
    try:
        get_alloy(alloy)
    except (KeyError, ValueError) as exc:
        _line(f"error: --alloy: {exc}", EXIT_USAGE)
    nominal = _nominal(rig, kvp, wedge_mm[0] if wedge_mm else None, size)
    own = None
    if second_rig is not None:
        try:
            own = SecondRigConfig.model_validate(yaml.safe_load(second_rig.read_text()) or {})
        except (OSError, yaml.YAMLError, ValidationError) as exc:
            _line(f"error: {second_rig}: {' '.join(str(exc).split())}", EXIT_USAGE)
    if folder:
        _reference_folder(
            Path(out),
            nominal,
            simulator,
            own,
            alloy,
            thickness,
            captures_per_plate,
            sessions,
            wedge_mm,
            levels_only,
            seed,
        )
        return
    try:
        st = open_store(out)
        ids = make_references(
            st,
            nominal,
            simulator=simulator,
            second_rig=own,
            alloy=alloy,
            thicknesses_mm=thickness or (1.0, 2.0, 5.0),
            captures_per_plate=captures_per_plate,
            sessions=sessions,
            wedges_mm=wedge_mm or None,
            seed=seed,
        )
    except (StoreError, OSError, ValueError) as exc:
        _line(f"error: {' '.join(str(exc).split())}", EXIT_REFUSED)
    _line(
        f"{simulator}: {sessions} sessions (dark, flat, wedge alone) and {len(ids)} captures of {alloy} at "
        f"{', '.join(f'{t:g}' for t in (thickness or (1.0, 2.0, 5.0)))} mm ({size}x{size}) in {st.uri}"
    )


def _reference_folder(
    out: Path,
    nominal,
    simulator: str,
    own,
    alloy: str,
    thickness: list[float] | None,
    captures_per_plate: int,
    sessions: int,
    wedge_mm: list[float] | None,
    levels_only: bool,
    seed: int,
) -> None:
    from alloynet.data.rig_references import write_reference_folder

    thicknesses = thickness or (1.0, 2.0, 5.0)
    try:
        rows = write_reference_folder(
            out,
            nominal,
            simulator=simulator,
            second_rig=own,
            alloy=alloy,
            thicknesses_mm=thicknesses,
            captures_per_plate=captures_per_plate,
            sessions=sessions,
            wedges_mm=wedge_mm or None,
            frames=not levels_only,
            seed=seed,
        )
    except (OSError, ValueError) as exc:
        _line(f"error: {' '.join(str(exc).split())}", EXIT_REFUSED)
    if rows:
        cols = ("file", "alloy", "thickness_mm", "wedge_mm", "dark", "flat", "role")
        (out / "reference-labels.csv").write_text(
            "\n".join([",".join(cols)] + [",".join(str(r.get(c, "")) for c in cols) for r in rows]) + "\n"
        )
    _line(
        f"{simulator}: {sessions} sessions ({'levels only' if levels_only else 'dark, flat'}, wedge alone) and "
        f"{len(thicknesses) * captures_per_plate} captures of {alloy} at {', '.join(f'{t:g}' for t in thicknesses)} "
        f"mm under {out / 'reference'}" + (f"; their levels in {out / 'reference-labels.csv'}" if rows else "")
    )


@rig_app.command("calibrate", hidden=True, help="The old name of `alloynet rig fit`, read in this release.")
@functools.wraps(fit_rig)
def calibrate(*args, **kwargs) -> None:
    typer.echo(
        "note: `alloynet rig calibrate` is renamed `alloynet rig fit`; the old name is read in this release", err=True
    )
    fit_rig(*args, **kwargs)


def register(app: typer.Typer) -> None:
    app.add_typer(rig_app, name="rig", help="Fit the simulator to a lab's rig from reference captures (the rig fit).")
