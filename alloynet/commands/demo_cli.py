"""`alloynet demo`: the main job on the embedded default (local store, CPU).

Simulates a small long-tailed data set into a local capture store and prints its summary and the
ideal-observer ceiling for the rig. (The nightly flow extends this to ingest -> train -> evaluate ->
promote once the orchestration lands.)
"""
from __future__ import annotations

from pathlib import Path

import typer


def demo(out: Path = typer.Option(Path("demo-data"), help="working directory for the demo"),
         seed: int = 0, size: int = 64, n_max: int = 40) -> None:
    """Simulate a small data set on the embedded default and print its summary and the physics ceiling."""
    from alloynet.captures.stores import LocalStore
    from alloynet.commands.data_cli import console, print_summary, progress_bar
    from alloynet.data.manifest import build_manifest, write_manifest
    from alloynet.data.simulate import DatasetSpec, simulate_dataset
    from alloynet.physics.separability import separability
    from alloynet.physics.simulator import RigConfig

    spec = DatasetSpec(n_max=n_max, seed=seed, rig=RigConfig(height=size, width=size))
    store = LocalStore(out / "captures-store")
    total = sum(spec.plates_per_class().values()) * spec.captures_per_plate
    with progress_bar() as bar:
        task = bar.add_task("simulate", total=total)
        simulate_dataset(spec, store, progress=lambda done, _: bar.update(task, completed=done))
    df = build_manifest(store, seed=seed)
    write_manifest(df, store.root / "manifest.csv")
    print_summary(df)
    report = separability(spec.rig, thicknesses_mm=spec.thicknesses_mm, plates=100, seed=seed)
    typer.echo(report.markdown())
    console.print(f"captures: {store.root}/captures, manifest: {store.root / 'manifest.csv'}")


def register(app: typer.Typer) -> None:
    app.command()(demo)
