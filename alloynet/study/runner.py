"""`alloynet study`: train the grid, evaluate every run on the same balanced test set and the OOD sets,
and write the tables, plots and per-run reports to ``docs/study/``.

Each finished run leaves ``result.json`` in the work dir; re-running the study skips finished runs whose
config is unchanged, so a killed study resumes where it stopped and the same seed gives the same tables.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd
from torch.utils.data import DataLoader

from alloynet.captures.stores import LocalStore
from alloynet.data.dataset import CaptureDataset
from alloynet.data.manifest import manifest_hash, read_manifest
from alloynet.study import reference, report
from alloynet.study.config import Cell, LossSpec, StudyConfig
from alloynet.study.datasets import describe, held_out_set, pool_dir, pool_is_current, training_pool
from alloynet.study.physics_table import physics_limits
from alloynet.study.report import BASELINES


def _train_config(cfg: StudyConfig, arch: str, loss: LossSpec, rho: float, seed: int, pool: Path, out: Path):
    from alloynet.train import load_config

    overrides = {**cfg.train, **cfg.per_arch.get(arch, {})}
    overrides.update(
        {
            "seed": seed,
            "out_dir": str(out / "train"),
            "progress": False,
            "model.name": arch,
            "loss.name": loss.name,
            "loss.kwargs": loss.kwargs,
            "data.store": str(pool),
            "data.manifest": str(pool / "manifest.csv"),
        }
    )
    return load_config(None, overrides)


def _quick_metrics(model, meta: dict, root: Path) -> dict:
    """Metrics on a held-out set without plots (used for the OOD sets)."""
    from alloynet.evaluate.metrics import classification_metrics
    from alloynet.evaluate.predict import predict
    from alloynet.evaluate.report import heavy_light, regression_summary

    ds = CaptureDataset(LocalStore(root), read_manifest(root / "manifest.csv"), "test")
    p = predict(model, DataLoader(ds, batch_size=64), "cpu")
    names = list(meta["class_names"])
    m = classification_metrics(p["y"], p["probs"], names, meta.get("class_counts"))
    m.update(regression_summary(p))
    m["heavy_light_balanced_accuracy"] = heavy_light(p["y"], p["group_probs"], names)
    return m


def _row(arch: str, loss: str, rho: float, seed: int, metrics: dict, train_s: float, params: int, tail: str) -> dict:
    nan = float("nan")
    row = {
        "arch": arch,
        "loss": loss,
        "rho": rho,
        "seed": seed,
        "train_s": train_s,
        "params": params,
        "accuracy": metrics["accuracy"],
        "balanced_accuracy": metrics["balanced_accuracy"],
        "heavy_light": metrics["heavy_light_balanced_accuracy"],
        "macro_f1": metrics["macro_f1"],
        "log_loss": metrics["log_loss"],
        "ece": metrics["ece"],
        "mean_auc": metrics["roc_auc_macro"],
        "tail_recall": metrics["per_class"][tail]["recall"],
        "set_coverage": metrics.get("set_coverage", nan),
        "set_size": metrics.get("set_size_mean", nan),
        "thickness_mae_mm": metrics["thickness_mae_mm"],
        "a0_mae": metrics["a0_mae"],
    }
    for name, c in metrics["per_class"].items():
        row[f"ap_{name}"] = c["average_precision"]
        row[f"recall_{name}"] = c["recall"]
    return row


def _reusable(saved: dict, stamps: tuple[str, ...], out: Path, cfg: StudyConfig, rho: float, seed: int) -> bool:
    """A finished run counts only if its recipe is unchanged *and* its checkpoint was trained on exactly
    the current training pool (the config names the pool's path, not its content)."""
    from alloynet.models.checkpoint import load_checkpoint

    ckpt = out / "train" / "best.pt"
    if saved.get("stamp") not in stamps or not ckpt.exists() or not pool_is_current(cfg, rho, seed):
        return False
    pool = pool_dir(cfg, rho, seed)
    return load_checkpoint(ckpt).get("manifest_hash") == manifest_hash(read_manifest(pool / "manifest.csv"))


def cell_dir(cfg: StudyConfig, cell: Cell) -> Path:
    """Where a cell keeps its checkpoint, report and ``result.json`` (the cache of finished cells)."""
    return Path(cfg.work_dir) / "runs" / cell.id


def _recipe(cfg: StudyConfig, cell: Cell) -> tuple[object, tuple[str, str]]:
    """The cell's TrainConfig and the stamps a cached result may carry to be reused: the recipe without
    where the work dir lives (so a worker that mounts it elsewhere, or a parent that passes it as an
    absolute path, reuses it), then the older stamp that included those paths (caches made before)."""
    pool = pool_dir(cfg, cell.rho, cell.seed)
    tc = _train_config(cfg, cell.arch, cell.loss, cell.rho, cell.seed, pool, cell_dir(cfg, cell))
    ood = json.dumps(sorted(o.name for o in cfg.ood))
    recipe = tc.model_dump(mode="json")
    recipe["out_dir"] = recipe["data"]["store"] = recipe["data"]["manifest"] = None
    return tc, (json.dumps(recipe, sort_keys=True) + ood, tc.model_dump_json() + ood)


def finished_row(cfg: StudyConfig, cell: Cell) -> dict | None:
    """The cell's row if it has already been computed under the current recipe and data, else None.
    Never trains or simulates anything."""
    out = cell_dir(cfg, cell)
    done = out / "result.json"
    if not done.exists():
        return None
    try:
        saved = json.loads(done.read_text())
    except ValueError:  # written atomically, so only a hand-edited file gets here
        return None
    _, stamps = _recipe(cfg, cell)
    return saved["row"] if _reusable(saved, stamps, out, cfg, cell.rho, cell.seed) else None


def shared_sets(cfg: StudyConfig) -> tuple[Path, dict[str, Path]]:
    """The balanced test set and the OOD sets every cell is evaluated on (simulated once, then cached)."""
    return held_out_set(cfg), {o.name: held_out_set(cfg, o) for o in cfg.ood}


def run_cell(cfg: StudyConfig, cell: Cell) -> dict:
    """Compute one cell of the grid: train on its training pool, evaluate on the shared test set and the
    OOD sets, and return its row of the tables.

    The one place a cell is computed: the serial study and the work-pool flow (flows/study.py) both call
    it. A finished cell is returned from its ``result.json`` (written atomically) without training again,
    as long as its recipe and training pool are unchanged.

    On a machine (or flow-run pod) with several GPUs the cell trains on all of them, one DDP process each
    through torchrun (``alloynet.train.launch``; ``ALLOYNET_TRAIN_PROCESSES`` sets the count, e.g. two
    gloo processes on CPU); ``result.json`` records how many processes trained it.
    """
    from alloynet.evaluate import evaluate
    from alloynet.models.checkpoint import load_model
    from alloynet.train.launch import local_processes, train_processes

    cached = finished_row(cfg, cell)
    if cached is not None:
        return cached
    test_root, ood_roots = shared_sets(cfg)
    training_pool(cfg, cell.rho, cell.seed)
    out = cell_dir(cfg, cell)
    tc, (stamp, _) = _recipe(cfg, cell)
    processes = local_processes(tc.device)
    t0 = time.perf_counter()
    res = train_processes(tc, processes)
    train_s = time.perf_counter() - t0
    metrics = evaluate(
        res.checkpoint,
        LocalStore(test_root),
        None,
        out / "report",
        split="test",
        with_ceiling=False,
        gradcam=2,
        baselines=False,
    )  # ceiling and baselines: once per set
    model, meta = load_model(res.checkpoint)
    params = sum(p.numel() for p in model.parameters())
    row = _row(cell.arch, cell.loss.tag, cell.rho, cell.seed, metrics, train_s, params, tail=cfg.data.class_order[-1])
    for name, root in ood_roots.items():
        m = _quick_metrics(model, meta, root)
        row[f"ood_{name}_balanced_accuracy"] = m["balanced_accuracy"]
        row[f"ood_{name}_heavy_light"] = m["heavy_light_balanced_accuracy"]
        row[f"ood_{name}_thickness_mae_mm"] = m["thickness_mae_mm"]
    tmp = out / f".result.{os.getpid()}.json"
    tmp.write_text(json.dumps({"stamp": stamp, "row": row, "processes": processes}, default=float))
    os.replace(tmp, out / "result.json")  # a reader sees the old file or the whole new one, never a torn one
    return row


def prepare_data(cfg: StudyConfig) -> tuple[Path, dict[str, Path]]:
    """Simulate every data set of the grid up front (shared sets and one training pool per rho x seed), so
    cells running at once on several workers only read them."""
    sets = shared_sets(cfg)
    for rho in cfg.imbalance_ratios:
        for seed in cfg.seeds:
            training_pool(cfg, rho, seed)
    return sets


def log_cell(log: Callable[[str], None], i: int, n: int, cell: Cell, r: dict) -> None:
    log(
        f"[{i}/{n}] {cell.id}: bal. acc {r['balanced_accuracy']:.3f}, "
        f"thickness MAE {r['thickness_mae_mm']:.3f} mm, {r['train_s']:.0f} s"
    )


def run_study(
    cfg: StudyConfig, log: Callable[[str], None] = print, progress: Callable[[int, int], None] | None = None
) -> pd.DataFrame:
    """The whole grid in this process, cell after cell (flows/study.py spreads the same cells over a work
    pool and gives the same tables)."""
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    log("simulating the shared test set and the OOD sets (cached after the first run)")
    test_root, ood_roots = shared_sets(cfg)
    rows = []
    cells = cfg.cells()
    for i, cell in enumerate(cells):
        rows.append(run_cell(cfg, cell))
        log_cell(log, i + 1, len(cells), cell, rows[-1])
        if progress:
            progress(i + 1, len(cells))
    results = pd.DataFrame(rows)
    write_outputs(cfg, results, test_root, ood_roots, log)
    return results


def _write_nothing_finished(cfg: StudyConfig, out: Path, failures: list[dict]) -> None:
    """Every output a reader or script opens, saying that no cell finished and why; the plots, per-run
    reports and ceilings summarise finished cells, so they are removed rather than left from an older run."""
    why = [
        "No cell finished, so there is nothing to tabulate: results.csv lists the cells with their "
        "reasons, and the plots, per-run reports and ceilings are not written (a re-run retries every cell).",
        "",
    ]
    (out / "study.json").write_text(
        json.dumps({"config": cfg.model_dump(mode="json"), "failed_cells": failures}, indent=1)
    )
    text = (
        "\n".join(
            [f"# Study `{cfg.name}`: no cell finished", "", *why, *report.failure_lines(failures, len(cfg.cells()))]
        )
        + "\n"
    )
    (out / "results.md").write_text(text)
    (out / "README.md").write_text(text)
    reasons = {f["cell"]: f["reason"] for f in failures}
    pd.DataFrame(
        [
            {
                **c.model_dump(include={"arch", "rho", "seed"}),
                "loss": c.loss.tag,
                "status": "failed",
                "error": reasons.get(c.id, "no result"),
            }
            for c in cfg.cells()
        ]
    ).to_csv(out / "results.csv", index=False)
    for stale in ("accuracy_vs_rho.png", "runs"):
        path = out / stale
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def write_outputs(
    cfg: StudyConfig,
    results: pd.DataFrame,
    test_root: Path,
    ood_roots: dict[str, Path],
    log: Callable[[str], None] = print,
    failures: list[dict] | None = None,
) -> None:
    """Tables, plots, per-run reports and the summary over the finished cells; ``failures`` (cells that
    did not finish on a work pool: ``{"cell": id, "reason": ...}``) are listed in every output."""
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    d = cfg.data
    failures = failures or []
    if results.empty:
        _write_nothing_finished(cfg, out, failures)
        log(f"no cell finished; see {out / 'results.md'}")
        return
    log("computing the physics brackets" + (" and the baselines" if cfg.baselines else ""))
    refs = {
        name: reference.set_reference(root, cfg.ceiling_plates, cfg.baselines)
        for name, root in {"test": test_root, **ood_roots}.items()
    }
    ceil = refs["test"]
    ood_ceil = {name: refs[name] for name in ood_roots}
    table = results
    if cfg.baselines:
        pools = {(rho, seed): training_pool(cfg, rho, seed) for rho in cfg.imbalance_ratios for seed in cfg.seeds}
        base = reference.baseline_rows(pools, test_root, ood_roots, cfg.ceiling_plates, d.class_order[-1], _row)
        # per imbalance ratio: the models' rows, then the baselines on the same pools
        table = pd.concat(
            [
                part
                for rho in cfg.imbalance_ratios
                for part in (results[results.rho == rho], base[base.rho == rho] if len(base) else base)
            ],
            ignore_index=True,
        )
    if failures:  # failed cells keep a row in the CSV too, so a script reading it cannot miss them
        failed = pd.DataFrame(
            [
                {
                    **c.model_dump(include={"arch", "rho", "seed"}),
                    "loss": c.loss.tag,
                    "status": "failed",
                    "error": f["reason"],
                }
                for f in failures
                for c in cfg.cells()
                if c.id == f["cell"]
            ]
        )
        pd.concat([table.assign(status="ok", error=""), failed], ignore_index=True).to_csv(
            out / "results.csv", index=False
        )
    else:
        table.to_csv(out / "results.csv", index=False)
    summary = report.summary_table(
        table,
        ceil["ceiling"],
        ceil["ceiling_heavy_light"],
        ceil.get("ceiling_upper"),
        ceil.get("ceiling_upper_se", 0.0),
    )
    report.plot_accuracy_vs_rho(
        table,
        ceil["ceiling"],
        out / "accuracy_vs_rho.png",
        baselines=BASELINES,
        ceiling_upper=ceil.get("ceiling_upper"),
    )
    runs_dir = out / "runs"
    if runs_dir.exists():
        shutil.rmtree(runs_dir)
    failed_ids = {f["cell"] for f in failures}
    for cell in cfg.cells():
        rid = cell.id
        src = cell_dir(cfg, cell) / "report"
        if src.exists() and rid not in failed_ids:
            skip = shutil.ignore_patterns("roc.png", "pr.png", "thickness_scatter.png", "confusion.png")
            shutil.copytree(src, runs_dir / rid, ignore=skip)
    meta = {
        "config": cfg.model_dump(mode="json"),
        "test_set": describe(test_root),
        "ood_sets": {k: describe(v) for k, v in ood_roots.items()},
        # accuracy: the physics bracket's lower edge; upper: its upper edge (alloynet.physics.bracket)
        "ceiling": {
            "accuracy": ceil["ceiling"],
            "recall": ceil["ceiling_recall"],
            "heavy_light": ceil["ceiling_heavy_light"],
            "accuracy_se": ceil.get("ceiling_se"),
            "upper": ceil.get("ceiling_upper"),
            "upper_se": ceil.get("ceiling_upper_se"),
        },
        "ood_ceilings": {
            n: {
                "accuracy": refs[n]["ceiling"],
                "heavy_light": refs[n]["ceiling_heavy_light"],
                "upper": refs[n].get("ceiling_upper"),
                "upper_se": refs[n].get("ceiling_upper_se"),
            }
            for n in ood_roots
        },
    }
    if failures:
        meta["failed_cells"] = failures
    (out / "study.json").write_text(json.dumps(meta, indent=1, default=float))
    md = report.results_markdown(
        cfg, table, summary, refs, describe(test_root), {n: describe(r) for n, r in ood_roots.items()}, failures
    )
    (out / "results.md").write_text(md)
    log("tabulating what physics allows across dose and kVp")
    limit_rows, limits = physics_limits(
        d.rig, d.thicknesses_mm, plates=max(20, cfg.ceiling_plates // 2), thickness_range_mm=d.thickness_range_mm
    )
    (out / "README.md").write_text(report.readme(cfg, table, ceil, limits, ood_ceil, failures, limit_rows))
    log(f"wrote {out / 'results.md'} and {out / 'README.md'}")
