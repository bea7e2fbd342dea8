"""Training throughput: images/s and peak memory of full training steps (forward, multi-task loss,
backward, optimiser step) on synthetic raw captures, for resnet18 at 128x128 and the 1-D profile CNN.

    .venv/bin/python bench/train.py                      # CPU here; CUDA too when a GPU is present
    .venv/bin/python bench/train.py --device cuda --batch-size 128 --steps 50

Each case runs in its own process, so peak memory is per case: on CUDA torch.cuda.max_memory_allocated,
on CPU the process's peak resident set size (ru_maxrss; includes the ~300 MiB of torch itself).
Results go to docs/benchmarks.md ("Training throughput").
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch

from alloynet.data.transforms import Preprocess
from alloynet.losses import MultiTaskLoss, create_loss
from alloynet.models import create_model
from alloynet.models.architectures import takes_width
from alloynet.train.config import OptimConfig
from alloynet.train.optim import build_optimizer

CASES = [("resnet18", 128), ("profile_cnn", 128), ("profile_cnn", 256)]
STATS = {"thickness_mm": (2.5, 1.6), "a0": (0.9, 0.5), "mu_eff": (3.6, 0.9)}


def _batch(b: int, size: int, device: torch.device) -> tuple[torch.Tensor, dict]:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(b, 1, size, size, generator=g) * 45_000 + 2_000
    t = {
        "alloy": torch.randint(0, 5, (b,), generator=g),
        "thickness_mm": torch.rand(b, generator=g) * 5,
        "a0": torch.rand(b, generator=g),
        "mu_eff": torch.rand(b, generator=g) * 5,
    }
    return x.to(device), {k: v.to(device) for k, v in t.items()}


def bench(name: str, size: int, batch: int, steps: int, device: torch.device, amp: bool) -> dict:
    torch.manual_seed(0)
    width = {"width": size} if takes_width(name) else {}
    model = create_model(name, 5, 1, Preprocess([1000.0], [50000.0], 1.5, 1.0), target_stats=STATS, **width).to(device)
    cal, wedge = model.preprocess.reference_levels(batch).to(device), torch.full((batch, 1), 50.0, device=device)
    channels_last = device.type == "cuda" and name not in ("fnn", "profile_cnn")
    if channels_last:
        model.to(memory_format=torch.channels_last)
    criterion = MultiTaskLoss(create_loss("ce", [1] * 5), STATS).to(device)
    opt = build_optimizer(OptimConfig(name="adam", lr=1e-3, weight_decay=1e-4), [model, criterion])
    x, t = _batch(batch, size, device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp and device.type == "cuda"):
            out = model(x, cal, wedge)
        loss, _ = criterion(out, t)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(3):  # warm-up: allocator, cuDNN autotuning
        step()
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    peak = (
        torch.cuda.max_memory_allocated()
        if device.type == "cuda"
        else max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, rss0) * 1024
    )
    return {
        "model": name,
        "size": size,
        "batch": batch,
        "images_per_s": batch * steps / seconds,
        "peak_mib": peak / 2**20,
        "device": str(device),
        "threads": torch.get_num_threads(),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu", help="cpu | cuda")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--amp", action="store_true", help="bf16 autocast on CUDA")
    ap.add_argument("--case", help="internal: run one model:size and print JSON")
    args = ap.parse_args()
    device = torch.device(args.device)
    if args.case:
        name, size = args.case.split(":")
        print(json.dumps(bench(name, int(size), args.batch_size, args.steps, device, args.amp)))
        return
    print("| model | input | batch | device | threads | images/s | peak memory (MiB) |")
    print("|---|---|---|---|---|---|---|")
    for name, size in CASES:
        cmd = [
            sys.executable,
            __file__,
            "--case",
            f"{name}:{size}",
            "--device",
            args.device,
            "--batch-size",
            str(args.batch_size),
            "--steps",
            str(args.steps),
        ] + (["--amp"] if args.amp else [])
        r = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1])
        mem = "process peak RSS" if device.type == "cpu" else "max allocated"
        print(
            f"| {r['model']} | 1x{size}x{size} | {r['batch']} | {r['device']} | {r['threads']} | "
            f"{r['images_per_s']:.0f} | {r['peak_mib']:.0f} ({mem}) |",
            flush=True,
        )


if __name__ == "__main__":
    main()
