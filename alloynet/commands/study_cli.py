"""`alloynet study --config configs/study.yaml`."""

from __future__ import annotations

from pathlib import Path

import typer


def study(
    config: Path = typer.Option(Path("configs/study.yaml"), "--config", "-c", help="study YAML (grid, data, training)"),
    out_dir: str | None = typer.Option(None, help="tables, plots and reports [default: the config's out_dir]"),
    work_dir: str | None = typer.Option(None, help="the cache of runs [default: the config's work_dir]"),
    seeds: str | None = typer.Option(None, help="comma-separated seeds [default: the config's seeds]"),
) -> None:
    """Train and evaluate the grid; write tables, plots and per-run reports (resumes finished runs)."""
    from alloynet.commands.data_cli import console, progress_bar
    from alloynet.study import load_study, run_study

    cfg = load_study(config)
    upd = {k: v for k, v in {"out_dir": out_dir, "work_dir": work_dir}.items() if v}
    if seeds:
        upd["seeds"] = [int(s) for s in seeds.split(",")]
    cfg = cfg.model_copy(update=upd)
    with progress_bar() as bar:
        task = bar.add_task("study", total=len(cfg.runs()))
        run_study(cfg, log=console.log, progress=lambda done, total: bar.update(task, completed=done))


def register(app: typer.Typer) -> None:
    app.command()(study)
