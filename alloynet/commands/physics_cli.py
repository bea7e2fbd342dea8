"""`alloynet physics ...`: transmission values and the ideal-observer separability report."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from alloynet.console import make_console
from alloynet.physics.alloys import ALLOY_NAMES, STANDARD_ALLOYS, AlloyTable

app = typer.Typer(no_args_is_help=True)
console = make_console()
AlloysOption = typer.Option(None, "--alloys", help="YAML defining extra alloys ({name: {density_g_cm3, "
                                                    "nominal_wt_pct, ranges_wt_pct}})")


def _load_alloys(path: Optional[Path]) -> AlloyTable:
    """The standard alloys, plus those of ``path`` when given."""
    if not path:
        return STANDARD_ALLOYS
    import yaml

    from alloynet.physics.alloys import alloys_from_config

    return alloys_from_config(yaml.safe_load(path.read_text()) or {})


@app.command()
def transmission(alloy: str, thickness_mm: float, wedge_mm: float = 0.0, kvp: float = 50.0,
                 wedge_material: str = "Al", alloys: Optional[Path] = AlloysOption) -> None:
    """Print -ln T (noise-free) of a nominal plate behind the wedge."""
    table = _load_alloys(alloys)
    from alloynet.physics import neg_log_transmission

    a = neg_log_transmission(alloy, thickness_mm, wedge_mm, kvp, wedge_material=wedge_material, alloy_table=table)
    console.print(f"{a:.6f}")


@app.command()
def separability(
    kvp: list[float] = typer.Option([50.0], help="repeat for extra channels, e.g. --kvp 40 --kvp 50 --kvp 60"),
    wedge_mm: float = 50.0, wedge_material: str = "Al", dose: float = 1e4,
    size: int = typer.Option(64, help="image height = width in pixels (the demo's 64 by default)"),
    thickness_range: Optional[tuple[float, float]] = typer.Option(
        None, "--thickness-range", help="plates of any nominal thickness in MIN MAX mm, as simulate and the demo "
        "draw them [default: 1 5]"),
    thickness: Optional[list[float]] = typer.Option(None, help="only these nominal thicknesses (mm), repeatable, "
                                                                "e.g. --thickness 1 --thickness 2; replaces the range"),
    alloy: list[str] = typer.Option(list(ALLOY_NAMES), help="alloys to compare"),
    alloys: Optional[Path] = AlloysOption,
    plates: int = 200, mc_samples: int = typer.Option(2000, help="Monte-Carlo test plates of the ceiling"),
    seed: int = 0, json_out: Optional[Path] = typer.Option(None, "--json", help="also write JSON"),
) -> None:
    """Ideal-observer d', Bayes error and the multi-class ceiling for these rig settings and this thickness prior
    (by default the prior of `alloynet simulate` and the demo: 64 px, any thickness 1-5 mm)."""
    from alloynet.physics.observer import DEFAULT_THICKNESS_RANGE_MM, ThicknessPrior
    from alloynet.physics.separability import separability as run
    from alloynet.physics.simulator import RigConfig

    if thickness and thickness_range:
        raise typer.BadParameter("give --thickness (a list of values) or --thickness-range (a range), not both")
    table = _load_alloys(alloys)
    rig = RigConfig(kvp=kvp, wedge_mm=wedge_mm, wedge_material=wedge_material, dose=dose, height=size, width=size)
    try:
        prior = ThicknessPrior.of(thickness or None,
                                  None if thickness else (thickness_range or DEFAULT_THICKNESS_RANGE_MM))
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    typer.echo(f"prior: {prior.describe()}; {size}x{size} px, wedge {wedge_mm:g} mm {wedge_material}, kVp {kvp}")
    with console.status("computing the ideal observer..."):
        report = run(rig, alloys=alloy, thicknesses_mm=prior.values_mm, thickness_range_mm=prior.range_mm,
                     plates=plates, mc_samples=mc_samples, seed=seed, alloy_table=table)
    typer.echo(report.markdown())  # plain Markdown: readable here and pasteable into reports
    if json_out:
        json_out.write_text(json.dumps(report.to_dict(), indent=1))


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="physics", help="Attenuation, transmission and the ideal-observer report.")
