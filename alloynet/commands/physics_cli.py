"""`alloynet physics ...`: transmission values and the ideal-observer separability report."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from alloynet.console import make_console

app = typer.Typer(no_args_is_help=True)
console = make_console()
AlloysOption = typer.Option(None, "--alloys", help="YAML defining extra alloys ({name: {density_g_cm3, nominal_wt_pct, ranges_wt_pct}})")


def _load_alloys(path: Optional[Path]) -> None:
    if path:
        import yaml

        from alloynet.physics.alloys import alloys_from_config

        alloys_from_config(yaml.safe_load(path.read_text()) or {})


@app.command()
def transmission(alloy: str, thickness_mm: float, wedge_mm: float = 0.0, kvp: float = 50.0,
                 wedge_material: str = "Al", alloys: Optional[Path] = AlloysOption) -> None:
    """Print -ln T (noise-free) of a nominal plate behind the wedge."""
    _load_alloys(alloys)
    from alloynet.physics import neg_log_transmission

    console.print(f"{neg_log_transmission(alloy, thickness_mm, wedge_mm, kvp, wedge_material=wedge_material):.6f}")


@app.command()
def separability(
    kvp: list[float] = typer.Option([50.0], help="repeat for extra channels, e.g. --kvp 40 --kvp 50 --kvp 60"),
    wedge_mm: float = 50.0, wedge_material: str = "Al", dose: float = 1e4, size: int = 256,
    thickness: list[float] = typer.Option([1.0, 2.0, 5.0], help="nominal thicknesses in the data set (mm)"),
    alloy: list[str] = typer.Option(["Al1050", "Al2017", "Al5083", "Al6082", "Al7075"], help="alloys to compare"),
    alloys: Optional[Path] = AlloysOption,
    plates: int = 200, seed: int = 0, json_out: Optional[Path] = typer.Option(None, "--json", help="also write JSON"),
) -> None:
    """Ideal-observer d', Bayes error and the multi-class ceiling for these rig settings."""
    from alloynet.physics.separability import separability as run
    from alloynet.physics.simulator import RigConfig

    _load_alloys(alloys)
    rig = RigConfig(kvp=kvp, wedge_mm=wedge_mm, wedge_material=wedge_material, dose=dose, height=size, width=size)
    with console.status("computing the ideal observer..."):
        report = run(rig, alloys=alloy, thicknesses_mm=thickness, plates=plates, seed=seed)
    typer.echo(report.markdown())  # plain Markdown: readable here and pasteable into reports
    if json_out:
        json_out.write_text(json.dumps(report.to_dict(), indent=1))


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="physics", help="Attenuation, transmission and the ideal-observer report.")
