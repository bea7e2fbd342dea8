"""`alloynet train` and `alloynet evaluate`."""

from __future__ import annotations

import os
from pathlib import Path

import typer

from alloynet.console import make_console

console = make_console()


def train(
    config: Path | None = typer.Option(
        None, "--config", "-c", help="run config YAML (see configs/); default: the built-in recipe"
    ),
    store: str | None = typer.Option(
        None, "--store", "-s", help="capture store (overrides data.store; default: the config's, built in demo-data)"
    ),
    manifest: str | None = typer.Option(
        None, help="manifest CSV (overrides data.manifest; default: <store>/manifest.csv)"
    ),
    model: str | None = typer.Option(
        None, help="architecture (overrides model.name; default: the config's, profile_mlp)"
    ),
    epochs: int | None = typer.Option(
        None, help="epochs at most (overrides epochs; default: the config's, 60; early stopping may end sooner)"
    ),
    out: str | None = typer.Option(None, help="run directory (overrides out_dir; default: the config's, runs/default)"),
    seed: int | None = typer.Option(
        None, help="seed of initialisation, sampling and augmentation (overrides seed; default: the config's, 0)"
    ),
    device: str | None = typer.Option(None, help="auto | cpu | cuda (default: the config's, auto)"),
    resume: bool = typer.Option(False, help="continue from <out>/last.pt if it exists"),
    deterministic: bool = typer.Option(False, help="deterministic kernels on GPU"),
    set_: list[str] = typer.Option([], "--set", help="any config field, dotted: --set optim.lr=0.01"),
    evaluate_split: str | None = typer.Option(
        None, "--evaluate", help="then evaluate best.pt on this split (default: do not)"
    ),
    pretrain: Path | None = typer.Option(
        None,
        help="a rig profile (alloynet rig fit): pretrain on the "
        "simulator fitted to the rig, then fine-tune on the store's captures (default: no pretraining) "
        "(pretrain.* in the config sets the details)",
    ),
) -> None:
    """Train a model (multi-task, long-tail losses) and write checkpoints + the resolved config."""
    from alloynet.train import load_config, parse_override
    from alloynet.train import train as run_train

    overrides = dict(parse_override(s) for s in set_)
    named = {
        "data.store": store,
        "data.manifest": manifest,
        "model.name": model,
        "epochs": epochs,
        "out_dir": out,
        "seed": seed,
        "device": device,
    }
    overrides.update({k: v for k, v in named.items() if v is not None})
    if deterministic:
        overrides["deterministic"] = True
    if pretrain is not None:
        if not pretrain.is_file():
            raise typer.BadParameter(
                f"{pretrain}: rig profile not found (alloynet rig fit writes one)", param_hint="--pretrain"
            )
        overrides["pretrain.synthetic.rig_profile"] = str(pretrain)
    from alloynet.train.engine import NonFiniteLoss

    cfg = load_config(config, overrides)
    try:
        result = run_train(cfg, resume=resume)
    except NonFiniteLoss as exc:  # its message names the task and the likely cause: no traceback
        console.print(f"error: {exc}", markup=False, highlight=False)
        raise typer.Exit(1) from None
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun, rank 0 reports and evaluates
        return
    m = result.metrics
    console.print(
        f"best epoch {result.best_epoch}/{result.epochs_run}: val balanced accuracy "
        f"{m.get('balanced_accuracy', float('nan')):.3f}, accuracy {m.get('accuracy', float('nan')):.3f}; "
        f"checkpoint {result.checkpoint}; config {result.config_path}"
    )
    if evaluate_split:
        _evaluate(
            result.checkpoint, None, None, None, evaluate_split, "cpu" if cfg.device == "cpu" else "auto", True, 4
        )


def _evaluate(
    checkpoint: Path,
    store: str | None,
    manifest: str | None,
    out: Path | None,
    split: str,
    device: str,
    ceiling: bool,
    gradcam: int,
    rig_profile: Path | None = None,
) -> dict:
    import torch

    from alloynet.evaluate import evaluate as run_evaluate
    from alloynet.models.checkpoint import load_checkpoint

    data_cfg = load_checkpoint(checkpoint)["config"]["data"]
    store = store or data_cfg["store"]
    manifest = manifest or data_cfg.get("manifest")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    out = out or Path(checkpoint).parent / f"report-{split}"
    m = run_evaluate(
        checkpoint,
        store,
        manifest,
        out,
        split,
        device=device,
        with_ceiling=ceiling,
        gradcam=gradcam,
        rig_profile=rig_profile,
    )
    mae = m["thickness_mae_mm"]
    thickness = f"thickness MAE {mae:.3f} mm" if mae == mae else "no thickness truth"
    line = (
        f"{m['model']} on {split} ({m['n']} captures): accuracy {m['accuracy']:.3f}, balanced accuracy "
        f"{m['balanced_accuracy']:.3f}, macro-F1 {m['macro_f1']:.3f}, {thickness}"
    )
    if m.get("ceiling_accuracy") is not None:
        line += f"; physics bracket {m['ceiling_lower']:.3f}-{m['ceiling_upper']:.3f}: {m['ceiling_position']}"
    console.print(line)
    console.print(f"report: {out / 'report.md'}")
    return m


def evaluate(
    checkpoint: Path = typer.Argument(..., help="a checkpoint written by `alloynet train` (best.pt)"),
    store: str | None = typer.Option(
        None, "--store", "-s", help="capture store (default: the one the model was trained on)"
    ),
    manifest: str | None = typer.Option(None, help="manifest CSV (default: the training manifest)"),
    out: Path | None = typer.Option(None, help="report folder (default: <checkpoint dir>/report-<split>)"),
    split: str = typer.Option("test", help="manifest split to evaluate: test, val or train"),
    device: str = typer.Option("auto", help="auto | cpu | cuda"),
    ceiling: bool = typer.Option(True, help="compute the physics bracket (lower and upper edge) for the same rig"),
    gradcam: int = typer.Option(4, help="Grad-CAM PNGs for this many test captures"),
    robustness: bool = typer.Option(
        False,
        help="also the robustness suite: test sets of any thickness, unseen "
        "thicknesses, tube drift, quarter dose, an unseen wedge, the second rig",
    ),
    cases: str | None = typer.Option(None, help="robustness cases, comma-separated (default: all)"),
    plates: int = typer.Option(60, help="robustness: plates per alloy in each case's test set"),
    rig_profile: Path | None = typer.Option(
        None,
        help="a rig profile (alloynet rig fit): the ceiling and "
        "the physics fit use the simulator fitted to the rig (default: the one the model was trained from, "
        "if any, else the nominal rig)",
    ),
) -> None:
    """Evaluate a checkpoint on a held-out split: metrics.json, report.md, plots, Grad-CAM; with
    --robustness, the robustness suite into <out>/robustness (each case beside its own ceiling)."""
    if rig_profile is not None and not rig_profile.is_file():
        raise typer.BadParameter(
            f"{rig_profile}: rig profile not found (alloynet rig fit writes one)", param_hint="--rig-profile"
        )
    _evaluate(checkpoint, store, manifest, out, split, device, ceiling, gradcam, rig_profile)
    if robustness:
        from alloynet.evaluate.robustness import run_suite

        where = (out or Path(checkpoint).parent / f"report-{split}") / "robustness"
        run_suite(
            checkpoint, where, cases.split(",") if cases else None, plates, with_ceiling=ceiling, log=console.print
        )
        console.print(f"robustness: {where / 'robustness.md'}")


def register(app: typer.Typer) -> None:
    app.command()(train)
    app.command()(evaluate)
