"""What the physics term costs per batch, with and without the integral over a level-less capture's span.

    nice -n 5 env OMP_NUM_THREADS=1 .venv/bin/python bench/physics_term.py CHECKPOINT [--batches 1,64] [--rounds 9]

The term of a trained model (``PhysicsLikelihood``) on captures of its own size and wedges: ``plain`` is the
likelihood as a capture sent with its levels needs it (``calibration_missing`` not given), ``graph`` is what the
model's graph computes for every capture (the span integral's terms included, zero where the levels came), and
the whole model's forward beside them. Rounds alternate the cases; printed per batch size: the median and the
range of ms per batch over the rounds (each round the mean of ``--repeat`` calls), one intra-op thread.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402


def time_batch(model: torch.nn.Module, b: int, channels: int, size: tuple[int, int], rounds: int, repeat: int):
    """{case: [ms per batch, one per round]} for a batch of ``b`` captures (seeded noise, the model's wedges)."""
    gen = torch.Generator().manual_seed(b)
    raw = 1000.0 + 20000.0 * torch.rand(b, channels, *size, generator=gen)
    cal = torch.tensor([1000.0, 50000.0]).expand(b, channels, 2).contiguous()
    wedges = model.physics.wedges_mm
    wedge = wedges[torch.arange(b) % len(wedges)]
    with torch.no_grad():
        att, missing, *_ = model.attenuation(raw, cal)
        cases = {
            "plain": lambda: model.physics.log_joint(att, wedge),
            "graph": lambda: model.physics.log_joint(att, wedge, missing),
            "model": lambda: model(raw, cal, wedge),
        }
        times: dict[str, list[float]] = {k: [] for k in cases}
        for f in cases.values():
            f()
        for _ in range(rounds):
            for k, f in cases.items():
                t0 = time.perf_counter()
                for _ in range(repeat):
                    f()
                times[k].append((time.perf_counter() - t0) / repeat * 1000)
    return times


def main() -> None:
    from alloynet.models.checkpoint import load_model

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint", type=Path)
    ap.add_argument("--batches", default="1,64")
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--repeat", type=int, default=5)
    a = ap.parse_args()
    torch.set_num_threads(1)
    model, meta = load_model(a.checkpoint, "cpu")
    if model.physics is None:
        raise SystemExit(f"{a.checkpoint}: this model has no physics term")
    size = (int(meta["image_size"][0]), int(meta["image_size"][1]))
    for b in (int(v) for v in a.batches.split(",")):
        times = time_batch(model, b, int(meta["channels"]), size, a.rounds, a.repeat)
        row = ", ".join(f"{k} {statistics.median(v):.2f} ms ({min(v):.2f}-{max(v):.2f})" for k, v in times.items())
        print(f"batch {b}: {row}", flush=True)


if __name__ == "__main__":
    main()
