"""`alloynet simulate`, `alloynet ingest` and `alloynet data ...`."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
import yaml
from alloynet.console import make_console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

console = make_console()
data_app = typer.Typer(no_args_is_help=True)


def progress_bar() -> Progress:
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                    console=console, transient=False)


def print_summary(df) -> None:
    from alloynet.data.manifest import summary

    s = summary(df)
    table = Table(title=f"{len(df)} captures, {df.plate_id.nunique()} plates")
    table.add_column("alloy")
    for c in s.columns:
        table.add_column(str(c), justify="right")
    for alloy, row in s.iterrows():
        table.add_row(str(alloy), *[str(int(v)) for v in row])
    console.print(table)


def simulate(
    out: str = typer.Option(..., help="capture store: a directory or s3://bucket/prefix"),
    config: Optional[Path] = typer.Option(None, help="YAML with DatasetSpec fields (rig: {...} nested)"),
    n_max: Optional[int] = None, imbalance_ratio: Optional[float] = None,
    profile: Optional[str] = typer.Option(None, help="exponential | step | balanced"),
    size: Optional[int] = typer.Option(None, help="image height = width in pixels"),
    seed: Optional[int] = None,
    manifest: bool = typer.Option(True, help="write manifest.csv beside a local store"),
) -> None:
    """Simulate a long-tailed data set into a capture store and print its summary."""
    from alloynet.captures.stores import LocalStore, open_store
    from alloynet.data.manifest import build_manifest, write_manifest
    from alloynet.data.simulate import DatasetSpec, simulate_dataset

    raw = yaml.safe_load(config.read_text()) if config else {}
    over = {k: v for k, v in dict(n_max=n_max, imbalance_ratio=imbalance_ratio, profile=profile, seed=seed).items()
            if v is not None}
    raw.update(over)
    if size:
        raw.setdefault("rig", {}).update(height=size, width=size)
    spec = DatasetSpec.model_validate(raw)
    store = open_store(out)
    plan = spec.plates_per_class()
    console.print(f"simulating {sum(plan.values()) * spec.captures_per_plate} captures "
                  f"({spec.rig.height}x{spec.rig.width}, kVp {spec.rig.kvp}, seed {spec.seed}) into {store.uri}")
    with progress_bar() as bar:
        task = bar.add_task("simulate", total=sum(plan.values()) * spec.captures_per_plate)
        simulate_dataset(spec, store, progress=lambda done, total: bar.update(task, completed=done))
    df = build_manifest(store, seed=spec.seed)
    if manifest and isinstance(store, LocalStore):
        write_manifest(df, store.root / "manifest.csv")
        console.print(f"manifest: {store.root / 'manifest.csv'}")
    print_summary(df)


def ingest(source: str = typer.Argument(..., help="capture store to pull from (s3://bucket/prefix or a directory)"),
           dest: str = typer.Argument(..., help="local data directory"), seed: int = 0) -> None:
    """Pull new captures (since the watermark), verify, quarantine bad ones, update the manifest."""
    from alloynet.captures.ingest import ingest as run
    from alloynet.captures.stores import LocalStore, open_store
    from alloynet.data.manifest import refresh_manifest

    dst = LocalStore(dest)
    res = run(open_store(source), dst)
    console.print(res.summary())
    for key, why in res.quarantined.items():
        console.print(f"[yellow]quarantined[/] {key}: {why}")
    refresh_manifest(dst, seed)


@data_app.command("manifest")
def manifest_cmd(store: str, seed: int = 0, out: Optional[Path] = None) -> None:
    """(Re)build the manifest of a local store, keeping existing split assignments frozen."""
    from alloynet.captures.stores import LocalStore
    from alloynet.data.manifest import refresh_manifest

    df, _ = refresh_manifest(LocalStore(store), seed, out)
    print_summary(df)


@data_app.command("quarantine")
def quarantine_cmd(store: str) -> None:
    """List quarantined captures and why."""
    from alloynet.captures.layout import list_quarantine
    from alloynet.captures.stores import open_store

    rows = list_quarantine(open_store(store))
    for r in rows:
        console.print(f"{r['folder']}: {r['reason']}")
    console.print(f"{len(rows)} quarantined")


@data_app.command("summary")
def summary_cmd(manifest: Path) -> None:
    """Captures per alloy and split."""
    from alloynet.data.manifest import read_manifest

    print_summary(read_manifest(manifest))


def register(app: typer.Typer) -> None:
    app.command()(simulate)
    app.command()(ingest)
    app.add_typer(data_app, name="data", help="Manifests, summaries and the quarantine.")
