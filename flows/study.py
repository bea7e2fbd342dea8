"""The study on a work pool: each cell of the grid (architecture x loss x imbalance ratio x seed) is a
flow run of the ``study-cell`` deployment, so N workers compute N cells at once.

    python -m infra.stack up --workers 2 && python -m infra.stack deploy    # a pool with two process workers
    alloynet study-pool --config configs/study.yaml                         # or: python -m flows.study ...

The ``study`` flow simulates every data set first (so cells only read them), submits one run per cell
that is not already finished, follows them (flows/fanout.py: crashed runs and runs whose worker died
are submitted again), then writes the same tables as ``alloynet study``, from the same cache:
``run_cell`` (alloynet/study/runner.py) is the one function that computes a cell on either path.
A cell that still did not finish is named, with the reason, in results.md, README.md, study.json and
results.csv, and the flow ends Failed; re-running it computes only what is missing. Launched twice at
once, the two launchers follow one flow run per cell: a running cell is adopted, and a cell both submit
at the same moment gets one run (the submissions share an idempotency key: flows/fanout.py).

The workers must see the config's ``work_dir`` and ``out_dir`` at the same paths as the flow (one
machine, or a shared volume), and use the same number of threads per process as a serial run for the
numbers to match it bit for bit (``OMP_NUM_THREADS``; see job_variables).
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path
from typing import Any

import pandas as pd
from prefect import flow, get_run_logger

from alloynet.study.config import Cell, StudyConfig, load_study
from alloynet.study.runner import finished_row, log_cell, prepare_data, run_cell, write_outputs
from flows.fanout import Dispatcher

CELL_DEPLOYMENT = "study-cell/one-cell-cpu"


class StudyIncomplete(RuntimeError):
    """Some cells did not finish; the tables were written over the others and name the missing ones."""


@flow(name="study-cell", retries=1, retry_delay_seconds=5, log_prints=True)
def study_cell(config: dict[str, Any], cell: dict[str, Any]) -> dict:
    """One cell, on whichever worker picked it up (its row is also kept in the work dir's cache)."""
    cfg, c = StudyConfig.model_validate(config), Cell.model_validate(cell)
    row = run_cell(cfg, c)
    print(f"{c.id}: bal. acc {row['balanced_accuracy']:.3f}, thickness MAE {row['thickness_mae_mm']:.3f} mm")
    return row


def study_tag(cfg: StudyConfig) -> str:
    """Tags this study's cell runs, so a re-run finds the ones a dead parent left running."""
    return "alloynet-study:" + hashlib.sha256(cfg.model_dump_json().encode()).hexdigest()[:12]


@flow(name="study", log_prints=True)
def study(
    config: str | dict[str, Any] = "configs/study.yaml",
    deployment: str = CELL_DEPLOYMENT,
    attempts: int = 2,
    job_variables: dict[str, Any] | None = None,
    out_dir: str | None = None,
    work_dir: str | None = None,
    poll_s: float = 2.0,
    timeout_s: float | None = None,
) -> dict:
    """The grid on the work pool of ``deployment``; returns where the tables are and how each cell went."""
    log = get_run_logger()
    cfg = load_study(config) if isinstance(config, (str, Path)) else StudyConfig.model_validate(config)
    # absolute paths: the workers run in the deployment's directory, not necessarily this one
    cfg = cfg.model_copy(
        update={
            "out_dir": str(Path(out_dir or cfg.out_dir).resolve()),
            "work_dir": str(Path(work_dir or cfg.work_dir).resolve()),
        }
    )
    log.info(
        "simulating the data sets of %d training pools and the shared test sets (cached)",
        len(cfg.imbalance_ratios) * len(cfg.seeds),
    )
    test_root, ood_roots = prepare_data(cfg)
    cells = cfg.cells()
    todo = [c for c in cells if finished_row(cfg, c) is None]
    log.info(
        "%d cells, %d already finished; submitting %d to %s", len(cells), len(cells) - len(todo), len(todo), deployment
    )
    params = {c.id: {"config": cfg.model_dump(mode="json"), "cell": c.model_dump(mode="json")} for c in todo}
    jobs = {}
    if todo:
        tag = study_tag(cfg)
        with Dispatcher(
            deployment,
            job_variables=job_variables,
            tags=[tag, f"alloynet-study-name:{cfg.name}"],
            attempts=attempts,
            poll_s=poll_s,
            timeout_s=timeout_s,
            log=log.info,
        ) as d:
            running = d.active_runs(tag)
            for c in todo:
                if c.id in running:
                    log.info("%s: adopting run %s left by an earlier study run", c.id, running[c.id])
                    d.adopt(c.id, params[c.id], running[c.id])
                else:
                    d.submit(c.id, params[c.id])
            done = 0
            while d.in_flight():
                for job in d.wait():
                    done += 1
                    log.info(
                        "[%d/%d] %s: %s on %s%s",
                        done,
                        len(todo),
                        job.key,
                        job.states[-1],
                        job.workers[-1] or "no worker",
                        "" if job.ok else f" ({job.message})",
                    )
            jobs = d.jobs
    rows, failures = [], []
    for i, c in enumerate(cells):
        row = finished_row(cfg, c)
        if row is None:
            job = jobs.get(c.id)
            reason = (
                f"{job.states[-1].lower()} after {len(job.runs)} run(s): {job.message or 'no message'}"
                if job
                else "no result after the run"
            )
            failures.append({"cell": c.id, "reason": reason, "flow_runs": [str(r) for r in job.runs] if job else []})
        else:
            rows.append(row)
            log_cell(log.info, i + 1, len(cells), c, row)
    write_outputs(cfg, pd.DataFrame(rows), test_root, ood_roots, log.info, failures)
    summary = {
        "out_dir": cfg.out_dir,
        "cells": len(cells),
        "finished": len(rows),
        "failed": failures,
        "runs": {
            k: {"flow_runs": [str(r) for r in j.runs], "states": j.states, "workers": j.workers}
            for k, j in jobs.items()
        },
    }
    if failures:
        raise StudyIncomplete(
            f"{len(failures)} of {len(cells)} cells did not finish: "
            + "; ".join(f"{f['cell']} ({f['reason']})" for f in failures)
            + f". Tables over the other cells are in {cfg.out_dir}."
        )
    return summary


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="configs/study.yaml")
    p.add_argument("--deployment", default=CELL_DEPLOYMENT)
    p.add_argument("--attempts", type=int, default=2)
    p.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS for every cell's process")
    p.add_argument("--out-dir", default=None)
    p.add_argument("--work-dir", default=None)
    a = p.parse_args(argv)
    jv = {"env": {"OMP_NUM_THREADS": str(a.threads)}} if a.threads else None
    print(
        json.dumps(study(str(Path(a.config).resolve()), a.deployment, a.attempts, jv, a.out_dir, a.work_dir), indent=1)
    )


if __name__ == "__main__":
    main()
