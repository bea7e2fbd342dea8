"""Wall time and peak memory of the demo nightly flow, by stage (ingest, train, evaluate, package, publish).

    .venv/bin/python bench/flow.py [--out /tmp/alloynet-bench-flow] [--n-max 40] [--size 64]

Each stage calls the same library function the flow's task calls (alloynet.steps and the
serving packagers), in one process; peak memory is the process's peak RSS during the stage (Linux:
VmHWM, reset before each stage through /proc/self/clear_refs). Then the whole `nightly` flow runs once
in-process (Prefect ephemeral mode) on a fresh copy, for the end-to-end time including Prefect itself.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import time
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")

ROWS: list[tuple[str, float, float]] = []


def _hwm_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM"):
            return int(line.split()[1]) / 1024
    return float("nan")


@contextmanager
def stage(name: str):
    try:
        Path("/proc/self/clear_refs").write_text("5")  # reset the peak-RSS counter
    except OSError:
        pass
    t0 = time.perf_counter()
    yield
    ROWS.append((name, time.perf_counter() - t0, _hwm_mib()))
    print(f"{name:<28} {ROWS[-1][1]:8.1f} s  {ROWS[-1][2]:8.0f} MiB", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("/tmp/alloynet-bench-flow"))
    p.add_argument("--n-max", type=int, default=40)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--config", default=str(ROOT / "configs" / "demo.yaml"))
    a = p.parse_args()
    os.environ.setdefault("PREFECT_HOME", str(a.out / "prefect-home"))
    shutil.rmtree(a.out, ignore_errors=True)

    from alloynet import steps
    from alloynet.captures.stores import LocalStore
    from alloynet.data.simulate import DatasetSpec, simulate_dataset
    from alloynet.physics.simulator import RigConfig
    from alloynet.registry import open_registry
    from flows.packaging import available_formats, package_for_serving

    spec = DatasetSpec(n_max=a.n_max, seed=0, rig=RigConfig(height=a.size, width=a.size))
    rig = LocalStore(a.out / "rig")
    print(f"python {platform.python_version()}, {os.cpu_count()} CPUs, {platform.processor() or platform.machine()}")
    with stage("simulate (setup)"):
        n = len(simulate_dataset(spec, rig))
    data, run = a.out / "data", a.out / "run"
    cand = steps.Candidate(name="profile-cnn", config=a.config)
    with stage("ingest"):
        rep = steps.ingest_captures(str(rig.root), data)
    with stage("train"):
        trained = steps.train_candidate(cand, rep.dataset, run / "candidates" / cand.name, device="cpu")
    with stage("evaluate"):
        metrics = steps.evaluate_checkpoint(trained.checkpoint, rep.dataset, run / "evaluation")
    formats = available_formats()
    with stage("package: export"):
        bundle = steps.export_release(trained.checkpoint, rep.dataset, run / "export")
    with stage(f"package: {'+'.join(formats)}"):
        packages = package_for_serving(bundle, run / "packages", formats)
    with stage("publish + promote"):
        rel = steps.assemble_release(
            trained, metrics, {"export": str(bundle), **packages}, rep.dataset, run / "release"
        )
        reg = open_registry(a.out / "registry")
        mv = reg.publish(rel, metrics=metrics)
        reg.promote(mv.version, "bench")
    print(f"\n{n} captures {a.size}x{a.size}; {rep.summary()}; balanced accuracy {metrics['balanced_accuracy']:.3f}")

    from flows.nightly import nightly

    with stage("nightly flow, in-process"):
        state = nightly(
            source=str(rig.root),
            data_dir=str(a.out / "flow" / "data"),
            registry=str(a.out / "flow" / "registry"),
            work_dir=str(a.out / "flow" / "runs"),
            candidates=[cand],
            min_new_labelled=1,
            formats=formats,
            device="cpu",
            return_state=True,
        )
    assert state.is_completed(), state.message
    print("\n| stage | wall (s) | peak RSS (MiB) |\n|---|---|---|")
    for name, wall, mib in ROWS:
        print(f"| {name} | {wall:.1f} | {mib:.0f} |")


if __name__ == "__main__":
    main()
