"""Training on every GPU of the machine: ``torchrun`` around alloynet's own loop (DDP: NCCL on GPUs, gloo on
CPU processes; ``alloynet.train.distributed`` joins the process group, rank 0 writes the checkpoints).

A flow-run pod that was given N GPUs (the Kubernetes pool's ``gpu_count``) trains on all N:

    from alloynet.train.launch import local_processes, train_processes
    result = train_processes(cfg, local_processes(cfg.device))     # -> TrainResult, as train(cfg) returns

One process is plain ``train(cfg)`` in this process. More start
``python -m torch.distributed.run --standalone --nproc-per-node N -m alloynet.train.launch --config ...``
(one machine, a free rendezvous port), stream its lines to the ``alloynet.train`` logger, and read back
what rank 0 wrote. ``ALLOYNET_TRAIN_PROCESSES`` overrides the count (e.g. 1 to leave GPUs idle on purpose).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import subprocess
import sys
from collections import deque
from pathlib import Path

from alloynet.train.config import TrainConfig, load_config, resolve, save_config
from alloynet.train.trainer import TrainResult, train

LAUNCH_CONFIG = "launch-config.yaml"
LAUNCH_RESULT = "launch-result.json"
PROCESSES_ENV = "ALLOYNET_TRAIN_PROCESSES"

log = logging.getLogger("alloynet.train")


def local_processes(device: str = "auto") -> int:
    """How many training processes this machine runs: ``ALLOYNET_TRAIN_PROCESSES`` if set, else one per
    visible GPU when ``device`` may use CUDA (auto, cuda), else one."""
    if os.environ.get(PROCESSES_ENV):
        n = os.environ[PROCESSES_ENV]
        if not n.isdigit() or int(n) < 1:
            raise ValueError(f"{PROCESSES_ENV}={n!r}: expected a whole number of processes >= 1")
        return int(n)
    import torch

    if device in ("auto", "cuda") and torch.cuda.is_available():
        return max(1, torch.cuda.device_count())
    return 1


def train_processes(config: TrainConfig, processes: int = 1, resume: bool = False) -> TrainResult:
    """Train ``config`` on ``processes`` DDP processes of this machine (1: in this process)."""
    if processes < 1:
        raise ValueError(f"processes must be >= 1, got {processes}")
    if processes == 1:
        return train(config, resume=resume)
    cfg = resolve(config)
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / LAUNCH_RESULT).unlink(missing_ok=True)
    save_config(cfg, out / LAUNCH_CONFIG)
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={processes}",
        "-m",
        "alloynet.train.launch",
        "--config",
        str(out / LAUNCH_CONFIG),
    ] + (["--resume"] if resume else [])
    # torchrun sets OMP_NUM_THREADS=1 per process unless told otherwise; keep the caller's setting
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop(PROCESSES_ENV, None)
    log.info("training on %d processes: %s", processes, " ".join(cmd))
    tail: deque[str] = deque(maxlen=60)
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env) as p:
        assert p.stdout is not None
        for line in p.stdout:
            tail.append(line.rstrip())
            log.info("%s", line.rstrip())
    if p.returncode != 0 or not (out / LAUNCH_RESULT).exists():
        raise RuntimeError(
            f"torchrun with {processes} processes exited {p.returncode} (out_dir {out}); "
            f"its last lines:\n" + "\n".join(tail)
        )
    raw = json.loads((out / LAUNCH_RESULT).read_text())
    log.info("trained on %d processes (DDP world size %d)", processes, raw.pop("world_size"))
    paths = {f.name for f in dataclasses.fields(TrainResult) if f.type in ("Path", Path)}
    return TrainResult(**{k: Path(v) if k in paths else v for k, v in raw.items()})


def main(argv: list[str] | None = None) -> None:
    """One torchrun process: train, and on rank 0 leave the result for the launcher."""
    p = argparse.ArgumentParser(description="one DDP process of alloynet.train.launch.train_processes")
    p.add_argument("--config", required=True)
    p.add_argument("--resume", action="store_true")
    a = p.parse_args(argv)
    result = train(load_config(a.config), resume=a.resume)
    if int(os.environ.get("RANK", "0")) == 0:
        body = json.dumps(
            {**dataclasses.asdict(result), "world_size": int(os.environ.get("WORLD_SIZE", "1"))}, default=str
        )
        target = Path(result.out_dir) / LAUNCH_RESULT
        tmp = target.with_suffix(".tmp")
        tmp.write_text(body)
        tmp.replace(target)


if __name__ == "__main__":
    main()
