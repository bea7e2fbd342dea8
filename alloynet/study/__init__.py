"""The study: the seed comparison of architectures x losses x imbalance ratios, against the physical limit.

from alloynet.study import load_study, run_study
results = run_study(load_study("configs/study.yaml"))   # writes docs/study/
"""

from typing import Any

__all__ = ["StudyConfig", "load_study", "run_study"]


def __getattr__(name: str) -> Any:
    # imported on first use: a search launcher or a trial's worker imports alloynet.study.search, and
    # neither needs the study's runner (torch, the models) or its config (the physics) to start
    if name in ("StudyConfig", "load_study"):
        from alloynet.study import config

        return getattr(config, name)
    if name == "run_study":
        from alloynet.study.runner import run_study

        return run_study
    raise AttributeError(f"module 'alloynet.study' has no attribute {name!r}")
