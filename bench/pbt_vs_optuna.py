"""Population-based training (Ray Tune) against the Optuna search (TPE) on the same compute budget.

    .venv/bin/python bench/pbt_vs_optuna.py --out /tmp/alloynet-bench-pbt --members 4 --epochs 8 --seeds 0 1

Both tune the optimiser, learning rate and weight decay of the same architecture and loss on the same
simulated data set, and both spend ``members x epochs`` training epochs: PBT as a population of
``members`` trainings of ``epochs`` epochs whose hyperparameters evolve (exploit/explore every
``interval`` epochs), Optuna as ``members`` trials of ``epochs`` epochs each with fixed hyperparameters
(the arch's cosine schedule). Each method picks its model on the validation split; the table also gives
that model's balanced accuracy on the test split, which neither method saw. One run per search seed.
Results go to docs/study/search.md and docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path


def simulate(root: Path, n_max: int, size: int, seed: int) -> Path:
    from alloynet.captures.stores import LocalStore
    from alloynet.data.manifest import build_manifest, manifest_path, write_manifest
    from alloynet.data.simulate import DatasetSpec, simulate_dataset
    from alloynet.physics.simulator import RigConfig

    if manifest_path(root).exists():
        return root
    store = LocalStore(root)
    simulate_dataset(
        DatasetSpec(
            n_max=n_max, imbalance_ratio=4.0, seed=seed, captures_per_plate=2, rig=RigConfig(height=size, width=size)
        ),
        store,
    )
    write_manifest(build_manifest(store, seed=seed), manifest_path(root))
    return root


def test_balanced_accuracy(checkpoint: Path, store: Path) -> float:
    from torch.utils.data import DataLoader

    from alloynet.captures.stores import LocalStore
    from alloynet.data.dataset import CaptureDataset
    from alloynet.data.manifest import manifest_path, read_manifest
    from alloynet.evaluate.metrics import classification_metrics
    from alloynet.evaluate.predict import predict
    from alloynet.models.checkpoint import load_model

    model, meta = load_model(checkpoint)
    ds = CaptureDataset(LocalStore(store), read_manifest(manifest_path(store)), "test")
    p = predict(model, DataLoader(ds, batch_size=64), "cpu")
    return classification_metrics(p["y"], p["probs"], list(meta["class_names"]), meta.get("class_counts"))[
        "balanced_accuracy"
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("/tmp/alloynet-bench-pbt"))
    ap.add_argument("--arch", default="profile_cnn")
    ap.add_argument("--members", type=int, default=4, help="PBT population = Optuna trials")
    ap.add_argument("--epochs", type=int, default=8, help="epochs per member / per trial")
    ap.add_argument("--interval", type=int, default=2)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--n-max", type=int, default=40)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--cpus", type=int, default=None, help="Ray cluster CPUs (default: all)")
    a = ap.parse_args()

    import torch

    from alloynet.study.pbt import PBTConfig, run_pbt
    from alloynet.study.search import SearchConfig, run_search

    torch.set_num_threads(1)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    store = simulate(a.out / "data", a.n_max, a.size, seed=0)
    common = {"data.batch_size": 32, "progress": False}
    rows = []
    for seed in a.seeds:
        t0 = time.perf_counter()
        pbt = run_pbt(
            PBTConfig(
                store=str(store),
                out_dir=str(a.out / f"pbt-s{seed}"),
                architecture=a.arch,
                population=a.members,
                epochs=a.epochs,
                interval=a.interval,
                seed=seed,
                cpus=a.cpus,
                train=common,
            )
        )
        pbt_s = time.perf_counter() - t0
        rows.append(
            {
                "method": "PBT (Ray Tune)",
                "seed": seed,
                "epochs": pbt["epochs_trained"],
                "val": pbt["best_value"],
                "test": test_balanced_accuracy(Path(pbt["checkpoint"]), store),
                "wall_s": pbt_s,
                "chosen": pbt["best_hparams"],
                "exploits": len(pbt["exploits"]),
            }
        )
        t0 = time.perf_counter()
        cfg = SearchConfig(
            store=str(store),
            out_dir=str(a.out / f"optuna-s{seed}"),
            architecture=a.arch,
            loss="ce",
            trials=a.members,
            parallel=1,
            seed=seed,
            optimizers=["adam", "sgd", "rmsprop"],
            train={**common, "epochs": a.epochs},
        )
        opt = run_search(cfg)
        opt_s = time.perf_counter() - t0
        best_ckpt = a.out / f"optuna-s{seed}" / f"trial-{opt['best_trial']:03d}" / "best.pt"
        rows.append(
            {
                "method": "Optuna (TPE)",
                "seed": seed,
                "epochs": a.members * a.epochs,
                "val": opt["best_value"],
                "test": test_balanced_accuracy(best_ckpt, store),
                "wall_s": opt_s,
                "chosen": opt["best_params"],
                "exploits": 0,
            }
        )
        print(json.dumps(rows[-2:], default=float), flush=True)
    print(
        "\n| method | search seed | epochs | val bal. acc (chosen) | test bal. acc | wall (s) "
        "| chosen hyperparameters |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        hp = ", ".join(f"{k} {v:.2g}" if isinstance(v, float) else f"{k} {v}" for k, v in r["chosen"].items())
        print(
            f"| {r['method']} | {r['seed']} | {r['epochs']} | {r['val']:.3f} | {r['test']:.3f} "
            f"| {r['wall_s']:.0f} | {hp} |"
        )
    (a.out / "results.json").write_text(json.dumps(rows, indent=1, default=float))


if __name__ == "__main__":
    main()
