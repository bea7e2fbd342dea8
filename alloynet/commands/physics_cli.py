"""`alloynet physics ...`: transmission values, the separability report with its physics bracket, and the plan of
which exposures to take."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from alloynet.console import make_console
from alloynet.physics.alloys import ALLOY_NAMES, STANDARD_ALLOYS, AlloyTable

app = typer.Typer(no_args_is_help=True)
console = make_console()
AlloysOption = typer.Option(
    None,
    "--alloys",
    help="YAML defining extra alloys ({name: {density_g_cm3, nominal_wt_pct, ranges_wt_pct}}) "
    "[default: the standard alloys only]",
)


def _load_alloys(path: Path | None) -> AlloyTable:
    """The standard alloys, plus those of ``path`` when given."""
    if not path:
        return STANDARD_ALLOYS
    import yaml

    from alloynet.physics.alloys import alloys_from_config

    return alloys_from_config(yaml.safe_load(path.read_text()) or {})


@app.command()
def transmission(
    alloy: str,
    thickness_mm: float,
    wedge_mm: float = typer.Option(0.0, help="wedge thickness in the beam (mm)"),
    kvp: float = typer.Option(50.0, help="tube voltage (kVp)"),
    wedge_material: str = typer.Option("Al", help="wedge material (an element or alloy name)"),
    alloys: Path | None = AlloysOption,
) -> None:
    """Print -ln T (noise-free) of a nominal plate behind the wedge."""
    table = _load_alloys(alloys)
    from alloynet.physics import neg_log_transmission

    a = neg_log_transmission(alloy, thickness_mm, wedge_mm, kvp, wedge_material=wedge_material, alloy_table=table)
    console.print(f"{a:.6f}")


@app.command()
def separability(
    kvp: list[float] = typer.Option([50.0], help="repeat for extra channels, e.g. --kvp 40 --kvp 50 --kvp 60"),
    wedge_mm: float = typer.Option(50.0, help="wedge thickness (mm)"),
    wedge_material: str = typer.Option("Al", help="wedge material (an element or alloy name)"),
    dose: float = typer.Option(1e4, help="photons per pixel of the open beam"),
    size: int = typer.Option(64, help="image height = width in pixels (the demo's 64 by default)"),
    thickness_range: tuple[float, float] | None = typer.Option(
        None,
        "--thickness-range",
        help="plates of any nominal thickness in MIN MAX mm, as simulate and the demo draw them [default: 1 5]",
    ),
    thickness: list[float] | None = typer.Option(
        None,
        help="only these nominal thicknesses (mm), repeatable, e.g. --thickness 1 --thickness 2; replaces the range "
        "[default: the range]",
    ),
    alloy: list[str] = typer.Option(list(ALLOY_NAMES), help="alloys to compare"),
    alloys: Path | None = AlloysOption,
    plates: int = typer.Option(200, help="plates per alloy for d' and the Bayes error"),
    mc_samples: int = typer.Option(2000, help="Monte-Carlo test plates of the physics bracket"),
    seed: int = typer.Option(0, help="seed of the Monte-Carlo plates"),
    json_out: Path | None = typer.Option(None, "--json", help="also write JSON here [default: not written]"),
) -> None:
    """Ideal-observer d', Bayes error and the multi-class physics bracket for these rig settings and thickness prior
    (by default the prior of `alloynet simulate` and the demo: 64 px, any thickness 1-5 mm)."""
    from alloynet.physics.separability import separability as run
    from alloynet.physics.simulator import RigConfig

    table = _load_alloys(alloys)
    rig = RigConfig(kvp=kvp, wedge_mm=wedge_mm, wedge_material=wedge_material, dose=dose, height=size, width=size)
    prior = _prior(thickness, thickness_range)
    typer.echo(f"prior: {prior.describe()}; {size}x{size} px, wedge {wedge_mm:g} mm {wedge_material}, kVp {kvp}")
    with console.status("computing the physics bracket..."):
        report = run(
            rig,
            alloys=alloy,
            thicknesses_mm=prior.values_mm,
            thickness_range_mm=prior.range_mm,
            plates=plates,
            mc_samples=mc_samples,
            seed=seed,
            alloy_table=table,
        )
    typer.echo(report.markdown())  # plain Markdown: readable here and pasteable into reports
    if json_out:
        json_out.write_text(json.dumps(report.to_dict(), indent=1))


def _prior(thickness: list[float] | None, thickness_range: tuple[float, float] | None):
    from alloynet.physics.observer import DEFAULT_THICKNESS_RANGE_MM, ThicknessPrior

    if thickness and thickness_range:
        raise typer.BadParameter("give --thickness (a list of values) or --thickness-range (a range), not both")
    try:
        return ThicknessPrior.of(
            thickness or None, None if thickness else (thickness_range or DEFAULT_THICKNESS_RANGE_MM)
        )
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None


def _kvp_set(text: str) -> tuple[float, ...]:
    try:
        kvps = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise typer.BadParameter(
            f"--kvp-set {text!r}: expected kVp values separated by commas, e.g. 40,50,60"
        ) from None
    if not kvps or any(k <= 0 for k in kvps):
        raise typer.BadParameter(f"--kvp-set {text!r}: every kVp must be > 0")
    return kvps


@app.command()
def plan(
    rig_profile: Path | None = typer.Option(None, help="a rig profile (alloynet rig fit); default: the nominal rig"),
    kvp_set: list[str] | None = typer.Option(
        None,
        help="candidate kVp settings, one exposure each, repeatable, "
        "e.g. --kvp-set 50 --kvp-set 40,50,60 [default: 50; 40; 60; "
        "40,60; 40,50,60]",
    ),
    budget_s: float = typer.Option(1.0, help="time per plate (s), split evenly between a candidate's exposures"),
    time_fraction: list[float] = typer.Option(
        [1.0, 0.25], help="candidates spend these shares of the budget, repeatable"
    ),
    wedge_mm: list[float] = typer.Option([50.0, 70.0], help="candidate wedge sizes (mm), repeatable"),
    wedge_material: list[str] = typer.Option(["Al"], help="candidate wedge materials, repeatable"),
    dose: float = typer.Option(1e4, help="detected photons per pixel (open beam) of the reference exposure"),
    reference_kvp: float = typer.Option(50.0, help="the reference exposure's kVp (nominal rig only)"),
    reference_s: float = typer.Option(1.0, help="the reference exposure's time (s)"),
    size: int | None = typer.Option(None, help="image height = width in pixels [default: 64, or the profile's]"),
    thickness_range: tuple[float, float] | None = typer.Option(
        None, "--thickness-range", help="plates of any nominal thickness in MIN MAX mm [default: 1 5]"
    ),
    thickness: list[float] | None = typer.Option(
        None, help="only these nominal thicknesses (mm), repeatable; replaces the range [default: the range]"
    ),
    alloy: list[str] = typer.Option(list(ALLOY_NAMES), help="alloys to tell apart"),
    alloys: Path | None = AlloysOption,
    draws: int = typer.Option(500, help="Monte-Carlo plates per candidate (standard error about 0.5/sqrt(draws))"),
    pool: int = typer.Option(32, help="compositions per alloy in the observers' mixtures"),
    seed: int = typer.Option(0, help="seed of the Monte-Carlo draws"),
    json_out: Path | None = typer.Option(None, "--json", help="also write JSON here [default: not written]"),
    plot_out: Path | None = typer.Option(
        None, "--plot", help="also draw the brackets into this PNG [default: not drawn]"
    ),
) -> None:
    """Which exposures to take: the physics bracket (five-class and heavy vs light) of candidate acquisitions,
    ranked, with the pairs that stay hard. Defaults to the data's prior: 64 px, any thickness 1-5 mm."""
    import time

    from alloynet.physics import plan as planner
    from alloynet.physics.simulator import RigConfig

    table = _load_alloys(alloys)
    prior = _prior(thickness, thickness_range)
    try:
        if rig_profile:
            from alloynet.physics.rig_profile import load_rig_profile

            profile = load_rig_profile(rig_profile)
            n = size or profile.rig.width
            base = profile.apply(profile.rig.model_copy(update={"height": n, "width": n})).model_copy(
                update={"dose": dose}
            )
        else:
            n = size or 64
            base = RigConfig(kvp=[reference_kvp], dose=dose, height=n, width=n)
        acqs = planner.candidates(
            [_kvp_set(k) for k in kvp_set] if kvp_set else planner.DEFAULT_KVP_SETS,
            [budget_s * f for f in time_fraction],
            wedge_mm,
            wedge_material,
        )
        typer.echo(
            f"prior: {prior.describe()}; {n}x{n} px; reference {dose:.3g} photons/px at {base.kvp[0]:g} kV in "
            f"{reference_s:g} s; {len(acqs)} candidates"
        )
        t0 = time.perf_counter()
        with console.status("computing the brackets..."):
            rows = planner.plan(base, acqs, prior, alloy, reference_s, draws, pool, seed=seed, alloy_table=table)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    typer.echo(planner.table(rows))
    typer.echo(
        f"\nRanked by the lower edge (five-class), then heavy vs light; ± the larger Monte-Carlo standard "
        f"error of the two edges ({draws} plates per candidate; candidates closer than about twice that are "
        f"not told apart). {time.perf_counter() - t0:.1f} s."
    )
    if json_out:
        json_out.write_text(
            json.dumps(
                {
                    "prior": prior.describe(),
                    "size": n,
                    "reference_s": reference_s,
                    "candidates": [r.to_dict() for r in rows],
                },
                indent=1,
            )
        )
    if plot_out:
        _plot_plan(rows, plot_out)


def _plot_plan(rows, path: Path) -> None:
    """The bracket of each candidate (lower edge with its error, upper edge), best first (physics/ draws nothing)."""
    import matplotlib
    import numpy as np

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 0.35 * len(rows) + 1.2))
    y = np.arange(len(rows))[::-1]
    for yi, r in zip(y, rows, strict=True):
        b = r.bracket
        ax.errorbar(b.lower.accuracy, yi, xerr=b.lower.se, fmt="o", color="C0", capsize=3)
        ax.errorbar(b.upper.accuracy, yi, xerr=b.upper.se, fmt="|", color="C3", capsize=3, ms=12)
        ax.plot([b.lower.accuracy, b.upper.accuracy], [yi, yi], color="0.5", lw=4, alpha=0.4)
    ax.set_yticks(y, [r.acquisition.describe() for r in rows], fontsize=8)
    ax.set_xlabel("balanced five-class accuracy: lower edge (o) and upper edge (|) of the physics bracket")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="physics", help="Attenuation, transmission, the physics bracket and the exposure plan.")
